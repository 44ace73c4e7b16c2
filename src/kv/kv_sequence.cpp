#include "kv/kv_sequence.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::kv {

KvSequence::KvSequence(std::vector<KvPool*> layer_pools, int32_t n_head_kv, int64_t max_slots)
    : pools_(std::move(layer_pools)), n_layer_(static_cast<int32_t>(pools_.size())), n_head_kv_(n_head_kv),
      max_slots_(max_slots) {
  if (n_layer_ <= 0 || n_head_kv <= 0 || max_slots <= 0) throw std::invalid_argument("KV sequence: bad shape");
  tables_.assign(static_cast<size_t>(n_layer_), std::vector<PageId>(static_cast<size_t>(n_head_kv * table_pages())));
  offsets_.assign(static_cast<size_t>(n_layer_) * n_head_kv * pools_.front()->head_dim(), 0.0f);
  offset_set_.assign(static_cast<size_t>(n_layer_), 0);
  first_page_.assign(static_cast<size_t>(n_layer_), 0);
}

KvSequence::KvSequence(KvPool& pool, int32_t n_layer, int32_t n_head_kv, int64_t max_slots)
    : KvSequence(std::vector<KvPool*>(static_cast<size_t>(std::max(n_layer, 0)), &pool), n_head_kv, max_slots) {}

KvSequence::~KvSequence() {
  if (!pools_.empty()) truncate(0);
}

KvSequence::KvSequence(KvSequence&& other) noexcept
    : pools_(std::move(other.pools_)), n_layer_(other.n_layer_), n_head_kv_(other.n_head_kv_),
      max_slots_(other.max_slots_), size_(other.size_), tables_(std::move(other.tables_)),
      offsets_(std::move(other.offsets_)), offset_set_(std::move(other.offset_set_)),
      first_page_(std::move(other.first_page_)) {
  other.pools_.clear();
  other.size_ = 0;
}

KvSequence KvSequence::fork() const {
  KvSequence copy(pools_, n_head_kv_, max_slots_);
  copy.tables_ = tables_;
  copy.offsets_ = offsets_;
  copy.offset_set_ = offset_set_;
  copy.first_page_ = first_page_;
  copy.size_ = size_;
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t i = first_page(l); i < pages_for(size_); ++i) pool(l).retain(page(l, h, i));
  return copy;
}

void KvSequence::own_pages(int64_t index) {
  for (int32_t l = 0; l < n_layer_; ++l) {
    if (index < first_page(l)) continue;  // released: no one reads it again
    KvPool& p = pool(l);
    const size_t bytes = kPageRows * static_cast<size_t>(p.k_row_bytes() + p.v_row_bytes());
    for (int32_t h = 0; h < n_head_kv_; ++h) {
      PageId& id = page(l, h, index);
      if (p.refs(id) == 1) continue;
      const PageId copy = p.allocate();
      std::memcpy(p.k_rows(copy), p.k_rows(id), bytes);
      std::memcpy(p.positions(copy), p.positions(id), kPageRows * sizeof(int32_t));
      p.release(id);
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
  const bool copy_last = size_ % kPageRows != 0 && pool(0).refs(page(0, 0, size_ / kPageRows)) > 1;
  const int64_t pages_per_layer = (need - have + (copy_last ? 1 : 0)) * n_head_kv_;
  std::map<const KvPool*, int64_t> pages_needed;
  for (const KvPool* p : pools_) pages_needed[p] += pages_per_layer;
  for (const auto& [p, needed] : pages_needed)
    if (p->pages_in_use() + needed > p->max_pages())
      throw std::length_error(fmt::format("the KV pool is full: {} more pages of {} tokens needed, {} of {} in use",
                                          needed, kPageRows, p->pages_in_use(), p->max_pages()));
  if (size_ % kPageRows != 0) own_pages(size_ / kPageRows);
  for (int64_t i = have; i < need; ++i)
    for (int32_t l = 0; l < n_layer_; ++l)
      for (int32_t h = 0; h < n_head_kv_; ++h) page(l, h, i) = pool(l).allocate();
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t s = first + j;
        pool(l).positions(page(l, h, s >> kPageShift))[s & (kPageRows - 1)] = positions[static_cast<size_t>(j)];
      }
  size_ += n;
  return first;
}

void KvSequence::truncate(int64_t n) {
  if (n < 0 || n > size_) throw std::out_of_range(fmt::format("KV sequence holds {} slots, asked to keep {}", size_, n));
  if (n > 0 && n <= first_held())
    throw std::out_of_range(fmt::format("KV sequence: slots before {} were released, asked to keep {}", first_held(), n));
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int64_t i = std::max(pages_for(n), first_page(l)); i < pages_for(size_); ++i)
      for (int32_t h = 0; h < n_head_kv_; ++h) pool(l).release(page(l, h, i));
  size_ = n;
  if (n == 0) {
    std::fill(offset_set_.begin(), offset_set_.end(), 0);
    std::fill(first_page_.begin(), first_page_.end(), 0);
  }
}

