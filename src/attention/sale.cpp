// SALE-style planner: int8 estimate of block logit maxima against an exact
// sink + local pass (see sale.h for the math).
#include "attention/sale.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <span>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "attention/estimate.h"
#include "attention/selection.h"
#include "kernels/kv_codec.h"

namespace skim::attention::sale {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kKeyBias = 64;   // K int8 in [-63, 63] stored as uint8 k + 64
constexpr float kKeyMax = 63.0f;
constexpr float kRowMax = 31.0f;  // Q int8 in [-31, 31]
// pmaddubsw sums two products of at most 127 * 31: four of them fit in int16
// (4 * 2 * 127 * 31 = 31496), so pmaddwd widens once per 16 dims, not per 4.
constexpr int kGroupsPerWiden = 4;
static_assert(kGroupsPerWiden * 2 * (2 * kKeyBias - 1) * 31 < 32768);
// Values to quantize below which a pass runs on one thread (~1 ms of work).
constexpr int64_t kParallelWork = int64_t{1} << 21;

inline int32_t load32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// Per-row terms of the score: a * (s_k * (acc - bias)) + c.
struct RowTerms {
  __m256i bias;
  __m256 a, c;
};

// R rows x C key vectors (8 keys each) of int8 dot products, then the
// estimate minus the row base, max-reduced into `best`. `mask[c]` is null for
// a key vector whose 8 keys are all in range, else a lane mask. Products are
// summed in int16 over kGroupsPerWiden groups of 4 dims, then widened: the
// multiply pipe (pmaddubsw, pmaddwd) is the bottleneck on Zen 1.
template <int R, int C>
inline __m256 tile(const int8_t* const* q, const uint8_t* kp, int32_t d, const RowTerms* rows, const float* sk,
                   const __m256* const* mask, __m256 best) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_si256();
  const int64_t kvec_bytes = 8 * static_cast<int64_t>(d);
  for (int32_t g0 = 0; g0 < d / 4; g0 += kGroupsPerWiden) {
    __m256i acc16[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc16[r][c] = _mm256_setzero_si256();
    const int32_t g1 = std::min(d / 4, g0 + kGroupsPerWiden);
    for (int32_t g = g0; g < g1; ++g) {
      __m256i qb[R];
      for (int r = 0; r < R; ++r) qb[r] = _mm256_set1_epi32(load32(q[r] + 4 * g));
      for (int c = 0; c < C; ++c) {
        const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kp + c * kvec_bytes + 32 * g));
        for (int r = 0; r < R; ++r) acc16[r][c] = _mm256_add_epi16(acc16[r][c], _mm256_maddubs_epi16(k, qb[r]));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(acc16[r][c], ones));
  }
  const __m256 neg_inf = _mm256_set1_ps(kNegInf);
  for (int c = 0; c < C; ++c) {
    const __m256 s_k = _mm256_loadu_ps(sk + 8 * c);
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][c], rows[r].bias));
      __m256 s = _mm256_fmadd_ps(_mm256_mul_ps(x, s_k), rows[r].a, rows[r].c);
      if (mask[c]) s = _mm256_blendv_ps(neg_inf, s, *mask[c]);
      best = _mm256_max_ps(best, s);
    }
  }
  return best;
}

template <int R>
inline __m256 tile_c(int c, const int8_t* const* q, const uint8_t* kp, int32_t d, const RowTerms* rows,
                     const float* sk, const __m256* const* mask, __m256 best) {
  return c == 1 ? tile<R, 1>(q, kp, d, rows, sk, mask, best) : tile<R, 2>(q, kp, d, rows, sk, mask, best);
}

// Quantizes n floats (n a multiple of 8) to int8 round(x * inv), clamped to
// [-lim, lim], plus `bias`; returns the sum of the unbiased values.
int32_t quantize_row(const float* x, int32_t n, float inv, float lim, int32_t bias, int8_t* dst) {
  const __m256 vinv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(lim), lo = _mm256_set1_ps(-lim);
  const __m256i vbias = _mm256_set1_epi32(bias);
  __m256i sum = _mm256_setzero_si256();
  alignas(32) int32_t tmp[8];
  for (int32_t c = 0; c < n; c += 8) {
    const __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(x + c), vinv)));
    const __m256i i = _mm256_cvtps_epi32(v);  // round to nearest even
    sum = _mm256_add_epi32(sum, i);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), _mm256_add_epi32(i, vbias));
    for (int j = 0; j < 8; ++j) dst[c + j] = static_cast<int8_t>(tmp[j]);
  }
  _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), sum);
  int32_t total = 0;
  for (int j = 0; j < 8; ++j) total += tmp[j];
  return total;
}

