// An attention method as the engine runs it: a planner (or none, for dense)
// wrapped in the policy every method shares:
//   min_len      dense while the keys of a chunk are fewer (the crossover below
//                which planning costs more than it saves)
//   dense_first / dense_last   layers kept dense at both ends of the stack
//   last_q       the prompt's last query rows stay dense (they feed generation)
//   max_density  a plan denser than this runs as dense instead (no gain left)
//   lambda       BLASST tile skip inside the kernel, on whatever plan runs
//   reuse        IndexCache-style: only the listed layers plan; every other
//                layer reuses the plan of the nearest planning layer before it
//   gqa          union (one plan per KV group) or head (one plan per q head)
//   target       recall-targeted: the fewest key blocks whose estimated mass
//                reaches this share, on the planner's estimate, in place of
//                its own rule (docs/methods.md#recall-targeted-policy)
//   dense_layers layers that always run dense (skim calibrate --route)
// and the bookkeeping of the AttentionReport (density, timings, fidelity).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attention/estimate.h"
#include "attention/planner.h"

namespace skim::attention {

class AttentionMethod {
 public:
  // Throws std::invalid_argument for an unknown method, key or bad value.
  AttentionMethod(const std::string& spec, int32_t n_layers);  // n_layers 0: not checked
  ~AttentionMethod();

  const std::string& name() const { return name_; }
  bool is_dense() const { return !planner_ && lambda_ == 0.0f; }

  // Executes a plan (null: dense) into params.out: kernels::attention_prefill,
  // or a caller's runner over the same plans (Dual Chunk Attention runs each
  // plan over its three key regions, src/model/dca.h).
  using PlanRunner = std::function<void(const kernels::AttnParams&, const Plan*)>;

  // Runs one layer's attention for a prefill chunk: plans, executes into
  // params.out (through `run` when given) and accounts for it in `report`. With
  // fidelity_rows > 0 a sparse call is also compared with dense attention on sampled rows.
  void prefill(const PlanRequest& request, const kernels::AttnParams& params, AttentionReport& report,
               int fidelity_rows, const PlanRunner& run = {});

  // The plan prefill would run for this request (nullopt: dense), not run.
  std::optional<Plan> plan(const PlanRequest& request);

 private:
  std::optional<Plan> make_plan(const PlanRequest& request, AttentionReport& report);
  void measure_fidelity(const PlanRequest& request, const kernels::AttnParams& params, const float* lse,
                        int fidelity_rows, AttentionReport& report, const PlanRunner& run) const;

  std::string name_;
  std::unique_ptr<Planner> planner_;
  int64_t min_len_ = 0;
  int32_t dense_first_ = 0, dense_last_ = 0;
  int64_t last_q_ = 0;
  double max_density_ = 1.0;
  float lambda_ = 0.0f;
  bool lambda_per_length_ = false;  // lambda given at 4096 keys, scaled by 4096 / n_keys
  bool group_union_ = true;
  double target_ = 0;               // recall target (0: the planner's own rule)
  BlockScores mass_;                // its estimate, reused between calls
  std::vector<bool> dense_layer_;   // dense_layers (empty = none)
  std::vector<bool> plans_layer_;   // reuse: which layers compute plans (empty = all)
  std::optional<Plan> reusable_;    // the latest planning layer's plan (nullopt: dense)
  int32_t reusable_seq_ = -1;       // ... and the chunk it was made for
  int64_t reusable_pos0_ = -1;
  int64_t reusable_rows_ = -1;
};

// The dense causal plan restricted to some rows: used for fidelity and last_q.
Plan dense_plan_for_rows(const PlanRequest& request, const std::vector<int32_t>& rows);

// Rebuilds `plan` so that every tile holding a row >= first_dense_row attends
// densely (causal); other tiles keep their key sets.
Plan densify_rows_from(const Plan& plan, int64_t first_dense_row);

}  // namespace skim::attention
