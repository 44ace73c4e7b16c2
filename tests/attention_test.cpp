// Attention kernel and plan tests: every result is compared against a naive
// float64 attention over the same (stored) K/V values and the same key set.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include "kernels/attention_plan.h"
#include "kernels/attention.h"
#include "kernels/f16.h"
#include "simd_targets.h"
#include "skim/gemm.h"
#include "test_support.h"

namespace skim {
namespace {

using kernels::AttnMath;
using kernels::KvView;
using kernels::Plan;
using kernels::PlanBuilder;
using kernels::PlanError;
using kernels::PlanShape;
using kernels::AttnParams;
using kernels::AttnStats;
using kernels::KvDType;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Q, a KV cache in one storage type, and the exact values the kernel reads.
struct Problem {
  int32_t hq = 0, hkv = 0, d = 0;
  int64_t n_rows = 0, q_pos0 = 0, n_keys = 0, capacity = 0, row_stride = 0;
  KvDType type = KvDType::F16;
  std::vector<float> q;          // [hq][n_rows][d]
  std::vector<uint16_t> k16, v16;  // storage for f16 / bf16
  std::vector<float> k32, v32;     // storage for f32
  std::vector<double> kd, vd;      // [hkv][n_keys][d] values as stored

  int32_t g() const { return hq / hkv; }
  double k_at(int32_t h, int64_t j, int32_t c) const { return kd[(static_cast<size_t>(h) * n_keys + j) * d + c]; }
  double v_at(int32_t h, int64_t j, int32_t c) const { return vd[(static_cast<size_t>(h) * n_keys + j) * d + c]; }

