#include "kernels/attention_plan.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace skim::kernels {
namespace {

[[noreturn]] void fail(const std::string& what) { throw PlanError("attention plan: " + what); }

std::string where(int32_t h, int64_t t) {
  return "head " + std::to_string(h) + " tile " + std::to_string(t) + ": ";
}

}  // namespace

int64_t Plan::head_rows(int32_t h) const {
  if (!has_row_map()) return n_rows;
  return row_map_ptr[h + 1] - row_map_ptr[h];
}

int64_t Plan::tile_last_position(int32_t h, int64_t t) const {
  const int64_t last_local = std::min<int64_t>((t + 1) * tile_rows, head_rows(h)) - 1;
  return q_pos0 + row_of(h, last_local);
}

int64_t Plan::tile_first_position(int32_t h, int64_t t) const {
  return q_pos0 + row_of(h, t * tile_rows);
}

int64_t Plan::item_keys(int64_t item) const {
  int64_t keys = col_ptr[item + 1] - col_ptr[item];
  for (int64_t r = range_ptr[item]; r < range_ptr[item + 1]; ++r) keys += ranges[r].end - ranges[r].begin;
  return keys;
}

int64_t Plan::listed_pairs() const {
  int64_t pairs = 0;
  std::vector<int64_t> pos;
  for (int32_t h = 0; h < n_heads; ++h) {
    const int64_t rows = head_rows(h);
    for (int64_t t = 0; t < head_tiles(h); ++t) {
      pos.clear();
      for (int64_t i = t * tile_rows; i < std::min<int64_t>(rows, (t + 1) * tile_rows); ++i)
        pos.push_back(q_slot0 + row_of(h, i));  // the slot of the row's own key
      const int64_t item = head_item_begin[h] + t;
      // Keys at or before every row's position count for all rows; only the
      // few near the diagonal need the per-row causal cut.
      auto count = [&](int64_t begin, int64_t end) {
        if (end <= pos.front() + 1) return (end - begin) * static_cast<int64_t>(pos.size());
        int64_t n = 0;
        for (int64_t p : pos) n += std::max<int64_t>(0, std::min(end, p + 1) - begin);
        return n;
      };
      int64_t keys = 0;
      for (int64_t r = range_ptr[item]; r < range_ptr[item + 1]; ++r) keys += count(ranges[r].begin, ranges[r].end);
      for (int64_t c = col_ptr[item]; c < col_ptr[item + 1]; ++c) keys += count(cols[c], cols[c] + 1);
      pairs += keys * group_size;
    }
  }
  return pairs;
}

