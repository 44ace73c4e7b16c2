#include "kv/kv_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::kv {
double memory_limit_bytes() {
  double limit = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");
  double cgroup_max = 0;
  if (cgroup >> cgroup_max && cgroup_max > 0) limit = std::min(limit, cgroup_max);  // "max" reads as no number
  return limit;
}

void check_kv_cap(double bytes) {
  if (bytes > memory_limit_bytes())
    throw std::length_error(fmt::format("a KV cache cap of {:.1f} GiB is more than the {:.1f} GiB of memory here (lower -c)",
                                        bytes / 1073741824.0, memory_limit_bytes() / 1073741824.0));
}

namespace {

// Zero-filled memory that is committed only where written.
uint8_t* reserve(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return static_cast<uint8_t*>(p);
}

}  // namespace

KvPool::KvPool(int32_t head_dim, KvFormat format, int64_t max_pages)
    : head_dim_(head_dim), format_(format), max_pages_(max_pages) {
  if (head_dim <= 0 || max_pages <= 0 || max_pages > (int64_t{1} << 31))
    throw std::invalid_argument("KV pool: bad shape");
  if ((kernels::kv_quantized(format.k) || kernels::kv_quantized(format.v)) && head_dim % kernels::kKvBlock != 0)
    throw std::invalid_argument(
        fmt::format("a quantized KV cache needs a head size that is a multiple of {}, not {}", kernels::kKvBlock, head_dim));
  k_row_bytes_ = kernels::kv_row_bytes(format.k, head_dim);
  v_row_bytes_ = kernels::kv_row_bytes(format.v, head_dim);
  if ((kernels::kv_grouped(format.k) || kernels::kv_grouped(format.v)) && head_dim % 64 != 0)
    throw std::invalid_argument(fmt::format("KIVI keys need a head size that is a multiple of 64, not {}", head_dim));
  if (kernels::kv_grouped(format.v)) throw std::invalid_argument("KV pool: values are never grouped by channel");
  page_bytes_ = values_offset() + kPageRows * v_row_bytes_;
  // A cap the machine could never fill is a mistake to report now, not when
  // the pages run out in the middle of a prompt.
  check_kv_cap(static_cast<double>(max_pages) * static_cast<double>(page_bytes()));
  arena_bytes_ = static_cast<size_t>(max_pages) * page_bytes_;
  positions_bytes_ = static_cast<size_t>(max_pages) * kPageRows * sizeof(int32_t);
  arena_ = reserve(arena_bytes_);
  try {
    positions_ = reinterpret_cast<int32_t*>(reserve(positions_bytes_));
  } catch (...) {
    munmap(arena_, arena_bytes_);
    throw;
  }
  refs_.assign(static_cast<size_t>(max_pages), 0);
}

KvPool::~KvPool() {
  munmap(arena_, arena_bytes_);
  munmap(positions_, positions_bytes_);
}

PageId KvPool::allocate() {
  if (free_.empty() && next_ == max_pages_)
    throw std::length_error(
        fmt::format("the KV pool is full: all {} pages of {} tokens are in use", max_pages_, kPageRows));
  static const double limit = memory_limit_bytes();
  if (static_cast<double>(in_use_ + 1) * static_cast<double>(page_bytes()) > limit)
    throw std::length_error(
        fmt::format("the KV cache would need more than the {:.1f} GiB of memory here", limit / 1073741824.0));
  PageId id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    id = static_cast<PageId>(next_++);
  }
  refs_[id] = 1;
  ++in_use_;
  return id;
}

void KvPool::retain(PageId id) {
  if (refs_[id] <= 0) throw std::logic_error("KV pool: retain of a free page");
  ++refs_[id];
}

void KvPool::release(PageId id) {
  if (refs_[id] <= 0) throw std::logic_error("KV pool: release of a free page");
  if (--refs_[id] == 0) {
    free_.push_back(id);
    --in_use_;
  }
}

kernels::KvView KvPool::view_base() const {
  kernels::KvView v;
  v.k_type = format_.k;
  v.v_type = format_.v;
  v.k = arena_;
  v.v = arena_ + values_offset();
  v.page_bytes = page_bytes_;
  v.k_row_bytes = k_row_bytes_;
  v.v_row_bytes = v_row_bytes_;
  v.k_params_offset = kPageRows * k_row_bytes_;
  v.page_shift = kPageShift;
  v.positions = positions_;
  v.pos_page_stride = kPageRows;
  return v;
}

}  // namespace skim::kv
