// Integer dot products of quantized weight rows with 8-bit quantized
// activations (the decode GEMV path of matmul). Internal to the kernels.
//
// The activations are quantized per block like ggml's q8_1 (legacy weight types,
// 32 elements) or q8_K (K-quant weight types, 256 elements): q = round(x / d)
// with d = max|x| / 127, so each activation is off by at most d / 2.
#pragma once

#include <cstdint>
#include <vector>

#include "skim/gguf.h"

namespace skim::kernels {

// Ordered: each instruction set includes the ones before it. kAvx512Vnni adds
// 512-bit kernels for the legacy block types: AVX-512 F/BW/VL, VNNI's u8 x s8
// dot product and BITALG's bit gather (Ice Lake, Zen 4 and later); the other
// kernels keep their AVX2 form there.
enum class KernelIsa { kScalar, kAvx2, kAvx512Vnni };

// The best instruction set this CPU runs (checked at run time).
KernelIsa detected_isa();
// Every instruction set this CPU runs, scalar first (tests run each).
std::vector<KernelIsa> runnable_isas();
const char* isa_name(KernelIsa isa);
// The instruction set the matmul kernels use now: detected_isa() unless overridden.
KernelIsa kernel_isa();
// Overrides kernel_isa() (tests run every path); throws std::invalid_argument for
// an ISA this CPU lacks. Not thread-safe: call it between matmuls only.
void set_kernel_isa(KernelIsa isa);

enum class ActivationFormat {
  kNone,      // the weight type has no integer kernel: dequantize and use f32
  kQ8Block32,  // per 32 elements: f32 scale, and scale * sum of the quants
  kQ8Block256  // per 256 elements: f32 scale; per 16 elements: sum of the quants
};

// The activation format the integer kernel of `type` consumes.
ActivationFormat integer_activation_format(GgmlType type);
// Elements per activation scale for `format` (0 for kNone).
int64_t activation_block_size(ActivationFormat format);

// `rows` activation rows of `k` elements, quantized to 8 bits.
struct QuantizedActivations {
  ActivationFormat format = ActivationFormat::kNone;
  int64_t rows = 0;
  int64_t k = 0;
  std::vector<int8_t> q;         // rows * k
  std::vector<float> d;          // rows * (k / block)
  std::vector<float> dsum;       // kQ8Block32: d * sum(q) per block
  std::vector<int16_t> bsum16;   // kQ8Block256: sum(q) per 16 elements
  int group_blocks = 1;          // kQ8Block32: blocks interleaved per group (see activation_position)

  int64_t blocks_per_row() const { return k / activation_block_size(format); }
};

// Where element i of a row sits in QuantizedActivations::q (relative to the
// row). kQ8Block32 stores blocks in groups of group_blocks, first elements 0..15
// of each block of the group, then elements 16..31 of each: the order in which
// one vector of the group's packed nibbles unpacks (pairs for 256-bit AVX2,
// quads for 512-bit AVX-512). Blocks after the last whole group stay in natural
// order. kQ8Block256 is natural.
int64_t activation_position(const QuantizedActivations& a, int64_t i);

// Quantizes `rows` rows of `k` floats (row stride k), in the layout the kernels
// of `isa` read; k must be a multiple of the format's block size.
void quantize_activations(const float* x, int64_t rows, int64_t k, ActivationFormat format, KernelIsa isa,
                          QuantizedActivations& out);

// Dot products of n weight rows W_i (`stride` bytes apart, `k / block` blocks of
// `type` each) with every row x_r of `a`:
// out[r * out_stride + i] = sum_k W_i[k] * x_r[k] for i < n, r < a.rows (a.rows <= 4).
using RowsDotFn = void (*)(const uint8_t* w, size_t stride, int64_t n, const QuantizedActivations& a, float* out,
                           int64_t out_stride);

constexpr int kMaxIntegerDotRows = 4;

// The kernel for `type` on `isa` (nullptr when the type has no integer kernel).
RowsDotFn select_rows_dot(GgmlType type, KernelIsa isa);

}  // namespace skim::kernels
