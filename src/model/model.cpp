#include "skim/model.h"

#include <cmath>

#include <fmt/format.h>

#include "kernels/dequant.h"

namespace skim {
namespace {

// Architectures sharing the llama block (RMSNorm, RoPE, GQA, SwiGLU); they
// differ only in what metadata says and in optional tensors.
struct ArchTraits {
  const char* name;
  RopeStyle rope_style;
  bool qkv_bias;
};
constexpr ArchTraits kArchs[] = {
    {"llama", RopeStyle::Interleaved, false},
    {"qwen2", RopeStyle::HalfSplit, true},
};

const TensorInfo& require_weight(const GgufFile& f, const std::string& name, std::initializer_list<int64_t> dims) {
  const TensorInfo& t = f.require(name, dims);
  if (!kernels::can_dequantize(t.type))
    throw GgufError(fmt::format("{}: tensor '{}' has type {}, which skim cannot compute with", f.path(), name,
                                type_name(static_cast<uint32_t>(t.type))));
  return t;
}

const TensorInfo& require_f32(const GgufFile& f, const std::string& name, int64_t n) {
  const TensorInfo& t = f.require(name, {n});
  if (t.type != GgmlType::F32)
    throw GgufError(fmt::format("{}: tensor '{}' must be F32, is {}", f.path(), name, type_name(static_cast<uint32_t>(t.type))));
  return t;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = GgufFile::open(path);
  const GgufFile& f = *m->file_;
  ModelConfig& c = m->cfg_;

  c.arch = f.get_string("general.architecture");
  const ArchTraits* arch = nullptr;
  for (const ArchTraits& a : kArchs)
    if (c.arch == a.name) arch = &a;
  if (!arch) throw GgufError(fmt::format("{}: architecture '{}' is not supported (skim runs: llama, qwen2)", path, c.arch));

  const std::string p = c.arch + ".";
  c.name = f.get_string("general.name", c.arch);
  c.n_layer = static_cast<int>(f.get_int(p + "block_count"));
  c.n_embd = static_cast<int>(f.get_int(p + "embedding_length"));
  c.n_head = static_cast<int>(f.get_int(p + "attention.head_count"));
  c.n_head_kv = static_cast<int>(f.get_int(p + "attention.head_count_kv", c.n_head));
  c.n_ff = static_cast<int>(f.get_int(p + "feed_forward_length"));
  c.n_ctx_train = static_cast<int>(f.get_int(p + "context_length"));
  c.rms_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rope_base = static_cast<float>(f.get_float(p + "rope.freq_base", 10000.0));
  if (c.n_layer <= 0 || c.n_embd <= 0 || c.n_head <= 0 || c.n_head_kv <= 0 || c.n_ff <= 0 || c.n_ctx_train <= 0)
    throw GgufError(fmt::format("{}: non-positive model dimensions in metadata", path));
  if (c.n_embd % c.n_head != 0 || c.n_head % c.n_head_kv != 0)
    throw GgufError(fmt::format("{}: {} heads do not divide embedding {} or are not a multiple of {} KV heads", path,
                                c.n_head, c.n_embd, c.n_head_kv));
  c.head_dim = static_cast<int>(f.get_int(p + "attention.key_length", c.n_embd / c.n_head));
  if (c.head_dim % 2 != 0) throw GgufError(fmt::format("{}: odd head dimension {}", path, c.head_dim));
  const int rope_dims = static_cast<int>(f.get_int(p + "rope.dimension_count", c.head_dim));
  if (rope_dims != c.head_dim)
    throw GgufError(fmt::format("{}: partial RoPE ({} of {} dims) is not supported", path, rope_dims, c.head_dim));
  c.rope_style = arch->rope_style;
  c.qkv_bias = arch->qkv_bias;

  const std::string scaling = f.get_string(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    c.rope_linear_scale = static_cast<float>(f.get_float(p + "rope.scaling.factor", 1.0));
    if (!(c.rope_linear_scale > 0)) throw GgufError(fmt::format("{}: bad rope.scaling.factor", path));
  } else if (scaling != "none") {
    throw GgufError(fmt::format("{}: RoPE scaling '{}' is not supported (none, linear)", path, scaling));
  }

  const int64_t d = c.n_embd, hd = c.head_dim, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;
  const TensorInfo* embd = f.tensor("token_embd.weight");
  if (!embd || embd->dims.size() != 2) throw GgufError(fmt::format("{}: missing or malformed token_embd.weight", path));
  c.n_vocab = static_cast<int>(embd->dims[1]);
  m->token_embd_ = &require_weight(f, "token_embd.weight", {d, c.n_vocab});
  m->output_norm_ = &require_f32(f, "output_norm.weight", d);
  c.tied_output = f.tensor("output.weight") == nullptr;
  m->output_ = c.tied_output ? m->token_embd_ : &require_weight(f, "output.weight", {d, c.n_vocab});

  for (int i = 0; i < c.n_layer; ++i) {
    const std::string b = fmt::format("blk.{}.", i);
    LayerWeights L{};
    L.attn_norm = &require_f32(f, b + "attn_norm.weight", d);
    L.wq = &require_weight(f, b + "attn_q.weight", {d, q_dim});
    L.wk = &require_weight(f, b + "attn_k.weight", {d, kv_dim});
    L.wv = &require_weight(f, b + "attn_v.weight", {d, kv_dim});
    L.wo = &require_weight(f, b + "attn_output.weight", {q_dim, d});
    if (c.qkv_bias) {
      L.bq = &require_f32(f, b + "attn_q.bias", q_dim);
      L.bk = &require_f32(f, b + "attn_k.bias", kv_dim);
      L.bv = &require_f32(f, b + "attn_v.bias", kv_dim);
    }
    L.ffn_norm = &require_f32(f, b + "ffn_norm.weight", d);
    L.w_gate = &require_weight(f, b + "ffn_gate.weight", {d, c.n_ff});
    L.w_up = &require_weight(f, b + "ffn_up.weight", {d, c.n_ff});
    L.w_down = &require_weight(f, b + "ffn_down.weight", {c.n_ff, d});
    m->layers_.push_back(L);
  }

  // theta_i = base^(-2i/d); llama 3 style per-pair factors divide the frequency.
  const TensorInfo* freq_factors = f.tensor("rope_freqs.weight");
  if (freq_factors && (freq_factors->type != GgmlType::F32 || freq_factors->nelements() != hd / 2))
    throw GgufError(fmt::format("{}: rope_freqs.weight must be F32 with {} values", path, hd / 2));
  m->rope_inv_freq_.resize(hd / 2);
  for (int i = 0; i < hd / 2; ++i) {
    double inv = std::pow(static_cast<double>(c.rope_base), -2.0 * i / static_cast<double>(hd)) / c.rope_linear_scale;
    if (freq_factors) inv /= reinterpret_cast<const float*>(freq_factors->data)[i];
    m->rope_inv_freq_[i] = static_cast<float>(inv);
  }

  m->tokenizer_ = Tokenizer::from_gguf(f);
  if (m->tokenizer_->n_vocab() != c.n_vocab)
    throw GgufError(fmt::format("{}: vocabulary has {} tokens but the embedding has {} rows", path,
                                m->tokenizer_->n_vocab(), c.n_vocab));
  return m;
}

}  // namespace skim
