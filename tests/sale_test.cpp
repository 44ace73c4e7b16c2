// SALE planner: plan invariants over shapes, exactness at theta 0, recall on a
// structured problem, the int8 estimate against float, per-head thetas from a
// config file, and parameter errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "attention/sale.h"
#include "kernels/f16.h"
#include "planner_problem.h"
#include "skim/attention.h"
#include "test_support.h"

namespace skim {
namespace {

using testing::as_planned;
using testing::bitwise_equal;
using testing::plan_density;
using testing::PlannerProblem;

TEST(Sale, PlansAreValidOnManyShapes) {
  for (auto [hq, hkv, d, n, pos0] :
       {std::tuple{4, 4, 64, 300, 0}, std::tuple{9, 3, 64, 257, 1500}, std::tuple{7, 1, 128, 131, 2000},
        std::tuple{14, 2, 64, 77, 999}, std::tuple{2, 1, 128, 1, 700}, std::tuple{3, 1, 64, 640, 3}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 21, 2.0f);
    for (const char* spec : {"sale", "sale:gqa=head", "sale:block=32,local=100,sink=10", "sale:theta=0.1,sink=0",
                             "sale:theta=1e-6,block=32,gqa=head", "sale:est_rows=64", "sale:est_rows=1,theta=0.01"}) {
      const std::optional<attention::Plan> plan = p.plan(spec);  // validated
      ASSERT_TRUE(plan) << spec;
      EXPECT_GT(plan->listed_pairs(), 0) << spec;
      EXPECT_LE(plan_density(*plan, p), 1.0 + 1e-12) << spec;
    }
  }
}

TEST(Sale, ThetaZeroIsDenseBitForBit) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{9, 3, 64, 300, 0}, std::tuple{4, 1, 128, 129, 517},
                                     std::tuple{2, 2, 64, 64, 4096}, std::tuple{7, 7, 64, 200, 1000}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 7);
    const std::vector<float> dense = p.dense();
    AttentionReport report;
    EXPECT_TRUE(bitwise_equal(p.run(as_planned("sale:theta=0"), &report), dense)) << "n=" << n << " pos0=" << pos0;
    EXPECT_DOUBLE_EQ(report.density(), 1.0);
    EXPECT_EQ(report.sparse_calls, 1);
  }
}

TEST(Sale, FindsTheHeavyColumns) {
  // Every 97th key aligns with every query: the sink/local softmax is dominated
  // by such keys, so only 32-key blocks holding one clear the threshold.
  PlannerProblem p(6, 2, 64, 256, 6000, 5, 4.0f);
  AttentionReport report;
  p.run("sale:block=32,last_q=0", &report, 0, 1, 32);
  ASSERT_EQ(report.fidelity.size(), 6u);
  for (const HeadFidelity& f : report.fidelity) {
    EXPECT_GE(f.recall_mean(), 0.9);
    EXPECT_GE(f.recall_percentile(1), 0.9);
  }
  EXPECT_LT(report.density(), 0.5);
  EXPECT_GT(report.density(), 0.1);  // ~1/3 of the 32-key blocks hold a heavy key
  // Each heavy key in the estimated range is selected for every query block.
  const std::optional<attention::Plan> plan = p.plan("sale:block=32,gqa=head");
  for (int64_t item = 0; item < plan->n_items(); ++item) {
    int64_t covered = 0, heavy = 0;
    for (int64_t j = 0; j < p.q_pos0; j += 97) {
      ++heavy;
      for (int64_t r = plan->range_ptr[item]; r < plan->range_ptr[item + 1]; ++r)
        if (plan->ranges[r].begin <= j && j < plan->ranges[r].end) ++covered;
    }
    EXPECT_EQ(covered, heavy) << "item " << item;
  }
}

