// Attention driver: checks the call, turns the plan into work units (query
// columns x key-tile stream), schedules them over OpenMP threads, and merges
// split key streams. All SIMD work is in attention_tile.cpp.
#include "kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "kernels/attention_tile.h"
#include "kernels/f16.h"
#include "skim/gemm.h"

namespace skim::kernels {
namespace {

using attn_detail::KeySpan;
using attn_detail::kKeyTile;
using attn_detail::kMaxTileCols;
using attn_detail::QueryColumn;
using attn_detail::TileCounters;
using attn_detail::TileJob;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kLog2e = 1.44269504088896340736f;
// Query columns of a default (dense, group-mode) prefill tile: 48..128 measured
// within noise of each other on AVX2; 96 keeps the tile's working set in L2.
constexpr int32_t kDefaultTileCols = 96;
// Column chunks are cut at multiples of this (whole vectors of the widest target).
constexpr int32_t kColumnQuantum = 32;
constexpr int32_t kMaxDecodeRows = 16;
// Dense decode of one row splits each KV group's key stream into parts of at
// most this many key tiles: a step has only n_kv_heads items per sequence (3 on
// SmolLM2), too few to keep every thread busy. The parts depend on the row's
// own stream alone, so its result is the same whatever else is in the batch.
// (With more rows in a call the stream would end at the last row's position;
// plans may carry BLASST skips, which a part boundary would reset.)
constexpr int32_t kDecodeSplitTiles = 16;

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("attention: " + what); }

// The call with default strides filled in.
struct Call {
  AttnParams p;
  int32_t g = 1;  // query heads per KV head
  float q_scale = 0.0f;
  int64_t q_slot0 = 0;  // keys at positions before q_pos0 are slots [0, q_slot0)
};

Call resolve(const AttnParams& in) {
  Call c{in};
  AttnParams& p = c.p;
  if (p.n_q_heads <= 0 || p.n_kv_heads <= 0)
    bad("head counts must be positive (n_q_heads " + std::to_string(p.n_q_heads) + ", n_kv_heads " +
        std::to_string(p.n_kv_heads) + ")");
  if (p.n_q_heads % p.n_kv_heads != 0)
    bad("n_q_heads (" + std::to_string(p.n_q_heads) + ") is not a multiple of n_kv_heads (" +
        std::to_string(p.n_kv_heads) + ")");
  if (p.head_dim < 16 || p.head_dim > 512 || p.head_dim % 16 != 0)
    bad("head_dim must be a multiple of 16 in [16, 512] (got " + std::to_string(p.head_dim) + ")");
  if (p.n_rows < 0) bad("n_rows is negative");
  if (p.q_pos0 < 0) bad("q_pos0 is negative");
  if (p.q_pos0 + p.n_rows > std::numeric_limits<int32_t>::max()) bad("positions exceed the int32 range");
  if (p.n_rows > 0 && (p.q == nullptr || p.out == nullptr)) bad("q and out must not be null");
  if (p.kv.n_keys < 0 || p.kv.n_keys > std::numeric_limits<int32_t>::max()) bad("kv.n_keys is out of range");
  if (p.kv.n_keys > 0 && (p.kv.k == nullptr || p.kv.v == nullptr || p.kv.page_ids == nullptr))
    bad("kv.k, kv.v and kv.page_ids must not be null");
  for (const auto& [type, row_bytes, name] : {std::tuple{p.kv.k_type, p.kv.k_row_bytes, "k"},
                                              std::tuple{p.kv.v_type, p.kv.v_row_bytes, "v"}}) {
    if (type > kLastKvDType) bad("unknown KV storage type");
    if (kv_grouped(type) && (name[0] == 'v' || p.head_dim % 64 != 0)) bad("KIVI keys need K and head_dim a multiple of 64");
    if (kv_quantized(type) && p.head_dim % kKvBlock != 0) bad("quantized K/V needs head_dim a multiple of 32");
    if (row_bytes < kv_row_bytes(type, p.head_dim))
      bad(std::string("kv.") + name + "_row_bytes (" + std::to_string(row_bytes) +
          ") is smaller than a row of head_dim values");
  }
  if (p.kv.page_bytes < 0 || p.kv.page_shift < 0 || p.kv.page_shift > 31 || p.kv.pages_per_head < 1)
    bad("kv page geometry is invalid");
  if (p.kv.n_keys > p.kv.pages_per_head * p.kv.page_rows()) bad("kv.n_keys exceeds the page table");
  const int64_t d = p.head_dim;
  if (p.q_row_stride == 0) p.q_row_stride = d;
  if (p.q_head_stride == 0) p.q_head_stride = p.n_rows * p.q_row_stride;
  if (p.out_row_stride == 0) p.out_row_stride = d;
  if (p.out_head_stride == 0) p.out_head_stride = p.n_rows * p.out_row_stride;
  if (p.lse_head_stride == 0) p.lse_head_stride = p.n_rows;
  if (p.q_row_stride < 0 || p.q_head_stride < 0 || p.out_row_stride < 0 || p.out_head_stride < 0 ||
      p.lse_head_stride < 0)
    bad("strides must not be negative");
  if (!std::isfinite(p.scale)) bad("scale is not finite");
  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(static_cast<float>(d));
  c.q_scale = scale * kLog2e;
  c.g = p.n_q_heads / p.n_kv_heads;
  c.q_slot0 = p.kv.slots_through(0, p.q_pos0 - 1);
  if (p.split_key_tiles < 0) bad("split_key_tiles is negative");
  if (p.window < 0) bad("window is negative");
  if (p.kv.first_key < 0 || p.kv.first_key > p.kv.n_keys) bad("kv.first_key is outside the keys");
  return c;
}

void check_plan_fits(const Call& c, const Plan& plan) {
  const AttnParams& p = c.p;
  validate_plan_structure(plan);
  if (plan.n_rows != p.n_rows || plan.q_pos0 != p.q_pos0)
    throw PlanError("attention plan: built for " + std::to_string(plan.n_rows) + " rows at position " +
                    std::to_string(plan.q_pos0) + ", the call has " + std::to_string(p.n_rows) + " rows at " +
                    std::to_string(p.q_pos0));
  if (p.causal && plan.q_slot0 != c.q_slot0)
    throw PlanError("attention plan: built for query keys from slot " + std::to_string(plan.q_slot0) +
                    ", the cache has " + std::to_string(c.q_slot0) + " keys before position " + std::to_string(p.q_pos0));
  const bool per_q_head = plan.group_size == 1 && plan.n_heads == p.n_q_heads;
  const bool per_group = plan.group_size == c.g && plan.n_heads == p.n_kv_heads;
  if (!per_q_head && !per_group)
    throw PlanError("attention plan: " + std::to_string(plan.n_heads) + " heads of group size " +
                    std::to_string(plan.group_size) + " fit neither " + std::to_string(p.n_q_heads) +
                    " query heads nor " + std::to_string(p.n_kv_heads) + " KV groups of " + std::to_string(c.g));
  if (p.validate_plan) validate_plan(plan, p.kv, p.n_kv_heads, p.causal);
}

// The plan head's KV head.
int32_t kv_head_of(const Call& c, const Plan& plan, int32_t h) { return plan.group_size == 1 ? h / c.g : h; }

bool plan_ordered(const Plan& plan) { return plan.has_scores(); }

float plan_theta(const Plan& plan, int32_t h) {
  return plan.stop_theta.empty() ? kNegInf : plan.stop_theta[static_cast<size_t>(h)];
}

// Number of key tiles in an item's stream (matches build_spans).
int64_t count_spans(const Plan& plan, int64_t item, float theta) {
  int64_t n = 0;
  for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r) {
    const int64_t len = static_cast<int64_t>(plan.ranges[r].end) - plan.ranges[r].begin;
    n += len > 0 ? (len + kKeyTile - 1) / kKeyTile : 0;
  }
  const int64_t c0 = plan.col_ptr[item], c1 = plan.col_ptr[item + 1];
  if (plan_ordered(plan) && theta > kNegInf) {
    int64_t hi = 0;
    for (int64_t c = c0; c < c1; ++c) hi += plan.col_scores[c] >= theta;
    n += (hi + kKeyTile - 1) / kKeyTile + (c1 - c0 - hi + kKeyTile - 1) / kKeyTile;
  } else {
    n += (c1 - c0 + kKeyTile - 1) / kKeyTile;
  }
  return n;
}

