#include "kv/kv_sequence.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::kv {

KvSequence::KvSequence(KvPool& pool, int32_t n_layer, int32_t n_head_kv, int64_t max_slots)
    : pool_(&pool), n_layer_(n_layer), n_head_kv_(n_head_kv), max_slots_(max_slots) {
  if (n_layer <= 0 || n_head_kv <= 0 || max_slots <= 0) throw std::invalid_argument("KV sequence: bad shape");
  tables_.assign(static_cast<size_t>(n_layer), std::vector<PageId>(static_cast<size_t>(n_head_kv * table_pages())));
}

KvSequence::~KvSequence() {
  if (pool_) truncate(0);
}

KvSequence::KvSequence(KvSequence&& other) noexcept
    : pool_(other.pool_), n_layer_(other.n_layer_), n_head_kv_(other.n_head_kv_), max_slots_(other.max_slots_),
      size_(other.size_), tables_(std::move(other.tables_)) {
  other.pool_ = nullptr;
  other.size_ = 0;
}

KvSequence KvSequence::fork() const {
  KvSequence copy(*pool_, n_layer_, n_head_kv_, max_slots_);
  copy.tables_ = tables_;
  copy.size_ = size_;
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t i = 0; i < pages_for(size_); ++i) pool_->retain(page(l, h, i));
  return copy;
}

void KvSequence::own_pages(int64_t index) {
  const size_t bytes = 2 * kPageRows * static_cast<size_t>(pool_->row_bytes());
  for (int32_t l = 0; l < n_layer_; ++l) {
    for (int32_t h = 0; h < n_head_kv_; ++h) {
      PageId& id = page(l, h, index);
      if (pool_->refs(id) == 1) continue;
      const PageId copy = pool_->allocate();
      std::memcpy(pool_->k_rows(copy), pool_->k_rows(id), bytes);
      std::memcpy(pool_->positions(copy), pool_->positions(id), kPageRows * sizeof(int32_t));
      pool_->release(id);
      id = copy;
    }
  }
}

int64_t KvSequence::append(std::span<const int32_t> positions) {
  const int64_t n = static_cast<int64_t>(positions.size());
  if (size_ + n > max_slots_)
    throw std::length_error(fmt::format("{} tokens after {} cached exceed the context of {} tokens (raise -c)", n,
                                        size_, max_slots_));
  int32_t last = size_ > 0 ? position(size_ - 1) : -1;
  for (int32_t p : positions) {
    if (p <= last) throw std::invalid_argument(fmt::format("KV sequence: position {} after position {}", p, last));
    last = p;
  }
  if (n == 0) return size_;
  const int64_t first = size_;
  const int64_t have = pages_for(size_), need = pages_for(size_ + n);
  // Pages first, so a full pool leaves the sequence as it was.
  const bool copy_last = size_ % kPageRows != 0 && pool_->refs(page(0, 0, size_ / kPageRows)) > 1;
  const int64_t pages_needed = (need - have + (copy_last ? 1 : 0)) * n_layer_ * n_head_kv_;
  if (pool_->pages_in_use() + pages_needed > pool_->max_pages())
    throw std::length_error(fmt::format("the KV pool is full: {} more pages of {} tokens needed, {} of {} in use",
                                        pages_needed, kPageRows, pool_->pages_in_use(), pool_->max_pages()));
  if (size_ % kPageRows != 0) own_pages(size_ / kPageRows);
  for (int64_t i = have; i < need; ++i)
    for (int32_t l = 0; l < n_layer_; ++l)
      for (int32_t h = 0; h < n_head_kv_; ++h) page(l, h, i) = pool_->allocate();
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t s = first + j;
        pool_->positions(page(l, h, s >> kPageShift))[s & (kPageRows - 1)] = positions[static_cast<size_t>(j)];
      }
  size_ += n;
  return first;
}

void KvSequence::truncate(int64_t n) {
  if (n < 0 || n > size_) throw std::out_of_range(fmt::format("KV sequence holds {} slots, asked to keep {}", size_, n));
  for (int64_t i = pages_for(n); i < pages_for(size_); ++i)
    for (int32_t l = 0; l < n_layer_; ++l)
      for (int32_t h = 0; h < n_head_kv_; ++h) pool_->release(page(l, h, i));
  size_ = n;
}

void KvSequence::move_row(int32_t layer, int32_t head, int64_t from, int64_t to) {
  const size_t row = static_cast<size_t>(pool_->row_bytes());
  const PageId src = page(layer, head, from >> kPageShift), dst = page(layer, head, to >> kPageShift);
  const int64_t rs = from & (kPageRows - 1), rd = to & (kPageRows - 1);
  std::memcpy(pool_->k_rows(dst) + rd * row, pool_->k_rows(src) + rs * row, row);
  std::memcpy(pool_->v_rows(dst) + rd * row, pool_->v_rows(src) + rs * row, row);
  pool_->positions(dst)[rd] = pool_->positions(src)[rs];
}

void KvSequence::erase(int64_t begin, int64_t end) {
  if (begin < 0 || begin > end || end > size_)
    throw std::out_of_range(fmt::format("KV sequence holds {} slots, asked to erase [{}, {})", size_, begin, end));
  if (begin == end) return;
  const int64_t kept = size_ - (end - begin);
  for (int64_t i = begin / kPageRows; i < pages_for(kept); ++i) own_pages(i);
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t s = end; s < size_; ++s) move_row(l, h, s, s - (end - begin));
  truncate(kept);
}

int32_t KvSequence::position(int64_t slot) const {
  return pool_->positions(page(0, 0, slot >> kPageShift))[slot & (kPageRows - 1)];
}

void* KvSequence::k_row(int32_t layer, int32_t head, int64_t slot) {
  return pool_->k_rows(page(layer, head, slot >> kPageShift)) + (slot & (kPageRows - 1)) * pool_->row_bytes();
}

void* KvSequence::v_row(int32_t layer, int32_t head, int64_t slot) {
  return pool_->v_rows(page(layer, head, slot >> kPageShift)) + (slot & (kPageRows - 1)) * pool_->row_bytes();
}

kernels::KvView KvSequence::view(int32_t layer) const {
  kernels::KvView v = pool_->view_base();
  v.page_ids = tables_[static_cast<size_t>(layer)].data();
  v.pages_per_head = table_pages();
  v.n_keys = size_;
  return v;
}

int64_t KvSequence::pages_held() const { return pages_for(size_) * n_layer_ * n_head_kv_; }

}  // namespace skim::kv
