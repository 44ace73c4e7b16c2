// skim calibrate: the searches behind the per-model calibration file (see calibrate.h).
#include "engine/calibrate.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/method.h"
#include "attention/sale.h"
#include "attention/selection.h"
#include "kernels/kv_codec.h"
#include "model/attention_observer.h"
#include "skim/context.h"
#include "skim/paths.h"

namespace skim::calibration {

using namespace attention;  // calibration measures the planners it tunes
namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("calibrate: " + msg); }

// MInference's online vertical-slash constants (docs/methods.md#minference-vertical-slash).
constexpr int64_t kLastQ = 64, kForcedCols = 30, kForcedDiags = 100, kMinSlash = 50;
// Vertical-slash candidates (v, s) as fractions of the calibration length,
// from cheap to generous; each is clamped to MInference's minimums.
const std::vector<std::pair<double, double>> kVsFractions = {
    {1.0 / 128, 1.0 / 32}, {1.0 / 64, 1.0 / 16}, {1.0 / 32, 1.0 / 8}, {1.0 / 16, 1.0 / 8}, {1.0 / 16, 1.0 / 4},
    {1.0 / 8, 1.0 / 4},    {1.0 / 4, 1.0 / 4},   {1.0 / 8, 1.0 / 2},  {1.0 / 4, 1.0 / 2}};
const std::vector<double> kSaleThetas = {0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064};
const std::vector<double> kBlasstLambdas = {1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.9};

struct Acc {
  double recall_sum = 0, pairs = 0, dense_pairs = 0;
  int64_t rows = 0;
  double recall() const { return rows ? recall_sum / static_cast<double>(rows) : 1.0; }
  double density() const { return dense_pairs > 0 ? pairs / dense_pairs : 1.0; }
};

int64_t dense_pairs_per_head(const PlanRequest& r) { return r.n_rows * r.q_slot0() + r.n_rows * (r.n_rows + 1) / 2; }

// (row, key) pairs plan head h lets through, causally, for one of its q heads.
int64_t head_pairs(const Plan& plan, int32_t h) {
  int64_t pairs = 0;
  for (int64_t t = 0; t < plan.head_tiles(h); ++t) {
    const int64_t item = plan.head_item_begin[h] + t;
    const int64_t rows_end = std::min<int64_t>(plan.head_rows(h), (t + 1) * plan.tile_rows);
    auto count = [&](int64_t begin, int64_t end) {
      int64_t n = 0;
      for (int64_t i = t * plan.tile_rows; i < rows_end; ++i) {
        const int64_t slot = plan.q_slot0 + plan.row_of(h, i);  // the row's own key
        n += std::max<int64_t>(0, std::min(end, slot + 1) - begin);
      }
      return n;
    };
    for (int64_t r = plan.range_ptr[item]; r < plan.range_ptr[item + 1]; ++r)
      pairs += count(plan.ranges[r].begin, plan.ranges[r].end);
    for (int64_t c = plan.col_ptr[item]; c < plan.col_ptr[item + 1]; ++c) pairs += count(plan.cols[c], plan.cols[c] + 1);
  }
  return pairs;
}

kernels::AttnParams attn_params(const PlanRequest& r, float* out, float* lse) {
  kernels::AttnParams a;
  a.n_q_heads = r.n_q_heads;
  a.n_kv_heads = r.n_kv_heads;
  a.head_dim = r.head_dim;
  a.n_rows = r.n_rows;
  a.q_pos0 = r.q_pos0;
  a.q = r.q;
  a.q_head_stride = r.q_head_stride;
  a.q_row_stride = r.q_row_stride;
  a.kv = r.kv;
  a.out = out;
  a.out_head_stride = r.head_dim;
  a.out_row_stride = static_cast<int64_t>(r.n_q_heads) * r.head_dim;
  a.lse = lse;
  a.lse_head_stride = r.n_rows;
  a.scale = r.scale;
  return a;
}

// Keys [0, n) of KV head h as f32 rows.
void keys_f32(const kernels::KvView& kv, int32_t h, int64_t n, int32_t d, std::vector<float>& dst) {
  dst.resize(static_cast<size_t>(n) * d);
  kernels::read_k_rows(kv, h, 0, n, d, dst.data());
}

float dot(const float* a, const float* b, int32_t d) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int32_t c = 0;
  for (; c + 16 <= d; c += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c + 8), _mm256_loadu_ps(b + c + 8), acc1);
  }
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  float out = _mm_cvtss_f32(s);
  for (; c < d; ++c) out += a[c] * b[c];
  return out;
}