  AttnParams params(float* out, float* lse) const {
    AttnParams p;
    p.n_q_heads = hq;
    p.n_kv_heads = hkv;
    p.head_dim = d;
    p.n_rows = n_rows;
    p.q_pos0 = q_pos0;
    p.q = q.data();
    p.kv = KvView::contiguous(type == KvDType::F32 ? static_cast<const void*>(k32.data()) : k16.data(),
                              type == KvDType::F32 ? static_cast<const void*>(v32.data()) : v16.data(), type,
                              capacity * row_stride, row_stride, n_keys);
    p.out = out;
    p.lse = lse;
    p.validate_plan = true;
    return p;
  }
};

Problem make_problem(int32_t hq, int32_t hkv, int32_t d, int64_t n_rows, int64_t q_pos0, int64_t n_keys,
                     KvDType type, uint64_t seed, int64_t row_pad = 0) {
  Problem pr;
  pr.hq = hq;
  pr.hkv = hkv;
  pr.d = d;
  pr.n_rows = n_rows;
  pr.q_pos0 = q_pos0;
  pr.n_keys = n_keys;
  pr.capacity = n_keys + 5;  // a head stride that is not n_keys * d
  pr.row_stride = d + row_pad;
  pr.type = type;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Logits with a standard deviation of about 2: peaked but not one-hot.
  pr.q.resize(static_cast<size_t>(hq) * n_rows * d);
  for (float& x : pr.q) x = 2.0f * normal(rng);
  const size_t cache = static_cast<size_t>(hkv) * pr.capacity * pr.row_stride;
  pr.kd.resize(static_cast<size_t>(hkv) * n_keys * d);
  pr.vd.resize(pr.kd.size());
  if (type == KvDType::F32) {
    pr.k32.assign(cache, 0.0f);
    pr.v32.assign(cache, 0.0f);
  } else {
    pr.k16.assign(cache, 0);
    pr.v16.assign(cache, 0);
  }
  for (int32_t h = 0; h < hkv; ++h)
    for (int64_t j = 0; j < n_keys; ++j)
      for (int32_t c = 0; c < d; ++c) {
        const size_t at = (static_cast<size_t>(h) * pr.capacity + j) * pr.row_stride + c;
        const size_t ref = (static_cast<size_t>(h) * n_keys + j) * d + c;
        const float kv = normal(rng), vv = normal(rng);
        if (type == KvDType::F32) {
          pr.k32[at] = kv;
          pr.v32[at] = vv;
          pr.kd[ref] = kv;
          pr.vd[ref] = vv;
        } else if (type == KvDType::F16) {
          pr.k16[at] = kernels::f32_to_f16(kv);
          pr.v16[at] = kernels::f32_to_f16(vv);
          pr.kd[ref] = kernels::f16_to_f32(pr.k16[at]);
          pr.vd[ref] = kernels::f16_to_f32(pr.v16[at]);
        } else {
          pr.k16[at] = to_bf16(kv);
          pr.v16[at] = to_bf16(vv);
          pr.kd[ref] = from_bf16(pr.k16[at]);
          pr.vd[ref] = from_bf16(pr.v16[at]);
        }
      }
  return pr;
}

// Keys the plan gives (q head, row), after the causal mask; nullopt when the
// row is not processed (row map). nullptr plan = dense.
std::optional<std::vector<int64_t>> keys_of(const Problem& pr, const Plan* plan, int32_t qh, int64_t row,
                                            bool causal) {
  const int64_t pos = pr.q_pos0 + row;
  std::vector<int64_t> keys;
  if (!plan) {
    const int64_t end = causal ? pos + 1 : pr.n_keys;
    for (int64_t j = 0; j < end; ++j) keys.push_back(j);
    return keys;
  }
  const int32_t h = plan->group_size == 1 ? qh : qh / plan->group_size;
  int64_t local = -1;
  for (int64_t i = 0; i < plan->head_rows(h); ++i)
    if (plan->row_of(h, i) == row) local = i;
  if (local < 0) return std::nullopt;
  const int64_t item = plan->head_item_begin[h] + local / plan->tile_rows;
  for (int64_t r = plan->range_ptr[item]; r < plan->range_ptr[item + 1]; ++r)
    for (int64_t j = plan->ranges[r].begin; j < plan->ranges[r].end; ++j) keys.push_back(j);
  for (int64_t c = plan->col_ptr[item]; c < plan->col_ptr[item + 1]; ++c) keys.push_back(plan->cols[c]);
  if (causal) std::erase_if(keys, [&](int64_t j) { return j > pos; });
  return keys;
}

struct RefRow {
  std::vector<double> o;
  double lse = 0.0;
};

RefRow reference_row(const Problem& pr, int32_t qh, int64_t row, const std::vector<int64_t>& keys, double scale) {
  RefRow r;
  r.o.assign(static_cast<size_t>(pr.d), 0.0);
  if (keys.empty()) {
    r.lse = -std::numeric_limits<double>::infinity();
    return r;
  }
  const int32_t kh = qh / pr.g();
  const float* q = pr.q.data() + (static_cast<size_t>(qh) * pr.n_rows + row) * pr.d;
  std::vector<double> s(keys.size());
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t t = 0; t < keys.size(); ++t) {
    double dot = 0.0;
    for (int32_t c = 0; c < pr.d; ++c) dot += static_cast<double>(q[c]) * pr.k_at(kh, keys[t], c);
    s[t] = dot * scale;
    mx = std::max(mx, s[t]);
  }
  double l = 0.0;
  for (size_t t = 0; t < keys.size(); ++t) {
    const double w = std::exp(s[t] - mx);
    l += w;
    for (int32_t c = 0; c < pr.d; ++c) r.o[c] += w * pr.v_at(kh, keys[t], c);
  }
  for (double& x : r.o) x /= l;
  r.lse = mx + std::log(l);
  return r;
}

// Rows checked against the reference: all of them for small problems, else
// a sample that always includes the first and last rows.
std::vector<int64_t> rows_to_check(const Problem& pr, uint64_t seed) {
  std::vector<int64_t> rows;
  if (pr.n_rows * std::max<int64_t>(pr.n_keys, 1) <= 300000) {
    for (int64_t i = 0; i < pr.n_rows; ++i) rows.push_back(i);
    return rows;
  }
  std::mt19937_64 rng(seed);
  rows = {0, pr.n_rows - 1};
  for (int i = 0; i < 40; ++i) rows.push_back(static_cast<int64_t>(rng() % pr.n_rows));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

struct Output {
  std::vector<float> o, lse;
};

Output alloc_output(const Problem& pr) {
  Output out;
  out.o.assign(static_cast<size_t>(pr.hq) * pr.n_rows * pr.d, std::nanf(""));
  out.lse.assign(static_cast<size_t>(pr.hq) * pr.n_rows, std::nanf(""));
  return out;
}

// Compares a contiguous [hq][n_rows][d] result with the reference for the
// plan's key sets: relative L2 error of O over the checked rows, LSE within
// 1e-4 (absolute, natural log), rows without keys exactly 0 / -inf.
// ATTN_TEST_VERBOSE=1 prints the errors of every comparison.
void expect_matches(const Problem& pr, const Output& out, const Plan* plan, bool causal, double tol,
                    const char* what, uint64_t seed = 1, double lse_tol = 1e-4) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(pr.d));
  double err2 = 0.0, ref2 = 0.0, max_lse_err = 0.0;
  for (int32_t h = 0; h < pr.hq; ++h) {
    for (int64_t row : rows_to_check(pr, seed + h)) {
      const float* o = out.o.data() + (static_cast<size_t>(h) * pr.n_rows + row) * pr.d;
      const float lse = out.lse[static_cast<size_t>(h) * pr.n_rows + row];
      const auto keys = keys_of(pr, plan, h, row, causal);
      if (!keys || keys->empty()) {
        for (int32_t c = 0; c < pr.d; ++c) ASSERT_EQ(o[c], 0.0f) << what << ": empty row " << row << " head " << h;
        ASSERT_EQ(lse, kNegInf) << what << ": empty row " << row << " head " << h;
        continue;
      }
      const RefRow ref = reference_row(pr, h, row, *keys, scale);
      for (int32_t c = 0; c < pr.d; ++c) {
        ASSERT_TRUE(std::isfinite(o[c])) << what << ": row " << row << " head " << h;
        err2 += (o[c] - ref.o[c]) * (o[c] - ref.o[c]);
        ref2 += ref.o[c] * ref.o[c];
      }
      max_lse_err = std::max(max_lse_err, std::abs(lse - ref.lse));
    }
  }
  const double rel = ref2 > 0.0 ? std::sqrt(err2 / ref2) : 0.0;
  if (std::getenv("ATTN_TEST_VERBOSE")) std::printf("%-40s rel %.3g lse %.3g\n", what, rel, max_lse_err);
  EXPECT_LE(rel, tol) << what;
  EXPECT_LE(max_lse_err, lse_tol) << what;
}

// Relative L2 tolerance: every path computes in f32 from the stored values.
constexpr double kTol = 1e-5;

Output run_prefill(const Problem& pr, const Plan* plan, bool causal = true, AttnStats* stats = nullptr,
                   int32_t split = 0) {
  Output out = alloc_output(pr);
  AttnParams p = pr.params(out.o.data(), out.lse.data());
  p.causal = causal;
  p.stats = stats;
  p.split_key_tiles = split;
  kernels::attention_prefill(p, plan);
  return out;
}

PlanShape shape_of(const Problem& pr, bool group, int32_t tile_rows = 64) {
  PlanShape s;
  s.n_heads = group ? pr.hkv : pr.hq;
  s.group_size = group ? pr.g() : 1;
  s.tile_rows = tile_rows;
  s.n_rows = pr.n_rows;
  s.q_pos0 = pr.q_pos0;
  return s;
}

