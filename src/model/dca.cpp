#include "model/dca.h"

#include <stdexcept>
#include <vector>

namespace skim {

void dca_attention(const kernels::AttnParams& a, const DcaLayout& dca, const kernels::QueryTurn& turn, const kernels::Plan* plan) {
  const int64_t n = a.n_rows;
  if (n == 0) return;
  const int64_t chunk = dca.chunk_of(a.q_pos0);
  if (dca.chunk_of(a.q_pos0 + n - 1) != chunk)
    throw std::invalid_argument("dual chunk attention: a call's query rows must lie in one chunk");
  const kernels::KvView& kv = a.kv;
  const int64_t own = kv.first_slot_at(0, chunk * dca.chunk_len());
  const int64_t previous = chunk > 0 ? kv.first_slot_at(0, (chunk - 1) * dca.chunk_len()) : own;

  // The plan the regions are cut from: the caller's, or the dense one as attention_prefill builds it.
  const int32_t group = a.n_q_heads / a.n_kv_heads;
  const kernels::Plan whole =
      plan ? *plan
           : kernels::make_dense_plan({.n_heads = a.n_kv_heads, .group_size = group,
                                       .tile_rows = kernels::default_tile_rows(group), .n_rows = n, .q_pos0 = a.q_pos0,
                                       .q_slot0 = kv.slots_through(0, a.q_pos0 - 1)},
                                      true, kv.n_keys);
  kernels::AttnStats total;
  const auto run = [&](kernels::AttnParams p, int64_t begin, int64_t end) {
    kernels::AttnStats stats;
    p.stats = &stats;
    const kernels::Plan part = kernels::clip_plan(whole, begin, end);
    kernels::attention_prefill(p, &part);
    total.key_tiles += stats.key_tiles;
    total.key_tiles_computed += stats.key_tiles_computed;
    total.key_tiles_skipped += stats.key_tiles_skipped;
    total.key_tiles_stopped += stats.key_tiles_stopped;
  };

  // Own chunk: Q as it is, into a.out.
  const int64_t hq = a.n_q_heads, d = a.head_dim, q_dim = hq * d;
  const int64_t q_row = a.q_row_stride ? a.q_row_stride : d, q_head = a.q_head_stride ? a.q_head_stride : n * q_row;
  const int64_t o_row = a.out_row_stride ? a.out_row_stride : d, o_head = a.out_head_stride ? a.out_head_stride : n * o_row;
  std::vector<float> lse(static_cast<size_t>(hq * n));
  kernels::AttnParams p = a;
  p.lse = lse.data();
  p.lse_head_stride = n;
  run(p, own, kv.n_keys);

  // Older regions: Q turned to the region's position, merged into a.out.
  std::vector<float> q(static_cast<size_t>(n * q_dim)), out(q.size()), part_lse(lse.size());
  std::vector<int32_t> shift(static_cast<size_t>(n));
  const auto merge_region = [&](int64_t begin, int64_t end, auto position_of) {
    if (begin >= end) return;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < hq; ++h)
        std::copy_n(a.q + h * q_head + i * q_row, d, q.data() + i * q_dim + h * d);
      const int64_t pos = a.q_pos0 + i;
      shift[static_cast<size_t>(i)] = static_cast<int32_t>(position_of(pos) - dca.intra_position(pos));
    }
    turn(q.data(), n, q_dim, shift.data());
    kernels::AttnParams r = a;
    r.q = q.data();
    r.q_head_stride = d;
    r.q_row_stride = q_dim;
    r.out = out.data();
    r.out_head_stride = d;
    r.out_row_stride = q_dim;
    r.lse = part_lse.data();
    r.lse_head_stride = n;
    run(r, begin, end);
    for (int64_t h = 0; h < hq; ++h)
      kernels::merge_partial(n, a.head_dim, a.out + h * o_head, o_row, lse.data() + h * n, out.data() + h * d, q_dim,
                             part_lse.data() + h * n);
  };
  merge_region(previous, own, [&](int64_t pos) { return dca.successive_position(pos); });
  merge_region(kv.first_key, previous, [&](int64_t) { return dca.inter_position(); });

  if (a.lse)
    for (int64_t h = 0; h < hq; ++h)
      std::copy_n(lse.data() + h * n, n, a.lse + h * (a.lse_head_stride ? a.lse_head_stride : n));
  if (a.stats) *a.stats = total;
}

}  // namespace skim