// MInference's estimate (E1, attention/estimate.h) as key slots and diagonal
// offsets by descending score, the first 30 columns and the 100 smallest
// offsets forced; the first `keep` of each, per q head.
struct VsOrder {
  std::vector<int32_t> cols, diags;
};

std::vector<VsOrder> vs_orders(const PlanRequest& r, int64_t keep) {
  KeysF32 keys;
  keys.load(r);
  LastQEstimate est;
  estimate_last_q(r, keys, kLastQ, est);
  constexpr float inf = std::numeric_limits<float>::infinity();
  auto top = [&](const float* x, int64_t n, int64_t forced) {
    std::vector<float> score(x, x + n);
    std::fill(score.begin(), score.begin() + std::min(n, forced), inf);
    std::vector<int32_t> idx(score.size());
    std::iota(idx.begin(), idx.end(), 0);
    const int64_t k = std::min<int64_t>(keep, n);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    });
    idx.resize(static_cast<size_t>(k));
    return idx;
  };
  std::vector<VsOrder> order(static_cast<size_t>(r.n_q_heads));
  for (int32_t h = 0; h < r.n_q_heads; ++h)
    order[h] = {top(est.vert(h), est.n_keys, kForcedCols), top(est.diag(h), est.n_offsets, kForcedDiags)};
  return order;
}

std::string join(const std::vector<int32_t>& v, char sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? std::string(1, sep) : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

std::vector<int32_t> calibration_rows(int64_t n_rows) {
  std::vector<int32_t> rows;
  for (int64_t i = 7; i < n_rows; i += 8) rows.push_back(static_cast<int32_t>(i));
  if (rows.empty() && n_rows > 0) rows.push_back(static_cast<int32_t>(n_rows - 1));
  return rows;
}

void MassTable::build(const PlanRequest& r, const std::vector<int32_t>& rows) {
  rows_ = rows;
  n_keys_ = r.n_keys();
  n_rows_ = r.n_rows;
  const size_t stride = static_cast<size_t>(n_keys_) + 1;
  cum_.assign(static_cast<size_t>(r.n_q_heads) * rows.size() * stride, 0.0f);
  const int32_t g = r.group(), d = r.head_dim;
  std::vector<float> keys;
  for (int32_t kvh = 0; kvh < r.n_kv_heads; ++kvh) {
    keys_f32(r.kv, kvh, n_keys_, d, keys);
#pragma omp parallel
    {
      std::vector<float> logit(static_cast<size_t>(n_keys_));
#pragma omp for collapse(2) schedule(dynamic, 4)
      for (int32_t j = 0; j < g; ++j)
        for (size_t ri = 0; ri < rows.size(); ++ri) {
          const int32_t h = kvh * g + j;
          const int64_t pos = r.q_slot0() + rows[ri];  // slots [0, pos] are visible
          const float* q = r.q_row(h, rows[ri]);
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t k = 0; k <= pos; ++k) {
            logit[k] = r.scale * dot(q, keys.data() + k * d, d);
            mx = std::max(mx, logit[k]);
          }
          double sum = 0;
          for (int64_t k = 0; k <= pos; ++k) {
            logit[k] = std::exp(logit[k] - mx);
            sum += logit[k];
          }
          float* c = cum_.data() + (static_cast<size_t>(h) * rows.size() + ri) * stride;
          double acc = 0;
          const double inv = 1.0 / sum;
          for (int64_t k = 0; k <= pos; ++k) {
            acc += logit[k];
            c[k + 1] = static_cast<float>(acc * inv);
          }
          for (int64_t k = pos + 1; k < n_keys_; ++k) c[k + 1] = c[k];  // keys after the row: no mass
        }
    }
  }
}

