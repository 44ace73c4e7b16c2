// Row-wise operations of the transformer block.
#pragma once

#include <cstdint>
#include <functional>

namespace skim::kernels {

// y = x / sqrt(mean(x^2) + eps) * w, for `rows` rows of n values.
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps);

// cos and sin of the rotary angles of a token at `pos`: angle_i = pos * inv_freq[i]
// for i < head_dim / 2. Computed once per token, shared by all layers.
void rope_angles(float pos, const float* inv_freq, int head_dim, float* cos_out, float* sin_out);

// Rotates `n_heads` heads of head_dim values at x (head stride head_dim) by a
// token's angles (rope_angles). Pairs are (2i, 2i+1) when interleaved, else
// (i, i + head_dim/2).
void rope(float* x, int n_heads, int head_dim, const float* cos, const float* sin, bool interleaved);
// Turns query rows in place by RoPE, as the model rotates them: row i by
// shift[i] positions (rows of row_stride floats, every head of the row).
using QueryTurn = std::function<void(float* q, int64_t rows, int64_t row_stride, const int32_t* shift)>;

// Each run of `block` values of x[0, n) (block a power of two dividing n)
// multiplied by the orthonormal Walsh-Hadamard matrix of that size (Sylvester
// order, entries +-1/sqrt(block)). The matrix is symmetric and its own inverse,
// and preserves dot products: quantized KV caches store rotated K and V, whose
// coordinates are spread evenly (docs/kv-formats.md).
void hadamard(float* x, int64_t n, int32_t block);

// gate[i] = silu(gate[i]) * up[i]
void swiglu(float* gate, const float* up, int64_t n);

// gate[i] = gelu(gate[i]) * up[i], GELU in its tanh form
void geglu(float* gate, const float* up, int64_t n);

void add_inplace(float* y, const float* x, int64_t n);

}  // namespace skim::kernels
