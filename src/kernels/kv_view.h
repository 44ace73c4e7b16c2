// How the attention kernel, the planners' estimators and the references read
// one layer's keys and values: by cache slot, through a page table.
//
// Slot s of KV head h lives in page page_ids[h * pages_per_head + (s >> page_shift)]
// at row (s & (2^page_shift - 1)); a page's K rows start at k + page * page_bytes,
// its V rows at v + page * page_bytes, rows k_row_bytes (v_row_bytes) apart. K and
// V may have different formats. The engine's pool
// (src/kv/) has 64-row pages; a contiguous array [head][rows][d] is the special
// case of one page per head (KvView::contiguous).
//
// Each slot has a stored position (where RoPE put it): positions + page * pos_page_stride
// + row, or the slot index itself when positions is null. Positions strictly
// increase with the slot within every head, so "the keys at or before position
// p" are a prefix of the slots (slots_through). The kernel's causal test and
// every position rule of a planner use the stored positions; a plan names keys
// by slot.
#pragma once

#include <algorithm>
#include <cstdint>

namespace skim::kernels {

// Storage formats of K and V rows (docs/kv-formats.md):
// - Q8_0, Q4_0: llama.cpp's block layouts, per 32 values an f16 scale and 32
//   int8 values (34 bytes) or 32 4-bit values (18 bytes);
// - TQ4, TQ3, TQ2 (TurboQuant, MSE variant): per row an f16 scale and a 4-, 3-
//   or 2-bit index per value into a Lloyd-Max codebook for N(0, 1), for rows
//   whose coordinates were made near Gaussian by a Hadamard rotation.
// - TQ4J, TQ3J (TurboQuant's inner-product variant): a TQ3 or TQ2 row, then
//   the 1-bit QJL sketch of its residual: an f16 residual norm and the signs
//   of the residual times a fixed Gaussian matrix (qjl_matrix), decoded so
//   that a dot product with the row is QJL's unbiased estimate.
// - KIVI_K4, KIVI_K2 (KIVI's keys): asymmetric 4- or 2-bit integers per
//   channel, one f16 scale and minimum per channel for a page's rows (the
//   page's parameters follow its K rows); a page is encoded once all its rows
//   are in, so the rows of a sequence's last, unfilled page stay f16 (KIVI's
//   full-precision window of recent tokens).
// - KIVI_V4, KIVI_V2 (KIVI's values): asymmetric 4- or 2-bit integers per
//   token, per 32 values an f16 scale, an f16 minimum and the packed indices.
// Quantized rows need a row length that is a multiple of 32.
enum class KvDType : uint8_t { F32, F16, BF16, Q8_0, Q4_0, TQ4, TQ3, TQ2, KIVI_K4, KIVI_K2, KIVI_V4, KIVI_V2, TQ4J, TQ3J };
inline constexpr KvDType kLastKvDType = KvDType::TQ3J;
inline constexpr int64_t kKvBlock = 32;

inline bool kv_quantized(KvDType t) { return t >= KvDType::Q8_0; }
// Codebook index bits of a TurboQuant format (0 for the others).
inline int kv_tq_bits(KvDType t) {
  return t == KvDType::TQ4 ? 4 : t == KvDType::TQ3 || t == KvDType::TQ4J ? 3 : t == KvDType::TQ2 || t == KvDType::TQ3J ? 2 : 0;
}
// Whether a TurboQuant row carries the QJL sketch of its residual.
inline bool kv_qjl(KvDType t) { return t == KvDType::TQ4J || t == KvDType::TQ3J; }
// Integer bits of a KIVI format (0 for the others).
inline int kv_kivi_bits(KvDType t) {
  return t == KvDType::KIVI_K4 || t == KvDType::KIVI_V4 ? 4 : t == KvDType::KIVI_K2 || t == KvDType::KIVI_V2 ? 2 : 0;
}
// A format quantized across the rows of a page (per channel), not row by row.
inline bool kv_grouped(KvDType t) { return t == KvDType::KIVI_K4 || t == KvDType::KIVI_K2; }
// Bytes of a page's parameters after its rows: per channel an f16 scale, then per channel an f16 minimum.
inline int64_t kv_page_param_bytes(KvDType t, int64_t n) { return kv_grouped(t) ? 4 * n : 0; }

// Bytes of one row of n values.
inline int64_t kv_row_bytes(KvDType t, int64_t n) {
  switch (t) {
    case KvDType::F32: return 4 * n;
    case KvDType::F16:
    case KvDType::BF16: return 2 * n;
    case KvDType::Q8_0: return n / kKvBlock * (kKvBlock + 2);
    case KvDType::Q4_0: return n / kKvBlock * (kKvBlock / 2 + 2);
    case KvDType::KIVI_K4:
    case KvDType::KIVI_K2: return n * kv_kivi_bits(t) / 8;
    case KvDType::KIVI_V4:
    case KvDType::KIVI_V2: return n / kKvBlock * (4 + kKvBlock * kv_kivi_bits(t) / 8);
    default: return 2 + n * kv_tq_bits(t) / 8 + (kv_qjl(t) ? 2 + n / 8 : 0);
  }
}

struct KvView {
  KvDType k_type = KvDType::F16, v_type = KvDType::F16;
  const uint8_t* k = nullptr;
  const uint8_t* v = nullptr;
  const uint32_t* page_ids = nullptr;  // [kv head][pages_per_head]
  int64_t pages_per_head = 1;
  int64_t page_bytes = 0;  // bytes between consecutive pages
  int64_t k_row_bytes = 0, v_row_bytes = 0;  // bytes between consecutive rows of a page (>= a row of head_dim values)
  int32_t page_shift = 31; // log2 of the rows per page
  const int32_t* positions = nullptr;  // null: position == slot
  int64_t pos_page_stride = 0;         // positions between consecutive pages
  int64_t n_keys = 0;                  // slots [0, n_keys) hold keys
  // Slots [0, first_key) are not held (the pages a sliding-window layer gave
  // back): no reader may touch them, and slots_through counts them as earlier.
  int64_t first_key = 0;
  // Grouped K (kv_grouped): a page's parameters start k_params_offset bytes after its K rows.
  int64_t k_params_offset = 0;
  // Slots at or after stage_slot0 (a layer's unfilled last page while its
  // format is grouped) are f16 rows outside the pages: slot s of head h at
  // k_stage + (s - stage_slot0) * stage_row_stride + h * head_dim (v_stage alike).
  int64_t stage_slot0 = INT64_MAX;
  const uint16_t* k_stage = nullptr;
  const uint16_t* v_stage = nullptr;
  int64_t stage_row_stride = 0;  // halves between consecutive slots
  int32_t stage_head_dim = 0;
  // Rows with f16 copies (a quantized side's attention sinks, a mixed-precision
  // KV policy's original rows) are read from them where the side keeps them:
  // slot s < copy_slots of head h has copy c = copy_index[s * copy_heads + h]
  // (-1: none), its K at k_copies + c * stage_head_dim (v_copies alike; null
  // for a side that keeps none).
  const int32_t* copy_index = nullptr;
  int64_t copy_slots = 0;
  int32_t copy_heads = 0;
  const uint16_t* k_copies = nullptr;
  const uint16_t* v_copies = nullptr;