void validate_plan_structure(const Plan& p) {
  if (p.n_heads <= 0) fail("n_heads must be positive (got " + std::to_string(p.n_heads) + ")");
  if (p.group_size <= 0) fail("group_size must be positive (got " + std::to_string(p.group_size) + ")");
  if (p.tile_rows <= 0) fail("tile_rows must be positive (got " + std::to_string(p.tile_rows) + ")");
  if (p.n_rows < 0) fail("n_rows is negative");
  if (p.q_pos0 < 0) fail("q_pos0 is negative");
  if (p.q_slot0 < 0) fail("q_slot0 is negative");
  const size_t heads = static_cast<size_t>(p.n_heads);
  if (p.has_row_map()) {
    if (p.row_map_ptr.size() != heads + 1) fail("row_map_ptr must have n_heads + 1 entries");
    if (p.row_map_ptr.front() != 0 || p.row_map_ptr.back() != static_cast<int64_t>(p.row_map.size()))
      fail("row_map_ptr must start at 0 and end at row_map.size()");
    for (int32_t h = 0; h < p.n_heads; ++h) {
      if (p.row_map_ptr[h + 1] < p.row_map_ptr[h]) fail("row_map_ptr decreases at head " + std::to_string(h));
      int64_t prev = -1;
      for (int64_t i = p.row_map_ptr[h]; i < p.row_map_ptr[h + 1]; ++i) {
        const int64_t row = p.row_map[i];
        if (row <= prev || row >= p.n_rows)
          fail("row map of head " + std::to_string(h) + " must be strictly increasing rows in [0, n_rows); found " +
               std::to_string(row));
        prev = row;
      }
    }
  } else if (!p.row_map.empty()) {
    fail("row_map given without row_map_ptr");
  }
  if (p.head_item_begin.size() != heads + 1) fail("head_item_begin must have n_heads + 1 entries");
  if (p.head_item_begin.front() != 0) fail("head_item_begin must start at 0");
  for (int32_t h = 0; h < p.n_heads; ++h) {
    const int64_t items = p.head_item_begin[h + 1] - p.head_item_begin[h];
    if (items != p.head_tiles(h))
      fail("head " + std::to_string(h) + " has " + std::to_string(items) + " items but " +
           std::to_string(p.head_tiles(h)) + " query tiles");
  }
  const size_t n_items = static_cast<size_t>(p.n_items());
  if (p.range_ptr.size() != n_items + 1) fail("range_ptr must have n_items + 1 entries");
  if (p.col_ptr.size() != n_items + 1) fail("col_ptr must have n_items + 1 entries");
  if (p.range_ptr.front() != 0 || p.range_ptr.back() != static_cast<int64_t>(p.ranges.size()))
    fail("range_ptr must start at 0 and end at ranges.size()");
  if (p.col_ptr.front() != 0 || p.col_ptr.back() != static_cast<int64_t>(p.cols.size()))
    fail("col_ptr must start at 0 and end at cols.size()");
  for (size_t i = 0; i < n_items; ++i) {
    if (p.range_ptr[i + 1] < p.range_ptr[i]) fail("range_ptr decreases at item " + std::to_string(i));
    if (p.col_ptr[i + 1] < p.col_ptr[i]) fail("col_ptr decreases at item " + std::to_string(i));
  }
  if (!p.range_scores.empty() && p.range_scores.size() != p.ranges.size())
    fail("range_scores must be empty or have one score per range");
  if (!p.col_scores.empty() && p.col_scores.size() != p.cols.size())
    fail("col_scores must be empty or have one score per column");
  if (p.has_scores() && (p.range_scores.size() != p.ranges.size() || p.col_scores.size() != p.cols.size()))
    fail("a scored plan needs scores for all ranges and all columns");
  if (!p.skip_lambda.empty()) {
    if (p.skip_lambda.size() != heads) fail("skip_lambda must be empty or have one value per head");
    for (float l : p.skip_lambda)
      if (!(l >= 0.0f) || !std::isfinite(l)) fail("skip_lambda must be finite and >= 0");
  }
  if (!p.stop_theta.empty()) {
    if (p.stop_theta.size() != heads) fail("stop_theta must be empty or have one value per head");
    for (float t : p.stop_theta)
      if (std::isnan(t)) fail("stop_theta must not be NaN");
  }
  if (!p.stop_mass.empty()) {
    if (p.stop_mass.size() != heads) fail("stop_mass must be empty or have one value per head");
    for (float e : p.stop_mass)
      if (!(e >= 0.0f && e <= 1.0f)) fail("stop_mass must be in [0, 1]");
  }
}

void validate_plan(const Plan& p, int64_t n_keys, bool causal) {
  KvView kv;
  kv.n_keys = n_keys;
  validate_plan(p, kv, 1, causal);
}

void validate_plan(const Plan& p, const KvView& kv, int32_t n_kv_heads, bool causal) {
  validate_plan_structure(p);
  const int64_t n_keys = kv.n_keys;
  const int32_t q_per_kv = p.group_size == 1 ? std::max(1, p.n_heads / std::max(1, n_kv_heads)) : 1;
  for (int32_t h = 0; h < p.n_heads; ++h) {
    const int32_t kv_head = h / q_per_kv;
    for (int64_t t = 0; t < p.head_tiles(h); ++t) {
      const int64_t item = p.head_item_begin[h] + t;
      // Keys are visible up to the first slot past the tile's last position.
      const int64_t limit = causal ? kv.slots_through(kv_head, p.tile_last_position(h, t)) : n_keys;
      int64_t prev_end = -1;
      for (int64_t r = p.range_ptr[item]; r < p.range_ptr[item + 1]; ++r) {
        const KeyRange kr = p.ranges[r];
        if (kr.begin >= kr.end)
          fail(where(h, t) + "range [" + std::to_string(kr.begin) + ", " + std::to_string(kr.end) + ") is empty");
        if (kr.begin < 0 || kr.end > n_keys)
          fail(where(h, t) + "range [" + std::to_string(kr.begin) + ", " + std::to_string(kr.end) +
               ") is outside the " + std::to_string(n_keys) + " keys");
        if (kr.end > limit)
          fail(where(h, t) + "range [" + std::to_string(kr.begin) + ", " + std::to_string(kr.end) +
               ") reaches past the tile's last query position " + std::to_string(limit - 1));
        if (kr.begin < prev_end) fail(where(h, t) + "ranges are not sorted and disjoint");
        prev_end = kr.end;
      }
      int64_t prev_col = -1;
      int64_t r = p.range_ptr[item];
      for (int64_t c = p.col_ptr[item]; c < p.col_ptr[item + 1]; ++c) {
        const int64_t key = p.cols[c];
        if (key < 0 || key >= n_keys)
          fail(where(h, t) + "column " + std::to_string(key) + " is outside the " + std::to_string(n_keys) + " keys");
        if (key >= limit)
          fail(where(h, t) + "column " + std::to_string(key) + " is after the tile's last query position " +
               std::to_string(limit - 1));
        if (key <= prev_col) fail(where(h, t) + "columns are not sorted and unique");
        prev_col = key;
        while (r < p.range_ptr[item + 1] && p.ranges[r].end <= key) ++r;
        if (r < p.range_ptr[item + 1] && p.ranges[r].begin <= key)
          fail(where(h, t) + "column " + std::to_string(key) + " lies inside a range");
      }
    }
  }
  for (float s : p.range_scores)
    if (!std::isfinite(s)) fail("range scores must be finite");
  for (float s : p.col_scores)
    if (!std::isfinite(s)) fail("column scores must be finite");
}

