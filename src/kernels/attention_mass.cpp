#include "kernels/attention_mass.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/attention_mass.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include "kernels/kv_codec.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Keys per block: a block of transposed keys (head_dim x kBlock floats, 64 KiB
// at d 64) stays in L2 while every query row passes over it.
constexpr int64_t kBlock = kMassKeyBlock;

// Query rows scored together: each block of transposed keys loaded from L1
// feeds this many rows' multiply-adds (2 accumulators each: 8 rows fill 16 of
// AVX-512's 32 registers; AVX2 has 16).
constexpr int kItems = HWY_MAX_BYTES >= 64 ? 8 : 4;

// The two-pass form, for many rows (a prefill micro-batch):
// s[i][j] = scale * q_i . k_j for kItems query rows (null: none) and j < count,
// rounded up to 2 vectors (kBlock is a multiple of that; the block's padding
// keys are zero); keys transposed: kt[e * kBlock + j]. Not inlined: its
// accumulators need the registers that callers keep their constants in.
HWY_NOINLINE void BlockScores(DF df, const float* const* q, const float* HWY_RESTRICT kt, int32_t d, int64_t count,
                              float scale, float* const* s) {
  static_assert(kBlock % (2 * HWY_MAX_BYTES / sizeof(float)) == 0);
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  static const float kZero[kMaxKvRow] = {};
  const float* rows[kItems];
  for (int i = 0; i < kItems; ++i) rows[i] = q[i] ? q[i] : kZero;
  const VF sc = hn::Set(df, scale);
  for (int64_t j = 0; j < count; j += 2 * N) {
    VF a[kItems][2];
    // Unrolled, so that the accumulators stay in registers.
    HWY_UNROLL(kItems)
    for (int i = 0; i < kItems; ++i) a[i][0] = a[i][1] = hn::Zero(df);
    for (int32_t e = 0; e < d; ++e) {
      const float* k = kt + e * kBlock + j;
      const VF k0 = hn::LoadU(df, k), k1 = hn::LoadU(df, k + N);
      HWY_UNROLL(kItems)
      for (int i = 0; i < kItems; ++i) {
        const VF qe = hn::Set(df, rows[i][e]);
        a[i][0] = hn::MulAdd(qe, k0, a[i][0]);
        a[i][1] = hn::MulAdd(qe, k1, a[i][1]);
      }
    }
    HWY_UNROLL(kItems)
    for (int i = 0; i < kItems; ++i) {
      hn::Store(hn::Mul(a[i][0], sc), df, s[i] + j);
      hn::Store(hn::Mul(a[i][1], sc), df, s[i] + j + N);
    }
  }
}

// sum_j exp(s[j] - shift) over j < count.
double SumExp(DF df, const float* HWY_RESTRICT s, int64_t count, float shift) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF vshift = hn::Set(df, shift);
  VF sum = hn::Zero(df);
  int64_t j = 0;
  for (; j + N <= count; j += N) sum = hn::Add(sum, hn::Exp(df, hn::Sub(hn::LoadU(df, s + j), vshift)));
  double total = hn::GetLane(hn::SumOfLanes(df, sum));
  for (; j < count; ++j) total += std::exp(s[j] - shift);
  return total;
}

// out[j] += exp(s[j] - shift) for j < count: a row's softmax weights added to the keys' mass.
void AddExp(DF df, const float* HWY_RESTRICT s, int64_t count, float shift, float* HWY_RESTRICT out) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF vshift = hn::Set(df, shift);
  int64_t j = 0;
  for (; j + N <= count; j += N)
    hn::StoreU(hn::Add(hn::LoadU(df, out + j), hn::Exp(df, hn::Sub(hn::LoadU(df, s + j), vshift))), df, out + j);
  for (; j < count; ++j) out[j] += std::exp(s[j] - shift);
}

// s[j] = exp(s[j] - shift) for j < count: held scores turned into softmax weights.
void ExpInPlace(DF df, float* HWY_RESTRICT s, int64_t count, float shift) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const VF vshift = hn::Set(df, shift);
  int64_t j = 0;
  for (; j + N <= count; j += N) hn::StoreU(hn::Exp(df, hn::Sub(hn::LoadU(df, s + j), vshift)), df, s + j);
  for (; j < count; ++j) s[j] = std::exp(s[j] - shift);
}

// Up to this many (query row, key) scores, they are computed once and held
// (a decode step's few rows): no transposed copy, no second q.k pass.
constexpr int64_t kMaxHeldScores = int64_t{1} << 20;