// Random sparse plan: per tile a few unaligned ranges and some single columns
// (disjoint), all before the tile's last position; some tiles empty.
Plan random_plan(const Problem& pr, bool group, uint64_t seed, bool columns_only = false, bool scored = false,
                 int32_t tile_rows = 64) {
  std::mt19937_64 rng(seed);
  PlanBuilder b(shape_of(pr, group, tile_rows), scored);
  const PlanShape sh = shape_of(pr, group, tile_rows);
  auto uniform = [&](double lo, double hi) { return lo + (hi - lo) * static_cast<double>(rng() % 1000000) / 1e6; };
  for (int32_t h = 0; h < sh.n_heads; ++h) {
    const int64_t tiles = (pr.n_rows + tile_rows - 1) / tile_rows;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t last = pr.q_pos0 + std::min<int64_t>((t + 1) * tile_rows, pr.n_rows) - 1;
      const int64_t limit = last + 1;
      if (rng() % 7 == 0) {  // empty tile
        b.end_tile();
        continue;
      }
      std::vector<char> used(static_cast<size_t>(limit), 0);
      if (!columns_only) {
        const int n_ranges = 1 + static_cast<int>(rng() % 4);
        for (int r = 0; r < n_ranges; ++r) {
          const int64_t len = 1 + static_cast<int64_t>(rng() % std::max<int64_t>(1, std::min<int64_t>(limit, 150)));
          const int64_t begin = static_cast<int64_t>(rng() % static_cast<uint64_t>(limit));
          const int64_t end = std::min(limit, begin + len);
          b.add_range(begin, end, static_cast<float>(uniform(0, 1)));
          for (int64_t j = begin; j < end; ++j) used[j] = 1;
        }
        if (rng() % 2) {  // the diagonal band, partly masked per row
          const int64_t begin = std::max<int64_t>(0, last - tile_rows - static_cast<int64_t>(rng() % 40));
          b.add_range(begin, limit, static_cast<float>(uniform(0, 1)));
          for (int64_t j = begin; j < limit; ++j) used[j] = 1;
        }
      }
      const int n_cols = static_cast<int>(rng() % 150);
      for (int c = 0; c < n_cols; ++c) {
        const int64_t key = static_cast<int64_t>(rng() % static_cast<uint64_t>(limit));
        if (!used[key]) b.add_column(key, static_cast<float>(uniform(0, 1)));
      }
      b.end_tile();
    }
  }
  return b.finish();
}

// ---------------------------------------------------------------------------
// Plans

TEST(AttentionPlan, DensePlanCoversEachRowUpToItself) {
  PlanShape s{2, 1, 64, 130, 10};
  const Plan p = kernels::make_dense_plan(s);
  ASSERT_EQ(p.n_items(), 6);
  EXPECT_NO_THROW(kernels::validate_plan(p, 140, true));
  EXPECT_EQ(p.ranges[0].begin, 0);
  EXPECT_EQ(p.ranges[0].end, 10 + 64);
  EXPECT_EQ(p.ranges[2].end, 10 + 130);  // last tile of 2 rows ends at its last row
  EXPECT_EQ(p.tile_last_position(1, 2), 139);
  EXPECT_THROW(kernels::validate_plan(p, 139, true), PlanError);  // key 139 missing
}

TEST(AttentionPlan, BuilderSortsMergesAndDropsCoveredColumns) {
  PlanBuilder b(PlanShape{1, 1, 4, 4, 100}, true);
  b.add_range(50, 60, 1.0f);
  b.add_column(70, 0.5f);
  b.add_range(10, 20, 2.0f);
  b.add_range(15, 30, 3.0f);  // overlaps: merged, max score
  b.add_column(55, 9.0f);     // inside a range: dropped
  b.add_column(5, 0.25f);
  b.add_column(5, 0.75f);     // duplicate: kept once, max score
  b.end_tile();
  const Plan p = b.finish();
  ASSERT_EQ(p.ranges.size(), 2u);
  EXPECT_EQ(p.ranges[0].begin, 10);
  EXPECT_EQ(p.ranges[0].end, 30);
  EXPECT_EQ(p.range_scores[0], 3.0f);
  ASSERT_EQ(p.cols.size(), 2u);
  EXPECT_EQ(p.cols[0], 5);
  EXPECT_EQ(p.col_scores[0], 0.75f);
  EXPECT_EQ(p.cols[1], 70);
  EXPECT_NO_THROW(kernels::validate_plan(p, 200, true));
}

TEST(AttentionPlan, ValidationNamesEachViolation) {
  const auto base = [] {
    PlanBuilder b(PlanShape{1, 1, 8, 8, 100});
    b.add_range(0, 10);
    b.add_range(20, 30);
    b.add_column(50);
    b.end_tile();
    return b.finish();
  };
  EXPECT_NO_THROW(kernels::validate_plan(base(), 200, true));
  {
    Plan p = base();
    std::swap(p.ranges[0], p.ranges[1]);
    EXPECT_THROW(kernels::validate_plan(p, 200, true), PlanError);  // unsorted
  }
  {
    Plan p = base();
    p.ranges[1].begin = 5;
    EXPECT_THROW(kernels::validate_plan(p, 200, true), PlanError);  // overlapping
  }
  {
    Plan p = base();
    p.cols[0] = 25;
    EXPECT_THROW(kernels::validate_plan(p, 200, true), PlanError);  // column inside a range
  }
  {
    Plan p = base();
    p.cols[0] = 108;  // after the last query position 107
    EXPECT_THROW(kernels::validate_plan(p, 200, true), PlanError);
    EXPECT_NO_THROW(kernels::validate_plan(p, 200, false));  // fine without the causal rule
  }
  {
    Plan p = base();
    p.ranges[1].end = 300;
    EXPECT_THROW(kernels::validate_plan(p, 200, false), PlanError);  // out of bounds
  }
  {
    Plan p = base();
    p.range_ptr.back() = 1;
    EXPECT_THROW(kernels::validate_plan_structure(p), PlanError);
  }
  {
    Plan p = base();
    p.skip_lambda = {-1.0f};
    EXPECT_THROW(kernels::validate_plan_structure(p), PlanError);
  }
}