// The key-tile stream of an item. Unordered: the columns (packed kKeyTile at
// a time), then the ranges in position order, cut into kKeyTile chunks.
// Ordered (scored plan): columns sorted by descending score are packed without
// mixing scores on both sides of theta (a pack's score is its lowest), range
// chunks keep their range's score, and all tiles are visited by descending
// score. A span's max_pos is the largest stored position of its keys (those
// of KV head kv_head). Returns an error message for keys outside [0, n_keys), else "".
std::string build_spans(const Plan& plan, int64_t item, float theta, const KvView& kv, int32_t kv_head,
                        std::vector<KeySpan>& spans, std::vector<int32_t>& sorted_keys, std::vector<int64_t>& order) {
  spans.clear();
  const int64_t n_keys = kv.n_keys;
  const auto set_positions = [&](KeySpan& s) {
    s.min_pos = std::numeric_limits<int32_t>::max();
    s.max_pos = std::numeric_limits<int32_t>::min();
    for (int32_t j = 0; j < s.count; ++j) {
      const int32_t p = kv.position(kv_head, s.keys[j]);
      s.min_pos = std::min(s.min_pos, p);
      s.max_pos = std::max(s.max_pos, p);
    }
  };
  const int64_t c0 = plan.col_ptr[item], c1 = plan.col_ptr[item + 1];
  for (int64_t c = c0; c < c1; ++c)
    if (plan.cols[c] < kv.first_key || plan.cols[c] >= n_keys)
      return "column " + std::to_string(plan.cols[c]) + " is outside the " + std::to_string(n_keys) + " keys";
  const bool ordered = plan_ordered(plan);
  if (!ordered) {
    for (int64_t c = c0; c < c1; c += kKeyTile) {
      KeySpan s;
      s.count = static_cast<int32_t>(std::min<int64_t>(kKeyTile, c1 - c));
      s.keys = plan.cols.data() + c;
      set_positions(s);
      spans.push_back(s);
    }
  } else {
    for (int64_t c = c0; c < c1; ++c)
      if (std::isnan(plan.col_scores[c])) return "a column score is NaN";
    for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r)
      if (std::isnan(plan.range_scores[r])) return "a range score is NaN";
    order.resize(static_cast<size_t>(c1 - c0));
    std::iota(order.begin(), order.end(), c0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return plan.col_scores[a] > plan.col_scores[b]; });
    sorted_keys.resize(order.size());
    for (size_t i = 0; i < order.size(); ++i) sorted_keys[i] = plan.cols[order[i]];
    size_t i = 0;
    while (i < order.size()) {
      const bool high = plan.col_scores[order[i]] >= theta;
      size_t e = i;
      while (e < order.size() && e - i < static_cast<size_t>(kKeyTile) && (plan.col_scores[order[e]] >= theta) == high)
        ++e;
      KeySpan s;
      s.count = static_cast<int32_t>(e - i);
      s.keys = sorted_keys.data() + i;
      set_positions(s);
      s.score = plan.col_scores[order[e - 1]];
      spans.push_back(s);
      i = e;
    }
  }
  for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r) {
    const KeyRange kr = plan.ranges[r];
    if (kr.begin < kv.first_key || kr.end > n_keys || kr.begin >= kr.end)
      return "range [" + std::to_string(kr.begin) + ", " + std::to_string(kr.end) + ") is empty or outside the " +
             std::to_string(n_keys) + " keys";
    for (int64_t b = kr.begin; b < kr.end; b += kKeyTile) {
      KeySpan s;
      s.begin = static_cast<int32_t>(b);
      s.count = static_cast<int32_t>(std::min<int64_t>(kKeyTile, kr.end - b));
      s.min_pos = kv.position(kv_head, s.begin);  // positions increase with the slot
      s.max_pos = kv.position(kv_head, s.begin + s.count - 1);
      s.score = ordered ? plan.range_scores[r] : 0.0f;
      spans.push_back(s);
    }
  }
  if (ordered)
    std::stable_sort(spans.begin(), spans.end(), [](const KeySpan& a, const KeySpan& b) { return a.score > b.score; });
  return "";
}