// Per query row i at position q_pos0 + i, the slots it sees (a prefix).
std::vector<int64_t> VisibleSlots(const KvView& kv, int32_t head, int32_t rows, int32_t q_pos0) {
  std::vector<int64_t> visible(static_cast<size_t>(rows));
  for (int32_t i = 0; i < rows; ++i) visible[static_cast<size_t>(i)] = kv.slots_through(head, q_pos0 + i);
  return visible;
}

// held[item * ld + j] = scale * q_item . k_(first + j) for the keys item
// (member, row) sees, j < seen(item): keys read row by row, each score one
// dot product. Threads: the calling parallel region's, split over key blocks.
template <class Seen>
void HeldScores(DF df, const float* q, int64_t q_row_stride, int32_t rows, int32_t group, int32_t d, const KvView& kv,
                int32_t head, float scale, const Seen& seen, float* held, int64_t ld) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t first = kv.first_key, span = kv.n_keys - first;
  const int64_t blocks = (span + kBlock - 1) / kBlock;
  const int64_t items = static_cast<int64_t>(group) * rows;
  std::vector<float> keys(static_cast<size_t>(kBlock * d));
#pragma omp for schedule(dynamic, 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kBlock, count = std::min(kBlock, span - c0);
    read_k_rows(kv, head, first + c0, count, d, keys.data());
    for (int64_t item = 0; item < items; ++item) {
      const float* qi = q + (item % rows) * q_row_stride + (static_cast<int64_t>(head) * group + item / rows) * d;
      const int64_t end = std::min(count, seen(item) - c0);
      float* out = held + item * ld + c0;
      for (int64_t j = 0; j < end; ++j) {
        const float* k = keys.data() + j * d;
        VF acc0 = hn::Zero(df), acc1 = hn::Zero(df);
        int32_t e = 0;
        for (; e + 2 * N <= d; e += 2 * static_cast<int32_t>(N)) {
          acc0 = hn::MulAdd(hn::LoadU(df, qi + e), hn::LoadU(df, k + e), acc0);
          acc1 = hn::MulAdd(hn::LoadU(df, qi + e + N), hn::LoadU(df, k + e + N), acc1);
        }
        for (; e < d; e += static_cast<int32_t>(N)) acc0 = hn::MulAdd(hn::LoadU(df, qi + e), hn::LoadU(df, k + e), acc0);
        out[j] = scale * hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
      }
    }
  }
}

// The held scores' log-sum-exp per item (-inf for an item that sees no key).
template <class Seen>
void HeldLse(DF df, const float* held, int64_t ld, int64_t items, const Seen& seen, float* lse) {
#pragma omp for schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t end = seen(item);
    lse[item] = -INFINITY;
    if (end == 0) continue;  // the row sees no key
    const float* s = held + item * ld;
    const float m = *std::max_element(s, s + end);
    lse[item] = m + static_cast<float>(std::log(SumExp(df, s, end, m)));
  }
}

// Keys of item (member, row) of a group: a prefix of the held slots.
struct SeenKeys {
  const std::vector<int64_t>& visible;  // per row, the slots it sees
  int32_t rows;
  int64_t first;
  int64_t operator()(int64_t item) const {
    return std::max<int64_t>(0, visible[static_cast<size_t>(item % rows)] - first);
  }
};

// The mass with every score held (a decode step's few rows): no transposed
// copy, no second q.k pass.
void HeldScoresMass(DF df, const float* q, int64_t q_row_stride, int32_t rows, int32_t group, int32_t d,
                    const KvView& kv, int32_t head, float scale, const std::vector<int64_t>& visible, float* mass) {
  const int64_t first = kv.first_key, span = kv.n_keys - first;
  const int64_t blocks = (span + kBlock - 1) / kBlock;
  const int64_t items = static_cast<int64_t>(group) * rows;
  thread_local std::vector<float> held_storage;
  held_storage.resize(static_cast<size_t>(items * span));
  float* held = held_storage.data();
  std::vector<float> lse(static_cast<size_t>(items));
  const SeenKeys seen{visible, rows, first};
#pragma omp parallel
  {
    HeldScores(df, q, q_row_stride, rows, group, d, kv, head, scale, seen, held, span);
    HeldLse(df, held, span, items, seen, lse.data());
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * kBlock, count = std::min(kBlock, span - c0);
      float* out = mass + first + c0;
      for (int64_t item = 0; item < items; ++item)
        AddExp(df, held + item * span + c0, std::min(count, seen(item) - c0), lse[static_cast<size_t>(item)], out);
    }
  }
}

