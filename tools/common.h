// Pieces shared by the skim subcommands: model resolution, threads, timing.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <string>

#include "skim/attention.h"

namespace skim::cli {

// Options every model-loading subcommand takes.
struct ModelOptions {
  std::string model;  // empty: the default model from the cache
  int threads = 0;    // 0: all cores
};
void add_model_options(CLI::App& cmd, ModelOptions& o);
// Resolves the model path (default model when empty) and sets the thread count.
std::string resolve_model(const ModelOptions& o);
int apply_threads(int threads);

std::string read_file(const std::string& path);
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

class Stopwatch {
 public:
  Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  double ms() const { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace skim::cli