double MassTable::recall(const Plan& plan, int32_t h, size_t ri) const {
  if (plan.n_rows != n_rows_) throw std::invalid_argument("MassTable: the plan is for another chunk");
  const int32_t ph = h / plan.group_size;
  int64_t local = rows_[ri];
  if (plan.has_row_map()) {
    const auto first = plan.row_map.begin() + plan.row_map_ptr[ph], last = plan.row_map.begin() + plan.row_map_ptr[ph + 1];
    const auto it = std::lower_bound(first, last, rows_[ri]);
    if (it == last || *it != rows_[ri]) return 0.0;  // a row the plan does not process
    local = it - first;
  }
  const int64_t item = plan.head_item_begin[ph] + local / plan.tile_rows;
  const float* c = cum_.data() + (static_cast<size_t>(h) * rows_.size() + ri) * (static_cast<size_t>(n_keys_) + 1);
  double mass = 0;
  for (int64_t k = plan.range_ptr[item]; k < plan.range_ptr[item + 1]; ++k)
    mass += c[std::min<int64_t>(plan.ranges[k].end, n_keys_)] - c[std::max<int64_t>(plan.ranges[k].begin, 0)];
  for (int64_t k = plan.col_ptr[item]; k < plan.col_ptr[item + 1]; ++k)
    if (plan.cols[k] >= 0 && plan.cols[k] < n_keys_) mass += c[plan.cols[k] + 1] - c[plan.cols[k]];
  return std::clamp(mass, 0.0, 1.0);
}

double MassTable::mean_recall(const Plan& plan, int32_t h) const {
  double sum = 0;
  for (size_t ri = 0; ri < rows_.size(); ++ri) sum += recall(plan, h, ri);
  return rows_.empty() ? 1.0 : sum / static_cast<double>(rows_.size());
}

struct Calibrator::State {
  int32_t n_layers, n_heads;
  int64_t len;
  CalibrationOptions o;
  std::vector<VsBudget> candidates;
  std::string reuse_spec;
  std::unique_ptr<Planner> reuse_planner;
  bool reuse_union = true;
  std::vector<int64_t> blasst_ends;  // chunk ends (keys) where BLASST is measured

  std::vector<Acc> vs;    // [layer][head][candidate]
  std::vector<Acc> sale;  // [layer][head][theta]
  std::vector<Acc> reuse; // [planning layer][layer]
  std::map<std::pair<int64_t, size_t>, std::pair<int64_t, int64_t>> blasst;  // (keys, lambda) -> (tiles, computed)

  // The current chunk: each layer's reference plan (no plan: dense).
  int64_t chunk_pos0 = -1;
  std::vector<std::optional<Plan>> chunk_plans;
  std::vector<Acc> reuse_density;  // per layer: pairs of its own reference plans
  std::unique_ptr<AttentionMethod> route_method;
  std::vector<Acc> route;  // per layer: recall and pairs of the routed method's plans

  sale::Estimator estimator;
  MassTable mass;  // the current (layer, chunk)
  double ms_mass = 0, ms_minference = 0, ms_sale = 0, ms_reuse = 0, ms_blasst = 0, ms_route = 0;
  std::vector<float> out, lse;

  Acc& vs_at(int32_t l, int32_t h, size_t c) { return vs[(static_cast<size_t>(l) * n_heads + h) * candidates.size() + c]; }
  Acc& sale_at(int32_t l, int32_t h, size_t t) { return sale[(static_cast<size_t>(l) * n_heads + h) * kSaleThetas.size() + t]; }
  Acc& reuse_at(int32_t p, int32_t l) { return reuse[static_cast<size_t>(p) * n_layers + l]; }

  // Adds each q head's recall of `plan` on the calibration rows, and its pairs, to acc(h).
  template <class AccOf>
  void add(const PlanRequest& r, const Plan& plan, AccOf acc) {
    const double dense = static_cast<double>(dense_pairs_per_head(r));
    for (int32_t h = 0; h < r.n_q_heads; ++h) {
      Acc& a = acc(h);
      for (size_t ri = 0; ri < mass.n_rows(); ++ri) a.recall_sum += mass.recall(plan, h, ri);
      a.rows += static_cast<int64_t>(mass.n_rows());
      if (plan.group_size == 1) {
        a.pairs += static_cast<double>(head_pairs(plan, h));
        a.dense_pairs += dense;
      }
    }
  }

  void minference(const PlanRequest& r);
  void sale_thetas(const PlanRequest& r);
  void reuse_plans(const PlanRequest& r);
  void blasst_skips(const PlanRequest& r);
  void route_layer(const PlanRequest& r);
};