TEST(AttentionPlan, RowMapsAndHeadsWithoutRows) {
  PlanBuilder b(PlanShape{3, 1, 2, 10, 0});
  const std::vector<int32_t> rows0 = {1, 4, 9};
  b.set_row_map(rows0);
  for (int t = 0; t < 2; ++t) {
    b.add_range(0, 1);
    b.end_tile();
  }
  b.set_row_map({});  // head 1 processes no rows
  for (int t = 0; t < 5; ++t) {  // head 2: all 10 rows
    b.add_range(0, 1);
    b.end_tile();
  }
  const Plan p = b.finish();
  EXPECT_EQ(p.head_tiles(0), 2);
  EXPECT_EQ(p.head_tiles(1), 0);
  EXPECT_EQ(p.head_tiles(2), 5);
  EXPECT_EQ(p.tile_last_position(0, 1), 9);
  EXPECT_NO_THROW(kernels::validate_plan(p, 10, true));
  PlanBuilder bad(PlanShape{1, 1, 2, 10, 0});
  EXPECT_THROW(bad.set_row_map(std::vector<int32_t>{3, 3}), PlanError);
  PlanBuilder incomplete(PlanShape{1, 1, 2, 10, 0});
  incomplete.end_tile();
  EXPECT_THROW(incomplete.finish(), PlanError);
}

// ---------------------------------------------------------------------------
// Dense

struct DenseCase {
  int32_t hq, hkv, d;
  int64_t n_rows, q_pos0;
  KvDType type;
};

TEST(Attention, DenseMatchesReference) {
  const DenseCase cases[] = {
      {1, 1, 64, 1, 0, KvDType::F16},       {3, 1, 64, 7, 0, KvDType::F16},
      {9, 3, 64, 65, 0, KvDType::F16},      {9, 3, 64, 333, 17, KvDType::F16},
      {6, 1, 128, 130, 64, KvDType::F16},   {7, 1, 64, 100, 5, KvDType::BF16},
      {8, 1, 128, 257, 1000, KvDType::F16}, {2, 2, 256, 190, 3, KvDType::F32},
      {3, 1, 256, 129, 0, KvDType::BF16},   {12, 2, 128, 513, 0, KvDType::F32},
      {3, 1, 64, 5000, 0, KvDType::F16},    {2, 1, 128, 2049, 1500, KvDType::F16},
      {4, 4, 64, 1000, 0, KvDType::F32},    {6, 2, 256, 700, 11, KvDType::F16},
  };
  uint64_t seed = 100;
  for (const DenseCase& c : cases) {
    const Problem pr = make_problem(c.hq, c.hkv, c.d, c.n_rows, c.q_pos0, c.q_pos0 + c.n_rows, c.type, ++seed);
    const std::string what = "hq " + std::to_string(c.hq) + " hkv " + std::to_string(c.hkv) + " d " +
                             std::to_string(c.d) + " n " + std::to_string(c.n_rows) + " pos0 " +
                             std::to_string(c.q_pos0);
    expect_matches(pr, run_prefill(pr, nullptr), nullptr, true, kTol, what.c_str());
    if (c.n_rows * (c.q_pos0 + c.n_rows) < 400000) {
      const Plan per_head = kernels::make_dense_plan(shape_of(pr, false));
      expect_matches(pr, run_prefill(pr, &per_head), nullptr, true, kTol, (what + " per-head plan").c_str());
      const Plan group = kernels::make_dense_plan(shape_of(pr, true, 64));
      expect_matches(pr, run_prefill(pr, &group), nullptr, true, kTol, (what + " group plan").c_str());
    }
  }
}

TEST(Attention, StridedLayoutsAndPaddedCacheRows) {
  // Q and O as [n_rows][hq*d] (the GEMM layout), cache rows wider than d,
  // LSE with a head stride, against the contiguous run.
  const Problem pr = make_problem(6, 2, 64, 150, 30, 180, KvDType::F16, 7, /*row_pad=*/16);
  const Output ref = run_prefill(pr, nullptr);
  std::vector<float> q_rows(pr.q.size()), o_rows(pr.q.size(), std::nanf(""));
  for (int32_t h = 0; h < pr.hq; ++h)
    for (int64_t i = 0; i < pr.n_rows; ++i)
      std::memcpy(&q_rows[(i * pr.hq + h) * pr.d], &pr.q[(h * pr.n_rows + i) * pr.d], pr.d * sizeof(float));
  std::vector<float> lse(static_cast<size_t>(pr.hq) * 200, std::nanf(""));
  AttnParams p = pr.params(o_rows.data(), lse.data());
  p.q = q_rows.data();
  p.q_head_stride = pr.d;
  p.q_row_stride = static_cast<int64_t>(pr.hq) * pr.d;
  p.out_head_stride = pr.d;
  p.out_row_stride = static_cast<int64_t>(pr.hq) * pr.d;
  p.lse_head_stride = 200;
  kernels::attention_prefill(p);
  for (int32_t h = 0; h < pr.hq; ++h)
    for (int64_t i = 0; i < pr.n_rows; ++i) {
      for (int32_t c = 0; c < pr.d; ++c)
        ASSERT_EQ(o_rows[(i * pr.hq + h) * pr.d + c], ref.o[(h * pr.n_rows + i) * pr.d + c]);
      ASSERT_EQ(lse[h * 200 + i], ref.lse[h * pr.n_rows + i]);
    }
  expect_matches(pr, ref, nullptr, true, kTol, "padded rows");
}

TEST(Attention, NonCausalSeesAllKeys) {
  const Problem pr = make_problem(4, 2, 64, 70, 0, 300, KvDType::F16, 8);
  expect_matches(pr, run_prefill(pr, nullptr, false), nullptr, false, kTol, "non-causal dense");
  const Plan plan = random_plan(pr, false, 9);
  expect_matches(pr, run_prefill(pr, &plan, false), &plan, false, kTol, "non-causal sparse");
}

TEST(Attention, ThreadCountsAgreeWithReference) {
  const Problem pr = make_problem(9, 3, 64, 400, 0, 400, KvDType::F16, 10);
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    expect_matches(pr, run_prefill(pr, nullptr), nullptr, true, kTol, "threads");
  }
  omp_set_num_threads(saved);
}

