// Context::save_sequence / load_sequence: the file is kv/kv_file's; this part
// says what must match for a saved cache to be valid here.
#include <xxhash.h>

#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

#include "kv/kv_file.h"
#include "kv/kv_sequence.h"
#include "skim/context.h"

namespace skim {

// Everything that changes what the cache rows hold: the model file itself
// (weights, tokenizer, RoPE metadata), the KV layout and the methods that
// computed the rows. The keys are compared one by one at load.
std::map<std::string, std::string> Context::cache_fingerprint(int seq) const {
  const ModelConfig& c = model_.config();
  if (model_hash_.empty())
    model_hash_ = fmt::format("{:016x}", XXH3_64bits(model_.file().file_bytes(), model_.file().file_size()));
  return {
      {"skim.model_hash", model_hash_},
      {"skim.arch", fmt::format("{} layers {} kv_heads {} head_dim {}", c.arch, c.n_layer, c.n_head_kv, c.head_dim)},
      {"skim.rope", fmt::format("base {} style {} scaling {} factor {} orig_ctx {} ext {} beta {} {} mscale {}", c.rope_base,
                                static_cast<int>(c.rope_style), static_cast<int>(c.rope_scaling.kind), c.rope_scaling.factor,
                                c.rope_scaling.orig_ctx, c.rope_scaling.ext_factor, c.rope_scaling.beta_fast,
                                c.rope_scaling.beta_slow, c.rope_scaling.mscale)},
      {"skim.kv", kv_layout(kv_types(seq).first, kv_types(seq).second)},
      {"skim.attention", attention(seq)},
      {"skim.kv_policy", kv_policy(seq)},
      {"skim.dca", fmt::format("chunk {} local {}", params_.dca_chunk, params_.dca_chunk ? params_.dca_local : 0)},
  };
}

std::string Context::kv_layout(const std::string& k, const std::string& v) const {
  std::string f16_layers;
  for (int l : params_.kv_f16_layers) f16_layers += fmt::format("{}{}", f16_layers.empty() ? "" : ",", l);
  // Sink copies exist only beside quantized rows: elsewhere the flag changes nothing.
  const auto quantized = [](const std::string& type) { return type != "f16" && type != "bf16" && type != "f32"; };
  const bool sinks = params_.kv_f16_sinks > 0 && (quantized(k) || quantized(v));
  return fmt::format("k {} v {} f16_layers [{}] rotation {} center_keys {}{}", k, v, f16_layers, params_.kv_rotation,
                     params_.kv_center_keys, sinks ? fmt::format(" f16_sinks {}", params_.kv_f16_sinks) : "");
}

size_t Context::save_sequence(int seq, std::span<const int32_t> tokens, const std::string& path,
                              const std::map<std::string, std::string>& extra) {
  if (!kv_reusable(seq))
    throw std::runtime_error(fmt::format("sequence {}: a KV policy evicted rows, chose their precision or accumulates the attention its rows "
                                         "receive, so its cache is not a function of its tokens and is not saved", seq));
  std::map<std::string, std::string> meta = extra;
  for (auto& [k, v] : cache_fingerprint(seq)) meta[k] = v;
  meta["skim.model_file"] = std::filesystem::path(model_.file().path()).filename().string();
  return kv::save_kv_file(path, sequence(seq), tokens, meta);
}

Context::SavedSequence Context::load_sequence(int seq, const std::string& path) {
  kv::KvFile file = kv::read_kv_file(path);
  const std::map<std::string, std::string> here = cache_fingerprint(seq);
  auto in_file = [&](const std::string& key) {
    const auto it = file.meta.find(key);
    return it == file.meta.end() ? std::string("(missing)") : it->second;
  };
  // Another model first: its settings would differ too, but that is the news.
  if (in_file("skim.model_hash") != here.at("skim.model_hash"))
    throw std::runtime_error(fmt::format("KV cache file {} was written for another model file ({}, hash {}; this one hashes {})",
                                         path, in_file("skim.model_file"), in_file("skim.model_hash"), here.at("skim.model_hash")));
  for (const auto& [key, want] : here)
    if (in_file(key) != want)
      throw std::runtime_error(fmt::format("KV cache file {} was written with {} = '{}'; this run has '{}'", path,
                                           key.substr(5), in_file(key), want));
  kv::KvSequence& kv = sequence(seq);
  try {
    kv::load_kv_file(file, kv);
    release_window_pages(kv);
  } catch (...) {
    kv.clear();
    throw;
  }
  return {std::move(file.tokens), std::move(file.meta), file.bytes.size()};
}

}  // namespace skim