float abs_max(const float* x, int32_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int32_t c = 0; c < n; c += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + c)));
  return hmax(m);
}

}  // namespace

void QuantKeys::quantize(const kernels::KvView& kv, int32_t n_kv_heads, int32_t head_dim, int64_t n_keys,
                         int64_t block) {
  if (head_dim % 8 != 0 || head_dim > 512)
    throw std::invalid_argument(fmt::format("sale: head_dim {} is not a multiple of 8 up to 512", head_dim));
  if (n_keys > kv.n_keys) throw std::invalid_argument("sale: more keys asked for than the cache holds");
  if (block < 1) throw std::invalid_argument("sale: key block must be positive");
  d_ = head_dim;
  n_kv_heads_ = n_kv_heads;
  n_keys_ = n_keys;
  n_kvecs_ = (n_keys + 7) / 8;
  block_ = block;
  n_kblocks_ = (n_keys + block - 1) / block;
  const size_t per_head = static_cast<size_t>(n_kvecs_) * 8;
  packed_.assign(static_cast<size_t>(n_kv_heads) * per_head * d_, static_cast<uint8_t>(kKeyBias));
  scale_.assign(static_cast<size_t>(n_kv_heads) * per_head, 0.0f);
  mean_.assign(static_cast<size_t>(n_kv_heads) * d_, 0.0f);
  stats_.resize(static_cast<size_t>(3) * n_kv_heads * n_kblocks_ * d_);
  if (n_keys == 0) return;

  // Threads only for large calls: each parallel region is a barrier, which
  // costs more than this work when the machine is shared.
  const bool parallel = static_cast<int64_t>(n_kv_heads) * n_keys * d_ >= kParallelWork;

  // Pass 1, per key block: channel max, min and mean; the sums give the means.
  std::vector<float> sums(static_cast<size_t>(n_kv_heads) * n_kblocks_ * d_);
#pragma omp parallel if (parallel)
  {
    std::vector<float> row(d_);
#pragma omp for collapse(2) schedule(static)
    for (int32_t h = 0; h < n_kv_heads; ++h)
      for (int64_t kb = 0; kb < n_kblocks_; ++kb) {
        float* mx = const_cast<float*>(block_max(h, kb));
        float* mn = const_cast<float*>(block_min(h, kb));
        float* me = const_cast<float*>(block_mean(h, kb));
        float* sum = sums.data() + (static_cast<size_t>(h) * n_kblocks_ + kb) * d_;
        const int64_t j0 = kb * block, j1 = std::min(n_keys, (kb + 1) * block);
        kernels::read_k_rows(kv, h, j0, 1, d_, mx);
        std::memcpy(mn, mx, sizeof(float) * d_);
        std::memcpy(sum, mx, sizeof(float) * d_);
        for (int64_t j = j0 + 1; j < j1; ++j) {
          kernels::read_k_rows(kv, h, j, 1, d_, row.data());
          for (int32_t c = 0; c < d_; c += 8) {
            const __m256 x = _mm256_loadu_ps(row.data() + c);
            _mm256_storeu_ps(mx + c, _mm256_max_ps(_mm256_loadu_ps(mx + c), x));
            _mm256_storeu_ps(mn + c, _mm256_min_ps(_mm256_loadu_ps(mn + c), x));
            _mm256_storeu_ps(sum + c, _mm256_add_ps(_mm256_loadu_ps(sum + c), x));
          }
        }
        const float inv = 1.0f / static_cast<float>(j1 - j0);
        for (int32_t c = 0; c < d_; ++c) me[c] = sum[c] * inv;
      }
  }
  for (int32_t h = 0; h < n_kv_heads; ++h)
    for (int32_t c = 0; c < d_; ++c) {
      double total = 0;
      for (int64_t kb = 0; kb < n_kblocks_; ++kb) total += sums[(static_cast<size_t>(h) * n_kblocks_ + kb) * d_ + c];
      mean_[static_cast<size_t>(h) * d_ + c] = static_cast<float>(total / static_cast<double>(n_keys));
    }

  // Pass 2, per key: smooth, scale, quantize, pack.
#pragma omp parallel if (parallel)
  {
    std::vector<float> row(d_);
#pragma omp for collapse(2) schedule(static)
    for (int32_t h = 0; h < n_kv_heads; ++h)
      for (int64_t j = 0; j < n_keys; ++j) {
        kernels::read_k_rows(kv, h, j, 1, d_, row.data());
        const float* m = mean(h);
        for (int32_t c = 0; c < d_; ++c) row[c] -= m[c];
        const float amax = abs_max(row.data(), d_);
        const size_t key = static_cast<size_t>(h) * per_head + j;
        if (amax == 0.0f || !std::isfinite(amax)) continue;  // stays 0 (scale 0, bytes = bias)
        scale_[key] = amax / kKeyMax;
        int8_t q8[512];
        quantize_row(row.data(), d_, kKeyMax / amax, kKeyMax, kKeyBias, q8);
        uint8_t* dst = packed_.data() + (static_cast<size_t>(h) * n_kvecs_ + j / 8) * 8 * d_ + (j % 8) * 4;
        for (int32_t g = 0; g < d_ / 4; ++g) std::memcpy(dst + 32 * g, q8 + 4 * g, 4);
      }
  }
}

