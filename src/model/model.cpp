#include "skim/model.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kernels/dequant.h"
#include "model/arch.h"

namespace skim {
namespace {
constexpr const Arch* kArchs[] = {&kLlamaArch, &kQwen2Arch, &kGemma3Arch};
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

void require_attention_weights(const GgufFile& f, const ModelConfig& c, const std::string& prefix, LayerWeights& L) {
  const int64_t d = c.n_embd, q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
  L.attn_norm = &require_f32(f, prefix + "attn_norm.weight", d);
  L.wq = &require_weight(f, prefix + "attn_q.weight", {d, q_dim});
  L.wk = &require_weight(f, prefix + "attn_k.weight", {d, kv_dim});
  L.wv = &require_weight(f, prefix + "attn_v.weight", {d, kv_dim});
  L.wo = &require_weight(f, prefix + "attn_output.weight", {q_dim, d});
}

void require_ffn_weights(const GgufFile& f, const ModelConfig& c, const std::string& prefix, LayerWeights& L) {
  const int64_t d = c.n_embd;
  L.ffn_norm = &require_f32(f, prefix + "ffn_norm.weight", d);
  L.w_gate = &require_weight(f, prefix + "ffn_gate.weight", {d, c.n_ff});
  L.w_up = &require_weight(f, prefix + "ffn_up.weight", {d, c.n_ff});
  L.w_down = &require_weight(f, prefix + "ffn_down.weight", {c.n_ff, d});
}

// theta_i = base^(-2i/d), divided by llama 3 style per-pair factors, then
// stretched as ggml's rope_yarn does (every step is linear in the position,
// so it folds into the frequency).
LayerSpec rope_layer_spec(const GgufFile& f, const ModelConfig& c, float base, const RopeScaling& scaling) {
  const int hd = c.head_dim;
  const TensorInfo* freq_factors = f.tensor("rope_freqs.weight");
  if (freq_factors && (freq_factors->type != GgmlType::F32 || freq_factors->nelements() != hd / 2))
    throw GgufError(fmt::format("{}: rope_freqs.weight must be F32 with {} values", f.path(), hd / 2));
  LayerSpec spec;
  spec.rope_base = base;
  spec.rope_inv_freq.resize(static_cast<size_t>(hd / 2));
  const double freq_scale = 1.0 / scaling.factor;
  // YaRN's ramp between the dimensions turning beta_fast and beta_slow times within orig_ctx.
  const auto corr_dim = [&](double turns) {
    return hd * std::log(scaling.orig_ctx / (turns * 2 * M_PI)) / (2 * std::log(static_cast<double>(base)));
  };
  const bool yarn = scaling.kind == RopeScalingKind::Yarn && scaling.ext_factor != 0.f;
  const double low = yarn ? std::max(0.0, std::floor(corr_dim(scaling.beta_fast))) : 0;
  const double high = yarn ? std::min(hd - 1.0, std::ceil(corr_dim(scaling.beta_slow))) : 0;
  for (int i = 0; i < hd / 2; ++i) {
    double extrap = std::pow(static_cast<double>(base), -2.0 * i / static_cast<double>(hd));
    if (freq_factors) extrap /= reinterpret_cast<const float*>(freq_factors->data)[i];
    double inv = extrap;
    if (scaling.kind != RopeScalingKind::None) inv = freq_scale * extrap;
    if (yarn) {
      const double ramp = (1 - std::clamp((i - low) / std::max(0.001, high - low), 0.0, 1.0)) * scaling.ext_factor;
      inv = inv * (1 - ramp) + extrap * ramp;
    }
    spec.rope_inv_freq[static_cast<size_t>(i)] = static_cast<float>(inv);
  }
  spec.rope_mscale = scaling.kind == RopeScalingKind::None ? 1.f : scaling.mscale;
  return spec;
}

namespace {

// The model's rope scaling (GGUF rope.scaling.*) with the user's overrides, as llama.cpp resolves them.
RopeScaling resolve_rope_scaling(const GgufFile& f, const std::string& p, int n_ctx_train, const ModelOptions& o) {
  const std::string path = f.path();
  const auto kind_of = [&](const std::string& name) {
    if (name == "none") return RopeScalingKind::None;
    if (name == "linear") return RopeScalingKind::Linear;
    if (name == "yarn") return RopeScalingKind::Yarn;
    throw GgufError(fmt::format("{}: RoPE scaling '{}' is not supported (none, linear, yarn)", path, name));
  };
  RopeScaling s;
  s.kind = kind_of(o.rope_scaling.empty() ? f.get_string(p + "rope.scaling.type", "none") : o.rope_scaling);
  s.factor = o.rope_scale > 0 ? o.rope_scale : static_cast<float>(f.get_float(p + "rope.scaling.factor", 1.0));
  if (!(s.factor > 0) || !std::isfinite(s.factor)) throw GgufError(fmt::format("{}: bad rope.scaling.factor {}", path, s.factor));
  if (s.kind == RopeScalingKind::None) s.factor = 1.f;  // never scale when the type is none
  s.orig_ctx = o.yarn_orig_ctx > 0 ? o.yarn_orig_ctx
                                   : static_cast<int>(f.get_int(p + "rope.scaling.original_context_length", n_ctx_train));
  if (s.orig_ctx <= 0) throw GgufError(fmt::format("{}: bad rope.scaling.original_context_length", path));
  s.ext_factor = o.yarn_ext_factor >= 0 ? o.yarn_ext_factor : s.kind == RopeScalingKind::Yarn ? 1.f : 0.f;
  if (o.yarn_beta_fast >= 0) s.beta_fast = o.yarn_beta_fast;
  if (o.yarn_beta_slow >= 0) s.beta_slow = o.yarn_beta_slow;
  // cos/sin scale: YaRN's attention temperature 0.1 ln(factor) + 1 (or the
  // ratio of two such terms with yarn_log_multiplier), times rope.scaling.attn_factor.
  const auto mscale_of = [&](float m) { return s.factor <= 1.f ? 1.f : 0.1f * m * std::log(s.factor) + 1.f; };
  float attn = o.yarn_attn_factor >= 0 ? o.yarn_attn_factor : 1.f;
  if (s.ext_factor != 0.f && o.yarn_attn_factor < 0) {
    const float log_mul = static_cast<float>(f.get_float(p + "rope.scaling.yarn_log_multiplier", 0.0));
    attn = log_mul != 0.f ? mscale_of(1.f) / mscale_of(log_mul) : mscale_of(1.f);
    attn /= 1.f + 0.1f * std::log(s.factor);  // rope_yarn multiplies this back in below
  }
  attn *= static_cast<float>(f.get_float(p + "rope.scaling.attn_factor", 1.0));
  s.mscale = s.ext_factor != 0.f ? attn * (1.f + 0.1f * std::log(s.factor)) : attn;
  return s;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, const ModelOptions& options) {
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

  c.rope_scaling = resolve_rope_scaling(f, p, c.n_ctx_train, options);

  const int64_t d = c.n_embd;
  const TensorInfo* embd = f.tensor("token_embd.weight");
  if (!embd || embd->dims.size() != 2) throw GgufError(fmt::format("{}: missing or malformed token_embd.weight", path));
  c.n_vocab = static_cast<int>(embd->dims[1]);
  m->token_embd_ = &require_weight(f, "token_embd.weight", {d, c.n_vocab});
  m->output_norm_ = &require_f32(f, "output_norm.weight", d);
  c.tied_output = f.tensor("output.weight") == nullptr;
  m->output_ = c.tied_output ? m->token_embd_ : &require_weight(f, "output.weight", {d, c.n_vocab});

  m->arch_->load(f, c, m->layers_, m->specs_);

  m->tokenizer_ = Tokenizer::from_gguf(f);
  if (m->tokenizer_->n_vocab() != c.n_vocab)
    throw GgufError(fmt::format("{}: vocabulary has {} tokens but the embedding has {} rows", path,
                                m->tokenizer_->n_vocab(), c.n_vocab));
  return m;
}

}  // namespace skim
