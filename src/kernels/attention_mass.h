// The attention each key receives, summed over query rows: what H2O's
// accumulated scores need (docs/kv-policies.md); and the softmax rows
// themselves for a policy's observation window. Kept apart from the attention
// kernel, which never forms normalised probabilities. For many rows the mass
// recomputes q.k in two passes over the keys, the first for each row's
// log-sum-exp, the second for exp(score - lse), so no rows x keys matrix is
// held; for few rows (a decode step) it holds the scores. The rows' softmax
// is held by its caller.
#pragma once

#include <cstdint>

#include "kernels/kv_view.h"

namespace skim::kernels {

// For KV head `head`, the query heads of its group (n_q_heads / n_kv_heads of
// them, q head h at q + h * head_dim in each row) and query rows i < rows at
// position q_pos0 + i (row stride q_row_stride): the softmax of scale * q.k
// over the keys row i may see (stored position <= its own), added into
// mass[slot] for every held slot [kv.first_key, kv.n_keys). head_dim must be a
// multiple of 16. Threads: OpenMP, inside the call.
void accumulate_attention_mass(const float* q, int64_t q_row_stride, int32_t rows, int32_t q_pos0, int32_t n_q_heads,
                               int32_t n_kv_heads, int32_t head_dim, const KvView& kv, int32_t head, float scale,
                               float* mass);

// The same rows' softmax itself, for a few rows (a policy's observation
// window): probs[(member * rows + i) * kv.n_keys + slot] for the group's
// members (q heads head * group + member), 0 for slots row i does not see or
// that are not held. Threads: OpenMP, inside the call.
void attention_probabilities(const float* q, int64_t q_row_stride, int32_t rows, int32_t q_pos0, int32_t n_q_heads,
                             int32_t n_kv_heads, int32_t head_dim, const KvView& kv, int32_t head, float scale,
                             float* probs);

}  // namespace skim::kernels