Calibrator::Calibrator(int32_t n_layers, int32_t n_heads, int64_t len, const CalibrationOptions& options)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  if (n_layers <= 0 || n_heads <= 0) bad("the model has no layers or heads");
  if (len < 256) bad(fmt::format("--len {} is too short (at least 256 tokens)", len));
  if (options.n_ubatch < 64) bad(fmt::format("the chunk size {} is too small (at least 64)", options.n_ubatch));
  for (double t : {options.minference_target, options.sale_target})
    if (!(t > 0.0 && t <= 1.0)) bad(fmt::format("target recall {} is outside (0, 1]", t));
  for (double t : options.blasst_targets)
    if (!(t > 0.0 && t < 1.0)) bad(fmt::format("BLASST target sparsity {} is outside (0, 1)", t));
  if (options.reuse_layers < 0 || options.reuse_layers > n_layers)
    bad(fmt::format("--reuse-layers {} is outside 1..{} (0: n_layers / 4)", options.reuse_layers, n_layers));
  s.n_layers = n_layers;
  s.n_heads = n_heads;
  s.len = len;
  s.o = options;

  for (auto [fv, fs] : kVsFractions) {
    const int64_t v = std::max<int64_t>(kForcedCols, std::llround(fv * static_cast<double>(len)));
    const int64_t sl = std::max<int64_t>(kForcedDiags, std::llround(fs * static_cast<double>(len)));
    if (s.candidates.empty() || s.candidates.back().v != v || s.candidates.back().s != sl) s.candidates.push_back({v, sl});
  }

  s.reuse_spec = options.reuse_planner;
  if (s.reuse_spec.empty()) {
    s.reuse_spec = "sale";
    for (const MethodDef& m : sparse_methods())
      if (m.info.name == "xattention") s.reuse_spec = "xattention";
  }
  AttentionMethod check(s.reuse_spec, n_layers);  // throws on a bad spec
  const MethodSpec parsed = parse_method_spec(s.reuse_spec);
  for (const MethodDef& m : sparse_methods()) {
    if (m.info.name != parsed.name) continue;
    const MethodParams p(&m.info, m.info.name, parsed.values);
    s.reuse_planner = m.make(p);
    s.reuse_union = p.text("gqa") == "union";
  }
  if (!s.reuse_planner)
    bad(fmt::format("the reuse planner '{}' makes no plans (give a sparse planner, e.g. sale)", s.reuse_spec));

  for (double target : {0.25, 0.5, 1.0}) {
    const int64_t want = std::max<int64_t>(1, std::llround(target * static_cast<double>(len)));
    const int64_t end = std::min(len, (want + options.n_ubatch - 1) / options.n_ubatch * options.n_ubatch);
    if (std::find(s.blasst_ends.begin(), s.blasst_ends.end(), end) == s.blasst_ends.end()) s.blasst_ends.push_back(end);
  }

  s.vs.resize(static_cast<size_t>(n_layers) * n_heads * s.candidates.size());
  s.sale.resize(static_cast<size_t>(n_layers) * n_heads * kSaleThetas.size());
  s.reuse.resize(static_cast<size_t>(n_layers) * n_layers);
  s.chunk_plans.resize(static_cast<size_t>(n_layers));
  s.reuse_density.resize(static_cast<size_t>(n_layers));
  if (!options.route_method.empty()) {
    if (!(options.route_target > 0.0 && options.route_target <= 1.0))
      bad(fmt::format("route target recall {} is outside (0, 1]", options.route_target));
    if (!(options.route_density > 0.0 && options.route_density <= 1.0))
      bad(fmt::format("route density {} is outside (0, 1]", options.route_density));
    s.route_method = std::make_unique<AttentionMethod>(options.route_method, n_layers);
    if (s.route_method->is_dense()) bad(fmt::format("--route {}: dense attention has no layers to route", options.route_method));
    s.route.resize(static_cast<size_t>(n_layers));
  }
}

Calibrator::~Calibrator() = default;

void Calibrator::State::minference(const PlanRequest& r) {
  const int64_t keep = std::max(candidates.back().v, candidates.back().s);
  const std::vector<VsOrder> order = vs_orders(r, keep);
  PlanRequest rh = r;
  rh.group_union = false;
  for (size_t c = 0; c < candidates.size(); ++c) {
    KeySelection sel(rh);
    for (int32_t h = 0; h < r.n_q_heads; ++h) {
      const VsOrder& o = order[h];
      const int64_t v = std::min<int64_t>(std::max(candidates[c].v, kForcedCols), static_cast<int64_t>(o.cols.size()));
      const int64_t s = std::min<int64_t>(std::max(candidates[c].s, kMinSlash), static_cast<int64_t>(o.diags.size()));
      // Offset o covers positions [first - o, last + 1 - o) of a query block; a
      // run of consecutive offsets [lo, hi] covers [first - hi, last + 1 - lo).
      std::vector<int32_t> diags(o.diags.begin(), o.diags.begin() + s);
      std::sort(diags.begin(), diags.end());
      std::vector<std::pair<int32_t, int32_t>> runs;
      for (int32_t d : diags) {
        if (!runs.empty() && runs.back().second + 1 == d) runs.back().second = d;
        else runs.emplace_back(d, d);
      }
      for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
        for (int64_t i = 0; i < v; ++i) sel.add_column(h, qb, o.cols[i]);
        for (auto [lo, hi] : runs)
          sel.add_positions(h, qb, sel.block_first_pos(qb) - hi, sel.block_last_pos(qb) + 1 - lo);
      }
    }
    add(r, sel.build(), [&](int32_t h) -> Acc& { return vs_at(r.layer, h, c); });
  }
}

