#include "kernels/quant_dot.h"

#include <cpuid.h>
#include <immintrin.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

#include "kernels/f16.h"
#include "kernels/quant_blocks.h"

namespace skim::kernels {

// ---------------------------------------------------------------------------
// ISA selection

namespace {
bool cpu_has_f16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}
}  // namespace

KernelIsa detected_isa() {
  static const KernelIsa isa = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())) return KernelIsa::kScalar;
    const bool avx512_vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                             __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bitalg");
    return avx512_vnni ? KernelIsa::kAvx512Vnni : KernelIsa::kAvx2;
  }();
  return isa;
}

std::vector<KernelIsa> runnable_isas() {
  std::vector<KernelIsa> isas;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i) isas.push_back(static_cast<KernelIsa>(i));
  return isas;
}

const char* isa_name(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kScalar: return "scalar";
    case KernelIsa::kAvx2: return "AVX2";
    case KernelIsa::kAvx512Vnni: return "AVX-512 VNNI+BITALG";
  }
  return "?";
}

namespace {
KernelIsa g_isa_override = KernelIsa::kScalar;
bool g_isa_overridden = false;
}  // namespace

KernelIsa kernel_isa() { return g_isa_overridden ? g_isa_override : detected_isa(); }

void set_kernel_isa(KernelIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detected_isa()))
    throw std::invalid_argument(fmt::format("set_kernel_isa: this CPU lacks {}", isa_name(isa)));
  g_isa_override = isa;
  g_isa_overridden = true;
}

ActivationFormat integer_activation_format(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0: return ActivationFormat::kQ8Block32;
    case GgmlType::Q4_K:
    case GgmlType::Q6_K: return ActivationFormat::kQ8Block256;
    default: return ActivationFormat::kNone;
  }
}

int64_t activation_block_size(ActivationFormat format) {
  switch (format) {
    case ActivationFormat::kQ8Block32: return kQK;
    case ActivationFormat::kQ8Block256: return kQKK;
    case ActivationFormat::kNone: break;
  }
  return 0;
}

namespace {

// ---------------------------------------------------------------------------
// Activation quantization

constexpr int64_t kMaxGroupBlocks = 4;  // the group_blocks of the AVX-512 layout

// q = x * id rounded to nearest even (as the AVX2 conversion does).
void quantize_span_scalar(const float* x, int n, float id, int8_t* q) {
  for (int i = 0; i < n; ++i) q[i] = static_cast<int8_t>(std::nearbyint(x[i] * id));
}

float amax_scalar(const float* x, int n) {
  float m = 0.0f;
  for (int i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
  return m;
}

__attribute__((target("avx2,fma"))) float amax_avx2(const float* x, int n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// 32 floats times id, rounded to nearest even, to int8 in element order; returns
// the sums of elements 0..15 and 16..31.
__attribute__((target("avx2,fma"))) void quantize32_avx2(const float* x, float id, int8_t* q, int* sum_lo,
                                                          int* sum_hi) {
  const __m256 vid = _mm256_set1_ps(id);
  __m256i i32[4];
  for (int p = 0; p < 4; ++p) i32[p] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * p), vid));
  // packs interleave 128-bit lanes; the permute restores element order.
  const __m256i i16 = _mm256_packs_epi32(i32[0], i32[1]);
  const __m256i i16b = _mm256_packs_epi32(i32[2], i32[3]);
  __m256i i8 = _mm256_packs_epi16(i16, i16b);
  i8 = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), i8);
  auto hsum = [](__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  };
  *sum_lo = hsum(_mm256_add_epi32(i32[0], i32[1]));
  *sum_hi = hsum(_mm256_add_epi32(i32[2], i32[3]));
}

void quantize_row(const float* x, int64_t k, ActivationFormat format, KernelIsa isa, int8_t* q, float* d,
                  float* dsum, int16_t* bsum16) {
  const int block = static_cast<int>(activation_block_size(format));
  for (int64_t b = 0; b < k / block; ++b) {
    const float* xb = x + b * block;
    int8_t* qb = q + b * block;
    const float amax = isa != KernelIsa::kScalar ? amax_avx2(xb, block) : amax_scalar(xb, block);
    const float scale = amax / 127.0f;
    const float id = scale != 0.0f ? 1.0f / scale : 0.0f;
    d[b] = scale;
    int block_sum = 0;
    for (int c = 0; c < block; c += 32) {
      int lo, hi;
      if (isa != KernelIsa::kScalar) {
        quantize32_avx2(xb + c, id, qb + c, &lo, &hi);
      } else {
        quantize_span_scalar(xb + c, 32, id, qb + c);
        lo = hi = 0;
        for (int i = 0; i < 16; ++i) lo += qb[c + i], hi += qb[c + 16 + i];
      }
      block_sum += lo + hi;
      if (bsum16) {
        bsum16[(b * block + c) / 16] = static_cast<int16_t>(lo);
        bsum16[(b * block + c) / 16 + 1] = static_cast<int16_t>(hi);
      }
    }
    if (dsum) dsum[b] = scale * static_cast<float>(block_sum);
  }
}

}  // namespace

int64_t activation_position(const QuantizedActivations& a, int64_t i) {
  if (a.format != ActivationFormat::kQ8Block32) return i;
  const int64_t g = a.group_blocks, b = i / kQK, nb = a.k / kQK;
  const int64_t first = b - b % g, j = i % kQK;
  if (first + g > nb) return i;  // blocks after the last whole group keep natural order
  return first * kQK + (j / 16) * 16 * g + (b - first) * 16 + j % 16;
}

