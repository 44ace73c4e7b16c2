// Attention over a paged cache whose slots are not the positions 0..n-1: rows
// removed from the middle (erase) and a prefix shared with another sequence
// (fork, then both append). For the dense plan and every planner's plan the
// kernel's output must equal a float64 reference over the same (query, key)
// set: the keys the plan lists for the row's tile whose stored position is at
// or before the row's. Position rules must follow the stored positions.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "attention/method.h"
#include "attention/planner.h"
#include "kernels/attention.h"
#include "kernels/attention_reference.h"
#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "kv/kv_types.h"
#include "simd_targets.h"

namespace skim {
namespace {

constexpr int32_t kHq = 4, kHkv = 2, kDim = 64;

// Random rows for new slots of every (layer 0) head; every 97th key a strong
// direction so the dynamic planners find heavy columns.
void fill(kv::KvSequence& seq, int64_t first, int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> k(kDim), v(kDim);
  for (int32_t h = 0; h < kHkv; ++h)
    for (int64_t s = first; s < first + n; ++s) {
      const bool heavy = seq.position(s) % 97 == 0;
      for (float& x : k) x = heavy ? 2.0f : gauss(rng);
      for (float& x : v) x = gauss(rng);
      seq.store_row(0, h, s, k.data(), v.data());
    }
  seq.seal(0);
}

std::vector<int32_t> range(int32_t begin, int32_t end) {
  std::vector<int32_t> p;
  for (int32_t i = begin; i < end; ++i) p.push_back(i);
  return p;
}

// A chunk of n_rows queries at the end of `seq` (its last n_rows slots).
struct Chunk {
  const kv::KvSequence& seq;
  int64_t n_rows;
  std::vector<float> q;  // [row][Hq * d]

  Chunk(const kv::KvSequence& s, int64_t rows, uint32_t seed) : seq(s), n_rows(rows) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    q.resize(static_cast<size_t>(rows * kHq * kDim));
    for (float& x : q) x = std::abs(gauss(rng));
  }

  int64_t q_pos0() const { return seq.position(seq.size() - n_rows); }

  attention::PlanRequest request(bool group_union) const {
    attention::PlanRequest r;
    r.layer = 0;
    r.n_layers = 1;
    r.n_q_heads = kHq;
    r.n_kv_heads = kHkv;
    r.head_dim = kDim;
    r.n_rows = n_rows;
    r.q_pos0 = q_pos0();
    r.q = q.data();
    r.q_head_stride = kDim;
    r.q_row_stride = kHq * kDim;
    r.kv = seq.view(0);
    r.scale = 1.0f / std::sqrt(static_cast<float>(kDim));
    r.group_union = group_union;
    return r;
  }

