// The KV pool: pages of kPageRows token rows of one (layer, KV head), handed
// out on demand. A page holds the K rows, the V rows and the stored position of
// each row; it carries its format and a reference count, so several sequences
// can share it (a prefix) and a writer copies it first (kv_sequence.h).
// Mechanism only: which pages to keep, evict or quantize is policy, elsewhere.
//
// Pages live in one anonymous mapping reserved for the cap (-c tokens per
// sequence times the sequences): the OS commits a page's memory on first
// write, so resident memory follows the pages in use, never the cap. Freed
// pages are reused first (they are already resident). Not thread-safe:
// sequences allocate between forward passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/kv_view.h"

namespace skim::kv {

inline constexpr int32_t kPageShift = 6;
inline constexpr int32_t kPageRows = 1 << kPageShift;  // = the attention kernel's key tile

using PageId = uint32_t;

class KvPool {
 public:
  // Pages of rows of head_dim values in `format` (F16, BF16 or Q8_0); at most max_pages.
  // Throws std::length_error when max_pages of them exceed the machine's memory.
  KvPool(int32_t head_dim, kernels::KvDType format, int64_t max_pages);
  ~KvPool();
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  // A page of the pool's format with one reference. Throws std::length_error
  // when the pool is at its cap or the page would exceed the machine's memory.
  PageId allocate();
  void retain(PageId id);
  void release(PageId id);  // the last reference returns the page to the pool
  int32_t refs(PageId id) const { return refs_[id]; }
  kernels::KvDType format(PageId id) const { return formats_[id]; }

  uint8_t* k_rows(PageId id) { return arena_ + static_cast<size_t>(id) * page_bytes_; }
  uint8_t* v_rows(PageId id) { return k_rows(id) + values_offset(); }
  int32_t* positions(PageId id) { return positions_ + static_cast<size_t>(id) * kPageRows; }
  const int32_t* positions(PageId id) const { return positions_ + static_cast<size_t>(id) * kPageRows; }

  int32_t head_dim() const { return head_dim_; }
  kernels::KvDType default_format() const { return format_; }
  int64_t row_bytes() const { return row_bytes_; }
  int64_t max_pages() const { return max_pages_; }
  int64_t pages_in_use() const { return in_use_; }
  // Bytes of one page: K and V rows plus the positions.
  size_t page_bytes() const { return static_cast<size_t>(page_bytes_) + kPageRows * sizeof(int32_t); }
  size_t held_bytes() const { return static_cast<size_t>(in_use_) * page_bytes(); }

  // The pool's part of a KvView: storage bases and page geometry.
  kernels::KvView view_base() const;

 private:
  int64_t values_offset() const { return kPageRows * row_bytes_; }

  int32_t head_dim_;
  kernels::KvDType format_;
  int64_t row_bytes_ = 0, page_bytes_ = 0, max_pages_;
  uint8_t* arena_ = nullptr;      // max_pages * page_bytes_, committed on first write
  int32_t* positions_ = nullptr;  // max_pages * kPageRows, likewise
  size_t arena_bytes_ = 0, positions_bytes_ = 0;
  std::vector<int32_t> refs_;
  std::vector<kernels::KvDType> formats_;
  std::vector<PageId> free_;  // released pages, reused last-in first-out
  int64_t next_ = 0;          // pages [next_, max_pages) were never handed out
  int64_t in_use_ = 0;
};

}  // namespace skim::kv
