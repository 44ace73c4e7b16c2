#include "common.h"

#include <omp.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "skim/paths.h"

namespace skim::cli {

void use_one_line_errors(CLI::App& app) {
  app.failure_message([](const CLI::App*, const CLI::Error& e) { return fmt::format("error: {}\n", e.what()); });
}

void add_model_options(CLI::App& cmd, ModelOptions& o) {
  constexpr int kMaxThreads = 1024;  // as skim-peer's --threads
  cmd.add_option("-m,--model", o.model, "GGUF model file (default: the cached default model, smollm2-135m)");
  cmd.add_option("-t,--threads", o.threads, "threads (0: all cores)")->check(in_range(0, kMaxThreads));
}

std::string resolve_model(const ModelOptions& o) {
  apply_threads(o.threads);
  if (o.model.empty()) return paths::default_model().string();
  if (!std::filesystem::exists(o.model)) throw std::runtime_error(fmt::format("model file '{}' does not exist", o.model));
  return o.model;
}

int apply_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  omp_set_num_threads(threads);
  return threads;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read '{}'", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void warn_beyond_training(int n_ctx, int n_ctx_train) {
  if (n_ctx > n_ctx_train)
    fmt::print(stderr, "skim: warning: context of {} tokens exceeds the model's trained context of {}; output past it may degrade\n",
               n_ctx, n_ctx_train);
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

}  // namespace skim::cli
