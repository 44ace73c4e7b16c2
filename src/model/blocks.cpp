#include "model/blocks.h"

#include <cmath>

#include "attention/method.h"
#include "kernels/attention.h"
#include "kernels/attention_reference.h"
#include "kernels/elementwise.h"
#include "kernels/f16.h"
#include "kernels/matmul.h"
#include "kv/kv_cache.h"
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
namespace {

void add_bias(float* y, const TensorInfo* bias, int rows, int n) {
  if (!bias) return;
  for (int r = 0; r < rows; ++r) kernels::add_inplace(y + static_cast<size_t>(r) * n, f32_data(*bias), n);
}

// The rows' RoPE angles for a layer's frequencies; layers with the same
// frequencies as the previous one reuse its angles.
void rope_angles(Forward& f, const std::vector<float>& inv_freq) {
  if (f.rope_angles_of && *f.rope_angles_of == inv_freq) return;
  const int hd = f.model.config().head_dim, half = hd / 2;
  for (int i = 0; i < f.n; ++i)
    kernels::rope_angles(static_cast<float>(f.pos0 + i), inv_freq.data(), hd, f.s.rope_cos.data() + static_cast<size_t>(i) * half,
                         f.s.rope_sin.data() + static_cast<size_t>(i) * half);
  f.rope_angles_of = &inv_freq;
}

// Rows [first, n) of x += w * in.
void add_projection(Forward& f, const TensorInfo& w, const float* in) {
  const int rows = f.n - f.first, d = f.model.config().n_embd;
  kernels::matmul(w, in, rows, f.s.proj.data());
  kernels::add_inplace(f.s.x.data() + static_cast<size_t>(f.first) * d, f.s.proj.data(), static_cast<int64_t>(rows) * d);
}

// s.attn = attention of the rows [first, n) of s.q over the layer's cache.
void attend(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  Activations& s = f.s;
  const int hd = c.head_dim, q_dim = c.n_head * hd, rows = f.n - f.first, q_pos0 = f.pos0 + f.first;
  if (f.observer.reference_attention) {
    kernels::attention_reference(s.q.data(), rows, q_pos0, f.kv, l, c.n_head, s.attn.data());
    return;
  }
  const kernels::AttnParams a{
      .n_q_heads = c.n_head, .n_kv_heads = c.n_head_kv, .head_dim = hd, .n_rows = rows, .q_pos0 = q_pos0,
      .q = s.q.data(), .q_head_stride = hd, .q_row_stride = q_dim,
      .kv = {f.kv.k(l, 0), f.kv.v(l, 0), kernels::KvDType::F16, static_cast<int64_t>(f.kv.capacity()) * hd, hd, f.pos0 + f.n},
      .out = s.attn.data(), .out_head_stride = hd, .out_row_stride = q_dim};
  if (rows == 1) {
    kernels::attention_decode(a);
    return;
  }
  const attention::PlanRequest r{
      .layer = l, .n_layers = c.n_layer, .n_q_heads = c.n_head, .n_kv_heads = c.n_head_kv, .head_dim = hd,
      .n_rows = rows, .q_pos0 = q_pos0, .final_chunk = f.final_chunk,
      .q = a.q, .q_head_stride = a.q_head_stride, .q_row_stride = a.q_row_stride, .kv = a.kv,
      .scale = 1.0f / std::sqrt(static_cast<float>(hd))};
  if (f.observer.on_prefill_attention) f.observer.on_prefill_attention(r);
  f.method.prefill(r, a, f.report, f.observer.fidelity_rows);
}

}  // namespace

void attention(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  const LayerWeights& L = f.model.layer(l);
  Activations& s = f.s;
  const int n = f.n, first = f.first, rows = n - first;
  const int d = c.n_embd, hd = c.head_dim, half = hd / 2, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;
  kernels::rms_norm(s.x.data(), f32_data(*L.attn_norm), s.xn.data(), n, d, c.rms_eps);
  if (first == 0) {
    const kernels::MatmulTarget qkv[] = {{L.wq, s.q.data()}, {L.wk, s.k.data()}, {L.wv, s.v.data()}};
    kernels::matmul_shared_input(qkv, s.xn.data(), n);
  } else {
    const kernels::MatmulTarget kv[] = {{L.wk, s.k.data()}, {L.wv, s.v.data()}};
    kernels::matmul_shared_input(kv, s.xn.data(), n);
    if (rows > 0) kernels::matmul(*L.wq, s.xn.data() + static_cast<size_t>(first) * d, rows, s.q.data());
  }
  add_bias(s.q.data(), L.bq, rows, q_dim);
  add_bias(s.k.data(), L.bk, n, kv_dim);
  add_bias(s.v.data(), L.bv, n, kv_dim);
  rope_angles(f, f.model.layer_spec(l).rope_inv_freq);
  const bool interleaved = c.rope_style == RopeStyle::Interleaved;
  // Rows are independent (their own position and cache slot); decode's single row stays serial.
#pragma omp parallel for schedule(static) if (n >= 16)
  for (int i = 0; i < n; ++i) {
    const float* cos = s.rope_cos.data() + static_cast<size_t>(i) * half;
    const float* sin = s.rope_sin.data() + static_cast<size_t>(i) * half;
    if (i >= first) kernels::rope(s.q.data() + static_cast<size_t>(i - first) * q_dim, c.n_head, hd, cos, sin, interleaved);
    kernels::rope(s.k.data() + static_cast<size_t>(i) * kv_dim, c.n_head_kv, hd, cos, sin, interleaved);
    for (int g = 0; g < c.n_head_kv; ++g) {
      const size_t src = static_cast<size_t>(i) * kv_dim + static_cast<size_t>(g) * hd;
      const size_t dst = static_cast<size_t>(f.pos0 + i) * hd;
      kernels::f32_to_f16_row(s.k.data() + src, f.kv.k(l, g) + dst, hd);
      kernels::f32_to_f16_row(s.v.data() + src, f.kv.v(l, g) + dst, hd);
    }
  }
  if (rows == 0) return;
  attend(f, l);
  add_projection(f, *L.wo, s.attn.data());
}

void ffn_swiglu(Forward& f, int l) {
  const ModelConfig& c = f.model.config();
  const LayerWeights& L = f.model.layer(l);
  Activations& s = f.s;
  const int rows = f.n - f.first;
  if (rows == 0) return;
  kernels::rms_norm(s.x.data() + static_cast<size_t>(f.first) * c.n_embd, f32_data(*L.ffn_norm), s.xn.data(), rows, c.n_embd,
                    c.rms_eps);
  const kernels::MatmulTarget gate_up[] = {{L.w_gate, s.gate.data()}, {L.w_up, s.up.data()}};
  kernels::matmul_shared_input(gate_up, s.xn.data(), rows);
  kernels::swiglu(s.gate.data(), s.up.data(), static_cast<int64_t>(rows) * c.n_ff);
  add_projection(f, *L.w_down, s.gate.data());
}

}  // namespace blocks
}  // namespace skim