void KvSequence::release_before(int32_t layer, int64_t slot) {
  // Whole pages only, and never the last slot (it carries the sequence's last position).
  const int64_t end = std::min(slot, size_ - 1) >> kPageShift;
  int64_t& first = first_page_[static_cast<size_t>(layer)];
  for (; first < end; ++first)
    for (int32_t h = 0; h < n_head_kv_; ++h) pool(layer).release(page(layer, h, first));
}

int64_t KvSequence::first_held() const {
  return *std::max_element(first_page_.begin(), first_page_.end()) * kPageRows;
}

void KvSequence::require_all_held(const char* what) const {
  if (first_held() > 0)
    throw std::logic_error(fmt::format("KV sequence: cannot {} rows of a sequence whose sliding-window layers released pages", what));
}

void KvSequence::move_row(int32_t layer, int32_t head, int64_t from, int64_t to) {
  KvPool& p = pool(layer);
  const size_t kb = static_cast<size_t>(p.k_row_bytes()), vb = static_cast<size_t>(p.v_row_bytes());
  const PageId src = page(layer, head, from >> kPageShift), dst = page(layer, head, to >> kPageShift);
  const int64_t rs = from & (kPageRows - 1), rd = to & (kPageRows - 1);
  std::memcpy(p.k_rows(dst) + rd * kb, p.k_rows(src) + rs * kb, kb);
  std::memcpy(p.v_rows(dst) + rd * vb, p.v_rows(src) + rs * vb, vb);
  p.positions(dst)[rd] = p.positions(src)[rs];
}

void KvSequence::erase(int64_t begin, int64_t end) {
  if (begin < 0 || begin > end || end > size_)
    throw std::out_of_range(fmt::format("KV sequence holds {} slots, asked to erase [{}, {})", size_, begin, end));
  if (begin == end) return;
  require_all_held("erase");
  const int64_t kept = size_ - (end - begin);
  for (int64_t i = begin / kPageRows; i < pages_for(kept); ++i) own_pages(i);
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t s = end; s < size_; ++s) move_row(l, h, s, s - (end - begin));
  truncate(kept);
}

void KvSequence::compact(int32_t layer, int32_t head, std::span<const int64_t> slots) {
  require_all_held("compact");
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t from = slots[i], to = static_cast<int64_t>(i);
    if (from < to || from >= size_ || (i > 0 && from <= slots[i - 1]))
      throw std::invalid_argument("KV sequence: compact needs ascending slots it holds");
    if (from == to) continue;
    if (pool(layer).refs(page(layer, head, to >> kPageShift)) > 1) own_pages(to >> kPageShift);
    move_row(layer, head, from, to);
  }
}

int32_t KvSequence::position(int64_t slot) const {
  for (int32_t l = 0; l < n_layer_; ++l)  // a layer that still holds the slot
    if ((slot >> kPageShift) >= first_page(l))
      return pool(l).positions(page(l, 0, slot >> kPageShift))[slot & (kPageRows - 1)];
  throw std::out_of_range(fmt::format("KV sequence: slot {} was released by every layer", slot));
}

void* KvSequence::k_row(int32_t layer, int32_t head, int64_t slot) {
  KvPool& p = pool(layer);
  return p.k_rows(page(layer, head, slot >> kPageShift)) + (slot & (kPageRows - 1)) * p.k_row_bytes();
}

void* KvSequence::v_row(int32_t layer, int32_t head, int64_t slot) {
  KvPool& p = pool(layer);
  return p.v_rows(page(layer, head, slot >> kPageShift)) + (slot & (kPageRows - 1)) * p.v_row_bytes();
}

kernels::KvView KvSequence::view(int32_t layer) const {
  kernels::KvView v = pool(layer).view_base();
  v.page_ids = tables_[static_cast<size_t>(layer)].data();
  v.pages_per_head = table_pages();
  v.n_keys = size_;
  v.first_key = std::min(first_page(layer) * kPageRows, size_);
  return v;
}

int64_t KvSequence::pages_held() const {
  int64_t pages = 0;
  for (int32_t l = 0; l < n_layer_; ++l) pages += (pages_for(size_) - first_page(l)) * n_head_kv_;
  return pages;
}

size_t KvSequence::held_bytes() const {
  size_t bytes = 0;
  for (int32_t l = 0; l < n_layer_; ++l)
    bytes += static_cast<size_t>((pages_for(size_) - first_page(l)) * n_head_kv_) * pool(l).page_bytes();
  return bytes;
}

}  // namespace skim::kv
