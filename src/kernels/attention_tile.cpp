// SIMD part of the attention kernel: one work unit (query columns x a stream
// of key tiles) with online softmax. Compiled once per x86 target (AVX2,
// AVX-512) through Highway's foreach_target and chosen at run time.
//
// Layout (per thread scratch, f32):
//   Wide units (more than kNarrowCols columns):
//     qt [d][ldq]        Q transposed and pre-scaled by scale*log2(e)
//     s  [kKeyTile][ldq] S^T = K.Q^T for one key tile, then P in place
//   so the score tile is built by broadcasting K values against vectors of
//   queries, and the row max / row sum of the softmax are plain vector max /
//   add over key rows: no horizontal reductions anywhere.
//   Narrow units (decode: one row per head, or the g rows of a KV group):
//     qt [n_cols][d]     Q rows; S via dot products along d, 8 keys reduced at once.
//   Both: o [ldq][d] accumulator, kf/vf [kKeyTile][d] widened K/V tiles.
//   bf16 arithmetic (wide units): q2, k2, p2, v2, the same operands rounded to
//   bf16 and packed in pairs along the summed dimension.
// Scores are in base 2 (exp2), so LSE = ln 2 * (m + log2 l).
#include <cmath>
#include <cstring>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/attention_tile.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/cache_control.h"
#include "hwy/highway.h"