std::vector<float> QuantKeys::dequantized(int32_t kv_head, int64_t j) const {
  std::vector<float> out(d_);
  const uint8_t* src = kvec(kv_head, j / 8) + (j % 8) * 4;
  const float s = scales(kv_head)[j];
  for (int32_t c = 0; c < d_; ++c) out[c] = s * static_cast<float>(static_cast<int32_t>(src[(c / 4) * 32 + c % 4]) - kKeyBias);
  return out;
}

void QuantRows::quantize(const PlanRequest& r, const QuantKeys& keys, const std::vector<int32_t>* rows) {
  d_ = r.head_dim;
  n_rows_ = r.n_rows;
  const size_t n = static_cast<size_t>(r.n_q_heads) * n_rows_;
  q_.resize(n * d_);
  scale_.resize(n);
  bias_.resize(n);
  dot_mean_.resize(n);
  const int32_t g = r.group();
  const int64_t count = rows ? static_cast<int64_t>(rows->size()) : n_rows_;
  const bool parallel = static_cast<int64_t>(r.n_q_heads) * count * d_ >= kParallelWork;
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
  for (int32_t h = 0; h < r.n_q_heads; ++h)
    for (int64_t k = 0; k < count; ++k) {
      const int64_t i = rows ? (*rows)[k] : k;
      const float* src = r.q_row(h, i);
      const float* m = keys.mean(h / g);
      float dm = 0.0f;
      for (int32_t c = 0; c < d_; ++c) dm += src[c] * m[c];
      const float amax = abs_max(src, d_);
      const size_t at = static_cast<size_t>(h) * n_rows_ + i;
      int8_t* dst = q_.data() + at * d_;
      int32_t sum = 0;
      if (amax > 0.0f && std::isfinite(amax)) {
        sum = quantize_row(src, d_, kRowMax / amax, kRowMax, 0, dst);
        scale_[at] = amax / kRowMax;
      } else {
        std::fill(dst, dst + d_, int8_t{0});
        scale_[at] = 0.0f;
      }
      bias_[at] = kKeyBias * sum;
      dot_mean_[at] = dm;
    }
}

