// skim calibrate: per-model settings for the sparse-prefill methods
// (MInference budgets, SALE thetas, IndexCache reuse layers, BLASST lambda),
// chosen on calibration text and written to one JSON file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "engine/calibrate.h"
#include "common.h"
#include "skim/attention.h"
#include "skim/model.h"

namespace skim::cli {
namespace {

struct CalibrateOptions : SharedOptions {
  std::string file, out, reuse_planner, blasst_targets = "0.5,0.7", route;
  int64_t len = 4096;
  double target = 0.95, sale_target = 0.95, route_target = 0.95, route_density = 0.5;
  int reuse_layers = 0;
  bool quiet = false;
};

std::vector<double> parse_list(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    double x = 0;
    try {
      x = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size()) throw std::invalid_argument(fmt::format("'{}' is not a list of numbers", s));
    out.push_back(x);
  }
  return out;
}

// The spec with a key added ("NAME" -> "NAME:k=v", "NAME:a=b" -> "NAME:a=b,k=v").
std::string with_key(const std::string& spec, const std::string& kv) {
  return spec + (spec.find(':') == std::string::npos ? ":" : ",") + kv;
}

void print_summary(const calibration::CalibrationResult& r, const std::string& path) {
  const int32_t H = r.n_heads;
  fmt::print("\n{} | {} tokens, chunks of {}, {} layers x {} q heads\n", r.model, r.tokens, r.n_ubatch, r.n_layers, H);
  fmt::print("recall = exp(LSE_plan - LSE_dense) on every 8th query row of the chunks in the second half; density = "
             "(row, key) pairs kept\n\n");
  fmt::print("layer | minference v/s (mean over heads)  recall  density | sale theta (geo mean)  recall  density | reuse\n");
  int32_t vs_missed = 0, sale_missed = 0;
  double vs_recall = 0, vs_density = 0, sale_recall = 0, sale_density = 0;
  for (int32_t l = 0; l < r.n_layers; ++l) {
    double v = 0, s = 0, rec = 0, den = 0, th = 0, srec = 0, sden = 0, min_rec = 1;
    for (int32_t h = 0; h < H; ++h) {
      const auto& m = r.minference[static_cast<size_t>(l * H + h)];
      const auto& a = r.sale[static_cast<size_t>(l * H + h)];
      v += m.budget.v;
      s += m.budget.s;
      rec += m.recall;
      min_rec = std::min(min_rec, m.recall);
      den += m.density;
      th += std::log(a.theta);
      srec += a.recall;
      sden += a.density;
      vs_missed += !m.reached;
      sale_missed += !a.reached;
    }
    vs_recall += rec / H;
    vs_density += den / H;
    sale_recall += srec / H;
    sale_density += sden / H;
    const bool plans = std::find(r.reuse_layers.begin(), r.reuse_layers.end(), l) != r.reuse_layers.end();
    fmt::print("{:5} | {:6.0f} / {:6.0f} (min recall {:.3f})  {:6.3f}  {:7.3f} | {:21.4f}  {:6.3f}  {:7.3f} | {} {:.3f}\n", l,
               v / H, s / H, min_rec, rec / H, den / H, std::exp(th / H), srec / H, sden / H,
               plans ? "plans " : "reuses", r.reuse_layer_recall[static_cast<size_t>(l)]);
  }
  const double L = r.n_layers;
  fmt::print("  all | minference recall {:.3f} at density {:.3f} (target {:.2f}; {} of {} heads below it at the largest "
             "budget)\n",
             vs_recall / L, vs_density / L, r.minference_target, vs_missed, r.minference.size());
  fmt::print("      | sale recall {:.3f} at density {:.3f} (target {:.2f}; {} heads below it at the smallest theta)\n",
             sale_recall / L, sale_density / L, r.sale_target, sale_missed);
  fmt::print("      | reuse ({}): {} planning layers {}: mean recall {:.3f} at density {:.3f} (every layer planning: "
             "{:.3f} at {:.3f})\n",
             r.reuse_planner, r.reuse_layers.size(), r.reuse_value(), r.reuse_recall, r.reuse_density, r.plan_recall,
             r.plan_density);
  if (r.blasst_lambda_4096.empty()) {
    fmt::print("      | blasst: too few lambdas skipped between 1% and 99% of tiles to fit lambda = a exp(b t) / L\n");
  } else {
    fmt::print("      | blasst: lambda = {:.4g} exp({:.3f} target) / keys;", r.blasst_a, r.blasst_b);
    for (const auto& [t, lambda] : r.blasst_lambda_4096)
      fmt::print(" {:g} skipped: lambda {:.3g} at 4096{}", t, lambda,
                 t > r.blasst_max_skipped ? fmt::format(" (beyond the {:.2f} measured{})", r.blasst_max_skipped,
                                                        lambda >= 1.0 ? ", clamped to 1" : "")
                                          : "");
    fmt::print("\n");
  }
  if (!r.route_method.empty()) {
    fmt::print("      | route {}: layer (recall, density):", r.route_method);
    for (size_t l = 0; l < r.route.size(); ++l)
      fmt::print(" {}{} ({:.3f}, {:.3f})", l, r.route[l].dense ? " dense" : "", r.route[l].recall, r.route[l].density);
    fmt::print("\n");
  }
  fmt::print("        blasst measured (keys, lambda: skipped):");
  for (const auto& p : r.blasst_points) fmt::print(" ({}, {:g}: {:.2f})", p.keys, p.lambda, p.skipped);
  fmt::print("\n\nwrote {} ({:.1f} s)\n\nuse it with:\n", path, r.seconds);

  std::vector<std::pair<std::string, std::string>> specs = {
      {"minference:config=" + path, "vertical-slash with these per-head budgets"},
      {"sale:config=" + path, "SALE with these per-head thetas"},
      {with_key(r.reuse_planner, "reuse=" + r.reuse_value()), "IndexCache: only the listed layers plan"}};
  if (!r.route_method.empty())
    specs.push_back({r.route.empty() || r.route_value().empty() ? r.route_method
                                                                 : with_key(r.route_method, "dense_layers=" + r.route_value()),
                     fmt::format("routed: layers below recall {:g} or above density {:g} run dense", r.route_target,
                                 r.route_density)});
  for (const auto& [t, lambda] : r.blasst_lambda_4096)
    specs.push_back({fmt::format("blasst:lambda={:.3g},lambda_per_len=1", lambda), fmt::format("~{:g} of tiles skipped", t)});
  for (const auto& [spec, what] : specs) {
    std::string note;
    try {
      validate_attention_spec(spec);
    } catch (const std::exception& e) {
      note = fmt::format("  (not usable in this build: {})", e.what());
    }
    fmt::print("  --attn {}   # {}{}\n", spec, what, note);
  }
}

void calibrate(const CalibrateOptions& o) {
  Stopwatch clock;
  if (!o.route.empty()) validate_attention_spec(o.route);  // before the model loads and progress starts
  const std::string path = resolve_model(o);
  std::unique_ptr<Model> model = Model::load(path, o.model_options);
  std::string source = o.file;
  std::string text = o.file.empty() ? calibration::default_calibration_text(&source) : read_file(o.file);
  // ~4.5 characters per token in English: 12 per token is plenty and keeps tokenizing short.
  if (static_cast<int64_t>(text.size()) > o.len * 12) text.resize(static_cast<size_t>(o.len * 12));
  std::vector<int32_t> tokens = model->tokenizer().encode(text, true, false);
  if (static_cast<int64_t>(tokens.size()) < o.len)
    throw std::runtime_error(fmt::format("the calibration text ({}) has {} tokens; --len {} needs more (give -f FILE)",
                                         source, tokens.size(), o.len));
  tokens.resize(static_cast<size_t>(o.len));

  calibration::CalibrationOptions co;
  co.len = o.len;
  co.n_ubatch = o.n_ubatch;
  co.n_threads = resolve_threads(o.threads);
  co.minference_target = o.target;
  co.sale_target = o.sale_target;
  co.reuse_planner = o.reuse_planner;
  co.reuse_layers = o.reuse_layers;
  co.blasst_targets = parse_list(o.blasst_targets);
  co.route_method = o.route;
  co.route_target = o.route_target;
  co.route_density = o.route_density;
  if (!o.quiet)
    co.log = [](const std::string& line) {
      std::fprintf(stderr, "%s\n", line.c_str());
      std::fflush(stderr);
    };
  if (!o.quiet)
    std::fprintf(stderr, "calibrate: %s, %lld tokens of %s\n", path.c_str(), static_cast<long long>(o.len), source.c_str());
  calibration::CalibrationResult r = calibration::calibrate(*model, tokens, co);
  r.seconds = clock.ms() / 1000.0;

  const std::filesystem::path out = o.out.empty() ? calibration::default_calibration_path(path) : std::filesystem::path(o.out);
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
  nlohmann::json j = r.to_json();
  j["model_file"] = path;
  j["text"] = source;
  std::ofstream f(out);
  if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", out.string()));
  f << j.dump(1) << "\n";
  if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", out.string()));
  f.close();
  print_summary(r, out.string());
}

}  // namespace

