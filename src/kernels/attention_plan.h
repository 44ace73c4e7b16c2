// The attention plan: which keys each query tile attends to. It is the
// contract between the planners (src/attention/*, above) and the attention
// kernel that executes it (src/kernels/attention.h); see docs/plan.md.
//
// A plan has n_heads "plan heads". With group_size == 1 a plan head is a query
// head; with group_size == g (GQA group mode) it is a KV head, and its g query
// heads (q heads h*g .. h*g+g-1) share its key sets, so the kernel reads each
// K/V tile once for a (g * tile_rows)-row query tile.
//
// The query rows of plan head h (all rows 0..n_rows-1, or its row map) are cut
// into tiles of tile_rows rows; one "item" is one (head, tile). Items are
// numbered head-major: head h owns items [head_item_begin[h], head_item_begin[h+1]).
// Keys are cache slots (kernels/kv_view.h). The chunk's own keys are slots
// q_slot0 + i for query rows i (at positions q_pos0 + i), and every earlier
// slot holds an earlier position, so "causally visible to row i" is the slot
// prefix [0, q_slot0 + i]. Per item (CSR, key slots):
//   ranges[range_ptr[i] .. range_ptr[i+1])  half-open [begin, end), sorted, disjoint
//   cols[col_ptr[i] .. col_ptr[i+1])        single keys, sorted, unique, not in any range
// In causal mode no key may lie after the tile's last query position (keys
// between the tile's first and last position are masked per row by the kernel,
// by their stored positions).
//
// Optional parts (an empty vector means "not used"):
//   range_scores / col_scores  aligned with ranges / cols. When present the
//       kernel visits key tiles in descending score order (a range's tiles
//       carry its score; columns are packed by descending score, a pack never
//       mixing scores on both sides of stop_theta) and stops at the first tile
//       whose score is below stop_theta[h] (S2O-style early stop): exactly the
//       keys scored >= stop_theta are used. Without scores the order is: the
//       columns (packed 64 at a time), then the ranges by position.
//   skip_lambda[h]   BLASST: skip a key tile (its exp, V read and P.V) when
//                    exp(tile_max - running_max) < lambda for every row of the
//                    query tile, running_max taken before the tile (0 = never skip).
//   stop_theta[h]    see scores; -inf = never stop.
//   stop_mass[h]     with scores, S2O's running-mass stop instead of the fixed
//                    one: tiles scored >= stop_theta are always visited; past
//                    them the kernel stops once a visited tile added less than
//                    stop_mass x the running softmax sum for every row of the
//                    query tile, pro rata for a tile of fewer than 64 keys
//                    (0 = the fixed stop). Items are then never
//                    split across threads (the stop needs the whole stream).
//   row_map          per head (CSR by row_map_ptr): strictly increasing query rows
//                    to process; rows not listed get output 0 and LSE -inf.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kv_view.h"

namespace skim::kernels {

// A malformed plan (or a plan that does not fit the attention call).
class PlanError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct KeyRange {
  int32_t begin = 0;  // first key slot
  int32_t end = 0;    // one past the last key slot
};

struct Plan {
  int32_t n_heads = 0;     // plan heads (q heads, or KV heads in group mode)
  int32_t group_size = 1;  // q heads per plan head
  int32_t tile_rows = 64;  // Bq: query rows per tile and per q head
  int64_t n_rows = 0;      // query rows in the chunk (Nq)
  int64_t q_pos0 = 0;      // absolute position of query row 0
  int64_t q_slot0 = 0;     // cache slot of query row 0's own key

  std::vector<int64_t> head_item_begin;  // n_heads + 1
  std::vector<int64_t> range_ptr;        // n_items + 1
  std::vector<KeyRange> ranges;
  std::vector<int64_t> col_ptr;          // n_items + 1
  std::vector<int32_t> cols;

  std::vector<float> range_scores;  // empty, or one per range
  std::vector<float> col_scores;    // empty, or one per column
  std::vector<float> skip_lambda;   // empty, or one per head
  std::vector<float> stop_theta;    // empty, or one per head
  std::vector<float> stop_mass;     // empty, or one per head

  std::vector<int64_t> row_map_ptr;  // empty, or n_heads + 1
  std::vector<int32_t> row_map;