  kernels::AttnParams params(float* out) const {
    const attention::PlanRequest r = request(true);
    kernels::AttnParams a;
    a.n_q_heads = kHq;
    a.n_kv_heads = kHkv;
    a.head_dim = kDim;
    a.n_rows = n_rows;
    a.q_pos0 = r.q_pos0;
    a.q = q.data();
    a.q_head_stride = kDim;
    a.q_row_stride = kHq * kDim;
    a.kv = r.kv;
    a.out = out;
    a.out_head_stride = kDim;
    a.out_row_stride = kHq * kDim;
    a.validate_plan = true;
    return a;
  }
};

// Float64 attention of every q head and row over the slots `listed(h, row)`
// returns, masked by stored position; the error against `out` (max abs).
template <class Listed>
double max_error_vs_reference(const Chunk& c, const std::vector<float>& out, Listed listed) {
  const kernels::KvView kv = c.seq.view(0);
  const int64_t n = kv.n_keys;
  std::vector<float> k(static_cast<size_t>(n * kDim)), v(k.size());
  double worst = 0;
  for (int32_t h = 0; h < kHq; ++h) {
    const int32_t g = h / (kHq / kHkv);
    kernels::read_k_rows(kv, g, 0, n, kDim, k.data());
    kernels::read_v_rows(kv, g, 0, n, kDim, v.data());
    for (int64_t i = 0; i < c.n_rows; ++i) {
      const float* q = c.q.data() + (i * kHq + h) * kDim;
      const int64_t qpos = c.q_pos0() + i;
      std::vector<std::pair<int64_t, double>> logits;
      double mx = -INFINITY;
      for (int64_t s : listed(h, i)) {
        if (kv.position(g, s) > qpos) continue;
        double dot = 0;
        for (int32_t d = 0; d < kDim; ++d) dot += static_cast<double>(q[d]) * k[s * kDim + d];
        dot /= std::sqrt(static_cast<double>(kDim));
        logits.emplace_back(s, dot);
        mx = std::max(mx, dot);
      }
      std::vector<double> o(kDim, 0.0);
      double sum = 0;
      for (auto [s, l] : logits) {
        const double w = std::exp(l - mx);
        sum += w;
        for (int32_t d = 0; d < kDim; ++d) o[d] += w * v[s * kDim + d];
      }
      const float* got = out.data() + (i * kHq + h) * kDim;
      for (int32_t d = 0; d < kDim; ++d) worst = std::max(worst, std::abs((sum > 0 ? o[d] / sum : 0.0) - got[d]));
    }
  }
  return worst;
}

// The slots a plan lists for q head h's row (chunk row index).
std::vector<int64_t> listed_slots(const attention::Plan& plan, int32_t q_head, int64_t row, int32_t g) {
  const int32_t ph = plan.group_size == 1 ? q_head : q_head / g;
  int64_t local = row;
  if (plan.has_row_map()) {
    local = -1;
    for (int64_t i = 0; i < plan.head_rows(ph); ++i)
      if (plan.row_of(ph, i) == row) local = i;
    if (local < 0) return {};
  }
  const int64_t item = plan.head_item_begin[ph] + local / plan.tile_rows;
  std::vector<int64_t> slots;
  for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r)
    for (int64_t s = plan.ranges[r].begin; s < plan.ranges[r].end; ++s) slots.push_back(s);
  for (int64_t c = plan.col_ptr[item]; c < plan.col_ptr[item + 1]; ++c) slots.push_back(plan.cols[c]);
  return slots;
}

// Planner specs small enough to be sparse on these chunks.
const char* const kSpecs[] = {"streaming:sink=4,local=96",
                              "trishape:sink=4,local=96,last_q=16",
                              "power:sink=4,local=64,block=64",
                              "minference:v=64,s=64",
                              "minference:v=64,s=64,gqa=head",
                              "block_sparse:topk=3",
                              "flexprefill:min_budget=128,gamma=0.3,tau=0",
                              "xattention:block=64,stride=8,tau=0.5",
                              "sale:theta=0.02,sink=16,local=64",
                              "hip:k=128,chunk=16,sink=16,local=64",
                              "dhsa:budget=128,sink=16,local=64",
                              "longheads:chunk=64,k=2",
                              "token_sparse:min_tokens=64,window=32,coverage=0.3",
                              "tca:target=0.5,min_budget=16,sink=4,local=64",
                              "squeezed:target=0.5,sink=4,local=64"};

std::optional<attention::Plan> plan_of(const Chunk& c, const std::string& spec) {
  const attention::MethodSpec parsed = attention::parse_method_spec(spec);
  for (const attention::MethodDef& m : attention::sparse_methods()) {
    if (m.info.name != parsed.name) continue;
    const attention::MethodParams p(&m.info, m.info.name, parsed.values);
    std::unique_ptr<attention::Planner> planner = m.make(p);
    return planner->plan(c.request(p.text("gqa") == "union"));
  }
  throw std::invalid_argument("no sparse method " + parsed.name);
}