void Calibrator::State::sale_thetas(const PlanRequest& r) {
  PlanRequest rh = r;
  rh.group_union = false;
  const sale::Shape shape;
  const std::vector<float> floor(static_cast<size_t>(r.n_q_heads), static_cast<float>(std::log(kSaleThetas.front())));
  const sale::BlockScores& scores = estimator.score(rh, shape, {&floor, false});
  for (size_t t = 0; t < kSaleThetas.size(); ++t) {
    const std::vector<float> ln(static_cast<size_t>(r.n_q_heads), static_cast<float>(std::log(kSaleThetas[t])));
    add(r, sale::build_plan(rh, shape, scores, ln), [&](int32_t h) -> Acc& { return sale_at(r.layer, h, t); });
  }
}

void Calibrator::State::reuse_plans(const PlanRequest& r) {
  if (r.q_pos0 != chunk_pos0) {
    chunk_pos0 = r.q_pos0;
    std::fill(chunk_plans.begin(), chunk_plans.end(), std::nullopt);
  }
  PlanRequest rp = r;
  rp.group_union = reuse_union;
  chunk_plans[r.layer] = reuse_planner->plan(rp);
  const double dense = static_cast<double>(dense_pairs_per_head(r)) * r.n_q_heads;
  reuse_density[r.layer].pairs += chunk_plans[r.layer] ? static_cast<double>(chunk_plans[r.layer]->listed_pairs()) : dense;
  reuse_density[r.layer].dense_pairs += dense;
  for (int32_t p = 0; p <= r.layer; ++p) {
    Acc& a = reuse_at(p, r.layer);
    if (!chunk_plans[p]) {  // dense
      a.recall_sum += static_cast<double>(mass.n_rows()) * r.n_q_heads;
      a.rows += static_cast<int64_t>(mass.n_rows()) * r.n_q_heads;
      continue;
    }
    add(r, *chunk_plans[p], [&](int32_t) -> Acc& { return a; });
  }
}

void Calibrator::State::route_layer(const PlanRequest& r) {
  const std::optional<Plan> plan = route_method->plan(r);
  Acc& a = route[static_cast<size_t>(r.layer)];
  const double dense = static_cast<double>(dense_pairs_per_head(r)) * r.n_q_heads;
  a.dense_pairs += dense;
  a.pairs += plan ? static_cast<double>(plan->listed_pairs()) : dense;
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    for (size_t ri = 0; ri < mass.n_rows(); ++ri) a.recall_sum += plan ? mass.recall(*plan, h, ri) : 1.0;
    a.rows += static_cast<int64_t>(mass.n_rows());
  }
}

void Calibrator::State::blasst_skips(const PlanRequest& r) {
  // Whole 64-row tiles (every 8th; the last when fewer), as the policy runs a
  // lambda on the dense plan.
  std::vector<int32_t> rows;
  const int64_t n_tiles = (r.n_rows + kTileRows - 1) / kTileRows;
  for (int64_t t = 0; t < n_tiles; ++t)
    if (t % 8 == 7 || (n_tiles < 8 && t == n_tiles - 1))
      for (int64_t i = t * kTileRows; i < std::min(r.n_rows, (t + 1) * kTileRows); ++i) rows.push_back(static_cast<int32_t>(i));
  Plan plan = dense_plan_for_rows(r, rows);
  out.resize(static_cast<size_t>(r.n_rows) * r.n_q_heads * r.head_dim);
  lse.resize(static_cast<size_t>(r.n_rows) * r.n_q_heads);
  for (size_t i = 0; i < kBlasstLambdas.size(); ++i) {
    plan.skip_lambda.assign(static_cast<size_t>(plan.n_heads), static_cast<float>(kBlasstLambdas[i]));
    kernels::AttnStats stats;
    kernels::AttnParams a = attn_params(r, out.data(), lse.data());
    a.stats = &stats;
    a.split_key_tiles = 1 << 30;  // no split of key streams: each tile sees its whole running max
    kernels::attention_prefill(a, &plan);
    auto& [tiles, computed] = blasst[{r.n_keys(), i}];
    tiles += stats.key_tiles;
    computed += stats.key_tiles_computed;
  }
}

