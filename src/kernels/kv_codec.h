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

// One row of n values (a multiple of 16) stored as `type` at dst (not a grouped type).
void encode_kv_row(const float* src, KvDType type, int32_t n, void* dst);
// A page of keys in a grouped format (kv_grouped): `rows` (at most 64) rows of
// n values (a multiple of 64), row i at src + i * n, stored as rows row_bytes
// apart at dst and the page's parameters (kv_page_param_bytes) at params.
void encode_kv_key_page(const float* src, int32_t rows, KvDType type, int32_t n, int64_t row_bytes, void* dst,
                        void* params);

// The longest row a codec handles.
inline constexpr int32_t kMaxKvRow = 512;

// The 2^bits Lloyd-Max levels for N(0, 1), ascending (bits 2, 3 or 4): the
// TurboQuant codebook, computed once by Lloyd's iteration in double precision.
// Padded with zeros to kTqCodebookFloats, so one vector load reads it whole.
inline constexpr int32_t kTqCodebookFloats = 16;
const float* tq_codebook(int bits);

// The QJL projection for rows of n values: an n x n matrix [row][column] of
// N(0, 1) draws from a fixed seed (so every process decodes a row alike).
const float* qjl_matrix(int32_t n);

}  // namespace skim::kernels
