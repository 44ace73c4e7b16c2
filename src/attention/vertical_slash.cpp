// MInference vertical-slash (docs/methods.md#minference-vertical-slash). Per q
// head and chunk: the softmax of the chunk's last 64 queries over all keys (E1)
// gives a score per key column (vertical) and per diagonal offset (slash). The
// first 30 columns and the 100 nearest diagonals are always kept; the top v
// columns and top s diagonals are chosen. Each diagonal offset o becomes, for a
// query block with positions [f, l], the band of keys [f - o, l - o] (a
// superset of the diagonal, so the kernel runs it as dense tiles); offsets that
// lie within a block's height of each other merge into one range. The columns
// left outside the bands are gathered as plan columns.
// Budgets: v and s for every head, or per (layer, q head) from a config file
// written by `skim calibrate`:
//   {"model": "...", "minference": {"heads": [
//      {"layer": L, "head": H, "pattern": "vertical_slash", "v": V, "s": S}, ...]}}
// A head listed there takes its v/s; the others take the defaults.
//
// Defaults v = 1000, s = 300, for 4K-32K prompts. On SmolLM2-135M at 7.7K
// tokens (512-row chunks; density, then mean and 1st-percentile recall
// exp(LSE_sparse - LSE_dense) over sampled rows of every layer and head):
//   v=200,s=200 0.22 0.941 0.48    v=500,s=300 0.35 0.971 0.60
//   v=1000,s=300 0.42 0.983 0.71   v=300,s=600 0.49 0.980 0.68
//   v=1000,s=1000 0.65 0.993 0.84
// Columns buy more recall per key than diagonals here (each isolated
// diagonal costs a 64-key band per tile). The budgets are fixed counts, so the
// density falls as prompts grow; MInference's own configs at 128K are larger.
#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

constexpr int64_t kLastQ = 64;        // queries in the estimate
constexpr int64_t kSinkColumns = 30;  // always-kept first keys
constexpr int64_t kLocalDiagonals = 100;

struct Budget {
  int64_t v = 0, s = 0;
};
using HeadBudgets = std::map<std::pair<int32_t, int32_t>, Budget>;  // (layer, q head)

[[noreturn]] void bad_config(const std::string& path, const std::string& what) {
  throw std::invalid_argument(fmt::format("minference: config={}: {}", path, what));
}

int64_t config_int(const nlohmann::json& e, const char* key, int64_t min, const std::string& path, size_t i) {
  if (!e.contains(key)) bad_config(path, fmt::format("heads[{}] has no \"{}\"", i, key));
  const nlohmann::json& v = e.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < min)
    bad_config(path, fmt::format("heads[{}].{} must be an integer >= {} (got {})", i, key, min, v.dump()));
  return v.get<int64_t>();
}

HeadBudgets load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) bad_config(path, "cannot open the file");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    bad_config(path, fmt::format("not valid JSON ({})", e.what()));
  }
  if (!doc.is_object() || !doc.contains("minference") || !doc["minference"].is_object() ||
      !doc["minference"].contains("heads") || !doc["minference"]["heads"].is_array())
    bad_config(path, "expected {\"minference\": {\"heads\": [...]}}");
  if (doc.contains("model") && !doc["model"].is_string()) bad_config(path, "\"model\" must be a string");
  HeadBudgets budgets;
  const nlohmann::json& heads = doc["minference"]["heads"];
  for (size_t i = 0; i < heads.size(); ++i) {
    const nlohmann::json& e = heads[i];
    if (!e.is_object()) bad_config(path, fmt::format("heads[{}] is not an object", i));
    if (!e.contains("pattern") || !e["pattern"].is_string())
      bad_config(path, fmt::format("heads[{}] has no \"pattern\" string", i));
    const std::string pattern = e["pattern"].get<std::string>();
    if (pattern != "vertical_slash")
      bad_config(path, fmt::format("heads[{}]: pattern \"{}\" is not supported (only \"vertical_slash\")", i, pattern));
    const int64_t layer = config_int(e, "layer", 0, path, i), head = config_int(e, "head", 0, path, i);
    if (layer > (1 << 20) || head > (1 << 20)) bad_config(path, fmt::format("heads[{}]: layer/head out of range", i));
    const Budget b{config_int(e, "v", 0, path, i), config_int(e, "s", 0, path, i)};
    if (!budgets.emplace(std::pair{static_cast<int32_t>(layer), static_cast<int32_t>(head)}, b).second)
      bad_config(path, fmt::format("heads[{}]: layer {} head {} listed twice", i, layer, head));
  }
  return budgets;
}

