// gemma3 (text): sliding-window layers (window attention.sliding_window, RoPE
// base rope.freq_base_swa or 10000, no RoPE scaling) interleaved with global
// layers (rope.freq_base and the model's scaling); by default every sixth
// layer is global (attention.sliding_window_pattern). Each layer: RMSNorm ->
// attention with RMS-normed Q and K heads -> RMSNorm -> residual, then RMSNorm
// -> GELU-gated FFN -> RMSNorm -> residual. Embeddings are scaled by
// sqrt(n_embd); final_logit_softcapping caps the logits when present. Half-split
// RoPE pairs. The GGUF's norm weights already include Gemma's "1 +".
#include <cmath>

#include <fmt/format.h>

#include "model/arch.h"
#include "model/blocks.h"

namespace skim {
namespace {

// Which layers use the sliding window: an explicit per-layer array, or a
// period n (layer l is global when l % n == n - 1; 0 means all are windowed).
std::vector<bool> sliding_layers(const GgufFile& f, const std::string& key, int n_layer) {
  std::vector<bool> sliding(static_cast<size_t>(n_layer));
  if (const GgufValue* v = f.find(key); v && v->type == GgufValueType::ARRAY) {
    const auto& flags = v->as_array().items;
    if (static_cast<int>(flags.size()) != n_layer)
      throw GgufError(fmt::format("{}: {} has {} entries for {} layers", f.path(), key, flags.size(), n_layer));
    for (int l = 0; l < n_layer; ++l) {
      const GgufValue& flag = flags[static_cast<size_t>(l)];
      sliding[static_cast<size_t>(l)] = flag.type == GgufValueType::BOOL ? flag.as_bool() : flag.as_int() != 0;
    }
    return sliding;
  }
  const int64_t period = f.get_int(key, 6);
  if (period < 0) throw GgufError(fmt::format("{}: negative {}", f.path(), key));
  for (int l = 0; l < n_layer; ++l) sliding[static_cast<size_t>(l)] = period == 0 || l % period < period - 1;
  return sliding;
}

void load(const GgufFile& f, ModelConfig& c, std::vector<LayerWeights>& layers, std::vector<LayerSpec>& specs) {
  const std::string p = c.arch + ".";
  c.rope_style = RopeStyle::HalfSplit;
  c.embedding_scale = std::sqrt(static_cast<float>(c.n_embd));
  c.logit_softcap = static_cast<float>(f.get_float(p + "final_logit_softcapping", 0.0));
  const int window = static_cast<int>(f.get_int(p + "attention.sliding_window", 0));
  if (window < 0) throw GgufError(fmt::format("{}: negative attention.sliding_window", f.path()));
  const std::vector<bool> sliding = sliding_layers(f, p + "attention.sliding_window_pattern", c.n_layer);
  const float swa_base = static_cast<float>(f.get_float(p + "rope.freq_base_swa", 10000.0));
  const LayerSpec global = rope_layer_spec(f, c, c.rope_base, c.rope_scaling);
  // The window layers' RoPE is never scaled (llama.cpp: rope_freq_scale_train_swa = 1).
  LayerSpec local = rope_layer_spec(f, c, swa_base, RopeScaling{});
  local.attention = AttentionKind::SlidingWindow;
  local.window = window;

  const int64_t d = c.n_embd;
  for (int i = 0; i < c.n_layer; ++i) {
    const std::string b = fmt::format("blk.{}.", i);
    LayerWeights L{};
    require_attention_weights(f, c, b, L);
    L.q_norm = &require_f32(f, b + "attn_q_norm.weight", c.head_dim);
    L.k_norm = &require_f32(f, b + "attn_k_norm.weight", c.head_dim);
    L.attn_post_norm = &require_f32(f, b + "post_attention_norm.weight", d);
    require_ffn_weights(f, c, b, L);
    L.ffn_post_norm = &require_f32(f, b + "post_ffw_norm.weight", d);
    layers.push_back(L);
    specs.push_back(sliding[static_cast<size_t>(i)] && window > 0 ? local : global);
  }
}

void layer(Forward& f, int l) {
  blocks::attention(f, l);
  blocks::ffn_gated(f, l, blocks::Gate::Gelu);
}

}  // namespace

const Arch kGemma3Arch{"gemma3", load, layer};

}  // namespace skim
