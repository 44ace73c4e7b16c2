// skim eval: long-context quality of attention methods, always paired with
// dense on identical samples (passkey, needle grid, RULER-style tasks,
// perplexity/KL on Austen, attention fidelity). Protocol: docs/eval.md.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "common.h"
#include "skim/kv.h"
#include "eval/corpus.h"
#include "eval/fidelity.h"
#include "eval/logit_compare.h"
#include "eval/report.h"
#include "eval/results.h"
#include "eval/runner.h"
#include "eval/tasks.h"
#include "model/attention_observer.h"
#include "skim/attention.h"
#include "skim/context.h"
#include "skim/model.h"
#include "skim/paths.h"

namespace skim::cli {
namespace {

namespace fs = std::filesystem;
using namespace skim::eval;

struct EvalOptions : SharedOptions {
  std::string tasks = "passkey,niah";
  std::string lengths = "1k,2k,4k,8k";
  std::string depths = "0,25,50,75,100";
  int samples = 10;
  uint64_t seed = 42;
  std::string out;
  bool fidelity = false;
  int fidelity_rows = 32;
  int ppl_tokens = 32768;
  bool no_chat = false;
  bool plots = true;
  bool report_only = false;
  std::string kv;  // KV formats and policies compared with the f16 cache: "q8_0,q8_0/tq3,snapkv:keep=0.5@q8_0"
};

// A KV "method": dense attention over a cache of other formats and/or under
// a KV policy, named "kv:" + "K[/V]" (formats), "POLICY[:k=v,...]" or
// "POLICY[:k=v,...]@K[/V]" (both).
constexpr std::string_view kKvMethod = "kv:";
struct KvMethod {
  std::string policy, k = "f16", v = "f16";
};
std::optional<KvMethod> kv_method(const std::string& name) {
  if (!name.starts_with(kKvMethod)) return std::nullopt;
  std::string rest = name.substr(kKvMethod.size()), types;
  const auto is_type = [](const std::string& t) {
    const auto& all = kv_cache_types();
    return std::any_of(all.begin(), all.end(), [&](const KvTypeInfo& i) { return i.name == t.substr(0, t.find('/')); });
  };
  if (const size_t at = rest.find('@'); at != std::string::npos) {
    types = rest.substr(at + 1);
    rest.resize(at);
  } else if (is_type(rest)) {
    types = std::move(rest);
    rest.clear();
  }
  KvMethod m{rest};
  if (!types.empty()) {
    const size_t slash = types.find('/');
    m.k = types.substr(0, slash);
    m.v = slash == std::string::npos ? m.k : types.substr(slash + 1);
  }
  return m;
}

std::vector<std::string> split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(sep, b), s.size());
    std::string item = s.substr(b, e - b);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    b = e + 1;
  }
  return out;
}

template <class T>
void add_unique(std::vector<T>& v, const T& x) {
  if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
}

// Specs hold commas themselves ("streaming:sink=128,local=1024"), so a
// comma-separated piece with '=' but no ':' continues the previous spec.
std::vector<std::string> join_continued(const std::vector<std::string>& pieces, const char* flag) {
  std::vector<std::string> specs;
  for (const std::string& piece : pieces) {
    const bool continues = piece.find('=') != std::string::npos && piece.find(':') == std::string::npos;
    if (continues && specs.empty()) throw std::runtime_error(fmt::format("{}: '{}' belongs to no spec", flag, piece));
    if (continues) specs.back() += "," + piece;
    else specs.push_back(piece);
  }
  return specs;
}

// Dense first, then each --attn spec.
std::vector<std::string> parse_methods(const std::vector<std::string>& raw) {
  std::vector<std::string> specs;
  for (const std::string& arg : raw) {
    const std::vector<std::string> pieces = join_continued(split(arg), "--attn");
    specs.insert(specs.end(), pieces.begin(), pieces.end());
  }
  std::vector<std::string> methods{"dense"};
  for (const std::string& spec : specs) {
    try {
      validate_attention_spec(spec);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(fmt::format("--attn '{}': {}", spec, e.what()));
    }
    add_unique(methods, spec);
  }
  return methods;
}

