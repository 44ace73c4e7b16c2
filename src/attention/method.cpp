#include "attention/method.h"

#include "attention/selection.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::attention {
namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// (query row, key) pairs of dense causal attention for the chunk, per q head.
int64_t dense_pairs(const PlanRequest& r) { return r.n_rows * r.q_slot0() + r.n_rows * (r.n_rows + 1) / 2; }

// A '/'-separated layer list ("0/4/8") as flags per layer; empty if not given.
std::vector<bool> layer_list(const MethodParams& params, const std::string& key, int32_t n_layers) {
  const std::string text = params.text(key);
  std::vector<bool> layers;
  if (text.empty()) return layers;
  layers.assign(static_cast<size_t>(std::max(n_layers, 1)), false);
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, '/')) {
    char* end = nullptr;
    const long l = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || l < 0 || (n_layers > 0 && l >= n_layers))
      throw std::invalid_argument(fmt::format("{}: {}={}: '{}' is not a layer (0..{})", params.method(), key, text,
                                              item, n_layers - 1));
    if (static_cast<size_t>(l) >= layers.size()) layers.resize(l + 1, false);
    layers[l] = true;
  }
  return layers;
}

std::vector<int32_t> sampled_rows(int64_t n_rows, int count) {
  const int64_t k = std::min<int64_t>(count, n_rows);
  std::vector<int32_t> rows;
  for (int64_t j = 0; j < k; ++j) rows.push_back(static_cast<int32_t>((j + 1) * n_rows / k - 1));
  return rows;
}

}  // namespace

AttentionMethod::AttentionMethod(const std::string& spec, int32_t n_layers) {
  const MethodSpec parsed = parse_method_spec(spec);
  name_ = parsed.name;
  const MethodDef* def = nullptr;
  for (const MethodDef& m : sparse_methods())
    if (m.info.name == name_) def = &m;
  if (!def && name_ != "dense") {
    std::string names = "dense";
    for (const MethodDef& m : sparse_methods()) names += ", " + m.info.name;
    throw std::invalid_argument(fmt::format("unknown attention method '{}' (available: {})", name_, names));
  }
  const MethodParams params(def ? &def->info : nullptr, name_, parsed.values);
  min_len_ = params.integer("min_len", 0, int64_t{1} << 30);
  dense_first_ = static_cast<int32_t>(params.integer("dense_first", 0, 1 << 16));
  dense_last_ = static_cast<int32_t>(params.integer("dense_last", 0, 1 << 16));
  last_q_ = params.integer("last_q", 0, int64_t{1} << 30);
  max_density_ = params.number("max_density", 0.0, 1.0);
  lambda_ = static_cast<float>(params.number("lambda", 0.0, 1.0));
  lambda_per_length_ = params.integer("lambda_per_len", 0, 1) != 0;
  const std::string gqa = params.text("gqa");
  if (gqa != "union" && gqa != "head") throw std::invalid_argument(fmt::format("{}: gqa={} (use union or head)", name_, gqa));
  group_union_ = gqa == "union";
  plans_layer_ = layer_list(params, "reuse", n_layers);
  if (!plans_layer_.empty() && !plans_layer_[0])
    throw std::invalid_argument(fmt::format("{}: reuse must include layer 0", name_));
  dense_layer_ = layer_list(params, "dense_layers", n_layers);
  // A method whose own rule is a mass target (tca, squeezed) takes target= itself.
  const bool own_target = def && std::any_of(def->info.params.begin(), def->info.params.end(),
                                             [](const AttentionParamInfo& p) { return p.name == "target"; });
  if (!own_target) target_ = params.number("target", 0.0, 1.0);
  if (def) planner_ = def->make(params);
  if (target_ > 0 && !(planner_ && planner_->estimates_mass())) {
    std::string estimating;
    for (const MethodDef& m : sparse_methods())
      if (const std::unique_ptr<Planner> p = m.make(MethodParams(&m.info, m.info.name, {})); p && p->estimates_mass())
        estimating += (estimating.empty() ? "" : ", ") + m.info.name;
    throw std::invalid_argument(fmt::format("{}: target= needs a method that estimates attention mass ({})", name_,
                                            estimating));
  }
  params.reject_unread();
}