// Every planner on the chunk: a valid plan by stored positions, sparse, and
// the kernel's output equal to the float64 reference over its key set.
void check_every_plan(const Chunk& c) {
  const int32_t g = kHq / kHkv;
  const kernels::AttnParams base = c.params(nullptr);

  std::vector<float> out(c.q.size());
  kernels::AttnParams a = base;
  a.out = out.data();
  kernels::attention_prefill(a);
  EXPECT_LT(max_error_vs_reference(c, out,
                                   [&](int32_t, int64_t) {
                                     std::vector<int64_t> all;
                                     for (int64_t s = 0; s < c.seq.size(); ++s) all.push_back(s);
                                     return all;
                                   }),
            2e-5)
      << "dense";

  for (const char* spec : kSpecs) {
    SCOPED_TRACE(spec);
    const std::optional<attention::Plan> plan = plan_of(c, spec);
    ASSERT_TRUE(plan.has_value());
    ASSERT_NO_THROW(kernels::validate_plan(*plan, c.seq.view(0), kHkv, true));
    const attention::PlanRequest r = c.request(true);
    const double dense_pairs = (static_cast<double>(c.n_rows) * r.q_slot0() + c.n_rows * (c.n_rows + 1) / 2.0) * kHq;
    EXPECT_LT(static_cast<double>(plan->listed_pairs()), 0.9 * dense_pairs);
    std::fill(out.begin(), out.end(), 0.0f);
    kernels::attention_prefill(a, &*plan);
    EXPECT_LT(max_error_vs_reference(c, out, [&](int32_t h, int64_t i) { return listed_slots(*plan, h, i, g); }), 2e-5);
  }
}

std::string format_name(kv::KvFormat f) { return fmt::format("K {} V {}", kv::kv_type_name(f.k), kv::kv_type_name(f.v)); }

// A pool of `format` and a sequence in it holding positions [0, n), filled from rng.
struct Filled {
  kv::KvPool pool;
  kv::KvSequence seq;
  Filled(kv::KvFormat format, int32_t n, std::mt19937& rng) : pool(kDim, format, 1024), seq(pool, 1, kHkv, 4096) {
    seq.append(range(0, n));
    fill(seq, 0, n, rng);
  }
};

// Every format, K and V alike or not: the kernel and every planner over the
// stored (quantized) rows agree with the reference over their decoded values.
TEST(PagedAttention, RowsRemovedFromTheMiddle) {
  using enum kernels::KvDType;
  for (const kv::KvFormat format : {kv::KvFormat{F16, F16}, kv::KvFormat{Q8_0, Q8_0}, kv::KvFormat{Q4_0, Q4_0},
                                    kv::KvFormat{TQ3, TQ4}, kv::KvFormat{Q8_0, TQ2}, kv::KvFormat{F32, BF16},
                                    kv::KvFormat{TQ4J, TQ3J}}) {
  SCOPED_TRACE(format_name(format));
  std::mt19937 rng(7);
  Filled filled(format, 1500, rng);
  kv::KvSequence& seq = filled.seq;
  seq.erase(300, 900);  // positions 300..899 gone: slots 300.. hold 900..
  const int64_t first = seq.append(range(1500, 1800));  // the chunk
  fill(seq, first, 300, rng);
  ASSERT_EQ(seq.size(), 1200);
  ASSERT_EQ(seq.position(300), 900);
  check_every_plan(Chunk(seq, 300, 11));
  }
}

// KIVI: sealed pages quantized per channel (keys) and per token (values), the
// chunk's unfilled last page read from the f16 stage, a prefix shared by a fork.
TEST(PagedAttention, KiviPagesAndTheirF16Stage) {
  using enum kernels::KvDType;
  for (const kv::KvFormat format : {kv::KvFormat{KIVI_K2, KIVI_V2}, kv::KvFormat{KIVI_K4, F16}}) {
    SCOPED_TRACE(format_name(format));
    std::mt19937 rng(9);
    Filled base(format, 1000, rng);
    kv::KvSequence seq = base.seq.fork();
    const int64_t first = seq.append(range(1000, 1300));
    fill(seq, first, 300, rng);
    ASSERT_TRUE(seq.view(0).staged(1299));
    ASSERT_FALSE(seq.view(0).staged(1279));
    check_every_plan(Chunk(seq, 300, 13));
  }
}

