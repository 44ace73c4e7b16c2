// A decoder-only transformer loaded from GGUF: one implementation for the
// llama family (llama, qwen2), configured entirely from metadata.
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
  float rope_base = 10000.f;
  float rope_linear_scale = 1.f;  // positions are divided by this (rope.scaling.type = linear)
  RopeStyle rope_style = RopeStyle::Interleaved;
  bool qkv_bias = false;
  bool tied_output = false;
};

struct LayerWeights {
  const TensorInfo* attn_norm;
  const TensorInfo *wq, *wk, *wv, *wo;
  const TensorInfo *bq = nullptr, *bk = nullptr, *bv = nullptr;
  const TensorInfo* ffn_norm;
  const TensorInfo *w_gate, *w_up, *w_down;
};

class Model {
 public:
  // Loads and validates; throws GgufError with a clear message on any problem
  // (unknown architecture, missing tensor, wrong shape, unsupported type).
  static std::unique_ptr<Model> load(const std::string& path);

  const ModelConfig& config() const { return cfg_; }
  const GgufFile& file() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  const TensorInfo& token_embd() const { return *token_embd_; }
  const TensorInfo& output_norm() const { return *output_norm_; }
  const TensorInfo& output() const { return *output_; }
  // Per-dimension-pair RoPE inverse frequencies (head_dim / 2 values).
  const std::vector<float>& rope_inv_freq() const { return rope_inv_freq_; }

 private:
  Model() = default;
  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig cfg_;
  std::vector<LayerWeights> layers_;
  const TensorInfo* token_embd_ = nullptr;
  const TensorInfo* output_norm_ = nullptr;
  const TensorInfo* output_ = nullptr;
  std::vector<float> rope_inv_freq_;
};

}  // namespace skim
