// An architecture family: how its GGUF metadata and tensors map to the model,
// and which shared blocks (blocks.h) its layers run. A new family is one
// arch_*.cpp and its entry in model.cpp's list.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "skim/gguf.h"
#include "skim/model.h"

namespace skim {

struct Forward;

struct Arch {
  std::string_view name;  // general.architecture
  // Reads what the family adds to the hyperparameters shared by all (already
  // in c), then every layer's weights and spec.
  void (*load)(const GgufFile& f, ModelConfig& c, std::vector<LayerWeights>& layers, std::vector<LayerSpec>& specs);
  void (*layer)(Forward& f, int l);  // layer l of a micro-batch's forward pass
};

extern const Arch kLlamaArch, kQwen2Arch;  // arch_llama.cpp
extern const Arch kGemma3Arch;             // arch_gemma3.cpp

// Loading helpers for the families: a tensor of the given shape in a type skim
// computes with, and an F32 vector of n values.
const TensorInfo& require_weight(const GgufFile& f, const std::string& name, std::initializer_list<int64_t> dims);
const TensorInfo& require_f32(const GgufFile& f, const std::string& name, int64_t n);
// The weights every family's attention and gated FFN have, of the layer whose
// tensors start with `prefix` ("blk.N."): attn_norm, Q/K/V/O, ffn_norm, gate/up/down.
void require_attention_weights(const GgufFile& f, const ModelConfig& c, const std::string& prefix, LayerWeights& L);
void require_ffn_weights(const GgufFile& f, const ModelConfig& c, const std::string& prefix, LayerWeights& L);
// The spec of a layer with RoPE at `base` stretched by `scaling`: inverse
// frequencies per dimension pair of c.head_dim (rope_freqs.weight factors
// included) and the cos/sin scale.
LayerSpec rope_layer_spec(const GgufFile& f, const ModelConfig& c, float base, const RopeScaling& scaling);

}  // namespace skim