float block_score(const QuantRows& q, int32_t h, std::span<const int32_t> rows, const QuantKeys& keys, int32_t kv_head,
                  int64_t k0, int64_t k1, float scale, const float* base, float stop) {
  if (k0 >= k1 || rows.empty()) return kNegInf;
  const int32_t d = keys.head_dim();
  const int64_t v0 = k0 / 8, v1 = (k1 + 7) / 8;
  // Lane masks for a first / last key vector that is only partly in [k0, k1).
  const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  auto range_mask = [&](int64_t v) {
    const __m256 key = _mm256_add_ps(lane, _mm256_set1_ps(static_cast<float>(8 * v)));
    return _mm256_and_ps(_mm256_cmp_ps(key, _mm256_set1_ps(static_cast<float>(k0)), _CMP_GE_OQ),
                         _mm256_cmp_ps(key, _mm256_set1_ps(static_cast<float>(k1)), _CMP_LT_OQ));
  };
  const __m256 first_mask = range_mask(v0), last_mask = range_mask(v1 - 1);
  // (With one key vector both masks are the same and hold both bounds.)
  const bool first_partial = k0 % 8 != 0, last_partial = k1 % 8 != 0;
  const float* sk_all = keys.scales(kv_head);
  const bool early = std::isfinite(stop);
  const __m256 stop_v = _mm256_set1_ps(stop);

  __m256 best = _mm256_set1_ps(kNegInf);
  const size_t n = rows.size();
  for (size_t r = 0; r < n; r += 2) {
    const int R = r + 1 < n ? 2 : 1;
    const int8_t* qp[2] = {q.row(h, rows[r]), q.row(h, rows[r + R - 1])};
    RowTerms terms[2];
    for (int i = 0; i < R; ++i) {
      const int64_t row = rows[r + i];
      terms[i].bias = _mm256_set1_epi32(q.bias(h, row));
      terms[i].a = _mm256_set1_ps(scale * q.scale(h, row));
      terms[i].c = _mm256_set1_ps(scale * q.dot_mean(h, row) - (base ? base[r + i] : 0.0f));
    }
    for (int64_t v = v0; v < v1; v += 2) {
      const int c = static_cast<int>(std::min<int64_t>(2, v1 - v));
      const __m256* mask[2] = {nullptr, nullptr};
      if (v == v0 && first_partial) mask[0] = &first_mask;
      if (v + c == v1 && last_partial) mask[c - 1] = &last_mask;
      const uint8_t* kp = keys.kvec(kv_head, v);
      const float* sk = sk_all + 8 * v;
      best = R == 2 ? tile_c<2>(c, qp, kp, d, terms, sk, mask, best) : tile_c<1>(c, qp, kp, d, terms, sk, mask, best);
    }
    if (early && _mm256_movemask_ps(_mm256_cmp_ps(best, stop_v, _CMP_GT_OQ)) != 0) break;
  }
  return hmax(best);
}

namespace {

// The estimate's query rows of one (head, query block), transposed for the
// bounds: [d][64] with rows in lanes; unused lanes are 0 with LSE +inf.
struct BoundRows {
  std::vector<float> q, pos, neg;  // q, max(q, 0), min(q, 0)
  alignas(32) float lse[kTileRows];
  int vecs = 1;  // vectors of 8 rows in use
  void load(const PlanRequest& r, int32_t h, std::span<const int32_t> rows, const float* row_lse) {
    const int32_t d = r.head_dim;
    q.assign(static_cast<size_t>(d) * kTileRows, 0.0f);
    pos.assign(q.size(), 0.0f);
    neg.assign(q.size(), 0.0f);
    for (int64_t i = 0; i < kTileRows; ++i) lse[i] = std::numeric_limits<float>::infinity();
    vecs = static_cast<int>(std::max<size_t>(1, (rows.size() + 7) / 8));
    for (size_t i = 0; i < rows.size(); ++i) {
      const float* src = r.q_row(h, rows[i]);
      lse[i] = row_lse[i];
      for (int32_t c = 0; c < d; ++c) {
        const size_t at = static_cast<size_t>(c) * kTileRows + i;
        q[at] = src[c];
        pos[at] = std::max(src[c], 0.0f);
        neg[at] = std::min(src[c], 0.0f);
      }
    }
  }
};

// max over the rows of scale * (sum_c a[c][row] * x[c] + b[c][row] * y[c]) - lse[row]
// (b and y may be null), for V vectors of 8 rows.
template <int V>
float bound_score_v(const BoundRows& rows, const float* a, const float* x, const float* b, const float* y, int32_t d,
                    float scale) {
  __m256 acc[V];
  for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
  for (int32_t c = 0; c < d; ++c) {
    const __m256 xc = _mm256_set1_ps(x[c]);
    const float* ac = a + static_cast<size_t>(c) * kTileRows;
    for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(ac + 8 * v), xc, acc[v]);
  }
  if (b)
    for (int32_t c = 0; c < d; ++c) {
      const __m256 yc = _mm256_set1_ps(y[c]);
      const float* bc = b + static_cast<size_t>(c) * kTileRows;
      for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(bc + 8 * v), yc, acc[v]);
    }
  const __m256 s = _mm256_set1_ps(scale);
  __m256 best = _mm256_set1_ps(kNegInf);
  for (int v = 0; v < V; ++v) best = _mm256_max_ps(best, _mm256_fmsub_ps(acc[v], s, _mm256_load_ps(rows.lse + 8 * v)));
  return hmax(best);
}