AttentionMethod::~AttentionMethod() = default;

std::optional<Plan> AttentionMethod::make_plan(const PlanRequest& request, AttentionReport& report) {
  // A layer that gave back its first slots (a KV policy's per-layer budget)
  // runs dense: the estimators read keys from slot 0.
  if (!planner_ || request.kv.first_key > 0 || request.n_keys() < min_len_ || request.layer < dense_first_ ||
      request.layer >= request.n_layers - dense_last_ ||
      (static_cast<size_t>(request.layer) < dense_layer_.size() && dense_layer_[request.layer]))
    return std::nullopt;
  const bool plans_here = plans_layer_.empty() || (static_cast<size_t>(request.layer) < plans_layer_.size() &&
                                                   plans_layer_[request.layer]);
  if (!plans_here && reusable_seq_ == request.sequence && reusable_pos0_ == request.q_pos0 &&
      reusable_rows_ == request.n_rows) {
    if (reusable_) ++report.reused_plans;
    return reusable_;
  }
  PlanRequest r = request;
  r.group_union = group_union_;
  std::optional<Plan> plan;
  if (target_ > 0) {
    planner_->estimate_mass(r, mass_);
    KeySelection sel(r);
    select_to_target(mass_, target_, sel);
    plan = sel.build();
  } else {
    plan = planner_->plan(r);
  }
  if (plan && last_q_ > 0 && request.final_chunk && request.n_rows > 0)
    plan = densify_rows_from(*plan, std::max<int64_t>(0, request.n_rows - last_q_));
  // Near-dense plans run as dense: the kernel's sparse path costs about
  // 1.0-1.3x density x dense time (bench/attention_bench), so above this
  // density it saves nothing and dense is exact.
  if (plan && static_cast<double>(plan->listed_pairs()) > max_density_ * dense_pairs(request) * request.n_q_heads)
    plan.reset();
  if (!plans_layer_.empty()) {
    reusable_ = plan;
    reusable_seq_ = request.sequence;
    reusable_pos0_ = request.q_pos0;
    reusable_rows_ = request.n_rows;
  }
  return plan;
}

std::optional<Plan> AttentionMethod::plan(const PlanRequest& request) {
  AttentionReport unused;
  return make_plan(request, unused);
}

void AttentionMethod::prefill(const PlanRequest& request, const kernels::AttnParams& params, AttentionReport& report,
                              int fidelity_rows, const PlanRunner& run) {
  const size_t n_layers = static_cast<size_t>(request.n_layers);
  if (report.layer_pairs_dense.size() < n_layers) {
    report.layer_pairs_dense.resize(n_layers, 0);
    report.layer_pairs_listed.resize(n_layers, 0);
  }
  auto t0 = std::chrono::steady_clock::now();
  std::optional<Plan> plan = make_plan(request, report);
  report.plan_ms += ms_since(t0);

  if (lambda_ > 0.0f) {
    if (!plan) plan = make_dense_plan(request.shape(request.n_kv_heads, request.group(), kTileRows), true, request.n_keys());
    const float lambda = lambda_per_length_ ? lambda_ * 4096.0f / static_cast<float>(request.n_keys()) : lambda_;
    plan->skip_lambda.assign(static_cast<size_t>(plan->n_heads), std::min(lambda, 1.0f));
  }

  kernels::AttnParams a = params;
  std::vector<float> lse;
  const bool fidelity = plan && fidelity_rows > 0;
  if (fidelity) {
    lse.resize(static_cast<size_t>(request.n_q_heads * request.n_rows));
    a.lse = lse.data();
    a.lse_head_stride = request.n_rows;
  }
  kernels::AttnStats stats;
  a.stats = &stats;
  t0 = std::chrono::steady_clock::now();
  if (run) {
    run(a, plan ? &*plan : nullptr);
  } else {
    kernels::attention_prefill(a, plan ? &*plan : nullptr);
  }
  report.kernel_ms += ms_since(t0);
  // Pairs computed: an ordered plan's early stop leaves some listed ones out.
  const int64_t dense = dense_pairs(request) * request.n_q_heads;
  const int64_t computed = plan ? plan->listed_pairs() - stats.pairs_stopped : dense;
  report.pairs_dense += dense;
  report.pairs_listed += computed;
  report.layer_pairs_dense[request.layer] += dense;
  report.layer_pairs_listed[request.layer] += computed;
  ++(plan ? report.sparse_calls : report.dense_calls);
  report.key_tiles += stats.key_tiles;
  report.key_tiles_computed += stats.key_tiles_computed;
  if (fidelity) measure_fidelity(request, a, lse.data(), fidelity_rows, report, run);
}

