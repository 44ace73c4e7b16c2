// Token Sparse Attention (docs/methods.md#token-sparse-attention), per layer
// and chunk of N keys, with W = `window`:
//  1. E1 with the chunk's last W queries: importance a[h][j] = their summed
//     softmax weight on key j, for the candidates j < N - W (the last W keys
//     are always kept).
//  2. a smoothed by a 1-D average pool of `kernel` keys (zero padding).
//  3. One keep count for the layer: the head-averaged importance, normalised
//     and sorted ascending; the keys whose cumulative mass stays below
//     `coverage` are droppable: keep = max(min_tokens, N - W - drop).
//  4. Each q head keeps its own top-keep candidates (runs as ranges), plus for
//     every query block the W keys before it (for the last rows: the last W
//     keys) and its diagonal.
// Every query row is kept: the paper gives the rows of dropped tokens zero
// output in the layer; docs/methods.md says why skim does not.
#include <algorithm>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

class TokenSparsePlanner : public Planner {
 public:
  TokenSparsePlanner(double coverage, int64_t min_tokens, int64_t window, int64_t kernel)
      : coverage_(coverage), min_tokens_(min_tokens), window_(window), kernel_(kernel) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    const int64_t n = r.n_keys(), n_cand = n - window_;
    if (r.n_rows == 0 || n <= min_tokens_ + window_) return std::nullopt;
    keys_.load(r);
    estimate_last_q(r, keys_, window_, est_);
    smoothed_.resize(static_cast<size_t>(r.n_q_heads * n_cand));
#pragma omp parallel for schedule(static) if (worth_threads(double(r.n_q_heads) * n_cand * 4))
    for (int32_t h = 0; h < r.n_q_heads; ++h) smooth(est_.vert(h), n_cand, smoothed_.data() + h * n_cand);
    const int64_t keep = std::max(min_tokens_, n_cand - droppable(r.n_q_heads, n_cand));

    KeySelection sel(r);
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * n_cand * 16))
    {
      std::vector<int32_t> kept;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        top_k(smoothed_.data() + h * n_cand, n_cand, keep, kept);
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          sel.add_keys(h, qb, kept);
          sel.add_positions(h, qb, sel.block_first_pos(qb) - window_, sel.block_last_pos(qb) + 1);
        }
      }
    }
    return sel.build();
  }

 private:
  // out[j] = sum of a[j - kernel/2 .. j + kernel/2] (inside [0, n)) / kernel.
  void smooth(const float* a, int64_t n, float* out) const {
    const int64_t half = kernel_ / 2;
    double sum = 0;
    for (int64_t j = 0; j < std::min(n, half); ++j) sum += a[j];
    for (int64_t j = 0; j < n; ++j) {
      if (j + half < n) sum += a[j + half];
      if (j - half - 1 >= 0) sum -= a[j - half - 1];
      out[j] = static_cast<float>(std::max(sum, 0.0) / static_cast<double>(kernel_));
    }
  }

  // The candidates whose ascending cumulative share of the head-averaged
  // importance stays below coverage.
  int64_t droppable(int32_t n_heads, int64_t n_cand) {
    mean_.assign(static_cast<size_t>(n_cand), 0.0f);
    for (int32_t h = 0; h < n_heads; ++h)
      for (int64_t j = 0; j < n_cand; ++j) mean_[j] += smoothed_[h * n_cand + j];
    double total = 0;
    for (float x : mean_) total += x;
    std::sort(mean_.begin(), mean_.end());
    const double limit = coverage_ * total;
    double cumulative = 0;
    int64_t drop = 0;
    while (drop < n_cand && (cumulative += mean_[drop]) < limit) ++drop;
    return drop;
  }

  double coverage_;
  int64_t min_tokens_, window_, kernel_;
  KeysF32 keys_;
  LastQEstimate est_;
  std::vector<float> smoothed_, mean_;
};

}  // namespace

MethodDef token_sparse_method() {
  AttentionMethodInfo info{
      "token_sparse",
      "Token Sparse Attention: per head the top keys by the last W queries' smoothed weight; one count per layer "
      "drops the keys holding `coverage` of the mass",
      {{"coverage", "0.08", "share of the head-averaged mass the dropped keys may hold, in [0, 1)"},
       {"min_tokens", "1024", "keys kept per head at least (besides the window); the chunk runs dense below "
                              "min_tokens + window keys"},
       {"window", "128", "W: queries in the estimate, and keys before each query block always kept"},
       {"kernel", "7", "average-pool width smoothing the importance (odd)"},
       crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const double coverage = p.number("coverage", 0.0, 1.0);
            if (coverage >= 1.0) throw std::invalid_argument("token_sparse: coverage must be below 1");
            const int64_t kernel = p.integer("kernel", 1, 1023);
            if (kernel % 2 == 0) throw std::invalid_argument(fmt::format("token_sparse: kernel={} is not odd", kernel));
            return std::make_unique<TokenSparsePlanner>(coverage, p.integer("min_tokens", 0, int64_t{1} << 30),
                                                        p.integer("window", 1, int64_t{1} << 20), kernel);
          }};
}

}  // namespace skim::attention
