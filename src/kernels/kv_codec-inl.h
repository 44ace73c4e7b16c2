// Per-target part of the KV codecs (Highway): rows of a KV format widened to
// f32. Included by every translation unit that reads K/V under foreach_target
// (kv_codec.cpp, attention_tile.cpp), so there is one codec per format.
#if defined(SKIM_KERNELS_KV_CODEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SKIM_KERNELS_KV_CODEC_INL_H_
#undef SKIM_KERNELS_KV_CODEC_INL_H_
#else
#define SKIM_KERNELS_KV_CODEC_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

#include "hwy/highway.h"
#include "kernels/f16.h"
#include "kernels/kv_codec.h"
#include "kernels/kv_view.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Packed indices (TurboQuant and KIVI rows): the index of value e at bit
// e * bits, little-endian. Every 8 indices are `bits` whole bytes, so one
// word, shifted by a different multiple of `bits` in each lane, holds them.
template <int kBits>
HWY_INLINE void UnpackIndicesOf(const uint8_t* HWY_RESTRICT p, int32_t d, int32_t* HWY_RESTRICT idx) {
  const hn::CappedTag<uint32_t, 8> du;
  const hn::RebindToSigned<decltype(du)> di;
  constexpr int32_t N = static_cast<int32_t>(HWY_MIN(8, HWY_LANES(uint32_t)));
  static_assert(8 % N == 0, "lanes divide a group of 8 indices");
  const auto mask = hn::Set(du, (1u << kBits) - 1);
  decltype(hn::Zero(du)) shift[8 / N];
  for (int32_t k = 0; k < 8 / N; ++k) shift[k] = hn::Mul(hn::Iota(du, static_cast<uint32_t>(k * N)), hn::Set(du, kBits));
  for (int32_t e = 0; e < d; e += 8, p += kBits) {
    // Whole-width loads: a 3-byte memcpy goes through the stack and stalls the broadcast.
    uint32_t word;
    if constexpr (kBits == 4) {
      std::memcpy(&word, p, 4);
    } else {
      uint16_t low;
      std::memcpy(&low, p, 2);
      word = kBits == 3 ? low | static_cast<uint32_t>(p[2]) << 16 : low;
    }
    const auto w = hn::Set(du, word);
    for (int32_t k = 0; k < 8 / N; ++k) hn::StoreU(hn::BitCast(di, hn::And(hn::Shr(w, shift[k]), mask)), di, idx + e + k * N);
  }
}

// All d indices (d a multiple of 8) of 4, 3 or 2 bits.
HWY_INLINE void UnpackIndices(const uint8_t* HWY_RESTRICT p, int bits, int32_t d, int32_t* HWY_RESTRICT idx) {
  if (bits == 4) UnpackIndicesOf<4>(p, d, idx);
  else if (bits == 3) UnpackIndicesOf<3>(p, d, idx);
  else UnpackIndicesOf<2>(p, d, idx);
}

template <class DF>
HWY_INLINE void DecodeTqRow(DF df, const uint8_t* HWY_RESTRICT src, int bits, int32_t d, float* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  const hn::Rebind<int32_t, DF> di;
  uint16_t half;
  std::memcpy(&half, src, sizeof half);
  const auto vscale = hn::Set(df, f16_to_f32(half));
  const float* codebook = tq_codebook(bits);
  int32_t idx[kMaxKvRow];
  UnpackIndices(src + 2, bits, d, idx);
  const int32_t levels = 1 << bits;
  if (levels <= N && N <= kTqCodebookFloats) {
    // The codebook fits in one vector: a lane permute instead of a gather.
    const auto table = hn::LoadU(df, codebook);
    for (int32_t c = 0; c < d; c += N)
      hn::StoreU(hn::Mul(hn::TableLookupLanes(table, hn::IndicesFromVec(df, hn::LoadU(di, idx + c))), vscale), df,
                 dst + c);
  } else if (levels == 2 * N) {
    // Two vectors (4 bits on AVX2): permute both halves, the index's top bit picks.
    const auto low = hn::LoadU(df, codebook), high = hn::LoadU(df, codebook + N);
    const auto lanes = hn::Set(di, N - 1), top = hn::Set(di, N);
    for (int32_t c = 0; c < d; c += N) {
      const auto i = hn::LoadU(di, idx + c);
      const auto lane = hn::IndicesFromVec(df, hn::And(i, lanes));
      const auto value = hn::IfThenElse(hn::RebindMask(df, hn::Eq(hn::And(i, top), top)),
                                        hn::TableLookupLanes(high, lane), hn::TableLookupLanes(low, lane));
      hn::StoreU(hn::Mul(value, vscale), df, dst + c);
    }
  } else {
    for (int32_t c = 0; c < d; c += N)
      hn::StoreU(hn::Mul(hn::GatherIndex(df, codebook, hn::LoadU(di, idx + c)), vscale), df, dst + c);
  }
}