// ---------------------------------------------------------------------------
// Sparse

TEST(Attention, RandomSparsePlansMatchMaskedReference) {
  struct C {
    int32_t hq, hkv, d;
    int64_t n_rows, q_pos0;
    KvDType type;
    bool group;
    int32_t tile_rows;
  };
  const C cases[] = {
      {3, 1, 64, 300, 0, KvDType::F16, false, 64},    {9, 3, 64, 257, 100, KvDType::F16, true, 64},
      {6, 1, 128, 200, 40, KvDType::BF16, true, 32},  {8, 1, 64, 130, 7, KvDType::F32, true, 64},
      {7, 1, 256, 120, 0, KvDType::F16, false, 48},   {2, 2, 128, 1200, 300, KvDType::F16, false, 64},
      {3, 3, 64, 99, 1, KvDType::F32, false, 16},     {12, 2, 128, 140, 0, KvDType::F16, true, 16},
  };
  uint64_t seed = 200;
  for (const C& c : cases) {
    const Problem pr = make_problem(c.hq, c.hkv, c.d, c.n_rows, c.q_pos0, c.q_pos0 + c.n_rows, c.type, ++seed);
    const std::string what = "hq " + std::to_string(c.hq) + " d " + std::to_string(c.d) + " n " +
                             std::to_string(c.n_rows) + (c.group ? " group" : " per-head");
    const Plan plan = random_plan(pr, c.group, ++seed, false, false, c.tile_rows);
    expect_matches(pr, run_prefill(pr, &plan), &plan, true, kTol, (what + " ranges+cols").c_str());
    const Plan cols = random_plan(pr, c.group, ++seed, true, false, c.tile_rows);
    expect_matches(pr, run_prefill(pr, &cols), &cols, true, kTol, (what + " columns only").c_str());
  }
}

TEST(Attention, EmptyTilesAndUnmappedRowsGiveZeroAndNegInf) {
  const Problem pr = make_problem(4, 2, 64, 100, 20, 120, KvDType::F16, 11);
  PlanBuilder b(shape_of(pr, true, 32));
  const std::vector<int32_t> rows = {0, 3, 4, 50, 51, 99};
  b.set_row_map(rows);  // KV head 0: only these rows
  b.add_range(0, 10);
  b.end_tile();
  for (int t = 0; t < 4; ++t) {  // KV head 1: tile 1 has no keys
    if (t != 1) b.add_range(0, 20 + 32 * t + 1);
    b.end_tile();
  }
  const Plan plan = b.finish();
  const Output out = run_prefill(pr, &plan);
  expect_matches(pr, out, &plan, true, kTol, "row map + empty tile");
  // Spot checks of the zero rows: an unmapped row of head 0, a row of the empty tile of head 3.
  EXPECT_EQ(out.lse[1 * 100 + 1], kNegInf);
  EXPECT_EQ(out.o[(1 * 100 + 1) * 64 + 5], 0.0f);
  EXPECT_EQ(out.lse[3 * 100 + 40], kNegInf);
  EXPECT_TRUE(std::isfinite(out.lse[3 * 100 + 70]));
}

TEST(Attention, LambdaZeroIsBitwiseNoSkipping) {
  const Problem pr = make_problem(6, 2, 128, 300, 0, 300, KvDType::F16, 12);
  Plan plan = random_plan(pr, true, 13);
  AttnStats plain_stats, zero_stats;
  const Output plain = run_prefill(pr, &plan, true, &plain_stats);
  plan.skip_lambda.assign(static_cast<size_t>(plan.n_heads), 0.0f);
  const Output zero = run_prefill(pr, &plan, true, &zero_stats);
  EXPECT_EQ(plain.o, zero.o);
  EXPECT_EQ(plain.lse, zero.lse);
  EXPECT_EQ(zero_stats.key_tiles_skipped, 0);
  EXPECT_EQ(zero_stats.key_tiles_computed, plain_stats.key_tiles_computed);
}

// Keys with chosen logits: every query row is the same vector u, and key j is
// c_j * u / (scale * |u|^2), so the logit of key j is c_j for every row.
Problem controlled_problem(const std::vector<float>& logits, int64_t n_rows, uint64_t seed) {
  Problem pr = make_problem(2, 1, 64, n_rows, static_cast<int64_t>(logits.size()) - n_rows,
                            static_cast<int64_t>(logits.size()), KvDType::F32, seed);
  std::vector<float> u(64);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  double norm2 = 0.0;
  for (float& x : u) {
    x = normal(rng);
    norm2 += static_cast<double>(x) * x;
  }
  const double scale = 1.0 / 8.0;
  for (int32_t h = 0; h < pr.hq; ++h)
    for (int64_t i = 0; i < n_rows; ++i)
      std::copy(u.begin(), u.end(), pr.q.begin() + (h * n_rows + i) * 64);
  for (size_t j = 0; j < logits.size(); ++j)
    for (int32_t c = 0; c < 64; ++c) {
      const float k = static_cast<float>(logits[j] * u[c] / (scale * norm2));
      pr.k32[j * pr.row_stride + c] = k;
      pr.kd[j * 64 + c] = k;
    }
  return pr;
}

