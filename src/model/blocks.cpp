#include "model/blocks.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "attention/method.h"
#include "kernels/attention.h"
#include "kernels/attention_mass.h"
#include "kernels/attention_reference.h"
#include "kernels/elementwise.h"
#include "kernels/f16.h"
#include "kernels/matmul.h"
#include "kernels/kv_codec.h"
#include "kv/kv_sequence.h"
#include "kvpolicy/policy.h"
#include "model/attention_observer.h"

namespace skim {

Activations::Activations(const ModelConfig& c, size_t rows) {
  x.resize(rows * c.n_embd);
  xn.resize(rows * c.n_embd);
  q.resize(rows * c.n_head * c.head_dim);
  k.resize(rows * c.n_head_kv * c.head_dim);
  v.resize(rows * c.n_head_kv * c.head_dim);
  attn.resize(rows * c.n_head * c.head_dim);
  proj.resize(rows * c.n_embd);
  gate.resize(rows * c.n_ff);
  up.resize(rows * c.n_ff);
  rope_cos.resize(rows * c.head_dim / 2);
  rope_sin.resize(rows * c.head_dim / 2);
}

namespace blocks {

int32_t kv_rotation_block(kernels::KvDType type, int head_dim, bool keys) {
  // KIVI quantizes the channels as they are: its keys' scales follow the outlier channels a rotation would spread.
  if (!kernels::kv_quantized(type) || kernels::kv_kivi_bits(type) != 0 || head_dim % 64 != 0) return 0;
  return keys ? head_dim & -head_dim : 64;
}

bool centers_keys(bool enabled, kernels::KvDType k) {
  // A per-channel minimum already removes what centering would (docs/kv-formats.md).
  return enabled && kernels::kv_quantized(k) && kernels::kv_kivi_bits(k) == 0;
}

int64_t gemv_rows(const Forward& f, std::span<const int> rows) {
  size_t k = 0;
  for (const SequenceRows& sr : f.seqs) {
    int64_t mine = 0;
    for (; k < rows.size() && rows[k] < sr.row0 + sr.n; ++k) ++mine;
    if (mine > kernels::kDefaultGemvRows) return kernels::kDefaultGemvRows;
  }
  return static_cast<int64_t>(rows.size());
}

namespace {

void add_bias(float* y, const TensorInfo* bias, int rows, int n) {
  if (!bias) return;
  for (int r = 0; r < rows; ++r) kernels::add_inplace(y + static_cast<size_t>(r) * n, f32_data(*bias), n);
}

// The rows' RoPE angles for a layer's frequencies (cos and sin scaled by its
// mscale); layers with the same as the previous one reuse its angles.
// With DCA the positions are the intra-chunk ones (dca.h).
void rope_angles(Forward& f, const LayerSpec& spec, bool dca) {
  if (f.rope_angles_of && f.rope_angles_of->rope_inv_freq == spec.rope_inv_freq &&
      f.rope_angles_of->rope_mscale == spec.rope_mscale && f.rope_angles_dca == dca)
    return;
  const int hd = f.model.config().head_dim, half = hd / 2;
  for (const SequenceRows& sr : f.seqs)
    for (int j = 0; j < sr.n; ++j) {
      const size_t i = static_cast<size_t>(sr.row0 + j);
      float* cos = f.s.rope_cos.data() + i * half;
      float* sin = f.s.rope_sin.data() + i * half;
      const int64_t pos = sr.pos0 + j;
      kernels::rope_angles(static_cast<float>(dca ? f.dca.intra_position(pos) : pos), spec.rope_inv_freq.data(), hd, cos, sin);
      if (spec.rope_mscale != 1.f)
        for (int e = 0; e < half; ++e) cos[e] *= spec.rope_mscale, sin[e] *= spec.rope_mscale;
    }
  f.rope_angles_of = &spec;
  f.rope_angles_dca = dca;
}

// Whether layer l runs Dual Chunk Attention: the full layers, when it is on.
bool uses_dca(const Forward& f, int l) {
  return f.dca.on() && f.model.layer_spec(l).attention == AttentionKind::Full;
}

// The sequence micro-batch row i belongs to.
const SequenceRows& sequence_of(const Forward& f, int i) {
  auto it = std::upper_bound(f.seqs.begin(), f.seqs.end(), i, [](int row, const SequenceRows& sr) { return row < sr.row0; });
  return *(it - 1);
}

// Whether the active rows are a range (then packed rows are the rows themselves).
bool active_is_range(const Forward& f) {
  return f.active.empty() || f.active.back() - f.active.front() + 1 == static_cast<int>(f.active.size());
}

// The active rows of src ([n][dim]) packed: src itself when they are a range,
// else copied into `scratch`.
const float* packed_rows(const Forward& f, const float* src, int dim, float* scratch) {
  if (active_is_range(f)) return src + static_cast<size_t>(f.active.empty() ? 0 : f.active.front()) * dim;
  for (size_t k = 0; k < f.active.size(); ++k)
    std::copy_n(src + static_cast<size_t>(f.active[k]) * dim, dim, scratch + k * dim);
  return scratch;
}

// Active rows of x += w * in (in packed), or x += RMSNorm(w * in) with a post-norm.
void add_projection(Forward& f, const TensorInfo& w, const float* in, const TensorInfo* post_norm) {
  const ModelConfig& c = f.model.config();
  const int rows = static_cast<int>(f.active.size()), d = c.n_embd;
  {
    const ScopedTimer timer(f.times.weight_gemm_ms);
    kernels::matmul(w, in, rows, f.s.proj.data(), blocks::gemv_rows(f, f.active));
  }
  if (post_norm) kernels::rms_norm(f.s.proj.data(), f32_data(*post_norm), f.s.proj.data(), rows, d, c.rms_eps);
  if (active_is_range(f)) {
    kernels::add_inplace(f.s.x.data() + static_cast<size_t>(f.active.front()) * d, f.s.proj.data(), static_cast<int64_t>(rows) * d);
    return;
  }
  for (int k = 0; k < rows; ++k)
    kernels::add_inplace(f.s.x.data() + static_cast<size_t>(f.active[k]) * d, f.s.proj.data() + static_cast<size_t>(k) * d, d);
}

// Turns query rows (RoPE'd, maybe Hadamard-turned) in place as they would be
// shift[i] positions later: RoPE rotations compose, R(p + shift) = R(shift) R(p),
// and the Hadamard turn is its own inverse, so undo it, rotate, redo it.
void turn_queries(const Forward& f, int l, float* q, int64_t rows, int64_t row_stride, const int32_t* shift) {
  const ModelConfig& c = f.model.config();
  const int hd = c.head_dim, q_dim = c.n_head * hd;
  const int32_t k_rot = f.kv_rotation ? kv_rotation_block(f.seqs.front().kv->format(l).k, hd, true) : 0;
  std::vector<float> cos(static_cast<size_t>(hd / 2)), sin(cos.size());
  for (int64_t i = 0; i < rows; ++i) {
    float* row = q + i * row_stride;
    kernels::rope_angles(static_cast<float>(shift[i]), f.model.layer_spec(l).rope_inv_freq.data(), hd, cos.data(), sin.data());
    if (k_rot) kernels::hadamard(row, q_dim, k_rot);
    kernels::rope(row, c.n_head, hd, cos.data(), sin.data(), c.rope_style == RopeStyle::Interleaved);
    if (k_rot) kernels::hadamard(row, q_dim, k_rot);
  }
}

// s.attn = attention of the active rows (packed in s.q), each sequence's rows
// over its own cache, one call per run of consecutive rows.
void attend(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  Activations& s = f.s;
  const int hd = c.head_dim, q_dim = c.n_head * hd;
  const int n_active = static_cast<int>(f.active.size());
  const LayerSpec& spec = f.model.layer_spec(l);
  const int window = spec.attention == AttentionKind::SlidingWindow ? spec.window : 0;
  const bool dca = uses_dca(f, l);
  const kernels::QueryTurn turn = [&](float* q, int64_t rows, int64_t stride, const int32_t* shift) {
    turn_queries(f, l, q, rows, stride, shift);
  };
  const attention::AttentionMethod::PlanRunner dca_runner = [&](const kernels::AttnParams& p, const kernels::Plan* plan) {
    dca_attention(p, f.dca, turn, plan);
  };
  // Single-row runs (decode steps of several sequences) run after the loop, one
  // sequence per thread: a team per sequence and layer would cost more than
  // their work. The kernel makes the same choices inside, so each result is
  // the one the sequence gets alone.
  std::vector<kernels::AttnParams> decodes;
  for (int k0 = 0; k0 < n_active;) {
    const SequenceRows& sr = sequence_of(f, f.active[k0]);
    int k1 = k0 + 1;
    // A run stays within one sequence and, with DCA, within one DCA chunk.
    const auto position = [&](int k) { return sr.pos0 + (f.active[k] - sr.row0); };
    while (k1 < n_active && f.active[k1] == f.active[k1 - 1] + 1 && f.active[k1] < sr.row0 + sr.n &&
           (!dca || f.dca.chunk_of(position(k1)) == f.dca.chunk_of(position(k0))))
      ++k1;
    const int rows = k1 - k0, q_pos0 = position(k0);
    float* q = s.q.data() + static_cast<size_t>(k0) * q_dim;
    float* out = s.attn.data() + static_cast<size_t>(k0) * q_dim;
    k0 = k1;
    // Keys up to the run's last row: a planner takes the chunk's own keys to
    // be the view's last slots, and a run cut short (DCA) is followed by more.
    kernels::KvView kv = sr.kv->view(l);
    kv.n_keys = sr.slot0 + (f.active[k1 - 1] - sr.row0) + 1;
    if (f.observer.reference_attention) {
      if (dca) throw std::logic_error("the reference attention does not run dual chunk attention");
      kernels::attention_reference(q, rows, q_pos0, kv, c.n_head, c.n_head_kv, hd, out, window);
      continue;
    }
    kernels::AttnParams a{
        .n_q_heads = c.n_head, .n_kv_heads = c.n_head_kv, .head_dim = hd, .n_rows = rows, .q_pos0 = q_pos0,
        .q = q, .q_head_stride = hd, .q_row_stride = q_dim, .kv = kv,
        .out = out, .out_head_stride = hd, .out_row_stride = q_dim};
    a.window = window;
    if (dca && rows == 1) {
      dca_attention(a, f.dca, turn);
      continue;
    }
    if (rows == 1) {
      decodes.push_back(a);
      continue;
    }
    if (window > 0) {
      // A window layer is already sparse: the sparse-prefill methods plan the full layers only.
      kernels::attention_prefill(a);
      continue;
    }
    const attention::PlanRequest r{
        .layer = l, .n_layers = c.n_layer, .n_q_heads = c.n_head, .n_kv_heads = c.n_head_kv, .head_dim = hd,
        .n_rows = rows, .q_pos0 = q_pos0, .final_chunk = sr.final_chunk, .sequence = sr.seq_id,
        .q = a.q, .q_head_stride = a.q_head_stride, .q_row_stride = a.q_row_stride, .kv = a.kv,
        .scale = 1.0f / std::sqrt(static_cast<float>(hd))};
    if (f.observer.on_prefill_attention) f.observer.on_prefill_attention(r);
    sr.method->prefill(r, a, f.report, f.observer.fidelity_rows, dca ? dca_runner : attention::AttentionMethod::PlanRunner{});
  }
  const int64_t n_decodes = static_cast<int64_t>(decodes.size());
  if (n_decodes == 1) {
    kernels::attention_decode(decodes.front());  // the kernel's own team: no enclosing region
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n_decodes; ++i) kernels::attention_decode(decodes[static_cast<size_t>(i)]);
}

// Adds the attention each row received in this micro-batch to its score, for
// every sequence whose KV policy accumulates it (H2O); their rows are all
// active (context.cpp). Sliding-window layers are never cut (select_rows).
void accumulate_received(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  if (f.model.layer_spec(l).attention == AttentionKind::SlidingWindow) return;
  const int q_dim = c.n_head * c.head_dim;
  for (const SequenceRows& sr : f.seqs) {
    if (!sr.kv_policy || !sr.kv_policy->accumulates()) continue;
    const auto packed = std::lower_bound(f.active.begin(), f.active.end(), sr.row0) - f.active.begin();
    const kernels::KvView kv = sr.kv->view(l);
    for (int g = 0; g < c.n_head_kv; ++g)
      kernels::accumulate_attention_mass(f.s.q.data() + static_cast<size_t>(packed) * q_dim, q_dim, sr.n, sr.pos0, c.n_head,
                                         c.n_head_kv, c.head_dim, kv, g, 1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                                         sr.kv->row_scores(l, g));
  }
}

// The rows the KV policy keeps of layer l, for each sequence that asks: scored
// with the queries of its last `window` rows.
void select_rows(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  const int q_dim = c.n_head * c.head_dim;
  const bool window_layer = f.model.layer_spec(l).attention == AttentionKind::SlidingWindow;
  for (const SequenceRows& sr : f.seqs) {
    if (sr.selection < 0) continue;
    KvSelection& sel = (*f.selections)[static_cast<size_t>(sr.selection)];
    if (window_layer) {  // its window already bounds it: every row it holds stays
      const kernels::KvView kv = sr.kv->view(l);
      std::vector<int64_t> held(static_cast<size_t>(kv.n_keys - kv.first_key));
      std::iota(held.begin(), held.end(), kv.first_key);
      sel.layers[static_cast<size_t>(l)].assign(static_cast<size_t>(c.n_head_kv), held);
      continue;
    }
    const int rows = std::min(sr.n, sr.kv_policy->window());
    const int first = sr.row0 + sr.n - rows;
    // Active rows hold the window (context.cpp), consecutive in the packed order too.
    const auto packed = std::lower_bound(f.active.begin(), f.active.end(), first) - f.active.begin();
    kvpolicy::ScoreRequest r{.layer = l, .n_layers = c.n_layer, .n_q_heads = c.n_head, .n_kv_heads = c.n_head_kv, .head_dim = c.head_dim,
                             .q = f.s.q.data() + static_cast<size_t>(packed) * q_dim, .q_row_stride = q_dim,
                             .q_rows = rows, .q_pos0 = sr.pos0 + (first - sr.row0), .kv = sr.kv->view(l),
                             .scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                             .turn = [&f, l](float* q, int64_t n, int64_t stride, const int32_t* shift) {
                               turn_queries(f, l, q, n, stride, shift);
                             },
                             .received = {}};
    if (sr.kv_policy->accumulates())
      for (int g = 0; g < c.n_head_kv; ++g) r.received.push_back(sr.kv->row_scores(l, g));
    if (sr.kv_policy->mixed_precision()) {
      // A layer with no quantized side has no precision to split: it does not judge.
      double* preference = sr.kv->keeps_copies(l) ? &sel.preference[static_cast<size_t>(l)] : nullptr;
      sel.layers[static_cast<size_t>(l)] =
          sr.kv_policy->select(r, sel.target, &sel.ranked[static_cast<size_t>(l)], preference);
    } else {
      sel.layers[static_cast<size_t>(l)] = sr.kv_policy->select(r, sel.target);
    }
    for (const kvpolicy::MergedRow& m : sr.kv_policy->merge(r, sel.layers[static_cast<size_t>(l)]))
      sr.kv->write_row(l, m.head, m.slot, m.k.data(), m.v.data());
  }
}

// The sequence's key offset for layer l (kv_sequence.h): the mean of its keys
// in this micro-batch (post-RoPE), leaving out position 0, whose key (the
// attention sink's) is far from the others, when there are others.
void set_key_offset(Forward& f, const SequenceRows& sr, int l) {
  const ModelConfig& c = f.model.config();
  const int hd = c.head_dim, kv_dim = c.n_head_kv * hd;
  const int skip = sr.pos0 == 0 && sr.n > 1 ? 1 : 0;
  for (int g = 0; g < c.n_head_kv; ++g) {
    float* mean = sr.kv->key_offset(l, g);
    std::fill(mean, mean + hd, 0.0f);
    for (int j = skip; j < sr.n; ++j)
      kernels::add_inplace(mean, f.s.k.data() + static_cast<size_t>(sr.row0 + j) * kv_dim + static_cast<size_t>(g) * hd, hd);
    for (int e = 0; e < hd; ++e) mean[e] /= static_cast<float>(sr.n - skip);
  }
  sr.kv->mark_key_offset_set(l);
}

}  // namespace

void attention(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  const LayerWeights& L = f.model.layer(l);
  Activations& s = f.s;
  const int n = f.n, rows = static_cast<int>(f.active.size());
  const int d = c.n_embd, hd = c.head_dim, half = hd / 2, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;
  kernels::rms_norm(s.x.data(), f32_data(*L.attn_norm), s.xn.data(), n, d, c.rms_eps);
  const int64_t gemv_all = blocks::gemv_rows(f, f.all_rows);
  std::optional<ScopedTimer> timer(f.times.weight_gemm_ms);
  if (rows == n) {
    const kernels::MatmulTarget qkv[] = {{L.wq, s.q.data()}, {L.wk, s.k.data()}, {L.wv, s.v.data()}};
    kernels::matmul_shared_input(qkv, s.xn.data(), n, gemv_all);
  } else {
    const kernels::MatmulTarget kv[] = {{L.wk, s.k.data()}, {L.wv, s.v.data()}};
    kernels::matmul_shared_input(kv, s.xn.data(), n, gemv_all);
    if (rows > 0)
      kernels::matmul(*L.wq, packed_rows(f, s.xn.data(), d, s.proj.data()), rows, s.q.data(), blocks::gemv_rows(f, f.active));
  }
  timer.reset();
  add_bias(s.q.data(), L.bq, rows, q_dim);
  add_bias(s.k.data(), L.bk, n, kv_dim);
  add_bias(s.v.data(), L.bv, n, kv_dim);
  if (L.q_norm) kernels::rms_norm(s.q.data(), f32_data(*L.q_norm), s.q.data(), static_cast<int64_t>(rows) * c.n_head, hd, c.rms_eps);
  if (L.k_norm) kernels::rms_norm(s.k.data(), f32_data(*L.k_norm), s.k.data(), static_cast<int64_t>(n) * c.n_head_kv, hd, c.rms_eps);
  rope_angles(f, f.model.layer_spec(l), uses_dca(f, l));
  const bool interleaved = c.rope_style == RopeStyle::Interleaved;
  const kv::KvFormat format = f.seqs.front().kv->format(l);
  const int32_t k_rot = f.kv_rotation ? kv_rotation_block(format.k, hd, true) : 0;
  const int32_t v_rot = f.kv_rotation ? kv_rotation_block(format.v, hd, false) : 0;

  // Rows are independent (their own position and cache slot); decode's single row stays serial.
#pragma omp parallel for schedule(static) if (n >= 16)
  for (int k = 0; k < rows; ++k) {
    const size_t i = static_cast<size_t>(f.active[k]);
    float* q = s.q.data() + static_cast<size_t>(k) * q_dim;
    kernels::rope(q, c.n_head, hd, s.rope_cos.data() + i * half, s.rope_sin.data() + i * half, interleaved);
    if (k_rot) kernels::hadamard(q, q_dim, k_rot);  // q.k is unchanged when both turn
  }
#pragma omp parallel for schedule(static) if (n >= 16)
  for (int i = 0; i < n; ++i)
    kernels::rope(s.k.data() + static_cast<size_t>(i) * kv_dim, c.n_head_kv, hd, s.rope_cos.data() + static_cast<size_t>(i) * half,
                  s.rope_sin.data() + static_cast<size_t>(i) * half, interleaved);
  const bool center = centers_keys(f.kv_center_keys, format.k);
  timer.emplace(f.times.kv_store_ms);
  if (center)
    for (const SequenceRows& sr : f.seqs)
      if (!sr.kv->has_key_offset(l)) set_key_offset(f, sr, l);
#pragma omp parallel for schedule(static) if (n >= 16)
  for (int i = 0; i < n; ++i) {
    float* k = s.k.data() + static_cast<size_t>(i) * kv_dim;
    float* v = s.v.data() + static_cast<size_t>(i) * kv_dim;
    const SequenceRows& sr = sequence_of(f, i);
    if (center)
      for (int g = 0; g < c.n_head_kv; ++g) {
        const float* offset = sr.kv->key_offset(l, g);
        for (int e = 0; e < hd; ++e) k[g * hd + e] -= offset[e];
      }
    if (k_rot) kernels::hadamard(k, kv_dim, k_rot);
    if (v_rot) kernels::hadamard(v, kv_dim, v_rot);
    const int64_t slot = sr.slot0 + (i - sr.row0);
    for (int g = 0; g < c.n_head_kv; ++g)
      sr.kv->store_row(l, g, slot, k + static_cast<size_t>(g) * hd, v + static_cast<size_t>(g) * hd);
  }
  for (const SequenceRows& sr : f.seqs) sr.kv->seal(l);
  timer.reset();
  if (rows == 0) return;
  {
    const ScopedTimer attention_timer(f.times.attention_ms);
    attend(f, l);
  }
  {
    const ScopedTimer policy_timer(f.times.kv_store_ms);
    accumulate_received(f, l);
    if (f.selections) select_rows(f, l);
  }
  if (v_rot) {
    // The attention output is a mix of rotated values: turn it back.
#pragma omp parallel for schedule(static) if (rows >= 16)
    for (int k = 0; k < rows; ++k) kernels::hadamard(s.attn.data() + static_cast<size_t>(k) * q_dim, q_dim, v_rot);
  }
  add_projection(f, *L.wo, s.attn.data(), L.attn_post_norm);
}

void ffn_gated(Forward& f, int l, Gate act) {
  const ModelConfig& c = f.model.config();
  const LayerWeights& L = f.model.layer(l);
  Activations& s = f.s;
  const int rows = static_cast<int>(f.active.size());
  if (rows == 0) return;
  kernels::rms_norm(packed_rows(f, s.x.data(), c.n_embd, s.proj.data()), f32_data(*L.ffn_norm), s.xn.data(), rows,
                    c.n_embd, c.rms_eps);
  const kernels::MatmulTarget gate_up[] = {{L.w_gate, s.gate.data()}, {L.w_up, s.up.data()}};
  {
    const ScopedTimer timer(f.times.weight_gemm_ms);
    kernels::matmul_shared_input(gate_up, s.xn.data(), rows, blocks::gemv_rows(f, f.active));
  }
  if (act == Gate::Silu) {
    kernels::swiglu(s.gate.data(), s.up.data(), static_cast<int64_t>(rows) * c.n_ff);
  } else {
    kernels::geglu(s.gate.data(), s.up.data(), static_cast<int64_t>(rows) * c.n_ff);
  }
  add_projection(f, *L.w_down, s.gate.data(), L.ffn_post_norm);
}

}  // namespace blocks
}  // namespace skim
