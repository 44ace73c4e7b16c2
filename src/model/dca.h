// Dual Chunk Attention (docs/length-extension.md): training-free attention
// past the trained context. Positions are cut into chunks of chunk_len() =
// chunk_size - local tokens; RoPE puts every key at its offset in its chunk,
// and a query looks at three key regions with three rotations of itself:
//   its own chunk       at its offset (true distances, causal),
//   the previous chunk  at offset + chunk_len, capped at chunk_size (true
//                       distances up to chunk_size: locality across the cut),
//   older chunks        at one fixed position, min(2 chunk_len - 1, chunk_size).
// No distance exceeds chunk_size. The three partial results merge by LSE, as
// chunked prefill's do; the kernel stays the one kernel, and any plan (dense
// or a sparse method's) is cut into the three regions.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/attention.h"
#include "kernels/elementwise.h"

namespace skim {

struct DcaLayout {
  int32_t chunk_size = 0;  // 0: off; at most the trained context
  int32_t local = 0;       // of it, the keys a query of the next chunk sees at their true distance

  bool on() const { return chunk_size > 0; }
  int64_t chunk_len() const { return chunk_size - local; }
  int64_t chunk_of(int64_t pos) const { return pos / chunk_len(); }
  // Where RoPE puts the key at `pos`, and the query at `pos` looking into its own chunk.
  int64_t intra_position(int64_t pos) const { return pos % chunk_len(); }
  int64_t successive_position(int64_t pos) const {
    return std::min<int64_t>(intra_position(pos) + chunk_len(), chunk_size);
  }
  int64_t inter_position() const { return std::min<int64_t>(2 * chunk_len() - 1, chunk_size); }
};

// Attention of a chunk of query rows lying in one DCA chunk, Q rotated at the
// rows' intra positions, keys stored at theirs (the KV view's stored positions
// are the true ones: they decide causality). `plan` (null: dense) lists the
// keys; each region runs it cut to its slots. Writes a.out (and a.lse when set).
void dca_attention(const kernels::AttnParams& a, const DcaLayout& dca, const kernels::QueryTurn& turn,
                   const kernels::Plan* plan = nullptr);

}  // namespace skim
