// Tier T1 of skim eval: attention fidelity per (layer, head), accumulated over
// every prefill a method runs at one length (AttentionObserver::fidelity_rows > 0).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "skim/attention.h"

namespace skim::eval {

class FidelityLog {
 public:
  FidelityLog(int n_layer, int n_head) : n_layer_(n_layer), n_head_(n_head) {}

  // Adds a prefill's report (no-op when it has no fidelity rows).
  void add(const std::string& method, int length, const AttentionReport& report);
  bool empty() const { return heads_.empty(); }

  // {"n_layer", "n_head", "runs": [{"method", "length", "recall_mean", "recall_p1",
  //   "recall_min", "rel_l2", "heads": [{"layer", "head", "rows", "recall_mean",
  //   "recall_p1", "recall_min", "rel_l2"}]}]}; run-level numbers pool all heads' rows.
  nlohmann::json to_json() const;

  // to_json() with the runs of an earlier invocation's fidelity.json
  // (`earlier`, null when there is none) that this log did not measure: a
  // resumed eval runs only the prefills left, so the others keep their
  // figures. Returns null when neither has a run. A (method, length) this log
  // measured replaces the earlier run, whose rows cannot be merged (its
  // per-row samples are not stored); `replaced` gets each such "method at length".
  nlohmann::json to_json_with(const nlohmann::json& earlier, std::vector<std::string>& replaced) const;

 private:
  int n_layer_, n_head_;
  std::map<std::pair<std::string, int>, std::vector<HeadFidelity>> heads_;
};

// Throws std::runtime_error unless j has to_json()'s shape: integer n_layer
// and n_head, and runs each with a string method, an integer length and row
// count, heads, and numbers (or null, what JSON makes of NaN) for its figures.
void check_fidelity_json(const nlohmann::json& j);

}  // namespace skim::eval
