// Attention core: one tiled online-softmax (FlashAttention-2 style) kernel for
// dense and block-sparse attention on the CPU, exact up to fp32 rounding.
//
//   O[h][i] = sum_j softmax_j(scale * q[h][i] . k[h/g][j]) v[h/g][j]
//   LSE[h][i] = log sum_j exp(scale * q[h][i] . k[h/g][j])      (natural log)
//
// over the key slots j the plan lists for row i (and, when causal, whose stored
// position is <= the position of row i). Rows with no key get O = 0 and LSE = -inf. A dense plan and any
// sparse plan run through the same code path (see kernels/attention_plan.h).
//
// Inside: K and V tiles (f16/bf16/f32 rows of the KV cache, contiguous ranges
// or gathered columns) are widened to f32 once per tile in per-thread scratch;
// Q.K^T and P.V are register-blocked FMA micro-kernels; accumulation is fp32.
// SIMD code is compiled for AVX2 and AVX-512 (Highway) and chosen at run time.
// Threads: OpenMP inside the call over work items (plan head, query tile),
// largest first, dynamic schedule; when there are too few items for the
// threads (decode, short chunks over long contexts) an item's key stream is
// split across threads and the parts are LSE-merged. A query tile with more
// than 128 query rows (group mode: g * tile_rows) is cut into column chunks
// that each stream the item's keys. With a lambda (BLASST) each split part
// keeps its own running max, so splitting can change which tiles are skipped.
//
// Keys are read through a KvView (kernels/kv_view.h): by slot, through a page
// table, with the stored position of each slot for the causal test.
//
// Typical use (one layer, contiguous cache [kv_head][capacity][d] f16):
//   AttnParams p;
//   p.n_q_heads = 9; p.n_kv_heads = 3; p.head_dim = 64;
//   p.n_rows = n; p.q_pos0 = pos;                      // this chunk's rows
//   p.q = q; p.q_head_stride = 64; p.q_row_stride = 9 * 64;      // [n][Hq*d]
//   p.kv = KvView::contiguous(k_layer, v_layer, KvDType::F16, capacity * 64, 64, pos + n);
//   p.out = o; p.out_head_stride = 64; p.out_row_stride = 9 * 64;
//   attention_prefill(p);           // or attention_prefill(p, &plan)
//   attention_decode(p);            // n == 1
#pragma once

#include <cstdint>

#include "kernels/attention_plan.h"
#include "kernels/kv_view.h"

namespace skim::kernels {

// Arithmetic of the prefill micro-kernels (process-wide; decode-shaped units
// always run f32): kF32, or kBf16: Q, K, P and V rounded to bf16 (8-bit
// mantissa) with f32 sums, on AVX512-BF16 dot products where the CPU has them
// (elsewhere emulated with f32 FMAs, same rounding of the operands).
enum class AttnMath { kF32, kBf16 };
AttnMath attention_math();
// Not thread-safe: call it between attention calls only.
void set_attention_math(AttnMath math);

// Counters of one call (optional output). Key tiles are counted per work unit:
// an item cut into column chunks counts its stream once per chunk.
struct AttnStats {
  int64_t key_tiles = 0;          // key tiles in the streams of all work items
  int64_t key_tiles_computed = 0; // tiles that went through the softmax and P.V
  int64_t key_tiles_skipped = 0;  // skipped by the lambda (BLASST) test
  int64_t key_tiles_stopped = 0;  // never visited because of the early stop
  int64_t pairs_stopped = 0;      // (query row, key) pairs in those tiles, per q head
  int64_t split_items = 0;        // work items whose key stream was split across threads
};

struct AttnParams {
  int32_t n_q_heads = 0;   // Hq
  int32_t n_kv_heads = 0;  // Hkv; Hq must be a multiple of it (GQA group size g = Hq / Hkv)
  int32_t head_dim = 0;    // d: a multiple of 16, at most 512 (64, 128, 256 are the tuned ones)
  int64_t n_rows = 0;      // Nq: query rows per head
  int64_t q_pos0 = 0;      // absolute position of query row 0

  // Q: row i of head h at q + h*q_head_stride + i*q_row_stride (f32, d values).
  // Strides of 0 mean the contiguous [Hq][Nq][d] layout. RoPE already applied.
  const float* q = nullptr;
  int64_t q_head_stride = 0;
  int64_t q_row_stride = 0;

  KvView kv;

  // O: same addressing as Q (strides 0 = contiguous [Hq][Nq][d]). Every row is written.
  float* out = nullptr;
  int64_t out_head_stride = 0;
  int64_t out_row_stride = 0;
  // Optional LSE [Hq][Nq] at lse + h*lse_head_stride + i (stride 0 = Nq).
  float* lse = nullptr;
  int64_t lse_head_stride = 0;

  float scale = 0.0f;   // 0 = 1/sqrt(head_dim)
  bool causal = true;   // mask keys after the query's position
  // > 0: a sliding-window layer: the row at position p sees only keys at
  // positions > p - window (llama.cpp's standard SWA mask), the plan's keys included.
  int32_t window = 0;

  AttnStats* stats = nullptr;  // optional counters (overwritten)

  // Plan validation (kernels/attention_plan.h validate_plan) before running: on by
  // default in debug builds. Key bounds are always checked, so a bad plan
  // gives an exception, never an out-of-bounds read.
#ifdef NDEBUG
  bool validate_plan = false;
#else
  bool validate_plan = true;
#endif
  // Splitting of key streams across threads: n > 0 splits every work item
  // into parts of at most n key tiles, merged by LSE (for tests and tuning).
  // 0 = the default: prefill never splits (a split changes the summation
  // order, so a query row's result would depend on how many rows share its
  // chunk: docs/server.md, batch invariance); dense one-row decode splits
  // every 16 tiles.
  int32_t split_key_tiles = 0;
};

// Query rows per q head of the tiles the dense prefill uses in GQA group mode
// (g * rows fill one kernel tile). Planners that tile the same way run a
// full-budget plan exactly like dense.
int32_t default_tile_rows(int32_t group_size);

// Prefill (or any chunk of query rows). plan == nullptr: the dense plan
// (causal: each row sees [0, position]; non-causal: all n_keys keys), run in
// GQA group mode. The plan's shape must match the call: plan->n_rows ==
// n_rows, plan->q_pos0 == q_pos0, and either group_size == 1 with n_heads ==
// Hq, or group_size == Hq/Hkv with n_heads == Hkv. Throws std::invalid_argument
// (PlanError for plan problems) naming the problem.
void attention_prefill(const AttnParams& params, const Plan* plan = nullptr);

// Decode: a few query rows (n_rows <= 16, usually 1) per head. plan ==
// nullptr: dense, one work item per KV group (the g query heads stacked as
// rows, one pass over K/V), keys split across threads and LSE-merged. A plan
// (e.g. Quest-style page selection) works as for prefill.
void attention_decode(const AttnParams& params, const Plan* plan = nullptr);

// Merges two partial results over disjoint key sets of the same query rows
// (split key streams, chunked prefill, two-pass methods), in place into (o, lse):
//   lse' = logaddexp(lse, lse2);  o' = exp(lse - lse')*o + exp(lse2 - lse')*o2.
// n_rows rows of head_dim values; row r of o at o + r*o_row_stride (same for o2);
// lse/lse2 have one value per row. Rows with both LSEs -inf stay O = 0, LSE = -inf.
void merge_partial(int64_t n_rows, int32_t head_dim, float* o, int64_t o_row_stride, float* lse,
                   const float* o2, int64_t o2_row_stride, const float* lse2);

}  // namespace skim::kernels
