#include "common.h"

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <variant>

#include <fmt/format.h>

#include "skim/gemm.h"
#include "skim/paths.h"

namespace skim::cli {

void use_one_line_errors(CLI::App& app) {
  app.failure_message([](const CLI::App*, const CLI::Error& e) { return fmt::format("error: {}\n", e.what()); });
}

namespace {
// One row per shared flag. llama.cpp's -ub is rewritten to --ubatch-size in main.cpp: CLI11 has
// no multi-letter single-dash names.
struct SharedOption {
  Opt opt;
  const char* names;
  const char* help;
  std::variant<std::string SharedOptions::*, int SharedOptions::*, std::vector<std::string> SharedOptions::*> field;
  std::optional<Range> range;        // of a number, unless a command's Use narrows it
  const char* zero_means = nullptr;  // told in the help where the range takes 0
};
// 1024 threads at most, as skim-peer's --threads.
const SharedOption kSharedOptions[] = {
    {Opt::Model, "-m,--model", "GGUF model file (default: the cached default model, smollm2-135m)", &SharedOptions::model},
    {Opt::Threads, "-t,--threads", "threads", &SharedOptions::threads, Range{0, 1024}, "all cores"},
    {Opt::Ctx, "-c,--ctx-size", "context size in tokens", &SharedOptions::n_ctx, Range{0, kMaxTokens}, "the model's"},
    {Opt::Ubatch, "--ubatch-size", "prefill micro-batch size", &SharedOptions::n_ubatch, Range{1, kMaxTokens}},
    {Opt::Attn, "--attn", "attention method NAME[:key=value,...] (skim info --attn lists them)", &SharedOptions::attn},
    {Opt::Gemm, "--gemm", "arithmetic of the prefill weight GEMMs: int8 (activations rounded per 32), f32, or bf16 (operands rounded to bf16)",
     &SharedOptions::gemm},
    {Opt::AttnMath, "--attn-math", "arithmetic of the prefill attention kernel: auto (bf16 where this CPU's bf16 dot product is fast), f32, or bf16 (Q, K, P, V rounded to bf16, f32 sums)",
     &SharedOptions::attn_math},
    {Opt::KvTypeK, "--cache-type-k", "format of the K cache (-ctk; skim info --kv lists them)", &SharedOptions::kv_type_k},
    {Opt::KvTypeV, "--cache-type-v", "format of the V cache (-ctv)", &SharedOptions::kv_type_v},
    {Opt::KvF16Layers, "--kv-f16-layers", "layers whose K/V stay f16 whatever -ctk/-ctv say, e.g. 0,-1 (-1: the last)",
     &SharedOptions::kv_f16_layers},
    {Opt::KvF16Sinks, "--kv-f16-sinks", "the first N rows of layers with quantized K/V also kept in f16 (the attention sinks)",
     &SharedOptions::kv_f16_sinks, Range{0, 4096}},
    {Opt::KvRotation, "--kv-rotation", "Hadamard-rotate Q/K/V of quantized K/V as llama.cpp does (0: off)",
     &SharedOptions::kv_rotation, Range{0, 1}},
    {Opt::KvCenterKeys, "--kv-center-keys", "store quantized keys minus the sequence's mean key (0: off)",
     &SharedOptions::kv_center_keys, Range{0, 1}},
    {Opt::KvPolicy, "--kv", "KV selection policy NAME[:key=value,...], e.g. snapkv:keep=0.5 (skim info --kv lists them)",
     &SharedOptions::kv_policy},
    {Opt::Dca, "--dca", "dual chunk attention with chunks of N tokens, at most the trained context: runs past it",
     &SharedOptions::dca_chunk, Range{0, kMaxTokens}, "off"},
    {Opt::DcaLocal, "--dca-local", "dual chunk attention: keys of the previous chunk seen at their true distance (-1: N/16)",
     &SharedOptions::dca_local, Range{-1, kMaxTokens}},
};
}  // namespace

namespace {
void add_rope_options(CLI::App& cmd, ModelOptions& m) {
  cmd.add_option("--rope-scaling", m.rope_scaling, "RoPE scaling: none, linear or yarn (default: the model's rope.scaling.type)")
      ->check(CLI::IsMember({"none", "linear", "yarn"}));
  cmd.add_option("--rope-scale", m.rope_scale, "RoPE context scaling factor: stretch the trained context N times (default: the model's)")
      ->check(in_range(1e-3f, 1e3f));
  cmd.add_option("--yarn-orig-ctx", m.yarn_orig_ctx, "YaRN: original context size of the model (default: its trained context)")
      ->check(in_range(1, kMaxTokens));
  cmd.add_option("--yarn-ext-factor", m.yarn_ext_factor, "YaRN: extrapolation mix factor (default: 1 with yarn; 0 = full interpolation)")
      ->check(in_range(0.f, 1e3f));
  cmd.add_option("--yarn-attn-factor", m.yarn_attn_factor, "YaRN: scale of the attention magnitude (default: 0.1 ln(factor) + 1)")
      ->check(in_range(0.f, 1e3f));
  cmd.add_option("--yarn-beta-fast", m.yarn_beta_fast, "YaRN: low correction dim or beta (default: 32)")->check(in_range(0.f, 1e4f));
  cmd.add_option("--yarn-beta-slow", m.yarn_beta_slow, "YaRN: high correction dim or alpha (default: 1)")->check(in_range(0.f, 1e4f));
}
}  // namespace

void add_shared_options(CLI::App& cmd, SharedOptions& o, std::initializer_list<Use> uses) {
  for (const Use& use : uses) {
    if (use.opt == Opt::Rope) {
      add_rope_options(cmd, o.model_options);
      continue;
    }
    const SharedOption& flag = *std::ranges::find(kSharedOptions, use.opt, &SharedOption::opt);
    const std::optional<Range> range = use.range ? use.range : flag.range;
    std::string help = flag.help;
    if (flag.zero_means && range->min <= 0) help += fmt::format(" (0: {})", flag.zero_means);
    CLI::Option* opt = std::visit([&](auto field) { return cmd.add_option(flag.names, o.*field, help); }, flag.field);
    if (range) opt->check(in_range(range->min, range->max))->capture_default_str();
    // A list takes the words up to the next flag, which may recur; taken once, it reads one word as a string does.
    if (std::holds_alternative<std::vector<std::string> SharedOptions::*>(flag.field) && !use.repeatable)
      opt->expected(1)->allow_extra_args(false);
    if (use.opt == Opt::Gemm) {
      opt->check(CLI::IsMember(gemm_paths()))->capture_default_str();
      opt->each([](const std::string& name) { set_gemm(name); });
    }
    if (use.opt == Opt::AttnMath) {
      opt->check(CLI::IsMember(attention_math_names()))->capture_default_str();
      opt->each([](const std::string& name) { set_attention_math(name); });
    }
  }
}

void add_shared_options_with_kv(CLI::App& cmd, SharedOptions& o, std::initializer_list<Use> uses) {
  add_shared_options(cmd, o, uses);
  for (Opt kv : kKvOpts) add_shared_options(cmd, o, {{kv}});
}

void apply_kv_options(const SharedOptions& o, ContextParams& cp) {
  cp.kv_type_k = o.kv_type_k;
  cp.kv_type_v = o.kv_type_v;
  cp.kv_rotation = o.kv_rotation != 0;
  cp.kv_center_keys = o.kv_center_keys != 0;
  cp.kv_policy = o.kv_policy;
  cp.kv_f16_sinks = o.kv_f16_sinks;
  cp.dca_chunk = o.dca_chunk;
  cp.dca_local = o.dca_local;
  std::stringstream ss(o.kv_f16_layers);
  std::string item;
  cp.kv_f16_layers.clear();
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long layer = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || layer < -4096 || layer > 4096)
      throw std::runtime_error(fmt::format("--kv-f16-layers: '{}' is not a layer index", item));
    cp.kv_f16_layers.push_back(static_cast<int>(layer));
  }
}