class VerticalSlashPlanner : public Planner {
 public:
  VerticalSlashPlanner(Budget defaults, std::string config_path, HeadBudgets budgets)
      : defaults_(defaults), config_path_(std::move(config_path)), budgets_(std::move(budgets)) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    check_config_fits(r);
    keys_.load(r);
    estimate_last_q(r, keys_, kLastQ, est_);
    const int64_t n = r.n_keys(), n_offsets = est_.n_offsets;
    KeySelection sel(r);
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * n * 16))
    {
      std::vector<float> score(static_cast<size_t>(std::max(n, n_offsets)));
      std::vector<int32_t> cols, offsets;
      std::vector<std::pair<int64_t, int64_t>> bands;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        const Budget b = budget(r.layer, h);
        // Vertical: top max(v, 30) columns, the first 30 forced.
        std::copy(est_.vert(h), est_.vert(h) + n, score.begin());
        std::fill(score.begin(), score.begin() + std::min(n, kSinkColumns), kInf);
        top_k(score.data(), n, std::max(b.v, kSinkColumns), cols);
        // Slash: top max(s, 100) diagonal offsets, the nearest 100 forced.
        std::copy(est_.diag(h), est_.diag(h) + n_offsets, score.begin());
        std::fill(score.begin(), score.begin() + std::min(n_offsets, kLocalDiagonals), kInf);
        top_k(score.data(), n_offsets, std::max(b.s, kLocalDiagonals), offsets);
        const int32_t kv_head = h / r.group();
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          const int64_t f = sel.block_first_pos(qb), l = sel.block_last_pos(qb), height = l - f + 1;
          // Ascending offsets; a run whose steps are <= the block height is one
          // band of positions [f - hi, l - lo], taken as the slots holding them.
          // Bands come out in descending key order.
          bands.clear();
          for (size_t i = 0; i < offsets.size() && offsets[i] <= l;) {
            const int64_t lo = offsets[i];
            int64_t hi = lo;
            for (++i; i < offsets.size() && offsets[i] - hi <= height; ++i) hi = offsets[i];
            bands.emplace_back(r.first_slot_at(kv_head, f - hi), r.first_slot_at(kv_head, l - lo + 1));
            sel.add_range(h, qb, bands.back().first, bands.back().second);
          }
          // Columns outside this head's bands (the plan builder would drop the others).
          auto band = bands.rbegin();
          for (int32_t c : cols) {
            if (c > sel.block_last(qb)) break;
            while (band != bands.rend() && band->second <= c) ++band;
            if (band == bands.rend() || band->first > c) sel.add_column(h, qb, c);
          }
        }
      }
    }
    return sel.build();
  }

 private:
  static constexpr float kInf = std::numeric_limits<float>::infinity();

  Budget budget(int32_t layer, int32_t head) const {
    if (auto it = budgets_.find({layer, head}); it != budgets_.end()) return it->second;
    return defaults_;
  }

  // A config for a different model (more layers or heads than this one) is an error.
  void check_config_fits(const PlanRequest& r) const {
    if (budgets_.empty()) return;
    for (const auto& [key, b] : budgets_)
      if (key.first >= r.n_layers || key.second >= r.n_q_heads)
        throw std::invalid_argument(fmt::format(
            "minference: config={} lists layer {} head {}, but the model has {} layers of {} q heads", config_path_,
            key.first, key.second, r.n_layers, r.n_q_heads));
  }

  Budget defaults_;
  std::string config_path_;
  HeadBudgets budgets_;
  KeysF32 keys_;
  LastQEstimate est_;
};

}  // namespace

MethodDef minference_method() {
  AttentionMethodInfo info{
      "minference",
      "MInference vertical-slash: each chunk's last 64 queries estimate columns and diagonals; top v + top s per head",
      {{"v", "1000", "vertical budget: key columns per head (the first 30 always kept)"},
       {"s", "300", "slash budget: diagonal offsets per head (the nearest 100 always kept)"},
       {"config", "", "per-(layer, head) v/s from `skim calibrate` (JSON); listed heads override v and s"},
       crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const Budget defaults{p.integer("v", 0, int64_t{1} << 30), p.integer("s", 0, int64_t{1} << 30)};
            const std::string path = p.text("config");
            HeadBudgets budgets = path.empty() ? HeadBudgets{} : load_config(path);
            return std::make_unique<VerticalSlashPlanner>(defaults, path, std::move(budgets));
          }};
}

}  // namespace skim::attention