  // [head][rows][row_stride] arrays of `type`, K and V alike (head_stride, row_stride
  // in elements), at most 1024 heads. positions: one per slot, shared by all heads (null: position == slot).
  static KvView contiguous(const void* k, const void* v, KvDType type, int64_t head_stride, int64_t row_stride,
                           int64_t n_keys, const int32_t* positions = nullptr);

  int64_t page_rows() const { return int64_t{1} << page_shift; }
  uint32_t page_of(int32_t head, int64_t slot) const {
    return page_ids[head * pages_per_head + (slot >> page_shift)];
  }
  int64_t row_in_page(int64_t slot) const { return slot & (page_rows() - 1); }
  const void* k_row(int32_t head, int64_t slot) const {
    return k + page_of(head, slot) * page_bytes + row_in_page(slot) * k_row_bytes;
  }
  const void* v_row(int32_t head, int64_t slot) const {
    return v + page_of(head, slot) * page_bytes + row_in_page(slot) * v_row_bytes;
  }
  bool staged(int64_t slot) const { return slot >= stage_slot0; }
  // The f16 copy of a row, or null when it has none on that side.
  const uint16_t* copy_row(bool values, int32_t head, int64_t slot) const {
    const uint16_t* copies = values ? v_copies : k_copies;
    if (slot >= copy_slots || copies == nullptr) return nullptr;
    const int32_t c = copy_index[slot * copy_heads + head];
    return c < 0 ? nullptr : copies + static_cast<int64_t>(c) * stage_head_dim;
  }
  const uint16_t* stage_row(bool values, int32_t head, int64_t slot) const {
    return (values ? v_stage : k_stage) + (slot - stage_slot0) * stage_row_stride + static_cast<int64_t>(head) * stage_head_dim;
  }
  const void* k_params(int32_t head, int64_t slot) const {
    return k + page_of(head, slot) * page_bytes + k_params_offset;
  }
  int32_t position(int32_t head, int64_t slot) const {
    if (!positions) return static_cast<int32_t>(slot);
    return positions[page_of(head, slot) * pos_page_stride + row_in_page(slot)];
  }
  // Number of slots of `head` whose position is <= pos (a prefix: positions increase).
  int64_t slots_through(int32_t head, int64_t pos) const {
    if (!positions) return std::clamp<int64_t>(pos + 1, first_key, n_keys);
    int64_t lo = first_key, hi = n_keys;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (position(head, mid) <= pos) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }
  // The first slot of `head` whose position is >= pos (n_keys if none).
  int64_t first_slot_at(int32_t head, int64_t pos) const { return slots_through(head, pos - 1); }
};

}  // namespace skim::kernels
