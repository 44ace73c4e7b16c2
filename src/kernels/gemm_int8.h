// Prefill GEMM with 8-bit activations: y = x . W^T for quantized W, where x is
// quantized per row and 32 elements to int8 (d = max|x| / 127, as ggml's
// q8_0) and W is used in its integer form (kernels/int_weights.h), so the inner
// products are integer multiply-adds of bytes: vpdpbusd where the CPU has
// AVX512-VNNI (Highway's AVX3_DL target), maddubs on AVX2/AVX-512, an exact
// 16-bit emulation elsewhere. Each element of x is off by at most d / 2, the
// error the decode GEMV already has; W is exact.
// Weight panels are unpacked into per-thread scratch (no full copy of W).
// Internal to the kernels: matmul chooses it (GemmPath::kInt8).
#pragma once

#include <cstdint>
#include <span>

#include "kernels/gemm_tasks.h"
#include "skim/gguf.h"

namespace skim::kernels {

// Whether the int8 GEMM multiplies weights of this type (every ggml
// quantization type; not F32/F16/BF16).
bool gemm_int8_supports(GgmlType type);

// Every job's product with the m rows of x (row stride: the jobs' common row
// length), on `threads` threads. Jobs need not be planned.
void gemm_int8(std::span<GemmJob> jobs, const float* x, int64_t m, int threads);

}  // namespace skim::kernels
