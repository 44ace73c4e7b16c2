// The dynamic (estimation-based) planners: minference (vertical-slash),
// block_sparse, flexprefill, xattention. Their estimation primitives against
// a plain double-precision reference, plan invariants over many shapes (GQA,
// head dims, odd chunk sizes, chunked prefill), full budget == dense bit for
// bit, recall on structured problems, and parameter errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>

#include "attention/estimate.h"
#include "planner_checks.h"
#include "planner_problem.h"
#include "skim/attention.h"
#include "test_support.h"

namespace skim {
namespace {

using attention::BlockScores;
using attention::KeysF32;
using attention::LastQEstimate;
using testing::as_planned;
using testing::bitwise_equal;
using testing::measure;
using testing::PlannerProblem;
using testing::Recall;
using testing::with_keys;

// Key j of KV head h as the estimate sees it (f16 widened).
double key_at(const PlannerProblem& p, int32_t h, int64_t j, int32_t c) {
  return kernels::f16_to_f32(p.k[(h * p.n_keys() + j) * p.d + c]);
}
double query_at(const PlannerProblem& p, int32_t h, int64_t i, int32_t c) {
  return p.q[(i * p.hq + h) * p.d + c];
}
double dot_qk(const PlannerProblem& p, int32_t h, int64_t i, int64_t j) {
  double s = 0;
  for (int32_t c = 0; c < p.d; ++c) s += query_at(p, h, i, c) * key_at(p, h / (p.hq / p.hkv), j, c);
  return s;
}

std::vector<double> softmax(std::vector<double> x) {
  const double m = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (double& v : x) sum += (v = std::exp(v - m));
  for (double& v : x) v /= sum;
  return x;
}

TEST(Estimate, LastQMatchesDoubleReference) {
  for (auto [hq, hkv, d, n, pos0, w] : {std::tuple{4, 2, 64, 37, 50, 16}, std::tuple{3, 3, 32, 20, 0, 64},
                                        std::tuple{7, 1, 128, 70, 129, 64}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 3);
    const attention::PlanRequest r = p.request();
    KeysF32 keys;
    keys.load(r);
    LastQEstimate est;
    attention::estimate_last_q(r, keys, w, est);
    const int64_t used = std::min<int64_t>(w, n), nk = p.n_keys();
    ASSERT_EQ(est.w, used);
    ASSERT_EQ(est.pos_first, pos0 + n - used);
    for (int32_t h = 0; h < hq; ++h) {
      std::vector<double> vert(nk, 0.0), slash(nk, 0.0);
      for (int64_t t = 0; t < used; ++t) {
        const int64_t i = n - used + t, pos = pos0 + i;
        std::vector<double> logits;
        for (int64_t j = 0; j <= pos; ++j) logits.push_back(dot_qk(p, h, i, j) * r.scale);
        const std::vector<double> a = softmax(logits);
        for (int64_t j = 0; j <= pos; ++j) {
          vert[j] += a[j];
          slash[pos - j] += a[j];
        }
      }
      for (int64_t j = 0; j < nk; ++j) {
        EXPECT_NEAR(est.vert(h)[j], vert[j], 1e-5 * (1 + vert[j])) << "h " << h << " j " << j;
        EXPECT_NEAR(est.diag(h)[j], slash[j], 1e-5 * (1 + slash[j])) << "h " << h << " o " << j;
      }
    }
  }
}

TEST(Estimate, KeysOfEveryCacheType) {
  PlannerProblem p(2, 2, 32, 40, 30, 13);
  const int64_t n = p.n_keys(), d = p.d, row_stride = d + 16, head_stride = (n + 5) * row_stride;
  // The same keys as f32, f16 and bf16 in a padded layout (row and head strides
  // larger than the data).
  std::vector<float> f32(static_cast<size_t>(p.hkv * head_stride), 0.0f);
  std::vector<uint16_t> bf16(f32.size(), 0), f16(f32.size(), 0);
  for (int32_t h = 0; h < p.hkv; ++h)
    for (int64_t j = 0; j < n; ++j)
      for (int32_t c = 0; c < d; ++c) {
        const float x = kernels::f16_to_f32(p.k[(h * n + j) * d + c]);
        f32[h * head_stride + j * row_stride + c] = x;
        f16[h * head_stride + j * row_stride + c] = p.k[(h * n + j) * d + c];
        uint32_t bits;
        std::memcpy(&bits, &x, sizeof(bits));
        bf16[h * head_stride + j * row_stride + c] = static_cast<uint16_t>(bits >> 16);
      }
  attention::PlanRequest r = p.request();
  KeysF32 want, got;
  want.load(r, 4);
  r.kv = kernels::KvView::contiguous(f32.data(), f32.data(), kernels::KvDType::F32, head_stride, row_stride, n);
  got.load(r, 4);
  ASSERT_EQ(got.rows(), 72);
  for (int32_t h = 0; h < p.hkv; ++h)
    for (int64_t i = 0; i < got.rows() * d; ++i) ASSERT_EQ(got.head(h)[i], want.head(h)[i]) << h << " " << i;
  r.kv = kernels::KvView::contiguous(f16.data(), f16.data(), kernels::KvDType::F16, head_stride, row_stride, n);
  got.load(r, 4);
  for (int32_t h = 0; h < p.hkv; ++h)
    for (int64_t i = 0; i < got.rows() * d; ++i) ASSERT_EQ(got.head(h)[i], want.head(h)[i]) << h << " " << i;
  r.kv = kernels::KvView::contiguous(bf16.data(), bf16.data(), kernels::KvDType::BF16, head_stride, row_stride, n);
  got.load(r);
  for (int32_t h = 0; h < p.hkv; ++h)
    for (int64_t j = 0; j < n; ++j)
      for (int32_t c = 0; c < d; ++c) {
        const uint32_t bits = static_cast<uint32_t>(bf16[h * head_stride + j * row_stride + c]) << 16;
        float x;
        std::memcpy(&x, &bits, sizeof(x));
        ASSERT_EQ(got.head(h)[j * d + c], x);
      }
}

TEST(Estimate, PooledMatchesDoubleReference) {
  for (auto [hq, hkv, d, n, pos0, block] : {std::tuple{4, 2, 64, 50, 37, 16}, std::tuple{3, 1, 32, 64, 0, 64},
                                            std::tuple{2, 2, 64, 130, 300, 64}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 5);
    const attention::PlanRequest r = p.request();
    KeysF32 keys;
    keys.load(r);
    for (bool sm : {false, true}) {
      BlockScores est;
      attention::estimate_pooled(r, keys, block, 0.25f, sm, est);
      const int64_t nk = p.n_keys(), n_qb = (n + block - 1) / block, n_kb = (nk + block - 1) / block;
      ASSERT_EQ(est.n_qb, n_qb);
      ASSERT_EQ(est.n_kb, n_kb);
      for (int32_t h = 0; h < hq; ++h) {
        for (int64_t qb = 0; qb < n_qb; ++qb) {
          const int64_t i0 = qb * block, i1 = std::min<int64_t>(n, i0 + block), last = pos0 + i1 - 1;
          const int64_t vis = last / block + 1;
          ASSERT_EQ(est.visible(qb), vis);
          std::vector<double> s;
          for (int64_t c = 0; c < vis; ++c) {
            const int64_t j0 = c * block, j1 = std::min(nk, j0 + block);
            double dot = 0;
            for (int32_t k = 0; k < d; ++k) {
              double qm = 0, km = 0;
              for (int64_t i = i0; i < i1; ++i) qm += query_at(p, h, i, k);
              for (int64_t j = j0; j < j1; ++j) km += key_at(p, h / (hq / hkv), j, k);
              dot += qm / (i1 - i0) * km / (j1 - j0);
            }
            s.push_back(0.25 * dot);
          }
          if (sm) s = softmax(s);
          for (int64_t c = 0; c < n_kb; ++c) {
            const float got = est.row(h, qb)[c];
            if (c < vis)
              EXPECT_NEAR(got, s[c], 1e-5 * (1 + std::abs(s[c]))) << h << " " << qb << " " << c;
            else if (sm)
              EXPECT_EQ(got, 0.0f);
            else
              EXPECT_EQ(got, -std::numeric_limits<float>::infinity());
          }
        }
      }
    }
  }
}

TEST(Estimate, AntidiagMatchesDoubleReference) {
  for (auto [hq, hkv, d, n, pos0, stride, block] :
       {std::tuple{4, 2, 64, 45, 37, 4, 16}, std::tuple{3, 1, 32, 64, 0, 8, 64}, std::tuple{2, 2, 64, 300, 130, 8, 64},
        std::tuple{2, 1, 16, 17, 5, 2, 8}, std::tuple{1, 1, 16, 700, 0, 8, 64},
        std::tuple{2, 1, 16, 600, 2100, 8, 64}}) {  // several GEMM panels
    PlannerProblem p(hq, hkv, d, n, pos0, 9);
    const attention::PlanRequest r = p.request();
    KeysF32 keys;
    keys.load(r, stride);
    BlockScores est;
    attention::estimate_antidiag(r, keys, stride, block, est);
    const int64_t nk = p.n_keys(), n_qg = (n + stride - 1) / stride;
    const int64_t n_qb = (n + block - 1) / block, n_kb = (nk + block - 1) / block;
    ASSERT_EQ(est.n_qb, n_qb);
    ASSERT_EQ(est.n_kb, n_kb);
    for (int32_t h = 0; h < hq; ++h) {
      std::vector<double> e(static_cast<size_t>(n_qb * n_kb), 0.0);
      for (int64_t a = 0; a < n_qg; ++a) {
        const int64_t last = pos0 + std::min<int64_t>(n, (a + 1) * stride) - 1;
        const int64_t vis = last / stride + 1;
        std::vector<double> logits;
        for (int64_t b = 0; b < vis; ++b) {
          double s = 0;
          for (int64_t t = 0; t < stride; ++t) {
            const int64_t i = a * stride + stride - 1 - t, j = b * stride + t;
            if (i < n && j < nk) s += dot_qk(p, h, i, j);
          }
          logits.push_back(s * r.scale / stride);
        }
        const std::vector<double> pr = softmax(logits);
        for (int64_t b = 0; b < vis; ++b) e[(a * stride / block) * n_kb + b * stride / block] += pr[b];
      }
      for (int64_t qb = 0; qb < n_qb; ++qb)
        for (int64_t c = 0; c < n_kb; ++c)
          EXPECT_NEAR(est.row(h, qb)[c], e[qb * n_kb + c], 1e-5 * (1 + e[qb * n_kb + c]))
              << "h " << h << " qb " << qb << " c " << c;
    }
  }
}

TEST(Estimate, SampledMatchesDoubleReference) {
  for (auto [hq, hkv, d, n, pos0, stride, kblock] :
       {std::tuple{4, 2, 64, 50, 37, 8, 64}, std::tuple{3, 1, 32, 130, 0, 16, 16}, std::tuple{2, 2, 64, 200, 300, 1, 32},
        std::tuple{2, 1, 64, 64, 64, 100, 64}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 9, 2.0f);
    const attention::PlanRequest r = p.request();
    KeysF32 keys;
    keys.load(r);
    BlockScores est;
    attention::estimate_sampled(r, keys, stride, kblock, est);
    const int64_t nk = p.n_keys(), n_qb = (n + 63) / 64, n_kb = (nk + kblock - 1) / kblock;
    ASSERT_EQ(est.n_qb, n_qb);
    ASSERT_EQ(est.n_kb, n_kb);
    for (int32_t h = 0; h < hq; ++h) {
      for (int64_t qb = 0; qb < n_qb; ++qb) {
        const int64_t i0 = qb * 64, i1 = std::min<int64_t>(n, i0 + 64);
        std::vector<int64_t> rows;
        for (int64_t i = i0 + stride - 1; i < i1; i += stride) rows.push_back(i);
        if (rows.empty() || rows.back() != i1 - 1) rows.push_back(i1 - 1);
        std::vector<double> want(static_cast<size_t>(n_kb), 0.0);
        for (int64_t i : rows) {
          std::vector<double> logits;
          for (int64_t j = 0; j <= pos0 + i; ++j) logits.push_back(r.scale * dot_qk(p, h, i, j));
          const std::vector<double> w = softmax(logits);
          for (size_t j = 0; j < w.size(); ++j) want[j / kblock] += w[j] / static_cast<double>(rows.size());
        }
        double sum = 0;
        for (int64_t c = 0; c < n_kb; ++c) {
          EXPECT_NEAR(est.row(h, qb)[c], want[c], 1e-5) << h << " " << qb << " " << c;
          sum += est.row(h, qb)[c];
        }
        EXPECT_NEAR(sum, 1.0, 1e-5);
      }
    }
  }
}

TEST(Estimate, TopKAndCoverage) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t n = 1 + rng() % 300;
    std::vector<float> x(n);
    for (float& v : x) v = static_cast<float>(rng() % 20) * 0.25f;  // many ties, some zeros
    const int64_t k = rng() % (n + 3);
    std::vector<int32_t> got;
    attention::top_k(x.data(), n, k, got);
    std::vector<int32_t> want(n);
    std::iota(want.begin(), want.end(), 0);
    std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
    want.resize(std::min(n, k));
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want) << "n " << n << " k " << k;

