// The chunk-selecting planners: hip (hierarchical span pruning), dhsa
// (content-cut chunks) and longheads (per-head chunk choice). Plan invariants
// over many shapes, the key budget per query tile, full budget == dense bit
// for bit, recall on structured problems against a static pattern of the same
// density, DHSA's content-dependent chunk boundaries, and parameter errors.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

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

const char* const kChunkSpecs[] = {"hip",
                                   "hip:k=128,chunk=16,sink=16,local=64,q_stride=1",
                                   "hip:k=64,chunk=64,sink=0,local=1,gqa=head",
                                   "dhsa",
                                   "dhsa:budget=0.2,min_chunk=8,max_chunk=40,gqa=head",
                                   "dhsa:budget=100,min_chunk=16,max_chunk=16,sink=0,local=1",
                                   "longheads",
                                   "longheads:chunk=64,k=2",
                                   "longheads:chunk=128,k=1,gqa=head"};

TEST(ChunkPlanners, PlansAreValidOnManyShapes) {
  // These planners always plan.
  EXPECT_EQ(testing::plan_on_many_shapes(kChunkSpecs), 2 * 3 * 8 * 2 * static_cast<int>(std::size(kChunkSpecs)));
  testing::run_to_finite_outputs(kChunkSpecs, 3000);
}

TEST(ChunkPlanners, KeysPerTileStayWithinTheBudget) {
  // One plan per q head (gqa=head): each 64-row tile lists at most the sink,
  // the local window and its rows, and the selected chunks.
  const PlannerProblem p(4, 2, 64, 256, 6000, 3);
  const int64_t rows = 63;  // a tile's rows beyond its first
  for (auto [spec, bound] : {std::pair{"hip:k=512,chunk=32,sink=64,local=256,gqa=head", 64 + 256 + rows + 512},
                             std::pair{"dhsa:budget=500,min_chunk=16,max_chunk=64,sink=64,local=256,gqa=head",
                                       64 + 256 + rows + 500 + 64},
                             std::pair{"longheads:chunk=256,k=3,gqa=head", (3 + 3) * 256 + rows}}) {
    const std::optional<attention::Plan> plan = p.plan(spec);
    ASSERT_TRUE(plan.has_value()) << spec;
    int64_t most = 0;
    for (int64_t i = 0; i < plan->n_items(); ++i) most = std::max(most, plan->item_keys(i));
    EXPECT_LE(most, bound) << spec;
    EXPECT_GT(most, bound / 2) << spec;  // the budget is used, not ignored
  }
}

TEST(ChunkPlanners, FullBudgetIsDenseBitForBit) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{9, 3, 64, 300, 0}, std::tuple{4, 1, 128, 129, 517},
                                     std::tuple{2, 2, 64, 64, 4096}, std::tuple{6, 2, 64, 700, 1100}}) {
    PlannerProblem p(hq, hkv, d, n, pos0, 7);
    const std::vector<float> dense = p.dense();
    for (const char* spec : {"hip:k=1000000", "hip:k=1000000,chunk=7,sink=0,local=1,q_stride=64", "dhsa:budget=1",
                             "dhsa:budget=1000000,min_chunk=3,max_chunk=9,sink=0,local=1", "longheads:k=1000000",
                             "longheads:k=1000000,chunk=64"}) {
      AttentionReport report;
      EXPECT_TRUE(bitwise_equal(p.run(as_planned(spec), &report), dense)) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec << " n=" << n << " pos0=" << pos0;
      EXPECT_EQ(report.sparse_calls, 1) << spec << " n=" << n << " pos0=" << pos0;
    }
    // One plan per q head: dense key sets, tiled per head (equal up to rounding).
    for (const char* spec : {"hip:k=1000000,gqa=head", "dhsa:budget=1,gqa=head", "longheads:k=1000000,gqa=head"}) {
      AttentionReport report;
      const std::vector<float> out = p.run(as_planned(spec), &report);
      EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec;
      EXPECT_EQ(report.sparse_calls, 1) << spec;
      EXPECT_LT(testing::rel_l2(out, dense), 1e-6) << spec;
    }
  }
}

// `spec` keeps recall >= 0.9 at no more than max_density, and a static
// pattern (sink + local window) of at least its density keeps far less.
void expect_beats_static(const PlannerProblem& p, const char* what, const std::string& spec, double max_density) {
  const Recall r = measure(p, spec);
  EXPECT_GE(r.mean, 0.9) << what << ": " << spec << " density " << r.density;
  EXPECT_LE(r.density, max_density) << what << ": " << spec << " recall " << r.mean;
  const int64_t local = static_cast<int64_t>(std::ceil(r.density * static_cast<double>(p.n_keys())));
  const Recall fixed = measure(p, "streaming:sink=64,local=" + std::to_string(local));
  EXPECT_GE(fixed.density, r.density) << what << ": " << spec;
  EXPECT_LT(fixed.mean, r.mean - 0.3) << what << ": " << spec << " vs streaming local=" << local;
}