// One scheduled piece of work: some columns of an item against a contiguous
// part of its key-tile stream.
struct Unit {
  int64_t item = 0;
  int32_t head = 0;        // plan head
  int64_t tile = 0;        // tile of that head
  int32_t col_begin = 0;   // columns [col_begin, col_end) of the item
  int32_t col_end = 0;
  int64_t span_begin = 0;  // key tiles [span_begin, span_end) of the stream
  int64_t span_end = 0;
  int64_t partial = -1;    // float offset of this part's O/LSE in the partial buffer, -1: final output
  double cost = 0.0;
};

// Split parts of one (item, column chunk): merged after the parallel loop.
struct SplitGroup {
  int64_t first_unit = 0;  // index in the (unsorted) unit list
  int32_t parts = 0;
};

// Per-thread scratch, kept across calls (OpenMP threads persist), 64-byte aligned.
float* thread_scratch(size_t floats) {
  struct Buffer {
    float* ptr = nullptr;
    size_t size = 0;
    ~Buffer() { ::operator delete[](ptr, std::align_val_t(64)); }
  };
  thread_local Buffer buf;
  if (buf.size < floats) {
    ::operator delete[](buf.ptr, std::align_val_t(64));
    buf.ptr = nullptr;
    buf.size = 0;
    buf.ptr = static_cast<float*>(::operator new[](floats * sizeof(float), std::align_val_t(64)));
    std::fill(buf.ptr, buf.ptr + floats, 0.0f);
    buf.size = floats;
  }
  return buf.ptr;
}

