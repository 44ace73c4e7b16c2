#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "eval/tasks.h"

namespace skim::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

size_t task_rank(const std::string& task) {
  const auto& all = tasks();
  return std::find_if(all.begin(), all.end(), [&](const TaskInfo& t) { return t.name == task; }) - all.begin();
}

std::string pct(double x) { return std::isnan(x) ? "-" : fmt::format("{:.1f}", 100 * x); }
std::string num(double x, int digits) { return std::isnan(x) ? "-" : fmt::format("{:.{}f}", x, digits); }
std::string signed_pp(double x) { return fmt::format("{:+.1f}", 100 * x); }

std::vector<AccuracyCell> accuracy_cells(const ResultStore& store, const std::vector<std::string>& methods) {
  auto method_rank = [&](const std::string& m) { return std::find(methods.begin(), methods.end(), m) - methods.begin(); };
  std::map<std::tuple<std::string, int, int>, const TaskRecord*> dense;  // (task, length, sample)
  std::map<std::tuple<size_t, int, long, std::string>, std::vector<const TaskRecord*>> groups;
  for (const TaskRecord& r : store.tasks()) {
    if (r.method == "dense") dense[{r.task, r.length, r.sample}] = &r;
    groups[{task_rank(r.task), r.length, method_rank(r.method), r.task}].push_back(&r);
  }
  std::vector<AccuracyCell> cells;
  for (const auto& [key, records] : groups) {
    AccuracyCell c;
    c.task = std::get<3>(key);
    c.length = std::get<1>(key);
    c.method = records.front()->method;
    c.density = 0;
    double dense_ms = 0, method_ms = 0;
    PairedCounts paired;
    double kv_share = 0;
    bool all_shares = true;
    for (const TaskRecord* r : records) {
      c.n++;
      all_shares = all_shares && r->kv_share.has_value();
      kv_share += r->kv_share.value_or(0.0);
      c.correct += r->correct;
      c.score += r->score;
      c.density += r->density;
      c.prefill_ms += r->prefill_ms;
      const auto d = dense.find({r->task, r->length, r->sample});
      if (c.method == "dense" || d == dense.end()) continue;
      const bool m_ok = r->correct, d_ok = d->second->correct;
      (m_ok ? (d_ok ? paired.both : paired.only_method) : (d_ok ? paired.only_dense : paired.neither))++;
      dense_ms += d->second->prefill_ms;
      method_ms += r->prefill_ms;
    }
    c.density /= c.n;
    if (all_shares) c.kv_share = kv_share / c.n;
    c.score /= c.n;
    c.prefill_ms /= c.n;
    c.ci = wilson(c.correct, c.n);
    if (paired.n() > 0) {
      c.paired = paired;
      c.diff_ci = newcombe_paired(paired);
      c.speedup = method_ms > 0 ? dense_ms / method_ms : kNaN;
    }
    cells.push_back(c);
  }
  return cells;
}

std::vector<DepthCell> depth_cells(const ResultStore& store, const std::vector<std::string>& methods) {
  std::map<std::tuple<size_t, long, int, double>, DepthCell> grid;
  for (const TaskRecord& r : store.tasks()) {
    if (!r.depth) continue;
    const long m = std::find(methods.begin(), methods.end(), r.method) - methods.begin();
    DepthCell& c = grid[{task_rank(r.task), m, r.length, *r.depth}];
    c.task = r.task;
    c.method = r.method;
    c.length = r.length;
    c.depth = *r.depth;
    c.n++;
    c.correct += r.correct;
  }
  std::vector<DepthCell> out;
  for (const auto& [key, c] : grid) out.push_back(c);
  return out;
}