std::vector<int> parse_lengths(const std::string& s) {
  std::vector<int> lengths;
  for (const std::string& item : split(s)) {
    const bool kilo = item.back() == 'k' || item.back() == 'K';
    const std::string digits = kilo ? item.substr(0, item.size() - 1) : item;
    if (digits.empty() || digits.size() > 7 || digits.find_first_not_of("0123456789") != std::string::npos || std::stoi(digits) == 0)
      throw std::runtime_error(fmt::format("--lengths: '{}' is not a length (e.g. 1k, 2k, 4096)", item));
    add_unique(lengths, std::stoi(digits) * (kilo ? 1024 : 1));
  }
  if (lengths.empty()) throw std::runtime_error("--lengths: no lengths given");
  std::sort(lengths.begin(), lengths.end());
  return lengths;
}

std::vector<double> parse_depths(const std::string& s) {
  std::vector<double> depths;
  for (const std::string& item : split(s)) {
    size_t used = 0;
    double d = -1;
    try {
      d = std::stod(item, &used);
    } catch (const std::exception&) {
    }
    if (used != item.size() || d < 0 || d > 100) throw std::runtime_error(fmt::format("--depths: '{}' is not a percentage in 0..100", item));
    add_unique(depths, d);
  }
  if (depths.empty()) throw std::runtime_error("--depths: no depths given");
  return depths;
}

