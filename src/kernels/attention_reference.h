// Plain exact causal attention over the KV cache (GEMM, mask, softmax, GEMM).
// It is the reference the fast kernels are tested against.
#pragma once

#include "kv/kv_cache.h"

namespace skim::kernels {

// q: n rows of n_head*head_dim (RoPE applied) for positions pos0..pos0+n-1;
// the cache's slots [0, pos0+n) hold keys/values at positions 0..pos0+n-1.
// out: n rows of n_head*head_dim.
void attention_reference(const float* q, int n, int pos0, const KvCache& kv, int layer, int n_head, float* out);

}  // namespace skim::kernels