// Each item's softmax, in place over its held scores (zeros past the keys it sees).
void AttentionProbabilities(const float* q, int64_t q_row_stride, int32_t rows, int32_t q_pos0, int32_t n_q_heads,
                            int32_t n_kv_heads, int32_t d, const KvView* kv_ptr, int32_t head, float scale,
                            float* probs) {
  const int64_t items = static_cast<int64_t>(n_q_heads / n_kv_heads) * rows;
  const KvView& kv = *kv_ptr;
  const int64_t first = kv.first_key, n = kv.n_keys;
  const std::vector<int64_t> visible = VisibleSlots(kv, head, rows, q_pos0);
  const SeenKeys seen{visible, rows, first};
  std::vector<float> lse(static_cast<size_t>(items));
  float* held = probs + first;  // item i's scores at probs + i * n + first
  const DF df;
#pragma omp parallel
  {
    HeldScores(df, q, q_row_stride, rows, n_q_heads / n_kv_heads, d, kv, head, scale, seen, held, n);
    HeldLse(df, held, n, items, seen, lse.data());
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      float* p = probs + item * n;
      const int64_t end = first + seen(item);
      std::fill(p, p + first, 0.0f);
      std::fill(p + end, p + n, 0.0f);
      ExpInPlace(df, p + first, end - first, lse[static_cast<size_t>(item)]);
    }
  }
}

void AccumulateAttentionMass(const float* q, int64_t q_row_stride, int32_t rows, int32_t q_pos0, int32_t n_q_heads,
                             int32_t n_kv_heads, int32_t d, const KvView* kv_ptr, int32_t head, float scale,
                             float* mass) {
  const KvView& kv = *kv_ptr;
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int32_t group = n_q_heads / n_kv_heads;
  const int64_t first = kv.first_key, n = kv.n_keys;
  const int64_t blocks = (n - first + kBlock - 1) / kBlock;
  const int64_t items = static_cast<int64_t>(group) * rows;  // (member, row), row-major by member
  const int64_t item_groups = (items + kItems - 1) / kItems;
  const std::vector<int64_t> visible = VisibleSlots(kv, head, rows, q_pos0);
  if (items * (n - first) <= kMaxHeldScores) {
    HeldScoresMass(df, q, q_row_stride, rows, group, d, kv, head, scale, visible, mass);
    return;
  }
  // Every block of keys transposed once (reused across calls: a decode step
  // makes one call per layer and KV head); rows each see a prefix of the slots.
  thread_local std::vector<float> kt_storage, block_max, block_sum;
  kt_storage.resize(static_cast<size_t>(blocks * d * kBlock));
  block_max.assign(static_cast<size_t>(blocks * items), -INFINITY);
  block_sum.assign(static_cast<size_t>(blocks * items), 0.0f);
  float* kt = kt_storage.data();
  float* bmax = block_max.data();
  float* bsum = block_sum.data();
  std::vector<float> lse(static_cast<size_t>(items), -INFINITY);
  // Item group t of block b: its queries (null past the last item) and each item's key count.
  const auto prepare = [&](int64_t b, int64_t t, const float** qs, int64_t* counts) {
    int64_t widest = 0;
    for (int i = 0; i < kItems; ++i) {
      const int64_t item = t * kItems + i;
      counts[i] = item < items ? std::min<int64_t>(kBlock, visible[static_cast<size_t>(item % rows)] - (first + b * kBlock)) : 0;
      qs[i] = counts[i] > 0 ? q + (item % rows) * q_row_stride + (static_cast<int64_t>(head) * group + item / rows) * d
                            : nullptr;
      widest = std::max(widest, counts[i]);
    }
    return widest;
  };
#pragma omp parallel
  {
    std::vector<float> keys(static_cast<size_t>(kBlock * d));
    alignas(64) float s[kItems][kBlock];
    float* s_rows[kItems];
    for (int i = 0; i < kItems; ++i) s_rows[i] = s[i];
    const float* qs[kItems];
    int64_t counts[kItems];
    // use(item, scores, count) for each item of block b that sees a key of it.
    const auto score_block = [&](int64_t b, const auto& use) {
      for (int64_t t = 0; t < item_groups; ++t) {
        const int64_t widest = prepare(b, t, qs, counts);
        if (widest <= 0) continue;
        BlockScores(df, qs, kt + b * d * kBlock, d, widest, scale, s_rows);
        for (int i = 0; i < kItems; ++i)
          if (counts[i] > 0) use(t * kItems + i, s[i], counts[i]);
      }
    };
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = first + b * kBlock, count = std::min(kBlock, n - c0);
      read_k_rows(kv, head, c0, count, d, keys.data());
      float* block = kt + b * d * kBlock;
      // Scores are computed in whole vector pairs: the keys past the last are zero.
      const int64_t padded = std::min(kBlock, (count + 2 * N - 1) / (2 * N) * (2 * N));
      for (int32_t e = 0; e < d; ++e) {
        for (int64_t j = 0; j < count; ++j) block[e * kBlock + j] = keys[static_cast<size_t>(j * d + e)];
        std::fill(block + e * kBlock + count, block + e * kBlock + padded, 0.0f);
      }
    }
    // Pass 1, blocks split over threads: each item's max and sum of exp in the block.
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b)
      score_block(b, [&](int64_t item, const float* row, int64_t count) {
        const float mx = *std::max_element(row, row + count);
        bmax[b * items + item] = mx;
        bsum[b * items + item] = static_cast<float>(SumExp(df, row, count, mx));
      });
    // Each item's log-sum-exp from its blocks' (max, sum).
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      float m = -INFINITY;
      for (int64_t b = 0; b < blocks; ++b) m = std::max(m, bmax[b * items + item]);
      if (m == -INFINITY) continue;  // the row sees no key
      double total = 0.0;
      for (int64_t b = 0; b < blocks; ++b)
        if (bmax[b * items + item] != -INFINITY) total += bsum[b * items + item] * std::exp(bmax[b * items + item] - m);
      lse[static_cast<size_t>(item)] = m + static_cast<float>(std::log(total));
    }
    // Pass 2: blocks split over threads (each writes its own slots of mass).
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b)
      score_block(b, [&](int64_t item, const float* row, int64_t count) {
        AddExp(df, row, count, lse[static_cast<size_t>(item)], mass + first + b * kBlock);
      });
  }
}

