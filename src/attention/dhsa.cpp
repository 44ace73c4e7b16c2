// DHSA, dynamic hierarchical sparse attention (docs/methods.md#dhsa), from its
// abstract. Per KV head the keys are cut into variable-length chunks where
// the content changes: each chunk of [min_chunk, max_chunk] keys ends before
// the key least similar (cosine) to its predecessor in that range. A chunk is
// represented by its mean key times sqrt(its length) (the paper's
// length-normalised aggregation); a 64-row query block by its mean query.
// Every key inherits its chunk's score q . rep (the paper's upsampling to
// token level), so each (q head, query block) keeps its best chunks until
// `budget` keys (a fraction of the block's visible keys when <= 1), plus the
// sink and a local window.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

// a . b over n floats (vectorised: the sum may be reordered).
float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

class DhsaPlanner : public Planner {
 public:
  DhsaPlanner(double budget, int64_t min_chunk, int64_t max_chunk, int64_t sink, int64_t local)
      : budget_(budget), min_chunk_(min_chunk), max_chunk_(max_chunk), sink_(sink), local_(local) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    const int64_t d = r.head_dim, g = r.group();
    keys_.load(r);
    bounds_.resize(static_cast<size_t>(r.n_kv_heads));
    reps_.resize(static_cast<size_t>(r.n_kv_heads));
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(double(r.n_kv_heads) * r.n_keys() * d * 3))
    for (int32_t kv = 0; kv < r.n_kv_heads; ++kv) segment(keys_.head(kv), r.n_keys(), d, bounds_[kv], reps_[kv]);
    pool_queries(r, kTileRows, qmeans_);

    KeySelection sel(r);
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * sel.n_blocks() * r.n_keys() / min_chunk_ * d))
    {
      std::vector<float> scores;
      std::vector<int32_t> order;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        const int32_t kv = h / g;
        const std::vector<int64_t>& bounds = bounds_[kv];  // chunk i is keys [bounds[i], bounds[i + 1])
        const float* reps = reps_[kv].data();
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          const int64_t window_pos = sel.add_sink_and_window(h, qb, sink_, local_);
          // Candidates: the chunks holding a key between the sink and the window.
          const int64_t lo = r.first_slot_at(kv, sink_), hi = r.first_slot_at(kv, window_pos);
          if (lo >= hi) continue;
          const int64_t first = std::upper_bound(bounds.begin(), bounds.end(), lo) - bounds.begin() - 1;
          const int64_t last = std::lower_bound(bounds.begin(), bounds.end(), hi) - bounds.begin();  // exclusive
          const float* q = qmeans_.data() + (static_cast<size_t>(h) * sel.n_blocks() + qb) * d;
          scores.resize(static_cast<size_t>(last - first));
          order.resize(scores.size());
          for (int64_t i = first; i < last; ++i) {
            scores[i - first] = dot(q, reps + i * d, d);
            order[i - first] = static_cast<int32_t>(i);
          }
          std::sort(order.begin(), order.end(),
                    [&](int32_t a, int32_t b) { return scores[a - first] > scores[b - first]; });
          const double budget = budget_ <= 1.0 ? budget_ * double(sel.block_last(qb) + 1) : budget_;
          int64_t kept = 0;
          for (int32_t i : order) {
            if (double(kept) >= budget) break;
            sel.add_range(h, qb, bounds[i], bounds[i + 1]);
            kept += bounds[i + 1] - bounds[i];
          }
        }
      }
    }
    return sel.build();
  }

 private:
  // Chunk boundaries of keys[0, n) (bounds: 0, ..., n) and each chunk's mean
  // key times sqrt(length) (reps: [chunk][d]).
  void segment(const float* keys, int64_t n, int64_t d, std::vector<int64_t>& bounds, std::vector<float>& reps) const {
    // similarity[j]: cosine of keys j - 1 and j.
    std::vector<float> similarity(static_cast<size_t>(n), 1.0f);
    for (int64_t j = 1; j < n; ++j) {
      const float* a = keys + (j - 1) * d;
      const float* b = keys + j * d;
      const float norms = std::sqrt(dot(a, a, d) * dot(b, b, d));
      similarity[j] = norms > 0 ? dot(a, b, d) / norms : 1.0f;
    }
    bounds.assign(1, 0);
    for (int64_t begin = 0; begin < n;) {
      int64_t end = n;
      if (n - begin > max_chunk_) {
        end = begin + min_chunk_;
        for (int64_t j = end + 1; j <= begin + max_chunk_; ++j)
          if (similarity[j] < similarity[end]) end = j;
      }
      bounds.push_back(end);
      begin = end;
    }
    const int64_t n_chunks = static_cast<int64_t>(bounds.size()) - 1;
    reps.assign(static_cast<size_t>(n_chunks * d), 0.0f);
    for (int64_t i = 0; i < n_chunks; ++i) {
      float* rep = reps.data() + i * d;
      for (int64_t j = bounds[i]; j < bounds[i + 1]; ++j)
        for (int64_t c = 0; c < d; ++c) rep[c] += keys[j * d + c];
      const float scale = 1.0f / std::sqrt(static_cast<float>(bounds[i + 1] - bounds[i]));  // mean * sqrt(len)
      for (int64_t c = 0; c < d; ++c) rep[c] *= scale;
    }
  }

  double budget_;
  int64_t min_chunk_, max_chunk_, sink_, local_;
  KeysF32 keys_;
  std::vector<std::vector<int64_t>> bounds_;
  std::vector<std::vector<float>> reps_;
  std::vector<float> qmeans_;
};

}  // namespace

MethodDef dhsa_method() {
  AttentionMethodInfo info{"dhsa",
                           "DHSA: content-cut key chunks (lowest adjacent-key cosine), length-normalised mean "
                           "keys, top chunks per query block up to a key budget + sink + local window",
                           {{"budget", "768", "keys kept per query block besides sink and window: > 1 a count, "
                                               "<= 1 a fraction of the block's visible keys"},
                            {"min_chunk", "32", "shortest key chunk"},
                            {"max_chunk", "64", "longest key chunk"},
                            {"sink", "64", "first keys every query attends to"},
                            {"local", "256", "local window in keys"},
                            crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const double budget = p.number("budget", 0.0, double(int64_t{1} << 30));
            if (budget <= 0.0) throw std::invalid_argument("dhsa: budget must be > 0");
            const int64_t min_chunk = p.integer("min_chunk", 1, 1 << 16), max_chunk = p.integer("max_chunk", 1, 1 << 16);
            if (max_chunk < min_chunk)
              throw std::invalid_argument(fmt::format("dhsa: max_chunk={} is below min_chunk={}", max_chunk, min_chunk));
            return std::make_unique<DhsaPlanner>(budget, min_chunk, max_chunk, p.integer("sink", 0, int64_t{1} << 30),
                                                 p.integer("local", 1, int64_t{1} << 30));
          }};
}

}  // namespace skim::attention
