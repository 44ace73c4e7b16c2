// skim calibrate: per-model settings for the sparse-prefill methods, chosen on
// calibration text by forward passes (dense attention) that look at every
// layer's Q/K through AttentionObserver::on_prefill_attention.
//
//   minference  per (layer, q head) vertical-slash budgets (v, s): the offline
//               search of MInference
//               (docs/methods.md#minference-vertical-slash). Each candidate is
//               built as the online planner builds it (last-64-query softmax,
//               top-v columns with 30 forced sinks, top-s diagonals with 100
//               forced local offsets, each diagonal a 64-key band per query
//               block) and scored by recall = exp(LSE_plan - LSE_dense) on
//               sampled rows. The cheapest candidate (measured density) whose
//               mean recall reaches the target is kept, else the largest.
//   sale        per (layer, q head) theta: the largest theta of a grid whose
//               SALE plan keeps the target recall (else the smallest theta).
//   reuse       the IndexCache layer set
//               (docs/methods.md#indexcache-layer-reuse): starting from {0},
//               greedily add the layer that most raises the mean recall when
//               every other layer reuses the plan of the nearest planning layer
//               before it (plans from a reference planner), up to K layers.
//               Additions must keep the mean density within 0.02 of every layer
//               planning (else reusing a diffuse layer's near-dense plan would
//               win on recall while saving no work); while none can, the
//               addition that lowers density most is taken.
//   route       (with route_method) Flux-style layer routing without training
//               (docs/methods.md#recall-targeted-policy): each layer's plan
//               under that method (e.g. s2o:target=0.95) is measured for
//               density and recall; a layer whose recall stays below the
//               target or whose density exceeds route_density runs dense.
//   blasst      lambda = a exp(b target) / L (docs/methods.md#blasst):
//               tile-skip sparsity of the dense plan measured for a lambda grid
//               at 2-3 key lengths and fitted by least squares on
//               ln(lambda L) = ln a + b sparsity.
// Recall is measured on the prefill chunks that cover the second half of the
// text, on every 8th query row (7, 15, ...) of each chunk: their exact
// softmax over all keys is computed once per (layer, chunk) as prefix sums
// (MassTable), so the recall of any plan - the softmax mass of the keys it
// lists, equal to exp(LSE_plan - LSE_dense) - costs a few adds per range.
//
// The vertical-slash estimate here (last-query softmax, column and diagonal
// sums) is a minimal local copy of the E1 primitive that the planners take
// from estimate.h (estimate_last_q).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attention/planner.h"
#include "attention/sale.h"
#include "skim/model.h"

