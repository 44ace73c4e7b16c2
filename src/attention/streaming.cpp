// StreamingLLM-style static patterns for prefill. A-shape: every query sees the
// first `sink` keys and a local window of `local` keys. Tri-shape (SCBench) is
// A-shape whose last query rows of the prompt attend densely, so the tokens
// that feed generation see the whole prompt: the policy's last_q.
#include "attention/selection.h"

namespace skim::attention {
namespace {

class StreamingPlanner : public Planner {
 public:
  StreamingPlanner(int64_t sink, int64_t local) : sink_(sink), local_(local) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    KeySelection sel(r);
    for (int32_t h = 0; h < r.n_q_heads; ++h) {
      for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
        sel.add_sink_and_window(h, qb, sink_, local_);
      }
    }
    return sel.build();
  }

 private:
  int64_t sink_, local_;
};

MethodDef make_streaming(const std::string& name, const std::string& summary, const std::string& last_q) {
  AttentionMethodInfo info{name,
                           summary,
                           {{"sink", "128", "first keys every query attends to (attention sinks)"},
                            {"local", "1024", "local window: keys before each query it attends to"},
                            {"last_q", last_q, "the prompt's last query rows attend densely"}}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            return std::make_unique<StreamingPlanner>(p.integer("sink", 0, 1 << 30), p.integer("local", 1, 1 << 30));
          }};
}

}  // namespace

MethodDef streaming_method() {
  return make_streaming("streaming", "A-shape: attention sinks + local window (StreamingLLM / MInference A-shape)", "0");
}

MethodDef trishape_method() {
  return make_streaming("trishape", "Tri-shape: A-shape, with the prompt's last queries dense (SCBench)", "100");
}

}  // namespace skim::attention
