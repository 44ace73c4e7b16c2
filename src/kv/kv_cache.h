// The KV cache: per layer and KV head, K and V rows of head_dim f16 values,
// one row per cached token. The row (slot) index is the token's position: the
// attention kernel and the planners take it as such. Slots also record their
// position (set_position), but nothing reads it yet.
//
// The rows live in an anonymous memory mapping: the OS hands out zeroed pages
// on first write, so resident memory follows the tokens written (per layer and
// head, rounded up to 4 KiB pages), not the capacity `-c` reserves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace skim {

class KvCache {
 public:
  KvCache(int n_layer, int n_head_kv, int head_dim, int capacity);

  int capacity() const { return capacity_; }
  int head_dim() const { return head_dim_; }
  int n_head_kv() const { return n_head_kv_; }
  // Number of slots in use (slots [0, size) hold tokens).
  int size() const { return size_; }
  void resize(int n);  // grow into reserved slots or drop the tail
  const std::vector<int32_t>& positions() const { return positions_; }
  void set_position(int slot, int32_t pos) { positions_[slot] = pos; }

  // Rows of one (layer, KV head): [capacity][head_dim] f16, row stride head_dim.
  uint16_t* k(int layer, int head) { return data_.data() + offset(layer, head, 0); }
  uint16_t* v(int layer, int head) { return data_.data() + offset(layer, head, 1); }
  const uint16_t* k(int layer, int head) const { return data_.data() + offset(layer, head, 0); }
  const uint16_t* v(int layer, int head) const { return data_.data() + offset(layer, head, 1); }

  size_t bytes() const { return data_.bytes(); }  // reserved for the capacity
  size_t held_bytes() const;                     // the rows of the tokens in use

 private:
  size_t offset(int layer, int head, int which) const {
    return ((static_cast<size_t>(layer) * 2 + which) * n_head_kv_ + head) * static_cast<size_t>(capacity_) * head_dim_;
  }
  int n_layer_, n_head_kv_, head_dim_, capacity_;
  int size_ = 0;
  // Zero-initialised f16 storage that occupies memory only where written.
  class LazyBuffer {
   public:
    explicit LazyBuffer(size_t elements);
    ~LazyBuffer();
    LazyBuffer(const LazyBuffer&) = delete;
    LazyBuffer& operator=(const LazyBuffer&) = delete;
    uint16_t* data() const { return data_; }
    size_t bytes() const { return bytes_; }

   private:
    uint16_t* data_;
    size_t bytes_;
  };
  LazyBuffer data_;
  std::vector<int32_t> positions_;
};

}  // namespace skim