Plan make_dense_plan(const PlanShape& shape, bool causal, int64_t n_keys) {
  if (!causal && n_keys <= 0) fail("a non-causal dense plan needs n_keys > 0");
  PlanBuilder b(shape);
  for (int32_t h = 0; h < shape.n_heads; ++h) {
    const int64_t tiles = (shape.n_rows + shape.tile_rows - 1) / shape.tile_rows;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t last_row = std::min<int64_t>((t + 1) * shape.tile_rows, shape.n_rows) - 1;
      const int64_t q_slot0 = shape.q_slot0 < 0 ? shape.q_pos0 : shape.q_slot0;
      const int64_t end = q_slot0 + last_row + 1;
      b.add_range(0, causal ? (n_keys >= 0 ? std::min(n_keys, end) : end) : n_keys);
      b.end_tile();
    }
  }
  return b.finish();
}

// ---------------------------------------------------------------------------
// PlanBuilder

PlanBuilder::PlanBuilder(const PlanShape& shape, bool scored) : scored_(scored) {
  if (shape.n_heads <= 0) fail("n_heads must be positive (got " + std::to_string(shape.n_heads) + ")");
  if (shape.group_size <= 0) fail("group_size must be positive");
  if (shape.tile_rows <= 0) fail("tile_rows must be positive");
  if (shape.n_rows < 0 || shape.q_pos0 < 0) fail("n_rows and q_pos0 must be >= 0");
  plan_.n_heads = shape.n_heads;
  plan_.group_size = shape.group_size;
  plan_.tile_rows = shape.tile_rows;
  plan_.n_rows = shape.n_rows;
  plan_.q_pos0 = shape.q_pos0;
  plan_.q_slot0 = shape.q_slot0 < 0 ? shape.q_pos0 : shape.q_slot0;
  plan_.range_ptr.push_back(0);
  plan_.col_ptr.push_back(0);
  maps_.resize(static_cast<size_t>(shape.n_heads));
  mapped_.assign(static_cast<size_t>(shape.n_heads), false);
  tiles_done_.assign(static_cast<size_t>(shape.n_heads), 0);
}

int64_t PlanBuilder::tiles_of(int32_t h) const {
  const int64_t rows = mapped_[h] ? static_cast<int64_t>(maps_[h].size()) : plan_.n_rows;
  return (rows + plan_.tile_rows - 1) / plan_.tile_rows;
}

void PlanBuilder::require_open_tile(const char* what) {
  if (finished_) fail(std::string(what) + " after finish()");
  while (head_ < plan_.n_heads && tile_ == 0 && tiles_of(head_) == 0) ++head_;
  if (head_ >= plan_.n_heads) fail(std::string(what) + ": all tiles of all heads are already complete");
  head_started_ = true;
}

void PlanBuilder::set_row_map(std::span<const int32_t> rows) {
  if (finished_) fail("set_row_map after finish()");
  if (head_ >= plan_.n_heads) fail("set_row_map: all heads are already complete");
  if (head_started_ || tile_ != 0) fail("set_row_map must come before the head's first tile");
  if (mapped_[head_]) fail("set_row_map called twice for head " + std::to_string(head_));
  int64_t prev = -1;
  for (int32_t r : rows) {
    if (r <= prev || r >= plan_.n_rows)
      fail("row map rows must be strictly increasing and in [0, n_rows); found " + std::to_string(r));
    prev = r;
  }
  maps_[head_].assign(rows.begin(), rows.end());
  mapped_[head_] = true;
  if (tiles_of(head_) == 0) ++head_;  // a head without rows has no tiles
}