    const double frac = (rng() % 101) / 100.0;
    std::vector<float> tmp;
    const int64_t count = attention::coverage_count(x.data(), n, frac, tmp);
    std::vector<float> sorted = x;
    std::sort(sorted.rbegin(), sorted.rend());
    double total = 0;
    for (float v : x) total += v;
    int64_t expect = n;
    if (frac < 1.0) {
      double acc = 0;
      expect = 0;
      while (expect < n && acc < frac * total) acc += sorted[expect++];
    }
    EXPECT_EQ(count, expect) << "n " << n << " frac " << frac;
  }
}

const char* const kSparseSpecs[] = {"minference:v=64,s=128",
                                    "minference:v=64,s=128,gqa=head",
                                    "minference",
                                    "block_sparse:topk=4",
                                    "block_sparse:topk=2,gqa=head",
                                    "flexprefill:min_budget=128",
                                    "flexprefill:min_budget=64,block=64,tau=1,gqa=head",
                                    "flexprefill:min_budget=128,tau=0",
                                    "flexprefill:min_budget=128,tau=0,budget=cover",
                                    "xattention",
                                    "xattention:block=128,stride=16,tau=0.5,gqa=head",
                                    "s2o",
                                    "s2o:cover=0.8,eps=0.05,stride=4,gqa=head",
                                    "s2o:eps=0",
                                    "xattention:target=0.9",
                                    "block_sparse:target=0.8,gqa=head",
                                    "s2o:target=0.9",
                                    "s2o:kblock=16,target=0.9,gqa=head",
                                    "s2o:kblock=32"};

