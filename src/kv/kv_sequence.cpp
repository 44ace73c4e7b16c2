#include "kv/kv_sequence.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

#include "kernels/kv_codec.h"

namespace skim::kv {

KvSequence::KvSequence(std::vector<KvPool*> layer_pools, int32_t n_head_kv, int64_t max_slots, int32_t f16_sinks)
    : pools_(std::move(layer_pools)), n_layer_(static_cast<int32_t>(pools_.size())), n_head_kv_(n_head_kv),
      max_slots_(max_slots), f16_sinks_(static_cast<int32_t>(std::min<int64_t>(f16_sinks, max_slots))) {
  if (n_layer_ <= 0 || n_head_kv <= 0 || max_slots <= 0) throw std::invalid_argument("KV sequence: bad shape");
  if (f16_sinks < 0) throw std::invalid_argument(fmt::format("f16 sink rows: {} is negative", f16_sinks));
  tables_.assign(static_cast<size_t>(n_layer_), std::vector<PageId>(static_cast<size_t>(n_head_kv * table_pages())));
  offsets_.assign(static_cast<size_t>(n_layer_) * n_head_kv * pools_.front()->head_dim(), 0.0f);
  offset_set_.assign(static_cast<size_t>(n_layer_), 0);
  first_slot_.assign(static_cast<size_t>(n_layer_), 0);
  stage_slot0_.assign(static_cast<size_t>(n_layer_), 0);
  stage_k_.resize(static_cast<size_t>(n_layer_));
  stage_v_.resize(static_cast<size_t>(n_layer_));
  copies_.resize(static_cast<size_t>(n_layer_));
  for (int32_t l = 0; l < n_layer_; ++l) {
    quantized_k_.push_back(kernels::kv_quantized(format(l).k));
    quantized_v_.push_back(kernels::kv_quantized(format(l).v));
  }
}

KvSequence::KvSequence(KvPool& pool, int32_t n_layer, int32_t n_head_kv, int64_t max_slots, int32_t f16_sinks)
    : KvSequence(std::vector<KvPool*>(static_cast<size_t>(std::max(n_layer, 0)), &pool), n_head_kv, max_slots,
                 f16_sinks) {}

KvSequence::~KvSequence() {
  if (!pools_.empty()) truncate(0);
}

KvSequence::KvSequence(KvSequence&& other) noexcept
    : pools_(std::move(other.pools_)), n_layer_(other.n_layer_), n_head_kv_(other.n_head_kv_),
      max_slots_(other.max_slots_), size_(other.size_), tables_(std::move(other.tables_)),
      offsets_(std::move(other.offsets_)), offset_set_(std::move(other.offset_set_)),
      first_slot_(std::move(other.first_slot_)), stage_slot0_(std::move(other.stage_slot0_)),
      stage_k_(std::move(other.stage_k_)), stage_v_(std::move(other.stage_v_)),
      row_scores_(std::move(other.row_scores_)), f16_sinks_(other.f16_sinks_), quantized_k_(std::move(other.quantized_k_)),
      quantized_v_(std::move(other.quantized_v_)), copies_(std::move(other.copies_)), keep_originals_(other.keep_originals_),
      original_shares_(std::move(other.original_shares_)), demoted_(other.demoted_), evicted_(other.evicted_) {
  other.pools_.clear();
  other.size_ = 0;
}

KvSequence KvSequence::fork() const {
  KvSequence copy(pools_, n_head_kv_, max_slots_, f16_sinks_);
  copy.tables_ = tables_;
  copy.offsets_ = offsets_;
  copy.offset_set_ = offset_set_;
  copy.first_slot_ = first_slot_;
  copy.stage_slot0_ = stage_slot0_;
  copy.stage_k_ = stage_k_;
  copy.stage_v_ = stage_v_;
  copy.row_scores_ = row_scores_;
  copy.copies_ = copies_;
  copy.keep_originals_ = keep_originals_;
  copy.original_shares_ = original_shares_;
  copy.demoted_ = demoted_;
  copy.evicted_ = evicted_;
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
    const size_t bytes = p.rows_bytes();
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
  if (!row_scores_.empty())
    for (int32_t l = 0; l < n_layer_; ++l)
      for (int32_t h = 0; h < n_head_kv_; ++h) std::fill_n(row_scores(l, h) + first, n, 0.0f);
  size_ += n;
  resize_stages();
  // Copies are allocated here, so rows can be stored from several threads.
  const int64_t copied_end = keep_originals_ ? size_ : std::min<int64_t>(size_, f16_sinks_);
  for (int32_t l = 0; l < n_layer_; ++l)
    if (keeps_copies(l) && first < copied_end) allocate_copies(l, first, copied_end);
  return first;
}

void KvSequence::resize_stages() {
  for (int32_t l = 0; l < n_layer_; ++l) {
    if (!staged(l)) continue;
    const size_t halves = static_cast<size_t>((size_ - stage_slot0_[static_cast<size_t>(l)]) * stage_row_halves(l));
    stage_k_[static_cast<size_t>(l)].resize(halves);
    stage_v_[static_cast<size_t>(l)].resize(halves);
  }
}

uint16_t* KvSequence::stage_row(int32_t layer, bool values, int32_t head, int64_t slot) {
  auto& stage = values ? stage_v_[static_cast<size_t>(layer)] : stage_k_[static_cast<size_t>(layer)];
  return stage.data() + (slot - stage_slot0_[static_cast<size_t>(layer)]) * stage_row_halves(layer) +
         static_cast<int64_t>(head) * head_dim(layer);
}

int32_t KvSequence::copy_of(int32_t layer, int32_t head, int64_t slot) const {
  const std::vector<int32_t>& index = copies_[static_cast<size_t>(layer)].index;
  const size_t at = static_cast<size_t>(slot * n_head_kv_ + head);
  return at < index.size() ? index[at] : -1;
}

void KvSequence::allocate_copies(int32_t layer, int64_t begin, int64_t end) {
  RowCopies& c = copies_[static_cast<size_t>(layer)];
  const size_t d = static_cast<size_t>(head_dim(layer));
  if (c.index.size() < static_cast<size_t>(end * n_head_kv_)) c.index.resize(static_cast<size_t>(end * n_head_kv_), -1);
  for (int64_t s = begin; s < end; ++s)
    for (int32_t h = 0; h < n_head_kv_; ++h) {
      int32_t number;
      if (!c.free.empty()) {
        number = c.free.back();
        c.free.pop_back();
      } else {
        number = static_cast<int32_t>(std::max(c.k.size(), c.v.size()) / d);
        if (quantized_k_[static_cast<size_t>(layer)]) c.k.resize(c.k.size() + d);
        if (quantized_v_[static_cast<size_t>(layer)]) c.v.resize(c.v.size() + d);
      }
      c.index[static_cast<size_t>(s * n_head_kv_ + h)] = number;
    }
}

void KvSequence::write_copy(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v) {
  const int32_t number = copy_of(layer, head, slot);
  if (number < 0) return;
  RowCopies& c = copies_[static_cast<size_t>(layer)];
  const int32_t d = head_dim(layer);
  const size_t row = static_cast<size_t>(number) * static_cast<size_t>(d);
  if (!c.k.empty()) kernels::encode_kv_row(k, kernels::KvDType::F16, d, c.k.data() + row);
  if (!c.v.empty()) kernels::encode_kv_row(v, kernels::KvDType::F16, d, c.v.data() + row);
}

bool KvSequence::drop_copy(int32_t layer, int32_t head, int64_t slot) {
  const int32_t number = copy_of(layer, head, slot);
  if (number < 0) return false;
  RowCopies& c = copies_[static_cast<size_t>(layer)];
  c.index[static_cast<size_t>(slot * n_head_kv_ + head)] = -1;
  c.free.push_back(number);
  return true;
}

void KvSequence::drop_copies_of_slots(int32_t layer, int64_t begin, int64_t end) {
  const int64_t copied = static_cast<int64_t>(copies_[static_cast<size_t>(layer)].index.size()) / n_head_kv_;
  for (int64_t s = begin; s < std::min(end, copied); ++s)
    for (int32_t h = 0; h < n_head_kv_; ++h) drop_copy(layer, h, s);
}

void KvSequence::drop_copies(int32_t layer, const std::vector<std::vector<int64_t>>& slots) {
  for (size_t h = 0; h < slots.size(); ++h)
    for (const int64_t s : slots[h])
      if (drop_copy(layer, static_cast<int32_t>(h), s)) demoted_ = true;
  compact_copies(layer);
}

void KvSequence::compact_copies(int32_t layer) {
  RowCopies& c = copies_[static_cast<size_t>(layer)];
  if (c.free.empty()) {
    while (!c.index.empty() && std::all_of(c.index.end() - n_head_kv_, c.index.end(), [](int32_t i) { return i < 0; }))
      c.index.resize(c.index.size() - static_cast<size_t>(n_head_kv_));
    return;
  }
  const size_t d = static_cast<size_t>(head_dim(layer));
  RowCopies dense;
  size_t used = 0;  // the index up to the last slot with a copy
  for (size_t at = 0; at < c.index.size(); ++at) {
    const int32_t old = c.index[at];
    if (old < 0) continue;
    used = at + 1;
    const auto next = static_cast<int32_t>(std::max(dense.k.size(), dense.v.size()) / d);
    if (!c.k.empty()) dense.k.insert(dense.k.end(), c.k.begin() + old * d, c.k.begin() + (old + 1) * d);
    if (!c.v.empty()) dense.v.insert(dense.v.end(), c.v.begin() + old * d, c.v.begin() + (old + 1) * d);
    c.index[at] = next;
  }
  dense.index.assign(c.index.begin(), c.index.begin() + static_cast<std::ptrdiff_t>((used + n_head_kv_ - 1) / n_head_kv_ * n_head_kv_));
  c = std::move(dense);
}

size_t KvSequence::copy_bytes(int32_t layer) const {
  const RowCopies& c = copies_[static_cast<size_t>(layer)];
  return sizeof(uint16_t) * (c.k.size() + c.v.size()) + sizeof(int32_t) * c.index.size();
}

int64_t KvSequence::copied_rows(int32_t layer) const {
  const RowCopies& c = copies_[static_cast<size_t>(layer)];
  return static_cast<int64_t>(std::max(c.k.size(), c.v.size()) / static_cast<size_t>(head_dim(layer)) - c.free.size());
}

void KvSequence::restore_row_copies(int32_t layer, RowCopies copies) {
  const size_t d = static_cast<size_t>(head_dim(layer));
  const size_t n = std::max(copies.k.size(), copies.v.size()) / d;
  std::vector<uint8_t> used(n, 0);  // each copy belongs to one row
  const bool fits = copies.free.empty() && copies.index.size() % static_cast<size_t>(n_head_kv_) == 0 &&
                    static_cast<int64_t>(copies.index.size()) <= size_ * n_head_kv_ &&
                    copies.k.size() == (quantized_k_[static_cast<size_t>(layer)] ? n * d : 0) &&
                    copies.v.size() == (quantized_v_[static_cast<size_t>(layer)] ? n * d : 0) &&
                    std::all_of(copies.index.begin(), copies.index.end(), [&](int32_t c) {
                      return c == -1 || (c >= 0 && c < static_cast<int32_t>(n) && used[static_cast<size_t>(c)]++ == 0);
                    });
  if (!fits) throw std::invalid_argument(fmt::format("layer {}'s f16 row copies do not fit its rows", layer));
  copies_[static_cast<size_t>(layer)] = std::move(copies);
}

void KvSequence::store_row(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v) {
  const KvFormat f = format(layer);
  write_copy(layer, head, slot, k, v);
  if (staged(layer) && slot >= stage_slot0_[static_cast<size_t>(layer)]) {
    kernels::encode_kv_row(k, kernels::KvDType::F16, head_dim(layer), stage_row(layer, false, head, slot));
    kernels::encode_kv_row(v, kernels::KvDType::F16, head_dim(layer), stage_row(layer, true, head, slot));
    return;
  }
  kernels::encode_kv_row(k, f.k, head_dim(layer), k_row(layer, head, slot));
  kernels::encode_kv_row(v, f.v, head_dim(layer), v_row(layer, head, slot));
}

void KvSequence::seal(int32_t layer) {
  if (!staged(layer)) return;
  int64_t& slot0 = stage_slot0_[static_cast<size_t>(layer)];
  const int64_t first = slot0;
  const int32_t d = head_dim(layer);
  const KvFormat f = format(layer);
  KvPool& p = pool(layer);
  const kernels::KvView staged_view = view(layer);  // reads the stage's rows as f32
  std::vector<float> k(static_cast<size_t>(kPageRows * d)), v(k.size());
  for (; slot0 + kPageRows <= size_; slot0 += kPageRows) {
    for (int32_t h = 0; h < n_head_kv_; ++h) {
      const PageId id = page(layer, h, slot0 >> kPageShift);
      kernels::read_k_rows(staged_view, h, slot0, kPageRows, d, k.data());
      if (kernels::kv_grouped(f.k)) {
        kernels::encode_kv_key_page(k.data(), kPageRows, f.k, d, p.k_row_bytes(), p.k_rows(id),
                                    p.k_rows(id) + kPageRows * p.k_row_bytes());
      } else {
        for (int64_t r = 0; r < kPageRows; ++r)
          kernels::encode_kv_row(k.data() + r * d, f.k, d, p.k_rows(id) + r * p.k_row_bytes());
      }
      kernels::read_v_rows(staged_view, h, slot0, kPageRows, d, v.data());
      for (int64_t r = 0; r < kPageRows; ++r)
        kernels::encode_kv_row(v.data() + r * d, f.v, d, p.v_rows(id) + r * p.v_row_bytes());
    }
  }
  if (slot0 == first) return;
  const auto drop = static_cast<std::ptrdiff_t>((slot0 - first) * stage_row_halves(layer));
  stage_k_[static_cast<size_t>(layer)].erase(stage_k_[static_cast<size_t>(layer)].begin(),
                                             stage_k_[static_cast<size_t>(layer)].begin() + drop);
  stage_v_[static_cast<size_t>(layer)].erase(stage_v_[static_cast<size_t>(layer)].begin(),
                                             stage_v_[static_cast<size_t>(layer)].begin() + drop);
}

void KvSequence::truncate(int64_t n) {
  if (n < 0 || n > size_) throw std::out_of_range(fmt::format("KV sequence holds {} slots, asked to keep {}", size_, n));
  if (n > 0 && n <= first_held())
    throw std::out_of_range(fmt::format("KV sequence: slots before {} were released, asked to keep {}", first_held(), n));
  for (int32_t l = 0; l < n_layer_; ++l) {
    int64_t& slot0 = stage_slot0_[static_cast<size_t>(l)];
    if (!staged(l) || n >= slot0) continue;
    // The page that becomes the last one again goes back to the stage, its
    // rows as decoded: the next seal quantizes them with the rows that follow.
    const int64_t begin = n & ~static_cast<int64_t>(kPageRows - 1);
    const int32_t d = head_dim(l);
    std::vector<uint16_t> k(static_cast<size_t>((n - begin) * stage_row_halves(l))), v(k.size());
    std::vector<float> row(static_cast<size_t>(d));
    const kernels::KvView sealed = view(l);
    for (int64_t s = begin; s < n; ++s)
      for (int32_t h = 0; h < n_head_kv_; ++h) {
        const size_t at = static_cast<size_t>((s - begin) * stage_row_halves(l) + static_cast<int64_t>(h) * d);
        kernels::read_k_rows(sealed, h, s, 1, d, row.data());
        kernels::encode_kv_row(row.data(), kernels::KvDType::F16, d, k.data() + at);
        kernels::read_v_rows(sealed, h, s, 1, d, row.data());
        kernels::encode_kv_row(row.data(), kernels::KvDType::F16, d, v.data() + at);
      }
    stage_k_[static_cast<size_t>(l)] = std::move(k);
    stage_v_[static_cast<size_t>(l)] = std::move(v);
    slot0 = begin;
  }
  for (int32_t l = 0; l < n_layer_; ++l)
    for (int64_t i = std::max(pages_for(n), first_page(l)); i < pages_for(size_); ++i)
      for (int32_t h = 0; h < n_head_kv_; ++h) pool(l).release(page(l, h, i));
  size_ = n;
  resize_stages();
  for (int32_t l = 0; l < n_layer_; ++l) {
    drop_copies_of_slots(l, n, INT64_MAX);
    compact_copies(l);
  }
  if (n == 0) {
    std::fill(offset_set_.begin(), offset_set_.end(), 0);
    std::fill(first_slot_.begin(), first_slot_.end(), 0);
    evicted_ = false;
    demoted_ = false;
    keep_originals_ = false;
    original_shares_.clear();
    row_scores_.clear();
  }
}

void KvSequence::release_before(int32_t layer, int64_t slot) {
  // Never the last slot: it carries the sequence's last position.
  const int64_t to = std::min(slot, size_ - 1);
  int64_t& first = first_slot_[static_cast<size_t>(layer)];
  if (to <= first) return;
  for (int64_t i = first >> kPageShift; i < to >> kPageShift; ++i)
    for (int32_t h = 0; h < n_head_kv_; ++h) pool(layer).release(page(layer, h, i));
  drop_copies_of_slots(layer, first, to);
  compact_copies(layer);
  first = to;
}

int64_t KvSequence::first_held() const { return *std::max_element(first_slot_.begin(), first_slot_.end()); }

void KvSequence::require_row_formats(const char* what) const {
  for (int32_t l = 0; l < n_layer_; ++l)
    if (staged(l))
      throw std::invalid_argument(fmt::format(
          "KV cache: cannot {} rows of KIVI layers (their keys are quantized per channel over a page of rows)", what));
}

void KvSequence::require_all_held(const char* what) const {
  if (first_held() > 0)
    throw std::logic_error(fmt::format("KV sequence: cannot {} rows of a sequence some of whose layers gave back their first slots", what));
}

void KvSequence::move_row(int32_t layer, int32_t head, int64_t from, int64_t to) {
  KvPool& p = pool(layer);
  const size_t kb = static_cast<size_t>(p.k_row_bytes()), vb = static_cast<size_t>(p.v_row_bytes());
  const PageId src = page(layer, head, from >> kPageShift), dst = page(layer, head, to >> kPageShift);
  const int64_t rs = from & (kPageRows - 1), rd = to & (kPageRows - 1);
  std::memcpy(p.k_rows(dst) + rd * kb, p.k_rows(src) + rs * kb, kb);
  std::memcpy(p.v_rows(dst) + rd * vb, p.v_rows(src) + rs * vb, vb);
  p.positions(dst)[rd] = p.positions(src)[rs];
  if (!row_scores_.empty()) row_scores(layer, head)[to] = row_scores(layer, head)[from];
  // The copy moves too (the row that was at `to` has moved or gone already, with its copy).
  const int32_t copy = copy_of(layer, head, from);
  if (copy < 0) return;
  std::vector<int32_t>& index = copies_[static_cast<size_t>(layer)].index;
  const auto at = [&](int64_t slot) { return static_cast<size_t>(slot * n_head_kv_ + head); };
  if (index.size() <= at(to)) index.resize(static_cast<size_t>((to + 1) * n_head_kv_), -1);
  index[at(from)] = -1;
  index[at(to)] = copy;
}

float* KvSequence::row_scores(int32_t layer, int32_t head) {
  if (row_scores_.empty()) row_scores_.assign(static_cast<size_t>(n_layer_) * n_head_kv_ * max_slots_, 0.0f);
  return row_scores_.data() + (static_cast<size_t>(layer) * n_head_kv_ + head) * max_slots_;
}

const float* KvSequence::row_scores(int32_t layer, int32_t head) const {
  return row_scores_.empty() ? nullptr : row_scores_.data() + (static_cast<size_t>(layer) * n_head_kv_ + head) * max_slots_;
}

void KvSequence::erase(int64_t begin, int64_t end) {
  if (begin < 0 || begin > end || end > size_)
    throw std::out_of_range(fmt::format("KV sequence holds {} slots, asked to erase [{}, {})", size_, begin, end));
  if (begin == end) return;
  require_all_held("erase");
  require_row_formats("erase");
  const int64_t kept = size_ - (end - begin);
  for (int64_t i = begin / kPageRows; i < pages_for(kept); ++i) own_pages(i);
  for (int32_t l = 0; l < n_layer_; ++l) {
    drop_copies_of_slots(l, begin, end);
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t s = end; s < size_; ++s) move_row(l, h, s, s - (end - begin));
  }
  truncate(kept);
}