// The largest of x[0..n), n >= 1.
float RowMax(DF df, const float* HWY_RESTRICT x, int64_t n) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF m = hn::Set(df, -INFINITY);
  int64_t j = 0;
  for (; j + N <= n; j += N) m = hn::Max(m, hn::LoadU(df, x + j));
  float top = hn::GetLane(hn::MaxOfLanes(df, m));
  for (; j < n; ++j) top = std::max(top, x[j]);
  return top;
}

void KeyBlockMass(const float* q, int32_t m, const int64_t* visible, const float* kt, int32_t d, int64_t kblock,
                  float* mass, int64_t ld) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t widest = *std::max_element(visible, visible + m);
  const int64_t blocks = (widest + kBlock - 1) / kBlock, stride = blocks * kBlock;
  // Every row's scores over the keys it sees, key block by key block: a block
  // of transposed keys stays in L1/L2 while the rows pass over it. BlockScores
  // stores whole aligned vectors.
  thread_local hwy::AlignedFreeUniquePtr<float[]> scores;
  thread_local size_t capacity = 0;
  const size_t need = static_cast<size_t>((m + 1) * stride);  // the last row: scores of rows seeing no key here
  if (capacity < need) {
    scores = hwy::AllocateAligned<float>(need);
    capacity = need;
  }
  float* discard = scores.get() + m * stride;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int32_t t = 0; t < m; t += kItems) {
      const float* qs[kItems];
      float* out[kItems];
      int64_t count = 0;
      for (int i = 0; i < kItems; ++i) {
        const int32_t a = t + i;
        const int64_t seen = a < m ? std::min(kBlock, visible[a] - b * kBlock) : 0;
        qs[i] = seen > 0 ? q + static_cast<int64_t>(a) * d : nullptr;
        out[i] = seen > 0 ? scores.get() + a * stride + b * kBlock : discard;
        count = std::max(count, seen);
      }
      if (count > 0) BlockScores(df, qs, kt + b * d * kBlock, d, count, 1.0f, out);
    }
  }
  // Per row, each key block's sum of exp(score - max), normalised by their total.
  for (int32_t a = 0; a < m; ++a) {
    const float* s = scores.get() + a * stride;
    const int64_t own = visible[a];
    const VF shift = hn::Set(df, RowMax(df, s, own));
    float* row = mass + a * ld;
    double total = 0.0;
    for (int64_t c = 0; c * kblock < own; ++c) {
      const int64_t j1 = std::min(own, (c + 1) * kblock);
      VF sum = hn::Zero(df);
      for (int64_t j = c * kblock; j < j1; j += N) {
        const VF e = hn::Exp(df, hn::Sub(hn::LoadU(df, s + j), shift));
        sum = hn::Add(sum, j + N <= j1 ? e : hn::IfThenElseZero(hn::FirstN(df, static_cast<size_t>(j1 - j)), e));
      }
      row[c] = hn::GetLane(hn::SumOfLanes(df, sum));
      total += row[c];
    }
    const float inv = static_cast<float>(1.0 / total);
    for (int64_t c = 0; c * kblock < own; ++c) row[c] *= inv;
  }
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels {

HWY_EXPORT(AccumulateAttentionMass);
HWY_EXPORT(AttentionProbabilities);
HWY_EXPORT(KeyBlockMass);

namespace {
void check_shape(const char* who, int32_t rows, int32_t n_q_heads, int32_t n_kv_heads, int32_t head_dim, int32_t head) {
  if (n_kv_heads <= 0 || n_q_heads % n_kv_heads != 0 || head < 0 || head >= n_kv_heads || head_dim % 16 != 0 ||
      head_dim > kMaxKvRow || rows < 0)
    throw std::invalid_argument(std::string(who) + ": bad head shape");
}
}  // namespace

void accumulate_attention_mass(const float* q, int64_t q_row_stride, int32_t rows, int32_t q_pos0, int32_t n_q_heads,
                               int32_t n_kv_heads, int32_t head_dim, const KvView& kv, int32_t head, float scale,
                               float* mass) {
  check_shape("accumulate_attention_mass", rows, n_q_heads, n_kv_heads, head_dim, head);
  if (rows == 0 || kv.n_keys <= kv.first_key) return;
  HWY_DYNAMIC_DISPATCH(AccumulateAttentionMass)(q, q_row_stride, rows, q_pos0, n_q_heads, n_kv_heads, head_dim, &kv,
                                                head, scale, mass);
}

void attention_probabilities(const float* q, int64_t q_row_stride, int32_t rows, int32_t q_pos0, int32_t n_q_heads,
                             int32_t n_kv_heads, int32_t head_dim, const KvView& kv, int32_t head, float scale,
                             float* probs) {
  check_shape("attention_probabilities", rows, n_q_heads, n_kv_heads, head_dim, head);
  const int64_t items = static_cast<int64_t>(n_q_heads / n_kv_heads) * rows;
  if (items == 0) return;
  if (kv.n_keys <= kv.first_key) {
    std::fill(probs, probs + items * kv.n_keys, 0.0f);
    return;
  }
  HWY_DYNAMIC_DISPATCH(AttentionProbabilities)(q, q_row_stride, rows, q_pos0, n_q_heads, n_kv_heads, head_dim, &kv,
                                               head, scale, probs);
}


size_t transposed_key_floats(int64_t n, int32_t head_dim) {
  return static_cast<size_t>((n + kMassKeyBlock - 1) / kMassKeyBlock * kMassKeyBlock) * static_cast<size_t>(head_dim);
}

void transpose_key_blocks(const float* keys, int64_t n, int32_t head_dim, float* out) {
  const int64_t blocks = (n + kMassKeyBlock - 1) / kMassKeyBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    float* block = out + b * head_dim * kMassKeyBlock;
    const int64_t j0 = b * kMassKeyBlock, count = std::min(kMassKeyBlock, n - j0);
    // 16 x 16 tiles: the tile's 16 source and 16 destination lines stay in L1.
    for (int64_t jt = 0; jt < count; jt += 16)
      for (int32_t et = 0; et < head_dim; et += 16)
        for (int64_t j = jt; j < std::min(count, jt + 16); ++j)
          for (int32_t e = et; e < et + 16; ++e) block[e * kMassKeyBlock + j] = keys[(j0 + j) * head_dim + e];
    for (int32_t e = 0; e < head_dim; ++e)
      std::fill(block + e * kMassKeyBlock + count, block + (e + 1) * kMassKeyBlock, 0.0f);
  }
}

void key_block_mass(const float* q, int32_t rows, const int64_t* visible, const float* kt, int32_t head_dim,
                    int64_t kblock, float* mass, int64_t ld) {
  if (rows <= 0) return;
  if (head_dim % 16 != 0 || head_dim > kMaxKvRow || kblock < 1)
    throw std::invalid_argument("key_block_mass: bad head size or key block");
  for (int32_t a = 0; a < rows; ++a)
    if (visible[a] < 1 || (visible[a] + kblock - 1) / kblock > ld)
      throw std::invalid_argument("key_block_mass: a row sees no key or more blocks than its output holds");
  HWY_DYNAMIC_DISPATCH(KeyBlockMass)(q, rows, visible, kt, head_dim, kblock, mass, ld);
}

}  // namespace skim::kernels
#endif  // HWY_ONCE