float bound_score(const BoundRows& rows, const float* a, const float* x, const float* b, const float* y, int32_t d,
                  float scale) {
  switch (rows.vecs) {
    case 1: return bound_score_v<1>(rows, a, x, b, y, d, scale);
    case 2: return bound_score_v<2>(rows, a, x, b, y, d, scale);
    case 3: return bound_score_v<3>(rows, a, x, b, y, d, scale);
    case 4: return bound_score_v<4>(rows, a, x, b, y, d, scale);
    case 5: return bound_score_v<5>(rows, a, x, b, y, d, scale);
    case 6: return bound_score_v<6>(rows, a, x, b, y, d, scale);
    case 7: return bound_score_v<7>(rows, a, x, b, y, d, scale);
    default: return bound_score_v<8>(rows, a, x, b, y, d, scale);
  }
}

}  // namespace

const BlockScores& Estimator::score(const PlanRequest& r, const Shape& shape, const ScoreOptions& options) {
  const int64_t n = r.n_rows, block = shape.block;
  const int64_t n_qb = (n + kTileRows - 1) / kTileRows;
  scores_.n_heads = r.n_q_heads;
  scores_.n_qblocks = n_qb;
  scores_.n_kblocks = (r.n_keys() + block - 1) / block;
  scores_.s.assign(static_cast<size_t>(r.n_q_heads) * n_qb * scores_.n_kblocks, kNegInf);
  counts_ = {};
  n_rows_ = n;
  if (n == 0) return scores_;

  // Candidate keys of query block qb: the slots after the sinks (positions
  // < sink) and before its local band (positions > first - local).
  const int64_t sink_end = r.first_slot_at(0, shape.sink);
  auto hi_of = [&](int64_t qb) { return r.first_slot_at(0, r.q_pos0 + qb * kTileRows - shape.local + 1); };
  const int64_t max_hi = hi_of(n_qb - 1);
  if (max_hi <= sink_end) return scores_;  // every key of every block is in sink or local band

  // The rows each query block is estimated on: est_rows of them, evenly
  // spaced, ending with the block's last row.
  rows_of_block_.assign(static_cast<size_t>(n_qb), {});
  std::vector<int32_t> all_rows;
  for (int64_t qb = 0; qb < n_qb; ++qb) {
    const int64_t first = qb * kTileRows, count = std::min<int64_t>(kTileRows, n - first);
    const int64_t k = std::min(shape.est_rows, count);
    for (int64_t j = 0; j < k; ++j) rows_of_block_[qb].push_back(static_cast<int32_t>(first + (j + 1) * count / k - 1));
    all_rows.insert(all_rows.end(), rows_of_block_[qb].begin(), rows_of_block_[qb].end());
  }

  // The exact sink + local pass on those rows: for row i of block qb the keys
  // sink u [first(qb) - local + 1, i], the same for every q head of a group.
  const int64_t tile = std::min<int64_t>(shape.est_rows, kTileRows);
  PlanBuilder b(r.shape(r.n_kv_heads, r.group(), static_cast<int32_t>(tile)));
  for (int32_t kvh = 0; kvh < r.n_kv_heads; ++kvh) {
    b.set_row_map(all_rows);
    for (int64_t qb = 0; qb < n_qb; ++qb) {
      const int64_t last = r.q_slot0() + rows_of_block_[qb].back();
      if (sink_end > 0) b.add_range(0, std::min(sink_end, last + 1));
      b.add_range(hi_of(qb), last + 1);
      b.end_tile();
    }
  }
  const Plan partial = b.finish();
  out_.resize(static_cast<size_t>(n) * r.n_q_heads * r.head_dim);
  lse_.resize(static_cast<size_t>(n) * r.n_q_heads);
  kernels::AttnParams a;
  a.n_q_heads = r.n_q_heads;
  a.n_kv_heads = r.n_kv_heads;
  a.head_dim = r.head_dim;
  a.n_rows = n;
  a.q_pos0 = r.q_pos0;
  a.q = r.q;
  a.q_head_stride = r.q_head_stride;
  a.q_row_stride = r.q_row_stride;
  a.kv = r.kv;
  a.out = out_.data();
  a.out_head_stride = r.head_dim;
  a.out_row_stride = static_cast<int64_t>(r.n_q_heads) * r.head_dim;
  a.lse = lse_.data();
  a.lse_head_stride = n;
  a.scale = r.scale;
  kernels::attention_prefill(a, &partial);

  keys_.quantize(r.kv, r.n_kv_heads, r.head_dim, max_hi, block);
  rows_.quantize(r, keys_, &all_rows);

  // Work items (head, query block), latest blocks (most keys) first.
  const std::vector<float>* floor = options.floor;
  std::vector<std::pair<int32_t, int64_t>> items;
  for (int64_t qb = n_qb - 1; qb >= 0; --qb)
    for (int32_t h = 0; h < r.n_q_heads; ++h)
      if (hi_of(qb) > sink_end && !(floor && (*floor)[h] == kNegInf)) items.emplace_back(h, qb);
  const int32_t g = r.group(), d = r.head_dim;
  int64_t dropped = 0, kept = 0, scanned = 0;
#pragma omp parallel reduction(+ : dropped, kept, scanned)
  {
    BoundRows bound;
    std::vector<float> base;
#pragma omp for schedule(dynamic, 1)
    for (size_t it = 0; it < items.size(); ++it) {
      const auto [h, qb] = items[it];
      const int32_t kvh = h / g;
      const int64_t lo = sink_end, hi = hi_of(qb);
      const std::vector<int32_t>& rows = rows_of_block_[qb];
      base.clear();
      for (int32_t i : rows) base.push_back(lse_[static_cast<size_t>(h) * n + i]);
      const float head_floor = floor ? (*floor)[h] : kNegInf;
      const float stop = floor && options.early_stop ? head_floor : std::numeric_limits<float>::infinity();
      if (floor) bound.load(r, h, rows, base.data());
      float* out = scores_.s.data() + (static_cast<size_t>(h) * n_qb + qb) * scores_.n_kblocks;
      for (int64_t kb = lo / block; kb * block < hi; ++kb) {
        const int64_t k0 = std::max(kb * block, lo), k1 = std::min((kb + 1) * block, hi);
        if (floor) {
          const float upper = bound_score(bound, bound.pos.data(), keys_.block_max(kvh, kb), bound.neg.data(),
                                          keys_.block_min(kvh, kb), d, r.scale);
          if (upper <= head_floor) {
            out[kb] = upper;
            ++dropped;
            continue;
          }
          if (options.early_stop && k0 == kb * block && k1 == (kb + 1) * block) {
            const float lower = bound_score(bound, bound.q.data(), keys_.block_mean(kvh, kb), nullptr, nullptr, d, r.scale);
            if (lower > head_floor) {
              out[kb] = lower;
              ++kept;
              continue;
            }
          }
        }
        out[kb] = block_score(rows_, h, rows, keys_, kvh, k0, k1, r.scale, base.data(), stop);
        ++scanned;
      }
    }
  }
  counts_ = {dropped, kept, scanned};
  return scores_;
}

