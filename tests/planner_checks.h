// GoogleTest checks every planner test runs on PlannerProblem (test binary
// only: planner_problem.h itself also serves bench/planner_bench).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <span>
#include <tuple>
#include <vector>

#include "planner_problem.h"

namespace skim::testing {

// Every spec planned on many shapes (head dims 64 and 128; 2/2, 6/2 and 7/1
// q/KV heads; 1 to 600 rows at positions 0 and 517): plans build (validated),
// list keys and stay within the dense pairs. Returns how many were sparse.
inline int plan_on_many_shapes(std::span<const char* const> specs) {
  int sparse_plans = 0;
  for (int32_t d : {64, 128})
    for (auto [hq, hkv] : {std::pair{2, 2}, std::pair{6, 2}, std::pair{7, 1}})
      for (int64_t n : {1, 2, 63, 64, 65, 130, 333, 600})
        for (int64_t pos0 : {0, 517}) {
          const PlannerProblem p(hq, hkv, d, n, pos0, static_cast<uint32_t>(n + pos0 + d + hq));
          for (const char* spec : specs) {
            std::optional<attention::Plan> plan;
            EXPECT_NO_THROW(plan = p.plan(spec)) << spec << " d " << d << " hq " << hq << " n " << n << " pos0 " << pos0;
            if (!plan) continue;
            ++sparse_plans;
            EXPECT_GT(plan->listed_pairs(), 0) << spec;
            EXPECT_LE(plan_density(*plan, p), 1.0 + 1e-12) << spec;
          }
        }
  return sparse_plans;
}

// The kernel runs every spec (with plan validation on) as the model would, to finite outputs.
inline void run_to_finite_outputs(std::span<const char* const> specs, int64_t longest_pos0) {
  for (auto [hq, hkv, d, n, pos0] : {std::tuple{6, 2, 64, int64_t{333}, int64_t{517}},
                                     std::tuple{7, 1, 128, int64_t{65}, int64_t{1000}},
                                     std::tuple{2, 2, 64, int64_t{600}, longest_pos0}}) {
    const PlannerProblem p(hq, hkv, d, n, pos0, 21);
    for (const char* spec : specs) {
      std::vector<float> out;
      EXPECT_NO_THROW(out = p.run(spec)) << spec;
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << spec;
    }
  }
}

}  // namespace skim::testing
