// PyramidKV (Cai et al., arXiv 2406.02069; kvpress PyramidKVPress): SnapKV's
// scores with per-layer budgets that fall linearly from the first layer to the
// last, since lower layers spread their attention wide and upper layers focus
// on few keys. With m = target - reserved rows chosen by score on average, the
// first layer chooses 2m - m/beta and the last m/beta (mean m); kvpress's
// clamp when the first layer would need more rows than it holds.
#include "kvpolicy/policy.h"

#include <cmath>

namespace skim::kvpolicy {
namespace {

class Pyramid final : public Scorer {
 public:
  Pyramid(int32_t kernel, double beta) : snapkv_(make_snapkv_scorer(kernel)), beta_(beta) {}
  void score(const ScoreRequest& r, std::vector<float>& scores) const override { snapkv_->score(r, scores); }
  int64_t layer_target(const ScoreRequest& r, const std::vector<float>&, int64_t target, int32_t sink,
                       int32_t window) const override {
    const int64_t reserved = sink + window;
    if (r.n_layers < 2 || target <= reserved) return target;
    const double mean = static_cast<double>(target - reserved);
    const double choosable = static_cast<double>(r.kv.n_keys - r.kv.first_key - reserved);
    double low = mean / beta_, high = 2.0 * mean - low;
    if (high > choosable) {
      high = choosable;
      low = 2.0 * mean - high;
    }
    const double step = (high - low) / (r.n_layers - 1);
    return reserved + std::llround(high - r.layer * step);
  }

 private:
  std::unique_ptr<Scorer> snapkv_;
  double beta_;
};

}  // namespace

PolicyDef pyramid_policy() {
  return {{"pyramid",
           "PyramidKV: SnapKV's scores, per-layer budgets falling linearly from the first layer to the last",
           {{"beta", "20", "the first layer chooses 2m - m/beta rows by score and the last m/beta (m: the mean)"},
            {"kernel", "5", "average-pool width over neighbouring keys (odd; 1: no pooling)"}}},
          [](const attention::MethodParams& p) {
            return std::make_unique<Pyramid>(pool_kernel(p), p.number("beta", 1.0, 1e6));
          }};
}

}  // namespace skim::kvpolicy
