// skim bench: llama-bench-style throughput (pp = prompt processing, tg = token
// generation) for skim and, in the same run with the same threads, llama.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common.h"
#include "skim/gemm.h"
#include "skim/attention.h"
#include "skim/context.h"
#include "skim/model.h"
#include "skim/paths.h"

namespace skim::cli {
namespace {

struct BenchOptions : SharedOptions {
  std::string prompts = "512";
  std::string gens = "128";
  int repetitions = 3;
  std::string text_file;
  std::string peer = "llama.cpp";
  bool json = false;
  bool warmup = true;
  int depth = 0;  // tokens already in the context when a test starts (llama-bench's -d)
  bool profile = false;
};

// "pp512", "tg64@d8192": a test's name, as both engines' rows are matched by it.
std::string test_name(const char* kind, int n, int depth) {
  return depth > 0 ? fmt::format("{}{}@d{}", kind, n, depth) : fmt::format("{}{}", kind, n);
}

// A context for tests of n tokens. With a depth, its sequence 1 holds `depth`
// prefilled tokens and start() makes sequence 0 a copy of it (shared pages),
// so each repetition times only its own tokens; without, start() clears.
class BenchContext {
 public:
  BenchContext(const Model& model, const BenchOptions& o, ContextParams cp, int n) : depth_(o.depth) {
    cp.n_ctx = o.depth + n + 1;
    cp.n_seq_max = o.depth > 0 ? 2 : 1;
    apply_kv_options(o, cp);
    ctx_ = std::make_unique<Context>(model, cp);
    if (depth_ == 0) return;
    const std::vector<int32_t> prefix = random_tokens(depth_, model.config().n_vocab, 777);
    Batch b;
    for (int i = 0; i < depth_; ++i) b.add(prefix[static_cast<size_t>(i)], i, 1, i + 1 == depth_);
    ctx_->decode(b);
  }
  Context& start() {
    if (depth_ > 0) {
      ctx_->copy_sequence(1, 0);
    } else {
      ctx_->clear();
    }
    return *ctx_;
  }
  Context& ctx() { return *ctx_; }