TEST(Sale, BoundsAndEarlyStopSelectTheSameBlocksAsFullScores) {
  for (float structure : {0.0f, 1.0f, 4.0f}) {
    PlannerProblem p(6, 2, 64, 320, 3000, 8, structure);
    attention::PlanRequest r = p.request();
    const attention::sale::Shape shape;
    attention::sale::Estimator full;
    const attention::sale::BlockScores& a = full.score(r, shape);
    for (float theta : {1e-4f, 4e-3f, 0.05f, 0.3f}) {
      const float ln = std::log(theta);
      const std::vector<float> floor(6, ln);
      attention::sale::Estimator bounded, early;
      const attention::sale::BlockScores& b = bounded.score(r, shape, {&floor, false});
      const attention::sale::BlockScores& c = early.score(r, shape, {&floor, true});
      ASSERT_EQ(a.s.size(), b.s.size());
      int64_t selected = 0;
      for (size_t i = 0; i < a.s.size(); ++i) {
        // The bounds are exact-float bounds; the int8 score may differ from the
        // exact one by its quantization error, so allow flips within that.
        if (std::fabs(a.s[i] - ln) < 0.05f) continue;
        EXPECT_EQ(a.s[i] > ln, b.s[i] > ln) << i;
        EXPECT_EQ(a.s[i] > ln, c.s[i] > ln) << i;
        if (a.s[i] > ln) EXPECT_EQ(a.s[i], b.s[i]);  // above the floor: the int8 estimate
        if (c.s[i] <= ln) EXPECT_LE(c.s[i], ln);
        selected += a.s[i] > ln;
      }
      const attention::sale::ScoreCounts& n = early.counts();
      EXPECT_EQ(n.dropped_by_bound + n.kept_by_bound + n.scanned, full.counts().scanned);
      if (structure == 4.0f && theta == 4e-3f) {
        EXPECT_LT(selected, static_cast<int64_t>(a.s.size()) * 3 / 4);  // ~2/3 of 64-key blocks hold a heavy key
        // The upper bound alone drops nearly every block that is not selected.
        EXPECT_GE(n.dropped_by_bound, 0.9 * (full.counts().scanned - selected));
      }
    }
  }
}

// The int8 estimate of a block's max logit equals the float dot product of
// the dequantized vectors, and is within the quantization error of the exact one.
TEST(Sale, Int8EstimateMatchesFloatWithinQuantizationError) {
  for (int32_t d : {64, 128}) {
    PlannerProblem p(3, 1, d, 70, 500, 99);
    attention::PlanRequest r = p.request();
    attention::sale::QuantKeys keys;
    keys.quantize(r.kv, r.n_kv_heads, d, p.n_keys());
    attention::sale::QuantRows rows;
    rows.quantize(r, keys);
    const float* mean = keys.mean(0);
    for (int32_t h = 0; h < 3; ++h) {
      for (int64_t i = 0; i < p.n_rows; i += 7) {
        const float* q = r.q_row(h, i);
        for (auto [k0, k1] : {std::pair<int64_t, int64_t>{0, 64}, {3, 29}, {64, 128}, {250, 251}, {501, 570}}) {
          const int32_t row = static_cast<int32_t>(i);
          const float est = attention::sale::block_score(rows, h, {&row, 1}, keys, 0, k0, k1, r.scale, nullptr);
          double exact_max = -1e30, dequant_max = -1e30, bound = 0;
          double q_abs = 0;
          for (int32_t c = 0; c < d; ++c) q_abs += std::fabs(q[c]);
          const double sq = rows.scale(h, i);
          for (int64_t j = k0; j < k1; ++j) {
            const std::vector<float> kq = keys.dequantized(0, j);
            double exact = 0, dq = 0, err = 0;
            for (int32_t c = 0; c < d; ++c) {
              const double k = kernels::f16_to_f32(p.k[j * d + c]);
              const double qq = sq * rows.row(h, i)[c];
              exact += q[c] * k;
              dq += qq * kq[c] + q[c] * mean[c];
              // |q.k~ - q^.k^| <= |q - q^| |k~| + |q^| |k~ - k^|, per dim.
              err += 0.5 * sq * std::fabs(k - mean[c]) + std::fabs(qq) * 0.5 * keys.scales(0)[j];
            }
            exact_max = std::max(exact_max, exact * r.scale);
            dequant_max = std::max(dequant_max, dq * r.scale);
            bound = std::max(bound, err * r.scale);
          }
          EXPECT_NEAR(est, dequant_max, 1e-4 * (1 + std::fabs(dequant_max))) << d << " " << h << " " << i << " " << k0;
          EXPECT_NEAR(est, exact_max, bound + 1e-4) << d << " " << h << " " << i << " " << k0;
          EXPECT_LT(bound, 0.1 * (1 + q_abs * r.scale));  // int8 error is small
        }
      }
    }
  }
}

