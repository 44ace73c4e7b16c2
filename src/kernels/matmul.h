// Products of activations with GGUF weight matrices, read in place from the mmap.
//
//   y[m][n] = sum_k x[m][k] * W[n][k]      (W: GGUF tensor with dims {k, n})
//
// x is m rows of k floats (row stride k). W may be any type dequantize_row
// supports.
//
// m <= 4 (decode) reads the quantized blocks directly (memory-bound GEMV): for
// Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K it quantizes x to 8 bits per block (like
// ggml's q8_1 / q8_K) and uses integer dot products, so results carry that
// quantization error (at most half an activation step per element); other types
// dequantize row by row and use f32 dots.
// A caller whose rows are small independent decodes (a batch of sequences with
// at most 4 rows each) passes gemv_rows up to 16: those rows then take the
// integer GEMV too, in groups of 4 per weight row while it is in L1, so each
// row gets exactly the product it gets alone.
// Otherwise m > 4 (prefill) unpacks panels of W (128 rows) into per-thread
// scratch, so no full dequantized copy of the weights ever exists, and
// multiplies them on the chosen GemmPath:
//  - kInt8 (default) for quantized W: x quantized per 32 elements to int8,
//    W in its exact integer form, integer multiply-adds (kernels/gemm_int8.h);
//    the error is the decode GEMV's, at most half an activation step per element;
//  - kBf16 for every W but F32/F16: x and the dequantized W rounded to bf16,
//    f32 sums (kernels/gemm_bf16.h); each element off by at most 2^-8 of itself;
//  - kF32, and for the weights the chosen path does not take: W dequantized to f32
//    (f32 accuracy), on AVX2 with a packed GEMM micro-kernel (the panel is
//    dequantized straight into the packed layout), otherwise with OpenBLAS
//    sgemm per panel (which sets OpenBLAS to one thread, once, process-wide).
// Threads: OpenMP, inside the call (one thread when called inside a parallel region).
// Bad arguments (shape, range, unsupported type) throw std::invalid_argument.
#pragma once

#include <cstdint>
#include <span>

#include "skim/gguf.h"

namespace skim::kernels {

enum class GemmPath { kF32, kInt8, kBf16 };
GemmPath gemm_path();
// Chooses the prefill GEMM process-wide. Not thread-safe: call it between matmuls only.
void set_gemm_path(GemmPath path);

// Rows up to which products take the GEMV path by default, and at most.
inline constexpr int64_t kDefaultGemvRows = 4;
inline constexpr int64_t kMaxBatchedGemvRows = 16;

void matmul(const TensorInfo& w, const float* x, int64_t m, float* y, int64_t gemv_rows = kDefaultGemvRows);

// One product of the shared activations x with each weight (Q, K and V of a
// layer; or its gate and up projections): y_i = x . W_i^T, y_i with row
// stride W_i's rows. All weights must have the same row length. Prefill packs
// x once for all of them and spreads all their panels over one thread team.
struct MatmulTarget {
  const TensorInfo* w;
  float* y;
};
void matmul_shared_input(std::span<const MatmulTarget> targets, const float* x, int64_t m,
                         int64_t gemv_rows = kDefaultGemvRows);

// Same, restricted to output rows [n_begin, n_end) of W:
//   y[r * ldy + (n - n_begin)] = sum_k x[r][k] * W[n][k]   for n in [n_begin, n_end)
// (pass y + n_begin with ldy = n to fill those columns of a full m x n output).
void matmul_rows(const TensorInfo& w, const float* x, int64_t m, float* y, int64_t ldy,
                 int64_t n_begin, int64_t n_end, int64_t gemv_rows = kDefaultGemvRows);

// Whether a product of m rows with a weight of this type takes the GEMV path
// (weights streamed once; 8-bit activations where the type has an integer
// kernel). Above it, the f32 GEMM on dequantized panels.
bool uses_gemv(GgmlType type, int64_t m, int64_t gemv_rows = kDefaultGemvRows);

}  // namespace skim::kernels