std::string kv_held_summary(const Context& ctx, const SharedOptions& o) {
  const double held = ctx.kv_held_bytes() / 1048576.0, full = ctx.kv_full_f16_bytes() / 1048576.0;
  int64_t past = 0, cached = 0, fewest = 0, most = 0, copied = 0;
  for (int seq = 0; seq < ctx.n_seq_max(); ++seq) {
    past += ctx.n_past(seq);
    for (int64_t r : ctx.kv_f16_copied_rows(seq)) copied += r;
    const std::vector<int64_t> rows = ctx.kv_layer_rows(seq);
    int64_t sum = 0;
    for (int64_t r : rows) sum += r;
    cached += sum / static_cast<int64_t>(rows.size());
    fewest += *std::min_element(rows.begin(), rows.end());
    most += *std::max_element(rows.begin(), rows.end());
  }
  // Per-layer budgets and sliding windows hold different rows per layer: the mean, and the range.
  const std::string spread = fewest == most ? "" : fmt::format(" (per layer {}..{})", fewest, most);
  // Rows read from f16 copies beside their quantized pages (sinks, ARKV's originals), per layer on average.
  const int64_t per_layer = ctx.model().config().n_layer * ctx.model().config().n_head_kv;
  const std::string copies = copied > 0 ? fmt::format(", {} of them f16 copies", copied / per_layer) : "";
  return fmt::format("KV cache {:.1f} MiB held for {}{}{} of {} tokens (K {}, V {}{}{}): {:.2f}x less than the full f16 cache "
                     "({:.1f} MiB), cap {:.1f} MiB",
                     held, cached, spread, copies, past, o.kv_type_k, o.kv_type_v,
                     (o.kv_f16_layers.empty() ? "" : ", f16 layers " + o.kv_f16_layers) +
                         (o.kv_f16_sinks > 0 ? fmt::format(", {} f16 sink rows", o.kv_f16_sinks) : ""),
                     o.kv_policy.empty() ? "" : ", policy " + o.kv_policy, held > 0 ? full / held : 1.0, full,
                     ctx.kv_cap_bytes() / 1048576.0);
}