std::vector<PplRow> ppl_rows(const ResultStore& store, const std::vector<std::string>& methods) {
  std::map<std::pair<int, int>, double> dense_ms;  // (length, window)
  for (const PplRecord& r : store.ppl())
    if (r.method == "dense") dense_ms[{r.length, r.window}] = r.prefill_ms;
  std::map<std::pair<int, long>, std::vector<const PplRecord*>> groups;
  for (const PplRecord& r : store.ppl())
    groups[{r.length, std::find(methods.begin(), methods.end(), r.method) - methods.begin()}].push_back(&r);
  std::vector<PplRow> rows;
  for (const auto& [key, records] : groups) {
    PplRow row;
    row.length = key.first;
    row.method = records.front()->method;
    double nll = 0, nll_dense = 0, density = 0, paired_dense_ms = 0, paired_ms = 0;
    int64_t agree = 0;
    std::vector<double> kl;
    for (const PplRecord* r : records) {
      row.windows++;
      row.scored += r->scored;
      nll += r->nll;
      nll_dense += r->nll_dense;
      agree += r->top1_agree;
      density += r->density;
      row.prefill_ms += r->prefill_ms;
      kl.insert(kl.end(), r->kl.begin(), r->kl.end());
      if (const auto d = dense_ms.find({r->length, r->window}); d != dense_ms.end()) {
        paired_dense_ms += d->second;
        paired_ms += r->prefill_ms;
      }
    }
    row.ppl = std::exp(nll / row.scored);
    row.ppl_dense = std::exp(nll_dense / row.scored);
    row.top1 = static_cast<double>(agree) / row.scored;
    row.density = density / row.windows;
    row.prefill_ms /= row.windows;
    row.speedup = paired_ms > 0 ? paired_dense_ms / paired_ms : kNaN;
    double kl_sum = 0;
    for (double v : kl) kl_sum += v;
    row.kl_mean = kl.empty() ? kNaN : kl_sum / kl.size();
    row.kl_median = percentile(kl, 50);
    row.kl_p99 = percentile(kl, 99);
    row.kl_max = kl.empty() ? kNaN : *std::max_element(kl.begin(), kl.end());
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

std::string length_label(int length) { return length % 1024 == 0 ? fmt::format("{}K", length / 1024) : std::to_string(length); }

Summary summarize(const ResultStore& store) {
  Summary s;
  auto see = [&](const std::string& m) {
    if (std::find(s.methods.begin(), s.methods.end(), m) == s.methods.end()) s.methods.push_back(m);
  };
  see("dense");
  for (const TaskRecord& r : store.tasks()) see(r.method);
  for (const PplRecord& r : store.ppl()) see(r.method);
  s.cells = accuracy_cells(store, s.methods);
  s.depths = depth_cells(store, s.methods);
  s.ppl = ppl_rows(store, s.methods);
  return s;
}

nlohmann::json to_json(const Summary& s) {
  nlohmann::json cells = nlohmann::json::array(), depths = nlohmann::json::array(), ppl = nlohmann::json::array();
  for (const AccuracyCell& c : s.cells) {
    nlohmann::json j = {{"task", c.task},       {"length", c.length},         {"method", c.method},
                        {"n", c.n},             {"correct", c.correct},       {"accuracy", static_cast<double>(c.correct) / c.n},
                        {"ci", {c.ci.lo, c.ci.hi}}, {"score", c.score},       {"density", c.density},
                        {"prefill_ms", c.prefill_ms}, {"speedup", c.speedup}};
    if (c.kv_share) j["kv_share"] = *c.kv_share;
    if (c.paired) {
      j["diff"] = c.paired->difference();
      j["diff_ci"] = {c.diff_ci.lo, c.diff_ci.hi};
      j["pairs"] = c.paired->n();
    }
    cells.push_back(std::move(j));
  }
  for (const DepthCell& c : s.depths)
    depths.push_back({{"task", c.task}, {"method", c.method}, {"length", c.length}, {"depth", c.depth}, {"n", c.n}, {"correct", c.correct}});
  for (const PplRow& r : s.ppl)
    ppl.push_back({{"length", r.length},   {"method", r.method},       {"windows", r.windows},   {"scored", r.scored},
                   {"ppl", r.ppl},         {"ppl_dense", r.ppl_dense}, {"kl_mean", r.kl_mean},   {"kl_median", r.kl_median},
                   {"kl_p99", r.kl_p99},   {"kl_max", r.kl_max},       {"top1", r.top1},         {"density", r.density},
                   {"prefill_ms", r.prefill_ms}, {"speedup", r.speedup}});
  return {{"methods", s.methods}, {"accuracy", cells}, {"depths", depths}, {"ppl", ppl}};
}

std::string render_markdown(const Summary& s, const RunConfig& config, const std::string& command,
                            const nlohmann::json& fidelity, const std::vector<std::string>& plots) {
  std::string md = "# skim eval report\n\n";
  md += fmt::format("Model `{}`, seed {}, chat template {}, haystack text: {}.\n\nCommand: `{}`\n\n", config.model, config.seed,
                    config.chat ? "on" : "off", config.haystack == "cache" ? "State of the Union + Austen (scripts/fetch-haystack)" : "built-in fallback",
                    command);

  if (!s.cells.empty()) {
    md +=
        "## Task accuracy (T3)\n\n"
        "A sample is correct when every expected string occurs in the greedy prediction (RULER string_match_all = 1); "
        "*score* is the mean fraction found. Intervals are 95%: Wilson for accuracies; for the paired difference "
        "method - dense on the same samples, Newcombe's method 10 (square-and-add of the Wilson intervals with the "
        "paired phi correction). *+/-*: samples only the method got right / only dense got right. "
        "*speed-up*: dense prefill time / method prefill time on the same samples.\n\n"
        "| task | length | method | n | accuracy % | 95% CI | score % | diff vs dense (pp) | 95% CI | +/- | density | prefill ms | speed-up |\n"
        "|---|---|---|---:|---:|---|---:|---:|---|---|---:|---:|---:|\n";
    for (const AccuracyCell& c : s.cells) {
      const double acc = static_cast<double>(c.correct) / c.n;
      md += fmt::format("| {} | {} | `{}` | {} | {} | {}-{} | {} | {} | {} | {} | {:.3f} | {:.0f} | {} |\n", c.task, length_label(c.length),
                        c.method, c.n, pct(acc), pct(c.ci.lo), pct(c.ci.hi), pct(c.score),
                        c.paired ? signed_pp(c.paired->difference()) : "",
                        c.paired ? signed_pp(c.diff_ci.lo) + " to " + signed_pp(c.diff_ci.hi) : "",
                        c.paired ? fmt::format("{}/{}", c.paired->only_method, c.paired->only_dense) : "", c.density, c.prefill_ms,
                        c.paired ? num(c.speedup, 2) + "x" : "");
    }
    md += "\n";
  }

  if (!s.depths.empty()) {
    md += "## Needle depth x length\n\nAccuracy % (n) per cell; depth is where the needle was asked to go, in % of the haystack.\n\n";
    std::map<std::pair<std::string, std::string>, std::vector<const DepthCell*>> grids;  // (task, method), ordered below
    std::vector<std::pair<std::string, std::string>> order;
    for (const DepthCell& c : s.depths) {
      auto key = std::pair{c.task, c.method};
      if (!grids.count(key)) order.push_back(key);
      grids[key].push_back(&c);
    }
    for (const auto& key : order) {
      const auto& cells = grids[key];
      std::vector<int> lengths;
      std::vector<double> depth_values;
      for (const DepthCell* c : cells) {
        lengths.push_back(c->length);
        depth_values.push_back(c->depth);
      }
      std::sort(lengths.begin(), lengths.end());
      lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
      std::sort(depth_values.begin(), depth_values.end());
      depth_values.erase(std::unique(depth_values.begin(), depth_values.end()), depth_values.end());
      md += fmt::format("### {} - `{}`\n\n| depth % |", key.first, key.second);
      for (int l : lengths) md += fmt::format(" {} |", length_label(l));
      md += "\n|---:|";
      for (size_t i = 0; i < lengths.size(); ++i) md += "---:|";
      md += "\n";
      for (double d : depth_values) {
        md += fmt::format("| {:g} |", d);
        for (int l : lengths) {
          const auto it = std::find_if(cells.begin(), cells.end(), [&](const DepthCell* c) { return c->length == l && c->depth == d; });
          md += it == cells.end() ? " |" : fmt::format(" {} ({}) |", pct(static_cast<double>((*it)->correct) / (*it)->n), (*it)->n);
        }
        md += "\n";
      }
      md += "\n";
    }
  }

  if (!s.ppl.empty()) {
    md +=
        "## Perplexity and KL on Austen (T2)\n\n"
        "Non-overlapping windows of the given length; the second half of each window is scored. KL(dense || method) "
        "and top-1 agreement are per scored position, with dense computed in the same run.\n\n"
        "| length | method | windows | tokens | PPL | PPL / dense - 1 | mean KL | median KL | p99 KL | max KL | top-1 agree % | density | prefill ms | speed-up |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const PplRow& r : s.ppl)
      md += fmt::format("| {} | `{}` | {} | {} | {:.4f} | {} | {} | {} | {} | {} | {} | {:.3f} | {:.0f} | {} |\n", length_label(r.length),
                        r.method, r.windows, r.scored, r.ppl, r.method == "dense" ? "" : fmt::format("{:+.2f}%", 100 * (r.ppl / r.ppl_dense - 1)),
                        num(r.kl_mean, 5), num(r.kl_median, 5), num(r.kl_p99, 4), num(r.kl_max, 3), pct(r.top1), r.density, r.prefill_ms,
                        r.method == "dense" ? "" : num(r.speedup, 2) + "x");
    md += "\n";
  }

  if (fidelity.is_object() && !fidelity.at("runs").empty()) {
    md +=
        "## Attention fidelity (T1)\n\n"
        "Per (layer, head), on sampled query rows of every prefill run with --fidelity (a resumed eval keeps the "
        "runs of earlier invocations it did not repeat): recall = exp(LSE_method - LSE_dense) and relative L2 error "
        "of the attention output. Pooled over heads here; per head in fidelity.json. The methods' prefill times above "
        "include this measurement.\n\n"
        "| method | length | rows | mean recall | p1 recall | min recall | rel-L2 | worst head (layer.head: mean recall) |\n"
        "|---|---|---:|---:|---:|---:|---:|---|\n";
    for (const nlohmann::json& run : fidelity.at("runs")) {
      const nlohmann::json* worst = nullptr;
      for (const nlohmann::json& h : run.at("heads"))
        if (h.at("rows").get<int64_t>() > 0 && (!worst || h.at("recall_mean").get<double>() < worst->at("recall_mean").get<double>())) worst = &h;
      // A figure of no rows is NaN, which JSON stores as null.
      const auto figure = [&run](const char* key) {
        const nlohmann::json& v = run.at(key);
        return v.is_number() ? fmt::format("{:.4f}", v.get<double>()) : std::string("-");
      };
      md += fmt::format("| `{}` | {} | {} | {} | {} | {} | {} | {} |\n", run.at("method").get<std::string>(),
                        length_label(run.at("length").get<int>()), run.at("rows").get<int64_t>(), figure("recall_mean"),
                        figure("recall_p1"), figure("recall_min"), figure("rel_l2"),
                        worst ? fmt::format("{}.{}: {:.4f}", worst->at("layer").get<int>(), worst->at("head").get<int>(),
                                            worst->at("recall_mean").get<double>())
                              : "-");
    }
    md += "\n";
  }

  if (!plots.empty()) {
    md += "## Plots\n\n";
    for (const std::string& p : plots) md += fmt::format("![{0}]({0})\n\n", p);
  }
  return md;
}

}  // namespace skim::eval
