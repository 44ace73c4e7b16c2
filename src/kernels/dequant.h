// Conversion of GGUF-quantized rows to f32. Bit-exact with ggml's reference
// dequantizers (checked against the PyPI `gguf` package in tests).
#pragma once

#include <cstdint>

#include "skim/gguf.h"

namespace skim::kernels {

// Dequantizes n elements (a multiple of the type's block size) from `src`.
// Throws GgufError for a type without a dequantizer.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// True when dequantize_row supports `type`.
bool can_dequantize(GgmlType type);

}  // namespace skim::kernels