namespace skim::calibration {

struct CalibrationOptions {
  int64_t len = 4096;               // calibration tokens (the text's first len tokens)
  int n_ubatch = 512;               // prefill chunk, as in skim run -ub
  int n_threads = 0;                // threads (0: OpenMP's default)
  double minference_target = 0.95;  // mean recall a vertical-slash budget must reach
  double sale_target = 0.95;        // mean recall a SALE theta must keep
  std::string reuse_planner;        // spec of the reference planner; empty: xattention if built in, else sale
  int32_t reuse_layers = 0;         // planning layers K; 0: max(1, n_layers / 4)
  std::vector<double> blasst_targets = {0.5, 0.7};  // tile-skip fractions to give lambdas for
  std::string route_method;         // method spec to route layers for (empty: no routing)
  double route_target = 0.95;       // recall a routed layer must keep
  double route_density = 0.5;       // ... at most this density
  std::function<void(const std::string&)> log;      // progress lines (optional)
};

struct VsBudget {
  int64_t v = 0, s = 0;
};

struct MinferenceHead {
  int32_t layer = 0, head = 0;
  VsBudget budget;
  double recall = 0, density = 0;
  bool reached = false;  // the target recall was reached (else: the largest candidate)
};

struct SaleHead {
  int32_t layer = 0, head = 0;
  double theta = 0, recall = 0, density = 0;
  bool reached = false;
};

struct BlasstPoint {
  int64_t keys = 0;
  double lambda = 0, skipped = 0;  // fraction of key tiles skipped
};

struct RouteLayer {
  double recall = 0, density = 0;
  bool dense = false;
};

struct CalibrationResult {
  std::string model;  // model name (metadata)
  int64_t tokens = 0;
  int n_ubatch = 0;
  int32_t n_layers = 0, n_heads = 0;
  double minference_target = 0, sale_target = 0;
  std::vector<VsBudget> vs_candidates;
  std::vector<MinferenceHead> minference;  // layer-major
  std::vector<SaleHead> sale;              // layer-major
  std::vector<double> sale_thetas;         // the grid
  std::string reuse_planner;
  std::vector<int32_t> reuse_layers;       // sorted, starts with 0
  std::vector<double> reuse_layer_recall;  // per layer, with that set
  double reuse_recall = 0;                 // their mean
  double plan_recall = 0;                  // mean recall when every layer plans
  double reuse_density = 0;                // mean density with that set
  double plan_density = 0;                 // ... when every layer plans
  double blasst_a = 0, blasst_b = 0;
  std::vector<std::pair<double, double>> blasst_lambda_4096;  // (target, lambda at 4096 keys, at most 1)
  std::vector<BlasstPoint> blasst_points;
  double blasst_max_skipped = 0;  // the most skipping measured at 4096 keys (or the longest length)
  attention::sale::Shape sale_shape;         // the SALE shape the thetas were chosen for
  std::string route_method;                  // empty: no routing asked for
  double route_target = 0, route_density = 0;
  std::vector<RouteLayer> route;             // per layer
  std::string route_value() const;           // the dense layers: "1/7"
  double seconds = 0;

  std::string reuse_value() const;  // "0/5/9"
  nlohmann::json to_json() const;
};

// The state of a calibration, fed one layer's request at a time (the engine's
// prefill hook, or synthetic requests in tests), in forward order: for each
// chunk, layers 0..n_layers-1. `len` is the total number of tokens.
class Calibrator {
 public:
  Calibrator(int32_t n_layers, int32_t n_heads, int64_t len, const CalibrationOptions& options);
  ~Calibrator();
  void observe(const attention::PlanRequest& r);
  CalibrationResult finish() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Runs the model over `tokens` (dense attention) with a Calibrator on the
// prefill hook. Throws std::invalid_argument on bad options.
CalibrationResult calibrate(const Model& model, std::span<const int32_t> tokens, const CalibrationOptions& options);

// The default calibration text: $SKIM_CACHE/haystack/austen.txt when present
// (public-domain novels), else the GPL-3 and Apache-2.0 texts of Debian's
// common-licenses. `source` receives where it came from.
std::string default_calibration_text(std::string* source = nullptr);
// $SKIM_CACHE/calibration/<model file stem>.json
std::filesystem::path default_calibration_path(const std::string& model_path);

// The query rows recall is measured on: 7, 15, 23, ... (the last row when fewer than 8).
std::vector<int32_t> calibration_rows(int64_t n_rows);

// The exact attention of some query rows of a chunk, per q head, as prefix
// sums of the softmax over all keys: the recall of a plan for a row (the mass
// of the keys it lists, = exp(LSE_plan - LSE_dense)) is a sum over its ranges.
class MassTable {
 public:
  void build(const attention::PlanRequest& r, const std::vector<int32_t>& rows);
  size_t n_rows() const { return rows_.size(); }
  // Recall of `plan` (for the same chunk) for q head h at calibration row ri.
  double recall(const attention::Plan& plan, int32_t h, size_t ri) const;
  double mean_recall(const attention::Plan& plan, int32_t h) const;

 private:
  std::vector<int32_t> rows_;
  int64_t n_keys_ = 0, n_rows_ = 0;
  std::vector<float> cum_;  // [head][row][n_keys + 1]
};

}  // namespace skim::calibration