TEST(SparsePlanners, PlansAreValidOnManyShapes) {
  EXPECT_GT(testing::plan_on_many_shapes(kSparseSpecs), 700);
  testing::run_to_finite_outputs(kSparseSpecs, 3000);
}

TEST(SparsePlanners, FullBudgetIsDenseBitForBit) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{9, 3, 64, 300, 0}, std::tuple{4, 1, 128, 129, 517},
                                     std::tuple{2, 2, 64, 64, 4096}, std::tuple{6, 2, 64, 700, 1100}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 7);
    const std::vector<float> dense = p.dense();
    for (auto [spec, min_keys] :
         {std::pair{"minference:v=1000000,s=1000000", 0}, std::pair{"minference:v=0,s=1000000", 0},
          std::pair{"block_sparse:topk=1000000", 0}, std::pair{"flexprefill:gamma=1,tau=0,min_budget=0", 257},
          std::pair{"flexprefill:gamma=1,tau=1,min_budget=0", 257},
          std::pair{"flexprefill:gamma=1,tau=0,min_budget=0,budget=cover", 257},
          std::pair{"flexprefill:gamma=1,tau=0.2,min_budget=0,block=256", 513}, std::pair{"xattention:tau=1", 0},
          std::pair{"xattention:tau=1,block=128,stride=16", 0}, std::pair{"xattention:target=1", 0},
          std::pair{"block_sparse:target=1", 0}, std::pair{"s2o:target=1", 0}}) {
      AttentionReport report;
      EXPECT_TRUE(bitwise_equal(p.run(as_planned(spec), &report), dense)) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec << " n=" << n << " pos0=" << pos0;
      // The planner planned (flexprefill runs short chunks dense by design).
      if (p.n_keys() >= min_keys) EXPECT_EQ(report.sparse_calls, 1) << spec << " n=" << n << " pos0=" << pos0;
    }
    // One plan per q head: dense key sets, tiled per head (equal up to rounding).
    // S2O's full cover is an ordered plan, and 16-key blocks are gathered as
    // columns: every key, visited in another order.
    for (const char* spec : {"minference:v=1000000,s=1000000,gqa=head", "block_sparse:topk=1000000,gqa=head",
                             "flexprefill:gamma=1,min_budget=0,gqa=head", "xattention:tau=1,gqa=head",
                             "s2o:cover=1,eps=0", "s2o:cover=1,eps=0,gqa=head", "s2o:target=1,kblock=16"}) {
      AttentionReport report;
      const std::vector<float> out = p.run(as_planned(spec), &report);
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec;
      EXPECT_EQ(report.sparse_calls, 1) << spec;
      EXPECT_LT(testing::rel_l2(out, dense), 1e-6) << spec;
    }
  }
}