TEST(ChunkPlanners, EstimatesFindHeavyKeys) {
  // Runs of 100 heavy keys, unaligned with chunks, every 1900 keys.
  {
    PlannerProblem p(6, 2, 64, 512, 7680, 33);
    p.add_heavy_keys(300, 1900, 100, 1.0f);
    expect_beats_static(p, "heavy runs", "hip", 0.25);
    expect_beats_static(p, "heavy runs", "dhsa", 0.25);
    expect_beats_static(p, "heavy runs", "longheads", 0.25);
  }
  // Scattered single heavy keys (one in 389): the tree search and the chunk
  // scores must find a key wherever it lies in its span. Chunk budgets must
  // allow a chunk per key (20 keys): DHSA's default 768 keys hold 12 to 24
  // chunks of 32 to 64 keys, LongHeads' default 6 chunks far fewer.
  {
    PlannerProblem p(6, 2, 64, 512, 7680, 35);
    p.add_heavy_keys(194, 389, 1, 8.0f);
    expect_beats_static(p, "scattered keys", "hip", 0.25);
    expect_beats_static(p, "scattered keys", "dhsa:budget=1280", 0.25);
    expect_beats_static(p, "scattered keys", "longheads:chunk=64,k=24", 0.25);
  }
}

// Whether a plan's item lists key slot `key`.
bool lists(const attention::Plan& plan, int64_t item, int64_t key) {
  for (int64_t i = plan.range_ptr[item]; i < plan.range_ptr[item + 1]; ++i)
    if (plan.ranges[i].begin <= key && key < plan.ranges[i].end) return true;
  for (int64_t i = plan.col_ptr[item]; i < plan.col_ptr[item + 1]; ++i)
    if (plan.cols[i] == key) return true;
  return false;
}

TEST(ChunkPlanners, DhsaChunksFollowTheContent) {
  // Keys in segments of 70..120 keys, each near one random direction; the
  // queries point along the segment holding key 1000. With a budget of that
  // segment's length, DHSA keeps exactly it: its chunk boundaries are the
  // segments' (fixed-size chunks would cut through them).
  PlannerProblem p(1, 1, 64, 64, 2048, 8);
  std::mt19937 rng(8);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> length(70, 120);
  int64_t target_begin = 0, target_end = 0;
  std::vector<float> target(p.d);
  for (int64_t begin = 0; begin < p.n_keys();) {
    const int64_t end = std::min(p.n_keys(), begin + length(rng));
    std::vector<float> dir(p.d);
    for (float& x : dir) x = gauss(rng);
    for (int64_t j = begin; j < end; ++j)
      for (int32_t c = 0; c < p.d; ++c) p.k[j * p.d + c] = kernels::f32_to_f16(dir[c] + 0.05f * gauss(rng));
    if (begin <= 1000 && 1000 < end) {
      target_begin = begin;
      target_end = end;
      target = dir;
    }
    begin = end;
  }
  for (int64_t i = 0; i < p.n_rows; ++i)
    for (int32_t c = 0; c < p.d; ++c) p.q[i * p.d + c] = 0.5f * target[c];
  const std::string spec =
      "dhsa:min_chunk=32,max_chunk=128,sink=64,local=256,budget=" + std::to_string(target_end - target_begin);
  const std::optional<attention::Plan> plan = p.plan(spec);
  ASSERT_TRUE(plan.has_value());
  ASSERT_EQ(plan->n_items(), 1);
  for (int64_t j = target_begin; j < target_end; ++j) EXPECT_TRUE(lists(*plan, 0, j)) << j;
  EXPECT_FALSE(lists(*plan, 0, target_begin - 1)) << target_begin;
  EXPECT_FALSE(lists(*plan, 0, target_end)) << target_end;
  EXPECT_EQ(plan->item_keys(0), 64 + (target_end - target_begin) + 256 + 63);
}

TEST(ChunkPlanners, BadParametersAreRejected) {
  for (const char* spec :
       {"hip:k=16,chunk=32", "hip:chunk=0", "hip:q_stride=0", "hip:q_stride=65", "hip:local=0", "hip:sink=-1",
        "hip:k=lots", "hip:depth=3", "dhsa:budget=0", "dhsa:budget=-1", "dhsa:budget=x", "dhsa:min_chunk=0",
        "dhsa:min_chunk=64,max_chunk=32", "dhsa:local=0", "longheads:chunk=100", "longheads:chunk=32",
        "longheads:k=-1", "longheads:sink=4"}) {
    EXPECT_THROW(validate_attention_spec(spec), std::invalid_argument) << spec;
  }
  try {
    validate_attention_spec("hip:k=16,chunk=32");
    ADD_FAILURE() << "hip:k=16,chunk=32 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("chunk=32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace skim
