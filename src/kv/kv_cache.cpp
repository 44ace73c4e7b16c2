#include "kv/kv_cache.h"

#include <stdexcept>

#include <fmt/format.h>

namespace skim {

KvCache::KvCache(int n_layer, int n_head_kv, int head_dim, int capacity)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), capacity_(capacity),
      data_(static_cast<size_t>(n_layer) * 2 * n_head_kv * capacity * head_dim),
      positions_(capacity, -1) {}

void KvCache::resize(int n) {
  if (n < 0 || n > capacity_)
    throw std::out_of_range(fmt::format("KV cache holds {} tokens, asked for {}", capacity_, n));
  for (int i = n; i < size_; ++i) positions_[i] = -1;
  size_ = n;
}

}  // namespace skim