void expect_found(const PlannerProblem& p, const char* what, const char* spec, double max_density) {
  const Recall r = measure(p, spec);
  EXPECT_GE(r.mean, 0.9) << what << ": " << spec << " density " << r.density;
  EXPECT_LE(r.density, max_density) << what << ": " << spec << " recall " << r.mean;
}

TEST(SparsePlanners, EstimatesFindHeavyColumns) {
  // PlannerProblem's structure: every 97th key is heavy, so 2 of 3 key blocks
  // hold one; column methods find them sparsely, block methods need most blocks.
  {
    const PlannerProblem p(6, 2, 64, 512, 3584, 31, 4.0f);
    expect_found(p, "every 97th key", "minference:v=200,s=100", 0.15);
    expect_found(p, "every 97th key", "xattention", 0.8);
    expect_found(p, "every 97th key", "flexprefill", 1.0);
    // A static pattern of similar density misses them.
    EXPECT_LT(measure(p, "streaming:sink=64,local=512").mean, 0.5);
  }
  // Runs of 100 heavy keys (the first unaligned with blocks): every method
  // keeps them at a modest density.
  {
    PlannerProblem p(6, 2, 64, 512, 7680, 33);
    p.add_heavy_keys(300, 1900, 100, 1.0f);
    expect_found(p, "heavy runs", "minference:v=600,s=100", 0.15);
    expect_found(p, "heavy runs", "block_sparse", 0.25);
    // The reference budget keeps count / 128 + 1 = 4 blocks here (the runs
    // span 6); the paper's min_budget=1024 or budget=cover keep them all.
    expect_found(p, "heavy runs", "flexprefill:min_budget=1024", 0.3);
    expect_found(p, "heavy runs", "flexprefill:budget=cover", 0.3);
    expect_found(p, "heavy runs", "xattention", 0.25);
    EXPECT_LT(measure(p, "streaming:sink=64,local=1024").mean, 0.5);
  }
  // Scattered single heavy keys (one key block in six holds one).
  {
    PlannerProblem p(6, 2, 64, 512, 7680, 35);
    p.add_heavy_keys(194, 389, 1, 8.0f);
    expect_found(p, "scattered keys", "minference:v=100,s=100", 0.1);
    expect_found(p, "scattered keys", "block_sparse:topk=24", 0.3);
    // FlexPrefill's reference budget (count / block + 1 blocks) assumes the
    // covering columns are contiguous, so it misses scattered ones; budget=cover
    // finds them. Vertical mass also lands on diagonals, so scattered columns
    // spread the slash distribution and its coverage asks for most offset blocks.
    EXPECT_LT(measure(p, "flexprefill").mean, 0.9);
    expect_found(p, "scattered keys", "flexprefill:budget=cover", 0.9);
    expect_found(p, "scattered keys", "xattention", 0.35);
    // The recall-targeted policy and S2O reach the target at the blocks that hold the keys.
    expect_found(p, "scattered keys", "s2o", 0.35);
    expect_found(p, "scattered keys", "s2o:target=0.95", 0.35);
    expect_found(p, "scattered keys", "xattention:target=0.95", 0.35);
    // S2O's running-mass stop computes fewer keys than its list, at the same recall.
    const Recall listed = measure(p, "s2o:cover=1,eps=0"), stopped = measure(p, "s2o:cover=1,eps=0.02");
    EXPECT_GE(stopped.mean, 0.9);
    EXPECT_LT(stopped.density, listed.density);
    EXPECT_GT(stopped.mean, listed.mean - 0.02);
  }
}