#include "kernels/attention_tile.h"
#include "kernels/bf16-inl.h"
#include "kernels/kv_codec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::attn_detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
using VF = hn::Vec<DF>;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 2^x for x <= 0 (the only inputs: score - running max, old max - new max).
// x = n + f with n = round(x), |f| <= 1/2; 2^f by a degree-5 minimax
// polynomial (relative error 1.1e-7). x is clamped at -127, where n = -127
// makes the exponent field 0 and the result exactly 0, so masked (-inf)
// scores contribute nothing (results below 2^-126.5 flush to 0).
HWY_INLINE VF Exp2(DF df, VF x) {
  const DI di;
  const VF xc = hn::Max(x, hn::Set(df, -127.0f));
  const VF magic = hn::Set(df, 12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const VF t = hn::Add(xc, magic);
  const VF n = hn::Sub(t, magic);
  const VF f = hn::Sub(xc, n);
  VF p = hn::Set(df, 0.0013264719163998961f);
  p = hn::MulAdd(p, f, hn::Set(df, 0.009671513922512531f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.05550733953714371f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.24022242426872253f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.6931470036506653f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  // The low bits of t hold n; shifting them into the exponent field and
  // adding the bias gives 2^n (and +0.0 for n = -127).
  const auto bits = hn::Add(hn::ShiftLeft<23>(hn::BitCast(di, t)), hn::Set(di, 127 << 23));
  return hn::Mul(p, hn::BitCast(df, bits));
}

// Sums of 8 vectors, lane-reduced: out[k] = sum of a[k]'s lanes.
HWY_INLINE void Sum8(DF df, const VF* a, float* out) {
#if HWY_TARGET == HWY_AVX2
  (void)df;
  const __m256 h01 = _mm256_hadd_ps(a[0].raw, a[1].raw);
  const __m256 h23 = _mm256_hadd_ps(a[2].raw, a[3].raw);
  const __m256 h45 = _mm256_hadd_ps(a[4].raw, a[5].raw);
  const __m256 h67 = _mm256_hadd_ps(a[6].raw, a[7].raw);
  const __m256 h0123 = _mm256_hadd_ps(h01, h23);  // lanes: a0..a3 low halves | a0..a3 high halves
  const __m256 h4567 = _mm256_hadd_ps(h45, h67);
  const __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
  const __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
  _mm256_storeu_ps(out, _mm256_add_ps(lo, hi));
#elif HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  (void)df;
  __m256 half[8];
  HWY_UNROLL(16)
  for (int k = 0; k < 8; ++k)
    half[k] = _mm256_add_ps(_mm512_castps512_ps256(a[k].raw), _mm512_extractf32x8_ps(a[k].raw, 1));
  const __m256 h01 = _mm256_hadd_ps(half[0], half[1]);
  const __m256 h23 = _mm256_hadd_ps(half[2], half[3]);
  const __m256 h45 = _mm256_hadd_ps(half[4], half[5]);
  const __m256 h67 = _mm256_hadd_ps(half[6], half[7]);
  const __m256 h0123 = _mm256_hadd_ps(h01, h23);
  const __m256 h4567 = _mm256_hadd_ps(h45, h67);
  const __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20);
  const __m256 hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
  _mm256_storeu_ps(out, _mm256_add_ps(lo, hi));
#else
  HWY_UNROLL(16)
  for (int k = 0; k < 8; ++k) out[k] = hn::GetLane(hn::SumOfLanes(df, a[k]));
#endif
}

// The slot of key j of a span.
HWY_INLINE int64_t SpanSlot(const KeySpan& span, int32_t j) { return span.keys ? span.keys[j] : span.begin + j; }

// f32 K (or V) rows of a span as (pointer, stride): the cache itself for f32
// rows of one page, else the rows decoded into `scratch` (kv_codec-inl.h).
HWY_INLINE const float* SpanRows(DF df, const TileJob& job, bool values, const KeySpan& span, int32_t d,
                                 float* HWY_RESTRICT scratch, int64_t& ld) {
  const KvView& kv = *job.kv;
  const auto row = [&](int64_t slot) { return values ? kv.v_row(job.kv_head, slot) : kv.k_row(job.kv_head, slot); };
  const KvDType type = values ? kv.v_type : kv.k_type;
  if (type == KvDType::F32 && span.keys == nullptr && !kv.staged(span.begin + span.count - 1) &&
      (span.begin >> kv.page_shift) == ((span.begin + span.count - 1) >> kv.page_shift)) {
    ld = (values ? kv.v_row_bytes : kv.k_row_bytes) / static_cast<int64_t>(sizeof(float));
    return static_cast<const float*>(row(span.begin));
  }
  for (int32_t j = 0; j < span.count; ++j)
    skim::kernels::HWY_NAMESPACE::DecodeViewRow(df, kv, values, job.kv_head, SpanSlot(span, j), d,
                                                scratch + static_cast<int64_t>(j) * d);
  ld = d;
  return scratch;
}

// Register blocking of the wide score tile: MR key rows x NV vectors of query
// columns (MR*NV accumulators, NV loads + MR broadcasts per MR*NV FMAs;
// 3 x 4, 4 x 2 and 6 x 2 measured within 1% of each other on AVX2).
constexpr int kQkRows = 3;
constexpr int kQkVecs = 4;

// Prefetches the K and V rows of a gathered key tile.
HWY_INLINE void PrefetchRows(const TileJob& job, const KeySpan& span) {
  const KvView& kv = *job.kv;
  const int64_t k_bytes = kv_row_bytes(kv.k_type, job.head_dim), v_bytes = kv_row_bytes(kv.v_type, job.head_dim);
  for (int32_t j = 0; j < span.count; ++j) {
    if (kv.staged(span.keys[j])) continue;  // the stage is a few recent rows, already in cache
    const auto* k = static_cast<const char*>(kv.k_row(job.kv_head, span.keys[j]));
    const auto* v = static_cast<const char*>(kv.v_row(job.kv_head, span.keys[j]));
    for (int64_t b = 0; b < k_bytes; b += 64) hwy::Prefetch(k + b);
    for (int64_t b = 0; b < v_bytes; b += 64) hwy::Prefetch(v + b);
  }
}

// Accumulator tiles of the micro-kernels: MR rows x NV vectors, row r at dst + r * ld.
template <int MR, int NV>
HWY_INLINE void ZeroTile(DF df, VF (&acc)[MR][NV]) {
  HWY_UNROLL(16)
  for (int r = 0; r < MR; ++r) {
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) acc[r][t] = hn::Zero(df);
  }
}
template <int MR, int NV>
HWY_INLINE void StoreTile(DF df, const VF (&acc)[MR][NV], float* HWY_RESTRICT dst, int64_t ld) {
  const size_t N = hn::Lanes(df);
  HWY_UNROLL(16)
  for (int r = 0; r < MR; ++r) {
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) hn::Store(acc[r][t], df, dst + r * ld + t * N);
  }
}
// acc[r] = scale[r] * src row r (the running O rescaled by alpha).
template <int MR, int NV>
HWY_INLINE void LoadScaledTile(DF df, VF (&acc)[MR][NV], const float* HWY_RESTRICT src, int64_t ld,
                               const float* HWY_RESTRICT scale) {
  const size_t N = hn::Lanes(df);
  HWY_UNROLL(16)
  for (int r = 0; r < MR; ++r) {
    const VF a = hn::Set(df, scale[r]);
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) acc[r][t] = hn::Mul(hn::Load(df, src + r * ld + t * N), a);
  }
}

