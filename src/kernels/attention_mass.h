// The attention each key receives, summed over query rows: what H2O's
// accumulated scores need (docs/kv-policies.md); and the softmax rows
// themselves for a policy's observation window. Kept apart from the attention
// kernel, which never forms normalised probabilities. For many rows the mass
// recomputes q.k in two passes over the keys, the first for each row's
// log-sum-exp, the second for exp(score - lse), so no rows x keys matrix is
// held; for few rows (a decode step) it holds the scores. The rows' softmax
// is held by its caller.
#pragma once

#include <cstddef>
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

// Keys per block of the transposed layout key_block_mass reads.
inline constexpr int64_t kMassKeyBlock = 256;
// Floats of n keys in that layout.
size_t transposed_key_floats(int64_t n, int32_t head_dim);
// keys[j * head_dim + e] (n keys) to that layout: per block b of kMassKeyBlock
// keys, head_dim rows of kMassKeyBlock floats (element e of key b *
// kMassKeyBlock + j at out[(b * head_dim + e) * kMassKeyBlock + j]), zero past
// key n. Transposed once, read by every query row of a head.
void transpose_key_blocks(const float* keys, int64_t n, int32_t head_dim, float* out);

// For query rows q[a * head_dim ..] (a < rows, the softmax scale already
// applied), row a seeing keys [0, visible[a]) of kt (transpose_key_blocks):
// mass[a * ld + c] = the share of row a's softmax that falls on keys
// [c * kblock, (c + 1) * kblock), for each block it sees (S2O's and
// calibration's sampled estimate, E4). Every visible[a] >= 1; head_dim a
// multiple of 16. Single-threaded: callers split heads and rows.
void key_block_mass(const float* q, int32_t rows, const int64_t* visible, const float* kt, int32_t head_dim,
                    int64_t kblock, float* mass, int64_t ld);

}  // namespace skim::kernels
