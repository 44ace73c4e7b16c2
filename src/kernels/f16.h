// IEEE half-precision conversion (F16C; the baseline target has it), and
// whether the CPU has bf16 dot products.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace skim::kernels {

inline float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

// n values, any n.
void f16_to_f32_row(const uint16_t* src, float* dst, int64_t n);
void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n);

// AVX512-BF16 (vdpbf16ps) on a CPU that runs the AVX3_DL target: the bf16
// kernels (kernels/bf16-inl.h) then use it instead of emulating it.
bool cpu_has_bf16_dot();

// Multiply-adds per second of that bf16 dot product over the f32 FMA's,
// measured once (a fraction of a millisecond); 0 without cpu_has_bf16_dot().
double bf16_dot_speedup();

}  // namespace skim::kernels
