// TCA-Attention (docs/methods.md#tca-attention), from its abstract: a
// context-adaptive budget per head and a redundancy check, as key columns plus
// sink and local window. Per q head and chunk:
//  1. E1 with the chunk's last 64 queries: the vertical mass of every key.
//  2. Budget: with the sink and the last row's local window counted as
//     covered, the fewest other keys (by descending mass) whose mass reaches
//     `target` of the total, clamped to [min_budget, max_budget].
//  3. The budget is filled by descending mass, skipping redundant keys: a
//     key whose cosine with an already kept neighbour (the key just before or
//     after it) exceeds `redundancy`, so near-duplicates do not both spend
//     budget. Skips stop once their mass would exceed 1 - target of the total.
//  4. Every query block: the kept keys (runs as ranges), the sink, the
//     `local` keys before it and its diagonal.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

constexpr int64_t kLastQueries = 64;

struct TcaParams {
  double target = 0, redundancy = 1;
  int64_t min_budget = 0, max_budget = 0, sink = 0, local = 0;
};

double cosine(const float* a, const float* b, int64_t d) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t k = 0; k < d; ++k) {
    ab += static_cast<double>(a[k]) * b[k];
    aa += static_cast<double>(a[k]) * a[k];
    bb += static_cast<double>(b[k]) * b[k];
  }
  return aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 0.0;
}

class TcaPlanner : public Planner {
 public:
  explicit TcaPlanner(const TcaParams& p) : p_(p) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    if (r.n_rows == 0) return std::nullopt;
    keys_.load(r);
    estimate_last_q(r, keys_, kLastQueries, est_);
    KeySelection sel(r);
    const int64_t n = r.n_keys();
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * n * 16))
    {
      std::vector<int32_t> order, kept;
      std::vector<char> is_kept;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        select_keys(r, h, order, is_kept, kept);
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          sel.add_keys(h, qb, kept);
          sel.add_positions(h, qb, 0, p_.sink);
          sel.add_positions(h, qb, sel.block_first_pos(qb) - p_.local, sel.block_last_pos(qb) + 1);
        }
      }
    }
    return sel.build();
  }

 private:
  // Head h's kept keys, ascending, in `kept`.
  void select_keys(const PlanRequest& r, int32_t h, std::vector<int32_t>& order, std::vector<char>& is_kept,
                   std::vector<int32_t>& kept) const {
    const int64_t n = r.n_keys(), d = r.head_dim;
    const int32_t kv_head = h / r.group();
    const float* mass = est_.vert(h);
    const float* keys = keys_.head(kv_head);
    // Candidates: after the sink, before the last row's local window.
    const int64_t first = r.first_slot_at(kv_head, p_.sink);
    const int64_t end = r.first_slot_at(kv_head, r.q_pos0 + r.n_rows - 1 - p_.local);
    kept.clear();
    if (first >= end) return;
    double total = 0;
    for (int64_t j = 0; j < n; ++j) total += mass[j];
    double covered = total;  // by the sink and the window
    for (int64_t j = first; j < end; ++j) covered -= mass[j];
    order.resize(static_cast<size_t>(end - first));
    std::iota(order.begin(), order.end(), static_cast<int32_t>(first));
    std::sort(order.begin(), order.end(),
              [mass](int32_t a, int32_t b) { return mass[a] > mass[b] || (mass[a] == mass[b] && a < b); });
    // Budget: the fewest candidates reaching the target, clamped.
    int64_t budget = 0;
    const double need = p_.target * total;
    for (; budget < static_cast<int64_t>(order.size()) && (p_.target >= 1.0 || covered < need); ++budget)
      covered += mass[order[budget]];
    budget = std::clamp(budget, p_.min_budget, p_.max_budget > 0 ? p_.max_budget : n);
    // Fill it by mass; redundant keys are skipped while their mass fits in the
    // target's slack, so skips never cost more than 1 - target of the mass.
    double skippable = (1.0 - p_.target) * total;
    is_kept.assign(static_cast<size_t>(n), 0);
    for (int32_t j : order) {
      if (static_cast<int64_t>(kept.size()) >= budget) break;
      if (mass[j] < skippable && redundant(keys, d, j, first, end, is_kept)) {
        skippable -= mass[j];
        continue;
      }
      is_kept[static_cast<size_t>(j)] = 1;
      kept.push_back(j);
    }
    std::sort(kept.begin(), kept.end());
  }

  bool redundant(const float* keys, int64_t d, int64_t j, int64_t first, int64_t end,
                 const std::vector<char>& is_kept) const {
    if (p_.redundancy >= 1.0) return false;
    for (int64_t nb : {j - 1, j + 1})
      if (nb >= first && nb < end && is_kept[static_cast<size_t>(nb)] &&
          cosine(keys + j * d, keys + nb * d, d) > p_.redundancy)
        return true;
    return false;
  }

  TcaParams p_;
  KeysF32 keys_;
  LastQEstimate est_;
};

}  // namespace

MethodDef tca_method() {
  AttentionMethodInfo info{
      "tca",
      "TCA-Attention (from the abstract): per head the fewest key columns covering `target` of the last queries' "
      "mass, near-duplicates of kept neighbours skipped, + sink + local window",
      {{"target", "0.98", "share of the estimated mass the kept keys (with sink and window) must reach, (0, 1]"},
       {"min_budget", "256", "key columns per head at least"},
       {"max_budget", "0", "key columns per head at most (0: no limit)"},
       {"redundancy", "1", "skip a key whose cosine with a kept neighbour exceeds this (1: off)"},
       {"sink", "64", "first keys every query attends to"},
       {"local", "256", "keys before each query block it attends to"},
       crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            TcaParams t;
            t.target = p.number("target", 0.0, 1.0);
            if (t.target <= 0.0) throw std::invalid_argument("tca: target must be > 0");
            t.min_budget = p.integer("min_budget", 0, int64_t{1} << 30);
            t.max_budget = p.integer("max_budget", 0, int64_t{1} << 30);
            if (t.max_budget > 0 && t.max_budget < t.min_budget)
              throw std::invalid_argument(
                  fmt::format("tca: max_budget={} is below min_budget={}", t.max_budget, t.min_budget));
            t.redundancy = p.number("redundancy", -1.0, 1.0);
            t.sink = p.integer("sink", 0, int64_t{1} << 30);
            t.local = p.integer("local", 0, int64_t{1} << 30);
            return std::make_unique<TcaPlanner>(t);
          }};
}

}  // namespace skim::attention
