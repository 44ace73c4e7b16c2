// How fast this CPU's bf16 dot product is against its f32 FMA: AVX512-BF16
// alone does not say whether bf16 arithmetic pays. vdpbf16ps does two
// multiply-adds per lane where an FMA does one, but some cores issue it at a
// quarter of the FMA's rate (an AVX-512 Xeon measured 0.5x the FMA's
// multiply-adds; docs/results/attention-kernel.md) and others at its full rate
// (Zen 5: 2x).
#include <algorithm>
#include <chrono>

#include "kernels/f16.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/bf16_rate.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/bf16-inl.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Enough independent accumulators to cover either instruction's latency at
// two issues per cycle, and few enough to stay in registers.
constexpr int kChains = 16;
constexpr int kSteps = 4096;

// The compiler must neither fold a vector into a constant nor move the timed
// loop across the clock reads: an empty asm that "changes" it forbids both.
template <class V>
HWY_INLINE void Opaque(V& v) {
#if HWY_ARCH_X86
  asm volatile("" : "+v"(v.raw)::"memory");
#endif
}

template <class Step>
double SecondsOf(Step step, hn::Vec<Bf16DF>* acc) {
  for (int c = 0; c < kChains; ++c) Opaque(acc[c]);
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < kSteps; ++s)
    for (int c = 0; c < kChains; ++c) acc[c] = step(acc[c]);
  for (int c = 0; c < kChains; ++c) Opaque(acc[c]);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Multiply-adds per second of the native dot-pair step over the FMA's, best of
// interleaved trials on register operands; 0 where the step is emulated.
double Bf16DotSpeedup() {
#if HWY_TARGET == HWY_AVX3_DL
  const Bf16DF df;
  const Bf16DU du;
  auto a = PackPair(du, hn::Set(df, 1.0f), hn::Set(df, 0.5f));
  auto b = PackPair(du, hn::Set(df, 1e-9f), hn::Set(df, -1e-9f));
  auto x = hn::Set(df, 1.0f), y = hn::Set(df, 1e-9f);
  // Unknown operands: with x known to be 1 a compiler may turn the FMA into an add.
  Opaque(a);
  Opaque(b);
  Opaque(x);
  Opaque(y);
  hn::Vec<Bf16DF> acc[kChains];
  std::fill(acc, acc + kChains, hn::Zero(df));
  double fma_s = 1e9, dot_s = 1e9;
  for (int trial = 0; trial < 5; ++trial) {
    fma_s = std::min(fma_s, SecondsOf([&](hn::Vec<Bf16DF> v) { return hn::MulAdd(x, y, v); }, acc));
    dot_s = std::min(dot_s, SecondsOf([&](hn::Vec<Bf16DF> v) { return DotPair<true>(df, a, b, v); }, acc));
  }
  // The sums must stay observable, or the loops could be dropped.
  float sink = 0;
  for (const auto& v : acc) sink += hn::GetLane(hn::SumOfLanes(df, v));
  static volatile float keep;
  keep = sink;
  return 2.0 * fma_s / dot_s;
#else
  return 0.0;
#endif
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels {

HWY_EXPORT(Bf16DotSpeedup);

double bf16_dot_speedup() {
  static const double speedup = cpu_has_bf16_dot() ? HWY_DYNAMIC_DISPATCH(Bf16DotSpeedup)() : 0.0;
  return speedup;
}

}  // namespace skim::kernels
#endif
