// The token-level planners (docs/methods.md): plan invariants over many
// shapes, full budget == dense bit for bit, recall on scattered heavy keys
// (where a static pattern of similar density fails), each planner's own
// mechanism, and parameter errors.
#include <gtest/gtest.h>

#include <cmath>

#include "planner_checks.h"
#include "planner_problem.h"
#include "skim/attention.h"

namespace skim {
namespace {

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
                                   "tca",
                                   "squeezed",
                                   "squeezed:clusters=20,target=0.5,sink=0,local=0,gqa=head"};

TEST(TokenPlanners, PlansAreValidOnManyShapes) {
  EXPECT_GE(testing::plan_on_many_shapes(kTokenSpecs), 530);
  testing::run_to_finite_outputs(kTokenSpecs, 2000);
}

TEST(TokenPlanners, FullBudgetIsDenseBitForBit) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{9, 3, 64, 300, 0}, std::tuple{4, 1, 128, 129, 517},
                                     std::tuple{2, 2, 64, 64, 4096}, std::tuple{6, 2, 64, 700, 1100}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 7);
    const std::vector<float> dense = p.dense();
    // Whether the planner plans this chunk: token_sparse needs more keys
    // than its window.
    const bool has_context = pos0 > 0;  // squeezed: keys before the chunk
    for (auto [spec, plans] : {std::pair{"token_sparse:coverage=0,min_tokens=0", p.n_keys() > 128},
                               std::pair{"token_sparse:coverage=0.5,min_tokens=1000000000", false},
                               std::pair{"tca:target=1,min_budget=0", true},
                               std::pair{"tca:target=1,redundancy=0.5", true},
                               std::pair{"squeezed:target=1", has_context},
                               std::pair{"squeezed:target=1,clusters=100,sink=0,local=0", has_context}}) {
      AttentionReport report;
      EXPECT_TRUE(bitwise_equal(p.run(as_planned(spec), &report), dense)) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_EQ(report.sparse_calls, plans ? 1 : 0) << spec << " n=" << n << " pos0=" << pos0;
    }
    // One plan per q head: dense key sets, tiled per head (equal up to rounding).
    for (const char* spec : {"token_sparse:coverage=0,min_tokens=0,gqa=head",
                             "tca:target=1,gqa=head",
                             "squeezed:target=1,gqa=head"}) {
      AttentionReport report;
      const std::vector<float> out = p.run(as_planned(spec), &report);
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec;
      EXPECT_LT(testing::rel_l2(out, dense), 1e-6) << spec;
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
  p.add_heavy_keys(194, 389, 1, 8.0f);
  expect_found(p, "scattered keys", "token_sparse", 0.25);
  expect_found(p, "scattered keys", "tca", 0.15);
  expect_found(p, "scattered keys", "squeezed", 0.1);
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
  p.add_heavy_keys(150, 401, 2, 8.0f);
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

// squeezed's planner object, built as the registry builds it.
std::unique_ptr<attention::Planner> squeezed_planner(const std::string& spec = "squeezed") {
  const attention::MethodSpec parsed = attention::parse_method_spec(spec);
  for (const attention::MethodDef& m : attention::sparse_methods())
    if (m.info.name == parsed.name) return m.make(attention::MethodParams(&m.info, m.info.name, parsed.values));
  return nullptr;
}

// The request of chunk [pos0, pos0 + rows) of p's sequence: p's keys up to the
// chunk's end (the queries are p's first rows; only their values differ).
attention::PlanRequest chunk(const PlannerProblem& p, int64_t pos0, int64_t rows, int32_t layer = 0) {
  attention::PlanRequest r = p.request(layer, 2);
  r.n_rows = rows;
  r.q_pos0 = pos0;
  r.kv = kernels::KvView::contiguous(p.k.data(), p.v.data(), kernels::KvDType::F16, p.n_keys() * p.d, p.d,
                                     pos0 + rows);
  return r;
}

bool same_plan(const std::optional<attention::Plan>& a, const std::optional<attention::Plan>& b) {
  if (!a || !b) return !a && !b;
  if (a->range_ptr != b->range_ptr || a->col_ptr != b->col_ptr || a->cols != b->cols) return false;
  for (size_t i = 0; i < a->ranges.size(); ++i)
    if (a->ranges[i].begin != b->ranges[i].begin || a->ranges[i].end != b->ranges[i].end) return false;
  return true;
}

TEST(TokenPlanners, SqueezedKeepsClustersAcrossChunks) {
  const PlannerProblem p(4, 2, 64, 256, 1024, 51), other(4, 2, 64, 256, 1024, 52);
  const auto first = [&](const PlannerProblem& q) { return chunk(q, 768, 256); };
  const auto second = [&](const PlannerProblem& q) { return chunk(q, 1024, 256); };

  // Chunk 2 after chunk 1: keys [0, 768) were clustered at chunk 1 and only
  // [768, 1024) are clustered now, so the clusters (and the plan) differ from a
  // fresh planner's, which clusters [0, 1024) at once.
  auto warm = squeezed_planner();
  warm->plan(first(p));
  const std::optional<attention::Plan> after_chunks = warm->plan(second(p));
  const std::optional<attention::Plan> fresh = squeezed_planner()->plan(second(p));
  ASSERT_TRUE(after_chunks && fresh);
  EXPECT_FALSE(same_plan(after_chunks, fresh));
  // Deterministic: another planner fed the same chunks plans the same.
  auto twin = squeezed_planner();
  twin->plan(first(p));
  EXPECT_TRUE(same_plan(twin->plan(second(p)), after_chunks));
  // The same chunk again reuses the state (nothing new to cluster).
  EXPECT_TRUE(same_plan(warm->plan(second(p)), after_chunks));
  // Another layer has its own clusters.
  EXPECT_TRUE(same_plan(warm->plan(chunk(p, 1024, 256, 1)), squeezed_planner()->plan(chunk(p, 1024, 256, 1))));

  // A different sequence in the same slot is clustered afresh ...
  EXPECT_TRUE(same_plan(warm->plan(second(other)), squeezed_planner()->plan(second(other))));
  // ... and so is a truncated one (fewer keys than were clustered).
  warm->plan(second(p));
  EXPECT_TRUE(same_plan(warm->plan(first(p)), squeezed_planner()->plan(first(p))));
  // Another sequence id keeps its own state: sequence 1 is fresh while 0 is warm.
  attention::PlanRequest seq1 = second(p);
  seq1.sequence = 1;
  EXPECT_TRUE(same_plan(warm->plan(seq1), fresh));
}

TEST(TokenPlanners, BadParametersAreRejected) {
  for (const char* spec :
       {"token_sparse:coverage=1", "token_sparse:coverage=-0.1", "token_sparse:kernel=4", "token_sparse:kernel=0",
        "token_sparse:window=0", "token_sparse:min_tokens=-1", "token_sparse:w=64",
        "tca:target=0", "tca:target=1.5", "tca:min_budget=100,max_budget=50", "tca:redundancy=2", "tca:sink=-1",
        "tca:local=x",
        "squeezed:clusters=0", "squeezed:clusters=101", "squeezed:target=0", "squeezed:target=nan",
        "squeezed:iterations=0", "squeezed:local=-5"}) {
    EXPECT_THROW(validate_attention_spec(spec), std::invalid_argument) << spec;
  }
  try {
    validate_attention_spec("token_sparse:kernel=4");
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("odd"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(validate_attention_spec("token_sparse"));
  EXPECT_NO_THROW(validate_attention_spec("tca"));
  EXPECT_NO_THROW(validate_attention_spec("squeezed"));
}

}  // namespace
}  // namespace skim