// Decode over q8_0 / q4_0 pages, on every SIMD target: dense decode (one row's
// key stream split into parts of 16 key tiles and merged) and a gathered
// sparse plan, one and two rows, equal the float64 reference over the decoded rows.
TEST(PagedAttention, DecodeOverQuantizedPages) {
  using enum kernels::KvDType;
  const int32_t g = kHq / kHkv;
  for (const kv::KvFormat format : {kv::KvFormat{Q8_0, Q8_0}, kv::KvFormat{Q4_0, Q4_0}, kv::KvFormat{Q4_0, F16}}) {
    SCOPED_TRACE(format_name(format));
    std::mt19937 rng(5);
    kv::KvPool pool(kDim, format, 1024);
    kv::KvSequence seq(pool, 1, kHkv, 4096);
    fill(seq, seq.append(range(0, 2000)), 2000, rng);
    seq.erase(500, 700);  // slots are not positions
    const kernels::KvView kv = seq.view(0);
    for (const int64_t rows : {int64_t{1}, int64_t{2}}) {
      const Chunk c(seq, rows, 17);
      kernels::PlanBuilder sparse(c.request(true).shape(kHkv, g, static_cast<int32_t>(rows)));
      for (int32_t h = 0; h < kHkv; ++h) {
        sparse.add_range(0, 64);
        sparse.add_range(1000 + 64 * h, 1200 + 64 * h);
        for (int64_t col = 1300; col < 1700; col += 7 + h) sparse.add_column(col);
        sparse.add_range(1750, kv.n_keys);
        sparse.end_tile();
      }
      const attention::Plan plan = sparse.finish();
      const auto all = [&](int32_t, int64_t) {
        std::vector<int64_t> slots(static_cast<size_t>(kv.n_keys));
        for (int64_t sl = 0; sl < kv.n_keys; ++sl) slots[static_cast<size_t>(sl)] = sl;
        return slots;
      };
      const auto listed = [&](int32_t h, int64_t i) { return listed_slots(plan, h, i, g); };
      std::vector<float> out(c.q.size());
      const kernels::AttnParams a = c.params(out.data());
      test::for_each_simd_target([&] {
        kernels::AttnStats stats;
        kernels::AttnParams dense = a;
        dense.stats = &stats;
        kernels::attention_decode(dense);
        EXPECT_EQ(stats.split_items > 0, rows == 1);
        EXPECT_LT(max_error_vs_reference(c, out, all), 2e-5) << "dense, rows " << rows;
        kernels::attention_decode(a, &plan);
        EXPECT_LT(max_error_vs_reference(c, out, listed), 2e-5) << "sparse, rows " << rows;
      });
    }
  }
}

TEST(PagedAttention, SharedPrefixAfterBothSequencesAppend) {
  kv::KvPool pool(kDim, {kernels::KvDType::BF16, kernels::KvDType::BF16}, 1024);
  kv::KvSequence a(pool, 1, kHkv, 4096);
  std::mt19937 rng(5);
  a.append(range(0, 1000));  // a partial last page: the fork copies it on write
  fill(a, 0, 1000, rng);
  kv::KvSequence b = a.fork();
  fill(a, a.append(range(1000, 1400)), 400, rng);
  // b continues at later positions (as after a context shift it would at other ones).
  fill(b, b.append(range(2000, 2300)), 300, rng);
  Chunk cb(b, 300, 3);
  std::vector<float> before(cb.q.size());
  {
    kernels::AttnParams p = cb.params(before.data());
    kernels::attention_prefill(p);
  }
  check_every_plan(cb);
  check_every_plan(Chunk(a, 400, 4));
  // a's appends (after the fork) leave b's attention unchanged, bit for bit.
  fill(a, a.append(range(1400, 1500)), 100, rng);
  std::vector<float> after(cb.q.size());
  kernels::AttnParams p = cb.params(after.data());
  kernels::attention_prefill(p);
  EXPECT_EQ(before, after);
}

