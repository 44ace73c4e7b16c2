// Per-target bf16 arithmetic (Highway): f32 values rounded to bf16 and packed
// in pairs, one pair per 32-bit lane (first element in the low half), and the
// dot-pair step acc += a.lo * b.lo + a.hi * b.hi per lane. That step is
// AVX512-BF16's vdpbf16ps where the CPU has it (kNative), else two f32 FMAs
// on the widened halves, which give the same sums up to f32 rounding order.
// Included by the bf16 attention tiles (attention_tile.cpp) and the bf16
// prefill GEMM (gemm_bf16.cpp) under foreach_target.
#if defined(SKIM_KERNELS_BF16_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SKIM_KERNELS_BF16_INL_H_
#undef SKIM_KERNELS_BF16_INL_H_
#else
#define SKIM_KERNELS_BF16_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using Bf16DF = hn::ScalableTag<float>;
using Bf16DU = hn::RebindToUnsigned<Bf16DF>;

// bf16 bits of each lane, rounded to nearest even, in the low (kHigh: high) half.
template <bool kHigh>
HWY_INLINE hn::Vec<Bf16DU> RoundToBf16(Bf16DU du, hn::Vec<Bf16DF> x) {
  const auto bits = hn::BitCast(du, x);
  const auto rounded = hn::Add(bits, hn::Add(hn::Set(du, 0x7FFFu), hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u))));
  if constexpr (kHigh) return hn::And(rounded, hn::Set(du, 0xFFFF0000u));
  else return hn::ShiftRight<16>(rounded);
}
HWY_INLINE hn::Vec<Bf16DU> PackPair(Bf16DU du, hn::Vec<Bf16DF> first, hn::Vec<Bf16DF> second) {
  return hn::Or(RoundToBf16<false>(du, first), RoundToBf16<true>(du, second));
}

// acc + a.lo * b.lo + a.hi * b.hi per lane.
template <bool kNative>
HWY_INLINE hn::Vec<Bf16DF> DotPair(Bf16DF df, hn::Vec<Bf16DU> a, hn::Vec<Bf16DU> b, hn::Vec<Bf16DF> acc) {
#if HWY_TARGET == HWY_AVX3_DL
  if constexpr (kNative) {
    asm("vdpbf16ps %2, %1, %0" : "+v"(acc.raw) : "v"(a.raw), "v"(b.raw));
    return acc;
  }
#endif
  const Bf16DU du;
  const auto high = hn::Set(du, 0xFFFF0000u);
  acc = hn::MulAdd(hn::BitCast(df, hn::ShiftLeft<16>(a)), hn::BitCast(df, hn::ShiftLeft<16>(b)), acc);
  return hn::MulAdd(hn::BitCast(df, hn::And(a, high)), hn::BitCast(df, hn::And(b, high)), acc);
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SKIM_KERNELS_BF16_INL_H_ toggle