 private:
  int depth_;
  std::unique_ptr<Context> ctx_;
};

struct BenchRow {
  std::string engine, test, attn;
  int threads = 0;
  double tokens_per_s = 0, stddev = 0;
  double peak_rss_mib = 0;
  AttentionReport attention;  // of the last repetition (skim prefill)
  OpTimes times;              // of the last repetition (skim)
};

// Mean and sample standard deviation of tokens/s over repetitions.
std::pair<double, double> mean_std(const std::vector<double>& xs) {
  double m = 0;
  for (double x : xs) m += x;
  m /= xs.size();
  double v = 0;
  for (double x : xs) v += (x - m) * (x - m);
  return {m, xs.size() > 1 ? std::sqrt(v / (xs.size() - 1)) : 0.0};
}

// Prompt tokens: the text of a file, repeated to length (sparse methods
// behave differently on real text), or random ids like llama-bench's.
std::vector<int32_t> prompt_tokens(const BenchOptions& o, const Model& model, int n, uint32_t seed) {
  if (o.text_file.empty()) return random_tokens(n, model.config().n_vocab, seed);
  static std::vector<int32_t> text;
  if (text.empty()) text = model.tokenizer().encode(read_file(o.text_file), false, false);
  if (text.empty()) throw std::runtime_error(fmt::format("{}: no tokens", o.text_file));
  std::vector<int32_t> t;
  if (model.tokenizer().add_bos()) t.push_back(model.tokenizer().bos());
  while (static_cast<int>(t.size()) < n) t.insert(t.end(), text.begin(), text.begin() + std::min<size_t>(text.size(), n - t.size()));
  return t;
}

std::vector<BenchRow> bench_skim(const BenchOptions& o, const Model& model, int threads, const std::vector<int>& pp,
                                 const std::vector<int>& tg) {
  std::vector<BenchRow> rows;
  auto measure = [&](const std::string& test, const std::string& attn, int n, const auto& body) {
    std::vector<double> rates;
    for (int r = o.warmup ? -1 : 0; r < o.repetitions; ++r) {  // r == -1: warm-up, not counted
      Stopwatch clock;
      body();
      if (r >= 0) rates.push_back(n / (clock.ms() / 1000.0));
    }
    auto [m, sd] = mean_std(rates);
    rows.push_back({"skim", test, attn, threads, m, sd, peak_rss_mib(), {}});
    fmt::print(stderr, "skim {:>8} {:<24}: {:9.2f} ± {:.2f} tokens/s\n", test, attn, m, sd);
  };
  for (int n : pp) {
    const std::vector<int32_t> tokens = prompt_tokens(o, model, n, 1234);
    for (const std::string& attn : o.attn) {
      BenchContext bc(model, o, {.n_ubatch = o.n_ubatch, .n_threads = threads, .attention = attn}, n);
      measure(test_name("pp", n, o.depth), attn, n, [&] {
        Context& ctx = bc.start();
        ctx.reset_attention_report();
        ctx.reset_op_times();
        ctx.decode(tokens);
      });
      rows.back().attention = bc.ctx().attention_report();
      rows.back().times = bc.ctx().op_times();
    }
  }
  for (int n : tg) {
    BenchContext bc(model, o, {.n_ubatch = o.n_ubatch, .n_threads = threads}, n);
    const std::vector<int32_t> tokens = random_tokens(n, model.config().n_vocab, 4321);
    measure(test_name("tg", n, o.depth), "dense", n, [&] {
      Context& ctx = bc.start();
      ctx.reset_attention_report();
      ctx.reset_op_times();
      for (int32_t t : tokens) ctx.decode(std::span<const int32_t>(&t, 1));
    });
    rows.back().attention = bc.ctx().attention_report();
    rows.back().times = bc.ctx().op_times();
  }
  return rows;
}

// An engine run on the same model, token counts and threads, in the same run:
// llama.cpp (the reference) and ik_llama.cpp (the fastest fork on CPUs) through
// their llama-bench, OpenVINO GenAI through scripts/peer/openvino_bench.py.
// ik_llama's llama-bench predates -d: it measures generation at a depth with
// -gp DEPTH,N and prefill at a depth not at all (those rows stay empty), and it
// runs with its run-time repacking of the weights on (-rtr 1), its fastest CPU
// setting. OpenVINO runs its own KV precision and, when skim runs a sparse
// method too, its XAttention and Tri-shape at their defaults; no depth.
enum class PeerKind { kLlamaBench, kIkLlamaBench, kOpenVino };
struct Peer {
  const char* name;
  std::filesystem::path (*prefix)();
  const char* setup_script;
  PeerKind kind;
};
const Peer kPeers[] = {{"llama.cpp", paths::peer_prefix, "scripts/build-llama-cpp", PeerKind::kLlamaBench},
                       {"ik_llama", paths::ik_peer_prefix, "scripts/build-ik-llama-cpp", PeerKind::kIkLlamaBench},
                       {"openvino", paths::openvino_prefix, "scripts/setup-openvino", PeerKind::kOpenVino}};

// Whether llama-bench's -ctk/-ctv take this KV type (skim's tq and kivi formats are its own).
bool llama_kv_type(const std::string& type) {
  for (const char* t : {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"})
    if (type == t) return true;
  return false;
}

std::vector<const Peer*> parse_peers(const std::string& list) {
  std::vector<const Peer*> peers;
  if (list == "none") return peers;
  std::stringstream ss(list);
  for (std::string name; std::getline(ss, name, ',');) {
    const auto* it = std::ranges::find_if(kPeers, [&](const Peer& p) { return name == p.name; });
    if (it == std::end(kPeers) || std::ranges::find(peers, it) != peers.end())
      throw std::runtime_error(fmt::format("--peer: '{}' is not llama.cpp, ik_llama, openvino or none (each once)", name));
    peers.push_back(it);
  }
  return peers;
}

// llama-bench's command line for the same tests and KV types.
std::string llama_bench_command(const Peer& peer, const std::string& bin, const BenchOptions& o,
                                const std::string& model_path, int threads) {
  const bool ik = peer.kind == PeerKind::kIkLlamaBench;
  // llama.cpp stores quantized V only with its flash attention.
  const bool quantized_v = o.kv_type_v != "f16" && o.kv_type_v != "bf16" && o.kv_type_v != "f32";
  std::string tests;
  if (ik && o.depth > 0) {
    for (int n : parse_token_counts(o.gens, "-n"))
      if (n > 0) tests += fmt::format(" -gp {},{}", o.depth, n);
    if (tests.empty()) return {};
    tests += " -p 0 -n 0";
  } else {
    tests = fmt::format(" -p '{}' -n '{}'{}", o.prompts, o.gens, ik ? "" : fmt::format(" -d {}", o.depth));
  }
  return fmt::format("'{}' -m '{}'{} -t {} -r {} -ub {} -ctk {} -ctv {}{}{} -o json 2>/dev/null", bin, model_path, tests,
                     threads, o.repetitions, o.n_ubatch, o.kv_type_k, o.kv_type_v,
                     ik ? fmt::format(" -rtr 1 -fa {}", quantized_v ? 1 : 0) : (quantized_v ? " -fa on" : ""),
                     o.warmup ? "" : (ik ? " -w 0" : " --no-warmup"));
}

std::vector<BenchRow> bench_peer(const Peer& peer, const BenchOptions& o, const std::string& model_path, int threads) {
  const bool openvino = peer.kind == PeerKind::kOpenVino;
  const std::filesystem::path tool =
      openvino ? peer.prefix() / "openvino_bench.py" : peer.prefix() / "bin" / "llama-bench";
  if (!std::filesystem::exists(tool))
    throw std::runtime_error(
        fmt::format("{} peer not found at {}: run {}, or pass --peer none", peer.name, tool.string(), peer.setup_script));
  std::string cmd;
  if (openvino) {
    if (o.depth > 0) {
      fmt::print(stderr, "openvino: no depth tests (-d), skipped\n");
      return {};
    }
    const bool sparse = std::ranges::any_of(o.attn, [](const std::string& a) { return a != "dense"; });
    cmd = fmt::format("'{}' '{}' '{}' --prompts '{}' --gens '{}' --threads {} --reps {}{} --attn {} 2>/dev/null",
                      (peer.prefix() / "bin" / "python").string(), tool.string(), model_path, o.prompts, o.gens, threads,
                      o.repetitions, o.warmup ? "" : " --no-warmup", sparse ? "dense,xattention,trishape" : "dense");
  } else {
    cmd = llama_bench_command(peer, tool.string(), o, model_path, threads);
    if (cmd.empty()) return {};
  }
  const std::string out = run_peer(cmd, openvino ? "openvino_bench.py" : "llama-bench");
  std::vector<BenchRow> rows;
  for (const auto& r : nlohmann::json::parse(out)) {
    const int n_prompt = r.at("n_prompt").get<int>(), n_gen = r.at("n_gen").get<int>();
    // ik_llama's -gp rows carry the depth as n_prompt.
    const int depth = n_prompt > 0 && n_gen > 0 ? n_prompt : r.value("n_depth", 0);
    const std::string test = n_gen == 0 ? test_name("pp", n_prompt, depth) : test_name("tg", n_gen, depth);
    rows.push_back({peer.name, test, r.value("attn", std::string("dense")), threads, r.at("avg_ts").get<double>(),
                    r.at("stddev_ts").get<double>(), 0, {}, {}});
    fmt::print(stderr, "{} {:>8} {}: {:9.2f} ± {:.2f} tokens/s\n", peer.name, test, rows.back().attn,
               rows.back().tokens_per_s, rows.back().stddev);
  }
  return rows;
}

// Where skim's time went in the last repetition of each test, by operation class.
void print_profile(const std::vector<BenchRow>& rows) {
  fmt::print("\nskim profile (last repetition of each test; ms and share of the forward passes):\n\n");
  fmt::print("| test | attn | forward ms | weight GEMMs | attention | of it planning | KV store | norms, RoPE, other |\n");
  fmt::print("|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (const BenchRow& r : rows) {
    if (r.engine != "skim") continue;
    const OpTimes& t = r.times;
    const auto cell = [&](double ms) {
      return fmt::format("{:.1f} ({:.0f}%)", ms, t.total_ms > 0 ? 100.0 * ms / t.total_ms : 0.0);
    };
    fmt::print("| {} | {} | {:.1f} | {} | {} | {} | {} | {} |\n", r.test, r.attn, t.total_ms, cell(t.weight_gemm_ms),
               cell(t.attention_ms), cell(r.attention.plan_ms), cell(t.kv_store_ms), cell(t.other_ms()));
  }
}

void bench(const BenchOptions& o) {
  const std::string path = resolve_model(o);
  const int threads = resolve_threads(o.threads);
  BenchOptions opts = o;
  // Dense is always measured first: the baseline of every "vs dense" ratio.
  std::erase(opts.attn, std::string("dense"));
  opts.attn.insert(opts.attn.begin(), "dense");
  for (const std::string& a : opts.attn) validate_attention_spec(a);
  const std::vector<const Peer*> peers = parse_peers(o.peer);
  const std::vector<int> pp = parse_token_counts(o.prompts, "-p"), tg = parse_token_counts(o.gens, "-n");
  std::unique_ptr<Model> model = Model::load(path, o.model_options);
  std::vector<BenchRow> rows = bench_skim(opts, *model, threads, pp, tg);
  for (const Peer* peer : peers) {
    if (peer->kind != PeerKind::kOpenVino && !(llama_kv_type(o.kv_type_k) && llama_kv_type(o.kv_type_v))) {
      fmt::print(stderr, "{}: no KV type {}/{} there, peer skipped\n", peer->name, o.kv_type_k, o.kv_type_v);
      continue;
    }
    std::vector<BenchRow> peer_rows = bench_peer(*peer, o, path, threads);
    rows.insert(rows.end(), peer_rows.begin(), peer_rows.end());
  }

  if (o.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const BenchRow& r : rows) {
      nlohmann::json j = {{"engine", r.engine}, {"test", r.test},   {"attn", r.attn},        {"threads", r.threads},
                          {"model", model->config().name}, {"tokens_per_s", r.tokens_per_s}, {"stddev", r.stddev}};
      if (r.engine == "skim") {
        j["peak_rss_mib"] = r.peak_rss_mib;
        j["gemm"] = gemm();
        j["simd"] = simd_target();
        j["attention_math"] = attention_math();
        const OpTimes& t = r.times;
        j["profile_ms"] = {{"total", t.total_ms},       {"weight_gemm", t.weight_gemm_ms},
                           {"attention", t.attention_ms}, {"attention_planning", r.attention.plan_ms},
                           {"kv_store", t.kv_store_ms},  {"other", t.other_ms()}};
        const AttentionReport& a = r.attention;
        if (a.sparse_calls + a.dense_calls > 0) {
          j["density"] = a.density();
          j["plan_ms"] = a.plan_ms;
          j["attention_kernel_ms"] = a.kernel_ms;
        }
      }
      out.push_back(j);
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  auto rate_of = [&](const std::string& engine, const std::string& attn, const std::string& test) {
    for (const BenchRow& r : rows)
      if (r.engine == engine && r.attn == attn && r.test == test) return r.tokens_per_s;
    return 0.0;
  };
  auto ratio = [](double a, double b) { return b > 0 ? fmt::format("{:.2f}x", a / b) : std::string(); };
  fmt::print("CPU: {}; skim: SIMD {}, prefill GEMM {}, attention {}\n\n", cpu_name(), simd_target(), gemm(),
             attention_math());
  std::string peer_columns, peer_rule;
  for (const Peer* peer : peers) {
    peer_columns += fmt::format(" vs {} |", peer->name);
    peer_rule += "---:|";
  }
  fmt::print("| model | engine | attn | threads | test | t/s | vs dense |{} density | plan ms | attn ms | peak RSS MiB |\n",
             peer_columns);
  fmt::print("|---|---|---|---:|---|---:|---:|{}---:|---:|---:|---:|\n", peer_rule);
  for (const BenchRow& r : rows) {
    const bool skim = r.engine == "skim";
    const AttentionReport& a = r.attention;
    const bool prefill = skim && a.sparse_calls + a.dense_calls > 0;
    std::string vs_peers;
    for (const Peer* peer : peers)
      vs_peers += fmt::format(" {} |", skim ? ratio(r.tokens_per_s, rate_of(peer->name, "dense", r.test)) : "");
    fmt::print("| {} | {} | {} | {} | {} | {:.2f} ± {:.2f} | {} |{} {} | {} | {} | {} |\n", model->config().name,
               r.engine, r.attn, r.threads, r.test, r.tokens_per_s, r.stddev,
               skim && r.attn != "dense" ? ratio(r.tokens_per_s, rate_of("skim", "dense", r.test)) : "", vs_peers,
               prefill ? fmt::format("{:.3f}", a.density()) : "", prefill ? fmt::format("{:.0f}", a.plan_ms) : "",
               prefill ? fmt::format("{:.0f}", a.kernel_ms) : "", skim ? fmt::format("{:.0f}", r.peak_rss_mib) : "");
  }
  if (o.profile) print_profile(rows);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "prompt (pp) and generation (tg) throughput, skim vs llama.cpp in one run");
  add_shared_options_with_kv(*cmd, *o,
                     {{Opt::Model}, {Opt::Threads}, {Opt::Ubatch}, {Opt::Gemm}, {Opt::AttnMath}, {.opt = Opt::Attn, .repeatable = true}, {Opt::Rope}});
  cmd->add_option("-p,--n-prompt", o->prompts, "prompt lengths, comma-separated (e.g. 512,2048,8192)");
  cmd->add_option("-n,--n-gen", o->gens, "generation lengths, comma-separated (0: none)");
  cmd->add_option("-r,--repetitions", o->repetitions, "measured repetitions per test")->check(at_least(1));
  cmd->add_option("-f,--file", o->text_file, "prompt text for pp tests, repeated to length (default: random tokens)")
      ->check(CLI::ExistingFile);
  cmd->add_option("-d,--n-depth", o->depth, "tokens already in the context when each test starts (llama-bench's -d)")
      ->check(in_range(0, kMaxTokens))
      ->capture_default_str();
  cmd->add_flag("--profile", o->profile,
                "also print where skim's time went: weight GEMMs, attention (and its planning), KV store, the rest");
  cmd->add_option("--peer", o->peer,
                  "peers run on the same model: llama.cpp, ik_llama, openvino (comma-separated), or none");
  cmd->add_flag("--json", o->json, "print one JSON array instead of the table");
  cmd->add_flag("!--no-warmup", o->warmup,
                "skip the uncounted warm-up run of each test, here and in llama-bench (long prompts)");
  cmd->callback([o] { bench(*o); });
}

}  // namespace skim::cli
