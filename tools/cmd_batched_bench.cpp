// skim batched-bench: llama-batched-bench's measurement for skim and, in the
// same run with the same threads, llama.cpp. For each (PP, TG, B): B sequences
// of PP random tokens are prefilled (one batch, cut into micro-batches), then
// TG steps each decode one token of every sequence as one batch of B rows.
// S_TG, the aggregate decode rate, is what serving many users at once gets.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common.h"
#include "skim/context.h"
#include "skim/model.h"
#include "skim/paths.h"

namespace skim::cli {
namespace {

struct BatchedBenchOptions : SharedOptions {
  std::string prompts = "128";
  std::string gens = "128";
  std::string parallel = "1,2,4,8";
  bool shared_prompt = false;
  std::string peer = "llama.cpp";
  std::string peer_flags;  // appended to llama-batched-bench's command line
};

struct Row {
  std::string engine;
  int pp, tg, pl, n_kv;
  double t_pp, t_tg;
  double peak_rss_mib = 0;
  double s_pp(bool shared) const { return (shared ? pp : pl * pp) / t_pp; }
  double s_tg() const { return pl * tg / t_tg; }
};

int kv_needed(int pp, int tg, int pl, bool shared) { return shared ? pp + pl * tg : pl * (pp + tg); }

std::vector<Row> bench_skim(const BatchedBenchOptions& o, const Model& model, const std::vector<int>& pps,
                            const std::vector<int>& tgs, const std::vector<int>& pls, int n_kv_max) {
  const int max_pl = *std::max_element(pls.begin(), pls.end());
  // Per sequence the context holds its prompt and its generated tokens; the
  // pool's cap (n_ctx per sequence x sequences) is then -c, as llama.cpp's
  // n_kv_max, split evenly.
  ContextParams cp;
  cp.n_ctx = std::max(1, n_kv_max / max_pl);
  cp.n_ubatch = o.n_ubatch;
  cp.n_seq_max = max_pl;
  cp.attention = o.attn.front();
  cp.n_threads = resolve_threads(o.threads);
  apply_kv_options(o, cp);
  Context ctx(model, cp);
  const int n_vocab = model.config().n_vocab;
  uint32_t seed = 1;
  {  // warm-up, uncounted (as llama-batched-bench)
    Batch warm;
    for (int i = 0; i < 16; ++i) warm.add(random_tokens(1, n_vocab, seed++)[0], i, 0, false);
    ctx.decode(warm);
  }
  std::vector<Row> rows;
  for (int pp : pps)
    for (int tg : tgs)
      for (int pl : pls) {
        if (kv_needed(pp, tg, pl, o.shared_prompt) > n_kv_max || pp + tg > cp.n_ctx) continue;
        ctx.clear();
        Batch batch;
        for (int j = 0; j < (o.shared_prompt ? 1 : pl); ++j) {
          const std::vector<int32_t> prompt = random_tokens(pp, n_vocab, seed++);
          for (int i = 0; i < pp; ++i) batch.add(prompt[i], i, j, i == pp - 1);
        }
        Stopwatch t_pp;
        ctx.decode(batch);
        if (o.shared_prompt)
          for (int j = 1; j < pl; ++j) ctx.copy_sequence(0, j);
        const double pp_s = t_pp.ms() / 1e3;
        Stopwatch t_tg;
        for (int i = 0; i < tg; ++i) {
          batch.clear();
          const std::vector<int32_t> next = random_tokens(pl, n_vocab, seed++);
          for (int j = 0; j < pl; ++j) batch.add(next[j], pp + i, j, true);
          ctx.decode(batch);
        }
        const double tg_s = t_tg.ms() / 1e3;
        rows.push_back({"skim", pp, tg, pl, kv_needed(pp, tg, pl, o.shared_prompt), pp_s, tg_s, peak_rss_mib()});
        fmt::print(stderr, "skim      PP {:5} TG {:4} B {:3}: S_PP {:8.2f} t/s, S_TG {:8.2f} t/s\n", pp, tg, pl,
                   rows.back().s_pp(o.shared_prompt), rows.back().s_tg());
      }
  return rows;
}

std::vector<Row> bench_llama_cpp(const BatchedBenchOptions& o, const std::string& model_path, int threads, int n_kv_max) {
  const std::string bin = (paths::peer_prefix() / "bin" / "llama-batched-bench").string();
  if (!std::filesystem::exists(bin))
    throw std::runtime_error(
        fmt::format("llama-batched-bench not found at {}: run scripts/build-llama-cpp, or pass --peer none", bin));
  const std::string cmd =
      fmt::format("'{}' -m '{}' -c {} -b {} -ub {} -npp '{}' -ntg '{}' -npl '{}' -t {}{} {} --output-format jsonl 2>&1",
                  bin, model_path, n_kv_max, std::max(2048, o.n_ubatch), o.n_ubatch, o.prompts, o.gens, o.parallel,
                  threads, o.shared_prompt ? " -pps" : "", o.peer_flags);
  const std::string out = run_peer(cmd, "llama-batched-bench");
  std::vector<Row> rows;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("{\"n_kv_max\"", 0) != 0) continue;  // its log lines
    const nlohmann::json r = nlohmann::json::parse(line);
    rows.push_back({"llama.cpp", r.at("pp").get<int>(), r.at("tg").get<int>(), r.at("pl").get<int>(),
                    r.at("n_kv").get<int>(), r.at("t_pp").get<double>(), r.at("t_tg").get<double>()});
    fmt::print(stderr, "llama.cpp PP {:5} TG {:4} B {:3}: S_PP {:8.2f} t/s, S_TG {:8.2f} t/s\n", rows.back().pp,
               rows.back().tg, rows.back().pl, rows.back().s_pp(o.shared_prompt), rows.back().s_tg());
  }
  return rows;
}