// Files of this test binary's run, in its own temporary directory.
std::string write_temp(const std::string& name, const std::string& text) {
  static const test::TempDir dir;
  const std::filesystem::path path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(SparsePlanners, MinferenceConfigSetsPerHeadBudgets) {
  const std::string path = write_temp("ok.json", R"({"model": "test", "minference": {"heads": [
      {"layer": 0, "head": 1, "pattern": "vertical_slash", "v": 30, "s": 100}]}})");
  PlannerProblem p(2, 2, 64, 256, 4000, 41);
  const std::optional<attention::Plan> plain = p.plan("minference:v=1000,s=1000,gqa=head");
  const std::optional<attention::Plan> tuned = p.plan("minference:v=1000,s=1000,gqa=head,config=" + path);
  ASSERT_TRUE(plain && tuned);
  auto head_keys = [](const attention::Plan& plan, int32_t h) {
    int64_t keys = 0;
    for (int64_t i = plan.head_item_begin[h]; i < plan.head_item_begin[h + 1]; ++i) keys += plan.item_keys(i);
    return keys;
  };
  EXPECT_EQ(head_keys(*tuned, 0), head_keys(*plain, 0));  // head 0 is not listed
  EXPECT_LT(head_keys(*tuned, 1), head_keys(*plain, 1) / 2);
  // Layer 1 listed: fine for a 2-layer model, an error for a 1-layer one.
  const std::string layer1 = write_temp("layer1.json", R"({"minference": {"heads": [
      {"layer": 1, "head": 0, "pattern": "vertical_slash", "v": 5000, "s": 5000}]}})");
  EXPECT_NO_THROW(p.run("minference:config=" + layer1, nullptr, 1, 2));
  EXPECT_THROW(p.run("minference:config=" + layer1, nullptr, 0, 1), std::invalid_argument);
}

