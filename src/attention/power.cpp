// PowerAttention: a static block pattern whose receptive field doubles with
// depth. A query block attends to the sink blocks, a local band, and the key
// blocks at power-of-two block distances 2^k behind it; stacked over layers,
// information from any earlier block reaches it in O(log n) hops.
#include "attention/selection.h"

namespace skim::attention {
namespace {

class PowerPlanner : public Planner {
 public:
  PowerPlanner(int64_t sink, int64_t local, int64_t block) : sink_(sink), local_(local), block_(block) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    KeySelection sel(r);
    for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
      // Blocks of positions: the one holding the query block's end, and those 2^k before it.
      const int64_t kb = sel.block_last_pos(qb) / block_;
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        sel.add_sink_and_window(h, qb, sink_, local_);
        for (int64_t dist = 1; dist <= kb; dist *= 2)
          sel.add_positions(h, qb, (kb - dist) * block_, (kb - dist + 1) * block_);
      }
    }
    return sel.build();
  }

 private:
  int64_t sink_, local_, block_;
};

}  // namespace

MethodDef power_method() {
  AttentionMethodInfo info{"power",
                           "PowerAttention: sinks + local band + key blocks at power-of-two distances",
                           {{"sink", "64", "first keys every query attends to"},
                            {"local", "256", "local window in keys"},
                            {"block", "64", "block size of the power-of-two pattern"}}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            return std::make_unique<PowerPlanner>(p.integer("sink", 0, 1 << 30), p.integer("local", 1, 1 << 30),
                                                  p.integer("block", 16, 4096));
          }};
}

}  // namespace skim::attention
