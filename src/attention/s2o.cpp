// S2O (docs/methods.md#s2o): importance-ordered key-block visits with an early
// stop on the running softmax mass. Importance comes from E4 (exact softmax of
// every stride-th query row of each 64-row block, mass per 64-key block). Per
// (q head, query block) the plan lists the sink and diagonal blocks (visited
// first), then the blocks of largest estimated mass until they hold `cover` of
// it, each scored by its mass; the kernel visits them in that order and stops
// once a visited block added less than `eps` of the running softmax sum for
// every row of the query tile (attention_plan.h: stop_mass).
#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

// Between every mass score (<= 1) and the forced blocks' score.
constexpr float kVisitAlways = 0.5f * (1.0f + KeySelection::kForcedScore);

class S2OPlanner : public Planner {
 public:
  S2OPlanner(int64_t stride, int64_t kblock, double cover, double eps, bool rank_by_peak)
      : stride_(stride), kblock_(kblock), cover_(cover), eps_(eps), rank_by_peak_(rank_by_peak) {}

  bool estimates_mass() const override { return true; }
  void estimate_mass(const PlanRequest& r, BlockScores& mass) override {
    keys_.load(r);
    estimate_sampled(r, keys_, stride_, kblock_, mass);
  }

  std::optional<Plan> plan(const PlanRequest& r) override {
    keys_.load(r);
    estimate_sampled(r, keys_, stride_, kblock_, est_, rank_by_peak_ ? &peak_ : nullptr);
    KeySelection sel(r, true);
    select_to_target(est_, cover_, sel, rank_by_peak_ ? &peak_ : nullptr);
    Plan plan = sel.build();
    if (eps_ > 0) {
      plan.stop_theta.assign(static_cast<size_t>(plan.n_heads), kVisitAlways);
      plan.stop_mass.assign(static_cast<size_t>(plan.n_heads), static_cast<float>(eps_));
    }
    return plan;
  }

 private:
  int64_t stride_, kblock_;
  double cover_, eps_;
  bool rank_by_peak_;
  KeysF32 keys_;
  BlockScores est_, peak_;
};

}  // namespace

MethodDef s2o_method() {
  AttentionMethodInfo info{"s2o",
                           "S2O: key blocks visited by estimated importance (exact softmax of strided query rows), "
                           "early stop on the running softmax mass",
                           {{"stride", "8", "estimate from every stride-th query row of each 64-row block (cost 1/stride of Q.K)"},
                            {"kblock", "64", "key block of the estimate and the selection (16, 32 or 64)"},
                            {"cover", "0.99", "list the blocks of largest estimated mass until they hold this share"},
                            {"eps", "0.01", "stop once a visited block adds less than this share of the running sum "
                                            "for every row (0: visit every listed block)"},
                            {"rank", "mean", "visit order: mean (the sampled rows' mean weight) or peak (their largest)"},
                            crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const int64_t kblock = p.integer("kblock", 16, 64);
            if (kblock != 16 && kblock != 32 && kblock != 64)
              throw std::invalid_argument(fmt::format("s2o: kblock={} (use 16, 32 or 64)", kblock));
            const std::string rank = p.text("rank");
            if (rank != "mean" && rank != "peak")
              throw std::invalid_argument(fmt::format("s2o: rank={} (use mean or peak)", rank));
            return std::make_unique<S2OPlanner>(p.integer("stride", 1, 64), kblock, p.number("cover", 0.0, 1.0),
                                                p.number("eps", 0.0, 1.0), rank == "peak");
          }};
}

}  // namespace skim::attention
