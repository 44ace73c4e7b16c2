// SnapKV (Li et al., arXiv 2404.14469): the attention the prompt's last
// `window` queries pay each earlier key, summed over the window, smoothed by an
// average pool over neighbouring keys (kernel 5, as the paper's code) and
// averaged over the query heads of each KV head (kvpress's GQA rule: one
// selection per KV head, so GQA keeps its memory advantage).
#include "kvpolicy/policy.h"

#include <algorithm>

namespace skim::kvpolicy {
namespace {

class SnapKv final : public Scorer {
 public:
  explicit SnapKv(int32_t kernel) : kernel_(kernel) {}
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    std::vector<float> mass;
    window_attention_mass(r, mass);
    const int64_t n = r.kv.n_keys;
    scores.assign(static_cast<size_t>(r.n_kv_heads) * n, 0.0f);
    for (int32_t g = 0; g < r.n_kv_heads; ++g) {
      const float* summed = mass.data() + static_cast<size_t>(g) * n;
      average_pool(summed, n, kernel_, scores.data() + static_cast<size_t>(g) * n);
    }
  }

 private:
  int32_t kernel_;
};

}  // namespace

std::unique_ptr<Scorer> make_snapkv_scorer(int32_t kernel) { return std::make_unique<SnapKv>(kernel); }

void average_pool(const float* in, int64_t n, int32_t kernel, float* out) {
  const int32_t half = kernel / 2;
  for (int64_t s = 0; s < n; ++s) {
    float sum = 0.0f;
    for (int64_t t = std::max<int64_t>(0, s - half); t <= std::min<int64_t>(n - 1, s + half); ++t) sum += in[t];
    out[s] = sum / static_cast<float>(kernel);
  }
}

int32_t pool_kernel(const attention::MethodParams& p) {
  const int64_t kernel = p.integer("kernel", 1, 63);
  if (kernel % 2 == 0) throw std::invalid_argument(p.method() + ": kernel must be odd");
  return static_cast<int32_t>(kernel);
}

PolicyDef snapkv_policy() {
  return {{"snapkv",
           "SnapKV: attention of the last window queries, pooled over neighbouring keys, per KV head",
           {{"kernel", "5", "average-pool width over neighbouring keys (odd; 1: no pooling)"}}},
          [](const attention::MethodParams& p) { return make_snapkv_scorer(pool_kernel(p)); }};
}

}  // namespace skim::kvpolicy