// s[r][i0 .. i0+NV*N) = sum_p k[r][p] * qt[p][i0 ..]  for MR key rows.
template <int MR, int NV>
HWY_INLINE void QKBlock(DF df, const float* HWY_RESTRICT k, int64_t ldk, const float* HWY_RESTRICT qt, int32_t ldq,
                        int32_t d, float* HWY_RESTRICT s, int32_t i0) {
  const size_t N = hn::Lanes(df);
  VF acc[MR][NV];
  ZeroTile(df, acc);
  const float* qp = qt + i0;
  for (int32_t p = 0; p < d; ++p, qp += ldq) {
    VF q[NV];
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) q[t] = hn::Load(df, qp + t * N);
    HWY_UNROLL(16)
    for (int r = 0; r < MR; ++r) {
      const VF kk = hn::Set(df, k[r * ldk + p]);
      HWY_UNROLL(16)
      for (int t = 0; t < NV; ++t) acc[r][t] = hn::MulAdd(kk, q[t], acc[r][t]);
    }
  }
  StoreTile(df, acc, s + i0, ldq);
}

template <int NV>
HWY_INLINE void QKColumns(DF df, const float* k, int64_t ldk, const float* qt, int32_t ldq, int32_t d, int32_t count,
                          float* s, int32_t i0) {
  int32_t j = 0;
  for (; j + kQkRows <= count; j += kQkRows) QKBlock<kQkRows, NV>(df, k + j * ldk, ldk, qt, ldq, d, s + j * ldq, i0);
  for (; j + 2 <= count; j += 2) QKBlock<2, NV>(df, k + j * ldk, ldk, qt, ldq, d, s + j * ldq, i0);
  for (; j < count; ++j) QKBlock<1, NV>(df, k + j * ldk, ldk, qt, ldq, d, s + j * ldq, i0);
}

// Wide score tile: s[j][i] for j < count, i < ldq (ldq a multiple of 2N).
HWY_INLINE void QKWide(DF df, const float* k, int64_t ldk, const float* qt, int32_t ldq, int32_t d, int32_t count,
                       float* s) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  int32_t i0 = 0;
  for (; i0 + kQkVecs * N <= ldq; i0 += kQkVecs * N) QKColumns<kQkVecs>(df, k, ldk, qt, ldq, d, count, s, i0);
  for (; i0 < ldq; i0 += 2 * N) QKColumns<2>(df, k, ldk, qt, ldq, d, count, s, i0);
}

// Narrow score tile: s[j][i] = q_i . k_j for i < n_cols (q rows in qs).
HWY_INLINE void QKNarrow(DF df, const float* HWY_RESTRICT k, int64_t ldk, const float* HWY_RESTRICT qs,
                         int32_t n_cols, int32_t d, int32_t count, float* HWY_RESTRICT s, int32_t ldq) {
  const size_t N = hn::Lanes(df);
  for (int32_t i = 0; i < n_cols; ++i) {
    const float* q = qs + static_cast<int64_t>(i) * d;
    int32_t j = 0;
    for (; j + 8 <= count; j += 8) {
      VF a[8];
      HWY_UNROLL(16)
      for (int r = 0; r < 8; ++r) a[r] = hn::Zero(df);
      const float* kj = k + j * ldk;
      for (int32_t c = 0; c < d; c += static_cast<int32_t>(N)) {
        const VF qv = hn::Load(df, q + c);
        HWY_UNROLL(16)
        for (int r = 0; r < 8; ++r) a[r] = hn::MulAdd(hn::LoadU(df, kj + r * ldk + c), qv, a[r]);
      }
      HWY_ALIGN float sums[8];
      Sum8(df, a, sums);
      HWY_UNROLL(16)
      for (int r = 0; r < 8; ++r) s[(j + r) * ldq + i] = sums[r];
    }
    for (; j < count; ++j) {
      VF a = hn::Zero(df);
      for (int32_t c = 0; c < d; c += static_cast<int32_t>(N))
        a = hn::MulAdd(hn::LoadU(df, k + j * ldk + c), hn::Load(df, q + c), a);
      s[j * ldq + i] = hn::GetLane(hn::SumOfLanes(df, a));
    }
  }
}

// o[i0+r][c0 ..] = alpha[i0+r] * o[..] + sum_j p[j][i0+r] * v[j][c0 ..]  for MR rows, NV vectors.
template <int MR, int NV>
HWY_INLINE void PVBlock(DF df, const float* HWY_RESTRICT p, int32_t ldq, const float* HWY_RESTRICT v, int64_t ldv,
                        int32_t count, const float* HWY_RESTRICT alpha, float* HWY_RESTRICT o, int32_t d, int32_t i0,
                        int32_t c0) {
  const size_t N = hn::Lanes(df);
  VF acc[MR][NV];
  LoadScaledTile(df, acc, o + i0 * d + c0, d, alpha + i0);
  for (int32_t j = 0; j < count; ++j) {
    VF vv[NV];
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) vv[t] = hn::LoadU(df, v + j * ldv + c0 + t * N);
    const float* pj = p + j * ldq + i0;
    HWY_UNROLL(16)
    for (int r = 0; r < MR; ++r) {
      const VF pp = hn::Set(df, pj[r]);
      HWY_UNROLL(16)
      for (int t = 0; t < NV; ++t) acc[r][t] = hn::MulAdd(pp, vv[t], acc[r][t]);
    }
  }
  StoreTile(df, acc, o + i0 * d + c0, d);
}

