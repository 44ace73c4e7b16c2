#include "kv/kv_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

namespace skim {
namespace {
// Bytes this process may use at most: physical memory, or the cgroup's limit
// (a container's) when that is lower.
double memory_limit_bytes() {
  double limit = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");
  double cgroup_max = 0;
  if (cgroup >> cgroup_max && cgroup_max > 0) limit = std::min(limit, cgroup_max);  // "max" reads as no number
  return limit;
}

// f16 values of a cache of `capacity` tokens. One beyond the memory limit is
// refused here: zero-filling it would end in the OOM killer, not an error.
size_t checked_elements(int n_layer, int n_head_kv, int head_dim, int capacity) {
  const size_t elements = static_cast<size_t>(n_layer) * 2 * n_head_kv * capacity * head_dim;
  const double gib = elements * sizeof(uint16_t) / 1073741824.0;
  const double memory_gib = memory_limit_bytes() / 1073741824.0;
  if (gib > memory_gib)
    throw std::length_error(fmt::format("a context of {} tokens needs {:.1f} GiB of KV cache, more than the {:.1f} GiB of memory here",
                                        capacity, gib, memory_gib));
  return elements;
}
}  // namespace

KvCache::LazyBuffer::LazyBuffer(size_t elements) : data_(nullptr), bytes_(elements * sizeof(uint16_t)) {
  if (bytes_ == 0) return;
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<uint16_t*>(p);
}

KvCache::LazyBuffer::~LazyBuffer() {
  if (data_) munmap(data_, bytes_);
}

size_t KvCache::held_bytes() const {
  return static_cast<size_t>(n_layer_) * 2 * n_head_kv_ * size_ * head_dim_ * sizeof(uint16_t);
}

KvCache::KvCache(int n_layer, int n_head_kv, int head_dim, int capacity)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), capacity_(capacity),
      data_(checked_elements(n_layer, n_head_kv, head_dim, capacity)),
      positions_(capacity, -1) {}

void KvCache::resize(int n) {
  if (n < 0 || n > capacity_)
    throw std::out_of_range(fmt::format("KV cache holds {} tokens, asked for {}", capacity_, n));
  for (int i = n; i < size_; ++i) positions_[i] = -1;
  size_ = n;
}

}  // namespace skim
