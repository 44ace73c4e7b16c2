// The token-level planners (docs/methods.md): plan invariants over many
// shapes, full budget == dense bit for bit, recall on scattered heavy keys
// (where a static pattern of similar density fails), each planner's own
// mechanism, and parameter errors.
#include <gtest/gtest.h>

#include <cmath>

#include "planner_problem.h"
#include "skim/attention.h"

namespace skim {
namespace {

using testing::add_heavy_keys;
using testing::as_planned;
using testing::bitwise_equal;
using testing::measure;
using testing::PlannerProblem;
using testing::Recall;

const char* const kTokenSpecs[] = {"token_sparse:min_tokens=16,window=32",
                                   "token_sparse:min_tokens=0,window=64,coverage=0.3,kernel=1,gqa=head",
                                   "token_sparse",
                                   "tca:min_budget=16,sink=16,local=64",
                                   "tca:target=0.5,min_budget=0,max_budget=40,redundancy=0.2,gqa=head",
                                   "tca"};

TEST(TokenPlanners, PlansAreValidOnManyShapes) {
  int sparse_plans = 0;
  for (int32_t d : {64, 128})
    for (auto [hq, hkv] : {std::pair{2, 2}, std::pair{6, 2}, std::pair{7, 1}})
      for (int64_t n : {1, 2, 63, 64, 65, 130, 333, 600})
        for (int64_t pos0 : {0, 517}) {
          PlannerProblem p(hq, hkv, d, n, pos0, static_cast<uint32_t>(n + pos0 + d + hq));
          for (const char* spec : kTokenSpecs) {
            std::optional<attention::Plan> plan;
            ASSERT_NO_THROW(plan = p.plan(spec)) << spec << " d " << d << " hq " << hq << " n " << n << " pos0 " << pos0;
            if (!plan) continue;
            ++sparse_plans;
            EXPECT_GT(plan->listed_pairs(), 0) << spec;
          }
        }
  EXPECT_GE(sparse_plans, 440);
  // The kernel runs them (with plan validation on) as the model would.
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{6, 2, 64, 333, 517}, std::tuple{7, 1, 128, 65, 1000},
                                     std::tuple{2, 2, 64, 600, 2000}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 21);
    for (const char* spec : kTokenSpecs) {
      AttentionReport report;
      std::vector<float> out;
      ASSERT_NO_THROW(out = p.run(spec, &report)) << spec;
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << spec;
    }
  }
}

TEST(TokenPlanners, FullBudgetIsDenseBitForBit) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{9, 3, 64, 300, 0}, std::tuple{4, 1, 128, 129, 517},
                                     std::tuple{2, 2, 64, 64, 4096}, std::tuple{6, 2, 64, 700, 1100}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 7);
    const std::vector<float> dense = p.dense();
    // Whether the planner plans this chunk: token_sparse needs more keys
    // than its window.
    for (auto [spec, plans] : {std::pair{"token_sparse:coverage=0,min_tokens=0", p.n_keys() > 128},
                               std::pair{"token_sparse:coverage=0.5,min_tokens=1000000000", false},
                               std::pair{"tca:target=1,min_budget=0", true},
                               std::pair{"tca:target=1,redundancy=0.5", true}}) {
      AttentionReport report;
      EXPECT_TRUE(bitwise_equal(p.run(as_planned(spec), &report), dense)) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_EQ(report.sparse_calls, plans ? 1 : 0) << spec << " n=" << n << " pos0=" << pos0;
    }
    // One plan per q head: dense key sets, tiled per head (equal up to rounding).
    for (const char* spec : {"token_sparse:coverage=0,min_tokens=0,gqa=head",
                             "tca:target=1,gqa=head"}) {
      AttentionReport report;
      const std::vector<float> out = p.run(as_planned(spec), &report);
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec;
      double err = 0, ref = 0;
      for (size_t i = 0; i < out.size(); ++i) {
        err += std::pow(double(out[i]) - dense[i], 2);
        ref += std::pow(double(dense[i]), 2);
      }
      EXPECT_LT(std::sqrt(err / ref), 1e-6) << spec;
    }
  }
}

void expect_found(const PlannerProblem& p, const char* what, const std::string& spec, double max_density) {
  const Recall r = measure(p, spec);
  EXPECT_GE(r.mean, 0.9) << what << ": " << spec << " density " << r.density;
  EXPECT_LE(r.density, max_density) << what << ": " << spec << " recall " << r.mean;
}

TEST(TokenPlanners, FindScatteredHeavyKeys) {
  // Single heavy keys, one in 389, hold nearly all the mass; the chunk is the
  // last 512 of 8192 keys.
  PlannerProblem p(6, 2, 64, 512, 7680, 35);
  add_heavy_keys(p, 194, 389, 1, 8.0f);
  expect_found(p, "scattered keys", "token_sparse", 0.25);
  expect_found(p, "scattered keys", "tca", 0.15);
  // A static pattern of similar density misses them.
  EXPECT_LT(measure(p, "streaming:sink=64,local=1024").mean, 0.5);
  // token_sparse's count comes from the mass: with nothing droppable it keeps everything.
  EXPECT_GT(measure(p, "token_sparse:coverage=0").density, 0.95);
}

TEST(TokenPlanners, TcaRedundancySkipsStayWithinTheTarget) {
  // Pairs of identical adjacent heavy keys: each pair is maximally redundant,
  // and together the pairs hold nearly all the mass. Skipping one key of
  // every pair would halve recall; skips are capped at 1 - target of the mass.
  PlannerProblem p(6, 2, 64, 512, 7680, 37);
  add_heavy_keys(p, 150, 401, 2, 8.0f);
  const Recall plain = measure(p, "tca");
  // redundancy=0: every kept neighbour with a positive cosine makes a key
  // redundant (about half the random keys).
  const Recall skipping = measure(p, "tca:redundancy=0");
  EXPECT_GE(plain.mean, 0.95);
  EXPECT_GE(skipping.mean, 0.9);
  EXPECT_LE(skipping.density, plain.density * 1.5);
  // Light redundant keys (within the slack) are skipped: the same budget then
  // holds other keys.
  EXPECT_NE(p.plan("tca:redundancy=0,gqa=head")->cols, p.plan("tca:gqa=head")->cols);
}

TEST(TokenPlanners, BadParametersAreRejected) {
  for (const char* spec :
       {"token_sparse:coverage=1", "token_sparse:coverage=-0.1", "token_sparse:kernel=4", "token_sparse:kernel=0",
        "token_sparse:window=0", "token_sparse:min_tokens=-1", "token_sparse:w=64",
        "tca:target=0", "tca:target=1.5", "tca:min_budget=100,max_budget=50", "tca:redundancy=2", "tca:sink=-1",
        "tca:local=x"}) {
    EXPECT_THROW(validate_attention_spec(spec), std::invalid_argument) << spec;
  }
  try {
    validate_attention_spec("token_sparse:kernel=4");
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("odd"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(validate_attention_spec("token_sparse"));
  EXPECT_NO_THROW(validate_attention_spec("tca"));
}

}  // namespace
}  // namespace skim