Plan build_plan(const PlanRequest& r, const Shape& shape, const BlockScores& scores, const std::vector<float>& ln_theta) {
  KeySelection sel(r);
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
      if (ln_theta[h] == kNegInf) {  // theta 0: every key
        sel.add_range(h, qb, 0, sel.block_last(qb) + 1);
        continue;
      }
      sel.add_positions(h, qb, 0, shape.sink);
      sel.add_positions(h, qb, sel.block_first_pos(qb) - shape.local + 1, sel.block_last_pos(qb) + 1);
      if (scores.n_kblocks == 0 || qb >= scores.n_qblocks) continue;
      for (int64_t kb = 0; kb < scores.n_kblocks; ++kb)
        if (scores.at(h, qb, kb) > ln_theta[h]) sel.add_key_block(h, qb, kb, shape.block);
    }
  }
  return sel.build();
}

namespace {

// Per-(layer, q head) thetas from the "sale" section of a calibration file.
std::map<std::pair<int32_t, int32_t>, float> load_thetas(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument(fmt::format("sale: cannot read config '{}'", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw std::invalid_argument(fmt::format("sale: config '{}' is not JSON: {}", path, e.what()));
  }
  if (!j.contains("sale") || !j["sale"].contains("heads") || !j["sale"]["heads"].is_array())
    throw std::invalid_argument(
        fmt::format("sale: config '{}' has no \"sale\": {{\"heads\": [...]}} (write one with skim calibrate)", path));
  std::map<std::pair<int32_t, int32_t>, float> out;
  for (const nlohmann::json& e : j["sale"]["heads"]) {
    if (!e.is_object() || !e.contains("layer") || !e.contains("head") || !e.contains("theta") ||
        !e["layer"].is_number_integer() || !e["head"].is_number_integer() || !e["theta"].is_number())
      throw std::invalid_argument(fmt::format("sale: config '{}': bad head entry {}", path, e.dump()));
    const double theta = e["theta"].get<double>();
    const int64_t layer = e["layer"].get<int64_t>(), head = e["head"].get<int64_t>();
    if (!(theta >= 0.0 && theta <= 1.0) || layer < 0 || head < 0)
      throw std::invalid_argument(fmt::format("sale: config '{}': bad head entry {}", path, e.dump()));
    out[{static_cast<int32_t>(layer), static_cast<int32_t>(head)}] = static_cast<float>(theta);
  }
  return out;
}

class SalePlanner : public Planner {
 public:
  SalePlanner(const Shape& shape, float theta, std::map<std::pair<int32_t, int32_t>, float> thetas)
      : shape_(shape), theta_(theta), thetas_(std::move(thetas)) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    std::vector<float> ln_theta(static_cast<size_t>(r.n_q_heads));
    bool any = false;
    for (int32_t h = 0; h < r.n_q_heads; ++h) {
      const auto it = thetas_.find({r.layer, h});
      const float theta = it == thetas_.end() ? theta_ : it->second;
      ln_theta[h] = theta > 0.0f ? std::log(theta) : kNegInf;
      any = any || theta > 0.0f;
    }
    static const BlockScores none;
    const BlockScores& scores = any ? estimator_.score(r, shape_, {&ln_theta, true}) : none;
    return build_plan(r, shape_, scores, ln_theta);
  }

 private:
  Shape shape_;
  float theta_;
  std::map<std::pair<int32_t, int32_t>, float> thetas_;
  Estimator estimator_;
};

}  // namespace

}  // namespace skim::attention::sale

