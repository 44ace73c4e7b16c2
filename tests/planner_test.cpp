// Planner framework and static planners: spec parsing, the shared policy
// (min_len, dense layers, last_q, lambda, reuse), plan invariants, and that
// every method at full budget reproduces dense attention bit for bit.
#include <gtest/gtest.h>

#include <cmath>

#include "attention/selection.h"
#include "planner_problem.h"
#include "skim/attention.h"

namespace skim {
namespace {

using testing::as_planned;
using testing::bitwise_equal;
using testing::PlannerProblem;

TEST(AttentionSpec, ParsesNameAndKeys) {
  const attention::MethodSpec s = attention::parse_method_spec(" streaming : sink=64, local = 2k ");
  EXPECT_EQ(s.name, "streaming");
  ASSERT_EQ(s.values.size(), 2u);
  EXPECT_EQ(s.values.at("local"), "2k");
  attention::AttentionMethod m("streaming:local=2k", 30);
  EXPECT_EQ(m.name(), "streaming");
}

TEST(AttentionSpec, RejectsBadSpecs) {
  for (const char* bad : {"", "nosuch", "streaming:sink", "streaming:sink=", "streaming:sink=1,sink=2",
                          "streaming:window=5", "streaming:sink=-1", "streaming:sink=abc", "power:block=3",
                          "dense:lambda=2", "dense:gqa=both", "dense:reuse=1/2", "dense:reuse=0/x", "blasst:lambda=nan"})
    EXPECT_THROW(validate_attention_spec(bad), std::invalid_argument) << bad;
  EXPECT_THROW(attention::AttentionMethod("dense:reuse=0/40", 30), std::invalid_argument);
  for (const char* good : {"dense", "streaming", "trishape:local=4k", "power:block=128", "blasst:lambda=0.01",
                           "streaming:min_len=8k,dense_first=2,dense_last=1,last_q=0,gqa=head,reuse=0/3"})
    EXPECT_NO_THROW(validate_attention_spec(good)) << good;
}

TEST(AttentionSpec, EveryMethodIsListedWithDefaults) {
  const auto& methods = attention_methods();
  ASSERT_FALSE(methods.empty());
  EXPECT_EQ(methods.front().name, "dense");
  for (const AttentionMethodInfo& m : methods) {
    EXPECT_NO_THROW(validate_attention_spec(m.name)) << m.name;
    for (const AttentionParamInfo& p : m.params) EXPECT_FALSE(p.help.empty()) << m.name << "." << p.name;
  }
}

TEST(KeySelection, ClipsCausallyAndKeepsTheDiagonal) {
  PlannerProblem p(2, 1, 16, 130, 70);
  attention::PlanRequest r = p.request();
  r.group_union = false;  // one plan per q head, 64-row tiles
  attention::KeySelection sel(r);
  ASSERT_EQ(sel.n_blocks(), 3);
  sel.add_range(0, 0, 0, 10);
  sel.add_range(0, 0, 100, 1000);  // clipped at the tile's last position 133
  sel.add_column(1, 0, 5);
  sel.add_column(1, 0, 500);       // after the tile: dropped
  const attention::Plan plan = sel.build();
  attention::validate_plan(plan, p.n_keys(), true);
  ASSERT_EQ(plan.n_heads, 2);
  // Tile 0 (positions 70..133): [0,10) u col 5 u [70,134) from the diagonal and [100,1000) merged.
  ASSERT_EQ(plan.range_ptr[1] - plan.range_ptr[0], 2);
  EXPECT_EQ(plan.ranges[0].begin, 0);
  EXPECT_EQ(plan.ranges[0].end, 10);
  EXPECT_EQ(plan.ranges[1].begin, 70);
  EXPECT_EQ(plan.ranges[1].end, 134);
  // Tiles without keys still get their diagonal.
  EXPECT_EQ(plan.ranges[plan.range_ptr[2]].begin, 70 + 128);
  // Head 1, tile 0: column 5 and the diagonal; column 500 is after the tile.
  const int64_t item = plan.head_item_begin[1];
  ASSERT_EQ(plan.col_ptr[item + 1] - plan.col_ptr[item], 1);
  EXPECT_EQ(plan.cols[plan.col_ptr[item]], 5);
  EXPECT_EQ(plan.range_ptr[item + 1] - plan.range_ptr[item], 1);
}

TEST(Plan, ListedPairsCountCausalPairs) {
  PlannerProblem p(3, 3, 16, 100, 37);
  const attention::Plan dense = attention::make_dense_plan({3, 1, 64, 100, 37});
  const int64_t per_head = 100 * 37 + 100 * 101 / 2;
  EXPECT_EQ(dense.listed_pairs(), 3 * per_head);
}

// Each static method, at a budget covering every key, runs a plan listing
// every causal key (not the policy's dense fallback) and reproduces dense.
TEST(StaticPlanners, FullBudgetIsDenseBitForBit) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{9, 3, 64, 300, 0}, std::tuple{4, 1, 128, 129, 517},
                                     std::tuple{2, 2, 64, 64, 4096}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 7);
    const std::vector<float> dense = p.dense();
    for (const char* spec : {"streaming:sink=0,local=1000000", "trishape:local=1000000", "power:local=1000000",
                             "streaming:sink=1000000,local=1"}) {
      AttentionReport report;
      EXPECT_TRUE(bitwise_equal(p.run(as_planned(spec), &report), dense)) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec;
      EXPECT_EQ(report.sparse_calls, 1) << spec;
      EXPECT_EQ(report.dense_calls, 0) << spec;
    }
    // dense and blasst have no planner: the dense path, with lambda's tile skip.
    for (const char* spec : {"dense", "blasst:lambda=0"}) {
      AttentionReport report;
      EXPECT_TRUE(bitwise_equal(p.run(spec, &report), dense)) << spec;
      EXPECT_EQ(report.dense_calls, 1) << spec;
    }
  }
}

