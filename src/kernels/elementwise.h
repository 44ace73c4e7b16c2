// Row-wise operations of the transformer block.
#pragma once

#include <cstdint>

namespace skim::kernels {

// y = x / sqrt(mean(x^2) + eps) * w, for `rows` rows of n values.
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps);

// Rotates `n_heads` heads of head_dim values at x (head stride head_dim) for a
// token at `pos`: angle_i = pos * inv_freq[i]. Pairs are (2i, 2i+1) when
// interleaved, else (i, i + head_dim/2).
void rope(float* x, int n_heads, int head_dim, float pos, const float* inv_freq, bool interleaved);

// gate[i] = silu(gate[i]) * up[i]
void swiglu(float* gate, const float* up, int64_t n);

void add_inplace(float* y, const float* x, int64_t n);

}  // namespace skim::kernels