// Column `c` of item (h, t): query head and chunk row. Columns are ordered by
// query head of the group, then by row of the tile.
struct ColumnRef {
  int32_t q_head;
  int64_t row;
};

ColumnRef column_of(const Call& call, const Plan& plan, int32_t h, int64_t t, int32_t c) {
  const int64_t first = t * plan.tile_rows;
  const int64_t rows_here = std::min<int64_t>(plan.tile_rows, plan.head_rows(h) - first);
  const int32_t member = static_cast<int32_t>(c / rows_here);
  const int64_t row = plan.row_of(h, first + c % rows_here);
  const int32_t q_head = plan.group_size == 1 ? h : h * call.g + member;
  return {q_head, row};
}

AttnMath& attention_math_setting() {
  static AttnMath math = AttnMath::kF32;
  return math;
}

void run(const Call& call, const Plan& plan) {
  const AttnParams& p = call.p;
  const int64_t d = p.head_dim;
  const bool bf16 = attention_math() == AttnMath::kBf16, native_bf16 = bf16 && cpu_has_bf16_dot();
  const int n_threads = std::max(1, omp_get_max_threads());

  // Rows outside every item (row maps) are written now: O = 0, LSE = -inf.
  if (plan.has_row_map()) {
    std::vector<char> covered(static_cast<size_t>(p.n_rows));
    for (int32_t h = 0; h < plan.n_heads; ++h) {
      std::fill(covered.begin(), covered.end(), 0);
      for (int64_t i = 0; i < plan.head_rows(h); ++i) covered[static_cast<size_t>(plan.row_of(h, i))] = 1;
      for (int32_t member = 0; member < plan.group_size; ++member) {
        const int64_t qh = plan.group_size == 1 ? h : static_cast<int64_t>(h) * call.g + member;
        for (int64_t row = 0; row < p.n_rows; ++row) {
          if (covered[static_cast<size_t>(row)]) continue;
          float* out = p.out + qh * p.out_head_stride + row * p.out_row_stride;
          std::fill(out, out + d, 0.0f);
          if (p.lse) p.lse[qh * p.lse_head_stride + row] = kNegInf;
        }
      }
    }
  }

  // Units: items cut into column chunks; chunks cut into key-stream parts.
  std::vector<Unit> units;
  std::vector<int64_t> unit_spans;  // stream length of each unit's item
  for (int32_t h = 0; h < plan.n_heads; ++h) {
    const float theta = plan_theta(plan, h);
    for (int64_t t = 0; t < plan.head_tiles(h); ++t) {
      const int64_t item = plan.head_item_begin[h] + t;
      const int64_t rows_here = std::min<int64_t>(plan.tile_rows, plan.head_rows(h) - t * plan.tile_rows);
      const int64_t n_cols = rows_here * plan.group_size;
      const int64_t n_chunks = (n_cols + kMaxTileCols - 1) / kMaxTileCols;
      int64_t chunk = (n_cols + n_chunks - 1) / n_chunks;
      if (n_chunks > 1) chunk = std::min<int64_t>(kMaxTileCols, (chunk + kColumnQuantum - 1) / kColumnQuantum * kColumnQuantum);
      const int64_t spans = count_spans(plan, item, theta);
      for (int64_t c = 0; c < n_cols; c += chunk) {
        Unit u;
        u.item = item;
        u.head = h;
        u.tile = t;
        u.col_begin = static_cast<int32_t>(c);
        u.col_end = static_cast<int32_t>(std::min(n_cols, c + chunk));
        u.span_end = spans;
        // Per key tile: the widening of K/V plus the products for each column.
        u.cost = static_cast<double>(spans) * (u.col_end - u.col_begin + 8);
        units.push_back(u);
        unit_spans.push_back(spans);
      }
    }
  }

  // Key-stream splitting, when asked for (AttnParams::split_key_tiles).
  std::vector<Unit> split_units;
  std::vector<SplitGroup> groups;
  int64_t partial_floats = 0;
  {
    for (const Unit& u : units) {
      const int64_t spans = u.span_end;
      const bool whole = !plan.stop_mass.empty() && plan.stop_mass[static_cast<size_t>(u.head)] > 0.0f;
      const int64_t parts = p.split_key_tiles > 0 && !whole
                                ? std::max<int64_t>(1, (spans + p.split_key_tiles - 1) / p.split_key_tiles)
                                : 1;
      if (parts <= 1) {
        split_units.push_back(u);
        continue;
      }
      groups.push_back({static_cast<int64_t>(split_units.size()), static_cast<int32_t>(parts)});
      const int64_t cols = u.col_end - u.col_begin;
      for (int64_t part = 0; part < parts; ++part) {
        Unit s = u;
        s.span_begin = spans * part / parts;
        s.span_end = spans * (part + 1) / parts;
        s.cost = u.cost * static_cast<double>(s.span_end - s.span_begin) / static_cast<double>(spans);
        s.partial = partial_floats;
        partial_floats += cols * (d + 1);
        split_units.push_back(s);
      }
    }
  }
  units.swap(split_units);
  std::vector<float> partial(static_cast<size_t>(partial_floats));

  // Largest first, so the dynamic schedule ends with small pieces.
  std::vector<int64_t> schedule(units.size());
  std::iota(schedule.begin(), schedule.end(), 0);
  std::stable_sort(schedule.begin(), schedule.end(),
                   [&](int64_t a, int64_t b) { return units[a].cost > units[b].cost; });

  std::vector<TileCounters> counters(static_cast<size_t>(n_threads));
  std::atomic<bool> failed{false};
  std::string failure;
  std::mutex failure_mutex;
  const size_t scratch_floats = attn_detail::tile_scratch_floats(p.head_dim);
  const int64_t n_units = static_cast<int64_t>(units.size());

#pragma omp parallel num_threads(n_threads)
  {
    float* scratch = thread_scratch(scratch_floats);
    std::vector<KeySpan> spans;
    std::vector<int32_t> sorted_keys;
    std::vector<int64_t> order;
    std::vector<QueryColumn> cols;
    std::vector<float> lse_sink(kMaxTileCols);
    int64_t spans_item = -1;
    TileCounters& count = counters[static_cast<size_t>(omp_get_thread_num())];

#pragma omp for schedule(dynamic, 1)
    for (int64_t si = 0; si < n_units; ++si) {
      if (failed.load(std::memory_order_relaxed)) continue;
      const Unit& u = units[schedule[si]];
      const int32_t h = u.head;
      const int32_t kv_head = kv_head_of(call, plan, h);
      if (spans_item != u.item) {
        std::string err = build_spans(plan, u.item, plan_theta(plan, h), p.kv, kv_head, spans, sorted_keys, order);
        if (!err.empty()) {
          std::lock_guard<std::mutex> lock(failure_mutex);
          if (!failed.exchange(true))
            failure = "attention plan: head " + std::to_string(h) + " tile " + std::to_string(u.tile) + ": " + err;
          continue;
        }
        spans_item = u.item;
      }
      if (u.span_end > static_cast<int64_t>(spans.size())) {  // count_spans and build_spans disagree
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failed.exchange(true)) failure = "attention: internal error: key-tile stream shorter than planned";
        continue;
      }
      cols.clear();
      for (int32_t c = u.col_begin; c < u.col_end; ++c) {
        const ColumnRef ref = column_of(call, plan, h, u.tile, c);
        QueryColumn qc;
        qc.q = p.q + ref.q_head * p.q_head_stride + ref.row * p.q_row_stride;
        qc.pos = static_cast<int32_t>(p.q_pos0 + ref.row);
        if (u.partial >= 0) {
          float* base = partial.data() + u.partial;
          const int64_t local = c - u.col_begin;
          qc.out = base + local * d;
          qc.lse = base + static_cast<int64_t>(u.col_end - u.col_begin) * d + local;
        } else {
          qc.out = p.out + ref.q_head * p.out_head_stride + ref.row * p.out_row_stride;
          qc.lse = p.lse ? p.lse + ref.q_head * p.lse_head_stride + ref.row : lse_sink.data() + (c - u.col_begin);
        }
        cols.push_back(qc);
      }
      TileJob job;
      job.head_dim = p.head_dim;
      job.q_scale = call.q_scale;
      job.causal = p.causal;
      job.window = p.window;
      const float lambda = plan.skip_lambda.empty() ? 0.0f : plan.skip_lambda[static_cast<size_t>(h)];
      job.log2_lambda = lambda > 0.0f ? std::log2(lambda) : kNegInf;
      job.early_stop = plan_ordered(plan) && plan_theta(plan, h) > kNegInf;
      job.stop_theta = plan_theta(plan, h);
      job.stop_mass = plan.stop_mass.empty() ? 0.0f : plan.stop_mass[static_cast<size_t>(h)];
      job.bf16 = bf16;
      job.native_bf16 = native_bf16;
      job.kv = &p.kv;
      job.kv_head = kv_head;
      job.cols = cols.data();
      job.n_cols = static_cast<int32_t>(cols.size());
      job.spans = spans.data() + u.span_begin;
      job.n_spans = u.span_end - u.span_begin;
      attn_detail::run_tile_job(job, scratch, count);
    }
  }
  if (failed) throw PlanError(failure);

  // Merge the parts of split key streams, in order, then scatter.
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads) if (groups.size() > 1)
  for (int64_t gi = 0; gi < static_cast<int64_t>(groups.size()); ++gi) {
    const SplitGroup& grp = groups[gi];
    const Unit& first = units[grp.first_unit];
    const int64_t n_cols = first.col_end - first.col_begin;
    float* o0 = partial.data() + first.partial;
    float* lse0 = o0 + n_cols * d;
    for (int32_t part = 1; part < grp.parts; ++part) {
      const float* oi = partial.data() + units[grp.first_unit + part].partial;
      merge_partial(n_cols, p.head_dim, o0, d, lse0, oi, d, oi + n_cols * d);
    }
    for (int64_t c = 0; c < n_cols; ++c) {
      const ColumnRef ref = column_of(call, plan, first.head, first.tile, static_cast<int32_t>(first.col_begin + c));
      std::copy(o0 + c * d, o0 + (c + 1) * d, p.out + ref.q_head * p.out_head_stride + ref.row * p.out_row_stride);
      if (p.lse) p.lse[ref.q_head * p.lse_head_stride + ref.row] = lse0[c];
    }
  }

  if (p.stats) {
    AttnStats st;
    for (const Unit& u : units) st.key_tiles += u.span_end - u.span_begin;
    for (const TileCounters& tc : counters) {
      st.key_tiles_computed += tc.computed;
      st.key_tiles_skipped += tc.skipped;
      st.key_tiles_stopped += tc.stopped;
      st.pairs_stopped += tc.stopped_pairs;
    }
    st.split_items = static_cast<int64_t>(groups.size());
    *p.stats = st;
  }
}

