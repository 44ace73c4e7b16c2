// Estimation primitives shared by the dynamic planners (which uses which:
// docs/methods.md#estimation-primitives), implemented once: products through
// OpenBLAS sgemm (E4: kernels::key_block_mass), softmax with a vector exp,
// OpenMP over heads. Keys are cache
// slots [0, n_keys); the chunk's query rows own the last n_rows of them (row i
// is slot q_slot0 + i): every estimate scores the chunk's own queries against
// all keys up to them. Only the slash diagonals count stored positions.
//
//   E1 LastQ(w)       softmax of the chunk's last w queries over all keys
//                     (causal in the corner), summed per column (vertical)
//                     and per diagonal offset (slash). Cost w*N*d.
//   E2 Pool(B)        mean-pooled Q per B-row block of the chunk and K per
//                     B-key block, block score matrix (causal at block
//                     level), optionally row-softmaxed. Cost N*d + nq*nk*d.
//   E3 Antidiag(S, B) XAttention: per group of S queries (reversed) and S
//                     keys, the mean logit along the antidiagonal of their
//                     S x S block, row softmax over key groups, summed per
//                     (B-row query block, B-key key block). Cost Nq*N*d/S.
//   E4 Sampled(S, b)  every S-th query row of each 64-row block (and its last
//                     row), exact softmax over all its visible keys, mass per
//                     b-key block averaged over the block's sampled rows.
//                     Cost Nq*N*d/S.
//
// Block geometry everywhere: query block qb covers chunk rows
// [qb*B, min(n_rows, (qb+1)*B)) (aligned with the chunk, like KeySelection's
// blocks); key block c covers slots [c*B, min(n_keys, (c+1)*B)).
// Key block c is causally visible to query block qb when c*B <= the slot of the
// block's last row (the diagonal block counts as visible).
//
// Outputs live in structs the planners keep between calls, so the buffers are
// allocated once and reused; per-thread scratch is thread-local.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/planner.h"

namespace skim::attention {

// Whether a loop of about `work` multiply-adds is worth an OpenMP team: small
// chunks stay on the calling thread (a parallel region on a busy machine can
// cost more than the work).
inline bool worth_threads(double work) { return work >= double(1 << 20); }

// f32 copies of the keys [0, n_keys) of every KV head, [kv][rows][d]
// contiguous, rows = n_keys rounded up to a multiple of `pad`, the padding rows
// zero. Converted once per call (in parallel, kernels/kv_codec.h), read by
// every estimate.

class KeysF32 {
 public:
  void load(const PlanRequest& r, int64_t pad = 1);
  int64_t n_keys() const { return n_keys_; }
  int64_t rows() const { return rows_; }
  int32_t head_dim() const { return d_; }
  int32_t n_heads() const { return n_heads_; }
  const float* head(int32_t kv) const { return data_.data() + static_cast<size_t>(kv) * rows_ * d_; }