// Register blocking of P.V for wide units: MR query rows x NV vectors along d
// (3 x 4 measured best on AVX2, a little ahead of 4 x 2 and 6 x 2).
constexpr int kPvRows = 3;
constexpr int kPvVecs = 4;

template <int MR>
HWY_INLINE void PVRows(DF df, const float* p, int32_t ldq, const float* v, int64_t ldv, int32_t count,
                       const float* alpha, float* o, int32_t d, int32_t i0) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  // As many accumulators as the registers allow: NV = 12 / MR vectors along d.
  constexpr int NV = MR == 1 ? 8 : (MR == kPvRows ? kPvVecs : 4);
  int32_t c0 = 0;
  for (; c0 + NV * N <= d; c0 += NV * N) PVBlock<MR, NV>(df, p, ldq, v, ldv, count, alpha, o, d, i0, c0);
  if constexpr (NV > 4) {
    for (; c0 + 4 * N <= d; c0 += 4 * N) PVBlock<MR, 4>(df, p, ldq, v, ldv, count, alpha, o, d, i0, c0);
  }
  if constexpr (NV > 2) {
    for (; c0 + 2 * N <= d; c0 += 2 * N) PVBlock<MR, 2>(df, p, ldq, v, ldv, count, alpha, o, d, i0, c0);
  }
  for (; c0 < d; c0 += N) PVBlock<MR, 1>(df, p, ldq, v, ldv, count, alpha, o, d, i0, c0);
}

// O = alpha*O + P.V for rows i < n_cols.
HWY_INLINE void PV(DF df, const float* p, int32_t ldq, const float* v, int64_t ldv, int32_t count,
                   const float* alpha, float* o, int32_t d, int32_t n_cols) {
  int32_t i = 0;
  for (; i + kPvRows <= n_cols; i += kPvRows) PVRows<kPvRows>(df, p, ldq, v, ldv, count, alpha, o, d, i);
  for (; i + 3 <= n_cols; i += 3) PVRows<3>(df, p, ldq, v, ldv, count, alpha, o, d, i);
  for (; i + 2 <= n_cols; i += 2) PVRows<2>(df, p, ldq, v, ldv, count, alpha, o, d, i);
  for (; i < n_cols; ++i) PVRows<1>(df, p, ldq, v, ldv, count, alpha, o, d, i);
}

// ---------------------------------------------------------------------------
// bf16 arithmetic (TileJob::bf16, wide units): Q, K, P and V rounded to bf16,
// products summed in f32. Operands are packed in pairs along the summed
// dimension (kernels/bf16-inl.h), so one dot-pair step does two multiply-adds
// per lane.
using DU = hn::RebindToUnsigned<DF>;
using VU = hn::Vec<DU>;
using skim::kernels::HWY_NAMESPACE::DotPair;
using skim::kernels::HWY_NAMESPACE::PackPair;

// dst[m][i] = (src[2m][i], src[2m+1][i]) for i < cols (a multiple of N), m < ceil(rows / 2);
// an odd last row pairs with 0.
HWY_INLINE void PackRowPairs(DF df, const float* src, int64_t ld_src, int32_t rows, int32_t cols, uint32_t* dst,
                             int64_t ld_dst) {
  const DU du;
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  for (int32_t r = 0; r < rows; r += 2) {
    const float* a = src + r * ld_src;
    uint32_t* out = dst + (r / 2) * ld_dst;
    for (int32_t c = 0; c < cols; c += N) {
      const VF second = r + 1 < rows ? hn::LoadU(df, a + ld_src + c) : hn::Zero(df);
      hn::StoreU(PackPair(du, hn::LoadU(df, a + c), second), du, out + c);
    }
  }
}

