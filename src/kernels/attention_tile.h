// Internal interface between the attention driver (attention.cpp: plans,
// work items, threads, merging) and its SIMD part (attention_tile.cpp: one
// work unit = a set of query columns against a stream of key tiles).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/attention.h"

namespace skim::kernels::attn_detail {

// Keys per key tile: one K and one V tile of 64 rows, widened to f32 (64 KB at
// head_dim 128), stay in L2 next to the query tile.
inline constexpr int32_t kKeyTile = 64;
// Most query columns (rows of Q across the heads of a group) per work unit.
inline constexpr int32_t kMaxTileCols = 128;
// Units with at most this many columns take the decode-shaped path.
inline constexpr int32_t kNarrowCols = 8;

// One query row of the unit.
struct QueryColumn {
  const float* q;  // head_dim values
  float* out;      // head_dim values: O (normalised)
  float* lse;      // natural-log LSE
  int32_t pos;     // absolute position
};

// One key tile: count (1..kKeyTile) key slots, contiguous from `begin` or gathered.
struct KeySpan {
  int32_t begin = 0;              // first slot when keys == nullptr
  int32_t count = 0;
  int32_t min_pos = 0;            // smallest stored position in the tile (window test)
  int32_t max_pos = 0;            // largest stored position in the tile (causal test)
  const int32_t* keys = nullptr;  // gathered slots, or nullptr
  float score = 0.0f;             // visit score (ordered plans)
};

struct TileJob {
  int32_t head_dim = 0;
  float q_scale = 0.0f;       // softmax scale * log2(e): the kernel works in base 2
  bool causal = true;
  int32_t window = 0;         // AttnParams::window
  float log2_lambda = 0.0f;   // BLASST threshold in base 2; -inf = never skip
  bool early_stop = false;    // stop at the first span with score < stop_theta
  float stop_theta = 0.0f;
  bool bf16 = false;          // wide units: Q.K^T and P.V on bf16 operands, f32 sums (AttnMath::kBf16)
  bool native_bf16 = false;   // with AVX512-BF16 dot products (the CPU has them)
  float stop_mass = 0.0f;     // > 0: past the spans scored >= stop_theta, stop after a span that added
                              // less than this share (per kKeyTile keys) of the running sum for every column
  // K/V rows (and stored positions) of this unit's KV head.
  const KvView* kv = nullptr;
  int32_t kv_head = 0;
  const QueryColumn* cols = nullptr;
  int32_t n_cols = 0;  // 1..kMaxTileCols
  const KeySpan* spans = nullptr;
  int64_t n_spans = 0;
};

struct TileCounters {
  int64_t computed = 0;
  int64_t skipped = 0;
  int64_t stopped = 0;
  int64_t stopped_pairs = 0;  // (column, key) pairs of the stopped spans
};

// Floats of per-thread scratch run_tile_job needs for head_dim (64-byte aligned).
size_t tile_scratch_floats(int32_t head_dim);

// Runs one unit (all SIMD work), writing every column's O and LSE.
void run_tile_job(const TileJob& job, float* scratch, TileCounters& counters);

}  // namespace skim::kernels::attn_detail