TEST(Attention, LambdaSkipsExactlyTheFarTiles) {
  // Key tiles (64 keys each): logits 0, -1, -3, 0.5. With lambda = 0.1 the
  // third tile (e^-3 < 0.1) is skipped, the second (e^-1) and fourth are not.
  std::vector<float> logits;
  for (float c : {0.0f, -1.0f, -3.0f, 0.5f}) logits.insert(logits.end(), 64, c);
  const Problem pr = controlled_problem(logits, 1, 14);
  PlanBuilder b(shape_of(pr, true, 1));
  b.add_range(0, 256);
  b.end_tile();
  b.set_skip_lambda(0, 0.1f);
  const Plan plan = b.finish();
  AttnStats st;
  const Output out = run_prefill(pr, &plan, true, &st);
  EXPECT_EQ(st.key_tiles, 4);
  EXPECT_EQ(st.key_tiles_skipped, 1);
  EXPECT_EQ(st.key_tiles_computed, 3);
  // Equal to the reference without keys 128..191, and measurably different from the full one.
  PlanBuilder kept(shape_of(pr, true, 1));
  kept.add_range(0, 128);
  kept.add_range(192, 256);
  kept.end_tile();
  const Plan kept_plan = kept.finish();
  expect_matches(pr, out, &kept_plan, true, kTol, "lambda-skipped tile");
  const RefRow full = reference_row(pr, 0, 0, *keys_of(pr, nullptr, 0, 0, true), 1.0 / 8.0);
  double diff = 0.0;
  for (int c = 0; c < 64; ++c) diff = std::max(diff, std::abs(full.o[c] - out.o[c]));
  EXPECT_GT(diff, 1e-4);
}

TEST(Attention, OrderedPlansStopAtTheta) {
  const Problem pr = make_problem(3, 1, 64, 200, 100, 300, KvDType::F16, 15);
  Plan plan = random_plan(pr, true, 16, false, /*scored=*/true);
  plan.stop_theta.assign(1, 0.5f);
  AttnStats st;
  const Output out = run_prefill(pr, &plan, true, &st);
  // Expected key set: ranges and columns scored >= theta.
  Plan expected = plan;
  {
    PlanBuilder b(shape_of(pr, true));
    for (int64_t item = 0; item < plan.n_items(); ++item) {
      for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r)
        if (plan.range_scores[r] >= 0.5f) b.add_range(plan.ranges[r].begin, plan.ranges[r].end);
      for (int64_t c = plan.col_ptr[item]; c < plan.col_ptr[item + 1]; ++c)
        if (plan.col_scores[c] >= 0.5f) b.add_column(plan.cols[c]);
      b.end_tile();
    }
    expected = b.finish();
  }
  expect_matches(pr, out, &expected, true, kTol, "early stop");
  EXPECT_GT(st.key_tiles_stopped, 0);
  EXPECT_EQ(st.key_tiles_computed + st.key_tiles_stopped, st.key_tiles);
  // Without theta the scored plan is just visited in a different order.
  plan.stop_theta.clear();
  expect_matches(pr, run_prefill(pr, &plan), &plan, true, kTol, "ordered, no stop");
}

TEST(Attention, OrderedPlansStopOnRunningMass) {
  // Key tiles (64 keys each) with logits 0, 0, -8, +2, visited in that order
  // (scores 2, 0.9, 0.8, 0.7; theta 1.5 forces only the first). The third
  // tile adds ~e^-8 / 2 of the running sum (< eps = 0.01), so the kernel stops
  // there: the fourth, heaviest tile is never visited (the price of an
  // estimate that orders it last).
  std::vector<float> logits;
  for (float c : {0.0f, 0.0f, -8.0f, 2.0f}) logits.insert(logits.end(), 64, c);
  const Problem pr = controlled_problem(logits, 1, 16);
  auto scored_plan = [&](float theta, float eps) {
    PlanBuilder b(shape_of(pr, true, 1), true);
    const float scores[] = {2.0f, 0.9f, 0.8f, 0.7f};
    for (int t = 0; t < 4; ++t) b.add_range(64 * t, 64 * (t + 1), scores[t]);
    b.end_tile();
    b.set_stop_theta(0, theta);
    b.set_stop_mass(0, eps);
    return b.finish();
  };
  PlanBuilder kept(shape_of(pr, true, 1));
  kept.add_range(0, 192);
  kept.end_tile();
  const Plan kept_plan = kept.finish();
  for (int32_t split : {0, 1}) {  // the stop needs the whole stream: never split
    const Plan plan = scored_plan(1.5f, 0.01f);
    AttnStats st;
    const Output out = run_prefill(pr, &plan, true, &st, split);
    EXPECT_EQ(st.key_tiles_stopped, 1) << split;
    EXPECT_EQ(st.pairs_stopped, 64 * pr.g()) << split;
    EXPECT_EQ(st.split_items, 0) << split;
    expect_matches(pr, out, &kept_plan, true, kTol, "running-mass stop");
  }
  // A smaller eps visits everything.
  const Plan all = scored_plan(1.5f, 1e-6f);
  AttnStats st;
  expect_matches(pr, run_prefill(pr, &all, true, &st), &all, true, kTol, "eps below every tile");
  EXPECT_EQ(st.key_tiles_stopped, 0);
  // stop_mass must be a share.
  Plan bad = all;
  bad.stop_mass.assign(1, 1.5f);
  EXPECT_THROW(validate_plan(bad, pr.n_keys, true), PlanError);
}

// ---------------------------------------------------------------------------
// Splitting and merging

TEST(Attention, MergeOfSplitKeyStreamsEqualsUnsplit) {
  const Problem pr = make_problem(6, 2, 128, 150, 400, 550, KvDType::F16, 17);
  const Plan plan = random_plan(pr, false, 18);
  const Output whole = run_prefill(pr, &plan);
  // Two plans with the first / remaining ranges and columns of each tile.
  PlanBuilder first(shape_of(pr, false)), rest(shape_of(pr, false));
  for (int64_t item = 0; item < plan.n_items(); ++item) {
    const int64_t r0 = plan.range_ptr[item], r1 = plan.range_ptr[item + 1];
    for (int64_t r = r0; r < r1; ++r)
      (r < (r0 + r1) / 2 ? first : rest).add_range(plan.ranges[r].begin, plan.ranges[r].end);
    const int64_t c0 = plan.col_ptr[item], c1 = plan.col_ptr[item + 1];
    for (int64_t c = c0; c < c1; ++c) (c % 2 ? first : rest).add_column(plan.cols[c]);
    first.end_tile();
    rest.end_tile();
  }
  const Plan p1 = first.finish(), p2 = rest.finish();
  Output a = run_prefill(pr, &p1);
  const Output b = run_prefill(pr, &p2);
  kernels::merge_partial(pr.hq * pr.n_rows, pr.d, a.o.data(), pr.d, a.lse.data(), b.o.data(), pr.d, b.lse.data());
  double err2 = 0.0, ref2 = 0.0;
  for (size_t i = 0; i < whole.o.size(); ++i) {
    err2 += (a.o[i] - whole.o[i]) * (a.o[i] - whole.o[i]);
    ref2 += whole.o[i] * whole.o[i];
  }
  EXPECT_LE(std::sqrt(err2 / ref2), 1e-6);
  for (size_t i = 0; i < whole.lse.size(); ++i) {
    if (whole.lse[i] == kNegInf) {
      EXPECT_EQ(a.lse[i], kNegInf);
    } else {
      EXPECT_NEAR(a.lse[i], whole.lse[i], 1e-5);
    }
  }
  expect_matches(pr, a, &plan, true, kTol, "merged halves");
}