void quantize_activations(const float* x, int64_t rows, int64_t k, ActivationFormat format, KernelIsa isa,
                          QuantizedActivations& out) {
  const int64_t block = activation_block_size(format);
  if (block == 0) throw std::invalid_argument("quantize_activations: no activation format");
  if (k <= 0 || k % block != 0)
    throw std::invalid_argument(fmt::format("quantize_activations: row length {} is not a positive multiple of {}", k, block));
  out.format = format;
  out.group_blocks = isa == KernelIsa::kAvx512Vnni ? 4 : 2;
  out.rows = rows;
  out.k = k;
  const int64_t nb = k / block;
  out.q.resize(static_cast<size_t>(rows * k));
  out.d.resize(static_cast<size_t>(rows * nb));
  if (format == ActivationFormat::kQ8Block32) {
    out.dsum.resize(static_cast<size_t>(rows * nb));
    out.bsum16.clear();
  } else {
    out.bsum16.resize(static_cast<size_t>(rows * k / 16));
    out.dsum.clear();
  }
  for (int64_t r = 0; r < rows; ++r) {
    int8_t* q = out.q.data() + r * k;
    quantize_row(x + r * k, k, format, isa, q, out.d.data() + r * nb,
                 format == ActivationFormat::kQ8Block32 ? out.dsum.data() + r * nb : nullptr,
                 format == ActivationFormat::kQ8Block256 ? out.bsum16.data() + r * k / 16 : nullptr);
    if (format == ActivationFormat::kQ8Block32) {
      // Group layout (see activation_position): halves of each block of a group
      // gathered, first halves before second halves.
      const int64_t g = out.group_blocks;
      for (int64_t b = 0; b + g <= nb && g > 1; b += g) {
        int8_t grouped[kMaxGroupBlocks * kQK];
        for (int64_t j = 0; j < g; ++j) {
          std::memcpy(grouped + j * 16, q + (b + j) * kQK, 16);
          std::memcpy(grouped + (g + j) * 16, q + (b + j) * kQK + 16, 16);
        }
        std::memcpy(q + b * kQK, grouped, static_cast<size_t>(g * kQK));
      }
    }
  }
}

namespace {

// ---------------------------------------------------------------------------
// Legacy types (32-element blocks). Each weight element is d * q + offset with
// an integer q; the dot with activations (da * p) is
//   d * da * sum(q * p) + offset * (da * sum(p)),
// where offset is the block min (Q4_1, Q5_1) or -d times the zero point.

uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

struct Q4_0Kernel {
  using Block = BlockQ4_0;
  static constexpr bool kSigned = false, kHasMin = false;
  static constexpr float kZeroPoint = 8.0f;
  static int quant(const Block& b, int j) { return j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4; }
};
struct Q4_1Kernel {
  using Block = BlockQ4_1;
  static constexpr bool kSigned = false, kHasMin = true;
  static constexpr float kZeroPoint = 0.0f;
  static int quant(const Block& b, int j) { return j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4; }
};
struct Q5_0Kernel {
  using Block = BlockQ5_0;
  static constexpr bool kSigned = false, kHasMin = false;
  static constexpr float kZeroPoint = 16.0f;
  static int quant(const Block& b, int j) {
    const int low = j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4;
    return low | (((load_u32(b.qh) >> j) & 1) << 4);
  }
};
struct Q5_1Kernel {
  using Block = BlockQ5_1;
  static constexpr bool kSigned = false, kHasMin = true;
  static constexpr float kZeroPoint = 0.0f;
  static int quant(const Block& b, int j) {
    const int low = j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4;
    return low | (((load_u32(b.qh) >> j) & 1) << 4);
  }
};
struct Q8_0Kernel {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true, kHasMin = false;
  static constexpr float kZeroPoint = 0.0f;
  static int quant(const Block& b, int j) { return b.qs[j]; }
};

// Every legacy block starts with its f16 scale, followed by the f16 min when it has one.
template <class K>
float block_scale(const typename K::Block& b) {
  return f16_to_f32(b.d);
}
template <class K>
float block_offset(const typename K::Block& b) {
  if constexpr (K::kHasMin) return f16_to_f32(b.m);
  else return -K::kZeroPoint * f16_to_f32(b.d);
}

template <class K>
void legacy_dot_scalar(const uint8_t* w_row, const QuantizedActivations& a, float* out, int64_t out_stride) {
  const auto* w = reinterpret_cast<const typename K::Block*>(w_row);
  const int64_t nb = a.blocks_per_row();
  for (int64_t r = 0; r < a.rows; ++r) {
    const int8_t* p = a.q.data() + r * a.k;
    const float* da = a.d.data() + r * nb;
    const float* dsum = a.dsum.data() + r * nb;
    float acc = 0.0f, offsets = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      int sumi = 0;
      for (int j = 0; j < kQK; ++j) sumi += K::quant(w[b], j) * p[activation_position(a, b * kQK + j)];
      acc += block_scale<K>(w[b]) * da[b] * static_cast<float>(sumi);
      offsets += block_offset<K>(w[b]) * dsum[b];
    }
    out[r * out_stride] = acc + offsets;
  }
}

__attribute__((target("avx2,fma"))) inline float hsum_f32(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline __m256i unpack_nibbles32(const uint8_t* qs) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
}

// Byte j = 0x10 when bit j of `bits` is set, else 0.
__attribute__((target("avx2,fma"))) inline __m256i fifth_bits(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
  const __m256i bit_of_byte = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_of_byte), bit_of_byte);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

__attribute__((target("avx2,fma"))) inline __m256i load_2x128(const void* lo, const void* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(lo))),
                                 _mm_loadu_si128(static_cast<const __m128i*>(hi)), 1);
}

// The quants of blocks A and B in pair layout: `lo` holds elements 0..15 of A
// then of B, `hi` elements 16..31 of A then of B.
template <class K>
__attribute__((target("avx2,fma"))) inline void pair_quants(const typename K::Block& A, const typename K::Block& B,
                                                            __m256i& lo, __m256i& hi) {
  if constexpr (std::is_same_v<K, Q8_0Kernel>) {
    lo = load_2x128(A.qs, B.qs);
    hi = load_2x128(A.qs + 16, B.qs + 16);
  } else {
    const __m256i packed = load_2x128(A.qs, B.qs);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    lo = _mm256_and_si256(packed, nibble);
    hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
    if constexpr (std::is_same_v<K, Q5_0Kernel> || std::is_same_v<K, Q5_1Kernel>) {
      const uint32_t ha = load_u32(A.qh), hb = load_u32(B.qh);
      lo = _mm256_or_si256(lo, fifth_bits((ha & 0xFFFF) | (hb << 16)));
      hi = _mm256_or_si256(hi, fifth_bits((ha >> 16) | (hb & 0xFFFF0000u)));
    }
  }
}

