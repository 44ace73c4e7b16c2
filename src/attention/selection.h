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

struct BlockScores;  // attention/estimate.h

class KeySelection {
 public:
  static constexpr int64_t kBlock = kTileRows;

  // `ordered`: key blocks carry visit scores (add_scored_block) and build()
  // makes an ordered plan.
  explicit KeySelection(const PlanRequest& request, bool ordered = false);
  bool ordered() const { return scored_; }

  int64_t n_blocks() const { return n_blocks_; }
  // Slots of the keys of a query block's first and last rows.
  int64_t block_first(int64_t qb) const { return q_slot0_ + qb * kBlock; }
  int64_t block_last(int64_t qb) const { return q_slot0_ + std::min(n_rows_, (qb + 1) * kBlock) - 1; }
  // Positions of a query block's first and last rows.
  int64_t block_first_pos(int64_t qb) const { return q_pos0_ + qb * kBlock; }
  int64_t block_last_pos(int64_t qb) const { return q_pos0_ + std::min(n_rows_, (qb + 1) * kBlock) - 1; }

  void add_range(int32_t q_head, int64_t qb, int64_t begin, int64_t end);
  // An ordered plan (docs/plan.md): keys with a visit score; build() then
  // scores every range (the diagonal and unscored ranges get kForcedScore).
  void add_scored_range(int32_t q_head, int64_t qb, int64_t begin, int64_t end, float score);
  // The keys [begin, end) as columns: the kernel gathers columns kKeyTile at a
  // time, so short runs of keys from far apart still make full tiles.
  void add_columns(int32_t q_head, int64_t qb, int64_t begin, int64_t end);
  static constexpr float kForcedScore = 2.0f;  // above any attention-mass score
  // The keys stored at positions [begin, end).
  void add_positions(int32_t q_head, int64_t qb, int64_t begin, int64_t end);
  // Keys [key_block * size, (key_block + 1) * size).
  void add_key_block(int32_t q_head, int64_t qb, int64_t key_block, int64_t size) {
    add_range(q_head, qb, key_block * size, (key_block + 1) * size);
  }
  void add_column(int32_t q_head, int64_t qb, int64_t key);
  // The sink (positions [0, sink)) and the local window: the `local`
  // positions before the block's first row and the block's own rows. Returns
  // the window's first position.
  int64_t add_sink_and_window(int32_t q_head, int64_t qb, int64_t sink, int64_t local);
  // Token-level key sets (sorted ascending, unique): runs of at least
  // kMinRangeRun consecutive slots become ranges (streamed as contiguous
  // tiles), the rest columns (gathered); keys after the block are dropped.
  static constexpr int64_t kMinRangeRun = 16;
  void add_keys(int32_t q_head, int64_t qb, std::span<const int32_t> sorted_keys);

  Plan build() const;

 private:
  struct Keys {
    std::vector<KeyRange> ranges;
    std::vector<float> range_scores;  // aligned with ranges when the selection is scored
    std::vector<int32_t> cols;
  };
  Keys& at(int32_t q_head, int64_t qb) { return keys_[static_cast<size_t>(q_head * n_blocks_ + qb)]; }

  const kernels::KvView& kv_;
  int32_t n_q_heads_, n_kv_heads_;
  int64_t n_rows_, q_pos0_, q_slot0_, n_blocks_;
  bool group_union_;
  bool scored_;
  std::vector<Keys> keys_;
};

// The recall-targeted choice (docs/methods.md#recall-targeted-policy): per
// (q head, query block), the sink block and the blocks holding the block's own
// rows, then key blocks by descending estimated mass until the kept mass
// reaches `target`. `mass` has 64-row query blocks and key blocks dividing 64.
// In an ordered selection each chosen block carries its mass as a visit score
// (S2O's ordered visit; the forced blocks come first), and the kernel's
// running-mass stop judges each block on its own. In an unordered selection,
// blocks shorter than 64 keys are added as columns, which the kernel packs
// into full tiles.
// With `rank`, the candidates are taken (and scored) by it instead of by mass,
// while the kept mass still counts `mass`.
void select_to_target(const BlockScores& mass, double target, KeySelection& sel, const BlockScores* rank = nullptr);

}  // namespace skim::attention
