// skim calibrate: the row restriction used to measure recall, the searches on
// synthetic layers, the engine's prefill hook, a short calibration of the real
// default model whose file the methods accept, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>

#include "engine/calibrate.h"
#include "attention/method.h"
#include "model/attention_observer.h"
#include "planner_problem.h"
#include "skim/attention.h"
#include "skim/context.h"
#include "skim/model.h"
#include "test_support.h"

namespace skim {
namespace {

using testing::PlannerProblem;

std::vector<float> lse_of(const PlannerProblem& p, const attention::Plan& plan) {
  std::vector<float> out(p.q.size()), lse(static_cast<size_t>(p.hq * p.n_rows));
  kernels::AttnParams a = p.params(out.data());
  a.lse = lse.data();
  a.lse_head_stride = p.n_rows;
  kernels::attention_prefill(a, &plan);
  return lse;
}

// The recall the calibration computes from prefix sums equals
// exp(LSE_plan - LSE_dense) from the kernel, for plans of any tiling.
TEST(Calibrate, MassTableRecallIsTheKernelsLseRatio) {
  for (auto [hq, hkv, n, pos0, spec] :
       {std::tuple{4, 4, 700, 300, "sale:theta=0.05"}, std::tuple{9, 3, 512, 2000, "sale:theta=0.02"},
        std::tuple{7, 1, 333, 900, "streaming:sink=16,local=100"}, std::tuple{6, 2, 512, 1000, "sale:theta=0.05,gqa=head"},
        std::tuple{6, 2, 130, 1000, "power:local=64,gqa=head"}}) {
    PlannerProblem p(hq, hkv, 64, n, pos0, 4, 1.0f);
    const std::optional<attention::Plan> plan = p.plan(spec);
    ASSERT_TRUE(plan);
    const std::vector<float> sparse = lse_of(p, *plan);
    const std::vector<float> dense = lse_of(p, attention::make_dense_plan({hkv, hq / hkv, 64, n, pos0}));
    const std::vector<int32_t> rows = calibration::calibration_rows(n);
    calibration::MassTable mass;
    mass.build(p.request(), rows);
    double lowest = 1;
    for (int32_t h = 0; h < hq; ++h)
      for (size_t ri = 0; ri < rows.size(); ++ri) {
        const double want = std::exp(static_cast<double>(sparse[h * n + rows[ri]]) - dense[h * n + rows[ri]]);
        EXPECT_NEAR(mass.recall(*plan, h, ri), want, 2e-5) << spec << " h " << h << " row " << rows[ri];
        lowest = std::min(lowest, want);
      }
    EXPECT_LT(lowest, 0.99) << spec;  // the plans are sparse enough to matter
  }
  EXPECT_EQ(calibration::calibration_rows(512).size(), 64u);
  EXPECT_EQ(calibration::calibration_rows(512).front(), 7);
  EXPECT_EQ(calibration::calibration_rows(5), std::vector<int32_t>{4});
}

// Four identical layers of a structured problem: every head's budget and theta
// come from the candidate grids, reach the target, and reuse loses nothing.
TEST(Calibrate, SearchesOnSyntheticLayers) {
  PlannerProblem p(6, 2, 64, 512, 3584, 12, 4.0f);
  calibration::CalibrationOptions o;
  o.reuse_layers = 2;
  calibration::Calibrator cal(4, 6, p.n_keys(), o);
  for (int32_t l = 0; l < 4; ++l) cal.observe(p.request(l, 4));
  const calibration::CalibrationResult r = cal.finish();
  ASSERT_EQ(r.minference.size(), 24u);
  ASSERT_EQ(r.sale.size(), 24u);
  for (const calibration::MinferenceHead& h : r.minference) {
    EXPECT_TRUE(h.reached);
    EXPECT_GE(h.recall, 0.95);
    EXPECT_LT(h.density, 1.0);
    bool listed = false;
    for (const calibration::VsBudget& c : r.vs_candidates) listed = listed || (c.v == h.budget.v && c.s == h.budget.s);
    EXPECT_TRUE(listed);
  }
  for (const calibration::SaleHead& h : r.sale) {
    EXPECT_TRUE(h.reached);
    EXPECT_GE(h.recall, 0.95);
    EXPECT_NE(std::find(r.sale_thetas.begin(), r.sale_thetas.end(), h.theta), r.sale_thetas.end());
  }
  ASSERT_EQ(r.reuse_layers.size(), 2u);
  EXPECT_EQ(r.reuse_layers.front(), 0);
  EXPECT_NEAR(r.reuse_recall, r.plan_recall, 1e-9);  // identical layers: a reused plan is the layer's own
  EXPECT_FALSE(r.blasst_points.empty());              // the chunk ends at len: measured
  const nlohmann::json j = nlohmann::json::parse(r.to_json().dump());
  EXPECT_EQ(j["minference"]["heads"].size(), 24u);
  EXPECT_EQ(j["reuse"], r.reuse_value());
}

// Routing: two layers whose attention has heavy keys (a 0.95 target is cheap)
// and two near-uniform ones (the target needs most blocks): the latter run dense.
TEST(Calibrate, RouteSendsLayersThatStayDenseToDense) {
  PlannerProblem peaked(6, 2, 64, 512, 3584, 12);
  peaked.add_heavy_keys(300, 1900, 100, 1.0f);
  const PlannerProblem flat(6, 2, 64, 512, 3584, 13);
  calibration::CalibrationOptions o;
  o.reuse_layers = 1;
  o.route_method = "s2o:target=0.95,gqa=head";
  calibration::Calibrator cal(4, 6, peaked.n_keys(), o);
  for (int32_t l = 0; l < 4; ++l) cal.observe((l < 2 ? peaked : flat).request(l, 4));
  const calibration::CalibrationResult r = cal.finish();
  ASSERT_EQ(r.route.size(), 4u);
  for (int32_t l = 0; l < 2; ++l) {
    EXPECT_FALSE(r.route[l].dense) << l;
    EXPECT_GE(r.route[l].recall, 0.95 - 1e-6) << l;  // E4 samples exactly the rows recall is measured on
    EXPECT_LT(r.route[l].density, 0.5) << l;
  }
  for (int32_t l = 2; l < 4; ++l) {
    EXPECT_TRUE(r.route[l].dense) << l;
    EXPECT_GT(r.route[l].density, 0.5) << l;
  }
  EXPECT_EQ(r.route_value(), "2/3");
  const nlohmann::json j = nlohmann::json::parse(r.to_json().dump());
  EXPECT_EQ(j["route"]["dense_layers"], "2/3");
  EXPECT_EQ(j["route"]["layers"].size(), 4u);
}

TEST(Calibrate, BadOptionsAreClearErrors) {
  calibration::CalibrationOptions o;
  EXPECT_THROW(calibration::Calibrator(4, 6, 100, o), std::invalid_argument);  // too short
  auto with = [&](auto change) {
    calibration::CalibrationOptions c;
    change(c);
    return c;
  };
  for (const calibration::CalibrationOptions& bad :
       {with([](auto& c) { c.minference_target = 1.5; }), with([](auto& c) { c.sale_target = 0; }),
        with([](auto& c) { c.reuse_layers = 5; }), with([](auto& c) { c.reuse_planner = "nosuch"; }),
        with([](auto& c) { c.reuse_planner = "blasst"; }), with([](auto& c) { c.reuse_planner = "sale:theta=7"; }),
        with([](auto& c) { c.blasst_targets = {1.0}; }), with([](auto& c) { c.n_ubatch = 8; }),
        with([](auto& c) { c.route_method = "nosuch"; }), with([](auto& c) { c.route_method = "dense"; }),
        with([](auto& c) { c.route_method = "s2o:target=2"; }),
        with([](auto& c) { c.route_method = "s2o"; c.route_target = 0; }),
        with([](auto& c) { c.route_method = "s2o"; c.route_density = 1.5; })}) {
    try {
      calibration::Calibrator cal(4, 6, 4096, bad);
      ADD_FAILURE() << "accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_GT(std::string(e.what()).size(), 10u);
    }
  }
  calibration::Calibrator cal(4, 6, 4096, o);
  PlannerProblem p(3, 1, 64, 64, 100);
  EXPECT_THROW(cal.observe(p.request(0, 4)), std::invalid_argument);  // 3 heads, not 6
}

TEST(Calibrate, PrefillHookSeesEveryLayerOfEveryChunk) {
  const std::unique_ptr<Model> model = Model::load(test::require_model(paths::kDefaultModel));
  const int32_t n_layer = model->config().n_layer;
  std::vector<int32_t> tokens = model->tokenizer().encode(test::long_english_text().substr(0, 4000), true, false);
  tokens.resize(300);
  ContextParams cp;
  cp.n_ctx = 512;
  cp.n_ubatch = 128;
  std::vector<std::tuple<int32_t, int64_t, int64_t, bool>> calls;
  AttentionObserver hook;
  hook.on_prefill_attention = [&](const attention::PlanRequest& r) {
    EXPECT_NE(r.q, nullptr);
    EXPECT_EQ(r.kv.n_keys, r.q_pos0 + r.n_rows);
    calls.emplace_back(r.layer, r.q_pos0, r.n_rows, r.final_chunk);
  };
  Context ctx(*model, cp);
  ContextInternals::set_observer(ctx, hook);
  // All logits: the observer keeps every row of the last layer, and so does a
  // context without one when every row wants logits.
  const std::vector<float> hooked = ctx.decode(tokens, true);
  ASSERT_EQ(calls.size(), static_cast<size_t>(3 * n_layer));  // chunks 0, 128, 256
  EXPECT_EQ(calls[0], std::make_tuple(0, int64_t{0}, int64_t{128}, false));
  EXPECT_EQ(calls.back(), std::make_tuple(n_layer - 1, int64_t{256}, int64_t{44}, true));
  const int32_t next = 42;
  ctx.decode({&next, 1});  // decode steps do not call it
  EXPECT_EQ(calls.size(), static_cast<size_t>(3 * n_layer));
  Context plain(*model, cp);
  EXPECT_EQ(plain.decode(tokens, true), hooked);  // observing changes nothing
}

// A short calibration of the default model: the file is well formed and the
// methods accept what it says.
TEST(Calibrate, DefaultModelWritesAFileTheMethodsAccept) {
  const std::string model_path = test::require_model(paths::kDefaultModel);
  const std::unique_ptr<Model> model = Model::load(model_path);
  const int32_t n_layer = model->config().n_layer, n_head = model->config().n_head;
  std::string text = calibration::default_calibration_text();
  text.resize(std::min<size_t>(text.size(), 1024 * 12));
  std::vector<int32_t> tokens = model->tokenizer().encode(text, true, false);
  ASSERT_GE(tokens.size(), 1024u);
  tokens.resize(1024);
  calibration::CalibrationOptions o;
  o.len = 1024;
  const calibration::CalibrationResult r = calibration::calibrate(*model, tokens, o);

  const test::TempDir dir;
  const std::filesystem::path path = dir / "calibration.json";
  {
    std::ofstream out(path);
    out << r.to_json().dump(1);
  }
  std::ifstream in(path);
  const nlohmann::json j = nlohmann::json::parse(in);
  ASSERT_EQ(j["minference"]["heads"].size(), static_cast<size_t>(n_layer * n_head));
  std::set<std::pair<int, int>> seen;
  for (const nlohmann::json& h : j["minference"]["heads"]) {
    EXPECT_EQ(h["pattern"], "vertical_slash");
    EXPECT_GE(h["v"].get<int64_t>(), 30);
    EXPECT_GE(h["s"].get<int64_t>(), 100);
    EXPECT_LE(h["v"].get<int64_t>(), 1024);
    seen.emplace(h["layer"].get<int>(), h["head"].get<int>());
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(n_layer * n_head));
  EXPECT_EQ(j["sale"]["heads"].size(), static_cast<size_t>(n_layer * n_head));

  const std::string reuse = j["reuse"].get<std::string>();
  EXPECT_EQ(reuse.substr(0, 2), "0/");
  EXPECT_NO_THROW(attention::AttentionMethod("sale:reuse=" + reuse, n_layer)) << reuse;
  EXPECT_NO_THROW(validate_attention_spec("sale:config=" + path.string()));
  EXPECT_NO_THROW(validate_attention_spec("sale:reuse=" + reuse + ",config=" + path.string()));
  ASSERT_FALSE(r.blasst_lambda_4096.empty());
  for (const auto& [target, lambda] : r.blasst_lambda_4096) {
    EXPECT_GT(lambda, 0.0);
    EXPECT_LE(lambda, 1.0);
    EXPECT_NO_THROW(validate_attention_spec(fmt::format("blasst:lambda={},lambda_per_len=1", lambda)));
  }
  EXPECT_GT(j["blasst"]["b"].get<double>(), 0.0);  // more skipping needs a larger lambda
  // The calibrated thetas run on the model (chunks of 256: the second has keys to estimate).
  ContextParams cp;
  cp.n_ctx = 512;
  cp.n_ubatch = 256;
  cp.attention = "sale:max_density=1,min_len=0,config=" + path.string();  // every plan runs, however dense or short
  Context ctx(*model, cp);
  ctx.decode({tokens.data(), 512}, true);  // all logits: the last layer plans every row too
  EXPECT_EQ(ctx.attention_report().sparse_calls, 2 * n_layer);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace skim