// A single block in natural element order (the unpaired last block).
template <class K>
__attribute__((target("avx2,fma"))) inline __m256i block_quants(const typename K::Block& b) {
  if constexpr (std::is_same_v<K, Q8_0Kernel>) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
  } else if constexpr (std::is_same_v<K, Q5_0Kernel> || std::is_same_v<K, Q5_1Kernel>) {
    return _mm256_or_si256(unpack_nibbles32(b.qs), fifth_bits(load_u32(b.qh)));
  } else {
    return unpack_nibbles32(b.qs);
  }
}

// q * p summed over pairs of bytes, as 16 int16 (unsigned q) ...
template <bool kSigned>
__attribute__((target("avx2,fma"))) inline __m256i mul_pairs(__m256i q, __m256i p) {
  // maddubs multiplies unsigned by signed: for signed q, move its sign onto p.
  if constexpr (kSigned) return _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(p, q));
  else return _mm256_maddubs_epi16(q, p);
}

// Eight int32 partial sums of q * p for one pair-layout vector pair (lanes 0..3
// belong to block A, 4..7 to block B) or one natural block.
template <bool kSigned>
__attribute__((target("avx2,fma"))) inline __m256i pair_dot(__m256i lo, __m256i hi, const int8_t* p) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i plo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i phi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
  if constexpr (kSigned) {
    // 8-bit by 8-bit pair sums reach 32512: adding two of them would overflow int16.
    return _mm256_add_epi32(_mm256_madd_epi16(mul_pairs<true>(lo, plo), ones),
                            _mm256_madd_epi16(mul_pairs<true>(hi, phi), ones));
  } else {
    // At most 2 * 31 * 127 per pair sum here, so the int16 add is exact.
    return _mm256_madd_epi16(_mm256_add_epi16(mul_pairs<false>(lo, plo), mul_pairs<false>(hi, phi)), ones);
  }
}

// The eight f16 scales (and mins) at the start of eight consecutive blocks.
template <class K>
__attribute__((target("avx2,fma"))) inline void load_scales8(const typename K::Block* x, __m256& d, __m256& m) {
  uint32_t head[8];
  for (int i = 0; i < 8; ++i) head[i] = load_u32(&x[i]);
  const __m128i lo = _mm_setr_epi32(head[0], head[1], head[2], head[3]);
  const __m128i hi = _mm_setr_epi32(head[4], head[5], head[6], head[7]);
  const __m128i first = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
  d = _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_shuffle_epi8(lo, first), _mm_shuffle_epi8(hi, first)));
  if constexpr (K::kHasMin) {
    const __m128i second = _mm_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    m = _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_shuffle_epi8(lo, second), _mm_shuffle_epi8(hi, second)));
  } else {
    m = _mm256_mul_ps(d, _mm256_set1_ps(-K::kZeroPoint));
  }
}

// One block in natural element order (those after the last whole group): its
// dot with each activation row added to acc, its offset term to tail_offsets.
template <class K, int M>
__attribute__((target("avx2,fma"))) inline void natural_block_avx2(const typename K::Block& block, int64_t b,
                                                                    const int8_t* const* p, const float* const* da,
                                                                    const float* const* dsum, __m256* acc,
                                                                    float* tail_offsets) {
  const __m256i q = block_quants<K>(block);
  const float d = block_scale<K>(block);
  for (int r = 0; r < M; ++r) {
    const __m256i pv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[r] + b * kQK));
    const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(mul_pairs<K::kSigned>(q, pv), _mm256_set1_epi16(1)));
    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * da[r][b]), s, acc[r]);
    tail_offsets[r] += block_offset<K>(block) * dsum[r][b];
  }
}

// Groups of eight blocks share the float work: the scales are loaded and
// converted eight at a time, and the four pair sums are folded with hadd into
// one vector with a lane per block (order 0,2,4,6,1,3,5,7), so each group
// needs a single int->float conversion and FMA per activation row.
template <class K, int M>
__attribute__((target("avx2,fma"))) void legacy_dot_avx2(const uint8_t* w_row, const QuantizedActivations& a,
                                                          float* out, int64_t out_stride) {
  const auto* w = reinterpret_cast<const typename K::Block*>(w_row);
  const int64_t nb = a.blocks_per_row();
  const int8_t* p[M];
  const float* da[M];
  const float* dsum[M];
  __m256 acc[M], offsets[M];
  for (int r = 0; r < M; ++r) {
    p[r] = a.q.data() + r * a.k;
    da[r] = a.d.data() + r * nb;
    dsum[r] = a.dsum.data() + r * nb;
    acc[r] = offsets[r] = _mm256_setzero_ps();
  }
  const __m256i hadd_order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const typename K::Block* x = w + b;
    __m256 d, m;
    load_scales8<K>(x, d, m);
    // sums[0]: blocks 0..3 as lanes (0,0,2,2 | 1,1,3,3); sums[1]: blocks 4..7.
    __m256i sums[2][M];
    for (int half = 0; half < 2; ++half) {
      __m256i lo0, hi0, lo1, hi1;
      pair_quants<K>(x[4 * half], x[4 * half + 1], lo0, hi0);
      pair_quants<K>(x[4 * half + 2], x[4 * half + 3], lo1, hi1);
      for (int r = 0; r < M; ++r) {
        const int8_t* pr = p[r] + (b + 4 * half) * kQK;
        sums[half][r] =
            _mm256_hadd_epi32(pair_dot<K::kSigned>(lo0, hi0, pr), pair_dot<K::kSigned>(lo1, hi1, pr + 2 * kQK));
      }
    }
    for (int r = 0; r < M; ++r) {
      const __m256 per_block = _mm256_cvtepi32_ps(_mm256_hadd_epi32(sums[0][r], sums[1][r]));
      const __m256 scale = _mm256_permutevar8x32_ps(_mm256_mul_ps(d, _mm256_loadu_ps(da[r] + b)), hadd_order);
      acc[r] = _mm256_fmadd_ps(scale, per_block, acc[r]);
      if constexpr (K::kHasMin || K::kZeroPoint != 0.0f)
        offsets[r] = _mm256_fmadd_ps(m, _mm256_loadu_ps(dsum[r] + b), offsets[r]);
    }
  }
  float tail_offsets[M] = {};
  for (; b + 2 <= nb; b += 2) {
    __m256i lo, hi;
    pair_quants<K>(w[b], w[b + 1], lo, hi);
    const float d0 = block_scale<K>(w[b]), d1 = block_scale<K>(w[b + 1]);
    for (int r = 0; r < M; ++r) {
      const __m256 s = _mm256_cvtepi32_ps(pair_dot<K::kSigned>(lo, hi, p[r] + b * kQK));
      const __m256 scale = _mm256_set_m128(_mm_set1_ps(d1 * da[r][b + 1]), _mm_set1_ps(d0 * da[r][b]));
      acc[r] = _mm256_fmadd_ps(scale, s, acc[r]);
      tail_offsets[r] += block_offset<K>(w[b]) * dsum[r][b] + block_offset<K>(w[b + 1]) * dsum[r][b + 1];
    }
  }
  if (b < nb) natural_block_avx2<K, M>(w[b], b, p, da, dsum, acc, tail_offsets);
  for (int r = 0; r < M; ++r) out[r * out_stride] = hsum_f32(acc[r]) + hsum_f32(offsets[r]) + tail_offsets[r];
}