void Calibrator::observe(const PlanRequest& r) {
  State& s = *s_;
  if (r.layer < 0 || r.layer >= s.n_layers || r.n_q_heads != s.n_heads)
    throw std::invalid_argument("calibrate: a request does not match the model's layers or heads");
  auto t = std::chrono::steady_clock::now();
  auto lap = [&](double& ms) {
    const auto now = std::chrono::steady_clock::now();
    ms += std::chrono::duration<double, std::milli>(now - t).count();
    t = now;
  };
  if (std::find(s.blasst_ends.begin(), s.blasst_ends.end(), r.n_keys()) != s.blasst_ends.end()) s.blasst_skips(r);
  lap(s.ms_blasst);
  if (r.q_pos0 + r.n_rows <= s.len / 2) return;  // recall is measured on the chunks of the second half
  s.mass.build(r, calibration_rows(r.n_rows));
  lap(s.ms_mass);
  s.minference(r);
  lap(s.ms_minference);
  s.sale_thetas(r);
  lap(s.ms_sale);
  s.reuse_plans(r);
  lap(s.ms_reuse);
  if (s.route_method) s.route_layer(r);
  lap(s.ms_route);
  if (s.o.log && r.layer == s.n_layers - 1)
    s.o.log(fmt::format("calibrate: measured the chunk at {}..{} (so far: attention mass {:.1f} s, minference "
                        "{:.1f} s, sale {:.1f} s, reuse {:.1f} s, blasst {:.1f} s)",
                        r.q_pos0, r.q_pos0 + r.n_rows, s.ms_mass / 1e3, s.ms_minference / 1e3, s.ms_sale / 1e3,
                        s.ms_reuse / 1e3, s.ms_blasst / 1e3));
}

std::string CalibrationResult::reuse_value() const { return join(reuse_layers, '/'); }

