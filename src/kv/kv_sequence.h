// One sequence's KV cache: a page table per layer (per KV head, the pool pages
// holding its slots 0, 64, 128, ...), each layer's pages from that layer's pool
// (layers may store K and V in different formats). Slot s is row s % 64 of page s / 64; every
// layer and head holds the same slots at the same positions, stored in the
// pages. Positions strictly increase with the slot (append enforces it), which
// is what KvView promises its readers. A layer may hold fewer rows than the
// others (a sliding window, a KV policy's per-layer budget): its rows are the
// last slots, and the slots before its first one are not held.
//
// Pages may be shared with other sequences (fork): a sequence writes only
// pages it alone holds, copying a shared page first (copy-on-write), so a
// shared prefix is bookkeeping, not memory.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/kv_view.h"
#include "kv/kv_pool.h"

namespace skim::kv {

class KvSequence {
 public:
  // At most max_slots slots (the context, -c); layer l's pages come from
  // layer_pools[l]. A layer whose K (V) is quantized also keeps f16 copies of
  // the K (V) rows stored in its first f16_sinks slots (the attention sinks),
  // which readers use instead of the page rows (KvView::copy_row; row copies
  // below).
  KvSequence(std::vector<KvPool*> layer_pools, int32_t n_head_kv, int64_t max_slots, int32_t f16_sinks = 0);
  // Every layer's pages from one pool.
  KvSequence(KvPool& pool, int32_t n_layer, int32_t n_head_kv, int64_t max_slots, int32_t f16_sinks = 0);
  ~KvSequence();
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  // A sequence holding the same slots through the same pages (each retained).
  KvSequence fork() const;
  KvSequence(KvSequence&& other) noexcept;

  int64_t size() const { return size_; }
  int64_t max_slots() const { return max_slots_; }
  int32_t n_layer() const { return n_layer_; }
  int32_t n_head_kv() const { return n_head_kv_; }
  KvFormat format(int32_t layer) const { return pools_[static_cast<size_t>(layer)]->format(); }

  // Appends slots for tokens at `positions` (increasing, above the last held
  // position), in every layer and head, and stores the positions. The pages
  // they land in become this sequence's own. Returns the first new slot.
  // Throws std::length_error past max_slots or when the pool is exhausted
  // (nothing is appended then).
  int64_t append(std::span<const int32_t> positions);
  // Keeps slots [0, n).
  void truncate(int64_t n);
  // Removes slots [begin, end): later slots move down, keeping their positions.
  void erase(int64_t begin, int64_t end);
  void clear() { truncate(0); }
  // Layer l no longer holds the slots before `slot` (a sliding-window layer's
  // keys no later query can see); the last slot is always kept. Its view then
  // starts there, its pages wholly before are given back, and the slots stay
  // numbered as in every layer.
  void release_before(int32_t layer, int64_t slot);
  // The first slot every layer still holds (0 when nothing was released).
  // truncate keeps more than it (or nothing); erase needs it 0.
  int64_t first_held() const;
  // Keeps, of each (layer, KV head), the rows at kept[layer][head] (ascending
  // slots it holds), with their positions: the same count for every head of a
  // layer, any count per layer. The sequence then holds as many slots as the
  // largest count; every layer's rows end there, and a layer keeping fewer
  // gives back the slots before its first (release_before). Throws
  // std::length_error, changing nothing, when a layer needs pages back and the pool is full.
  void keep_rows(const std::vector<std::vector<std::vector<int64_t>>>& kept);
  // Whether keep_rows dropped rows since the sequence was last empty: its
  // slots then no longer stand for the tokens it saw.
  bool evicted() const { return evicted_; }
  // Whether drop_copies demoted rows since the sequence was last empty: a
  // prefix of it then holds rows at a precision chosen over the whole.
  bool demoted() const { return demoted_; }
  // Throws std::invalid_argument naming `what` (erase, evict, save, ...) when a
  // layer is staged (KIVI): its sealed pages are quantized per channel over
  // their rows, so no row can move, change or be stored alone.
  void require_row_formats(const char* what) const;