// ---------------------------------------------------------------------------
// Legacy types on AVX-512 VNNI: groups of four blocks fill a 512-bit vector
// (quad layout), and vpdpbusd sums four u8 x s8 products per 32-bit lane, so
// lanes 4i..4i+3 hold block i's dot after the two halves; one int->float
// conversion and FMA per four blocks and activation row. vpdpbusd needs
// unsigned weights: Q8_0's quants are offset by 128, which adds the zero point
// -128 * d to its block offset.

// GCC 12's AVX-512 headers fill unused operands with self-initialized
// "undefined" vectors, which -Wmaybe-uninitialized flags (Highway silences the
// same warning for its AVX-512 code).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SKIM_AVX512_VNNI \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg")))

template <class K>
constexpr float kUnsignedZeroPoint = K::kSigned ? 128.0f : K::kZeroPoint;

// A quad of blocks (four consecutive blocks, 72 to 136 bytes) is read as two
// overlapping 64-byte windows, and vpermt2b / vpermt2w gather the quants,
// scales and fifth bits straight into place: fewer instructions per weight
// byte let the core keep more weight loads in flight. The nibble types fit
// two windows [0, 64) and [quad - 64, quad); Q8_0's 136 bytes take two pairs,
// [0, 64) + [64, 128) for elements 0..15 and the scales, [8, 72) + [72, 136)
// for elements 16..31. Every window lies inside the quad.
template <class K>
struct QuadTables {
  static constexpr int kBlockBytes = sizeof(typename K::Block);
  static constexpr int kQuadBytes = 4 * kBlockBytes;
  static constexpr int kSecond = K::kSigned ? 64 : kQuadBytes - 64;  // start of the second window
  static constexpr int kSecondHi = 72;                                // Q8_0: second window of elements 16..31

  // vpermt2b index of quad byte o, for windows starting at w0 and w1.
  static constexpr uint8_t byte_index(int o, int w0, int w1) {
    return static_cast<uint8_t>(o >= w0 && o < w0 + 64 ? o - w0 : 64 + o - w1);
  }
  // 64 bytes, 16 from each block: bytes first..first+15 of its quants.
  static constexpr std::array<uint8_t, 64> quant_bytes(int first, int w0, int w1) {
    std::array<uint8_t, 64> index{};
    for (int i = 0; i < 64; ++i)
      index[i] = byte_index((i / 16) * kBlockBytes + static_cast<int>(offsetof(typename K::Block, qs)) + first + i % 16,
                            w0, w1);
    return index;
  }
  // 32 words: word j < 4 the f16 at byte `field` of block j (scale or min).
  static constexpr std::array<uint16_t, 32> field_words(int field) {
    std::array<uint16_t, 32> index{};
    for (int j = 0; j < 4; ++j) index[j] = byte_index(j * kBlockBytes + field, 0, kSecond) / 2;
    return index;
  }
  // 32 words: block j's four fifth-bit bytes at the bottom of 64-bit lanes 2j and 2j + 1.
  static constexpr std::array<uint16_t, 32> fifth_bit_words() {
    std::array<uint16_t, 32> index{};
    if constexpr (requires(typename K::Block b) { b.qh; })
      for (int w = 0; w < 32; ++w)
        index[w] = byte_index((w / 8) * kBlockBytes + static_cast<int>(offsetof(typename K::Block, qh)) + 2 * (w % 2),
                              0, kSecond) / 2;
    return index;
  }

  alignas(64) static constexpr std::array<uint8_t, 64> kQuants = quant_bytes(0, 0, kSecond);  // nibbles, or Q8_0's 0..15
  alignas(64) static constexpr std::array<uint8_t, 64> kQuantsHi = quant_bytes(16, 8, kSecondHi);  // Q8_0's 16..31
  alignas(64) static constexpr std::array<uint16_t, 32> kScales = field_words(0);
  alignas(64) static constexpr std::array<uint16_t, 32> kMins = field_words(2);
  alignas(64) static constexpr std::array<uint16_t, 32> kFifthBits = fifth_bit_words();
};

template <size_t N, class T>
SKIM_AVX512_VNNI inline __m512i load_index(const std::array<T, N>& index) {
  return _mm512_load_si512(index.data());
}

// The words of the (first, second) window pair that `index` names.
SKIM_AVX512_VNNI inline __m512i gather_words(__m512i first, const std::array<uint16_t, 32>& index, __m512i second) {
  return _mm512_permutex2var_epi16(first, load_index(index), second);
}

