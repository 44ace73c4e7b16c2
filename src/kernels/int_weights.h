// The integer form of a quantized weight row, which the int8 prefill GEMM
// multiplies with 8-bit activations:
//
//   w[i] = scale[b] * u[i] + offset[b]     (b = i / int_block_size(type))
//
// with u an unsigned byte, so the product with a signed 8-bit activation is one
// unsigned-by-signed multiply-add (x86 VNNI's vpdpbusd, or maddubs). Every ggml
// quantization type has this form: the signed ones are offset (Q4_0: u = q + 8
// ... offset = -8 d), the ones with a minimum carry it as the offset, and the
// K-quants' sub-block scales become per-block scales. scale * u + offset
// reproduces dequantize_row to within one f32 rounding (the add).
#pragma once

#include <cstdint>

#include "skim/gguf.h"

namespace skim::kernels {

// Elements per (scale, offset) pair: 32, or 16 for Q2_K/Q3_K/Q6_K; 0 when the
// type has no integer form (F32, F16, BF16, unknown).
int int_block_size(GgmlType type);

// The largest u the type produces. Above 127, a pair of products no longer fits
// the signed 16-bit sums of maddubs (Q8_0 only: u = q + 128).
int int_max_value(GgmlType type);

// Unpacks one row of k elements (k a multiple of the type's block size) into
// u[k], scale[k / block] and offset[k / block].
void unpack_int_row(GgmlType type, const void* row, int64_t k, uint8_t* u, float* scale, float* offset);

}  // namespace skim::kernels
