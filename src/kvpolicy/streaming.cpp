// StreamingLLM (Xiao et al., arXiv 2309.17453): the attention sinks and the
// most recent rows, nothing else. Scores are recency, so the shared rules
// (sinks, window, budget) do the rest; no attention is needed.
#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

class Recency final : public Scorer {
 public:
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    const int64_t n = r.kv.n_keys;
    scores.resize(static_cast<size_t>(r.n_kv_heads) * n);
    for (int32_t g = 0; g < r.n_kv_heads; ++g)
      for (int64_t s = 0; s < n; ++s) scores[static_cast<size_t>(g) * n + s] = static_cast<float>(s);
  }
};

}  // namespace

PolicyDef streaming_policy() {
  return {{"streaming", "StreamingLLM: the first sink positions and the most recent rows", {}},
          [](const attention::MethodParams&) { return std::make_unique<Recency>(); }};
}

}  // namespace skim::kvpolicy