// Blocks x[0..3], unpacked for quad_dot: the scales d, the offsets m (the mins,
// or -d times the zero point), and the quants as unsigned bytes in quad layout,
// `lo` holding elements 0..15 of each block in block order, `hi` elements 16..31.
template <class K>
SKIM_AVX512_VNNI inline void quad_weights(const typename K::Block* x, __m128& d, __m128& m, __m512i& lo,
                                          __m512i& hi) {
  using T = QuadTables<K>;
  const auto* bytes = reinterpret_cast<const uint8_t*>(x);
  const __m512i first = _mm512_loadu_si512(bytes), second = _mm512_loadu_si512(bytes + T::kSecond);
  d = _mm_cvtph_ps(_mm512_castsi512_si128(gather_words(first, T::kScales, second)));
  if constexpr (K::kHasMin)
    m = _mm_cvtph_ps(_mm512_castsi512_si128(gather_words(first, T::kMins, second)));
  else
    m = _mm_mul_ps(d, _mm_set1_ps(-kUnsignedZeroPoint<K>));
  if constexpr (K::kSigned) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    lo = _mm512_xor_si512(_mm512_permutex2var_epi8(first, load_index(T::kQuants), second), flip);
    const __m512i first_hi = _mm512_loadu_si512(bytes + 8), second_hi = _mm512_loadu_si512(bytes + T::kSecondHi);
    hi = _mm512_xor_si512(_mm512_permutex2var_epi8(first_hi, load_index(T::kQuantsHi), second_hi), flip);
  } else {
    const __m512i packed = _mm512_permutex2var_epi8(first, load_index(T::kQuants), second);
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    lo = _mm512_and_si512(packed, nibble);
    hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
    if constexpr (std::is_same_v<K, Q5_0Kernel> || std::is_same_v<K, Q5_1Kernel>) {
      // Bit j of a block's qh is the fifth bit of its element j. Each block's
      // qh sits at the bottom of both 64-bit lanes of its 128-bit lane;
      // vpshufbitqmb picks bit j for byte j (lo) and bit 16 + j (hi) of the
      // lane into a byte mask.
      const __m512i qh = gather_words(first, T::kFifthBits, second);
      const __m512i bit_lo = _mm512_set_epi64(0x0F0E0D0C0B0A0908, 0x0706050403020100, 0x0F0E0D0C0B0A0908,
                                              0x0706050403020100, 0x0F0E0D0C0B0A0908, 0x0706050403020100,
                                              0x0F0E0D0C0B0A0908, 0x0706050403020100);
      const __m512i bit_hi = _mm512_add_epi8(bit_lo, _mm512_set1_epi8(16));
      const __m512i sixteen = _mm512_set1_epi8(0x10);
      lo = _mm512_mask_add_epi8(lo, _mm512_bitshuffle_epi64_mask(qh, bit_lo), lo, sixteen);
      hi = _mm512_mask_add_epi8(hi, _mm512_bitshuffle_epi64_mask(qh, bit_hi), hi, sixteen);
    }
  }
}

// The 16 int32 partial sums of one quad (lanes 4i..4i+3: block i) against the
// activations p (the quad's 128 bytes).
SKIM_AVX512_VNNI inline __m512i quad_dot(__m512i lo, __m512i hi, const int8_t* p) {
  const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(p));
  return _mm512_dpbusd_epi32(s, hi, _mm512_loadu_si512(p + 64));
}

// n weight rows, the loop inside the kernel: its per-call set-up is a
// noticeable part of a row of 896 elements, and the output matrix has 152K.
template <class K, int M>
SKIM_AVX512_VNNI void legacy_dot_avx512(const uint8_t* w_rows, size_t stride, int64_t n, const QuantizedActivations& a,
                                        float* out, int64_t out_stride) {
  const int64_t nb = a.blocks_per_row();
  const int8_t* p[M];
  const float* da[M];
  const float* dsum[M];
  for (int r = 0; r < M; ++r) {
    p[r] = a.q.data() + r * a.k;
    da[r] = a.d.data() + r * nb;
    dsum[r] = a.dsum.data() + r * nb;
  }
  // Block i's scale to lanes 4i..4i+3, where quad_dot leaves its sums.
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  for (int64_t row = 0; row < n; ++row) {
    const auto* w = reinterpret_cast<const typename K::Block*>(w_rows + row * stride);
    __m512 acc[M];
    __m256 tail_acc[M];
    __m128 offsets[M];
    float tail_offsets[M] = {};
    for (int r = 0; r < M; ++r) {
      acc[r] = _mm512_setzero_ps();
      offsets[r] = _mm_setzero_ps();
      tail_acc[r] = _mm256_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
      __m128 d, m;
      __m512i lo, hi;
      quad_weights<K>(w + b, d, m, lo, hi);
      for (int r = 0; r < M; ++r) {
        const __m128 scale4 = _mm_mul_ps(d, _mm_loadu_ps(da[r] + b));
        const __m512 scale = _mm512_permutexvar_ps(spread, _mm512_zextps128_ps512(scale4));
        acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(quad_dot(lo, hi, p[r] + b * kQK)), acc[r]);
        offsets[r] = _mm_fmadd_ps(m, _mm_loadu_ps(dsum[r] + b), offsets[r]);
      }
    }
    for (; b < nb; ++b) natural_block_avx2<K, M>(w[b], b, p, da, dsum, tail_acc, tail_offsets);
    for (int r = 0; r < M; ++r) {
      const __m256 narrow = _mm256_add_ps(tail_acc[r], _mm256_zextps128_ps256(offsets[r]));
      out[r * out_stride + row] =
          _mm512_reduce_add_ps(_mm512_add_ps(acc[r], _mm512_zextps256_ps512(narrow))) + tail_offsets[r];
    }
  }
}

#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------
// K types (256-element super-blocks), against q8 activations with one scale per
// 256 elements and quant sums per 16.

void q4_k_scales_mins(const BlockQ4_K& b, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 8; ++j) k4_scale_min(j, b.scales, &sc[j], &mn[j]);
}

void q4_k_dot_scalar(const uint8_t* w_row, const QuantizedActivations& a, float* out, int64_t out_stride) {
  const auto* w = reinterpret_cast<const BlockQ4_K*>(w_row);
  const int64_t nb = a.blocks_per_row();
  for (int64_t r = 0; r < a.rows; ++r) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* p = a.q.data() + r * a.k + b * kQKK;
      const int16_t* bs = a.bsum16.data() + (r * a.k + b * kQKK) / 16;
      uint8_t sc[8], mn[8];
      q4_k_scales_mins(w[b], sc, mn);
      int sumi = 0, summ = 0;
      for (int j = 0; j < 8; ++j) {
        const uint8_t* q = w[b].qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        int s = 0;
        for (int l = 0; l < 32; ++l) s += ((q[l] >> shift) & 0xF) * p[32 * j + l];
        sumi += sc[j] * s;
        summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
      }
      const float da = a.d[r * nb + b];
      acc += f16_to_f32(w[b].d) * da * static_cast<float>(sumi) -
             f16_to_f32(w[b].dmin) * da * static_cast<float>(summ);
    }
    out[r * out_stride] = acc;
  }
}

