// llama and qwen2: every layer is the llama block (RMSNorm, RoPE, GQA
// attention, SwiGLU FFN) with full attention at the model's RoPE base. qwen2
// rotates half-split pairs and adds Q/K/V biases.
#include <fmt/format.h>

#include "model/arch.h"
#include "model/blocks.h"

namespace skim {
namespace {

template <RopeStyle kRopeStyle, bool kQkvBias>
void load(const GgufFile& f, ModelConfig& c, std::vector<LayerWeights>& layers, std::vector<LayerSpec>& specs) {
  c.rope_style = kRopeStyle;
  c.qkv_bias = kQkvBias;
  const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
  const LayerSpec spec = rope_layer_spec(f, c, c.rope_base, c.rope_scaling);
  for (int i = 0; i < c.n_layer; ++i) {
    const std::string b = fmt::format("blk.{}.", i);
    LayerWeights L{};
    require_attention_weights(f, c, b, L);
    if (kQkvBias) {
      L.bq = &require_f32(f, b + "attn_q.bias", q_dim);
      L.bk = &require_f32(f, b + "attn_k.bias", kv_dim);
      L.bv = &require_f32(f, b + "attn_v.bias", kv_dim);
    }
    require_ffn_weights(f, c, b, L);
    layers.push_back(L);
    specs.push_back(spec);
  }
}

void layer(Forward& f, int l) {
  blocks::attention(f, l);
  blocks::ffn_gated(f, l, blocks::Gate::Silu);
}

}  // namespace

const Arch kLlamaArch{"llama", load<RopeStyle::Interleaved, false>, layer};
const Arch kQwen2Arch{"qwen2", load<RopeStyle::HalfSplit, true>, layer};

}  // namespace skim
