#include "skim/context.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/method.h"
#include "kernels/attention.h"
#include "kernels/attention_reference.h"
#include "kernels/dequant.h"
#include "kernels/elementwise.h"
#include "kernels/f16.h"
#include "kernels/matmul.h"
#include "kv/kv_cache.h"
#include "model/attention_observer.h"

namespace skim {

// Activations of one micro-batch, sized once for n_ubatch rows.
struct Context::Scratch {
  std::vector<float> x, xn, q, k, v, attn, proj, gate, up, logits;
  std::vector<float> rope_cos, rope_sin;  // per row: head_dim / 2 angles
};

namespace {
const float* f32_data(const TensorInfo& t) { return reinterpret_cast<const float*>(t.data); }

void add_bias(float* y, const TensorInfo* bias, int rows, int n) {
  if (!bias) return;
  for (int r = 0; r < rows; ++r) kernels::add_inplace(y + static_cast<size_t>(r) * n, f32_data(*bias), n);
}
}  // namespace

void ContextInternals::set_observer(Context& ctx, AttentionObserver observer) { *ctx.observer_ = std::move(observer); }

Context::Context(const Model& model, ContextParams params)
    : model_(model), params_(params), observer_(std::make_unique<AttentionObserver>()) {
  const ModelConfig& c = model.config();
  if (params_.n_ctx <= 0) params_.n_ctx = c.n_ctx_train;
  if (params_.n_ubatch <= 0) throw std::invalid_argument("micro-batch size must be positive");
  params_.n_ubatch = std::min(params_.n_ubatch, params_.n_ctx);
  method_ = std::make_unique<attention::AttentionMethod>(params_.attention, c.n_layer);
  kv_ = std::make_unique<KvCache>(c.n_layer, c.n_head_kv, c.head_dim, params_.n_ctx);
  s_ = std::make_unique<Scratch>();
  const size_t rows = params_.n_ubatch;
  s_->x.resize(rows * c.n_embd);
  s_->xn.resize(rows * c.n_embd);
  s_->q.resize(rows * c.n_head * c.head_dim);
  s_->k.resize(rows * c.n_head_kv * c.head_dim);
  s_->v.resize(rows * c.n_head_kv * c.head_dim);
  s_->attn.resize(rows * c.n_head * c.head_dim);
  s_->proj.resize(rows * c.n_embd);
  s_->gate.resize(rows * c.n_ff);
  s_->up.resize(rows * c.n_ff);
  s_->rope_cos.resize(rows * c.head_dim / 2);
  s_->rope_sin.resize(rows * c.head_dim / 2);
}

Context::~Context() = default;

int Context::n_past() const { return kv_->size(); }
void Context::clear() { kv_->resize(0); }
size_t Context::kv_bytes() const { return kv_->bytes(); }
const AttentionReport& Context::attention_report() const { return report_; }
void Context::reset_attention_report() { report_ = {}; }

std::vector<float> Context::decode(std::span<const int32_t> tokens, bool all_logits, const ProgressFn& progress) {
  const size_t n_vocab = model_.config().n_vocab;
  if (tokens.empty()) throw std::invalid_argument("decode: no tokens");
  const int64_t from = all_logits ? 0 : static_cast<int64_t>(tokens.size()) - 1;
  std::vector<float> logits((tokens.size() - from) * n_vocab);
  decode_streaming(
      tokens, from,
      [&](int64_t first, int64_t rows, const float* l) {
        std::copy(l, l + rows * n_vocab, logits.begin() + (first - from) * n_vocab);
      },
      progress);
  return logits;
}

void Context::decode_streaming(std::span<const int32_t> tokens, int64_t logits_from, const LogitsFn& on_logits,
                               const ProgressFn& progress) {
  const int n_vocab = model_.config().n_vocab;
  if (tokens.empty()) throw std::invalid_argument("decode: no tokens");
  if (static_cast<int64_t>(n_past()) + static_cast<int64_t>(tokens.size()) > params_.n_ctx)
    throw std::length_error(fmt::format("{} tokens after {} cached exceed the context of {} tokens (raise -c)",
                                        tokens.size(), n_past(), params_.n_ctx));
  for (int32_t t : tokens)
    if (t < 0 || t >= n_vocab) throw std::out_of_range(fmt::format("token id {} outside the vocabulary (0..{})", t, n_vocab - 1));

  for (size_t done = 0; done < tokens.size();) {
    const size_t n = std::min<size_t>(params_.n_ubatch, tokens.size() - done);
    const int64_t from = std::max<int64_t>(0, logits_from - static_cast<int64_t>(done));
    // Sized on demand: prefill usually wants one row, perplexity half a window.
    const size_t need = (n > static_cast<size_t>(from) ? n - from : 0) * static_cast<size_t>(n_vocab);
    if (s_->logits.size() < need) s_->logits.resize(need);
    forward_ubatch(tokens.subspan(done, n), from, s_->logits.data(), done + n == tokens.size());
    if (from < static_cast<int64_t>(n)) on_logits(done + from, n - from, s_->logits.data());
    done += n;
    if (progress) progress(static_cast<int64_t>(done), static_cast<int64_t>(tokens.size()));
  }
}

void Context::forward_ubatch(std::span<const int32_t> tokens, int64_t logits_from, float* logits_out,
                             bool final_chunk) {
  const ModelConfig& c = model_.config();
  const int n = static_cast<int>(tokens.size());
  const int pos0 = n_past();
  const int d = c.n_embd, hd = c.head_dim, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;
  Scratch& s = *s_;

  const TensorInfo& embd = model_.token_embd();
  for (int i = 0; i < n; ++i) kernels::dequantize_row(embd.type, embd.row(tokens[i]), s.x.data() + static_cast<size_t>(i) * d, d);

  kv_->resize(pos0 + n);
  for (int i = 0; i < n; ++i) kv_->set_position(pos0 + i, pos0 + i);
  const bool interleaved = c.rope_style == RopeStyle::Interleaved;
  const int half = hd / 2;
  for (int i = 0; i < n; ++i)
    kernels::rope_angles(static_cast<float>(pos0 + i), model_.rope_inv_freq().data(), hd,
                         s.rope_cos.data() + static_cast<size_t>(i) * half, s.rope_sin.data() + static_cast<size_t>(i) * half);

  // The last layer only feeds the logits: past its K/V (cached for later
  // tokens), only rows that want logits are computed, as llama.cpp does.
  // Observers of every layer's attention (calibration, fidelity) keep all rows.
  const bool prune_last = !observer_->keeps_every_row();
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = model_.layer(l);
    // Rows [first, n) go through the whole layer; earlier rows only give K/V.
    const int first = l == c.n_layer - 1 && prune_last ? static_cast<int>(std::min<int64_t>(logits_from, n)) : 0;
    const int rows = n - first;
    const size_t x_first = static_cast<size_t>(first) * d;
    kernels::rms_norm(s.x.data(), f32_data(*L.attn_norm), s.xn.data(), n, d, c.rms_eps);
    if (first == 0) {
      const kernels::MatmulTarget qkv[] = {{L.wq, s.q.data()}, {L.wk, s.k.data()}, {L.wv, s.v.data()}};
      kernels::matmul_shared_input(qkv, s.xn.data(), n);
    } else {
      const kernels::MatmulTarget kv[] = {{L.wk, s.k.data()}, {L.wv, s.v.data()}};
      kernels::matmul_shared_input(kv, s.xn.data(), n);
      if (rows > 0) kernels::matmul(*L.wq, s.xn.data() + x_first, rows, s.q.data());
    }
    add_bias(s.q.data(), L.bq, rows, q_dim);
    add_bias(s.k.data(), L.bk, n, kv_dim);
    add_bias(s.v.data(), L.bv, n, kv_dim);
    // Rows are independent (their own position and cache slot); decode's single row stays serial.
#pragma omp parallel for schedule(static) if (n >= 16)
    for (int i = 0; i < n; ++i) {
      const float* cos = s.rope_cos.data() + static_cast<size_t>(i) * half;
      const float* sin = s.rope_sin.data() + static_cast<size_t>(i) * half;
      if (i >= first) kernels::rope(s.q.data() + static_cast<size_t>(i - first) * q_dim, c.n_head, hd, cos, sin, interleaved);
      kernels::rope(s.k.data() + static_cast<size_t>(i) * kv_dim, c.n_head_kv, hd, cos, sin, interleaved);
      for (int g = 0; g < c.n_head_kv; ++g) {
        const size_t src = static_cast<size_t>(i) * kv_dim + static_cast<size_t>(g) * hd;
        const size_t dst = static_cast<size_t>(pos0 + i) * hd;
        kernels::f32_to_f16_row(s.k.data() + src, kv_->k(l, g) + dst, hd);
        kernels::f32_to_f16_row(s.v.data() + src, kv_->v(l, g) + dst, hd);
      }
    }
    if (rows == 0) continue;
    const int q_pos0 = pos0 + first;
    if (observer_->reference_attention) {
      kernels::attention_reference(s.q.data(), rows, q_pos0, *kv_, l, c.n_head, s.attn.data());
    } else {
      kernels::AttnParams a;
      a.n_q_heads = c.n_head;
      a.n_kv_heads = c.n_head_kv;
      a.head_dim = hd;
      a.n_rows = rows;
      a.q_pos0 = q_pos0;
      a.q = s.q.data();
      a.q_head_stride = hd;
      a.q_row_stride = q_dim;
      a.kv = {kv_->k(l, 0), kv_->v(l, 0), kernels::KvDType::F16, static_cast<int64_t>(kv_->capacity()) * hd, hd, pos0 + n};
      a.out = s.attn.data();
      a.out_head_stride = hd;
      a.out_row_stride = q_dim;
      if (rows == 1) {
        kernels::attention_decode(a);
      } else {
        attention::PlanRequest r;
        r.layer = l;
        r.n_layers = c.n_layer;
        r.n_q_heads = c.n_head;
        r.n_kv_heads = c.n_head_kv;
        r.head_dim = hd;
        r.n_rows = rows;
        r.q_pos0 = q_pos0;
        r.final_chunk = final_chunk;
        r.q = a.q;
        r.q_head_stride = a.q_head_stride;
        r.q_row_stride = a.q_row_stride;
        r.kv = a.kv;
        r.scale = 1.0f / std::sqrt(static_cast<float>(hd));
        if (observer_->on_prefill_attention) observer_->on_prefill_attention(r);
        method_->prefill(r, a, report_, observer_->fidelity_rows);
      }
    }
    float* x = s.x.data() + x_first;
    kernels::matmul(*L.wo, s.attn.data(), rows, s.proj.data());
    kernels::add_inplace(x, s.proj.data(), static_cast<int64_t>(rows) * d);

    kernels::rms_norm(x, f32_data(*L.ffn_norm), s.xn.data(), rows, d, c.rms_eps);
    const kernels::MatmulTarget gate_up[] = {{L.w_gate, s.gate.data()}, {L.w_up, s.up.data()}};
    kernels::matmul_shared_input(gate_up, s.xn.data(), rows);
    kernels::swiglu(s.gate.data(), s.up.data(), static_cast<int64_t>(rows) * c.n_ff);
    kernels::matmul(*L.w_down, s.gate.data(), rows, s.proj.data());
    kernels::add_inplace(x, s.proj.data(), static_cast<int64_t>(rows) * d);
  }

  if (logits_from >= n) return;
  const int first = static_cast<int>(logits_from);
  const int rows = n - first;
  kernels::rms_norm(s.x.data() + static_cast<size_t>(first) * d, f32_data(model_.output_norm()), s.xn.data(), rows, d,
                    c.rms_eps);
  kernels::matmul(model_.output(), s.xn.data(), rows, logits_out);
}

}  // namespace skim