CalibrationResult Calibrator::finish() const {
  const State& s = *s_;
  CalibrationResult res;
  res.tokens = s.len;
  res.n_ubatch = s.o.n_ubatch;
  res.n_layers = s.n_layers;
  res.n_heads = s.n_heads;
  res.minference_target = s.o.minference_target;
  res.sale_target = s.o.sale_target;
  res.vs_candidates = s.candidates;
  res.sale_thetas = kSaleThetas;
  res.sale_shape = sale::Shape{};
  State& m = const_cast<State&>(s);  // accessors only

  for (int32_t l = 0; l < s.n_layers; ++l)
    for (int32_t h = 0; h < s.n_heads; ++h) {
      // minference: cheapest candidate (by measured density) reaching the target, else the largest.
      std::vector<size_t> idx(s.candidates.size());
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(),
                       [&](size_t a, size_t b) { return m.vs_at(l, h, a).density() < m.vs_at(l, h, b).density(); });
      size_t pick = idx.back();
      bool reached = false;
      for (size_t c : idx)
        if (m.vs_at(l, h, c).recall() >= s.o.minference_target) {
          pick = c;
          reached = true;
          break;
        }
      const Acc& a = m.vs_at(l, h, pick);
      res.minference.push_back({l, h, s.candidates[pick], a.recall(), a.density(), reached});
      // sale: the largest theta keeping the target, else the smallest.
      size_t t_pick = 0;
      bool t_reached = false;
      for (size_t t = kSaleThetas.size(); t-- > 0;)
        if (m.sale_at(l, h, t).recall() >= s.o.sale_target) {
          t_pick = t;
          t_reached = true;
          break;
        }
      const Acc& b = m.sale_at(l, h, t_pick);
      res.sale.push_back({l, h, kSaleThetas[t_pick], b.recall(), b.density(), t_reached});
    }

  // reuse: greedy layer set. By recall alone, reusing a near-dense plan (a
  // diffuse early layer's) everywhere always wins while saving nothing, so an
  // addition must keep the mean density within kReuseDensitySlack of every
  // layer planning; while no addition can, the one lowering density most is taken.
  constexpr double kReuseDensitySlack = 0.02;
  res.reuse_planner = s.reuse_spec;
  const int32_t k = s.o.reuse_layers > 0 ? s.o.reuse_layers : std::max(1, s.n_layers / 4);
  auto layer_recalls = [&](const std::vector<bool>& set) {
    std::vector<double> out(static_cast<size_t>(s.n_layers));
    int32_t p = 0;
    for (int32_t l = 0; l < s.n_layers; ++l) {
      if (set[l]) p = l;
      out[l] = m.reuse_at(p, l).recall();
    }
    return out;
  };
  auto density = [&](const std::vector<bool>& set) {
    double sum = 0;
    int32_t p = 0;
    for (int32_t l = 0; l < s.n_layers; ++l) {
      if (set[l]) p = l;
      sum += s.reuse_density[p].density();
    }
    return sum / s.n_layers;
  };
  auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()); };
  const std::vector<bool> every(static_cast<size_t>(s.n_layers), true);
  res.plan_recall = mean(layer_recalls(every));
  res.plan_density = density(every);
  const double cap = res.plan_density + kReuseDensitySlack;
  std::vector<bool> plans(static_cast<size_t>(s.n_layers), false);
  plans[0] = true;
  for (int32_t added = 1; added < k; ++added) {
    int32_t best = -1;
    bool best_feasible = false;
    double best_recall = -1, best_density = 2;
    for (int32_t l = 1; l < s.n_layers; ++l) {
      if (plans[l]) continue;
      plans[l] = true;
      const double rec = mean(layer_recalls(plans)), den = density(plans);
      plans[l] = false;
      const bool feasible = den <= cap;
      const bool better = feasible ? (!best_feasible || rec > best_recall) : (!best_feasible && den < best_density);
      if (better) {
        best = l;
        best_feasible = feasible;
        best_recall = rec;
        best_density = den;
      }
    }
    if (best < 0) break;
    plans[best] = true;
  }
  for (int32_t l = 0; l < s.n_layers; ++l)
    if (plans[l]) res.reuse_layers.push_back(l);
  res.reuse_layer_recall = layer_recalls(plans);
  res.reuse_recall = mean(res.reuse_layer_recall);
  res.reuse_density = density(plans);

  // blasst: least squares of ln(lambda L) on the skipped fraction.
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int64_t n = 0;
  for (const auto& [key, counts] : s.blasst) {
    const auto [keys, i] = key;
    const double skipped = counts.first ? 1.0 - static_cast<double>(counts.second) / static_cast<double>(counts.first) : 0.0;
    res.blasst_points.push_back({keys, kBlasstLambdas[i], skipped});
    if (keys == s.blasst_ends.back()) res.blasst_max_skipped = std::max(res.blasst_max_skipped, skipped);
    if (skipped < 0.01 || skipped > 0.99) continue;
    const double x = skipped, y = std::log(kBlasstLambdas[i] * static_cast<double>(keys));
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
    ++n;
  }
  const double var = static_cast<double>(n) * sxx - sx * sx;
  if (n >= 2 && var > 1e-12) {
    res.blasst_b = (static_cast<double>(n) * sxy - sx * sy) / var;
    res.blasst_a = std::exp((sy - res.blasst_b * sx) / static_cast<double>(n));
    for (double t : s.o.blasst_targets)
      res.blasst_lambda_4096.emplace_back(t, std::min(1.0, res.blasst_a * std::exp(res.blasst_b * t) / 4096.0));
  }
  if (s.route_method) {
    res.route_method = s.o.route_method;
    res.route_target = s.o.route_target;
    res.route_density = s.o.route_density;
    for (const Acc& a : s.route)
      res.route.push_back({a.recall(), a.density(), a.recall() < s.o.route_target || a.density() > s.o.route_density});
  }
  return res;
}

std::string CalibrationResult::route_value() const {
  std::vector<int32_t> dense;
  for (size_t l = 0; l < route.size(); ++l)
    if (route[l].dense) dense.push_back(static_cast<int32_t>(l));
  return join(dense, '/');
}

