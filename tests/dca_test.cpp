// Dual Chunk Attention (src/model/dca.h) against a float64 reference that
// applies the three position rules directly: for each query and key, the
// query's RoPE position by region (own chunk, previous, older), the key's at
// its offset in its chunk, then plain causal softmax attention. With a chunk
// longer than the sequence it must be dense attention bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "model/dca.h"
#include "simd_targets.h"

namespace skim {
namespace {

constexpr int32_t kHq = 4, kHkv = 2, kDim = 64;

std::vector<float> inv_freq() {
  std::vector<float> f(kDim / 2);
  for (int i = 0; i < kDim / 2; ++i) f[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / kDim));
  return f;
}

// x (one head) turned by RoPE at position p, half-split pairs, in double.
std::vector<double> rotated(const float* x, int64_t p) {
  std::vector<double> y(kDim);
  for (int i = 0; i < kDim / 2; ++i) {
    const double a = static_cast<double>(p) * std::pow(10000.0, -2.0 * i / kDim);
    y[i] = x[i] * std::cos(a) - x[i + kDim / 2] * std::sin(a);
    y[i + kDim / 2] = x[i] * std::sin(a) + x[i + kDim / 2] * std::cos(a);
  }
  return y;
}

void rope_rows(float* x, int64_t rows, int64_t stride, int heads, const int32_t* positions) {
  const std::vector<float> f = inv_freq();
  std::vector<float> cos(kDim / 2), sin(kDim / 2);
  for (int64_t i = 0; i < rows; ++i) {
    kernels::rope_angles(static_cast<float>(positions[i]), f.data(), kDim, cos.data(), sin.data());
    kernels::rope(x + i * stride, heads, kDim, cos.data(), sin.data(), false);
  }
}

struct Problem {
  DcaLayout dca;
  int64_t n_keys, q_pos0, n_rows;
  std::vector<float> k, v, q;  // unrotated: k, v [slot][Hkv][d], q [row][Hq][d]
  kv::KvPool pool{kDim, {kernels::KvDType::F32, kernels::KvDType::F32}, 64};
  kv::KvSequence seq{pool, 1, kHkv, 4096};

  Problem(DcaLayout layout, int64_t keys, int64_t rows, uint32_t seed) : dca(layout), n_keys(keys), q_pos0(keys - rows), n_rows(rows) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    k.resize(static_cast<size_t>(keys * kHkv * kDim));
    v.resize(k.size());
    q.resize(static_cast<size_t>(rows * kHq * kDim));
    for (auto* x : {&k, &v, &q})
      for (float& e : *x) e = gauss(rng);
    std::vector<int32_t> positions(static_cast<size_t>(keys));
    for (int64_t j = 0; j < keys; ++j) positions[j] = static_cast<int32_t>(j);
    seq.append(positions);
    // Keys at their intra-chunk positions (all of them when DCA is off).
    std::vector<float> rk = k;
    std::vector<int32_t> at(positions.size());
    for (int64_t j = 0; j < keys; ++j) at[j] = static_cast<int32_t>(dca.on() ? dca.intra_position(j) : j);
    rope_rows(rk.data(), keys, kHkv * kDim, kHkv, at.data());
    for (int64_t j = 0; j < keys; ++j)
      for (int32_t h = 0; h < kHkv; ++h) {
        kernels::encode_kv_row(rk.data() + (j * kHkv + h) * kDim, kernels::KvDType::F32, kDim, seq.k_row(0, h, j));
        kernels::encode_kv_row(v.data() + (j * kHkv + h) * kDim, kernels::KvDType::F32, kDim, seq.v_row(0, h, j));
      }
  }

  // Q rotated at the rows' intra positions, as the model hands it over.
  std::vector<float> rotated_q() const {
    std::vector<float> rq = q;
    std::vector<int32_t> at(static_cast<size_t>(n_rows));
    for (int64_t i = 0; i < n_rows; ++i) at[i] = static_cast<int32_t>(dca.on() ? dca.intra_position(q_pos0 + i) : q_pos0 + i);
    rope_rows(rq.data(), n_rows, kHq * kDim, kHq, at.data());
    return rq;
  }

  kernels::AttnParams params(const float* rq, float* out) const {
    kernels::AttnParams a;
    a.n_q_heads = kHq;
    a.n_kv_heads = kHkv;
    a.head_dim = kDim;
    a.n_rows = n_rows;
    a.q_pos0 = q_pos0;
    a.q = rq;
    a.q_head_stride = kDim;
    a.q_row_stride = kHq * kDim;
    a.kv = seq.view(0);
    a.out = out;
    a.out_head_stride = kDim;
    a.out_row_stride = kHq * kDim;
    a.validate_plan = true;
    return a;
  }