void register_calibrate(CLI::App& app) {
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* cmd = app.add_subcommand(
      "calibrate", "choose per-model sparse-attention settings on calibration text (MInference budgets, SALE "
                   "thetas, reuse layers, BLASST lambda) and write them to a JSON file");
  // The calibrator refuses chunks under 64 tokens.
  add_shared_options(*cmd, *o, {{Opt::Model}, {Opt::Threads}, {Opt::Gemm}, {Opt::AttnMath}, {.opt = Opt::Ubatch, .range = Range{64, 1 << 20}}, {Opt::Rope}});
  cmd->add_option("-f,--file", o->file, "calibration text (default: a cached long English text)")->check(CLI::ExistingFile);
  cmd->add_option("--len", o->len, "calibration tokens")->check(in_range(int64_t{256}, int64_t{kMaxTokens}));
  cmd->add_option("-o,--out", o->out, "output file (default: <cache>/calibration/<model file stem>.json)");
  cmd->add_option("--target", o->target, "recall a MInference budget must reach")->check(in_range(0.01, 1.0));
  cmd->add_option("--sale-target", o->sale_target, "recall a SALE theta must keep")->check(in_range(0.01, 1.0));
  cmd->add_option("--reuse-planner", o->reuse_planner,
                  "reference planner spec for the reuse search (default: xattention if built in, else sale)");
  cmd->add_option("--reuse-layers", o->reuse_layers, "planning layers to choose (0: n_layers / 4)")
      ->check(at_least(0));
  cmd->add_option("--blasst-targets", o->blasst_targets, "tile-skip fractions to give BLASST lambdas for");
  cmd->add_option("--route", o->route,
                  "method spec to route layers for (e.g. s2o:target=0.95): layers it cannot make sparse at the "
                  "target recall and density run dense (dense_layers=)");
  cmd->add_option("--route-target", o->route_target, "recall a routed layer must keep")->check(in_range(0.01, 1.0));
  cmd->add_option("--route-density", o->route_density, "density above which a layer runs dense")
      ->check(in_range(0.01, 1.0));
  cmd->add_flag("-q,--quiet", o->quiet, "no progress lines");
  cmd->callback([o] { calibrate(*o); });
}

}  // namespace skim::cli
