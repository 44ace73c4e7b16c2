// The KV pool: pages of kPageRows token rows of one (layer, KV head), handed
// out on demand. A page holds the K rows, the V rows and the stored position of
// each row; it carries a reference count, so several sequences can share it (a
// prefix) and a writer copies it first (kv_sequence.h). All pages of a pool
// have one format (K and V each); layers stored in other formats use other
// pools. Mechanism only: which pages to keep, evict or quantize is policy, elsewhere.
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

// The formats of a page's K rows and V rows.
struct KvFormat {
  kernels::KvDType k = kernels::KvDType::F16, v = kernels::KvDType::F16;
  bool operator==(const KvFormat&) const = default;
};

// Bytes this process may use at most: physical memory, or the cgroup's limit
// (a container's) when that is lower.
double memory_limit_bytes();
// Throws std::length_error when a KV cache of `bytes` could never fit in it:
// a mistake to report at once, not when the pages run out mid-prompt.
void check_kv_cap(double bytes);

class KvPool {
 public:
  // Pages of rows of head_dim values in `format`; at most max_pages. Throws
  // std::invalid_argument for a format the head size cannot hold.
  KvPool(int32_t head_dim, KvFormat format, int64_t max_pages);
  ~KvPool();
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  // A page with one reference. Throws std::length_error
  // when the pool is at its cap or the page would exceed the machine's memory.
  PageId allocate();
  void retain(PageId id);
  void release(PageId id);  // the last reference returns the page to the pool
  int32_t refs(PageId id) const { return refs_[id]; }

  uint8_t* k_rows(PageId id) { return arena_ + static_cast<size_t>(id) * page_bytes_; }
  uint8_t* v_rows(PageId id) { return k_rows(id) + values_offset(); }
  int32_t* positions(PageId id) { return positions_ + static_cast<size_t>(id) * kPageRows; }
  const int32_t* positions(PageId id) const { return positions_ + static_cast<size_t>(id) * kPageRows; }

  int32_t head_dim() const { return head_dim_; }
  KvFormat format() const { return format_; }
  int64_t k_row_bytes() const { return k_row_bytes_; }
  int64_t v_row_bytes() const { return v_row_bytes_; }
  int64_t max_pages() const { return max_pages_; }
  int64_t pages_in_use() const { return in_use_; }
  // Bytes of one page: K rows (and a grouped format's parameters), V rows, the positions.
  static size_t page_bytes(int32_t head_dim, KvFormat format) {
    return kPageRows * static_cast<size_t>(kernels::kv_row_bytes(format.k, head_dim) +
                                           kernels::kv_row_bytes(format.v, head_dim) + sizeof(int32_t)) +
           static_cast<size_t>(kernels::kv_page_param_bytes(format.k, head_dim));
  }
  // Bytes of a page's K and V storage (k_rows to the end of its V rows).
  size_t rows_bytes() const { return static_cast<size_t>(page_bytes_); }
  // Whether a sequence holds this pool's unfilled last page in f16 (KIVI's window of recent rows).
  bool staged() const { return kernels::kv_kivi_bits(format_.k) != 0 || kernels::kv_kivi_bits(format_.v) != 0; }
  size_t page_bytes() const { return page_bytes(head_dim_, format_); }
  size_t held_bytes() const { return static_cast<size_t>(in_use_) * page_bytes(); }

  // The pool's part of a KvView: storage bases and page geometry.
  kernels::KvView view_base() const;

 private:
  int64_t values_offset() const {
    return kPageRows * k_row_bytes_ + kernels::kv_page_param_bytes(format_.k, head_dim_);
  }

  int32_t head_dim_;
  KvFormat format_;
  int64_t k_row_bytes_ = 0, v_row_bytes_ = 0, page_bytes_ = 0, max_pages_;
  uint8_t* arena_ = nullptr;      // max_pages * page_bytes_, committed on first write
  int32_t* positions_ = nullptr;  // max_pages * kPageRows, likewise
  size_t arena_bytes_ = 0, positions_bytes_ = 0;
  std::vector<int32_t> refs_;
  std::vector<PageId> free_;  // released pages, reused last-in first-out
  int64_t next_ = 0;          // pages [next_, max_pages) were never handed out
  int64_t in_use_ = 0;
};

}  // namespace skim::kv