TEST(StaticPlanners, PlansAreValidAndSparse) {
  PlannerProblem p(9, 3, 64, 512, 7680);
  for (const char* spec : {"streaming", "trishape", "power", "streaming:gqa=head", "power:block=128,gqa=head"}) {
    const std::optional<attention::Plan> plan = p.plan(spec);
    ASSERT_TRUE(plan) << spec;
    const double density = static_cast<double>(plan->listed_pairs()) /
                           (9.0 * (512 * 7680 + 512 * 513 / 2));
    EXPECT_GT(density, 0.0) << spec;
    EXPECT_LT(density, 0.3) << spec;
  }
  // A-shape: tile t sees exactly [0, sink) and [first - local + 1, last].
  const std::optional<attention::Plan> a = p.plan("streaming:sink=100,local=1000,gqa=head");
  for (int64_t t = 0; t < 8; ++t) {
    ASSERT_EQ(a->range_ptr[t + 1] - a->range_ptr[t], 2);
    EXPECT_EQ(a->ranges[a->range_ptr[t]].end, 100);
    EXPECT_EQ(a->ranges[a->range_ptr[t] + 1].begin, 7680 + 64 * t - 999);
    EXPECT_EQ(a->ranges[a->range_ptr[t] + 1].end, 7680 + 64 * t + 64);
  }
}

TEST(StaticPlanners, SparseOutputMatchesDenseOverTheSameKeys) {
  // A-shape computed by the kernel equals dense attention of a cache whose
  // other keys are gone: rows that see only keys inside the window (here
  // local covers every key of the first tile) are identical in value.
  PlannerProblem p(2, 1, 64, 64, 2000, 3);
  const std::vector<float> dense = p.dense();
  AttentionReport report;
  const std::vector<float> window = p.run(as_planned("streaming:sink=0,local=2064"), &report);
  EXPECT_TRUE(bitwise_equal(window, dense));
  EXPECT_EQ(report.sparse_calls, 1);
  const std::vector<float> narrow = p.run("streaming:sink=0,local=16");
  EXPECT_FALSE(bitwise_equal(narrow, dense));
}

TEST(AttentionPolicy, MinLenAndDenseLayersRunDense) {
  PlannerProblem p(4, 2, 64, 128, 1000, 5);
  const std::vector<float> dense = p.dense();
  AttentionReport r;
  EXPECT_TRUE(bitwise_equal(p.run("streaming:local=64,min_len=2000", &r), dense));
  EXPECT_EQ(r.dense_calls, 1);
  EXPECT_EQ(r.sparse_calls, 0);
  EXPECT_TRUE(bitwise_equal(p.run("streaming:local=64,dense_first=1", nullptr, 0, 4), dense));
  EXPECT_TRUE(bitwise_equal(p.run("streaming:local=64,dense_last=1", nullptr, 3, 4), dense));
  EXPECT_FALSE(bitwise_equal(p.run("streaming:local=64,dense_last=1", nullptr, 2, 4), dense));
  AttentionReport s;
  p.run("streaming:local=64,min_len=1128", &s);
  EXPECT_EQ(s.sparse_calls, 1);
  EXPECT_LT(s.density(), 0.5);
}