// dst[r][m] = (src[r][2m], src[r][2m+1]) for r < rows: pairs of neighbours in each row of d.
HWY_INLINE void PackColumnPairs(DF df, const float* src, int64_t ld_src, int32_t rows, int32_t d, uint32_t* dst) {
  const DU du;
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  for (int32_t r = 0; r < rows; ++r)
    for (int32_t c = 0; c < d; c += 2 * N) {
      const VF lo = hn::LoadU(df, src + r * ld_src + c), hi = hn::LoadU(df, src + r * ld_src + c + N);
      hn::StoreU(PackPair(du, hn::ConcatEven(df, hi, lo), hn::ConcatOdd(df, hi, lo)), du, dst + r * (d / 2) + c / 2);
    }
}

// s[r][i0 ..] = sum_m k2[r][m] . q2[m][i0 ..] for MR key rows (pairs along d).
template <bool kNative, int MR, int NV>
HWY_INLINE void QKBlockBf16(DF df, const uint32_t* HWY_RESTRICT k2, const uint32_t* HWY_RESTRICT q2, int32_t ldq,
                            int32_t d, float* HWY_RESTRICT s, int32_t i0) {
  const DU du;
  const size_t N = hn::Lanes(df);
  VF acc[MR][NV];
  ZeroTile(df, acc);
  const int32_t pairs = d / 2;
  for (int32_t m = 0; m < pairs; ++m) {
    VU q[NV];
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) q[t] = hn::Load(du, q2 + m * ldq + i0 + t * N);
    HWY_UNROLL(16)
    for (int r = 0; r < MR; ++r) {
      const VU kk = hn::Set(du, k2[r * pairs + m]);
      HWY_UNROLL(16)
      for (int t = 0; t < NV; ++t) acc[r][t] = DotPair<kNative>(df, kk, q[t], acc[r][t]);
    }
  }
  StoreTile(df, acc, s + i0, ldq);
}

template <bool kNative>
HWY_INLINE void QKWideBf16(DF df, const uint32_t* k2, const uint32_t* q2, int32_t ldq, int32_t d, int32_t count,
                           float* s) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  const int32_t pairs = d / 2;
  for (int32_t i0 = 0; i0 < ldq;) {
    const bool four = i0 + kQkVecs * N <= ldq;
    int32_t j = 0;
    for (; j + kQkRows <= count; j += kQkRows) {
      if (four) QKBlockBf16<kNative, kQkRows, kQkVecs>(df, k2 + j * pairs, q2, ldq, d, s + j * ldq, i0);
      else QKBlockBf16<kNative, kQkRows, 2>(df, k2 + j * pairs, q2, ldq, d, s + j * ldq, i0);
    }
    for (; j < count; ++j) {
      if (four) QKBlockBf16<kNative, 1, kQkVecs>(df, k2 + j * pairs, q2, ldq, d, s + j * ldq, i0);
      else QKBlockBf16<kNative, 1, 2>(df, k2 + j * pairs, q2, ldq, d, s + j * ldq, i0);
    }
    i0 += (four ? kQkVecs : 2) * N;
  }
}

// o[i0+r][c0 ..] = alpha * o + sum_m p2[m][i0+r] . v2[m][c0 ..]  (pairs of key rows).
template <bool kNative, int MR, int NV>
HWY_INLINE void PVBlockBf16(DF df, const uint32_t* HWY_RESTRICT p2, int32_t ldq, const uint32_t* HWY_RESTRICT v2,
                            int32_t pairs, const float* HWY_RESTRICT alpha, float* HWY_RESTRICT o, int32_t d,
                            int32_t i0, int32_t c0) {
  const DU du;
  const size_t N = hn::Lanes(df);
  VF acc[MR][NV];
  LoadScaledTile(df, acc, o + i0 * d + c0, d, alpha + i0);
  for (int32_t m = 0; m < pairs; ++m) {
    VU vv[NV];
    HWY_UNROLL(16)
    for (int t = 0; t < NV; ++t) vv[t] = hn::LoadU(du, v2 + m * d + c0 + t * N);
    HWY_UNROLL(16)
    for (int r = 0; r < MR; ++r) {
      const VU pp = hn::Set(du, p2[m * ldq + i0 + r]);
      HWY_UNROLL(16)
      for (int t = 0; t < NV; ++t) acc[r][t] = DotPair<kNative>(df, pp, vv[t], acc[r][t]);
    }
  }
  StoreTile(df, acc, o + i0 * d + c0, d);
}

template <bool kNative, int MR>
HWY_INLINE void PVRowsBf16(DF df, const uint32_t* p2, int32_t ldq, const uint32_t* v2, int32_t pairs,
                           const float* alpha, float* o, int32_t d, int32_t i0) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  int32_t c0 = 0;
  for (; c0 + kPvVecs * N <= d; c0 += kPvVecs * N)
    PVBlockBf16<kNative, MR, kPvVecs>(df, p2, ldq, v2, pairs, alpha, o, d, i0, c0);
  for (; c0 < d; c0 += N) PVBlockBf16<kNative, MR, 1>(df, p2, ldq, v2, pairs, alpha, o, d, i0, c0);
}