std::string resolve_model(const SharedOptions& o) {
  if (o.model.empty()) return paths::default_model().string();
  if (!std::filesystem::exists(o.model)) throw std::runtime_error(fmt::format("model file '{}' does not exist", o.model));
  return o.model;
}

int resolve_threads(int threads) {
  return threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read '{}'", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void warn_beyond_training(int n_ctx, const ModelConfig& c, int dca_chunk) {
  const double reach = static_cast<double>(c.n_ctx_train) * c.rope_scaling.factor;
  if (n_ctx > reach && dca_chunk == 0)
    fmt::print(stderr,
               "skim: warning: context of {} tokens exceeds the model's trained context of {}{}; output past it may degrade "
               "(--dca N or --rope-scaling yarn --rope-scale N reach past it)\n",
               n_ctx, c.n_ctx_train,
               c.rope_scaling.factor != 1.f ? fmt::format(" (x{} by RoPE scaling)", c.rope_scaling.factor) : "");
}

std::string positions_label(const ModelConfig& c, int dca_chunk, int dca_local) {
  std::string label;
  if (c.rope_scaling.kind != RopeScalingKind::None)
    label = fmt::format("rope {} x{} orig {}", rope_scaling_name(c.rope_scaling.kind), c.rope_scaling.factor,
                        c.rope_scaling.orig_ctx);
  if (dca_chunk > 0)
    label += fmt::format("{}dca {} local {}", label.empty() ? "" : ", ", dca_chunk, dca_local < 0 ? dca_chunk / 16 : dca_local);
  return label;
}

std::string context_flags(const SharedOptions& o) {
  const ModelOptions& m = o.model_options;
  std::string flags;
  if (!m.rope_scaling.empty()) flags += " --rope-scaling " + m.rope_scaling;
  if (m.rope_scale > 0.f) flags += fmt::format(" --rope-scale {}", m.rope_scale);
  if (m.yarn_orig_ctx > 0) flags += fmt::format(" --yarn-orig-ctx {}", m.yarn_orig_ctx);
  if (m.yarn_ext_factor >= 0.f) flags += fmt::format(" --yarn-ext-factor {}", m.yarn_ext_factor);
  if (m.yarn_attn_factor >= 0.f) flags += fmt::format(" --yarn-attn-factor {}", m.yarn_attn_factor);
  if (m.yarn_beta_fast >= 0.f) flags += fmt::format(" --yarn-beta-fast {}", m.yarn_beta_fast);
  if (m.yarn_beta_slow >= 0.f) flags += fmt::format(" --yarn-beta-slow {}", m.yarn_beta_slow);
  if (o.dca_chunk > 0) flags += fmt::format(" --dca {}", o.dca_chunk);
  if (o.dca_local >= 0) flags += fmt::format(" --dca-local {}", o.dca_local);
  const SharedOptions defaults;
  if (o.kv_type_k != defaults.kv_type_k) flags += " -ctk " + o.kv_type_k;
  if (o.kv_type_v != defaults.kv_type_v) flags += " -ctv " + o.kv_type_v;
  if (!o.kv_f16_layers.empty()) flags += " --kv-f16-layers " + o.kv_f16_layers;
  if (o.kv_f16_sinks > 0) flags += fmt::format(" --kv-f16-sinks {}", o.kv_f16_sinks);
  if (o.kv_rotation != defaults.kv_rotation) flags += fmt::format(" --kv-rotation {}", o.kv_rotation);
  if (o.kv_center_keys != defaults.kv_center_keys) flags += fmt::format(" --kv-center-keys {}", o.kv_center_keys);
  return flags;
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}


void print_attention_report(const AttentionReport& r) {
  if (r.sparse_calls + r.dense_calls == 0) return;
  const double computed =
      r.key_tiles ? static_cast<double>(r.key_tiles_computed) / static_cast<double>(r.key_tiles) : 1.0;
  std::fprintf(stderr,
               "skim_perf: attention: density %.3f (%.3f of tiles computed), %lld sparse + %lld dense layer calls"
               "%s, planning %.2f ms, kernel %.2f ms\n",
               r.density(), r.density() * computed, static_cast<long long>(r.sparse_calls),
               static_cast<long long>(r.dense_calls),
               r.reused_plans ? fmt::format(" ({} reused plans)", r.reused_plans).c_str() : "", r.plan_ms, r.kernel_ms);
}

std::vector<int> parse_token_counts(const std::string& list, const char* what) {
  std::vector<int> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (*end != '\0' || v < 0 || v > kMaxTokens) throw std::runtime_error(fmt::format("{}: '{}' is not a token count", what, item));
    if (v > 0) out.push_back(static_cast<int>(v));
  }
  return out;
}

std::vector<int32_t> random_tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = pick(rng);
  return t;
}

std::string run_peer(const std::string& cmd, const char* tool) {
  fmt::print(stderr, "peer: {}\n", cmd);
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) throw std::runtime_error(fmt::format("cannot start {}", tool));
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  if (pclose(pipe) != 0) throw std::runtime_error(fmt::format("{} failed: {}", tool, cmd));
  return out;
}

}  // namespace skim::cli