void AttentionMethod::measure_fidelity(const PlanRequest& request, const kernels::AttnParams& params, const float* lse,
                                       int fidelity_rows, AttentionReport& report, const PlanRunner& run) const {
  const std::vector<int32_t> rows = sampled_rows(request.n_rows, fidelity_rows);
  const Plan dense = dense_plan_for_rows(request, rows);
  const int64_t hq = request.n_q_heads, n = request.n_rows, d = request.head_dim;
  std::vector<float> out(static_cast<size_t>(hq * n * d)), dense_lse(static_cast<size_t>(hq * n));
  kernels::AttnParams a = params;
  a.out = out.data();
  a.out_head_stride = n * d;
  a.out_row_stride = d;
  a.lse = dense_lse.data();
  a.lse_head_stride = n;
  a.stats = nullptr;
  if (run) {
    run(a, &dense);
  } else {
    kernels::attention_prefill(a, &dense);
  }

  const size_t n_heads = static_cast<size_t>(request.n_layers * hq);
  if (report.fidelity.size() < n_heads) report.fidelity.resize(n_heads);
  for (int64_t h = 0; h < hq; ++h) {
    HeadFidelity& f = report.fidelity[static_cast<size_t>(request.layer * hq + h)];
    for (int32_t i : rows) {
      const float l_dense = dense_lse[h * n + i], l_method = lse[h * n + i];
      const double recall = std::isfinite(l_method) ? std::exp(static_cast<double>(l_method) - l_dense) : 0.0;
      ++f.rows;
      f.recall_sum += recall;
      f.recall_min = std::min(f.recall_min, recall);
      f.recalls.push_back(static_cast<float>(recall));
      const float* od = out.data() + (h * n + i) * d;
      const float* om = params.out + h * params.out_head_stride + i * params.out_row_stride;
      for (int64_t k = 0; k < d; ++k) {
        f.err_sq_sum += static_cast<double>(om[k] - od[k]) * (om[k] - od[k]);
        f.ref_sq_sum += static_cast<double>(od[k]) * od[k];
      }
    }
  }
}

Plan dense_plan_for_rows(const PlanRequest& request, const std::vector<int32_t>& rows) {
  PlanBuilder b(request.shape(request.n_kv_heads, request.group(), kTileRows));
  for (int32_t h = 0; h < request.n_kv_heads; ++h) {
    b.set_row_map(rows);
    for (size_t t = 0; t < (rows.size() + kTileRows - 1) / kTileRows; ++t) {
      const int64_t last = request.q_slot0() + b.current_tile_rows().back();
      b.add_range(0, last + 1);
      b.end_tile();
    }
  }
  return b.finish();
}

Plan densify_rows_from(const Plan& plan, int64_t first_dense_row) {
  const float top = std::numeric_limits<float>::max();
  return kernels::rebuild_plan(plan, [&](kernels::PlanBuilder& b, int32_t h, int64_t t) {
    const int64_t last_row = plan.row_of(h, std::min(plan.head_rows(h), (t + 1) * plan.tile_rows) - 1);
    if (last_row >= first_dense_row) {
      b.add_range(0, plan.tile_last_slot(h, t) + 1, top);
    } else {
      kernels::copy_item_keys(plan, plan.head_item_begin[h] + t, b);
    }
  });
}

}  // namespace skim::attention
