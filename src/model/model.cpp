#include "skim/model.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kernels/dequant.h"
#include "model/arch.h"

namespace skim {
namespace {
constexpr const Arch* kArchs[] = {&kLlamaArch, &kQwen2Arch};
}  // namespace

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

// theta_i = base^(-2i/d); llama 3 style per-pair factors divide the frequency.
std::vector<float> rope_inv_freq(const GgufFile& f, const ModelConfig& c, float base) {
  const int hd = c.head_dim;
  const TensorInfo* freq_factors = f.tensor("rope_freqs.weight");
  if (freq_factors && (freq_factors->type != GgmlType::F32 || freq_factors->nelements() != hd / 2))
    throw GgufError(fmt::format("{}: rope_freqs.weight must be F32 with {} values", f.path(), hd / 2));
  std::vector<float> inv_freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) {
    double inv = std::pow(static_cast<double>(base), -2.0 * i / static_cast<double>(hd)) / c.rope_linear_scale;
    if (freq_factors) inv /= reinterpret_cast<const float*>(freq_factors->data)[i];
    inv_freq[i] = static_cast<float>(inv);
  }
  return inv_freq;
}

std::unique_ptr<Model> Model::load(const std::string& path) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = GgufFile::open(path);
  const GgufFile& f = *m->file_;
  ModelConfig& c = m->cfg_;

  c.arch = f.get_string("general.architecture");
  for (const Arch* a : kArchs)
    if (c.arch == a->name) m->arch_ = a;
  if (!m->arch_) {
    std::vector<std::string_view> names;
    for (const Arch* a : kArchs) names.push_back(a->name);
    throw GgufError(fmt::format("{}: architecture '{}' is not supported (skim runs: {})", path, c.arch, fmt::join(names, ", ")));
  }

  // The hyperparameters every family has, under GGUF's "<arch>." keys.
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

  const std::string scaling = f.get_string(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    c.rope_linear_scale = static_cast<float>(f.get_float(p + "rope.scaling.factor", 1.0));
    if (!(c.rope_linear_scale > 0)) throw GgufError(fmt::format("{}: bad rope.scaling.factor", path));
  } else if (scaling != "none") {
    throw GgufError(fmt::format("{}: RoPE scaling '{}' is not supported (none, linear)", path, scaling));
  }

  const int64_t d = c.n_embd;
  const TensorInfo* embd = f.tensor("token_embd.weight");
  if (!embd || embd->dims.size() != 2) throw GgufError(fmt::format("{}: missing or malformed token_embd.weight", path));
  c.n_vocab = static_cast<int>(embd->dims[1]);
  m->token_embd_ = &require_weight(f, "token_embd.weight", {d, c.n_vocab});
  m->output_norm_ = &require_f32(f, "output_norm.weight", d);
  c.tied_output = f.tensor("output.weight") == nullptr;
  m->output_ = c.tied_output ? m->token_embd_ : &require_weight(f, "output.weight", {d, c.n_vocab});

  m->arch_->load(f, c, m->layers_, m->specs_);
  // The forward pass runs full attention only: a layer it would run wrong is refused here.
  for (int l = 0; l < c.n_layer; ++l)
    if (m->specs_[l].attention != AttentionKind::Full)
      throw GgufError(fmt::format("{}: layer {} uses sliding-window attention (window {}), which skim does not run yet", path,
                                  l, m->specs_[l].window));

  m->tokenizer_ = Tokenizer::from_gguf(f);
  if (m->tokenizer_->n_vocab() != c.n_vocab)
    throw GgufError(fmt::format("{}: vocabulary has {} tokens but the embedding has {} rows", path,
                                m->tokenizer_->n_vocab(), c.n_vocab));
  return m;
}

}  // namespace skim