// QJL (TurboQuant's inner-product variant): a TQ row's residual r = x - x^
// is sketched as s = sign(S r) with S the fixed Gaussian qjl_matrix, plus |r|.
// For any q, E[(S q).s] = d sqrt(2 / pi) q.r / |r|, so decoding the residual as
// sqrt(pi / 2) / d |r| S^T s makes q.(decoded row) QJL's unbiased estimate of q.x.
// The sketch follows the row's indices: an f16 |r|, then d sign bits (bit j: row j of S).
template <class DF>
HWY_INLINE void AddQjlResidual(DF df, const uint8_t* HWY_RESTRICT sketch, int32_t d, float* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  uint16_t half;
  std::memcpy(&half, sketch, sizeof half);
  const float coef = std::sqrt(static_cast<float>(M_PI) / 2.0f) / static_cast<float>(d) * f16_to_f32(half);
  const float* S = qjl_matrix(d);
  for (int32_t j = 0; j < d; ++j) {
    const auto v = hn::Set(df, (sketch[2 + (j >> 3)] >> (j & 7)) & 1 ? coef : -coef);
    for (int32_t c = 0; c < d; c += N)
      hn::StoreU(hn::MulAdd(v, hn::LoadU(df, S + static_cast<int64_t>(j) * d + c), hn::LoadU(df, dst + c)), df, dst + c);
  }
}

HWY_INLINE void EncodeQjlSketch(const float* HWY_RESTRICT x, const float* HWY_RESTRICT decoded, int32_t d,
                                uint8_t* HWY_RESTRICT sketch) {
  float r[kMaxKvRow];
  double norm2 = 0.0;
  for (int32_t c = 0; c < d; ++c) {
    r[c] = x[c] - decoded[c];
    norm2 += static_cast<double>(r[c]) * r[c];
  }
  const uint16_t half = f32_to_f16(static_cast<float>(std::sqrt(norm2)));
  std::memcpy(sketch, &half, sizeof half);
  std::memset(sketch + 2, 0, static_cast<size_t>(d / 8));
  const float* S = qjl_matrix(d);
  for (int32_t j = 0; j < d; ++j) {
    double dot = 0.0;
    for (int32_t c = 0; c < d; ++c) dot += static_cast<double>(S[static_cast<int64_t>(j) * d + c]) * r[c];
    if (dot >= 0.0) sketch[2 + (j >> 3)] |= static_cast<uint8_t>(1 << (j & 7));
  }
}

// KIVI: value = minimum + index * scale, with f16 scales and minima per
// channel (keys: params holds a page's d scales, then its d minima) or per
// 32 values (a value row: each block is scale, minimum, 32 indices).
template <class DF>
HWY_INLINE void DecodeKiviKeyRow(DF df, const uint8_t* HWY_RESTRICT src, const void* HWY_RESTRICT params, int bits,
                                 int32_t d, float* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  const hn::Rebind<int32_t, DF> di;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const auto* scale = static_cast<const hwy::float16_t*>(params);
  int32_t idx[kMaxKvRow];
  UnpackIndices(src, bits, d, idx);
  for (int32_t c = 0; c < d; c += N)
    hn::StoreU(hn::MulAdd(hn::ConvertTo(df, hn::LoadU(di, idx + c)), hn::PromoteTo(df, hn::LoadU(dh, scale + c)),
                          hn::PromoteTo(df, hn::LoadU(dh, scale + d + c))),
               df, dst + c);
}

template <class DF>
HWY_INLINE void DecodeKiviValueRow(DF df, const uint8_t* HWY_RESTRICT src, int bits, int32_t d, float* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  const hn::Rebind<int32_t, DF> di;
  int32_t idx[kKvBlock];
  for (int32_t b = 0; b < d; b += kKvBlock, src += 4 + kKvBlock * bits / 8) {
    uint16_t half[2];
    std::memcpy(half, src, sizeof half);
    const auto vscale = hn::Set(df, f16_to_f32(half[0])), vmin = hn::Set(df, f16_to_f32(half[1]));
    UnpackIndices(src + 4, bits, kKvBlock, idx);
    for (int32_t c = 0; c < kKvBlock; c += N)
      hn::StoreU(hn::MulAdd(hn::ConvertTo(df, hn::LoadU(di, idx + c)), vscale, vmin), df, dst + b + c);
  }
}

