// Aggregates skim eval's records into tables: DIR/summary.json (what
// scripts/plot-eval draws) and DIR/report.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/metrics.h"
#include "eval/results.h"

namespace skim::eval {

// One (task, length, method).
struct AccuracyCell {
  std::string task, method;
  int length = 0;
  int64_t n = 0, correct = 0;
  double score = 0;        // mean string_match_all
  Interval ci;             // Wilson, of correct / n
  double density = 1, prefill_ms = 0;  // means
  std::optional<double> kv_share;      // mean, when every record has it
  // Against dense on the samples both ran (absent for dense itself).
  std::optional<PairedCounts> paired;
  Interval diff_ci;        // Newcombe, of the accuracy difference
  double speedup = 1;      // dense prefill time / method prefill time on those samples
};

// One cell of a depth-grid task's depth x length grid.
struct DepthCell {
  std::string task, method;
  int length = 0;
  double depth = 0;
  int64_t n = 0, correct = 0;
};

// Perplexity windows of one (length, method), pooled.
struct PplRow {
  int length = 0;
  std::string method;
  int windows = 0;
  int64_t scored = 0;
  double ppl = 0, ppl_dense = 0;
  double kl_mean = 0, kl_median = 0, kl_p99 = 0, kl_max = 0;  // NaN for dense
  double top1 = 1;                                            // fraction of positions
  double density = 1, prefill_ms = 0, speedup = 1;
};

struct Summary {
  std::vector<std::string> methods;  // dense first, then in order of appearance
  std::vector<AccuracyCell> cells;
  std::vector<DepthCell> depths;
  std::vector<PplRow> ppl;
};

Summary summarize(const ResultStore& store);
nlohmann::json to_json(const Summary& s);
// `fidelity`: FidelityLog::to_json() or null; `plots`: PNG file names to show.
std::string render_markdown(const Summary& s, const RunConfig& config, const std::string& command,
                            const nlohmann::json& fidelity, const std::vector<std::string>& plots);

// "4K" for multiples of 1024, else the number.
std::string length_label(int length);

}  // namespace skim::eval
