// KeyDiff (Park et al., arXiv 2504.15364; kvpress KeyDiffPress): attention-free.
// Keys that point away from the head's mean key direction are the distinctive
// ones: score = -cos(k, a), a = the mean of the normalized keys. Scores the
// keys as stored: quantized caches store them centred (docs/kv-formats.md), so
// there the mean direction is measured from the sequence's mean key.
#include "kvpolicy/policy.h"

#include <cmath>

#include "kernels/kv_codec.h"

namespace skim::kvpolicy {
namespace {

class KeyDiff final : public Scorer {
 public:
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    const int64_t n = r.kv.n_keys, first = r.kv.first_key;
    const int32_t d = r.head_dim;
    scores.assign(static_cast<size_t>(r.n_kv_heads) * n, 0.0f);
    std::vector<float> keys(static_cast<size_t>(n) * d), mean(static_cast<size_t>(d));
    std::vector<double> norms(static_cast<size_t>(n));
    for (int32_t g = 0; g < r.n_kv_heads; ++g) {
      kernels::read_k_rows(r.kv, g, first, n - first, d, keys.data() + first * d);
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int64_t s = first; s < n; ++s) {
        const float* k = keys.data() + s * d;
        double norm2 = 0.0;
        for (int32_t e = 0; e < d; ++e) norm2 += static_cast<double>(k[e]) * k[e];
        norms[s] = std::sqrt(norm2) + 1e-12;
        for (int32_t e = 0; e < d; ++e) mean[e] += static_cast<float>(k[e] / norms[s]);
      }
      double mean_norm2 = 0.0;
      for (float m : mean) mean_norm2 += static_cast<double>(m) * m;
      const double mean_norm = std::sqrt(mean_norm2) + 1e-12;
      for (int64_t s = first; s < n; ++s) {
        const float* k = keys.data() + s * d;
        double dot = 0.0;
        for (int32_t e = 0; e < d; ++e) dot += static_cast<double>(k[e]) * mean[e];
        scores[static_cast<size_t>(g) * n + s] = static_cast<float>(-dot / (norms[s] * mean_norm));
      }
    }
  }
};

}  // namespace

PolicyDef keydiff_policy() {
  return {{"keydiff", "KeyDiff: attention-free, keeps the keys least aligned with the mean key direction", {}},
          [](const attention::MethodParams&) { return std::make_unique<KeyDiff>(); }};
}

}  // namespace skim::kvpolicy