TEST(PagedAttention, PositionRulesFollowStoredPositions) {
  // Streaming keeps the keys at positions < sink and within `local` of the
  // query block: after an erase that is not the same as slots.
  kv::KvPool pool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 256);
  kv::KvSequence seq(pool, 1, kHkv, 4096);
  std::mt19937 rng(1);
  fill(seq, seq.append(range(0, 600)), 600, rng);
  seq.erase(2, 400);  // slots 0, 1 keep positions 0, 1; slot 2 holds position 400
  fill(seq, seq.append(range(600, 664)), 64, rng);
  const Chunk c(seq, 64, 2);
  const std::optional<attention::Plan> plan = plan_of(c, "streaming:sink=4,local=100");
  ASSERT_TRUE(plan.has_value());
  const kernels::KvView kv = seq.view(0);
  for (int32_t h = 0; h < plan->n_heads; ++h)
    for (int64_t t = 0; t < plan->head_tiles(h); ++t) {
      const int64_t first = c.q_pos0(), last = plan->tile_last_position(h, t);  // one query block
      std::vector<int64_t> want;
      for (int64_t s = 0; s < seq.size(); ++s) {
        const int32_t pos = kv.position(0, s);
        if ((pos < 4 || pos > first - 100) && pos <= last) want.push_back(s);
      }
      std::vector<int64_t> got;
      const int64_t item = plan->head_item_begin[h] + t;
      for (int64_t r = plan->range_ptr[item]; r < plan->range_ptr[item + 1]; ++r)
        for (int64_t s = plan->ranges[r].begin; s < plan->ranges[r].end; ++s) got.push_back(s);
      EXPECT_EQ(got, want) << "head " << h << " tile " << t;
    }
}

TEST(PagedAttention, SlidingWindowSeesOnlyItsWindowAndSurvivesReleasedPages) {
  // A window layer: row at position p sees positions (p - window, p]. After
  // an erase the slots are not positions; then the pages before the window
  // are given back and the same calls must give the same bits.
  constexpr int32_t kWindow = 300;
  kv::KvPool pool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 256);
  kv::KvSequence seq(pool, 1, kHkv, 4096);
  std::mt19937 rng(3);
  fill(seq, seq.append(range(0, 1400)), 1400, rng);
  seq.erase(100, 200);
  fill(seq, seq.append(range(1400, 1600)), 200, rng);
  const Chunk c(seq, 200, 9);
  const auto in_window = [&](int32_t, int64_t i) {
    std::vector<int64_t> slots;
    const int64_t qpos = c.q_pos0() + i;
    for (int64_t s = 0; s < seq.size(); ++s)
      if (seq.position(s) > qpos - kWindow) slots.push_back(s);
    return slots;
  };
  std::vector<float> out(c.q.size()), kept(c.q.size()), released(c.q.size());
  kernels::AttnParams a = c.params(out.data());
  a.window = kWindow;
  kernels::attention_prefill(a);
  EXPECT_LT(max_error_vs_reference(c, out, in_window), 2e-5);
  // Decode: the chunk's last row alone.
  const int64_t last = c.n_rows - 1;
  kernels::AttnParams d = a;
  d.n_rows = 1;
  d.q_pos0 = a.q_pos0 + last;
  d.q = c.q.data() + last * kHq * kDim;
  d.out = kept.data();
  kernels::attention_decode(d);
  for (int64_t e = 0; e < kHq * kDim; ++e) EXPECT_NEAR(kept[e], out[last * kHq * kDim + e], 2e-6);

  const int64_t first_needed = seq.view(0).first_slot_at(0, c.q_pos0() - kWindow + 1);
  const int64_t in_use = pool.pages_in_use();
  seq.release_before(0, first_needed / kv::kPageRows * kv::kPageRows);  // whole pages, as a window layer does
  EXPECT_EQ(pool.pages_in_use(), in_use - first_needed / kv::kPageRows * kHkv);
  EXPECT_EQ(seq.view(0).first_key, first_needed / kv::kPageRows * kv::kPageRows);
  a.kv = seq.view(0);
  d.kv = a.kv;
  a.out = released.data();
  kernels::attention_prefill(a);
  EXPECT_EQ(released, out);
  d.out = released.data();
  kernels::attention_decode(d);
  EXPECT_EQ(std::vector<float>(released.begin(), released.begin() + kHq * kDim),
            std::vector<float>(kept.begin(), kept.begin() + kHq * kDim));
  std::vector<float> ref(c.q.size());
  kernels::attention_reference(c.q.data(), static_cast<int>(c.n_rows), static_cast<int>(c.q_pos0()), seq.view(0), kHq, kHkv,
                               kDim, ref.data(), kWindow);
  for (size_t e = 0; e < ref.size(); ++e) ASSERT_NEAR(ref[e], out[e], 2e-5);

  // The sequence keeps its positions through the layers that still hold them,
  // refuses to cut below what it gave back, and a fork shares the rest.
  EXPECT_EQ(seq.position(seq.size() - 1), 1599);
  EXPECT_THROW(seq.truncate(seq.first_held()), std::out_of_range);
  EXPECT_THROW(seq.erase(seq.size() - 2, seq.size() - 1), std::logic_error);
  kv::KvSequence copy = seq.fork();
  EXPECT_EQ(copy.view(0).first_key, seq.view(0).first_key);
  copy.truncate(seq.size() - 10);
  seq.clear();
  EXPECT_EQ(seq.first_held(), 0);
  EXPECT_EQ(copy.pages_held(), (copy.size() + kv::kPageRows - 1) / kv::kPageRows * kHkv - first_needed / kv::kPageRows * kHkv);
}

