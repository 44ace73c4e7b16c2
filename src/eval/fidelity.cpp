#include "eval/fidelity.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::eval {
namespace {

// Sums b into a: rows, recall sums and samples, squared errors.
void merge(HeadFidelity& a, const HeadFidelity& b) {
  a.rows += b.rows;
  a.recall_sum += b.recall_sum;
  a.recall_min = std::min(a.recall_min, b.recall_min);
  a.recalls.insert(a.recalls.end(), b.recalls.begin(), b.recalls.end());
  a.err_sq_sum += b.err_sq_sum;
  a.ref_sq_sum += b.ref_sq_sum;
}

}  // namespace

void FidelityLog::add(const std::string& method, int length, const AttentionReport& report) {
  if (report.fidelity.empty()) return;
  if (report.fidelity.size() != static_cast<size_t>(n_layer_) * n_head_)
    throw std::logic_error(fmt::format("attention report has {} fidelity entries, expected {} layers x {} heads",
                                       report.fidelity.size(), n_layer_, n_head_));
  std::vector<HeadFidelity>& heads = heads_[{method, length}];
  heads.resize(report.fidelity.size());
  for (size_t i = 0; i < heads.size(); ++i) merge(heads[i], report.fidelity[i]);
}

nlohmann::json FidelityLog::to_json() const {
  auto summary = [](const HeadFidelity& h) {
    return nlohmann::json{{"rows", h.rows},
                          {"recall_mean", h.recall_mean()},
                          {"recall_p1", h.recalls.empty() ? 1.0 : h.recall_percentile(1)},
                          {"recall_min", h.recall_min},
                          {"rel_l2", h.ref_sq_sum > 0 ? h.rel_l2() : 0.0}};
  };
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& [key, heads] : heads_) {
    HeadFidelity all;
    nlohmann::json per_head = nlohmann::json::array();
    for (size_t i = 0; i < heads.size(); ++i) {
      merge(all, heads[i]);
      nlohmann::json h = summary(heads[i]);
      h["layer"] = i / n_head_;
      h["head"] = i % n_head_;
      per_head.push_back(std::move(h));
    }
    nlohmann::json run = summary(all);
    run["method"] = key.first;
    run["length"] = key.second;
    run["heads"] = std::move(per_head);
    runs.push_back(std::move(run));
  }
  return {{"n_layer", n_layer_}, {"n_head", n_head_}, {"runs", std::move(runs)}};
}

void check_fidelity_json(const nlohmann::json& j) {
  const auto bad = [](const std::string& what) { throw std::runtime_error("fidelity file: " + what); };
  if (!j.is_object() || !j.contains("n_layer") || !j["n_layer"].is_number_integer() || !j.contains("n_head") ||
      !j["n_head"].is_number_integer())
    bad("no integer n_layer and n_head");
  if (!j.contains("runs") || !j["runs"].is_array()) bad("no runs array");
  for (const nlohmann::json& run : j["runs"]) {
    if (!run.is_object() || !run.contains("method") || !run["method"].is_string() || !run.contains("length") ||
        !run["length"].is_number_integer() || !run.contains("heads") || !run["heads"].is_array())
      bad("a run without a method, a length or heads");
    if (!run.contains("rows") || !run["rows"].is_number_integer()) bad("a run without a row count");
    for (const char* key : {"recall_mean", "recall_p1", "recall_min", "rel_l2"})
      if (!run.contains(key) || !(run[key].is_number() || run[key].is_null())) bad(fmt::format("a run without {}", key));
  }
}

nlohmann::json FidelityLog::to_json_with(const nlohmann::json& earlier, std::vector<std::string>& replaced) const {
  nlohmann::json out = to_json();
  if (earlier.is_object() && earlier.value("n_layer", -1) == n_layer_ && earlier.value("n_head", -1) == n_head_) {
    for (const nlohmann::json& run : earlier.at("runs")) {
      const std::pair<std::string, int> key{run.at("method").get<std::string>(), run.at("length").get<int>()};
      if (heads_.contains(key)) replaced.push_back(fmt::format("{} at {}", key.first, key.second));
      else out["runs"].push_back(run);
    }
  }
  if (out["runs"].empty()) return nullptr;
  std::sort(out["runs"].begin(), out["runs"].end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return std::pair(a.at("method").get<std::string>(), a.at("length").get<int>()) <
           std::pair(b.at("method").get<std::string>(), b.at("length").get<int>());
  });
  return out;
}

}  // namespace skim::eval