// Task names, checked; "ppl" selects the perplexity/KL windows (T2).
std::vector<std::string> parse_tasks(const std::string& s) {
  std::vector<std::string> names;
  for (const std::string& t : split(s)) {
    if (t != "ppl") find_task(t);  // throws with the known names
    add_unique(names, t);
  }
  if (names.empty()) throw std::runtime_error("--tasks: no tasks given");
  return names;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Progress on stderr: one line per finished (sample, method) with an ETA.
class Progress {
 public:
  explicit Progress(size_t total) : total_(total) {}
  void done(const std::string& what) {
    ++done_;
    const double per = clock_.ms() / done_;
    fmt::print(stderr, "[{:>{}}/{}] {}  (eta {:.0f} s)\n", done_, std::to_string(total_).size(), total_, what, per * (total_ - done_) / 1000);
  }

 private:
  size_t total_, done_ = 0;
  Stopwatch clock_;
};

class EvalRun {
 public:
  explicit EvalRun(const EvalOptions& o) : o_(o) {
    methods_ = parse_methods(o.attn);
    for (const std::string& spec : join_continued(split(o.kv), "--kv")) add_unique(methods_, std::string(kKvMethod) + spec);
    tasks_ = parse_tasks(o.tasks);
    lengths_ = parse_lengths(o.lengths);
    depths_ = parse_depths(o.depths);
    const std::string path = resolve_model(o);
    model_ = Model::load(path, o.model_options);
    if (lengths_.back() > kMaxTokens)
      throw std::runtime_error(fmt::format("--lengths: {} tokens exceed the most skim runs ({})", lengths_.back(), kMaxTokens));
    warn_beyond_training(lengths_.back(), model_->config(), o.dca_chunk);
    corpus_ = Corpus::load();
    if (!corpus_.cached) fmt::print(stderr, "skim eval: haystack texts not fetched (scripts/fetch-haystack): using the built-in filler\n");
    if (wants_ppl() && corpus_.austen.empty()) throw std::runtime_error("--tasks ppl needs the Austen text: run scripts/fetch-haystack");
    if (wants_ppl() && o.ppl_tokens < lengths_.back())
      throw std::runtime_error(fmt::format("--ppl-tokens {} is shorter than one window of {} tokens", o.ppl_tokens, lengths_.back()));
    const Tokenizer& tok = model_->tokenizer();
    const bool chat = !o.no_chat && !tok.chat_template().empty();
    format_.emplace(tok, chat);
    store_.emplace(o.out, RunConfig{fs::path(path).filename().string(), o.seed, chat, depths_, corpus_.cached ? "cache" : "builtin",
                                    positions_label(model_->config(), o.dca_chunk, o.dca_local)});
    fidelity_.emplace(model_->config().n_layer, model_->config().n_head);
    // Read now, not after hours of running: a bad file fails here, and the runs it holds carry over at the end.
    earlier_fidelity_ = read_earlier_fidelity(fs::path(o.out) / "fidelity.json");
    // Every (task, length) can be generated: fail now rather than hours into the run.
    for (const std::string& task : tasks_)
      for (int length : lengths_)
        if (task != "ppl") make_sample({task, length, depths_[0], 0}, corpus_, *format_);
    for (const std::string& m : methods_) {
      ContextParams p;
      p.n_ctx = lengths_.back();
      p.n_ubatch = o.n_ubatch;
      p.n_threads = resolve_threads(o.threads);
      p.dca_chunk = o.dca_chunk;
      p.dca_local = o.dca_local;
      const std::optional<KvMethod> kv = kv_method(m);
      p.attention = kv ? "dense" : m;
      if (kv) {
        p.kv_type_k = kv->k;
        p.kv_type_v = kv->v;
        p.kv_policy = kv->policy;
      }
      try {
        contexts_[m] = std::make_unique<Context>(*model_, p);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(fmt::format("{}: {}", m, e.what()));
      }
      if (o.fidelity && m != "dense" && !kv) ContextInternals::set_observer(*contexts_[m], {.fidelity_rows = o.fidelity_rows});
    }
  }

  void run() {
    const size_t pending = count_pending();
    fmt::print(stderr, "skim eval: {} methods x {} tasks x {} lengths, {} samples each: {} runs to do, results in {}\n", methods_.size(),
               tasks_.size(), lengths_.size(), o_.samples, pending, store_->path().string());
    Progress progress(pending);
    if (wants_ppl())
      for (int length : lengths_) run_ppl(length, progress);
    // Sample-major: sample i of every (task, length) before sample i+1, so a run
    // stopped at any point leaves every cell with about the same n.
    for (int i = 0; i < o_.samples; ++i)
      for (const std::string& task : tasks_)
        if (task != "ppl")
          for (int length : lengths_) run_task_sample(task, length, i, progress);
    write_outputs();
  }

  // Tables and plots from what DIR/results.json holds, running nothing.
  void report_only() {
    if (store_->tasks().empty() && store_->ppl().empty())
      throw std::runtime_error(fmt::format("--report-only: {} holds no results", store_->path().string()));
    write_outputs();
  }

 private:
  bool wants_ppl() const { return std::find(tasks_.begin(), tasks_.end(), "ppl") != tasks_.end(); }
  int ppl_windows(int length) const { return o_.ppl_tokens / length; }

  size_t count_pending() const {
    size_t n = 0;
    for (const std::string& task : tasks_)
      for (int length : lengths_)
        for (const std::string& m : methods_)
          for (int i = 0, count = task == "ppl" ? ppl_windows(length) : o_.samples; i < count; ++i)
            n += task == "ppl" ? !store_->has_ppl(length, i, m) : !store_->has_task(task, length, i, m);
    return n;
  }

  void run_task_sample(const std::string& task, int length, int i, Progress& progress) {
    std::vector<std::string> methods_left;
    for (const std::string& m : methods_)
      if (!store_->has_task(task, length, i, m)) methods_left.push_back(m);
    if (methods_left.empty()) return;
    SampleSpec spec{task, length, find_task(task).depth_grid ? depths_[i % depths_.size()] : 50.0, sample_seed(o_.seed, task, length, i)};
    const Sample sample = make_sample(spec, corpus_, *format_);
    for (const std::string& m : methods_left) {
      AttentionReport prefill_report;
      TaskRecord r = run_sample(*contexts_.at(m), m, sample, prefill_report);
      fidelity_->add(m, length, prefill_report);
      r.sample = i;
      progress.done(fmt::format("{} {} #{}{} {}: {} ({:.0f} ms prefill, density {:.3f})", task, length_label(length), i,
                                r.depth ? fmt::format(" depth {:g}", *r.depth) : "", m, r.correct ? "ok" : "wrong", r.prefill_ms,
                                r.density));
      store_->add(std::move(r));
    }
    store_->save();
  }

  // The first ppl_tokens tokens of Austen (tokenized once, lazily).
  const std::vector<int32_t>& austen_tokens() {
    if (!austen_tokens_.empty()) return austen_tokens_;
    const Tokenizer& tok = model_->tokenizer();
    for (size_t chars = static_cast<size_t>(o_.ppl_tokens) * 5;; chars *= 2) {
      austen_tokens_ = tok.encode(std::string_view(corpus_.austen).substr(0, chars), false, false);
      if (austen_tokens_.size() >= static_cast<size_t>(o_.ppl_tokens)) break;
      if (chars >= corpus_.austen.size())
        throw std::runtime_error(fmt::format("--ppl-tokens {}: the Austen text has only {} tokens", o_.ppl_tokens, austen_tokens_.size()));
    }
    austen_tokens_.resize(o_.ppl_tokens);
    return austen_tokens_;
  }

  void run_ppl(int length, Progress& progress) {
    const Tokenizer& tok = model_->tokenizer();
    Context& dense = *contexts_.at("dense");
    for (int w = 0; w < ppl_windows(length); ++w) {
      std::vector<int32_t> window(austen_tokens().begin() + static_cast<size_t>(w) * length,
                                  austen_tokens().begin() + static_cast<size_t>(w + 1) * length);
      if (tok.add_bos() && tok.bos() >= 0) window[0] = tok.bos();
      bool any = false;
      for (const std::string& m : methods_) {
        if (store_->has_ppl(length, w, m)) continue;
        Context* method = m == "dense" ? nullptr : contexts_.at(m).get();
        PplRecord r = compare_window(dense, method, window);
        if (method) fidelity_->add(m, length, method->attention_report());
        r.window = w;
        r.method = m;
        std::string detail = fmt::format("nll {:.4f}", r.nll / r.scored);
        if (method) {
          double kl = 0;
          for (float v : r.kl) kl += v;
          detail += fmt::format(", mean KL {:.5f}, top-1 {:.1f}%", kl / r.kl.size(), 100.0 * r.top1_agree / r.scored);
        }
        progress.done(fmt::format("ppl {} window {} {}: {} ({:.0f} ms prefill, density {:.3f})", length_label(length), w, m, detail,
                                  r.prefill_ms, r.density));
        store_->add(std::move(r));
        any = true;
      }
      if (any) store_->save();
    }
  }

  std::string command() const {
    std::vector<std::string> attn, kv;
    for (auto m = methods_.begin() + 1; m != methods_.end(); ++m)
      if (m->starts_with(kKvMethod)) kv.push_back(m->substr(kKvMethod.size()));
      else attn.push_back(*m);
    // A report of earlier passes: their sample counts are the table's n, not --samples.
    const std::string samples = o_.report_only ? "" : fmt::format(" --samples {}", o_.samples);
    std::string cmd = fmt::format("skim eval{}{} --tasks {} --lengths {}{} --seed {} --depths {} --out {}",
                                  attn.empty() ? "" : " --attn " + fmt::format("{}", fmt::join(attn, ",")),
                                  kv.empty() ? "" : " --kv " + fmt::format("{}", fmt::join(kv, ",")), fmt::join(tasks_, ","),
                                  o_.lengths, samples, o_.seed, o_.depths, o_.out);
    if (!o_.model.empty()) cmd += " -m " + o_.model;
    cmd += context_flags(o_);
    if (o_.fidelity) cmd += fmt::format(" --fidelity --fidelity-rows {}", o_.fidelity_rows);
    if (wants_ppl()) cmd += fmt::format(" --ppl-tokens {}", o_.ppl_tokens);
    if (o_.no_chat) cmd += " --no-chat";
    if (o_.report_only) cmd += " --report-only";
    return cmd;
  }

  void write_outputs() {
    const fs::path dir = o_.out;
    fs::create_directories(dir);
    const Summary summary = summarize(*store_);
    write_file(dir / "summary.json", to_json(summary).dump(1) + "\n");
    std::vector<std::string> replaced;
    const nlohmann::json fidelity = fidelity_->to_json_with(earlier_fidelity_, replaced);
    for (const std::string& run : replaced)
      fmt::print(stderr, "skim eval: warning: the fidelity of {} now counts only this invocation's prefills\n", run);
    if (!fidelity.is_null()) write_file(dir / "fidelity.json", fidelity.dump(1) + "\n");
    if (o_.plots) plot(dir);
    std::vector<std::string> pngs;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".png") pngs.push_back(e.path().filename().string());
    std::sort(pngs.begin(), pngs.end());
    const std::string md = render_markdown(summary, store_->config(), command(), fidelity, pngs);
    write_file(dir / "report.md", md);
    std::fputs(md.c_str(), stdout);
    fmt::print(stderr, "skim eval: wrote {}\n", (dir / "report.md").string());
  }

  // The fidelity.json an earlier invocation wrote, or null when there is none.
  static nlohmann::json read_earlier_fidelity(const fs::path& path) {
    if (!fs::exists(path)) return nullptr;
    std::ifstream in(path);
    try {
      nlohmann::json j = nlohmann::json::parse(in);
      check_fidelity_json(j);
      return j;
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("cannot resume from {}: {} (move it away to start its fidelity afresh)",
                                           path.string(), e.what()));
    }
  }

  static void write_file(const fs::path& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", path.string()));
  }

  // PNGs through scripts/plot-eval (matplotlib in the project venv). A failure
  // only warns: the results and tables are already written.
  static void plot(const fs::path& dir) {
    const fs::path script = fs::path(__FILE__).parent_path().parent_path() / "scripts" / "plot-eval";
    const std::string cmd = fmt::format("{} {} {}", shell_quote(paths::python().string()), shell_quote(script.string()), shell_quote(dir.string()));
    if (!fs::exists(script) || std::system(cmd.c_str()) != 0)
      fmt::print(stderr, "skim eval: warning: plotting failed; run `{}` once matplotlib is there (scripts/setup)\n", cmd);
  }

  const EvalOptions& o_;
  std::vector<std::string> methods_, tasks_;
  std::vector<int> lengths_;
  std::vector<double> depths_;
  std::unique_ptr<Model> model_;
  Corpus corpus_;
  std::optional<PromptFormat> format_;
  std::optional<ResultStore> store_;
  std::optional<FidelityLog> fidelity_;
  nlohmann::json earlier_fidelity_;
  std::map<std::string, std::unique_ptr<Context>> contexts_;
  std::vector<int32_t> austen_tokens_;
};

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "long-context quality of attention methods, paired with dense on identical samples");
  add_shared_options(*cmd, *o, {{Opt::Model}, {Opt::Threads}, {Opt::Ubatch}, {Opt::Gemm}, {Opt::AttnMath}, {.opt = Opt::Attn, .repeatable = true}, {Opt::Rope}, {Opt::Dca}, {Opt::DcaLocal}});
  std::string task_help = "tasks, comma-separated:";
  for (const eval::TaskInfo& t : eval::tasks()) task_help += fmt::format("\n  {:<16} {}", t.name, t.summary);
  task_help += fmt::format("\n  {:<16} {}", "ppl", "perplexity, KL(dense||method) and top-1 agreement on Austen windows");
  cmd->add_option("--tasks", o->tasks, task_help)->capture_default_str();
  cmd->add_option("--lengths", o->lengths, "target lengths in tokens (prompt + answer budget), e.g. 1k,2k,4k,8k")->capture_default_str();
  cmd->add_option("--depths", o->depths, "needle depths in % for passkey and niah; sample i uses depth i mod count")->capture_default_str();
  cmd->add_option("--samples", o->samples, "samples per task and length")->check(at_least(1))->capture_default_str();
  cmd->add_option("--seed", o->seed, "run seed: samples are a function of it")->capture_default_str();
  cmd->add_option("--out", o->out, "output directory (results.json, report.md, plots); an existing run there resumes")->required();
  cmd->add_option("--kv", o->kv,
                  "KV formats and policies to compare with the full f16 cache (dense attention): K[/V], POLICY[:k=v,...] "
                  "or POLICY[:k=v,...]@K[/V], e.g. q8_0,q8_0/tq3,snapkv:keep=0.5,streaming:keep=0.5@q8_0 (skim info --kv)");
  cmd->add_flag("--fidelity", o->fidelity, "measure attention recall and output error per layer/head (slower)");
  cmd->add_option("--fidelity-rows", o->fidelity_rows, "sampled query rows per prefill chunk for --fidelity")
      ->check(in_range(1, kMaxTokens))
      ->capture_default_str();
  cmd->add_option("--ppl-tokens", o->ppl_tokens, "Austen tokens for --tasks ppl")->check(in_range(1, kMaxTokens))->capture_default_str();
  cmd->add_flag("--no-chat", o->no_chat, "do not wrap prompts in the model's chat template");
  cmd->add_flag("!--no-plots", o->plots, "skip the PNG plots");
  cmd->add_flag("--report-only", o->report_only, "write report.md, summary.json and plots from DIR/results.json without running");
  cmd->callback([o] {
    EvalRun run(*o);
    o->report_only ? run.report_only() : run.run();
  });
}

}  // namespace skim::cli