void KvSequence::move_rows(int32_t layer, int32_t head, std::span<const int64_t> slots, int64_t first) {
  const int64_t n = static_cast<int64_t>(slots.size());
  const auto move = [&](int64_t i) {
    const int64_t from = slots[static_cast<size_t>(i)], to = first + i;
    if (from == to) return;
    if (pool(layer).refs(page(layer, head, to >> kPageShift)) > 1) own_pages(to >> kPageShift);
    move_row(layer, head, from, to);
  };
  // slots[i] - (first + i) never decreases: rows moving down go first, in
  // order, then rows moving up, from the last; neither overwrites a row still to move.
  int64_t up = 0;
  while (up < n && slots[static_cast<size_t>(up)] < first + up) ++up;
  for (int64_t i = up; i < n; ++i) move(i);
  for (int64_t i = up - 1; i >= 0; --i) move(i);
}

void KvSequence::keep_rows(const std::vector<std::vector<std::vector<int64_t>>>& kept) {
  if (static_cast<int32_t>(kept.size()) != n_layer_) throw std::invalid_argument("KV sequence: keep_rows needs every layer");
  require_row_formats("evict");
  std::vector<int64_t> count(static_cast<size_t>(n_layer_));
  int64_t end = 0;
  for (int32_t l = 0; l < n_layer_; ++l) {
    const auto& heads = kept[static_cast<size_t>(l)];
    if (static_cast<int32_t>(heads.size()) != n_head_kv_)
      throw std::invalid_argument("KV sequence: keep_rows needs every KV head of a layer");
    count[l] = static_cast<int64_t>(heads.front().size());
    for (const auto& h : heads) {
      if (static_cast<int64_t>(h.size()) != count[l] || (size_ > 0 && h.empty()))
        throw std::invalid_argument("KV sequence: keep_rows keeps the same number of rows, at least one, in every head of a layer");
      for (size_t i = 0; i < h.size(); ++i)
        if (h[i] < first_slot(l) || h[i] >= size_ || (i > 0 && h[i] <= h[i - 1]))
          throw std::invalid_argument("KV sequence: keep_rows needs ascending slots the layer holds");
    }
    end = std::max(end, count[l]);
  }
  // Every layer's rows end at `end`, the largest count: a layer whose rows
  // then start before its first held slot takes pages back for them (all its
  // rows move down), checked first, so a full pool changes nothing.
  std::map<const KvPool*, int64_t> pages_needed;
  for (int32_t l = 0; l < n_layer_; ++l)
    pages_needed[pools_[static_cast<size_t>(l)]] += std::max<int64_t>(0, first_page(l) - ((end - count[l]) >> kPageShift)) * n_head_kv_;
  for (const auto& [p, needed] : pages_needed)
    if (p->pages_in_use() + needed > p->max_pages())
      throw std::length_error(fmt::format("the KV pool is full: {} more pages of {} tokens needed, {} of {} in use", needed,
                                          kPageRows, p->pages_in_use(), p->max_pages()));
  for (int32_t l = 0; l < n_layer_; ++l) {
    if (count[l] < size_ - first_slot(l)) evicted_ = true;
    for (int32_t h = 0; h < n_head_kv_ && !copies_[static_cast<size_t>(l)].index.empty(); ++h) {
      // The copies of evicted rows go first: kept rows move over their slots.
      const std::vector<int64_t>& k = kept[static_cast<size_t>(l)][static_cast<size_t>(h)];
      for (int64_t s = first_slot(l); s < size_; ++s)
        if (!std::binary_search(k.begin(), k.end(), s)) drop_copy(l, h, s);
    }
    const int64_t dst = end - count[l];
    if (dst < first_slot(l)) {
      for (int64_t i = dst >> kPageShift; i < first_page(l); ++i)
        for (int32_t h = 0; h < n_head_kv_; ++h) page(l, h, i) = pool(l).allocate();
      first_slot_[static_cast<size_t>(l)] = dst;
    }
    for (int32_t h = 0; h < n_head_kv_; ++h) move_rows(l, h, kept[static_cast<size_t>(l)][static_cast<size_t>(h)], end - count[l]);
    for (int64_t i = std::max(pages_for(end), first_page(l)); i < pages_for(size_); ++i)
      for (int32_t h = 0; h < n_head_kv_; ++h) pool(l).release(page(l, h, i));
  }
  size_ = end;
  for (int32_t l = 0; l < n_layer_; ++l) {
    release_before(l, end - count[l]);
    compact_copies(l);
  }
}