TEST(Attention, ForcedKeySplitsMatchReference) {
  const Problem pr = make_problem(9, 3, 64, 300, 1000, 1300, KvDType::F16, 19);
  AttnStats st;
  const Output out = run_prefill(pr, nullptr, true, &st, /*split=*/3);
  EXPECT_GT(st.split_items, 0);
  expect_matches(pr, out, nullptr, true, kTol, "split every 3 key tiles");
  const Plan plan = random_plan(pr, false, 20, false, true);
  expect_matches(pr, run_prefill(pr, &plan, true, nullptr, 2), &plan, true, kTol, "split ordered sparse");
}

TEST(Attention, ChunkedPrefillEqualsOneCall) {
  const Problem pr = make_problem(9, 3, 64, 700, 0, 700, KvDType::F16, 21);
  const Output whole = run_prefill(pr, nullptr);
  // Rows [0, 300) at position 0, then rows [300, 700) at position 300.
  for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{0, 300}, {300, 700}}) {
    const int64_t n = end - begin;
    std::vector<float> q(static_cast<size_t>(pr.hq) * n * pr.d), o(q.size()), lse(static_cast<size_t>(pr.hq) * n);
    for (int32_t h = 0; h < pr.hq; ++h)
      std::memcpy(&q[h * n * pr.d], &pr.q[(h * pr.n_rows + begin) * pr.d], n * pr.d * sizeof(float));
    AttnParams p = pr.params(o.data(), lse.data());
    p.q = q.data();
    p.n_rows = n;
    p.q_pos0 = begin;
    kernels::attention_prefill(p);
    double err2 = 0.0, ref2 = 0.0;
    for (int32_t h = 0; h < pr.hq; ++h)
      for (int64_t i = 0; i < n * pr.d; ++i) {
        const double w = whole.o[(h * pr.n_rows + begin) * pr.d + i];
        err2 += (o[h * n * pr.d + i] - w) * (o[h * n * pr.d + i] - w);
        ref2 += w * w;
      }
    EXPECT_LE(std::sqrt(err2 / ref2), 1e-6) << "chunk at " << begin;
  }
}

// ---------------------------------------------------------------------------
// Decode

TEST(Attention, DecodeMatchesReference) {
  struct C {
    int32_t hq, hkv, d;
    int64_t rows, context;
    KvDType type;
  };
  const C cases[] = {
      {1, 1, 64, 1, 1, KvDType::F16},       {9, 3, 64, 1, 8192, KvDType::F16}, {12, 2, 128, 1, 3001, KvDType::F16},
      {8, 1, 128, 1, 777, KvDType::BF16},   {6, 6, 256, 1, 1000, KvDType::F32}, {7, 1, 64, 3, 500, KvDType::F16},
      {16, 2, 64, 1, 300, KvDType::F16},    {4, 1, 128, 16, 2000, KvDType::F16},
  };
  uint64_t seed = 300;
  for (const C& c : cases) {
    const Problem pr = make_problem(c.hq, c.hkv, c.d, c.rows, c.context - c.rows, c.context, c.type, ++seed);
    Output out = alloc_output(pr);
    AttnParams p = pr.params(out.o.data(), out.lse.data());
    kernels::attention_decode(p);
    const std::string what = "decode hq " + std::to_string(c.hq) + " d " + std::to_string(c.d) + " ctx " +
                             std::to_string(c.context);
    expect_matches(pr, out, nullptr, true, kTol, what.c_str());
    // Forced split into parts of 2 key tiles, merged.
    Output split = alloc_output(pr);
    p = pr.params(split.o.data(), split.lse.data());
    p.split_key_tiles = 2;
    kernels::attention_decode(p);
    expect_matches(pr, split, nullptr, true, kTol, (what + " split").c_str());
  }
}

TEST(Attention, DecodeWithSparsePlan) {
  const Problem pr = make_problem(8, 2, 128, 1, 4999, 5000, KvDType::F16, 22);
  // Quest-like: sink, a few pages, the recent window, and scattered columns, per KV group.
  PlanBuilder b(shape_of(pr, true, 1));
  for (int32_t h = 0; h < pr.hkv; ++h) {
    b.add_range(0, 64);
    b.add_range(1024 + 64 * h, 1024 + 64 * h + 128);
    b.add_range(4000, 4100);
    b.add_range(4872, 5000);
    for (int c = 0; c < 40; ++c) b.add_column(2000 + 37 * c + h);
    b.end_tile();
  }
  const Plan plan = b.finish();
  Output out = alloc_output(pr);
  AttnParams p = pr.params(out.o.data(), out.lse.data());
  kernels::attention_decode(p, &plan);
  expect_matches(pr, out, &plan, true, kTol, "decode sparse");
}

// ---------------------------------------------------------------------------
// SIMD targets: the kernel is compiled for several vector widths; run each one
// this CPU supports (with 4, 8 or 16 float lanes the tile padding, the column
// blocking and the reductions take different paths).

