#include "attention/selection.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "attention/estimate.h"

namespace skim::attention {

KeySelection::KeySelection(const PlanRequest& r, bool ordered)
    : kv_(r.kv),
      n_q_heads_(r.n_q_heads),
      n_kv_heads_(r.n_kv_heads),
      n_rows_(r.n_rows),
      q_pos0_(r.q_pos0),
      q_slot0_(r.q_slot0()),
      n_blocks_((r.n_rows + kBlock - 1) / kBlock),
      group_union_(r.group_union),
      scored_(ordered),
      keys_(static_cast<size_t>(r.n_q_heads * n_blocks_)) {}

void KeySelection::add_range(int32_t q_head, int64_t qb, int64_t begin, int64_t end) {
  begin = std::max<int64_t>(begin, 0);
  end = std::min(end, block_last(qb) + 1);
  if (begin >= end) return;
  Keys& k = at(q_head, qb);
  k.ranges.push_back({static_cast<int32_t>(begin), static_cast<int32_t>(end)});
  k.range_scores.push_back(kForcedScore);
}

void KeySelection::add_scored_range(int32_t q_head, int64_t qb, int64_t begin, int64_t end, float score) {
  if (!scored_) throw std::logic_error("add_scored_range: the selection is not ordered");
  const size_t before = at(q_head, qb).ranges.size();
  add_range(q_head, qb, begin, end);
  if (at(q_head, qb).ranges.size() > before) at(q_head, qb).range_scores.back() = score;
}

void KeySelection::add_positions(int32_t q_head, int64_t qb, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const int32_t kv_head = q_head / (n_q_heads_ / n_kv_heads_);
  add_range(q_head, qb, kv_.first_slot_at(kv_head, begin), kv_.first_slot_at(kv_head, end));
}

void KeySelection::add_column(int32_t q_head, int64_t qb, int64_t key) {
  if (key >= 0 && key <= block_last(qb)) at(q_head, qb).cols.push_back(static_cast<int32_t>(key));
}

int64_t KeySelection::add_sink_and_window(int32_t q_head, int64_t qb, int64_t sink, int64_t local) {
  const int64_t window_pos = block_first_pos(qb) - local + 1;
  add_positions(q_head, qb, 0, sink);
  add_positions(q_head, qb, window_pos, block_last_pos(qb) + 1);
  return window_pos;
}

void KeySelection::add_columns(int32_t q_head, int64_t qb, int64_t begin, int64_t end) {
  for (int64_t key = begin; key < end; ++key) add_column(q_head, qb, key);
}

void KeySelection::add_keys(int32_t q_head, int64_t qb, std::span<const int32_t> sorted_keys) {
  const int64_t last = block_last(qb);
  for (size_t i = 0; i < sorted_keys.size() && sorted_keys[i] <= last;) {
    size_t end = i + 1;
    while (end < sorted_keys.size() && sorted_keys[end] == sorted_keys[end - 1] + 1) ++end;
    if (static_cast<int64_t>(end - i) >= kMinRangeRun) {
      add_range(q_head, qb, sorted_keys[i], sorted_keys[end - 1] + 1);
    } else {
      for (size_t k = i; k < end; ++k) add_column(q_head, qb, sorted_keys[k]);
    }
    i = end;
  }
}

Plan KeySelection::build() const {
  const int32_t g = n_q_heads_ / n_kv_heads_;
  const int32_t plan_heads = group_union_ ? n_kv_heads_ : n_q_heads_;
  const int32_t per_plan_head = group_union_ ? g : 1;
  const int32_t tile_rows = group_union_ ? kernels::default_tile_rows(g) : static_cast<int32_t>(kBlock);
  const int64_t n_tiles = (n_rows_ + tile_rows - 1) / tile_rows;
  PlanBuilder b({plan_heads, per_plan_head, tile_rows, n_rows_, q_pos0_, q_slot0_}, scored_);
  for (int32_t h = 0; h < plan_heads; ++h) {
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t first_row = t * tile_rows, last_row = std::min(n_rows_, first_row + tile_rows) - 1;
      const int64_t limit = q_slot0_ + last_row + 1;  // causal: no key after the tile's last row
      for (int64_t qb = first_row / kBlock; qb <= last_row / kBlock; ++qb) {
        for (int32_t j = 0; j < per_plan_head; ++j) {
          const Keys& k = keys_[static_cast<size_t>((h * per_plan_head + j) * n_blocks_ + qb)];
          for (size_t i = 0; i < k.ranges.size(); ++i)
            if (k.ranges[i].begin < limit)
              b.add_range(k.ranges[i].begin, std::min<int64_t>(k.ranges[i].end, limit), k.range_scores[i]);
          for (int32_t c : k.cols)
            if (c < limit) b.add_column(c, kForcedScore);
        }
      }
      b.add_range(q_slot0_ + first_row, limit, kForcedScore);
      b.end_tile();
    }
  }
  return b.finish();
}

void select_to_target(const BlockScores& mass, double target, KeySelection& sel, const BlockScores* rank) {
  if (mass.block != KeySelection::kBlock || KeySelection::kBlock % mass.kblock != 0)
    throw std::logic_error("select_to_target: mass needs 64-row query blocks and key blocks dividing 64");
  constexpr int64_t B = KeySelection::kBlock;
  const int64_t kb = mass.kblock, sink = B / kb;  // key blocks in the forced sink
#pragma omp parallel if (worth_threads(double(mass.n_heads) * mass.n_qb * mass.n_kb * 16))
  {
    std::vector<int32_t> order;
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int32_t h = 0; h < mass.n_heads; ++h) {
      for (int64_t qb = 0; qb < mass.n_qb; ++qb) {
        const float* m = mass.row(h, qb);
        const float* by = rank ? rank->row(h, qb) : m;
        // Forced: the sink (keys [0, 64)) and the keys from the block's first row on.
        const int64_t diag = sel.block_first(qb) / kb, vis = mass.visible(qb);
        sel.add_range(h, qb, 0, B);
        sel.add_range(h, qb, diag * kb, sel.block_last(qb) + 1);
        double kept = 0;
        for (int64_t c = 0; c < vis; ++c)
          if (c < sink || c >= diag) kept += m[c];
        order.resize(static_cast<size_t>(std::max<int64_t>(diag - sink, 0)));
        std::iota(order.begin(), order.end(), static_cast<int32_t>(sink));  // candidates: blocks sink .. diag-1
        // Best first, taken from a heap: the target is usually reached long
        // before every candidate is ordered.
        const auto worse = [by](int32_t a, int32_t b) { return by[a] < by[b] || (by[a] == by[b] && a > b); };
        std::make_heap(order.begin(), order.end(), worse);
        for (auto end = order.end(); end != order.begin(); --end) {
          if (target < 1.0 && kept >= target) break;
          std::pop_heap(order.begin(), end, worse);
          const int32_t c = *(end - 1);
          kept += m[c];
          if (sel.ordered()) {
            sel.add_scored_range(h, qb, c * kb, (c + 1) * kb, by[c]);
          } else if (kb < B) {
            sel.add_columns(h, qb, c * kb, (c + 1) * kb);
          } else {
            sel.add_key_block(h, qb, c, kb);
          }
        }
      }
    }
  }
}

}  // namespace skim::attention