// The dense plan of a call in group mode with `tile_rows` rows per q head.
Plan default_plan(const Call& call, int32_t tile_rows) {
  PlanShape shape;
  shape.n_heads = call.p.n_kv_heads;
  shape.group_size = call.g;
  shape.tile_rows = std::max(1, tile_rows);
  shape.n_rows = call.p.n_rows;
  shape.q_pos0 = call.p.q_pos0;
  shape.q_slot0 = call.q_slot0;
  Plan plan = make_dense_plan(shape, call.p.causal, call.p.kv.n_keys);
  // Each tile starts at the key tile holding the first key its first row's
  // window reaches (or the first key held); the kernel masks the rest of the
  // window per row. Key tiles stay aligned to slot 0, as in the dense plan, so
  // a row sums the same tiles whichever query tile it falls in (batch invariance).
  const KvView& kv = call.p.kv;
  for (int32_t h = 0; h < plan.n_heads; ++h)
    for (int64_t t = 0; t < plan.head_tiles(h); ++t) {
      KeyRange& r = plan.ranges[static_cast<size_t>(plan.range_ptr[plan.head_item_begin[h] + t])];
      int64_t first = kv.first_key;
      if (call.p.window > 0)
        first = kv.first_slot_at(kv_head_of(call, plan, h), plan.tile_first_position(h, t) - call.p.window + 1);
      first = std::max(kv.first_key, first / kKeyTile * kKeyTile);
      if (r.end > r.begin) r.begin = static_cast<int32_t>(std::clamp<int64_t>(first, r.begin, r.end - 1));
    }
  return plan;
}

