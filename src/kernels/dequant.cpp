#include "kernels/dequant.h"

#include <immintrin.h>

#include <cstring>

#include <fmt/format.h>

#include "kernels/f16.h"
#include "kernels/quant_blocks.h"

// Bit-exactness with the reference (ggml's C, gguf-py's numpy) holds whether or
// not the compiler fuses `d * q + m` into an FMA: every product that feeds an add
// is exact in f32 (an f16 scale has an 11-bit significand, times a scale and a
// quant of at most 6 bits each), so only the add itself rounds.

namespace skim::kernels {
namespace {

// Legacy 4-bit nibbles of a 32-element block, in element order: low nibbles
// are elements 0..15, high nibbles 16..31.
inline __m256i unpack_nibbles32(const uint8_t* qs) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// Eight bytes (0..255) starting at `bytes[i]` of a 32-byte vector, widened to floats.
inline __m256 bytes_to_f32(__m128i bytes8) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes8)); }
inline __m256 sbytes_to_f32(__m128i bytes8) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8)); }

// Stores d * q + m (or d * q when kHasMin is false) for 32 unsigned byte values
// q, each product rounded before the add.
template <bool kHasMin>
inline void store_scaled_u8x32(__m256i q, __m256 d, __m256 m, float* y) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int p = 0; p < 4; ++p) {
    __m256 v = _mm256_mul_ps(d, bytes_to_f32(parts[p]));
    if constexpr (kHasMin) v = _mm256_add_ps(v, m);
    _mm256_storeu_ps(y + 8 * p, v);
  }
}

// Same for signed bytes, no offset.
inline void store_scaled_s8x32(__m256i q, __m256 d, float* y) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int p = 0; p < 4; ++p) _mm256_storeu_ps(y + 8 * p, _mm256_mul_ps(d, sbytes_to_f32(parts[p])));
}

// 32 bytes, byte j = 0xFF when bit j of `bits` is set, else 0.
inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
  const __m256i bit_of_byte = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_of_byte), bit_of_byte);
}

void dequant_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m256i q = _mm256_sub_epi8(unpack_nibbles32(x[i].qs), _mm256_set1_epi8(8));
    store_scaled_s8x32(q, _mm256_set1_ps(f16_to_f32(x[i].d)), y);
  }
}

void dequant_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK)
    store_scaled_u8x32<true>(unpack_nibbles32(x[i].qs), _mm256_set1_ps(f16_to_f32(x[i].d)),
                             _mm256_set1_ps(f16_to_f32(x[i].m)), y);
}

inline __m256i q5_values(const uint8_t* qh, const uint8_t* qs) {
  uint32_t high;
  std::memcpy(&high, qh, 4);
  const __m256i fifth = _mm256_and_si256(bits_to_bytes(high), _mm256_set1_epi8(0x10));
  return _mm256_or_si256(unpack_nibbles32(qs), fifth);
}

void dequant_q5_0(const BlockQ5_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const __m256i q = _mm256_sub_epi8(q5_values(x[i].qh, x[i].qs), _mm256_set1_epi8(16));
    store_scaled_s8x32(q, _mm256_set1_ps(f16_to_f32(x[i].d)), y);
  }
}

void dequant_q5_1(const BlockQ5_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK)
    store_scaled_u8x32<true>(q5_values(x[i].qh, x[i].qs), _mm256_set1_ps(f16_to_f32(x[i].d)),
                             _mm256_set1_ps(f16_to_f32(x[i].m)), y);
}

void dequant_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK)
    store_scaled_s8x32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs)),
                       _mm256_set1_ps(f16_to_f32(x[i].d)), y);
}

void dequant_q2_k(const BlockQ2_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d), dmin = f16_to_f32(x[i].dmin);
    const uint8_t* q = x[i].qs;
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part, ++is) {
          const float dl = d * static_cast<float>(x[i].scales[is] & 0xF);
          const float ml = dmin * static_cast<float>(x[i].scales[is] >> 4);
          for (int l = 0; l < 16; ++l)
            *y++ = dl * static_cast<float>((q[16 * part + l] >> shift) & 3) - ml;
        }
      }
    }
  }
}

// The 16 six-bit scales of a Q3_K super-block, offset to signed.
inline void q3_k_scales(const uint8_t* packed, int8_t* scales) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4;
    const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
    scales[j] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
}

