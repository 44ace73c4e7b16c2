// ZipVL (He et al., arXiv 2410.08584; abstract and secondary sources only,
// docs/kv-policies.md): each layer keeps the smallest set of keys holding `tau`
// of the attention mass its observation window pays, so the ratio adapts per
// layer to how concentrated its attention is. Assumed here: the mass is the
// window's attention per KV head (SnapKV's sum, unpooled), each key's share
// divided by the window rows that can see it (ZipVL's causal correction); the
// sinks and the window count first; a layer keeps the largest count any of its
// KV heads needs; `keep` caps it. ZipVL quantizes the other keys instead of
// dropping them: here they are evicted (combine with -ctk/-ctv for bytes).
#include "kvpolicy/policy.h"

#include <algorithm>
#include <functional>

namespace skim::kvpolicy {
namespace {

class MassThreshold final : public Scorer {
 public:
  explicit MassThreshold(double tau) : tau_(tau) {}
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    window_attention_mass(r, scores);
    const int64_t n = r.kv.n_keys;
    for (int32_t g = 0; g < r.n_kv_heads; ++g)
      for (int64_t s = r.kv.first_key; s < n; ++s) {
        const int64_t seen = r.q_rows - std::max<int64_t>(0, r.kv.position(g, s) - r.q_pos0);
        scores[static_cast<size_t>(g) * n + s] /= static_cast<float>(std::max<int64_t>(1, seen));
      }
  }
  int64_t layer_target(const ScoreRequest& r, const std::vector<float>& scores, int64_t target, int32_t sink,
                       int32_t window) const override {
    const int64_t n = r.kv.n_keys, first = r.kv.first_key, recent = std::min<int64_t>(window, n - first);
    int64_t need = 0;
    std::vector<float> middle;
    for (int32_t g = 0; g < r.n_kv_heads; ++g) {
      const float* sg = scores.data() + static_cast<size_t>(g) * n;
      // What KvPolicy::select keeps whatever the scores, sinks and window, counts first.
      const int64_t sink_end = std::min(r.kv.first_slot_at(g, sink), n - recent);
      double total = 0.0, have = 0.0;
      middle.clear();
      for (int64_t s = first; s < n; ++s) {
        total += sg[s];
        if (s < sink_end || s >= n - recent) {
          have += sg[s];
        } else {
          middle.push_back(sg[s]);
        }
      }
      std::sort(middle.begin(), middle.end(), std::greater<>());
      int64_t taken = 0;
      while (have < tau_ * total && taken < static_cast<int64_t>(middle.size())) have += middle[static_cast<size_t>(taken++)];
      need = std::max(need, (sink_end - first) + recent + taken);
    }
    return std::min(need, target);
  }
  bool adaptive() const override { return true; }

 private:
  double tau_;
};

}  // namespace

PolicyDef zipvl_policy() {
  return {{"zipvl",
           "ZipVL: per layer, the fewest keys holding tau of the window's attention mass (a layer-adaptive ratio)",
           {{"tau", "0.975", "share of the window's attention mass a layer keeps"}}},
          [](const attention::MethodParams& p) { return std::make_unique<MassThreshold>(p.number("tau", 0.01, 1.0)); }};
}

}  // namespace skim::kvpolicy