void check_dense_fits(const Call& call) {
  const AttnParams& p = call.p;
  // A cache whose slots are positions must hold the chunk's own keys.
  if (p.causal && p.kv.positions == nullptr && p.q_pos0 + p.n_rows > p.kv.n_keys)
    bad("the KV cache holds " + std::to_string(p.kv.n_keys) + " keys but the query rows reach position " +
        std::to_string(p.q_pos0 + p.n_rows - 1));
  if (!p.causal && p.kv.n_keys == 0) bad("non-causal attention over an empty KV cache");
}

}  // namespace

AttnMath attention_math() { return attention_math_setting(); }
void set_attention_math(AttnMath math) { attention_math_setting() = math; }
int32_t default_tile_rows(int32_t group_size) { return std::max(1, kDefaultTileCols / std::max(1, group_size)); }

void attention_prefill(const AttnParams& params, const Plan* plan) {
  const Call call = resolve(params);
  if (plan) {
    check_plan_fits(call, *plan);
  } else {
    check_dense_fits(call);
  }
  if (call.p.n_rows == 0) {
    if (call.p.stats) *call.p.stats = AttnStats{};
    return;
  }
  if (plan) {
    run(call, *plan);
  } else {
    run(call, default_plan(call, default_tile_rows(call.g)));
  }
}