void dequant_q3_k(const BlockQ3_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    int8_t scales[16];
    q3_k_scales(x[i].scales, scales);
    for (int e = 0; e < kQKK; ++e) {
      const int group = e / 128, shift = 2 * ((e % 128) / 32), l = e % 32;
      const int low = (x[i].qs[32 * group + l] >> shift) & 3;
      // A clear high bit means the value is offset by -4.
      const int high_clear = ((x[i].hmask[l] >> (e / 32)) & 1) ^ 1;
      const float dl = d * static_cast<float>(scales[e / 16]);
      y[e] = dl * static_cast<float>(low - 4 * high_clear);
    }
    y += kQKK;
  }
}

void dequant_q4_k(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d), dmin = f16_to_f32(x[i].dmin);
    for (int chunk = 0; chunk < 4; ++chunk) {
      const uint8_t* q = x[i].qs + 32 * chunk;
      for (int h = 0; h < 2; ++h) {
        uint8_t sc, mn;
        k4_scale_min(2 * chunk + h, x[i].scales, &sc, &mn);
        const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
        for (int l = 0; l < 32; ++l) *y++ = dl * static_cast<float>((q[l] >> (4 * h)) & 0xF) - ml;
      }
    }
  }
}

void dequant_q5_k(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d), dmin = f16_to_f32(x[i].dmin);
    for (int chunk = 0; chunk < 4; ++chunk) {
      const uint8_t* q = x[i].qs + 32 * chunk;
      for (int h = 0; h < 2; ++h) {
        const int sub = 2 * chunk + h;
        uint8_t sc, mn;
        k4_scale_min(sub, x[i].scales, &sc, &mn);
        const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
        for (int l = 0; l < 32; ++l) {
          const int value = ((q[l] >> (4 * h)) & 0xF) | (((x[i].qh[l] >> sub) & 1) << 4);
          *y++ = dl * static_cast<float>(value) - ml;
        }
      }
    }
  }
}

void dequant_q6_k(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = f16_to_f32(x[i].d);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = x[i].ql + 64 * half;
      const uint8_t* qh = x[i].qh + 32 * half;
      for (int e = 0; e < 128; ++e) {
        const int quarter = e / 32, l = e % 32;
        const int low = (ql[l + 32 * (quarter & 1)] >> (4 * (quarter >> 1))) & 0xF;
        const int high = (qh[l] >> (2 * quarter)) & 3;
        const float dl = d * static_cast<float>(x[i].scales[8 * half + e / 16]);
        y[e] = dl * static_cast<float>((low | (high << 4)) - 32);
      }
      y += 128;
    }
  }
}

void bf16_to_f32_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
  }
  for (; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}

int64_t block_size_of(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16: return 1;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0: return kQK;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return kQKK;
    default: return 0;
  }
}

}  // namespace

bool can_dequantize(GgmlType type) { return block_size_of(type) != 0; }

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const int64_t block = block_size_of(type);
  if (block == 0)
    throw GgufError(fmt::format("dequantize_row: no dequantizer for tensor type id {}", static_cast<uint32_t>(type)));
  if (n < 0 || n % block != 0)
    throw GgufError(fmt::format("dequantize_row: {} elements is not a multiple of the block size {} of type id {}",
                                n, block, static_cast<uint32_t>(type)));
  if (n == 0) return;
  if (src == nullptr || dst == nullptr) throw GgufError("dequantize_row: null source or destination");
  const int64_t nb = n / block;
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case GgmlType::F16: f16_to_f32_row(static_cast<const uint16_t*>(src), dst, n); return;
    case GgmlType::BF16: bf16_to_f32_row(static_cast<const uint16_t*>(src), dst, n); return;
    case GgmlType::Q4_0: dequant_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb); return;
    case GgmlType::Q4_1: dequant_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb); return;
    case GgmlType::Q5_0: dequant_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb); return;
    case GgmlType::Q5_1: dequant_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb); return;
    case GgmlType::Q8_0: dequant_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb); return;
    case GgmlType::Q2_K: dequant_q2_k(static_cast<const BlockQ2_K*>(src), dst, nb); return;
    case GgmlType::Q3_K: dequant_q3_k(static_cast<const BlockQ3_K*>(src), dst, nb); return;
    case GgmlType::Q4_K: dequant_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb); return;
    case GgmlType::Q5_K: dequant_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb); return;
    case GgmlType::Q6_K: dequant_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb); return;
    default: break;
  }
  throw GgufError(fmt::format("dequantize_row: no dequantizer for tensor type id {}", static_cast<uint32_t>(type)));
}

}  // namespace skim::kernels