TEST(AttentionPolicy, MeasuredCrossoverDefaultsRunShortChunksDense) {
  // minference's own min_len default (2048): planned at 2048 keys, dense below.
  auto calls = [](const PlannerProblem& p, const std::string& spec) {
    attention::AttentionMethod method(spec, 1);
    std::vector<float> out(p.q.size());
    AttentionReport report;
    method.prefill(p.request(), p.params(out.data()), report, 0);
    return std::pair{report.sparse_calls, report.dense_calls};
  };
  EXPECT_EQ(calls(PlannerProblem(3, 1, 64, 128, 1919, 2), "minference:v=64,s=64"), std::pair(int64_t{0}, int64_t{1}));
  EXPECT_EQ(calls(PlannerProblem(3, 1, 64, 128, 1920, 2), "minference:v=64,s=64"), std::pair(int64_t{1}, int64_t{0}));
  EXPECT_EQ(calls(PlannerProblem(3, 1, 64, 128, 1000, 2), "minference:v=64,s=64,min_len=0"), std::pair(int64_t{1}, int64_t{0}));
}

TEST(AttentionPolicy, NearDensePlansRunDense) {
  PlannerProblem p(2, 1, 64, 128, 1000, 5);
  AttentionReport near, kept;
  p.run("streaming:sink=0,local=1000", &near);  // ~0.95 of the keys
  EXPECT_EQ(near.dense_calls, 1);
  p.run("streaming:sink=0,local=1000,max_density=1", &kept);
  EXPECT_EQ(kept.sparse_calls, 1);
  EXPECT_LT(kept.density(), 1.0);
}

TEST(AttentionPolicy, LastQueriesOfThePromptAreDense) {
  PlannerProblem p(2, 1, 64, 200, 1000, 9);
  const std::vector<float> dense = p.dense(), sparse = p.run("streaming:local=64,last_q=72");
  const int64_t row_floats = 2 * 64;
  // g = 2: 48-row tiles; rows 96..199 lie in tiles holding the last 72 rows.
  // They see every key (equal up to the rounding of a different thread split).
  for (int64_t i = 0; i < 200; ++i) {
    double err = 0, ref = 0;
    for (int64_t c = 0; c < row_floats; ++c) {
      err += std::pow(sparse[i * row_floats + c] - dense[i * row_floats + c], 2);
      ref += std::pow(dense[i * row_floats + c], 2);
    }
    if (i >= 96) EXPECT_LT(std::sqrt(err / ref), 1e-6) << "row " << i;
    if (i < 64) EXPECT_GT(std::sqrt(err / ref), 1e-3) << "row " << i;
  }
}

TEST(AttentionPolicy, ReuseTakesThePlanOfTheNearestPlanningLayer) {
  PlannerProblem p(2, 1, 64, 128, 1000, 11);
  attention::AttentionMethod m("streaming:local=64,reuse=0/2", 4);
  AttentionReport report;
  std::vector<float> out(p.q.size());
  for (int32_t layer = 0; layer < 4; ++layer) m.prefill(p.request(layer, 4), p.params(out.data()), report, 0);
  EXPECT_EQ(report.sparse_calls, 4);
  EXPECT_EQ(report.reused_plans, 2);  // layers 1 and 3
}

TEST(AttentionPolicy, LambdaSkipsTilesAndZeroLambdaIsExact) {
  PlannerProblem p(2, 1, 64, 256, 4000, 13, 4.0f);
  AttentionReport none, skip;
  EXPECT_TRUE(bitwise_equal(p.run("blasst:lambda=0", &none), p.dense()));
  p.run("blasst:lambda=0.05", &skip);
  EXPECT_EQ(none.key_tiles, none.key_tiles_computed);
  EXPECT_LT(skip.key_tiles_computed, skip.key_tiles);
  AttentionReport composed;
  p.run("streaming:local=2048,lambda=0.05", &composed);
  EXPECT_LT(composed.key_tiles_computed, composed.key_tiles);
}

TEST(AttentionPolicy, FidelityIsExactForDenseKeysAndBelowOneWhenSparse) {
  PlannerProblem p(2, 1, 64, 128, 3000, 17);
  AttentionReport full, sparse;
  p.run("streaming:sink=0,local=1000000,max_density=1", &full, 0, 1, 16);
  ASSERT_EQ(full.fidelity.size(), 2u);
  for (const HeadFidelity& f : full.fidelity) {
    EXPECT_EQ(f.rows, 16);
    EXPECT_NEAR(f.recall_mean(), 1.0, 1e-6);
    EXPECT_LT(f.rel_l2(), 1e-6);
  }
  p.run("streaming:sink=16,local=64", &sparse, 0, 1, 16);
  for (const HeadFidelity& f : sparse.fidelity) {
    EXPECT_LT(f.recall_mean(), 0.5);  // random keys: ~80 of ~3100 keys kept
    EXPECT_GT(f.recall_min, 0.0);
    EXPECT_LE(f.recall_percentile(1), f.recall_mean());
    EXPECT_GT(f.rel_l2(), 0.01);
  }
}

}  // namespace
}  // namespace skim