void attention_decode(const AttnParams& params, const Plan* plan) {
  Call call = resolve(params);
  if (call.p.split_key_tiles == 0 && plan == nullptr && call.p.n_rows == 1) call.p.split_key_tiles = kDecodeSplitTiles;
  if (call.p.n_rows < 1 || call.p.n_rows > kMaxDecodeRows)
    bad("decode takes 1.." + std::to_string(kMaxDecodeRows) + " query rows (got " + std::to_string(call.p.n_rows) +
        "); use attention_prefill");
  if (plan) {
    check_plan_fits(call, *plan);
    run(call, *plan);
    return;
  }
  check_dense_fits(call);
  // One item per KV group: the g heads' rows share each K/V tile.
  run(call, default_plan(call, static_cast<int32_t>(call.p.n_rows)));
}

void merge_partial(int64_t n_rows, int32_t head_dim, float* o, int64_t o_row_stride, float* lse, const float* o2,
                   int64_t o2_row_stride, const float* lse2) {
  if (n_rows < 0 || head_dim <= 0) bad("merge_partial: bad shape");
  if (n_rows > 0 && (o == nullptr || lse == nullptr || o2 == nullptr || lse2 == nullptr))
    bad("merge_partial: null pointer");
  for (int64_t r = 0; r < n_rows; ++r) {
    const float l1 = lse[r], l2 = lse2[r];
    float* a = o + r * o_row_stride;
    const float* b = o2 + r * o2_row_stride;
    if (l2 == kNegInf) continue;
    if (l1 == kNegInf) {
      std::copy(b, b + head_dim, a);
      lse[r] = l2;
      continue;
    }
    const float mx = std::max(l1, l2);
    const float w1 = std::exp(l1 - mx), w2 = std::exp(l2 - mx);
    const float sum = w1 + w2;
    lse[r] = mx + std::log(sum);
    const float f1 = w1 / sum, f2 = w2 / sum;
    for (int32_t c = 0; c < head_dim; ++c) a[c] = f1 * a[c] + f2 * b[c];
  }
}

}  // namespace skim::kernels