void PlanBuilder::add_range(int64_t begin, int64_t end, float score) {
  require_open_tile("add_range");
  if (begin < 0 || end > std::numeric_limits<int32_t>::max() || begin >= end)
    fail("add_range: [" + std::to_string(begin) + ", " + std::to_string(end) + ") is not a valid non-empty range");
  pending_ranges_.push_back({KeyRange{static_cast<int32_t>(begin), static_cast<int32_t>(end)}, score});
}

void PlanBuilder::add_column(int64_t key, float score) {
  require_open_tile("add_column");
  if (key < 0 || key >= std::numeric_limits<int32_t>::max()) fail("add_column: key " + std::to_string(key) + " is out of range");
  pending_cols_.push_back({static_cast<int32_t>(key), score});
}

void PlanBuilder::end_tile() {
  require_open_tile("end_tile");
  // Ranges: sort by begin, merge overlapping ones (max score), and touching
  // ones unless their scores differ (an ordered plan visits them apart).
  std::sort(pending_ranges_.begin(), pending_ranges_.end(),
            [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
  const size_t range_start = plan_.ranges.size();
  for (const auto& [r, s] : pending_ranges_) {
    const bool touches = plan_.ranges.size() > range_start && r.begin == plan_.ranges.back().end;
    if (plan_.ranges.size() > range_start && (r.begin < plan_.ranges.back().end ||
                                              (touches && (!scored_ || plan_.range_scores.back() == s)))) {
      plan_.ranges.back().end = std::max(plan_.ranges.back().end, r.end);
      if (scored_) plan_.range_scores.back() = std::max(plan_.range_scores.back(), s);
      continue;
    }
    plan_.ranges.push_back(r);
    if (scored_) plan_.range_scores.push_back(s);
  }
  // Columns: sort, drop duplicates (max score) and those inside a range.
  std::sort(pending_cols_.begin(), pending_cols_.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  const size_t col_start = plan_.cols.size();
  size_t r = range_start;
  for (const auto& [c, s] : pending_cols_) {
    while (r < plan_.ranges.size() && plan_.ranges[r].end <= c) ++r;
    if (r < plan_.ranges.size() && plan_.ranges[r].begin <= c) continue;
    if (plan_.cols.size() > col_start && plan_.cols.back() == c) {
      if (scored_) plan_.col_scores.back() = std::max(plan_.col_scores.back(), s);
      continue;
    }
    plan_.cols.push_back(c);
    if (scored_) plan_.col_scores.push_back(s);
  }
  pending_ranges_.clear();
  pending_cols_.clear();
  plan_.range_ptr.push_back(static_cast<int64_t>(plan_.ranges.size()));
  plan_.col_ptr.push_back(static_cast<int64_t>(plan_.cols.size()));
  ++tiles_done_[head_];
  if (++tile_ == tiles_of(head_)) {
    ++head_;
    tile_ = 0;
    head_started_ = false;
  }
}

void PlanBuilder::set_skip_lambda(int32_t head, float lambda) {
  if (head < 0 || head >= plan_.n_heads) fail("set_skip_lambda: head " + std::to_string(head) + " out of range");
  if (!(lambda >= 0.0f) || !std::isfinite(lambda)) fail("set_skip_lambda: lambda must be finite and >= 0");
  if (plan_.skip_lambda.empty()) plan_.skip_lambda.assign(static_cast<size_t>(plan_.n_heads), 0.0f);
  plan_.skip_lambda[head] = lambda;
}

void PlanBuilder::set_stop_theta(int32_t head, float theta) {
  if (head < 0 || head >= plan_.n_heads) fail("set_stop_theta: head " + std::to_string(head) + " out of range");
  if (std::isnan(theta)) fail("set_stop_theta: theta is NaN");
  if (plan_.stop_theta.empty())
    plan_.stop_theta.assign(static_cast<size_t>(plan_.n_heads), -std::numeric_limits<float>::infinity());
  plan_.stop_theta[head] = theta;
}

void PlanBuilder::set_stop_mass(int32_t head, float epsilon) {
  if (head < 0 || head >= plan_.n_heads) fail("set_stop_mass: head " + std::to_string(head) + " out of range");
  if (!(epsilon >= 0.0f && epsilon <= 1.0f)) fail("set_stop_mass: epsilon must be in [0, 1]");
  if (plan_.stop_mass.empty()) plan_.stop_mass.assign(static_cast<size_t>(plan_.n_heads), 0.0f);
  plan_.stop_mass[head] = epsilon;
}

std::vector<int64_t> PlanBuilder::current_tile_rows() const {
  std::vector<int64_t> rows;
  int32_t h = head_;
  while (h < plan_.n_heads && tile_ == 0 && tiles_of(h) == 0) ++h;
  if (h >= plan_.n_heads) return rows;
  const int64_t n = mapped_[h] ? static_cast<int64_t>(maps_[h].size()) : plan_.n_rows;
  for (int64_t i = tile_ * plan_.tile_rows; i < std::min<int64_t>(n, (tile_ + 1) * plan_.tile_rows); ++i)
    rows.push_back(mapped_[h] ? maps_[h][i] : i);
  return rows;
}

Plan PlanBuilder::finish() {
  if (finished_) fail("finish() called twice");
  if (!pending_ranges_.empty() || !pending_cols_.empty()) fail("finish(): the last tile was not closed with end_tile()");
  for (int32_t h = 0; h < plan_.n_heads; ++h)
    if (tiles_done_[h] != tiles_of(h))
      fail("finish(): head " + std::to_string(h) + " has " + std::to_string(tiles_done_[h]) + " of " +
           std::to_string(tiles_of(h)) + " tiles");
  plan_.head_item_begin.assign(1, 0);
  for (int32_t h = 0; h < plan_.n_heads; ++h) plan_.head_item_begin.push_back(plan_.head_item_begin.back() + tiles_of(h));
  if (std::find(mapped_.begin(), mapped_.end(), true) != mapped_.end()) {
    plan_.row_map_ptr.assign(1, 0);
    for (int32_t h = 0; h < plan_.n_heads; ++h) {
      if (mapped_[h]) {
        plan_.row_map.insert(plan_.row_map.end(), maps_[h].begin(), maps_[h].end());
      } else {
        for (int64_t i = 0; i < plan_.n_rows; ++i) plan_.row_map.push_back(static_cast<int32_t>(i));
      }
      plan_.row_map_ptr.push_back(static_cast<int64_t>(plan_.row_map.size()));
    }
  }
  finished_ = true;
  return std::move(plan_);
}

Plan rebuild_plan(const Plan& plan, const std::function<void(PlanBuilder&, int32_t, int64_t)>& add_keys) {
  PlanBuilder b({plan.n_heads, plan.group_size, plan.tile_rows, plan.n_rows, plan.q_pos0, plan.q_slot0}, plan.has_scores());
  for (int32_t h = 0; h < plan.n_heads; ++h) {
    if (plan.has_row_map()) {
      const auto first = plan.row_map.begin() + plan.row_map_ptr[h];
      b.set_row_map({&*first, static_cast<size_t>(plan.row_map_ptr[h + 1] - plan.row_map_ptr[h])});
    }
    for (int64_t t = 0; t < plan.head_tiles(h); ++t) {
      add_keys(b, h, t);
      b.end_tile();
    }
  }
  for (int32_t h = 0; h < plan.n_heads; ++h) {
    if (!plan.skip_lambda.empty()) b.set_skip_lambda(h, plan.skip_lambda[h]);
    if (!plan.stop_theta.empty()) b.set_stop_theta(h, plan.stop_theta[h]);
    if (!plan.stop_mass.empty()) b.set_stop_mass(h, plan.stop_mass[h]);
  }
  return b.finish();
}

void copy_item_keys(const Plan& plan, int64_t item, PlanBuilder& b, int64_t begin, int64_t end) {
  for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r) {
    const int64_t lo = std::max<int64_t>(plan.ranges[r].begin, begin), hi = std::min<int64_t>(plan.ranges[r].end, end);
    if (lo < hi) b.add_range(lo, hi, plan.range_scores.empty() ? 0.0f : plan.range_scores[r]);
  }
  for (int64_t c = plan.col_ptr[item]; c < plan.col_ptr[item + 1]; ++c)
    if (plan.cols[c] >= begin && plan.cols[c] < end) b.add_column(plan.cols[c], plan.col_scores.empty() ? 0.0f : plan.col_scores[c]);
}

Plan clip_plan(const Plan& plan, int64_t begin, int64_t end) {
  return rebuild_plan(plan, [&](PlanBuilder& b, int32_t h, int64_t t) {
    copy_item_keys(plan, plan.head_item_begin[h] + t, b, begin, end);
  });
}

}  // namespace skim::kernels
