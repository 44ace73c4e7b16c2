// A decoder-only transformer loaded from GGUF: its architecture family
// (llama, qwen2, gemma3; src/model/arch.h) maps the metadata and tensors to a config,
// the weights of every layer and a spec of what every layer computes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "skim/gguf.h"
#include "skim/tokenizer.h"

namespace skim {

enum class RopeStyle {
  Interleaved,  // rotate pairs (x[2i], x[2i+1]): llama (GGUF stores Q/K permuted for it)
  HalfSplit,    // rotate pairs (x[i], x[i+d/2]): qwen2 ("neox" in ggml)
};

// How RoPE positions are stretched past the trained context (llama.cpp's
// rope scaling): Linear divides every frequency by `factor`; YaRN (docs/length-extension.md)
// interpolates the low frequencies, keeps the high ones, ramps between the
// dimensions [low, high] that turn beta_fast and beta_slow times within
// orig_ctx, and scales cos/sin by `mscale`.
enum class RopeScalingKind { None, Linear, Yarn };
inline const char* rope_scaling_name(RopeScalingKind k) {
  return k == RopeScalingKind::Yarn ? "yarn" : k == RopeScalingKind::Linear ? "linear" : "none";
}
struct RopeScaling {
  RopeScalingKind kind = RopeScalingKind::None;
  float factor = 1.f;       // context stretch (1 / llama.cpp's rope_freq_scale)
  int orig_ctx = 0;         // the context the model was trained at (YaRN)
  float ext_factor = 0.f;   // YaRN's extrapolation mix (1 for YaRN, 0 otherwise)
  float beta_fast = 32.f, beta_slow = 1.f;
  float mscale = 1.f;       // cos and sin are multiplied by it
};
// Overrides of the GGUF's rope-scaling keys, as llama.cpp's flags name them
// (--rope-scaling, --rope-scale, --yarn-*). Unset fields keep the model's.
struct ModelOptions {
  std::string rope_scaling;      // "", "none", "linear" or "yarn"
  float rope_scale = 0.f;        // 0: the model's factor
  int yarn_orig_ctx = 0;         // 0: the model's (or its trained context)
  float yarn_ext_factor = -1.f;  // < 0: 1 for YaRN
  float yarn_attn_factor = -1.f; // < 0: YaRN's 0.1 ln(factor) + 1
  float yarn_beta_fast = -1.f, yarn_beta_slow = -1.f;
};

struct ModelConfig {
  std::string arch;
  std::string name;
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
  float rope_base = 10000.f;  // rope.freq_base; what each layer uses is in its LayerSpec
  RopeScaling rope_scaling;  // of the global layers (window layers of gemma3 are never scaled)
  RopeStyle rope_style = RopeStyle::Interleaved;
  bool qkv_bias = false;
  bool tied_output = false;
  float embedding_scale = 1.f;  // token embeddings are multiplied by it (gemma: sqrt(n_embd))
  float logit_softcap = 0.f;    // > 0: logits become cap * tanh(logits / cap) (final_logit_softcapping)
};

enum class AttentionKind {
  Full,           // every earlier key
  SlidingWindow,  // the last `window` keys, the query's own included
};

// What one layer's attention computes; the architecture fills it from metadata.
struct LayerSpec {
  AttentionKind attention = AttentionKind::Full;
  int window = 0;  // keys per query of a SlidingWindow layer
  float rope_base = 10000.f;
  std::vector<float> rope_inv_freq;  // per dimension pair (head_dim / 2 values), scaling included
  float rope_mscale = 1.f;           // cos and sin are multiplied by it (YaRN)
};

// Null pointers are parts a family does not have.
struct LayerWeights {
  const TensorInfo* attn_norm;
  const TensorInfo *wq, *wk, *wv, *wo;
  const TensorInfo *bq = nullptr, *bk = nullptr, *bv = nullptr;
  const TensorInfo *q_norm = nullptr, *k_norm = nullptr;  // RMSNorm of each head of Q and K, before RoPE
  const TensorInfo* attn_post_norm = nullptr;  // RMSNorm of the attention output, before the residual add
  const TensorInfo* ffn_norm;
  const TensorInfo *w_gate, *w_up, *w_down;
  const TensorInfo* ffn_post_norm = nullptr;   // RMSNorm of the FFN output, before the residual add
};

struct Arch;  // src/model/arch.h

class Model {
 public:
  // Loads and validates; throws GgufError with a clear message on any problem
  // (unknown architecture, missing tensor, wrong shape, unsupported type, a
  // layer kind skim does not run yet).
  static std::unique_ptr<Model> load(const std::string& path, const ModelOptions& options = {});

  const ModelConfig& config() const { return cfg_; }
  const GgufFile& file() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  const LayerSpec& layer_spec(int i) const { return specs_[i]; }
  const Arch& arch() const { return *arch_; }
  const TensorInfo& token_embd() const { return *token_embd_; }
  const TensorInfo& output_norm() const { return *output_norm_; }
  const TensorInfo& output() const { return *output_; }

 private:
  Model() = default;
  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig cfg_;
  const Arch* arch_ = nullptr;
  std::vector<LayerWeights> layers_;
  std::vector<LayerSpec> specs_;
  const TensorInfo* token_embd_ = nullptr;
  const TensorInfo* output_norm_ = nullptr;
  const TensorInfo* output_ = nullptr;
};

}  // namespace skim