namespace skim {

const std::vector<std::string>& attention_math_names() {
  static const std::vector<std::string> names = {"auto", "f32", "bf16"};
  return names;
}

namespace {
// The rate that decided "auto", or a negative number when a path was named.
double& auto_bf16_speedup() {
  static double speedup = -1;
  return speedup;
}
}  // namespace

void set_attention_math(const std::string& name) {
  auto_bf16_speedup() = -1;
  if (name == "f32") {
    kernels::set_attention_math(kernels::AttnMath::kF32);
  } else if (name == "bf16") {
    kernels::set_attention_math(kernels::AttnMath::kBf16);
  } else if (name == "auto") {
    auto_bf16_speedup() = kernels::bf16_dot_speedup();
    kernels::set_attention_math(auto_bf16_speedup() >= kBf16AttentionMinSpeedup ? kernels::AttnMath::kBf16
                                                                                 : kernels::AttnMath::kF32);
  } else {
    throw std::invalid_argument(fmt::format("unknown attention arithmetic '{}' (auto, f32, bf16)", name));
  }
}

std::string attention_math() {
  const std::string name = kernels::attention_math() == kernels::AttnMath::kBf16 ? "bf16" : "f32";
  const double speedup = auto_bf16_speedup();
  if (speedup < 0) return name;
  if (speedup == 0) return name + " (auto: no native bf16 dot product)";
  return fmt::format("{} (auto: bf16 dot {:.1f}x the FMA)", name, speedup);
}

}  // namespace skim
