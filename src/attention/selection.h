// Key sets per (q head, query block of kBlock rows) that a planner fills in
// any order; build() turns them into a Plan: one plan head per q head, or
// (group_union) one per KV head over the union of its q heads' sets, so each
// K/V tile is read once. The plan's query tiles are the kernel's dense tiles
// (kernels::default_tile_rows), each taking the key sets of the block(s) its
// rows lie in, so a full-budget selection runs exactly like dense attention.
// Keys after a tile's last query position are clipped away, so planners may
// add whole blocks and bands without causal bookkeeping, and every tile keeps
// its own diagonal keys (no row is left without keys). Keys are slots
// (add_range, add_column) or, for rules about positions, stored positions
// (add_positions), which select the slots holding them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "attention/planner.h"

namespace skim::attention {

class KeySelection {
 public:
  static constexpr int64_t kBlock = kTileRows;

  explicit KeySelection(const PlanRequest& request);

  int64_t n_blocks() const { return n_blocks_; }
  // Slots of the keys of a query block's first and last rows.
  int64_t block_first(int64_t qb) const { return q_slot0_ + qb * kBlock; }
  int64_t block_last(int64_t qb) const { return q_slot0_ + std::min(n_rows_, (qb + 1) * kBlock) - 1; }
  // Positions of a query block's first and last rows.
  int64_t block_first_pos(int64_t qb) const { return q_pos0_ + qb * kBlock; }
  int64_t block_last_pos(int64_t qb) const { return q_pos0_ + std::min(n_rows_, (qb + 1) * kBlock) - 1; }

  void add_range(int32_t q_head, int64_t qb, int64_t begin, int64_t end);
  // The keys stored at positions [begin, end).
  void add_positions(int32_t q_head, int64_t qb, int64_t begin, int64_t end);
  // Keys [key_block * size, (key_block + 1) * size).
  void add_key_block(int32_t q_head, int64_t qb, int64_t key_block, int64_t size) {
    add_range(q_head, qb, key_block * size, (key_block + 1) * size);
  }
  void add_column(int32_t q_head, int64_t qb, int64_t key);
  // Token-level key sets (sorted ascending, unique): runs of at least
  // kMinRangeRun consecutive slots become ranges (streamed as contiguous
  // tiles), the rest columns (gathered); keys after the block are dropped.
  static constexpr int64_t kMinRangeRun = 16;
  void add_keys(int32_t q_head, int64_t qb, std::span<const int32_t> sorted_keys);

  Plan build() const;

 private:
  struct Keys {
    std::vector<KeyRange> ranges;
    std::vector<int32_t> cols;
  };
  Keys& at(int32_t q_head, int64_t qb) { return keys_[static_cast<size_t>(q_head * n_blocks_ + qb)]; }

  const kernels::KvView& kv_;
  int32_t n_q_heads_, n_kv_heads_;
  int64_t n_rows_, q_pos0_, q_slot0_, n_blocks_;
  bool group_union_;
  std::vector<Keys> keys_;
};

}  // namespace skim::attention