 private:
  int64_t n_keys_ = 0, rows_ = 0;
  int32_t d_ = 0, n_heads_ = 0;
  std::vector<float> data_;
};

// E1. Row t of the w used queries is chunk row n_rows - w + t, at position
// pos_first + t, owning slot slot_first + t; its softmax is over slots
// [0, slot_first + t].
struct LastQEstimate {
  int32_t n_heads = 0;     // q heads
  int64_t w = 0;           // queries used
  int64_t n_keys = 0;
  int64_t pos_first = 0;   // position of the first used query
  int64_t slot_first = 0;  // its slot
  int64_t n_offsets = 0;   // diagonals: row position - key position in [0, n_offsets)
  // [h][j]: sum over the w rows of softmax weight on key slot j (sums to w per head).
  std::vector<float> vertical;
  // [h][o]: sum over the w rows of the weight on the key stored at position
  // (row position - o) (o = 0 is the query's own key); n_offsets == n_keys
  // when the positions have no gap.
  std::vector<float> slash;
  const float* vert(int32_t h) const { return vertical.data() + static_cast<size_t>(h) * n_keys; }
  const float* diag(int32_t h) const { return slash.data() + static_cast<size_t>(h) * n_offsets; }
};

// w is clipped to [1, n_rows]. `keys` must be loaded for this request.
void estimate_last_q(const PlanRequest& r, const KeysF32& keys, int64_t w, LastQEstimate& out);

// A per-head (query block x key block) matrix. Key blocks have kblock keys
// (the query block size, except for E4 with finer key blocks).
struct BlockScores {
  int32_t n_heads = 0;
  int64_t block = 0, kblock = 0, n_qb = 0, n_kb = 0;
  int64_t n_rows = 0, q_slot0 = 0;
  std::vector<float> s;  // [h][qb][kb]
  float* row(int32_t h, int64_t qb) { return s.data() + (static_cast<size_t>(h) * n_qb + qb) * n_kb; }
  const float* row(int32_t h, int64_t qb) const { return s.data() + (static_cast<size_t>(h) * n_qb + qb) * n_kb; }
  // Slot of the last row of query block qb.
  int64_t last_slot(int64_t qb) const;
  // Key blocks [0, visible(qb)) are causally visible to query block qb.
  int64_t visible(int64_t qb) const { return last_slot(qb) / kblock + 1; }
};

// Mean of every `block` keys of each KV head: [kv][n_kb][d] (the last block
// averages the keys it has).
void pool_keys(const KeysF32& keys, int64_t block, std::vector<float>& out);
// Mean of every `block` chunk rows of each q head: [h][n_qb][d].
void pool_queries(const PlanRequest& r, int64_t block, std::vector<float>& out);

// E2: s[h][qb][c] = scale * mean_q(qb) . mean_k(c) for visible c; invisible
// entries are -inf, or 0 when `softmax` (each row then softmaxed over its
// visible blocks and summing to 1).
void estimate_pooled(const PlanRequest& r, const KeysF32& keys, int64_t block, float scale, bool softmax,
                     BlockScores& out);

// E3: XAttention's antidiagonal estimate. Query group a is chunk rows
// [a*S, a*S + S) taken in reverse order, key group b is keys [b*S, b*S + S)
// (rows past the chunk or the keys count as zero); their reduced logit is
// r.scale / S * sum_t q[a*S + S-1-t] . k[b*S + t]. Each query group's softmax
// runs over the key groups b with b*S <= its last row's position. s[h][qb][c]
// sums the softmax mass of the query groups in block qb on the key groups in
// block c (a row of blocks sums to the number of query groups in it).
// `stride` must divide `block`; `keys` must be loaded with pad = stride.
void estimate_antidiag(const PlanRequest& r, const KeysF32& keys, int64_t stride, int64_t block, BlockScores& out);

// E4: out[h][qb][c] = the mean, over the sampled rows of query block qb (rows
// qb*B + S-1, qb*B + 2S-1, ... and the block's last row; B = 64), of the
// row's exact softmax weight on key block c (keys [c*kblock, (c+1)*kblock),
// kblock dividing 64); each row of `out` sums to 1 over the visible blocks, 0
// past them. With `peak`, also the largest of those rows' weights on each key
// block. `keys` must be loaded for this request.
void estimate_sampled(const PlanRequest& r, const KeysF32& keys, int64_t stride, int64_t kblock, BlockScores& out,
                      BlockScores* peak = nullptr);

// Scales each row of `s` (its visible blocks) to sum to 1; an all-zero row stays 0.
void normalize_rows(BlockScores& s);

// OpenBLAS on one thread, once per process: callers' OpenMP loops over heads
// provide the parallelism (OpenBLAS threads would oversubscribe). Call before
// cblas products.
void single_threaded_blas();

// Numerically stable softmax of x[0, n) in place (vector exp); n >= 1.
void softmax_inplace(float* x, int64_t n);

// Selection helpers, O(n) expected.
// The indices of the k largest of x[0, n) (ties: lower index first), returned
// in ascending index order. k >= n gives every index.
void top_k(const float* x, int64_t n, int64_t k, std::vector<int32_t>& out);
// The smallest number of largest entries of x[0, n) (all >= 0) whose sum
// reaches frac * sum(x); n when frac >= 1. `tmp` is scratch.
int64_t coverage_count(const float* x, int64_t n, double frac, std::vector<float>& tmp);

}  // namespace skim::attention