// The 8 six-bit scales (bytes 0..7 of the result) and 8 six-bit mins (bytes
// 8..15) of a Q4_K/Q5_K super-block, unpacked with word-wide bit operations:
// scales 0..3 and mins 0..3 are the low 6 bits of bytes 0..3 and 4..7; scales
// and mins 4..7 take their low 4 bits from the nibbles of bytes 8..11 and
// their top 2 bits from the top bits of bytes 0..3 and 4..7.
inline __m128i k4_scales_mins_vec(const uint8_t* packed) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  constexpr uint32_t kLow6 = 0x3F3F3F3F, kLow4 = 0x0F0F0F0F, kLow2 = 0x03030303;
  const uint32_t scales_lo = u[0] & kLow6;
  const uint32_t scales_hi = (u[2] & kLow4) | (((u[0] >> 6) & kLow2) << 4);
  const uint32_t mins_lo = u[1] & kLow6;
  const uint32_t mins_hi = ((u[2] >> 4) & kLow4) | (((u[1] >> 6) & kLow2) << 4);
  return _mm_setr_epi32(static_cast<int>(scales_lo), static_cast<int>(scales_hi), static_cast<int>(mins_lo),
                        static_cast<int>(mins_hi));
}

template <int M>
__attribute__((target("avx2,fma"))) void q4_k_dot_avx2(const uint8_t* w_row, const QuantizedActivations& a,
                                                        float* out, int64_t out_stride) {
  const auto* w = reinterpret_cast<const BlockQ4_K*>(w_row);
  const int64_t nb = a.blocks_per_row();
  __m256 acc[M], mins_acc[M];
  for (int r = 0; r < M; ++r) acc[r] = mins_acc[r] = _mm256_setzero_ps();
  const __m256i low_nibble = _mm256_set1_epi8(0x0F);
  // Shuffle masks that broadcast int16 lane j of a 128-bit lane.
  __m256i pick16[8];
  for (int j = 0; j < 8; ++j) pick16[j] = _mm256_set1_epi16(static_cast<int16_t>((2 * j) | ((2 * j + 1) << 8)));
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i scales_mins = k4_scales_mins_vec(w[b].scales);
    // Scales as int16 in both 128-bit lanes; each min doubled to match the
    // two 16-element activation sums of its 32 elements.
    const __m256i scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scales_mins));
    const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
        scales_mins, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    __m256i sumi[M];
    for (int r = 0; r < M; ++r) sumi[r] = _mm256_setzero_si256();
    for (int chunk = 0; chunk < 4; ++chunk) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * chunk));
      const __m256i lo = _mm256_and_si256(bytes, low_nibble);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_nibble);
      const __m256i sc_lo = _mm256_shuffle_epi8(scales16, pick16[2 * chunk]);
      const __m256i sc_hi = _mm256_shuffle_epi8(scales16, pick16[2 * chunk + 1]);
      for (int r = 0; r < M; ++r) {
        const int8_t* p = a.q.data() + r * a.k + b * kQKK + 64 * chunk;
        const __m256i p_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i p_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, p_lo), sc_lo));
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, p_hi), sc_hi));
      }
    }
    const float dw = f16_to_f32(w[b].d), dmin = f16_to_f32(w[b].dmin);
    for (int r = 0; r < M; ++r) {
      const float da = a.d[r * nb + b];
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
      const __m256i bs =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum16.data() + (r * a.k + b * kQKK) / 16));
      mins_acc[r] =
          _mm256_fmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins16)), mins_acc[r]);
    }
  }
  for (int r = 0; r < M; ++r) out[r * out_stride] = hsum_f32(_mm256_sub_ps(acc[r], mins_acc[r]));
}

// Q6_K quant e (0..255) as an unsigned 6-bit value (the stored zero point is 32).
int q6_k_quant(const BlockQ6_K& b, int e) {
  const int half = e / 128, quarter = (e % 128) / 32, l = e % 32;
  const int low = (b.ql[64 * half + l + 32 * (quarter & 1)] >> (4 * (quarter >> 1))) & 0xF;
  const int high = (b.qh[32 * half + l] >> (2 * quarter)) & 3;
  return low | (high << 4);
}

void q6_k_dot_scalar(const uint8_t* w_row, const QuantizedActivations& a, float* out, int64_t out_stride) {
  const auto* w = reinterpret_cast<const BlockQ6_K*>(w_row);
  const int64_t nb = a.blocks_per_row();
  for (int64_t r = 0; r < a.rows; ++r) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* p = a.q.data() + r * a.k + b * kQKK;
      const int16_t* bs = a.bsum16.data() + (r * a.k + b * kQKK) / 16;
      int sumi = 0;
      for (int g = 0; g < 16; ++g) {
        int s = 0;
        for (int l = 0; l < 16; ++l) s += q6_k_quant(w[b], 16 * g + l) * p[16 * g + l];
        sumi += w[b].scales[g] * (s - 32 * bs[g]);
      }
      acc += f16_to_f32(w[b].d) * a.d[r * nb + b] * static_cast<float>(sumi);
    }
    out[r * out_stride] = acc;
  }
}

