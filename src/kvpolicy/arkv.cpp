// ARKV (arXiv, Feb 2026; code ARKV @92b0800, docs/kv-policies.md): rows kept
// at original precision, kept quantized, or evicted.
// - Which rows stay: a heavy-hitter score per key, the mean of the attention
//   the window's queries pay it plus gamma times its variance across them
//   (unbiased), average-pooled over `kernel` neighbouring keys and averaged
//   over the query heads of each KV head; the shared rules keep sinks, window
//   and the best-scored rest.
// - At which precision: each layer's preference for original rows,
//   disp^(1/tau1) var^(1/tau2) kurt^(1/tau3) over the window's attention on
//   the keys before the window (disp: -sum p log(p + 1e-10); var: the variance
//   across window queries, summed over heads and keys; kurt: m4 / m2^2 across
//   them, m2 at least 1e-8, summed); a layer keeps its preference over the
//   cut's largest as the share of its chosen rows (best first) that stay f16,
//   the rest keep only their quantized page rows (-ctk/-ctv); sinks and
//   window stay f16.
// Departures, both deliberate: ARKV's quantized tier is FP8 with one scale per
// token shared across heads, re-quantized at every compression (its own
// all-quantized baseline collapses); here it is the cache's format, each row
// quantized once from its original values. ARKV keeps every kept row original
// after the prompt and splits precision only while decoding; here the split
// happens at the prompt's cut too, so the bytes fall at once. The tuned
// exponents and gamma of the authors' hypers.json are the defaults.
#include <algorithm>
#include <cmath>

#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

class Arkv final : public Scorer {
 public:
  Arkv(int32_t kernel, double gamma, double tau1, double tau2, double tau3)
      : kernel_(kernel), gamma_(gamma), tau1_(tau1), tau2_(tau2), tau3_(tau3) {}

  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    std::vector<float> probs;
    window_attention(r, probs);
    heavy_hitters(r, probs, scores);
  }

  double score_and_prefer(const ScoreRequest& r, std::vector<float>& scores) const override {
    std::vector<float> probs;
    window_attention(r, probs);
    heavy_hitters(r, probs, scores);
    return preference(r, probs);
  }

  bool mixed_precision() const override { return true; }
  // The preference needs the whole prompt's window: a policy that cuts only
  // while decoding would judge layers from one query, whose variance is 0.
  bool adaptive() const override { return true; }

 private:
  void heavy_hitters(const ScoreRequest& r, const std::vector<float>& probs, std::vector<float>& scores) const {
    const int64_t n = r.kv.n_keys;
    const int32_t rows = r.q_rows;
    std::vector<float> heavy(static_cast<size_t>(n));
    scores.assign(static_cast<size_t>(r.n_kv_heads) * n, 0.0f);
    for (int32_t g = 0; g < r.n_kv_heads; ++g) {
      std::fill(heavy.begin(), heavy.end(), 0.0f);
      for (int32_t h = g * r.group(); h < (g + 1) * r.group(); ++h)
        for (int64_t s = r.kv.first_key; s < n; ++s) {
          double sum = 0.0, sq = 0.0;
          for (int32_t i = 0; i < rows; ++i) {
            const double p = probs[(static_cast<size_t>(h) * rows + i) * n + s];
            sum += p;
            sq += p * p;
          }
          const double mean = sum / rows;
          const double var = rows > 1 ? std::max(0.0, (sq - rows * mean * mean) / (rows - 1)) : 0.0;
          heavy[static_cast<size_t>(s)] += static_cast<float>((mean + gamma_ * var) / r.group());
        }
      average_pool(heavy.data(), n, kernel_, scores.data() + static_cast<size_t>(g) * n);
    }
  }

  double preference(const ScoreRequest& r, const std::vector<float>& probs) const {
    const int32_t rows = r.q_rows;
    const int64_t end = r.kv.n_keys - rows;  // the keys before the window
    if (rows < 2 || end <= r.kv.first_key) return NAN;
    double disp = 0.0, var = 0.0, kurt = 0.0;
    for (int32_t h = 0; h < r.n_q_heads; ++h)
      for (int64_t s = r.kv.first_key; s < end; ++s) {
        const float* p = probs.data() + static_cast<size_t>(h) * rows * r.kv.n_keys + s;
        double mean = 0.0;
        for (int32_t i = 0; i < rows; ++i) {
          const double x = p[static_cast<int64_t>(i) * r.kv.n_keys];
          disp -= x * std::log(x + 1e-10);
          mean += x;
        }
        mean /= rows;
        double m2 = 0.0, m4 = 0.0;
        for (int32_t i = 0; i < rows; ++i) {
          const double d = p[static_cast<int64_t>(i) * r.kv.n_keys] - mean;
          m2 += d * d;
          m4 += d * d * d * d;
        }
        var += m2 / (rows - 1);
        m2 /= rows;
        m4 /= rows;
        kurt += m4 / std::pow(std::max(m2, 1e-8), 2.0);
      }
    disp = std::max(disp, 0.0);  // -log(1 + 1e-10) per key that holds all the mass
    return std::pow(disp, 1.0 / tau1_) * std::pow(var, 1.0 / tau2_) * std::pow(kurt, 1.0 / tau3_);
  }

  int32_t kernel_;
  double gamma_, tau1_, tau2_, tau3_;
};

}  // namespace

PolicyDef arkv_policy() {
  return {{"arkv",
           "ARKV: heavy hitters (mean + gamma x variance of the window's attention) kept, of them a per-layer share "
           "(from attention entropy, variance and kurtosis) at f16, the rest quantized (-ctk/-ctv)",
           {{"gamma", "263.81", "weight of the variance across window queries in a key's score"},
            {"tau1", "7.7744", "exponent 1/tau1 of the layer's attention entropy in its preference for f16 rows"},
            {"tau2", "5.4070", "exponent 1/tau2 of the variance"},
            {"tau3", "5.5277", "exponent 1/tau3 of the kurtosis"},
            {"kernel", "5", "average-pool width over neighbouring keys (odd; 1: no pooling)"}}},
          [](const attention::MethodParams& p) {
            return std::make_unique<Arkv>(pool_kernel(p), p.number("gamma", 0.0, 1e9), p.number("tau1", 1e-3, 1e6),
                                          p.number("tau2", 1e-3, 1e6), p.number("tau3", 1e-3, 1e6));
          }};
}

}  // namespace skim::kvpolicy
