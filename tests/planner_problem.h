// A chunk of one layer's attention with random Q/K/V in the engine's layout
// (Q [rows][Hq*d] f32, cache [Hkv][keys][d] f16), for planner tests: run a
// method through AttentionMethod exactly as the model does and compare it with
// dense attention on the same inputs. bench/planner_bench times the same
// problems.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/method.h"
#include "attention/planner.h"
#include "kernels/attention.h"
#include "kernels/f16.h"
#include "skim/attention.h"

namespace skim::testing {

// `spec` with `keys` ("k=v,...") appended.
inline std::string with_keys(const std::string& spec, const std::string& keys) {
  return spec + (spec.find(':') == std::string::npos ? ":" : ",") + keys;
}

// A spec whose plan runs however dense it is (max_density=1): a full-budget
// check then compares the plan with dense, not the policy's dense fallback.
inline std::string as_planned(const std::string& spec) { return with_keys(spec, "max_density=1"); }

struct PlannerProblem {
  int32_t hq, hkv, d;
  int64_t n_rows, q_pos0;
  std::vector<float> q;
  std::vector<uint16_t> k, v;

  // `structure` > 0 adds a few strong "key directions" so attention has
  // peaks (heavy columns), like real heads, instead of being near-uniform.
  PlannerProblem(int32_t hq_, int32_t hkv_, int32_t d_, int64_t n_rows_, int64_t q_pos0_, uint32_t seed = 1,
                 float structure = 0.0f)
      : hq(hq_), hkv(hkv_), d(d_), n_rows(n_rows_), q_pos0(q_pos0_) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    const int64_t n_keys = q_pos0 + n_rows;
    q.resize(static_cast<size_t>(n_rows * hq * d));
    k.resize(static_cast<size_t>(hkv * n_keys * d));
    v.resize(k.size());
    for (float& x : q) x = gauss(rng);
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = kernels::f32_to_f16(gauss(rng));
      v[i] = kernels::f32_to_f16(gauss(rng));
    }
    if (structure > 0) {
      // Every 97th key aligns with every query: a vertical line of high weight.
      for (int32_t h = 0; h < hkv; ++h)
        for (int64_t j = 0; j < n_keys; j += 97)
          for (int32_t c = 0; c < d; ++c) k[(h * n_keys + j) * d + c] = kernels::f32_to_f16(structure);
      for (float& x : q) x = std::abs(x);
    }
  }

  int64_t n_keys() const { return q_pos0 + n_rows; }

  // Heavy keys (all components `value`, queries made positive): runs of
  // `width` keys starting at first, first + spacing, ... They carry nearly all
  // the attention mass.
  void add_heavy_keys(int64_t first, int64_t spacing, int64_t width, float value) {
    for (int32_t h = 0; h < hkv; ++h)
      for (int64_t j0 = first; j0 < n_keys(); j0 += spacing)
        for (int64_t j = j0; j < std::min(n_keys(), j0 + width); ++j)
          for (int32_t c = 0; c < d; ++c) k[(h * n_keys() + j) * d + c] = kernels::f32_to_f16(value);
    for (float& x : q) x = std::abs(x);
  }

  attention::PlanRequest request(int32_t layer = 0, int32_t n_layers = 1) const {
    attention::PlanRequest r;
    r.layer = layer;
    r.n_layers = n_layers;
    r.n_q_heads = hq;
    r.n_kv_heads = hkv;
    r.head_dim = d;
    r.n_rows = n_rows;
    r.q_pos0 = q_pos0;
    r.q = q.data();
    r.q_head_stride = d;
    r.q_row_stride = static_cast<int64_t>(hq) * d;
    r.kv = kernels::KvView::contiguous(k.data(), v.data(), kernels::KvDType::F16, n_keys() * d, d, n_keys());
    r.scale = 1.0f / std::sqrt(static_cast<float>(d));
    return r;
  }

  kernels::AttnParams params(float* out) const {
    const attention::PlanRequest r = request();
    kernels::AttnParams a;
    a.n_q_heads = hq;
    a.n_kv_heads = hkv;
    a.head_dim = d;
    a.n_rows = n_rows;
    a.q_pos0 = q_pos0;
    a.q = q.data();
    a.q_head_stride = r.q_head_stride;
    a.q_row_stride = r.q_row_stride;
    a.kv = r.kv;
    a.out = out;
    a.out_head_stride = d;
    a.out_row_stride = r.q_row_stride;
    a.validate_plan = true;
    return a;
  }

  std::vector<float> dense() const {
    std::vector<float> out(q.size());
    kernels::attention_prefill(params(out.data()));
    return out;
  }

  // Runs `spec` as the model would for layer `layer` of `n_layers`. Unless the
  // spec sets min_len, the planner runs however few keys the chunk has (the
  // methods' crossover defaults would run these small problems dense).
  std::vector<float> run(const std::string& spec, AttentionReport* report = nullptr, int32_t layer = 0,
                         int32_t n_layers = 1, int fidelity_rows = 0) const {
    const bool sets_min_len = spec.find("min_len=") != std::string::npos;
    attention::AttentionMethod method(sets_min_len ? spec : with_keys(spec, "min_len=0"), n_layers);
    std::vector<float> out(q.size());
    AttentionReport local;
    method.prefill(request(layer, n_layers), params(out.data()), report ? *report : local, fidelity_rows);
    return out;
  }

  // The method's own plan for this chunk (nullopt = dense), validated; the
  // policy keys other than gqa do not apply.
  std::optional<attention::Plan> plan(const std::string& spec) const {
    const attention::MethodSpec parsed = attention::parse_method_spec(spec);
    for (const attention::MethodDef& m : attention::sparse_methods()) {
      if (m.info.name != parsed.name) continue;
      const attention::MethodParams p(&m.info, m.info.name, parsed.values);
      std::unique_ptr<attention::Planner> planner = m.make(p);
      if (!planner) return std::nullopt;
      attention::PlanRequest r = request();
      r.group_union = p.text("gqa") == "union";
      std::optional<attention::Plan> plan = planner->plan(r);
      if (plan) attention::validate_plan(*plan, n_keys(), true);
      return plan;
    }
    throw std::invalid_argument("no sparse method " + parsed.name);
  }
};

struct Recall {
  double mean = 0, min = 1, density = 0;
};

// Recall exp(LSE_sparse - LSE_dense) on 32 sampled rows per chunk (all rows
// planned, and every plan run as planned: last_q=0, max_density=1).
inline Recall measure(const PlannerProblem& p, const std::string& spec) {
  AttentionReport report;
  p.run(with_keys(spec, "last_q=0,max_density=1"), &report, 0, 1, 32);
  Recall r;
  r.density = report.density();
  for (const HeadFidelity& f : report.fidelity) {
    r.mean += f.recall_mean() / static_cast<double>(report.fidelity.size());
    r.min = std::min(r.min, f.recall_min);
  }
  return r;
}

// Pairs a plan lists over the dense causal pairs of the problem.
inline double plan_density(const attention::Plan& plan, const PlannerProblem& p) {
  const double per_head = static_cast<double>(p.n_rows) * p.q_pos0 + p.n_rows * (p.n_rows + 1) / 2.0;
  return static_cast<double>(plan.listed_pairs()) / (per_head * p.hq);
}

// ||out - ref|| / ||ref||, in double.
inline double rel_l2(const std::vector<float>& out, const std::vector<float>& ref) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    err += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(err / norm);
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace skim::testing
