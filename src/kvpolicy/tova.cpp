// TOVA (Oren et al., arXiv 2401.06104): the attention of the last query alone,
// averaged over all query heads and shared by every KV head (kvpress's
// TOVAPress), so each head keeps the same positions.
#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

class LastQuery final : public Scorer {
 public:
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    ScoreRequest last = r;
    last.q = r.q + static_cast<int64_t>(r.q_rows - 1) * r.q_row_stride;
    last.q_rows = 1;
    last.q_pos0 = r.q_pos0 + r.q_rows - 1;
    std::vector<float> probs;
    window_attention(last, probs);
    const int64_t n = r.kv.n_keys;
    std::vector<float> mean(static_cast<size_t>(n), 0.0f);
    for (int32_t h = 0; h < r.n_q_heads; ++h)
      for (int64_t s = 0; s < n; ++s) mean[s] += probs[static_cast<size_t>(h) * n + s] / static_cast<float>(r.n_q_heads);
    scores.resize(static_cast<size_t>(r.n_kv_heads) * n);
    for (int32_t g = 0; g < r.n_kv_heads; ++g) std::copy(mean.begin(), mean.end(), scores.begin() + static_cast<size_t>(g) * n);
  }
};

}  // namespace

PolicyDef tova_policy() {
  return {{"tova", "TOVA: attention of the last query, averaged over all heads", {}},
          [](const attention::MethodParams&) { return std::make_unique<LastQuery>(); }};
}

}  // namespace skim::kvpolicy