TEST(Attention, EveryCompiledTargetMatchesReference) {
  test::for_each_simd_target([] {
    uint64_t seed = 400;
    for (int32_t d : {64, 128}) {
      const Problem pr = make_problem(6, 2, d, 150, 20, 170, KvDType::F16, ++seed);
      expect_matches(pr, run_prefill(pr, nullptr), nullptr, true, kTol, "dense");
      const Plan plan = random_plan(pr, false, ++seed, false, true, 32);
      expect_matches(pr, run_prefill(pr, &plan, true, nullptr, 2), &plan, true, kTol, "sparse");
      const Problem dec = make_problem(6, 2, d, 1, 999, 1000, KvDType::BF16, ++seed);
      Output out = alloc_output(dec);
      kernels::attention_decode(dec.params(out.o.data(), out.lse.data()));
      expect_matches(dec, out, nullptr, true, kTol, "decode");
    }
  });
}

// bf16 arithmetic: Q, K, P and V rounded to bf16 (unit roundoff 2^-8), f32
// sums, on every target (AVX512-BF16 dot products on AVX3_DL where the CPU
// has them, emulated elsewhere). Bounds: a few roundoffs of the output's
// norm, and of the LSE (scores here reach |8| in base e).
TEST(Attention, Bf16ArithmeticMatchesReferenceOnEveryTarget) {
  const test::ScopedAttnMath restore(AttnMath::kF32);
  test::for_each_simd_target([] {
    uint64_t seed = 900;
    for (int32_t d : {64, 128}) {
      const Problem pr = make_problem(6, 2, d, 150, 20, 170, KvDType::F16, ++seed);
      const Plan plan = random_plan(pr, false, ++seed, false, true, 32);
      kernels::set_attention_math(AttnMath::kF32);
      const Output f32 = run_prefill(pr, nullptr);
      kernels::set_attention_math(AttnMath::kBf16);
      const Output bf16 = run_prefill(pr, nullptr);
      expect_matches(pr, bf16, nullptr, true, 1e-2, "bf16 dense", 1, 2e-2);
      expect_matches(pr, run_prefill(pr, &plan, true, nullptr, 2), &plan, true, 1e-2, "bf16 sparse", 1, 2e-2);
      EXPECT_NE(f32.o, bf16.o) << "the bf16 path was not taken";
      // Decode-shaped units stay f32.
      const Problem dec = make_problem(6, 2, d, 1, 999, 1000, KvDType::F16, ++seed);
      Output out = alloc_output(dec);
      kernels::attention_decode(dec.params(out.o.data(), out.lse.data()));
      expect_matches(dec, out, nullptr, true, kTol, "bf16 setting, decode");
    }
  });
}

// "auto" takes bf16 exactly where the measured bf16 dot product is fast
// enough, and says why; the probe's answer is 0 without a native one and a
// plausible throughput ratio with it.
TEST(Attention, AutoArithmeticFollowsTheMeasuredBf16Rate) {
  const test::ScopedAttnMath restore(AttnMath::kF32);
  const double speedup = kernels::bf16_dot_speedup();
  if (kernels::cpu_has_bf16_dot()) {
    EXPECT_GT(speedup, 0.1);
    EXPECT_LT(speedup, 8.0);
  } else {
    EXPECT_EQ(speedup, 0.0);
  }
  skim::set_attention_math("auto");
  EXPECT_EQ(kernels::attention_math(), speedup >= skim::kBf16AttentionMinSpeedup ? AttnMath::kBf16 : AttnMath::kF32);
  EXPECT_NE(skim::attention_math().find("(auto: "), std::string::npos) << skim::attention_math();
  skim::set_attention_math("f32");
  EXPECT_EQ(skim::attention_math(), "f32");
  EXPECT_THROW(skim::set_attention_math("f16"), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// Bad input

TEST(Attention, BadCallsThrowWithMessages) {
  const Problem pr = make_problem(4, 2, 64, 10, 0, 10, KvDType::F16, 23);
  Output out = alloc_output(pr);
  const AttnParams good = pr.params(out.o.data(), out.lse.data());
  EXPECT_NO_THROW(kernels::attention_prefill(good));
  auto expect_throw = [&](AttnParams p, const char* needle) {
    try {
      kernels::attention_prefill(p);
      ADD_FAILURE() << "no exception for " << needle;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  AttnParams p = good;
  p.q = nullptr;
  expect_throw(p, "must not be null");
  p = good;
  p.n_kv_heads = 3;
  expect_throw(p, "not a multiple");
  p = good;
  p.head_dim = 40;
  expect_throw(p, "head_dim");
  p = good;
  p.kv.n_keys = 5;
  expect_throw(p, "KV cache holds 5 keys");
  p = good;
  p.kv.k_row_bytes = 32;
  expect_throw(p, "k_row_bytes");
  p = good;
  p.scale = std::numeric_limits<float>::infinity();
  expect_throw(p, "scale");

  // Plans that do not fit the call.
  const Plan other_rows = kernels::make_dense_plan(PlanShape{4, 1, 64, 9, 0});
  EXPECT_THROW(kernels::attention_prefill(good, &other_rows), PlanError);
  const Plan other_heads = kernels::make_dense_plan(PlanShape{3, 1, 64, 10, 0});
  EXPECT_THROW(kernels::attention_prefill(good, &other_heads), PlanError);
  // A key beyond the cache is caught even with validation off.
  PlanBuilder b(PlanShape{4, 1, 64, 10, 0});
  for (int h = 0; h < 4; ++h) {
    b.add_range(0, h == 2 ? 11 : 5);
    b.end_tile();
  }
  const Plan oob = b.finish();
  p = good;
  p.validate_plan = false;
  EXPECT_THROW(kernels::attention_prefill(p, &oob), PlanError);
  // Decode row limits.
  p = good;
  EXPECT_NO_THROW(kernels::attention_decode(p));  // 10 rows: a decode-sized call
  p.n_rows = 0;
  EXPECT_THROW(kernels::attention_decode(p), std::invalid_argument);
  EXPECT_THROW(kernels::merge_partial(-1, 64, nullptr, 0, nullptr, nullptr, 0, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace skim
