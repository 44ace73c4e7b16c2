// A decoder-only transformer loaded from GGUF: its architecture family
// (llama, qwen2; src/model/arch.h) maps the metadata and tensors to a config,
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
  float rope_linear_scale = 1.f;  // positions are divided by this (rope.scaling.type = linear)
  RopeStyle rope_style = RopeStyle::Interleaved;
  bool qkv_bias = false;
  bool tied_output = false;
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
  std::vector<float> rope_inv_freq;  // per dimension pair (head_dim / 2 values)
};

struct LayerWeights {
  const TensorInfo* attn_norm;
  const TensorInfo *wq, *wk, *wv, *wo;
  const TensorInfo *bq = nullptr, *bk = nullptr, *bv = nullptr;
  const TensorInfo* ffn_norm;
  const TensorInfo *w_gate, *w_up, *w_down;
};

struct Arch;  // src/model/arch.h

class Model {
 public:
  // Loads and validates; throws GgufError with a clear message on any problem
  // (unknown architecture, missing tensor, wrong shape, unsupported type, a
  // layer kind skim does not run yet).
  static std::unique_ptr<Model> load(const std::string& path);

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
