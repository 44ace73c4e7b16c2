// Method specs ("NAME[:k=v,...]"), typed parameters and the method registry.
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/method.h"
#include "attention/planner.h"

namespace skim::attention {
namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t") - a + 1);
}
}  // namespace

MethodSpec parse_method_spec(const std::string& spec) {
  MethodSpec out;
  const size_t colon = spec.find(':');
  out.name = trim(spec.substr(0, colon));
  if (out.name.empty()) bad(fmt::format("attention spec '{}': no method name", spec));
  if (colon == std::string::npos) return out;
  const std::string rest = spec.substr(colon + 1);
  size_t at = 0;
  while (at <= rest.size()) {
    const size_t comma = std::min(rest.find(',', at), rest.size());
    const std::string item = trim(rest.substr(at, comma - at));
    at = comma + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) bad(fmt::format("attention spec '{}': '{}' is not key=value", spec, item));
    const std::string key = trim(item.substr(0, eq)), value = trim(item.substr(eq + 1));
    if (key.empty() || value.empty()) bad(fmt::format("attention spec '{}': '{}' is not key=value", spec, item));
    if (!out.values.emplace(key, value).second) bad(fmt::format("attention spec '{}': key '{}' given twice", spec, key));
  }
  return out;
}

const std::string& MethodParams::value(const std::string& key) const {
  read_.push_back(key);
  if (auto it = values_.find(key); it != values_.end()) return it->second;
  if (info_)
    for (const AttentionParamInfo& p : info_->params)
      if (p.name == key) return p.default_value;
  for (const AttentionParamInfo& p : attention_policy_params())
    if (p.name == key) return p.default_value;
  throw std::logic_error(fmt::format("{}: parameter '{}' has no declared default", method_, key));
}

double MethodParams::number(const std::string& key, double min, double max) const {
  const std::string& v = value(key);
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || !std::isfinite(x)) bad(fmt::format("{}: {}={} is not a number", method_, key, v));
  if (x < min || x > max) bad(fmt::format("{}: {}={} is outside [{}, {}]", method_, key, v, min, max));
  return x;
}

int64_t MethodParams::integer(const std::string& key, int64_t min, int64_t max) const {
  const std::string& v = value(key);
  std::string digits = v;
  int64_t mult = 1;
  if (!digits.empty() && (digits.back() == 'k' || digits.back() == 'K')) {
    mult = 1024;
    digits.pop_back();
  }
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(digits, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (digits.empty() || used != digits.size()) bad(fmt::format("{}: {}={} is not an integer", method_, key, v));
  x *= mult;
  if (x < min || x > max) bad(fmt::format("{}: {}={} is outside [{}, {}]", method_, key, v, min, max));
  return x;
}

std::string MethodParams::text(const std::string& key) const { return value(key); }

void MethodParams::reject_unread() const {
  for (const auto& [key, value] : values_)
    if (std::find(read_.begin(), read_.end(), key) == read_.end())
      bad(fmt::format("{}: unknown parameter '{}' (see skim info --attn)", method_, key));
}

void Planner::estimate_mass(const PlanRequest&, BlockScores&) {
  throw std::logic_error("this planner has no attention-mass estimate");
}

const std::vector<MethodDef>& sparse_methods() {
  static const std::vector<MethodDef> methods = {
      streaming_method(),    trishape_method(),    power_method(),      blasst_method(), minference_method(),
      block_sparse_method(), flexprefill_method(), xattention_method(), sale_method(),   s2o_method(),
      hip_method(),          dhsa_method(),        longheads_method(),  token_sparse_method(), tca_method(),
      squeezed_method()};
  return methods;
}

}  // namespace skim::attention

namespace skim {

const std::vector<AttentionParamInfo>& attention_policy_params() {
  static const std::vector<AttentionParamInfo> params = {
      {"min_len", "0", "run dense while a chunk has fewer keys than this (the method's crossover)"},
      {"dense_first", "0", "keep this many first layers dense"},
      {"dense_last", "0", "keep this many last layers dense"},
      {"last_q", "64", "the prompt's last query rows attend densely (they feed generation)"},
      {"max_density", "0.85", "a plan denser than this runs as dense (the sparse path would save nothing)"},
      {"lambda", "0", "BLASST: skip a key tile whose weights are all below lambda x the running max (0: off)"},
      {"lambda_per_len", "0", "1: lambda is given at 4096 keys and scaled by 4096/keys (BLASST's 1/L law)"},
      {"reuse", "", "IndexCache: layers that plan, '/'-separated (e.g. 0/4/8/12); the others reuse the "
                    "nearest planning layer before them (empty: every layer plans)"},
      {"gqa", "union", "union: one plan per KV head over its q heads' key sets; head: one plan per q head"},
      {"target", "0", "recall-targeted: per q head and query block, the fewest key blocks whose estimated "
                      "attention mass reaches this share, on the method's estimate (0: the method's own rule; "
                      "tca and squeezed read it as their own target)"},
      {"dense_layers", "", "layers run dense, '/'-separated (skim calibrate --route picks those a target "
                           "cannot make sparse cheaply)"},
  };
  return params;
}

const std::vector<AttentionMethodInfo>& attention_methods() {
  static const std::vector<AttentionMethodInfo> methods = [] {
    std::vector<AttentionMethodInfo> v;
    v.push_back({"dense", "exact causal attention over every earlier key (the baseline)", {}});
    for (const attention::MethodDef& m : attention::sparse_methods()) v.push_back(m.info);
    return v;
  }();
  return methods;
}

void validate_attention_spec(const std::string& spec) { attention::AttentionMethod(spec, 0); }

double HeadFidelity::rel_l2() const { return ref_sq_sum > 0 ? std::sqrt(err_sq_sum / ref_sq_sum) : 0.0; }

double HeadFidelity::recall_percentile(double p) const {
  if (recalls.empty()) return 1.0;
  std::vector<float> sorted = recalls;
  std::sort(sorted.begin(), sorted.end());
  const double at = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(at)), hi = static_cast<size_t>(std::ceil(at));
  return sorted[lo] + (at - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace skim