  int64_t n_items() const { return head_item_begin.empty() ? 0 : head_item_begin.back(); }
  bool has_scores() const { return !range_scores.empty() || !col_scores.empty(); }
  bool has_row_map() const { return !row_map_ptr.empty(); }
  // Query rows processed for head h (n_rows without a row map).
  int64_t head_rows(int32_t h) const;
  // Query row (0-based in the chunk) of local row `i` of head h.
  int64_t row_of(int32_t h, int64_t i) const {
    return has_row_map() ? row_map[static_cast<size_t>(row_map_ptr[h] + i)] : i;
  }
  // Number of query tiles of head h.
  int64_t head_tiles(int32_t h) const { return (head_rows(h) + tile_rows - 1) / tile_rows; }
  // Absolute position of the last query row of tile `t` of head h.
  int64_t tile_last_position(int32_t h, int64_t t) const;
  // Absolute position of the first query row of tile `t` of head h.
  int64_t tile_first_position(int32_t h, int64_t t) const;
  // Slot of the last query row's own key: the tile sees slots [0, tile_last_slot].
  int64_t tile_last_slot(int32_t h, int64_t t) const { return tile_last_position(h, t) - q_pos0 + q_slot0; }
  // Number of keys an item lists (ranges + columns).
  int64_t item_keys(int64_t item) const;
  // Total number of (query row, key) pairs the plan lets through (keys listed
  // for the row's tile and, causally, at or before the row's position), over
  // all q heads (group mode counts each of the g heads): the work it asks for.
  int64_t listed_pairs() const;
};

// The shape of a plan, independent of its key sets.
struct PlanShape {
  int32_t n_heads = 0;
  int32_t group_size = 1;
  int32_t tile_rows = 64;
  int64_t n_rows = 0;
  int64_t q_pos0 = 0;
  int64_t q_slot0 = -1;  // -1: q_pos0 (a cache whose slots are its positions)
};

// Checks the CSR structure only (array sizes, pointer monotonicity, row maps);
// O(heads + items). Throws PlanError naming the problem.
void validate_plan_structure(const Plan& plan);

// Full check: structure, then every range and column: inside [0, kv.n_keys),
// sorted, disjoint, columns not inside ranges, scores finite, and (causal) no
// key whose stored position is after the tile's last query position.
// n_kv_heads maps plan heads to the KV heads whose positions count.
// O(plan size). Throws PlanError.
void validate_plan(const Plan& plan, const KvView& kv, int32_t n_kv_heads, bool causal);
// The same for a cache whose slots are its positions.
void validate_plan(const Plan& plan, int64_t n_keys, bool causal);

// The dense causal plan: each tile attends to slots [0, tile_last_slot + 1),
// cut at n_keys when given (>= 0). Non-causal: each tile attends to [0, n_keys).
Plan make_dense_plan(const PlanShape& shape, bool causal = true, int64_t n_keys = -1);

// Appends items in (head, tile) order:
//   PlanBuilder b(shape);
//   for h: [b.set_row_map(rows);] for each tile: b.add_range(..); b.add_column(..); b.end_tile();
//   Plan p = b.finish();
// Ranges and columns may be added in any order within a tile; end_tile()
// sorts them (ranges by begin, columns by position) and merges touching or
// overlapping ranges; a column inside a range is dropped. Scores are kept
// only if the shape is built with scored = true (merging keeps the max score).
class PlanBuilder {
 public:
  explicit PlanBuilder(const PlanShape& shape, bool scored = false);

  // Restricts the current head (before its first tile) to these query rows.
  void set_row_map(std::span<const int32_t> rows);
  void add_range(int64_t begin, int64_t end, float score = 0.0f);
  void add_column(int64_t key, float score = 0.0f);
  // Closes the current tile. After a head's last tile the next head begins.
  void end_tile();
  // Per-head options (any time before finish()).
  void set_skip_lambda(int32_t head, float lambda);
  void set_stop_theta(int32_t head, float theta);
  void set_stop_mass(int32_t head, float epsilon);

  // Rows of the current tile, as query-row indices in the chunk.
  std::vector<int64_t> current_tile_rows() const;

  Plan finish();

 private:
  int64_t tiles_of(int32_t h) const;
  void require_open_tile(const char* what);

  Plan plan_;
  bool scored_;
  bool finished_ = false;
  int32_t head_ = 0;          // head of the tile being built
  int64_t tile_ = 0;          // its tile index
  bool head_started_ = false; // a tile of head_ was touched (row map frozen)
  std::vector<std::vector<int32_t>> maps_;
  std::vector<bool> mapped_;
  std::vector<int64_t> tiles_done_;
  std::vector<std::pair<KeyRange, float>> pending_ranges_;
  std::vector<std::pair<int32_t, float>> pending_cols_;
};

// A plan of the same shape, row maps and per-head options as `plan`, whose
// tile t of head h gets the keys add_keys(builder, h, t) adds.
Plan rebuild_plan(const Plan& plan, const std::function<void(PlanBuilder&, int32_t, int64_t)>& add_keys);
// The keys of item `item` of `plan` into the builder's open tile, those in
// slots [begin, end) only (ranges cut, columns outside dropped), with their scores.
void copy_item_keys(const Plan& plan, int64_t item, PlanBuilder& b, int64_t begin = 0,
                    int64_t end = std::numeric_limits<int64_t>::max());
// The plan restricted to key slots [begin, end) (a tile may end up with no keys).
Plan clip_plan(const Plan& plan, int64_t begin, int64_t end);

}  // namespace skim::kernels