TEST(Sale, PerHeadThetasFromAConfigFile) {
  const test::TempDir dir;
  const std::filesystem::path path = dir / "config.json";
  {
    std::ofstream out(path);
    out << R"({"sale": {"heads": [{"layer": 1, "head": 1, "theta": 0}, {"layer": 1, "head": 0, "theta": 0.5}]}})";
  }
  PlannerProblem p(2, 2, 64, 128, 2000, 3, 1.0f);  // g = 1: the per-head plan tiles like dense
  const std::vector<float> dense = p.dense();
  const std::string spec = "sale:theta=0.1,last_q=0,config=" + path.string();
  const std::vector<float> layer0 = p.run(spec, nullptr, 0, 2), layer1 = p.run(spec, nullptr, 1, 2);
  // Relative L2 error of one head's output against dense (the kernel may split
  // key streams differently from the dense call, so "dense" means rounding-equal).
  auto head_error = [&](const std::vector<float>& x, int32_t h) {
    double err = 0, ref = 0;
    for (int64_t i = 0; i < p.n_rows; ++i)
      for (int32_t c = 0; c < 64; ++c) {
        const size_t at = static_cast<size_t>((i * 2 + h) * 64 + c);
        err += std::pow(x[at] - dense[at], 2);
        ref += std::pow(dense[at], 2);
      }
    return std::sqrt(err / ref);
  };
  EXPECT_LT(head_error(layer1, 1), 1e-6);  // theta 0 at (1, 1): dense
  EXPECT_GT(head_error(layer1, 0), 1e-3);  // theta 0.5: sparse
  EXPECT_GT(head_error(layer0, 1), 1e-3);  // layer 0 uses theta=0.1
  AttentionReport r0, r1;
  p.run("sale:theta=0.5,last_q=0", &r0);
  p.run("sale:last_q=0,config=" + path.string(), &r1, 1, 2);
  EXPECT_LT(r0.density(), r1.density());
}

TEST(Sale, BadParametersAndConfigsAreClearErrors) {
  for (const char* bad : {"sale:block=48", "sale:block=128", "sale:theta=2", "sale:theta=-1", "sale:local=0",
                          "sale:sink=-5", "sale:config=/nonexistent/skim.json", "sale:alpha=1", "sale:est_rows=0",
                          "sale:est_rows=65"})
    EXPECT_THROW(validate_attention_spec(bad), std::invalid_argument) << bad;
  const test::TempDir dir;
  const std::filesystem::path path = dir / "bad_config.json";
  for (const char* text : {"{not json", R"({"minference": {}})", R"({"sale": {"heads": [{"layer": 0}]}})",
                           R"({"sale": {"heads": [{"layer": 0, "head": 0, "theta": 3}]}})"}) {
    {
      std::ofstream out(path);
      out << text;
    }
    try {
      validate_attention_spec("sale:config=" + path.string());
      ADD_FAILURE() << "accepted " << text;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("sale: config"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(validate_attention_spec("sale:theta=0.01,block=32,local=256,sink=128,min_len=4k"));
}

}  // namespace
}  // namespace skim
