#include "attention/selection.h"

namespace skim::attention {

KeySelection::KeySelection(const PlanRequest& r)
    : kv_(r.kv),
      n_q_heads_(r.n_q_heads),
      n_kv_heads_(r.n_kv_heads),
      n_rows_(r.n_rows),
      q_pos0_(r.q_pos0),
      q_slot0_(r.q_slot0()),
      n_blocks_((r.n_rows + kBlock - 1) / kBlock),
      group_union_(r.group_union),
      keys_(static_cast<size_t>(r.n_q_heads * n_blocks_)) {}

void KeySelection::add_range(int32_t q_head, int64_t qb, int64_t begin, int64_t end) {
  begin = std::max<int64_t>(begin, 0);
  end = std::min(end, block_last(qb) + 1);
  if (begin < end) at(q_head, qb).ranges.push_back({static_cast<int32_t>(begin), static_cast<int32_t>(end)});
}

void KeySelection::add_positions(int32_t q_head, int64_t qb, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const int32_t kv_head = q_head / (n_q_heads_ / n_kv_heads_);
  add_range(q_head, qb, kv_.first_slot_at(kv_head, begin), kv_.first_slot_at(kv_head, end));
}

void KeySelection::add_column(int32_t q_head, int64_t qb, int64_t key) {
  if (key >= 0 && key <= block_last(qb)) at(q_head, qb).cols.push_back(static_cast<int32_t>(key));
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
  PlanBuilder b({plan_heads, per_plan_head, tile_rows, n_rows_, q_pos0_, q_slot0_});
  for (int32_t h = 0; h < plan_heads; ++h) {
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t first_row = t * tile_rows, last_row = std::min(n_rows_, first_row + tile_rows) - 1;
      const int64_t limit = q_slot0_ + last_row + 1;  // causal: no key after the tile's last row
      for (int64_t qb = first_row / kBlock; qb <= last_row / kBlock; ++qb) {
        for (int32_t j = 0; j < per_plan_head; ++j) {
          const Keys& k = keys_[static_cast<size_t>((h * per_plan_head + j) * n_blocks_ + qb)];
          for (const KeyRange& r : k.ranges)
            if (r.begin < limit) b.add_range(r.begin, std::min<int64_t>(r.end, limit));
          for (int32_t c : k.cols)
            if (c < limit) b.add_column(c);
        }
      }
      b.add_range(q_slot0_ + first_row, limit);
      b.end_tile();
    }
  }
  return b.finish();
}

}  // namespace skim::attention