// Per-layer budgets (KvSequence::keep_rows): every layer keeps its own count
// of rows per head, moved with their positions to end at the largest count;
// a layer keeping fewer gives back the pages before its first row. Attention over such a layer (its view starts mid-page) equals the
// float64 reference over the rows it kept, and later rows append to every
// layer; a second cut works on what each layer still holds.
TEST(PagedAttention, PerLayerBudgetsKeepEachLayersOwnRows) {
  constexpr int32_t kLayers = 3;
  kv::KvPool pool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 512);
  kv::KvSequence seq(pool, kLayers, kHkv, 4096);
  std::mt19937 rng(11);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> row(kDim);
  const auto fill_all = [&](int64_t first, int64_t n) {
    for (int32_t l = 0; l < kLayers; ++l)
      for (int32_t h = 0; h < kHkv; ++h)
        for (int64_t s = first; s < first + n; ++s) {
          for (float& x : row) x = gauss(rng);
          kernels::encode_kv_row(row.data(), kernels::KvDType::F16, kDim, seq.k_row(l, h, s));
          for (float& x : row) x = gauss(rng);
          kernels::encode_kv_row(row.data(), kernels::KvDType::F16, kDim, seq.v_row(l, h, s));
        }
  };
  fill_all(seq.append(range(0, 500)), 500);
  // One (layer, head)'s held rows: K then V values, and positions.
  struct Rows {
    std::vector<float> k, v;
    std::vector<int32_t> pos;
  };
  const auto rows_of = [&](int32_t l, int32_t h) {
    const kernels::KvView view = seq.view(l);
    const int64_t first = view.first_key, n = view.n_keys - first;
    Rows r{std::vector<float>(static_cast<size_t>(n * kDim)), std::vector<float>(static_cast<size_t>(n * kDim)), {}};
    kernels::read_k_rows(view, h, first, n, kDim, r.k.data());
    kernels::read_v_rows(view, h, first, n, kDim, r.v.data());
    for (int64_t s = first; s < view.n_keys; ++s) r.pos.push_back(view.position(h, s));
    return r;
  };
  // Random ascending picks of `count` held slots per head, the last one always kept (a policy's window).
  const auto cut = [&](const std::vector<int64_t>& counts) {
    std::vector<std::vector<std::vector<int64_t>>> kept(kLayers);
    std::vector<std::vector<Rows>> before(kLayers);
    for (int32_t l = 0; l < kLayers; ++l)
      for (int32_t h = 0; h < kHkv; ++h) {
        const kernels::KvView view = seq.view(l);
        std::vector<int64_t> held;
        for (int64_t s = view.first_key; s < view.n_keys - 1; ++s) held.push_back(s);
        std::shuffle(held.begin(), held.end(), rng);
        held.resize(static_cast<size_t>(counts[l] - 1));
        held.push_back(view.n_keys - 1);
        std::sort(held.begin(), held.end());
        kept[l].push_back(held);
        before[l].push_back(rows_of(l, h));
      }
    std::vector<int64_t> first_before(kLayers);
    for (int32_t l = 0; l < kLayers; ++l) first_before[l] = seq.view(l).first_key;
    seq.keep_rows(kept);
    const int64_t end = *std::max_element(counts.begin(), counts.end());
    ASSERT_EQ(seq.size(), end);
    int64_t pages = 0;
    for (int32_t l = 0; l < kLayers; ++l) {
      const kernels::KvView view = seq.view(l);
      ASSERT_EQ(view.first_key, end - counts[l]) << "layer " << l;
      pages += ((end + kv::kPageRows - 1) / kv::kPageRows - view.first_key / kv::kPageRows) * kHkv;
      for (int32_t h = 0; h < kHkv; ++h) {
        const Rows after = rows_of(l, h);
        const Rows& was = before[l][h];
        for (int64_t i = 0; i < counts[l]; ++i) {
          const int64_t from = kept[l][h][i] - first_before[l];
          ASSERT_EQ(after.pos[i], was.pos[from]) << "layer " << l << " head " << h << " row " << i;
          for (int e = 0; e < kDim; ++e) {
            ASSERT_EQ(after.k[i * kDim + e], was.k[from * kDim + e]);
            ASSERT_EQ(after.v[i * kDim + e], was.v[from * kDim + e]);
          }
        }
      }
    }
    EXPECT_EQ(pool.pages_in_use(), pages);
    EXPECT_EQ(seq.pages_held(), pages);
  };
  cut({500, 200, 77});
  EXPECT_TRUE(seq.evicted());
  EXPECT_EQ(seq.first_held(), 500 - 77);
  EXPECT_THROW(seq.erase(0, 1), std::logic_error);

  // A decode step over the smallest layer, whose rows start mid-page.
  fill_all(seq.append(range(500, 510)), 10);
  const kernels::KvView view = seq.view(2);
  ASSERT_EQ(view.first_key, 500 - 77);
  ASSERT_EQ(view.n_keys, 510);
  std::vector<float> q(static_cast<size_t>(kHq * kDim)), out(q.size()), ref(q.size());
  for (float& x : q) x = gauss(rng);
  kernels::AttnParams d;
  d.n_q_heads = kHq;
  d.n_kv_heads = kHkv;
  d.head_dim = kDim;
  d.n_rows = 1;
  d.q_pos0 = 509;
  d.q = q.data();
  d.q_head_stride = kDim;
  d.q_row_stride = kHq * kDim;
  d.kv = view;
  d.out = out.data();
  d.out_head_stride = kDim;
  d.out_row_stride = kHq * kDim;
  kernels::attention_decode(d);
  kernels::attention_reference(q.data(), 1, 509, view, kHq, kHkv, kDim, ref.data(), 0);
  for (size_t e = 0; e < ref.size(); ++e) ASSERT_NEAR(ref[e], out[e], 2e-5);

  // The second cut's largest count is below the first's: every layer's rows
  // move down, the smaller layers' into pages taken back.
  cut({300, 150, 60});
  EXPECT_EQ(seq.size(), 300);
  EXPECT_EQ(seq.position(seq.size() - 1), 509);
  // A bad choice is refused: heads of one layer keeping different counts, or a slot the layer gave back.
  std::vector<std::vector<std::vector<int64_t>>> uneven(kLayers, {{seq.size() - 1}, {seq.size() - 1}});
  uneven[1][0].insert(uneven[1][0].begin(), seq.size() - 2);
  EXPECT_THROW(seq.keep_rows(uneven), std::invalid_argument);
  std::vector<std::vector<std::vector<int64_t>>> released(kLayers, {{0, seq.size() - 1}, {0, seq.size() - 1}});
  EXPECT_THROW(seq.keep_rows(released), std::invalid_argument);
  seq.clear();
  EXPECT_FALSE(seq.evicted());
  EXPECT_EQ(seq.first_held(), 0);
  EXPECT_EQ(pool.pages_in_use(), 0);
}

}  // namespace
}  // namespace skim
