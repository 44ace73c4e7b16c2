// HiP, hierarchically pruned attention (docs/methods.md#hip), per (q head,
// 64-row query block): the keys between the sink and the local window are
// cut into `chunk`-key chunks; spans of whole chunks start evenly covering
// them (at most k / chunk spans), then every round splits each surviving span
// in two, scores each child and keeps the top k / chunk children, until the
// spans are single chunks. A child's score is the max over every q_stride-th
// query of the block of q . (the child's mean key): the mean sees every key of
// the span, where HiP's first (or random) key sees one. Means of any span of
// chunks come from prefix sums of the chunk means, so a score costs about
// (64 / q_stride) * d multiply-adds and a block log2(N / k) rounds of
// 2k / chunk scores.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

// Chunks [begin, end).
struct Span {
  int64_t begin, end;
};

// max over queries t of q_t . v, with the queries transposed: queries[j * n + t]
// is component j of query t, n a multiple of 8. Eight queries per vector, and
// four partial sums over j so the FMAs do not wait on each other.
float max_dot(const float* queries, int64_t n, const float* v, int64_t d) {
  __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t t = 0; t < n; t += 8) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t j = 0; j < d; ++j)
      acc[j % 4] = _mm256_fmadd_ps(_mm256_loadu_ps(queries + j * n + t), _mm256_set1_ps(v[j]), acc[j % 4]);
    best = _mm256_max_ps(best, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  return *std::max_element(lanes, lanes + 8);
}

class HipPlanner : public Planner {
 public:
  HipPlanner(int64_t k, int64_t chunk, int64_t sink, int64_t local, int64_t q_stride)
      : keep_(k / chunk), chunk_(chunk), sink_(sink), local_(local), q_stride_(q_stride) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    const int64_t d = r.head_dim, g = r.group();
    keys_.load(r);
    pool_keys(keys_, chunk_, chunk_means_);
    const int64_t n_kc = (r.n_keys() + chunk_ - 1) / chunk_;
    // prefix_[kv][c] = sum of the means of chunks [0, c).
    prefix_.assign(static_cast<size_t>(r.n_kv_heads * (n_kc + 1) * d), 0.0f);
    for (int32_t kv = 0; kv < r.n_kv_heads; ++kv) {
      const float* means = chunk_means_.data() + static_cast<size_t>(kv) * n_kc * d;
      float* pre = prefix_.data() + static_cast<size_t>(kv) * (n_kc + 1) * d;
      for (int64_t c = 0; c < n_kc; ++c)
        for (int64_t i = 0; i < d; ++i) pre[(c + 1) * d + i] = pre[c * d + i] + means[c * d + i];
    }
    KeySelection sel(r);
    const double rounds = std::max(1.0, std::log2(double(n_kc) / double(keep_)));
    const double work = double(r.n_q_heads) * sel.n_blocks() * rounds * 2.0 * keep_ * (kTileRows / q_stride_ + 1) * d;
#pragma omp parallel if (worth_threads(work))
    {
      std::vector<Span> spans, children;
      std::vector<float> queries, sum(static_cast<size_t>(d)), scores;
      std::vector<int32_t> picked;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        const int32_t kv = h / g;
        const float* pre = prefix_.data() + static_cast<size_t>(kv) * (n_kc + 1) * d;
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          const int64_t window_pos = sel.add_sink_and_window(h, qb, sink_, local_);
          // Candidate chunks: those holding a key between the sink and the window.
          const int64_t lo = r.first_slot_at(kv, sink_), hi = r.first_slot_at(kv, window_pos);
          if (lo >= hi) continue;
          const int64_t c0 = lo / chunk_, c1 = (hi + chunk_ - 1) / chunk_;
          int64_t width = 1;  // chunks per span, a power of two
          while ((c1 - c0 + width - 1) / width > keep_) width *= 2;
          spans.clear();
          for (int64_t b = c0; b < c1; b += width) spans.push_back({b, std::min(c1, b + width)});
          // The scoring queries, transposed for max_dot, padded to a multiple
          // of 8 by repeating the last (the max does not change).
          const int64_t row0 = qb * kTileRows, row1 = std::min(r.n_rows, row0 + kTileRows);
          const int64_t n_q = (row1 - row0 + q_stride_ - 1) / q_stride_, n_pad = (n_q + 7) / 8 * 8;
          queries.resize(static_cast<size_t>(d * n_pad));
          for (int64_t t = 0; t < n_pad; ++t)
            for (int64_t j = 0; j < d; ++j) queries[j * n_pad + t] = r.q_row(h, row0 + std::min(t, n_q - 1) * q_stride_)[j];
          while (width > 1) {
            width /= 2;
            children.clear();
            for (const Span& s : spans) {
              children.push_back({s.begin, std::min(s.end, s.begin + width)});
              if (s.begin + width < s.end) children.push_back({s.begin + width, s.end});
            }
            scores.resize(children.size());
            for (size_t i = 0; i < children.size(); ++i) {
              // q . (sum of the span's chunk means), divided by its chunk count after the max.
              const Span& s = children[i];
              for (int64_t j = 0; j < d; ++j) sum[j] = pre[s.end * d + j] - pre[s.begin * d + j];
              scores[i] = max_dot(queries.data(), n_pad, sum.data(), d) / static_cast<float>(s.end - s.begin);
            }
            top_k(scores.data(), static_cast<int64_t>(children.size()), keep_, picked);
            spans.clear();
            for (int32_t i : picked) spans.push_back(children[static_cast<size_t>(i)]);
          }
          for (const Span& s : spans) sel.add_range(h, qb, s.begin * chunk_, s.end * chunk_);
        }
      }
    }
    return sel.build();
  }

 private:
  int64_t keep_, chunk_, sink_, local_, q_stride_;
  KeysF32 keys_;
  std::vector<float> chunk_means_, prefix_;
};

}  // namespace

MethodDef hip_method() {
  AttentionMethodInfo info{"hip",
                           "HiP: per query block, a top-k tree search over key spans (halved each round, scored "
                           "by max over queries of q . mean key) + sink + local window",
                           {{"k", "512", "keys kept per query block by the tree search (k / chunk chunks)"},
                            {"chunk", "16", "final span width in keys"},
                            {"sink", "64", "first keys every query attends to"},
                            {"local", "256", "local window in keys"},
                            {"q_stride", "4", "score spans with every q_stride-th query of the 64-row block"},
                            crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const int64_t k = p.integer("k", 1, int64_t{1} << 30), chunk = p.integer("chunk", 1, 4096);
            if (k < chunk) throw std::invalid_argument(fmt::format("hip: k={} is below chunk={}", k, chunk));
            return std::make_unique<HipPlanner>(k, chunk, p.integer("sink", 0, int64_t{1} << 30),
                                                p.integer("local", 1, int64_t{1} << 30),
                                                p.integer("q_stride", 1, kTileRows));
          }};
}

}  // namespace skim::attention