template <int M>
__attribute__((target("avx2,fma"))) void q6_k_dot_avx2(const uint8_t* w_row, const QuantizedActivations& a,
                                                        float* out, int64_t out_stride) {
  const auto* w = reinterpret_cast<const BlockQ6_K*>(w_row);
  const int64_t nb = a.blocks_per_row();
  __m256 acc[M];
  for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i low_nibble = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
  // Shuffle masks broadcasting int16 lane 2q in the low 128-bit lane and 2q+1 in the high one.
  __m256i pick_pair[4];
  for (int q = 0; q < 4; ++q)
    pick_pair[q] = _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>((4 * q + 2) | ((4 * q + 3) << 8))),
                                    _mm_set1_epi16(static_cast<int16_t>((4 * q) | ((4 * q + 1) << 8))));
  for (int64_t b = 0; b < nb; ++b) {
    const __m128i scales8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales));
    const __m256i scales16 = _mm256_cvtepi8_epi16(scales8);
    // Scales of each half (8 of them as int16) in both 128-bit lanes.
    const __m256i half_scales[2] = {_mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(scales8)),
                                    _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_srli_si128(scales8, 8)))};
    __m256i sumi[M];
    for (int r = 0; r < M; ++r) sumi[r] = _mm256_setzero_si256();
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = w[b].ql + 64 * half;
      const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qh + 32 * half));
      const __m256i q6[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, low_nibble), _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45)),
          _mm256_or_si256(_mm256_and_si256(ql1, low_nibble), _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low_nibble), _mm256_and_si256(qh, bits45)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low_nibble),
                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45)),
      };
      for (int quarter = 0; quarter < 4; ++quarter) {
        // int16 lanes 0..7 cover elements 0..15 (scale 2*quarter of this half),
        // lanes 8..15 elements 16..31 (scale 2*quarter+1).
        const __m256i sc = _mm256_shuffle_epi8(half_scales[half], pick_pair[quarter]);
        for (int r = 0; r < M; ++r) {
          const __m256i pv = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(a.q.data() + r * a.k + b * kQKK + 128 * half + 32 * quarter));
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q6[quarter], pv), sc));
        }
      }
    }
    const float dw = f16_to_f32(w[b].d);
    for (int r = 0; r < M; ++r) {
      // Zero point: subtract 32 * sum over groups of scale * (sum of the group's activations).
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum16.data() + (r * a.k + b * kQKK) / 16));
      const __m256i zero_point = _mm256_slli_epi32(_mm256_madd_epi16(bs, scales16), 5);
      const __m256 s = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], zero_point));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d[r * nb + b]), s, acc[r]);
    }
  }
  for (int r = 0; r < M; ++r) out[r * out_stride] = hsum_f32(acc[r]);
}

// ---------------------------------------------------------------------------
// K types on AVX-512 VNNI: one 512-bit vector holds 64 consecutive elements,
// so the activations keep their natural order; maddubs forms the pairs of u8 x
// s8 products and vpdpwssd multiplies them by their group's scale as it
// accumulates (one instruction where AVX2 takes madd and add).

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// vpermw index: int16 lane i of a vector of 64 elements (elements 2i, 2i+1)
// takes scale first + i / lanes_per_scale.
constexpr std::array<uint16_t, 32> scale_lanes(int first, int lanes_per_scale) {
  std::array<uint16_t, 32> index{};
  for (int i = 0; i < 32; ++i) index[i] = static_cast<uint16_t>(first + i / lanes_per_scale);
  return index;
}

// Q4_K: chunk c (32 bytes) holds sub-block 2c in its low nibbles and 2c + 1 in
// its high ones, 32 elements each, one scale each.
alignas(64) constexpr std::array<std::array<uint16_t, 32>, 4> kQ4KScaleLanes = {
    scale_lanes(0, 16), scale_lanes(2, 16), scale_lanes(4, 16), scale_lanes(6, 16)};
// Q6_K: one scale per 16 elements; vector v of half h holds elements 128h + 64v ...
alignas(64) constexpr std::array<std::array<uint16_t, 32>, 4> kQ6KScaleLanes = {
    scale_lanes(0, 8), scale_lanes(4, 8), scale_lanes(8, 8), scale_lanes(12, 8)};

// Shift counts per int16 lane: `low` in the lower 256 bits, `high` in the upper.
SKIM_AVX512_VNNI inline __m512i half_shifts(int low, int high) {
  return _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(low)), _mm256_set1_epi16(static_cast<int16_t>(high)), 1);
}

template <int M>
SKIM_AVX512_VNNI void q4_k_dot_avx512(const uint8_t* w_rows, size_t stride, int64_t n, const QuantizedActivations& a,
                                      float* out, int64_t out_stride) {
  const int64_t nb = a.blocks_per_row();
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i nibble_shift = half_shifts(0, 4);  // a chunk twice: low nibbles, then high
  for (int64_t row = 0; row < n; ++row) {
    const auto* w = reinterpret_cast<const BlockQ4_K*>(w_rows + row * stride);
    __m512 acc[M];
    __m256 mins_acc[M];
    for (int r = 0; r < M; ++r) {
      acc[r] = _mm512_setzero_ps();
      mins_acc[r] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
      const __m128i scales_mins = k4_scales_mins_vec(w[b].scales);
      const __m512i scales_and_mins = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(scales_mins));
      // Each min doubled, for the two 16-element activation sums of its 32 elements.
      const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
          scales_mins, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
      __m512i sumi[M];
      for (int r = 0; r < M; ++r) sumi[r] = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        const __m512i both = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * c)));
        const __m512i q = _mm512_and_si512(_mm512_srlv_epi16(both, nibble_shift), nibble);
        const __m512i sc = _mm512_permutexvar_epi16(load_index(kQ4KScaleLanes[c]), scales_and_mins);
        for (int r = 0; r < M; ++r) {
          const __m512i pv = _mm512_loadu_si512(a.q.data() + r * a.k + b * kQKK + 64 * c);
          sumi[r] = _mm512_dpwssd_epi32(sumi[r], _mm512_maddubs_epi16(q, pv), sc);
        }
      }
      const float dw = f16_to_f32(w[b].d), dmin = f16_to_f32(w[b].dmin);
      for (int r = 0; r < M; ++r) {
        const float da = a.d[r * nb + b];
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(dw * da), _mm512_cvtepi32_ps(sumi[r]), acc[r]);
        const __m256i bs =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum16.data() + (r * a.k + b * kQKK) / 16));
        mins_acc[r] =
            _mm256_fmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins16)), mins_acc[r]);
      }
    }
    for (int r = 0; r < M; ++r) out[r * out_stride + row] = _mm512_reduce_add_ps(acc[r]) - hsum_f32(mins_acc[r]);
  }
}

