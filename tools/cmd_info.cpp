// skim info: what a GGUF model is (architecture, sizes, tensor types, context).
#include <cstdio>
#include <map>
#include <memory>

#include <fmt/format.h>

#include "common.h"
#include "skim/attention.h"
#include "skim/kv.h"
#include "skim/model.h"

namespace skim::cli {
namespace {

struct InfoOptions : SharedOptions {
  bool metadata = false;
  bool list_attn = false;
  bool list_kv = false;
};

void list_attention_methods() {
  for (const AttentionMethodInfo& m : attention_methods()) {
    fmt::print("{:<14} {}\n", m.name, m.summary);
    for (const AttentionParamInfo& p : m.params)
      fmt::print("  {:<14} {:<8} {}\n", p.name, p.default_value.empty() ? "''" : p.default_value, p.help);
  }
  fmt::print("\nevery method also takes these keys (a method's own default above wins):\n");
  for (const AttentionParamInfo& p : attention_policy_params())
    fmt::print("  {:<14} {:<8} {}\n", p.name, p.default_value.empty() ? "''" : p.default_value, p.help);
  fmt::print("\nselect one with --attn NAME[:key=value,...], e.g. --attn streaming:sink=64,local=2048\n");
}

void list_kv_types() {
  fmt::print("{:<6} {:>9} {:>9}  {}\n", "type", "B/row@64", "B/row@128", "what a K or V row holds");
  for (const KvTypeInfo& t : kv_cache_types())
    fmt::print("{:<6} {:>9} {:>9}  {}\n", t.name, t.row_bytes_64, t.row_bytes_128, t.summary);
  fmt::print("\nselect with -ctk TYPE -ctv TYPE; --kv-f16-layers 0,-1 keeps layers in f16; --kv-rotation 0 and\n"
             "--kv-center-keys 0 turn off the Hadamard rotation and the key centering of quantized caches\n\n");
  fmt::print("KV selection policies (--kv NAME[:key=value,...]):\n");
  for (const AttentionMethodInfo& m : kv_policies()) {
    fmt::print("{:<14} {}\n", m.name, m.summary);
    for (const AttentionParamInfo& p : m.params)
      fmt::print("  {:<14} {:<8} {}\n", p.name, p.default_value.empty() ? "''" : p.default_value, p.help);
  }
}

void info(const InfoOptions& o) {
  if (o.list_attn) return list_attention_methods();
  if (o.list_kv) return list_kv_types();
  const std::string path = resolve_model(o);
  std::unique_ptr<Model> model = Model::load(path, o.model_options);
  const GgufFile& f = model->file();
  const ModelConfig& c = model->config();

  std::map<std::string, std::pair<int, int64_t>> histogram;  // type -> (tensors, elements)
  int64_t n_params = 0;
  for (const TensorInfo& t : f.tensors()) {
    auto& h = histogram[type_name(static_cast<uint32_t>(t.type))];
    ++h.first;
    h.second += t.nelements();
    n_params += t.nelements();
  }
  fmt::print("file:            {}\n", path);
  fmt::print("size:            {:.1f} MiB, GGUF v{}, {} tensors, {} metadata keys\n", f.file_size() / 1048576.0,
             f.version(), f.tensors().size(), f.metadata().size());
  fmt::print("name:            {}\n", c.name);
  fmt::print("architecture:    {}\n", c.arch);
  fmt::print("parameters:      {:.1f} M\n", n_params / 1e6);
  fmt::print("layers:          {}\n", c.n_layer);
  fmt::print("embedding:       {}\n", c.n_embd);
  fmt::print("heads:           {} query, {} KV (GQA {}), head dim {}\n", c.n_head, c.n_head_kv, c.n_head / c.n_head_kv,
             c.head_dim);
  fmt::print("feed-forward:    {}\n", c.n_ff);
  fmt::print("vocabulary:      {} ({} pre-tokenizer)\n", c.n_vocab, model->tokenizer().pre_tokenizer());
  fmt::print("context length:  {}\n", c.n_ctx_train);
  fmt::print("rope:            base {}, {}, scaling {} (factor {}, original context {}, mscale {:.4f})\n", c.rope_base,
             c.rope_style == RopeStyle::Interleaved ? "interleaved pairs" : "half-split pairs",
             rope_scaling_name(c.rope_scaling.kind), c.rope_scaling.factor, c.rope_scaling.orig_ctx,
             c.rope_scaling.mscale);
  int windowed = 0, first_windowed = -1;
  for (int l = 0; l < c.n_layer; ++l)
    if (model->layer_spec(l).attention == AttentionKind::SlidingWindow) {
      ++windowed;
      if (first_windowed < 0) first_windowed = l;
    }
  if (windowed > 0)
    fmt::print("attention:       {} sliding-window layers (window {}, RoPE base {}), {} full\n", windowed,
               model->layer_spec(first_windowed).window, model->layer_spec(first_windowed).rope_base, c.n_layer - windowed);
  fmt::print("output:          {}\n", c.tied_output ? "tied to token embedding" : "separate");
  fmt::print("tensor types:\n");
  for (const auto& [name, h] : histogram)
    fmt::print("  {:<6} {:4} tensors  {:8.2f} M elements\n", name, h.first, h.second / 1e6);
  if (o.metadata) {
    fmt::print("metadata:\n");
    for (const auto& [key, value] : f.metadata()) fmt::print("  {} = {}\n", key, value.to_display());
  }
}

}  // namespace

void register_info(CLI::App& app) {
  auto o = std::make_shared<InfoOptions>();
  CLI::App* cmd = app.add_subcommand("info", "describe a model: architecture, sizes, tensor types, context");
  add_shared_options(*cmd, *o, {{Opt::Model}, {Opt::Threads}, {Opt::Rope}});
  cmd->add_flag("--metadata", o->metadata, "also print every metadata key");
  cmd->add_flag("--attn", o->list_attn, "list the attention methods, their parameters and defaults (no model needed)");
  cmd->add_flag("--kv", o->list_kv, "list the KV cache formats and selection policies (no model needed)");
  cmd->callback([o] { info(*o); });
}

}  // namespace skim::cli