TEST(SparsePlanners, DenseLayersRunDense) {
  const PlannerProblem p(6, 2, 64, 256, 3840, 43, 4.0f);
  for (int32_t layer : {0, 1, 2}) {
    AttentionReport report;
    p.run("s2o:dense_layers=0/2,min_len=0", &report, layer, 3);
    EXPECT_EQ(report.dense_calls, layer == 1 ? 0 : 1) << layer;
    EXPECT_EQ(report.sparse_calls, layer == 1 ? 1 : 0) << layer;
  }
}

TEST(SparsePlanners, BadParametersAreRejected) {
  const std::string bad_json = write_temp("bad.json", "{\"minference\": {\"heads\": [");
  const std::string no_heads = write_temp("noheads.json", R"({"model": "x", "minference": {}})");
  const std::string bad_pattern = write_temp(
      "pattern.json", R"({"minference": {"heads": [{"layer": 0, "head": 0, "pattern": "block_sparse", "v": 1, "s": 1}]}})");
  const std::string no_v =
      write_temp("nov.json", R"({"minference": {"heads": [{"layer": 0, "head": 0, "pattern": "vertical_slash", "s": 1}]}})");
  const std::string neg = write_temp(
      "neg.json", R"({"minference": {"heads": [{"layer": -1, "head": 0, "pattern": "vertical_slash", "v": 1, "s": 1}]}})");
  const std::string twice = write_temp("twice.json", R"({"minference": {"heads": [
      {"layer": 0, "head": 0, "pattern": "vertical_slash", "v": 1, "s": 1},
      {"layer": 0, "head": 0, "pattern": "vertical_slash", "v": 2, "s": 2}]}})");
  for (const std::string& spec :
       std::vector<std::string>{"minference:v=-1", "minference:s=x", "minference:w=64",
        "minference:config=/nonexistent/skim.json", "minference:config=" + bad_json, "minference:config=" + no_heads,
        "minference:config=" + bad_pattern, "minference:config=" + no_v, "minference:config=" + neg,
        "minference:config=" + twice, std::string("block_sparse:topk=-1"), std::string("block_sparse:topk=many"),
        std::string("flexprefill:gamma=0"), std::string("flexprefill:gamma=1.5"), std::string("flexprefill:tau=-0.1"),
        std::string("flexprefill:block=100"), std::string("flexprefill:block=32"),
        std::string("flexprefill:min_budget=1024,max_budget=512"), std::string("flexprefill:budget=all"), std::string("xattention:stride=3"),
        std::string("xattention:stride=128"), std::string("xattention:block=96"), std::string("xattention:tau=2"),
        std::string("xattention:tau=nan"), std::string("s2o:stride=0"), std::string("s2o:cover=1.5"),
        std::string("s2o:eps=-1"), std::string("s2o:kblock=48"), std::string("xattention:target=1.1"), std::string("streaming:target=0.9"),
        std::string("minference:target=0.9"), std::string("hip:target=0.9"), std::string("xattention:block=128,target=0.9"),
        std::string("s2o:dense_layers=x"), std::string("s2o:dense_layers=1//2")}) {
    EXPECT_THROW(validate_attention_spec(spec), std::invalid_argument) << spec;
  }
  try {
    validate_attention_spec("minference:config=" + bad_pattern);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("vertical_slash"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace skim