void batched_bench(const BatchedBenchOptions& o) {
  const std::string path = resolve_model(o);
  const int threads = resolve_threads(o.threads);
  if (o.peer != "llama.cpp" && o.peer != "none") throw std::runtime_error("--peer must be llama.cpp or none");
  validate_attention_spec(o.attn.front());
  const std::vector<int> pps = parse_token_counts(o.prompts, "-npp"), tgs = parse_token_counts(o.gens, "-ntg"),
                         pls = parse_token_counts(o.parallel, "-npl");
  if (pps.empty() || tgs.empty() || pls.empty()) throw std::runtime_error("-npp, -ntg and -npl each need a count");
  // -c as llama-batched-bench's: the KV of all sequences together; by default what the largest test needs.
  int n_kv_max = o.n_ctx;
  if (n_kv_max == 0)
    for (int pp : pps)
      for (int tg : tgs)
        for (int pl : pls) n_kv_max = std::max(n_kv_max, kv_needed(pp, tg, pl, o.shared_prompt));
  std::unique_ptr<Model> model = Model::load(path, o.model_options);
  std::vector<Row> rows = bench_skim(o, *model, pps, tgs, pls, n_kv_max);
  std::vector<Row> peer;
  if (o.peer == "llama.cpp") peer = bench_llama_cpp(o, path, threads, n_kv_max);

  auto peer_of = [&](const Row& r) -> const Row* {
    for (const Row& p : peer)
      if (p.pp == r.pp && p.tg == r.tg && p.pl == r.pl) return &p;
    return nullptr;
  };
  auto ratio = [](const Row* p, double a, double b) { return p ? fmt::format("{:.2f}x", a / b) : std::string(); };
  fmt::print("| model | engine | threads | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | S_TG vs B=1 | "
             "S_PP vs llama.cpp | S_TG vs llama.cpp | peak RSS MiB |\n");
  fmt::print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const std::vector<Row>* set : {&rows, &peer})
    for (const Row& r : *set) {
      const Row* single = nullptr;
      for (const Row& s : *set)
        if (s.pp == r.pp && s.tg == r.tg && s.pl == 1) single = &s;
      const bool skim = r.engine == "skim";
      const Row* p = skim ? peer_of(r) : nullptr;
      fmt::print("| {} | {} | {} | {} | {} | {} | {} | {:.3f} | {:.2f} | {:.3f} | {:.2f} | {} | {} | {} | {} |\n",
                 model->config().name, r.engine, threads, r.pp, r.tg, r.pl, r.n_kv, r.t_pp, r.s_pp(o.shared_prompt),
                 r.t_tg, r.s_tg(), single ? fmt::format("{:.2f}x", r.s_tg() / single->s_tg()) : "",
                 ratio(p, r.s_pp(o.shared_prompt), p ? p->s_pp(o.shared_prompt) : 1.0), ratio(p, r.s_tg(), p ? p->s_tg() : 1.0),
                 skim ? fmt::format("{:.0f}", r.peak_rss_mib) : "");
    }
}

}  // namespace

void register_batched_bench(CLI::App& app) {
  auto o = std::make_shared<BatchedBenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "batched-bench", "aggregate prefill and decode of several sequences at once, skim vs llama-batched-bench in one run");
  add_shared_options_with_kv(*cmd, *o, {{Opt::Model}, {Opt::Threads}, {Opt::Ctx}, {Opt::Ubatch}, {Opt::Attn}, {Opt::Gemm}, {Opt::AttnMath}, {Opt::Rope}});
  cmd->add_option("--npp", o->prompts, "prompt lengths, comma-separated (llama.cpp's -npp)");
  cmd->add_option("--ntg", o->gens, "generated tokens per sequence, comma-separated (-ntg)");
  cmd->add_option("--npl", o->parallel, "parallel sequences, comma-separated (-npl)");
  cmd->add_flag("--pps", o->shared_prompt, "the sequences share one prompt (prefilled once, then copied: -pps)");
  cmd->add_option("--peer", o->peer, "llama.cpp (run llama-batched-bench on the same model) or none");
  cmd->add_option("--peer-flags", o->peer_flags,
                  "more llama-batched-bench flags, e.g. \"-fa off\" (its flash attention, on by default here, is "
                  "slower for decode on CPU)");
  cmd->callback([o] { batched_bench(*o); });
}

}  // namespace skim::cli