nlohmann::json CalibrationResult::to_json() const {
  using nlohmann::json;
  json j;
  j["skim_calibration"] = 1;
  j["model"] = model;
  j["tokens"] = tokens;
  j["ubatch"] = n_ubatch;
  j["layers"] = n_layers;
  j["heads"] = n_heads;
  json vs = json::array(), vs_info = json::array(), sl = json::array();
  for (const MinferenceHead& h : minference) {
    vs.push_back({{"layer", h.layer}, {"head", h.head}, {"pattern", "vertical_slash"}, {"v", h.budget.v}, {"s", h.budget.s}});
    vs_info.push_back({{"layer", h.layer}, {"head", h.head}, {"recall", h.recall}, {"density", h.density}, {"reached", h.reached}});
  }
  for (const SaleHead& h : sale)
    sl.push_back({{"layer", h.layer}, {"head", h.head}, {"theta", h.theta}, {"recall", h.recall}, {"density", h.density},
                  {"reached", h.reached}});
  j["minference"] = {{"heads", vs}};
  json cands = json::array();
  for (const VsBudget& c : vs_candidates) cands.push_back({c.v, c.s});
  j["minference_search"] = {{"target_recall", minference_target}, {"length", tokens}, {"candidates", cands}, {"heads", vs_info}};
  j["sale"] = {{"target_recall", sale_target},
               {"thetas", sale_thetas},
               {"shape", {{"sink", sale_shape.sink}, {"local", sale_shape.local}, {"block", sale_shape.block},
                          {"est_rows", sale_shape.est_rows}}},
               {"heads", sl}};
  j["reuse"] = reuse_value();
  j["reuse_search"] = {{"planner", reuse_planner},
                       {"layers", reuse_layers},
                       {"recall", reuse_recall},
                       {"recall_every_layer_plans", plan_recall},
                       {"density", reuse_density},
                       {"density_every_layer_plans", plan_density},
                       {"layer_recall", reuse_layer_recall}};
  json lambdas = json::object(), points = json::array();
  for (const auto& [t, l] : blasst_lambda_4096) lambdas[fmt::format("{:g}", t)] = l;
  for (const BlasstPoint& p : blasst_points) points.push_back({{"keys", p.keys}, {"lambda", p.lambda}, {"skipped", p.skipped}});
  j["blasst"] = {{"a", blasst_a},
                 {"b", blasst_b},
                 {"lambda_4096", lambdas},
                 {"max_skipped_measured", blasst_max_skipped},
                 {"points", points}};
  if (!route_method.empty()) {
    json layers = json::array();
    for (const RouteLayer& l : route) layers.push_back({{"recall", l.recall}, {"density", l.density}, {"dense", l.dense}});
    j["route"] = {{"method", route_method}, {"target_recall", route_target}, {"max_density", route_density},
                  {"dense_layers", route_value()}, {"layers", layers}};
  }
  j["seconds"] = seconds;
  return j;
}

CalibrationResult calibrate(const Model& model, std::span<const int32_t> tokens, const CalibrationOptions& options) {
  const ModelConfig& c = model.config();
  const int64_t len = static_cast<int64_t>(tokens.size());
  if (len > c.n_ctx_train) bad(fmt::format("{} tokens exceed the model's context of {}", len, c.n_ctx_train));
  const auto t0 = std::chrono::steady_clock::now();
  Calibrator cal(c.n_layer, c.n_head, len, options);
  ContextParams cp;
  cp.n_ctx = static_cast<int>(len);
  cp.n_ubatch = options.n_ubatch;
  cp.n_threads = options.n_threads;
  cp.attention = "dense";
  Context ctx(model, cp);
  ContextInternals::set_observer(ctx, {.on_prefill_attention = [&](const PlanRequest& r) { cal.observe(r); }});
  ctx.decode(tokens, false, [&](int64_t done, int64_t total) {
    if (options.log) options.log(fmt::format("calibrate: prefill {}/{} tokens", done, total));
  });
  CalibrationResult res = cal.finish();
  res.model = c.name;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

std::string default_calibration_text(std::string* source) {
  auto read = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::filesystem::path austen = paths::cache_dir() / "haystack" / "austen.txt";
  if (std::filesystem::exists(austen)) {
    if (source) *source = austen.string();
    return read(austen);
  }
  std::string text;
  for (const char* f : {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"}) {
    if (!std::filesystem::exists(f))
      throw std::runtime_error(fmt::format("calibrate: no default text ({} and {} are missing); give -f FILE",
                                           austen.string(), f));
    text += read(f);
  }
  if (source) *source = "/usr/share/common-licenses/{GPL-3,Apache-2.0}";
  return text;
}

std::filesystem::path default_calibration_path(const std::string& model_path) {
  return paths::cache_dir() / "calibration" / (std::filesystem::path(model_path).stem().string() + ".json");
}

}  // namespace skim::calibration
