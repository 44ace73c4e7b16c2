// The KV codecs, for code outside the attention kernel: rows of a KvView
// widened to f32, and f32 rows stored into a format. The kernel decodes with
// the same per-target code (kv_codec-inl.h), so every reader agrees bit for bit.
#pragma once

#include <cstdint>

#include "kernels/kv_view.h"

namespace skim::kernels {

// Slots [slot0, slot0 + count) of KV head `head`: K (or V) rows of head_dim
// values, widened into dst [count][head_dim]. head_dim must be a multiple of 16.
void read_k_rows(const KvView& kv, int32_t head, int64_t slot0, int64_t count, int32_t head_dim, float* dst);
void read_v_rows(const KvView& kv, int32_t head, int64_t slot0, int64_t count, int32_t head_dim, float* dst);

// One row of n values (a multiple of 16) stored as `type` at dst.
void encode_kv_row(const float* src, KvDType type, int32_t n, void* dst);

// The longest row a codec handles.
inline constexpr int32_t kMaxKvRow = 512;

// The 2^bits Lloyd-Max levels for N(0, 1), ascending (bits 2, 3 or 4): the
// TurboQuant codebook, computed once by Lloyd's iteration in double precision.
// Padded with zeros to kTqCodebookFloats, so one vector load reads it whole.
inline constexpr int32_t kTqCodebookFloats = 16;
const float* tq_codebook(int bits);

}  // namespace skim::kernels
