// Prefill GEMM in bf16: y = x . W^T with x rounded to bf16 per element and W
// dequantized per panel and rounded to bf16, products summed in f32. Where the
// CPU has AVX512-BF16 each step is vdpbf16ps (two multiply-adds per 32-bit
// lane, twice the f32 FMA rate); elsewhere the same sums come from f32 FMAs on
// the widened halves (kernels/bf16-inl.h). Each element of x and W is off by
// at most 2^-8 of itself (8 significant bits, rounded to nearest even).
// Weight panels are unpacked into per-thread scratch (no full copy of W).
// Internal to the kernels: matmul chooses it (GemmPath::kBf16).
#pragma once

#include <cstdint>
#include <span>

#include "kernels/gemm_tasks.h"
#include "skim/gguf.h"

namespace skim::kernels {

// Whether the bf16 GEMM multiplies weights of this type: every type but F32
// and F16, whose values bf16 would round (BF16 weights it reads exactly).
bool gemm_bf16_supports(GgmlType type);

// Every job's product with the m rows of x (row stride: the jobs' common row
// length), on `threads` threads. Jobs need not be planned.
void gemm_bf16(std::span<GemmJob> jobs, const float* x, int64_t m, int threads);

}  // namespace skim::kernels
