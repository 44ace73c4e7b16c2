// Plain exact causal attention over one layer's cache (GEMM, mask, softmax,
// GEMM). It is the reference the fast kernels are tested against.
#pragma once

#include "kernels/kv_view.h"

namespace skim::kernels {

// q: n rows of n_head*head_dim (RoPE applied) at positions q_pos0..q_pos0+n-1.
// Each row attends to the held slots of kv whose stored position is <= its
// own and, with a window > 0, > its own - window. out: n rows of n_head*head_dim.
void attention_reference(const float* q, int n, int q_pos0, const KvView& kv, int n_head, int n_head_kv, int head_dim,
                         float* out, int window = 0);

}  // namespace skim::kernels