// Asymmetric integers of `bits` for n values x[i * stride]: the f16 scale
// and minimum (their rounded values are what decoding uses, so the indices
// are chosen against them) and the index of each value.
HWY_INLINE void QuantizeKiviGroup(const float* HWY_RESTRICT x, int64_t stride, int32_t n, int bits, uint16_t& scale16,
                                  uint16_t& min16, int32_t* HWY_RESTRICT idx) {
  float lo = x[0], hi = x[0];
  for (int32_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  const int32_t top = (1 << bits) - 1;
  min16 = f32_to_f16(lo);
  scale16 = f32_to_f16((hi - lo) / static_cast<float>(top));
  const float m = f16_to_f32(min16), s = f16_to_f32(scale16);
  const float inv = s > 0.0f ? 1.0f / s : 0.0f;
  for (int32_t i = 0; i < n; ++i)
    idx[i] = std::clamp(static_cast<int32_t>(std::lround((x[i * stride] - m) * inv)), 0, top);
}

HWY_INLINE void PackIndices(const int32_t* HWY_RESTRICT idx, int bits, int32_t n, uint8_t* HWY_RESTRICT dst) {
  std::memset(dst, 0, static_cast<size_t>(n * bits / 8));
  for (int32_t e = 0; e < n; ++e) dst[(e * bits) >> 3] |= static_cast<uint8_t>(idx[e] << ((e * bits) & 7));
}

HWY_INLINE void EncodeKiviValueRow(const float* HWY_RESTRICT src, int bits, int32_t d, uint8_t* HWY_RESTRICT dst) {
  int32_t idx[kKvBlock];
  for (int32_t b = 0; b < d; b += kKvBlock, dst += 4 + kKvBlock * bits / 8) {
    uint16_t half[2];
    QuantizeKiviGroup(src + b, 1, kKvBlock, bits, half[0], half[1], idx);
    std::memcpy(dst, half, sizeof half);
    PackIndices(idx, bits, kKvBlock, dst + 4);
  }
}

// A page of KIVI keys: `rows` rows of d values (row i at src + i * d) become
// rows of indices row_bytes apart at dst, and the channels' scales and minima at params.
HWY_INLINE void EncodeKiviKeyPage(const float* HWY_RESTRICT src, int32_t rows, int bits, int32_t d, int64_t row_bytes,
                                  uint8_t* HWY_RESTRICT dst, void* HWY_RESTRICT params) {
  auto* scale = static_cast<uint16_t*>(params);
  int32_t column[64 * 64];  // indices [channel][row] of one page, rows <= 64
  int32_t row_idx[kMaxKvRow];
  HWY_DASSERT(rows <= 64);
  for (int32_t c0 = 0; c0 < d; c0 += 64) {
    const int32_t width = std::min<int32_t>(64, d - c0);
    for (int32_t c = 0; c < width; ++c)
      QuantizeKiviGroup(src + c0 + c, d, rows, bits, scale[c0 + c], scale[d + c0 + c], column + c * 64);
    for (int32_t i = 0; i < rows; ++i) {
      for (int32_t c = 0; c < width; ++c) row_idx[c] = column[c * 64 + i];
      // Whole bytes: 64 channels are a multiple of 8 values at 2 and 4 bits.
      PackIndices(row_idx, bits, width, dst + i * row_bytes + c0 * bits / 8);
    }
  }
}

// ggml's quantize_row_q4_0_ref: the value of largest magnitude maps to -8 steps.
HWY_INLINE void EncodeQ4_0Row(const float* HWY_RESTRICT src, int32_t d, uint8_t* HWY_RESTRICT block) {
  for (int32_t b = 0; b < d; b += kKvBlock, block += kKvBlock / 2 + 2) {
    float amax = 0.0f, extreme = 0.0f;
    for (int32_t j = 0; j < kKvBlock; ++j) {
      if (std::fabs(src[b + j]) > amax) {
        amax = std::fabs(src[b + j]);
        extreme = src[b + j];
      }
    }
    const float scale = extreme / -8.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    const uint16_t half = f32_to_f16(scale);
    std::memcpy(block, &half, sizeof half);
    for (int32_t j = 0; j < kKvBlock / 2; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(src[b + j] * inv + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(src[b + j + kKvBlock / 2] * inv + 8.5f)));
      block[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

// Each value scaled to unit variance (sqrt(d) / |x|) takes the nearest codebook
// level; the stored scale makes the decoded row's norm equal |x| (norm
// correction), which keeps attention logits at their magnitude.
HWY_INLINE void EncodeTqRow(const float* HWY_RESTRICT src, int bits, int32_t d, uint8_t* HWY_RESTRICT dst) {
  const float* codebook = tq_codebook(bits);
  const int32_t levels = 1 << bits;
  double norm2 = 0.0;
  for (int32_t e = 0; e < d; ++e) norm2 += static_cast<double>(src[e]) * src[e];
  std::memset(dst + 2, 0, static_cast<size_t>(d * bits / 8));
  double decoded2 = 0.0;
  const double unit = norm2 > 0.0 ? std::sqrt(d / norm2) : 0.0;
  for (int32_t e = 0; e < d; ++e) {
    const double t = src[e] * unit;
    int32_t k = 0;  // the nearest level: levels are sorted, so count the midpoints below t
    while (k + 1 < levels && t > 0.5 * (codebook[k] + codebook[k + 1])) ++k;
    decoded2 += static_cast<double>(codebook[k]) * codebook[k];
    const int32_t bit = e * bits;
    dst[2 + (bit >> 3)] |= static_cast<uint8_t>(k << (bit & 7));
    if ((bit & 7) + bits > 8) dst[2 + (bit >> 3) + 1] |= static_cast<uint8_t>(k >> (8 - (bit & 7)));
  }
  const uint16_t half = f32_to_f16(norm2 > 0.0 ? static_cast<float>(std::sqrt(norm2 / decoded2)) : 0.0f);
  std::memcpy(dst, &half, sizeof half);
}

// d values (a multiple of the f32 vector length) of a row of `type` at src, as f32.
// params: a grouped format's page parameters (KvView::k_params), else unused.
template <class DF>
HWY_INLINE void DecodeKvRow(DF df, const void* HWY_RESTRICT src, KvDType type, int32_t d, float* HWY_RESTRICT dst,
                            const void* HWY_RESTRICT params = nullptr) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  if (type == KvDType::F16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto* s = static_cast<const hwy::float16_t*>(src);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, s + c)), df, dst + c);
  } else if (type == KvDType::BF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> db;
    const auto* s = static_cast<const hwy::bfloat16_t*>(src);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(db, s + c)), df, dst + c);
  } else if (type == KvDType::Q8_0) {
    const hn::Rebind<int32_t, DF> di;
    const hn::Rebind<int8_t, DF> d8;
    const auto* block = static_cast<const uint8_t*>(src);
    for (int32_t b = 0; b < d; b += kKvBlock, block += kKvBlock + 2) {
      uint16_t scale;
      std::memcpy(&scale, block, sizeof scale);
      const auto vscale = hn::Set(df, f16_to_f32(scale));
      const auto* q = reinterpret_cast<const int8_t*>(block + 2);
      for (int32_t c = 0; c < kKvBlock; c += N)
        hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + c))), vscale), df, dst + b + c);
    }
  } else if (type == KvDType::Q4_0) {
    // Byte j of a block holds value j (low nibble) and value j + 16 (high nibble).
    const hn::Rebind<int32_t, DF> di;
    const hn::Rebind<uint8_t, DF> du8;
    const auto low = hn::Set(di, 15), eight = hn::Set(di, 8);
    const auto* block = static_cast<const uint8_t*>(src);
    for (int32_t b = 0; b < d; b += kKvBlock, block += kKvBlock / 2 + 2) {
      uint16_t scale;
      std::memcpy(&scale, block, sizeof scale);
      const auto vscale = hn::Set(df, f16_to_f32(scale));
      for (int32_t c = 0; c < kKvBlock / 2; c += N) {
        const auto bytes = hn::PromoteTo(di, hn::LoadU(du8, block + 2 + c));
        const auto lo = hn::Sub(hn::And(bytes, low), eight), hi = hn::Sub(hn::ShiftRight<4>(bytes), eight);
        hn::StoreU(hn::Mul(hn::ConvertTo(df, lo), vscale), df, dst + b + c);
        hn::StoreU(hn::Mul(hn::ConvertTo(df, hi), vscale), df, dst + b + kKvBlock / 2 + c);
      }
    }
  } else if (kv_tq_bits(type) != 0) {
    DecodeTqRow(df, static_cast<const uint8_t*>(src), kv_tq_bits(type), d, dst);
    if (kv_qjl(type)) AddQjlResidual(df, static_cast<const uint8_t*>(src) + 2 + d * kv_tq_bits(type) / 8, d, dst);
  } else if (kv_grouped(type)) {
    DecodeKiviKeyRow(df, static_cast<const uint8_t*>(src), params, kv_kivi_bits(type), d, dst);
  } else if (kv_kivi_bits(type) != 0) {
    DecodeKiviValueRow(df, static_cast<const uint8_t*>(src), kv_kivi_bits(type), d, dst);
  } else {
    const auto* s = static_cast<const float*>(src);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::LoadU(df, s + c), df, dst + c);
  }
}