template <bool kNative>
HWY_INLINE void PVBf16(DF df, const uint32_t* p2, int32_t ldq, const uint32_t* v2, int32_t pairs,
                       const float* alpha, float* o, int32_t d, int32_t n_cols) {
  int32_t i = 0;
  for (; i + kPvRows <= n_cols; i += kPvRows) PVRowsBf16<kNative, kPvRows>(df, p2, ldq, v2, pairs, alpha, o, d, i);
  for (; i < n_cols; ++i) PVRowsBf16<kNative, 1>(df, p2, ldq, v2, pairs, alpha, o, d, i);
}

// The spans [first, n_spans) the early stop leaves unvisited.
void count_stopped(const TileJob& job, int64_t first, int32_t n_cols, TileCounters& counters) {
  counters.stopped += job.n_spans - first;
  for (int64_t si = first; si < job.n_spans; ++si) counters.stopped_pairs += int64_t{job.spans[si].count} * n_cols;
}

template <bool kNative>
void RunTile(const TileJob& job, float* HWY_RESTRICT scratch, TileCounters& counters) {
  const DF df;
  const DI di;
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  const int32_t d = job.head_dim;
  const int32_t n_cols = job.n_cols;
  const bool narrow = n_cols <= kNarrowCols;
  // Columns padded to whole column blocks: 2N for the wide micro-kernel, N for narrow.
  const int32_t ldq = narrow ? N : (n_cols + 2 * N - 1) / (2 * N) * (2 * N);
  const int32_t n_blocks = (n_cols + N - 1) / N;  // column vectors holding real columns

  float* qt = scratch;                                   // d * kMaxTileCols
  float* s = qt + static_cast<size_t>(d) * kMaxTileCols;  // kKeyTile * kMaxTileCols
  float* o = s + static_cast<size_t>(kKeyTile) * kMaxTileCols;  // kMaxTileCols * d
  float* kf = o + static_cast<size_t>(kMaxTileCols) * d;  // kKeyTile * d
  float* vf = kf + static_cast<size_t>(kKeyTile) * d;     // kKeyTile * d
  float* m = vf + static_cast<size_t>(kKeyTile) * d;      // running max (base 2), per column
  float* l = m + kMaxTileCols;                            // running sum
  float* alpha = l + kMaxTileCols;                        // rescale factor of the current tile
  float* tmax = alpha + kMaxTileCols;                     // tile max
  // bf16 operands, packed in pairs (wide units with TileJob::bf16)
  const bool bf16 = job.bf16 && !narrow && d % (2 * N) == 0;
  auto* q2 = reinterpret_cast<uint32_t*>(tmax + kMaxTileCols);   // [d/2][ldq]
  uint32_t* k2 = q2 + static_cast<size_t>(d / 2) * kMaxTileCols;  // [kKeyTile][d/2]
  uint32_t* v2 = k2 + static_cast<size_t>(kKeyTile) * (d / 2);    // [kKeyTile/2][d]
  uint32_t* p2 = v2 + static_cast<size_t>(kKeyTile / 2) * d;      // [kKeyTile/2][ldq]

  HWY_ALIGN int32_t qpos[kMaxTileCols];
  HWY_ALIGN int32_t qlow[kMaxTileCols];  // window: the lowest key position a column sees
  int32_t min_qpos = std::numeric_limits<int32_t>::max(), max_qlow = std::numeric_limits<int32_t>::min();
  for (int32_t i = 0; i < ldq; ++i) {
    qpos[i] = i < n_cols ? job.cols[i].pos : std::numeric_limits<int32_t>::max();
    qlow[i] = i < n_cols && job.window > 0 ? job.cols[i].pos - job.window + 1 : std::numeric_limits<int32_t>::min();
    if (i < n_cols) min_qpos = std::min(min_qpos, qpos[i]);
    max_qlow = std::max(max_qlow, qlow[i]);
  }

  // Q, scaled into base-2 logits.
  if (narrow) {
    for (int32_t i = 0; i < n_cols; ++i)
      for (int32_t c = 0; c < d; ++c) qt[i * d + c] = job.cols[i].q[c] * job.q_scale;
    // Lanes past n_cols of the score rows must hold finite values.
    for (int32_t j = 0; j < kKeyTile; ++j)
      for (int32_t i = n_cols; i < ldq; ++i) s[j * ldq + i] = 0.0f;
  } else {
    for (int32_t c = 0; c < d; ++c) {
      float* row = qt + c * ldq;
      for (int32_t i = 0; i < n_cols; ++i) row[i] = job.cols[i].q[c] * job.q_scale;
      for (int32_t i = n_cols; i < ldq; ++i) row[i] = 0.0f;
    }
    if (bf16) PackRowPairs(df, qt, ldq, d, ldq, q2, ldq);
  }
  for (int32_t i = 0; i < ldq; ++i) {
    m[i] = kNegInf;
    l[i] = 0.0f;
  }
  std::memset(o, 0, sizeof(float) * static_cast<size_t>(n_cols) * d);

  const VF neg_inf = hn::Set(df, kNegInf);
  for (int64_t si = 0; si < job.n_spans; ++si) {
    const KeySpan& span = job.spans[si];
    if (job.early_stop && job.stop_mass == 0.0f && span.score < job.stop_theta) {
      count_stopped(job, si, n_cols, counters);
      break;
    }
    const int32_t count = span.count;
    // Gathered rows are scattered over the cache: fetch the next tile's while this one computes.
    if (si + 1 < job.n_spans && job.spans[si + 1].keys != nullptr) PrefetchRows(job, job.spans[si + 1]);
    int64_t ldk = 0;
    const float* kt = SpanRows(df, job, false, span, d, kf, ldk);

    if (narrow) {
      QKNarrow(df, kt, ldk, qt, n_cols, d, count, s, ldq);
    } else if (bf16) {
      PackColumnPairs(df, kt, ldk, count, d, k2);
      QKWideBf16<kNative>(df, k2, q2, ldq, d, count, s);
    } else {
      QKWide(df, kt, ldk, qt, ldq, d, count, s);
    }

    // Causal mask: keys stored at a position after a column's get -inf.
    if (job.causal && span.max_pos > min_qpos) {
      for (int32_t j = 0; j < count; ++j) {
        const int32_t kp = job.kv->position(job.kv_head, SpanSlot(span, j));
        if (kp <= min_qpos) continue;
        const auto kpv = hn::Set(di, kp);
        float* sj = s + j * ldq;
        for (int32_t b = 0; b < n_blocks; ++b) {
          const auto masked = hn::RebindMask(df, hn::Gt(kpv, hn::Load(di, qpos + b * N)));
          hn::Store(hn::IfThenElse(masked, neg_inf, hn::Load(df, sj + b * N)), df, sj + b * N);
        }
      }
    }

    // Window mask: keys stored before a column's window get -inf.
    if (span.min_pos < max_qlow) {
      for (int32_t j = 0; j < count; ++j) {
        const int32_t kp = job.kv->position(job.kv_head, SpanSlot(span, j));
        if (kp >= max_qlow) continue;
        const auto kpv = hn::Set(di, kp);
        float* sj = s + j * ldq;
        for (int32_t b = 0; b < n_blocks; ++b) {
          const auto masked = hn::RebindMask(df, hn::Lt(kpv, hn::Load(di, qlow + b * N)));
          hn::Store(hn::IfThenElse(masked, neg_inf, hn::Load(df, sj + b * N)), df, sj + b * N);
        }
      }
    }

    // Tile max per column.
    for (int32_t b = 0; b < n_blocks; ++b) {
      VF t = neg_inf;
      for (int32_t j = 0; j < count; ++j) t = hn::Max(t, hn::Load(df, s + j * ldq + b * N));
      hn::Store(t, df, tmax + b * N);
    }

    // BLASST: skip when every row's tile max is far below its running max
    // (and no row would see its first finite score in this tile).
    if (job.log2_lambda > kNegInf) {
      bool skip = true;
      for (int32_t i = 0; i < n_cols && skip; ++i) {
        if (m[i] == kNegInf) {
          skip = tmax[i] == kNegInf;
        } else {
          skip = tmax[i] - m[i] < job.log2_lambda;
        }
      }
      if (skip) {
        ++counters.skipped;
        continue;
      }
    }

    // Online softmax: m' = max(m, t); alpha = 2^(m - m'); P = 2^(S - m'); l = alpha*l + sum P.
    for (int32_t b = 0; b < n_blocks; ++b) {
      const VF m_old = hn::Load(df, m + b * N);
      const VF m_new = hn::Max(m_old, hn::Load(df, tmax + b * N));
      // A column with no finite score yet subtracts 0 so -inf - -inf never happens.
      const VF m_use = hn::IfThenZeroElse(hn::Eq(m_new, neg_inf), m_new);
      const VF a = Exp2(df, hn::Sub(m_old, m_use));
      VF sum0 = hn::Zero(df), sum1 = hn::Zero(df);
      float* sb = s + b * N;
      int32_t j = 0;
      for (; j + 2 <= count; j += 2) {
        const VF p0 = Exp2(df, hn::Sub(hn::Load(df, sb + j * ldq), m_use));
        const VF p1 = Exp2(df, hn::Sub(hn::Load(df, sb + (j + 1) * ldq), m_use));
        hn::Store(p0, df, sb + j * ldq);
        hn::Store(p1, df, sb + (j + 1) * ldq);
        sum0 = hn::Add(sum0, p0);
        sum1 = hn::Add(sum1, p1);
      }
      if (j < count) {
        const VF p0 = Exp2(df, hn::Sub(hn::Load(df, sb + j * ldq), m_use));
        hn::Store(p0, df, sb + j * ldq);
        sum0 = hn::Add(sum0, p0);
      }
      const VF span_sum = hn::Add(sum0, sum1);
      hn::Store(hn::MulAdd(hn::Load(df, l + b * N), a, span_sum), df, l + b * N);
      hn::Store(span_sum, df, tmax + b * N);  // the tile max is used up: keep the span's mass
      hn::Store(m_new, df, m + b * N);
      hn::Store(a, df, alpha + b * N);
    }

    int64_t ldv = 0;
    const float* vt = SpanRows(df, job, true, span, d, vf, ldv);
    if (bf16) {
      PackRowPairs(df, s, ldq, count, ldq, p2, ldq);
      PackRowPairs(df, vt, ldv, count, d, v2, d);
      PVBf16<kNative>(df, p2, ldq, v2, (count + 1) / 2, alpha, o, d, n_cols);
    } else {
      PV(df, s, ldq, vt, ldv, count, alpha, o, d, n_cols);
    }
    ++counters.computed;

    // S2O's running-mass stop: the spans left are scored lower than this one,
    // which already mattered to no row (its share per kKeyTile keys, so that
    // short spans are judged like full tiles).
    if (job.early_stop && job.stop_mass > 0.0f && span.score < job.stop_theta) {
      const float limit = job.stop_mass * static_cast<float>(count) / static_cast<float>(kKeyTile);
      bool negligible = true;
      for (int32_t i = 0; i < n_cols && negligible; ++i) negligible = tmax[i] < limit * l[i];
      if (negligible) {
        count_stopped(job, si + 1, n_cols, counters);
        break;
      }
    }
  }

  // Finalise: O / l and LSE = ln2 * (m + log2 l); rows without keys: 0 and -inf.
  constexpr float kLn2 = 0.693147180559945309f;
  for (int32_t i = 0; i < n_cols; ++i) {
    float* out = job.cols[i].out;
    if (l[i] > 0.0f) {
      const VF inv = hn::Set(df, 1.0f / l[i]);
      for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::Mul(hn::Load(df, o + i * d + c), inv), df, out + c);
      *job.cols[i].lse = kLn2 * (m[i] + std::log2(l[i]));
    } else {
      for (int32_t c = 0; c < d; ++c) out[c] = 0.0f;
      *job.cols[i].lse = kNegInf;
    }
  }
}

