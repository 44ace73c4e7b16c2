#include "skim/context.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/method.h"
#include "kernels/dequant.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kv/kv_cache.h"
#include "model/arch.h"
#include "model/attention_observer.h"
#include "model/blocks.h"

namespace skim {

void ContextInternals::set_observer(Context& ctx, AttentionObserver observer) { *ctx.observer_ = std::move(observer); }

Context::Context(const Model& model, ContextParams params)
    : model_(model), params_(params), observer_(std::make_unique<AttentionObserver>()) {
  const ModelConfig& c = model.config();
  if (params_.n_ctx <= 0) params_.n_ctx = c.n_ctx_train;
  if (params_.n_ubatch <= 0) throw std::invalid_argument("micro-batch size must be positive");
  params_.n_ubatch = std::min(params_.n_ubatch, params_.n_ctx);
  method_ = std::make_unique<attention::AttentionMethod>(params_.attention, c.n_layer);
  kv_ = std::make_unique<KvCache>(c.n_layer, c.n_head_kv, c.head_dim, params_.n_ctx);
  s_ = std::make_unique<Activations>(c, params_.n_ubatch);
}

Context::~Context() = default;

int Context::n_past() const { return kv_->size(); }
void Context::clear() { kv_->resize(0); }
size_t Context::kv_bytes() const { return kv_->bytes(); }
size_t Context::kv_held_bytes() const { return kv_->held_bytes(); }
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
  const int n = static_cast<int>(tokens.size()), d = c.n_embd;
  Forward f{model_, *s_, *kv_, *method_, report_, *observer_, n, n_past(), final_chunk};
  Activations& s = *s_;

  const TensorInfo& embd = model_.token_embd();
  for (int i = 0; i < n; ++i) kernels::dequantize_row(embd.type, embd.row(tokens[i]), s.x.data() + static_cast<size_t>(i) * d, d);

  kv_->resize(f.pos0 + n);
  for (int i = 0; i < n; ++i) kv_->set_position(f.pos0 + i, f.pos0 + i);

  // The last layer only feeds the logits: past its K/V (cached for later
  // tokens), only rows that want logits are computed, as llama.cpp does.
  // Observers of every layer's attention (calibration, fidelity) keep all rows.
  const bool prune_last = !observer_->keeps_every_row();
  for (int l = 0; l < c.n_layer; ++l) {
    f.first = l == c.n_layer - 1 && prune_last ? static_cast<int>(std::min<int64_t>(logits_from, n)) : 0;
    model_.arch().layer(f, l);
  }

  if (logits_from >= n) return;
  const int first = static_cast<int>(logits_from);
  const int rows = n - first;
  kernels::rms_norm(s.x.data() + static_cast<size_t>(first) * d, f32_data(model_.output_norm()), s.xn.data(), rows, d,
                    c.rms_eps);
  kernels::matmul(model_.output(), s.xn.data(), rows, logits_out);
}

}  // namespace skim