  // A vector per (layer, KV head) subtracted from every key before it is
  // stored (SageAttention's key smoothing): it changes each query's scores by
  // one constant, which softmax ignores, and leaves quantizers only the part of
  // the keys that varies. Set once, from the sequence's first keys; an empty
  // sequence has none.
  bool has_key_offset(int32_t layer) const { return offset_set_[static_cast<size_t>(layer)] != 0; }
  float* key_offset(int32_t layer, int32_t head) {
    return offsets_.data() + (static_cast<size_t>(layer) * n_head_kv_ + head) * pool(layer).head_dim();
  }
  void mark_key_offset_set(int32_t layer) { offset_set_[static_cast<size_t>(layer)] = 1; }

  // A float per (layer, KV head, slot) that a KV policy accumulates (H2O:
  // the attention the row has received): zero for new slots, moved with its
  // row (erase, keep_rows), copied by fork. Allocated on first use, dropped
  // when the sequence is emptied; the const form returns null until then.
  float* row_scores(int32_t layer, int32_t head);
  bool has_row_scores() const { return !row_scores_.empty(); }
  const float* row_scores(int32_t layer, int32_t head) const;

  int32_t position(int64_t slot) const;
  int64_t k_row_bytes(int32_t layer) const { return pool(layer).k_row_bytes(); }
  int64_t v_row_bytes(int32_t layer) const { return pool(layer).v_row_bytes(); }
  int32_t head_dim(int32_t layer) const { return pool(layer).head_dim(); }
  // Stores a row appended and not yet written (K and V, head_dim values each):
  // in the layer's formats, or in f16 in the stage of a layer whose pool is
  // staged (KvPool::staged) until seal encodes its page. Rows of different
  // (head, slot) may be stored from different threads.
  void store_row(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v);

  // Row copies: f16 copies of some rows of a layer's quantized sides (K, V
  // or both), which readers use instead of the page rows; the page still
  // holds the quantized row. A row stored in one of the first f16_sinks slots
  // gets one, and so does every row stored while keep_originals is on (a
  // mixed-precision policy's candidates for original precision, ARKV). A copy
  // moves with its row (erase, keep_rows), is rewritten with it (write_row),
  // and goes when the row goes or drop_copies demotes the row to its
  // quantized page values (which were quantized once, from the row itself).
  struct RowCopies {
    std::vector<int32_t> index;  // [slot][head]: copy number, -1 for none; slots past its end have none
    std::vector<uint16_t> k, v;  // [copy][head_dim], empty for a side that keeps none
    std::vector<int32_t> free;   // copy numbers to reuse
  };
  const RowCopies& row_copies(int32_t layer) const { return copies_[static_cast<size_t>(layer)]; }
  // Replaces a layer's copies (kv_file): throws std::invalid_argument when they do not fit its rows and sides.
  void restore_row_copies(int32_t layer, RowCopies copies);
  // Off again once the sequence is emptied.
  void keep_originals(bool on) { keep_originals_ = on; }
  // The rows at slots[head] of a layer keep only their quantized page values.
  void drop_copies(int32_t layer, const std::vector<std::vector<int64_t>>& slots);
  // A mixed-precision policy's share of original rows per layer, from the last
  // prompt it judged (a cut while decoding, with one query, reuses it); empty
  // until then, and again once the sequence is emptied.
  std::vector<double>& original_shares() { return original_shares_; }
  const std::vector<double>& original_shares() const { return original_shares_; }
  // Bytes of the layer's copies and their index.
  size_t copy_bytes(int32_t layer) const;
  int64_t copied_rows(int32_t layer) const;
  // Whether the layer has a quantized side, whose rows may have copies.
  bool keeps_copies(int32_t layer) const {
    return quantized_k_[static_cast<size_t>(layer)] != 0 || quantized_v_[static_cast<size_t>(layer)] != 0;
  }
  // Encodes every page of a staged layer whose rows are all stored (KIVI
  // keys are quantized per channel over a page's rows): only the last,
  // unfilled page stays f16. Nothing to do for other layers.
  void seal(int32_t layer);
  // Rewrites a held row (K and V, head_dim values each) in the layer's formats,
  // copying its page first when another sequence shares it.
  void write_row(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v);
  // Rows of a slot this sequence owns (written after append), head_dim values in the layer's format
  // (not for a staged layer, whose rows store_row places).
  void* k_row(int32_t layer, int32_t head, int64_t slot);
  void* v_row(int32_t layer, int32_t head, int64_t slot);