// Row `slot` of KV head `head` of a view, K or V, widened to f32: from its f16
// copy where it has one, or from the f16 stage while the slot's page is
// unfilled, else in the view's format.
template <class DF>
HWY_INLINE void DecodeViewRow(DF df, const KvView& kv, bool values, int32_t head, int64_t slot, int32_t d,
                              float* HWY_RESTRICT dst) {
  if (const uint16_t* copy = kv.copy_row(values, head, slot)) {
    DecodeKvRow(df, copy, KvDType::F16, d, dst);
  } else if (kv.staged(slot)) {
    DecodeKvRow(df, kv.stage_row(values, head, slot), KvDType::F16, d, dst);
  } else if (values) {
    DecodeKvRow(df, kv.v_row(head, slot), kv.v_type, d, dst);
  } else {
    DecodeKvRow(df, kv.k_row(head, slot), kv.k_type, d, dst, kv_grouped(kv.k_type) ? kv.k_params(head, slot) : nullptr);
  }
}

// The inverse, for writers of the cache: d f32 values stored as `type` (not a grouped type: EncodeKiviKeyPage).
template <class DF>
HWY_INLINE void EncodeKvRow(DF df, const float* HWY_RESTRICT src, KvDType type, int32_t d, void* HWY_RESTRICT dst) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(df));
  if (type == KvDType::F16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    auto* o = static_cast<hwy::float16_t*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, src + c)), dh, o + c);
  } else if (type == KvDType::BF16) {
    const hn::Rebind<hwy::bfloat16_t, DF> db;
    auto* o = static_cast<hwy::bfloat16_t*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::DemoteTo(db, hn::LoadU(df, src + c)), db, o + c);
  } else if (type == KvDType::Q8_0) {
    // As ggml's quantize_row_q8_0: d = absmax / 127 per block, stored as f16;
    // values round to nearest with the f32 d.
    const hn::Rebind<int8_t, DF> d8;
    auto* block = static_cast<uint8_t*>(dst);
    for (int32_t b = 0; b < d; b += kKvBlock, block += kKvBlock + 2) {
      auto amax = hn::Zero(df);
      for (int32_t c = 0; c < kKvBlock; c += N) amax = hn::Max(amax, hn::Abs(hn::LoadU(df, src + b + c)));
      const float scale = hn::GetLane(hn::MaxOfLanes(df, amax)) / 127.0f;
      const uint16_t half = f32_to_f16(scale);
      std::memcpy(block, &half, sizeof half);
      const auto inv = hn::Set(df, scale > 0.0f ? 1.0f / scale : 0.0f);
      auto* q = reinterpret_cast<int8_t*>(block + 2);
      for (int32_t c = 0; c < kKvBlock; c += N)
        hn::StoreU(hn::DemoteTo(d8, hn::NearestInt(hn::Mul(hn::LoadU(df, src + b + c), inv))), d8, q + c);
    }
  } else if (type == KvDType::Q4_0) {
    EncodeQ4_0Row(src, d, static_cast<uint8_t*>(dst));
  } else if (kv_tq_bits(type) != 0) {
    EncodeTqRow(src, kv_tq_bits(type), d, static_cast<uint8_t*>(dst));
    if (kv_qjl(type)) {
      float decoded[kMaxKvRow];
      DecodeTqRow(df, static_cast<const uint8_t*>(dst), kv_tq_bits(type), d, decoded);
      EncodeQjlSketch(src, decoded, d, static_cast<uint8_t*>(dst) + 2 + d * kv_tq_bits(type) / 8);
    }
  } else if (kv_kivi_bits(type) != 0 && !kv_grouped(type)) {
    EncodeKiviValueRow(src, kv_kivi_bits(type), d, static_cast<uint8_t*>(dst));
  } else {
    auto* o = static_cast<float*>(dst);
    for (int32_t c = 0; c < d; c += N) hn::StoreU(hn::LoadU(df, src + c), df, o + c);
  }
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SKIM_KERNELS_KV_CODEC_INL_H_