namespace skim::attention {

MethodDef sale_method() {
  AttentionMethodInfo info{
      "sale",
      "SALE: int8 Q.K estimate of block maxima vs an exact sink + local softmax; keeps blocks above theta",
      {{"theta", "0.004", "keep a key block if some row's estimated weight, relative to its sink + local softmax, "
                          "exceeds this (0: keep all)"},
       {"sink", "64", "first keys every query attends to"},
       {"local", "128", "local band in keys before each query block"},
       {"block", "64", "key block size of the selection (32 or 64)"},
       {"est_rows", "8", "rows of each 64-row query block the estimate uses, evenly spaced (64: all, as SALE)"},
       {"config", "", "calibration file (skim calibrate) with per-(layer, head) thetas; others use theta"},
       crossover_param("4096")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            sale::Shape shape;
            shape.sink = p.integer("sink", 0, 1 << 30);
            shape.local = p.integer("local", 1, 1 << 30);
            shape.block = p.integer("block", 32, 64);
            shape.est_rows = p.integer("est_rows", 1, kTileRows);
            if (shape.block != 32 && shape.block != 64)
              throw std::invalid_argument(fmt::format("sale: block={} (use 32 or 64)", shape.block));
            const float theta = static_cast<float>(p.number("theta", 0.0, 1.0));
            const std::string config = p.text("config");
            return std::make_unique<sale::SalePlanner>(
                shape, theta, config.empty() ? std::map<std::pair<int32_t, int32_t>, float>{} : sale::load_thetas(config));
          }};
}

}  // namespace skim::attention