  // Keys and values of one layer, slots [0, size()).
  kernels::KvView view(int32_t layer) const;

  int64_t pages_held() const;  // distinct (layer, head) pages, shared ones included
  size_t held_bytes() const;
  int32_t page_refs(int32_t layer, int32_t head, int64_t slot) const {
    return pool(layer).refs(page(layer, head, slot >> kPageShift));
  }

 private:
  int64_t table_pages() const { return (max_slots_ + kPageRows - 1) / kPageRows; }
  int64_t pages_for(int64_t slots) const { return (slots + kPageRows - 1) / kPageRows; }
  PageId& page(int32_t layer, int32_t head, int64_t index) {
    return tables_[static_cast<size_t>(layer)][static_cast<size_t>(head * table_pages() + index)];
  }
  PageId page(int32_t layer, int32_t head, int64_t index) const {
    return tables_[static_cast<size_t>(layer)][static_cast<size_t>(head * table_pages() + index)];
  }
  KvPool& pool(int32_t layer) const { return *pools_[static_cast<size_t>(layer)]; }
  // Page `index` of every (layer, head) becomes this sequence's own.
  void own_pages(int64_t index);
  int64_t first_slot(int32_t layer) const { return first_slot_[static_cast<size_t>(layer)]; }
  int64_t first_page(int32_t layer) const { return first_slot(layer) >> kPageShift; }
  void require_all_held(const char* what) const;
  bool staged(int32_t layer) const { return pool(layer).staged(); }
  // The copy number of a row, -1 for none.
  int32_t copy_of(int32_t layer, int32_t head, int64_t slot) const;
  // Copies (unwritten) for slots [begin, end) of every head, none of which has one.
  void allocate_copies(int32_t layer, int64_t begin, int64_t end);
  // Writes a row's copy on the layer's quantized sides, if it has one.
  void write_copy(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v);
  bool drop_copy(int32_t layer, int32_t head, int64_t slot);  // whether the row had one
  // Drops the copies of slots [begin, end) of every head.
  void drop_copies_of_slots(int32_t layer, int64_t begin, int64_t end);
  // Renumbers a layer's copies densely, giving back what dropped ones held,
  // and ends the index at the last slot with a copy.
  void compact_copies(int32_t layer);
  int64_t stage_row_halves(int32_t layer) const { return static_cast<int64_t>(n_head_kv_) * head_dim(layer); }
  uint16_t* stage_row(int32_t layer, bool values, int32_t head, int64_t slot);
  // A staged layer's stage holds the slots [stage_slot0, size()): sized after append, refilled by truncate.
  void resize_stages();
  void move_row(int32_t layer, int32_t head, int64_t from, int64_t to);
  // Moves the rows at `slots` (ascending) of one (layer, head) to slots
  // first, first + 1, ..., copying shared pages before writing them.
  void move_rows(int32_t layer, int32_t head, std::span<const int64_t> slots, int64_t first);

  std::vector<KvPool*> pools_;  // per layer; empty once moved from
  int32_t n_layer_, n_head_kv_;
  int64_t max_slots_;
  int64_t size_ = 0;
  std::vector<std::vector<PageId>> tables_;  // [layer][head * table_pages() + page index]
  std::vector<float> offsets_;               // [layer][head][head_dim]: key_offset
  std::vector<uint8_t> offset_set_;          // [layer]
  std::vector<int64_t> first_slot_;          // [layer]: slots before it are not held (release_before)
  std::vector<int64_t> stage_slot0_;         // [layer]: staged layers' first slot not yet sealed (a page start)
  std::vector<std::vector<uint16_t>> stage_k_, stage_v_;  // [layer][slot - stage_slot0][head][head_dim] f16
  std::vector<float> row_scores_;                        // [layer][head][max_slots], or empty: row_scores
  int32_t f16_sinks_ = 0;                                // at most max_slots
  std::vector<uint8_t> quantized_k_, quantized_v_;       // [layer]: the sides that keep row copies
  std::vector<RowCopies> copies_;                        // [layer]
  bool keep_originals_ = false;
  std::vector<double> original_shares_;
  bool demoted_ = false;
  bool evicted_ = false;
};

}  // namespace skim::kv
