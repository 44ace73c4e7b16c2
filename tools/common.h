// Pieces shared by the skim subcommands: model resolution, threads, timing.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "skim/attention.h"
#include "skim/context.h"

namespace skim::cli {

// More tokens than any model's context: bounds token counts before they reach an allocation.
inline constexpr int kMaxTokens = 1 << 24;

// Checks that a numeric option lies in [min, max], failing with one short line
// ("--ctx-size: -5 is below the minimum 0"). CLI11's Range prints its bounds as doubles,
// the open ones as a 300-digit number.
template <class T>
CLI::Validator in_range(T min, T max) {
  return CLI::Validator(
      [min, max](std::string& input) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(input, value) || !std::isfinite(value)) return fmt::format("'{}' is not a number", input);
        if (std::is_integral_v<T> && value != std::floor(value)) return fmt::format("{} is not a whole number", input);
        if (value < static_cast<double>(min)) return fmt::format("{} is below the minimum {}", input, min);
        if (value > static_cast<double>(max)) return fmt::format("{} is above the maximum {}", input, max);
        return {};
      },
      max == std::numeric_limits<T>::max() ? fmt::format(">= {}", min) : fmt::format("{}..{}", min, max));
}
template <class T>
CLI::Validator at_least(T min) {
  return in_range(min, std::numeric_limits<T>::max());
}

// One "error: ..." line for every command-line mistake, in place of CLI11's
// message plus its "Run with --help" line; --help itself is unaffected.
void use_one_line_errors(CLI::App& app);

// The values of the flags several subcommands share, registered from one table (as llama.cpp's
// common/arg.cpp) so that each reads the same everywhere. A command sets its own defaults here.
struct SharedOptions {
  std::string model;                          // empty: the default model from the cache
  int threads = 0;                            // 0: all cores
  int n_ctx = 0;                              // 0: the model's
  int n_ubatch = 512;
  std::vector<std::string> attn = {"dense"};  // one spec unless the command takes several
  std::string kv_type_k = "f16", kv_type_v = "f16";
  std::string kv_f16_layers;  // "0,-1": layers kept in f16
  int kv_f16_sinks = 0;       // first rows of quantized layers kept in f16
  int kv_rotation = 1;
  int kv_center_keys = 1;
  std::string kv_policy;
  std::string gemm = "int8";  // applied process-wide as it is parsed
  std::string attn_math = "auto";  // likewise; main() applies "auto" before parsing
  ModelOptions model_options;  // --rope-scaling, --rope-scale, --yarn-*
  int dca_chunk = 0;           // --dca
  int dca_local = -1;          // --dca-local
};
// Rope: the RoPE scaling flags as a group (llama.cpp's names).
enum class Opt { Model, Threads, Ctx, Ubatch, Attn, Gemm, AttnMath, KvTypeK, KvTypeV, KvF16Layers, KvF16Sinks, KvRotation, KvCenterKeys,
                 KvPolicy, Dca, DcaLocal, Rope };
// The KV flags (what the cache holds and how keys are placed), for commands that build a context.
inline constexpr Opt kKvOpts[] = {Opt::KvTypeK, Opt::KvTypeV, Opt::KvF16Layers, Opt::KvF16Sinks, Opt::KvRotation, Opt::KvCenterKeys,
                                  Opt::KvPolicy, Opt::Dca, Opt::DcaLocal};
struct Range { int min, max; };
// A shared flag as one command takes it: the table's range unless the flag means something
// narrower there; a list (--attn) takes one value unless repeatable.
struct Use {
  Opt opt;
  std::optional<Range> range;
  bool repeatable = false;
};
void add_shared_options(CLI::App& cmd, SharedOptions& o, std::initializer_list<Use> uses);
// The shared flags plus the KV flags (kKvOpts).
void add_shared_options_with_kv(CLI::App& cmd, SharedOptions& o, std::initializer_list<Use> uses);
// The KV flags' values in a context's parameters.
void apply_kv_options(const SharedOptions& o, ContextParams& cp);
// What a context's KV cache holds, in its formats, against f16 and the cap.
std::string kv_held_summary(const Context& ctx, const SharedOptions& o);
// Resolves the model path (default model when empty).
std::string resolve_model(const SharedOptions& o);
// -t as a count (0: all cores); contexts take it as ContextParams::n_threads.
int resolve_threads(int threads);

std::string read_file(const std::string& path);
// Runs a peer's command line (logged to stderr) and returns its stdout; throws
// naming `tool` when it cannot start or exits non-zero.
std::string run_peer(const std::string& cmd, const char* tool);
// "512,2048": token counts for option `what` (zeros dropped); throws on anything else.
std::vector<int> parse_token_counts(const std::string& list, const char* what);
// Random ids like llama-bench's (the content does not change the work done).
std::vector<int32_t> random_tokens(int n, int n_vocab, uint32_t seed);
// A context beyond the model's training length runs, but RoPE positions past it
// are untrained: say so, as llama.cpp does, unless RoPE scaling stretches the
// trained length that far or dual chunk attention (dca_chunk > 0) is on.
void warn_beyond_training(int n_ctx, const ModelConfig& c, int dca_chunk = 0);
// How positions reach past the trained context in a run, for result files:
// "" (plain RoPE), else the RoPE scaling and/or "dca CHUNK local L".
std::string positions_label(const ModelConfig& c, int dca_chunk, int dca_local);
// The position and KV-cache flags of `o` that differ from their defaults, as they
// are typed (" --dca 4096 -ctk q8_0"), so that a report's command reproduces the run.
std::string context_flags(const SharedOptions& o);
// One llama.cpp-style line: prefill attention density, planning and kernel time.
void print_attention_report(const AttentionReport& r);
double peak_rss_mib();

// Registration of each subcommand; `run` is invoked after parsing when chosen.
void register_run(CLI::App& app);
void register_info(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_bench(CLI::App& app);
void register_eval(CLI::App& app);
void register_calibrate(CLI::App& app);
void register_batched_bench(CLI::App& app);
void register_serve(CLI::App& app);

class Stopwatch {
 public:
  Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  double ms() const { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace skim::cli