template <int M>
SKIM_AVX512_VNNI void q6_k_dot_avx512(const uint8_t* w_rows, size_t stride, int64_t n, const QuantizedActivations& a,
                                      float* out, int64_t out_stride) {
  const int64_t nb = a.blocks_per_row();
  const __m512i low_nibble = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
  // Quarters 0 and 1 of a half take qh bits 0-1 and 2-3 (shifted up to bits
  // 4-5), quarters 2 and 3 bits 4-5 and 6-7.
  const __m512i up = half_shifts(4, 2), down = half_shifts(0, 2);
  for (int64_t row = 0; row < n; ++row) {
    const auto* w = reinterpret_cast<const BlockQ6_K*>(w_rows + row * stride);
    __m512 acc[M];
    __m256 zero_point_acc[M];
    for (int r = 0; r < M; ++r) {
      acc[r] = _mm512_setzero_ps();
      zero_point_acc[r] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales)));
      const __m512i scales = _mm512_zextsi256_si512(scales16);
      __m512i sumi[M];
      for (int r = 0; r < M; ++r) sumi[r] = _mm512_setzero_si512();
      for (int half = 0; half < 2; ++half) {
        const __m512i ql = _mm512_loadu_si512(w[b].ql + 64 * half);
        const __m512i qh =
            _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qh + 32 * half)));
        // Elements 0..63 of the half (quarters 0, 1), then 64..127 (quarters 2, 3).
        const __m512i q6[2] = {
            _mm512_or_si512(_mm512_and_si512(ql, low_nibble), _mm512_and_si512(_mm512_sllv_epi16(qh, up), bits45)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low_nibble),
                            _mm512_and_si512(_mm512_srlv_epi16(qh, down), bits45)),
        };
        for (int v = 0; v < 2; ++v) {
          const __m512i sc = _mm512_permutexvar_epi16(load_index(kQ6KScaleLanes[2 * half + v]), scales);
          for (int r = 0; r < M; ++r) {
            const __m512i pv = _mm512_loadu_si512(a.q.data() + r * a.k + b * kQKK + 128 * half + 64 * v);
            sumi[r] = _mm512_dpwssd_epi32(sumi[r], _mm512_maddubs_epi16(q6[v], pv), sc);
          }
        }
      }
      const float dw = f16_to_f32(w[b].d);
      for (int r = 0; r < M; ++r) {
        const float scale = dw * a.d[r * nb + b];
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(sumi[r]), acc[r]);
        // Zero point: 32 * sum over groups of scale * (sum of the group's activations).
        const __m256i bs =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum16.data() + (r * a.k + b * kQKK) / 16));
        const __m256i zero_point = _mm256_slli_epi32(_mm256_madd_epi16(bs, scales16), 5);
        zero_point_acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(zero_point), zero_point_acc[r]);
      }
    }
    for (int r = 0; r < M; ++r)
      out[r * out_stride + row] = _mm512_reduce_add_ps(acc[r]) - hsum_f32(zero_point_acc[r]);
  }
}

#pragma GCC diagnostic pop

// Dispatch on the number of activation rows, so the AVX2 loops keep their
// per-row state in registers.
template <template <int> class Fn>
void by_rows(const uint8_t* w, size_t stride, int64_t n, const QuantizedActivations& a, float* out,
             int64_t out_stride) {
  switch (a.rows) {
    case 1: Fn<1>::run(w, stride, n, a, out, out_stride); return;
    case 2: Fn<2>::run(w, stride, n, a, out, out_stride); return;
    case 3: Fn<3>::run(w, stride, n, a, out, out_stride); return;
    case 4: Fn<4>::run(w, stride, n, a, out, out_stride); return;
    default: throw std::invalid_argument(fmt::format("integer dot: {} activation rows (at most 4)", a.rows));
  }
}

// A kernel of one weight row, applied to each of n rows.
template <auto kRowDot>
void each_row(const uint8_t* w, size_t stride, int64_t n, const QuantizedActivations& a, float* out,
              int64_t out_stride) {
  for (int64_t i = 0; i < n; ++i) kRowDot(w + i * stride, a, out + i, out_stride);
}

template <class K>
struct LegacyAvx2 {
  template <int M>
  struct Fn {
    static constexpr auto run = each_row<legacy_dot_avx2<K, M>>;
  };
};
template <class K>
struct LegacyAvx512 {
  template <int M>
  struct Fn {
    static constexpr auto run = legacy_dot_avx512<K, M>;
  };
};
template <int M>
struct Q4KAvx2 {
  static constexpr auto run = each_row<q4_k_dot_avx2<M>>;
};
template <int M>
struct Q6KAvx2 {
  static constexpr auto run = each_row<q6_k_dot_avx2<M>>;
};
template <int M>
struct Q4KAvx512 {
  static constexpr auto run = q4_k_dot_avx512<M>;
};
template <int M>
struct Q6KAvx512 {
  static constexpr auto run = q6_k_dot_avx512<M>;
};

}  // namespace

RowsDotFn select_rows_dot(GgmlType type, KernelIsa isa) {
  const auto legacy = [isa]<class K>(K) -> RowsDotFn {
    switch (isa) {
      case KernelIsa::kAvx512Vnni: return by_rows<LegacyAvx512<K>::template Fn>;
      case KernelIsa::kAvx2: return by_rows<LegacyAvx2<K>::template Fn>;
      case KernelIsa::kScalar: break;
    }
    return each_row<legacy_dot_scalar<K>>;
  };
  const bool avx2 = isa == KernelIsa::kAvx2, avx512 = isa == KernelIsa::kAvx512Vnni;
  switch (type) {
    case GgmlType::Q4_0: return legacy(Q4_0Kernel{});
    case GgmlType::Q4_1: return legacy(Q4_1Kernel{});
    case GgmlType::Q5_0: return legacy(Q5_0Kernel{});
    case GgmlType::Q5_1: return legacy(Q5_1Kernel{});
    case GgmlType::Q8_0: return legacy(Q8_0Kernel{});
    case GgmlType::Q4_K:
      return avx512 ? by_rows<Q4KAvx512> : avx2 ? by_rows<Q4KAvx2> : each_row<q4_k_dot_scalar>;
    case GgmlType::Q6_K:
      return avx512 ? by_rows<Q6KAvx512> : avx2 ? by_rows<Q6KAvx2> : each_row<q6_k_dot_scalar>;
    default: return nullptr;
  }
}

}  // namespace skim::kernels
