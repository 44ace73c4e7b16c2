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
  sink_k_.resize(static_cast<size_t>(n_layer_));
  sink_v_.resize(static_cast<size_t>(n_layer_));
  sink_base_.assign(static_cast<size_t>(n_layer_), 0);
  const auto quantized = [](kernels::KvDType t) {
    return t != kernels::KvDType::F16 && t != kernels::KvDType::BF16 && t != kernels::KvDType::F32;
  };
  for (int32_t l = 0; l < n_layer_; ++l) {
    quantized_k_.push_back(f16_sinks_ > 0 && quantized(format(l).k));
    quantized_v_.push_back(f16_sinks_ > 0 && quantized(format(l).v));
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
      quantized_v_(std::move(other.quantized_v_)), sink_k_(std::move(other.sink_k_)), sink_v_(std::move(other.sink_v_)),
      sink_base_(std::move(other.sink_base_)), evicted_(other.evicted_) {
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
  copy.sink_k_ = sink_k_;
  copy.sink_v_ = sink_v_;
  copy.sink_base_ = sink_base_;
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
  resize_sinks();
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

uint16_t* KvSequence::sink_rows(int32_t layer, bool values) {
  auto& rows = values ? sink_v_[static_cast<size_t>(layer)] : sink_k_[static_cast<size_t>(layer)];
  return rows.empty() ? nullptr : rows.data();
}

uint16_t* KvSequence::sink_row(int32_t layer, bool values, int32_t head, int64_t slot) {
  uint16_t* rows = sink_rows(layer, values);
  return rows ? rows + ((slot - sink_base(layer)) * n_head_kv_ + head) * head_dim(layer) : nullptr;
}

void KvSequence::resize_sinks() {
  for (int32_t l = 0; l < n_layer_; ++l) {
    const size_t halves = size_ > 0 ? static_cast<size_t>(f16_sinks_) * n_head_kv_ * head_dim(l) : 0;
    if (quantized_k_[static_cast<size_t>(l)]) sink_k_[static_cast<size_t>(l)].resize(halves);
    if (quantized_v_[static_cast<size_t>(l)]) sink_v_[static_cast<size_t>(l)].resize(halves);
  }
}

// A slot's row in the f16 copies of the sides that keep them (and in the page
// as well, for when the row moves past the sinks).
void KvSequence::store_sink_row(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v) {
  if (slot < sink_base(layer) || slot >= sink_base(layer) + sink_slots(layer)) return;
  if (uint16_t* row = sink_row(layer, false, head, slot)) kernels::encode_kv_row(k, kernels::KvDType::F16, head_dim(layer), row);
  if (uint16_t* row = sink_row(layer, true, head, slot)) kernels::encode_kv_row(v, kernels::KvDType::F16, head_dim(layer), row);
}

void KvSequence::store_row(int32_t layer, int32_t head, int64_t slot, const float* k, const float* v) {
  const KvFormat f = format(layer);
  store_sink_row(layer, head, slot, k, v);
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
  resize_sinks();
  if (n == 0) {
    std::fill(offset_set_.begin(), offset_set_.end(), 0);
    std::fill(first_slot_.begin(), first_slot_.end(), 0);
    std::fill(sink_base_.begin(), sink_base_.end(), 0);
    evicted_ = false;
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
}

KvSequence::SinkCopies KvSequence::sink_copies(int32_t layer) const {
  return {sink_k_[static_cast<size_t>(layer)], sink_v_[static_cast<size_t>(layer)], sink_base(layer)};
}

void KvSequence::rebuild_sinks(int32_t layer, int64_t base, const SinkCopies& before,
                               const std::function<int64_t(int32_t head, int64_t j)>& came_from) {
  sink_base_[static_cast<size_t>(layer)] = base;
  const int64_t n = std::min(sink_slots(layer), size_ - base);
  if (n <= 0) return;
  const int32_t d = head_dim(layer);
  std::vector<float> row(static_cast<size_t>(d));
  kernels::KvView pages = view(layer);
  pages.sink_end = 0;  // the page rows, not the copies being rebuilt
  for (int32_t h = 0; h < n_head_kv_; ++h)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t from = came_from(h, j), old = from - before.base;
      for (const bool values : {false, true}) {
        uint16_t* dst = sink_row(layer, values, h, base + j);
        if (!dst) continue;
        if (old >= 0 && old < sink_slots(layer)) {
          const std::vector<uint16_t>& copies = values ? before.v : before.k;
          std::memcpy(dst, copies.data() + (old * n_head_kv_ + h) * d, d * sizeof(uint16_t));
        } else {
          if (values) kernels::read_v_rows(pages, h, base + j, 1, d, row.data());
          else kernels::read_k_rows(pages, h, base + j, 1, d, row.data());
          kernels::encode_kv_row(row.data(), kernels::KvDType::F16, d, dst);
        }
      }
    }
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
  std::vector<SinkCopies> before;
  for (int32_t l = 0; l < n_layer_; ++l) {
    before.push_back(sink_copies(l));
    for (int32_t h = 0; h < n_head_kv_; ++h)
      for (int64_t s = end; s < size_; ++s) move_row(l, h, s, s - (end - begin));
  }
  truncate(kept);
  for (int32_t l = 0; l < n_layer_; ++l)
    if (begin < sink_slots(l))
      rebuild_sinks(l, 0, before[static_cast<size_t>(l)], [&](int32_t, int64_t j) { return j < begin ? j : j + (end - begin); });
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
  std::vector<SinkCopies> before;
  for (int32_t l = 0; l < n_layer_; ++l) before.push_back(sink_copies(l));
  for (int32_t l = 0; l < n_layer_; ++l) {
    if (count[l] < size_ - first_slot(l)) evicted_ = true;
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
    const auto& heads = kept[static_cast<size_t>(l)];
    const int64_t old_base = before[static_cast<size_t>(l)].base, first = end - count[l];
    // The copies follow the rows that had them. A layer that kept none of
    // those rows and no longer holds the copied slots (a sliding window's)
    // keeps its base: new copies would only repeat page values.
    const bool carries_copies = std::any_of(heads.begin(), heads.end(), [&](const std::vector<int64_t>& h) {
      return !h.empty() && h.front() < old_base + sink_slots(l);
    });
    if (sink_slots(l) > 0 && (carries_copies || first < old_base + sink_slots(l)))
      rebuild_sinks(l, first, before[static_cast<size_t>(l)], [&](int32_t h, int64_t j) {
        return heads[static_cast<size_t>(h)][static_cast<size_t>(j)];
      });
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
  store_sink_row(layer, head, slot, k, v);
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
  if (sink_slots(layer) > 0) {
    v.sink_begin = sink_base(layer);
    v.sink_end = std::min(sink_base(layer) + sink_slots(layer), size_);
    v.k_sink = sink_k_[static_cast<size_t>(layer)].empty() ? nullptr : sink_k_[static_cast<size_t>(layer)].data();
    v.v_sink = sink_v_[static_cast<size_t>(layer)].empty() ? nullptr : sink_v_[static_cast<size_t>(layer)].data();
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
             2 * sizeof(uint16_t) * stage_k_[static_cast<size_t>(l)].size() + sink_bytes(l);
  return bytes;
}

}  // namespace skim::kv