  // Float64 DCA over the keys `keep(row, key)` allows.
  template <class Keep>
  double max_error(const std::vector<float>& out, Keep keep) const {
    double worst = 0;
    const int64_t C = dca.chunk_len();
    for (int64_t i = 0; i < n_rows; ++i) {
      const int64_t pos = q_pos0 + i;
      for (int32_t h = 0; h < kHq; ++h) {
        const float* qh = q.data() + (i * kHq + h) * kDim;
        std::vector<std::pair<double, int64_t>> scores;
        double mx = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          if (!keep(i, j)) continue;
          const int64_t back = pos / C - j / C;
          const int64_t qpos = back == 0 ? dca.intra_position(pos) : back == 1 ? dca.successive_position(pos) : dca.inter_position();
          const std::vector<double> a = rotated(qh, qpos), b = rotated(k.data() + (j * kHkv + h / (kHq / kHkv)) * kDim, j % C);
          double dot = 0;
          for (int e = 0; e < kDim; ++e) dot += a[e] * b[e];
          scores.emplace_back(dot / std::sqrt(static_cast<double>(kDim)), j);
          mx = std::max(mx, scores.back().first);
        }
        std::vector<double> o(kDim, 0.0);
        double sum = 0;
        for (const auto& [s, j] : scores) {
          const double w = std::exp(s - mx);
          sum += w;
          for (int e = 0; e < kDim; ++e) o[e] += w * v[(j * kHkv + h / (kHq / kHkv)) * kDim + e];
        }
        for (int e = 0; e < kDim; ++e)
          worst = std::max(worst, std::abs((sum > 0 ? o[e] / sum : 0.0) - out[(i * kHq + h) * kDim + e]));
      }
    }
    return worst;
  }
};

kernels::QueryTurn turn_by_rope() {
  return [](float* q, int64_t rows, int64_t stride, const int32_t* shift) { rope_rows(q, rows, stride, kHq, shift); };
}

TEST(Dca, PositionRulesFollowQwen25_1M) {
  const DcaLayout d{.chunk_size = 128, .local = 32};  // chunks of 96 positions
  EXPECT_EQ(d.chunk_len(), 96);
  EXPECT_EQ(d.intra_position(200), 8);
  EXPECT_EQ(d.successive_position(200), 104);  // true distance to the previous chunk kept
  EXPECT_EQ(d.successive_position(287), 128);  // ... up to chunk_size
  EXPECT_EQ(d.inter_position(), 128);          // min(2 * 96 - 1, 128)
}

TEST(Dca, ThreeRegionsMatchTheFloat64Reference) {
  test::for_each_simd_target([] {
    // Queries 200..263 in chunk 2 ([192, 288)): own chunk, chunk 1 and chunk 0 behind them.
    const Problem p({.chunk_size = 128, .local = 32}, 264, 64, 3);
    const std::vector<float> rq = p.rotated_q();
    std::vector<float> out(rq.size());
    dca_attention(p.params(rq.data(), out.data()), p.dca, turn_by_rope());
    EXPECT_LT(p.max_error(out, [](int64_t, int64_t) { return true; }), 2e-5);

    // A sparse plan: every other 16-key block, cut into the three regions alike.
    kernels::PlanBuilder b({.n_heads = kHkv, .group_size = kHq / kHkv, .tile_rows = 16, .n_rows = p.n_rows,
                            .q_pos0 = p.q_pos0, .q_slot0 = p.q_pos0});
    for (int32_t h = 0; h < kHkv; ++h)
      for (int64_t t = 0; t < 4; ++t) {
        for (int64_t s = 0; s < p.q_pos0 + (t + 1) * 16; s += 32) b.add_range(s, std::min(s + 16, p.q_pos0 + (t + 1) * 16));
        b.add_range(p.q_pos0 + t * 16, p.q_pos0 + (t + 1) * 16);  // the tile's own keys
        b.end_tile();
      }
    const kernels::Plan plan = b.finish();
    std::vector<float> sparse(rq.size());
    dca_attention(p.params(rq.data(), sparse.data()), p.dca, turn_by_rope(), &plan);
    // Row i (tile i / 16) sees the listed blocks and its tile's own keys.
    EXPECT_LT(p.max_error(sparse, [&](int64_t i, int64_t j) { return j % 32 < 16 || j >= p.q_pos0 + i / 16 * 16; }), 2e-5);
  });
}

TEST(Dca, AChunkLongerThanTheSequenceIsDenseBitForBit) {
  const Problem p({.chunk_size = 512, .local = 32}, 300, 100, 5);
  const std::vector<float> rq = p.rotated_q();
  std::vector<float> dca(rq.size()), dense(rq.size());
  dca_attention(p.params(rq.data(), dca.data()), p.dca, turn_by_rope());
  kernels::attention_prefill(p.params(rq.data(), dense.data()));
  EXPECT_EQ(dca, dense);
}

TEST(Dca, RowsAcrossAChunkBoundaryAreRefused) {
  const Problem p({.chunk_size = 128, .local = 32}, 200, 20, 7);  // rows 180..199 cross 192
  const std::vector<float> rq = p.rotated_q();
  std::vector<float> out(rq.size());
  EXPECT_THROW(dca_attention(p.params(rq.data(), out.data()), p.dca, turn_by_rope()), std::invalid_argument);
}

}  // namespace
}  // namespace skim