void RunTileJob(const TileJob& job, float* HWY_RESTRICT scratch, TileCounters& counters) {
  if (job.bf16 && job.native_bf16) RunTile<true>(job, scratch, counters);
  else RunTile<false>(job, scratch, counters);
}

}  // namespace HWY_NAMESPACE
}  // namespace skim::kernels::attn_detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels::attn_detail {

HWY_EXPORT(RunTileJob);

size_t tile_scratch_floats(int32_t head_dim) {
  const size_t d = static_cast<size_t>(head_dim);
  const size_t f32 = d * kMaxTileCols + static_cast<size_t>(kKeyTile) * kMaxTileCols + kMaxTileCols * d +
                    2 * static_cast<size_t>(kKeyTile) * d + 4 * static_cast<size_t>(kMaxTileCols);
  const size_t pairs = d / 2 * kMaxTileCols + static_cast<size_t>(kKeyTile) * (d / 2) + kKeyTile / 2 * d +
                       static_cast<size_t>(kKeyTile / 2) * kMaxTileCols;
  return f32 + pairs;
}

void run_tile_job(const TileJob& job, float* scratch, TileCounters& counters) {
  HWY_DYNAMIC_DISPATCH(RunTileJob)(job, scratch, counters);
}

}  // namespace skim::kernels::attn_detail
#endif  // HWY_ONCE