void KvSequence::write_row(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v) {
  if (slot < first_slot(layer) || slot >= size_)
    throw std::out_of_range(fmt::format("KV sequence: layer {} does not hold slot {}", layer, slot));
  require_row_formats("rewrite");
  if (pool(layer).refs(page(layer, head, slot >> kPageShift)) > 1) own_pages(slot >> kPageShift);
  const KvFormat f = format(layer);
  kernels::encode_kv_row(k, f.k, head_dim(layer), k_row(layer, head, slot));
  kernels::encode_kv_row(v, f.v, head_dim(layer), v_row(layer, head, slot));
  write_copy(layer, head, slot, k, v);
}

int32_t KvSequence::position(int64_t slot) const {
  for (int32_t l = 0; l < n_layer_; ++l)  // a layer that still holds the slot
    if (slot >= first_slot(l))
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
  v.first_key = std::min(first_slot(layer), size_);
  if (staged(layer)) {
    v.stage_slot0 = stage_slot0_[static_cast<size_t>(layer)];
    v.k_stage = stage_k_[static_cast<size_t>(layer)].data();
    v.v_stage = stage_v_[static_cast<size_t>(layer)].data();
  }
  const RowCopies& c = copies_[static_cast<size_t>(layer)];
  if (!c.index.empty()) {
    v.copy_index = c.index.data();
    v.copy_slots = static_cast<int64_t>(c.index.size()) / n_head_kv_;
    v.copy_heads = n_head_kv_;
    v.k_copies = c.k.empty() ? nullptr : c.k.data();
    v.v_copies = c.v.empty() ? nullptr : c.v.data();
  }
  v.stage_row_stride = stage_row_halves(layer);
  v.stage_head_dim = head_dim(layer);
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
    bytes += static_cast<size_t>((pages_for(size_) - first_page(l)) * n_head_kv_) * pool(l).page_bytes() +
             2 * sizeof(uint16_t) * stage_k_[static_cast<size_t>(l)].size() + copy_bytes(l);
  return bytes;
}

}  // namespace skim::kv
