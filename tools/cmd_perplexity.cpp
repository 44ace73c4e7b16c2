// skim perplexity: llama-perplexity's measurement (windows of -c tokens, second half scored).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "common.h"
#include "eval/logit_compare.h"
#include "skim/model.h"
#include "skim/perplexity.h"

namespace skim::cli {
namespace {

struct PerplexityOptions : SharedOptions {
  PerplexityOptions() { n_ctx = 512; }  // llama-perplexity's window
  std::string file;
  int max_windows = 0;
  bool kl_f16 = false;
};

// The same windows through an f16 cache in step: KL(f16 || this cache) and
// top-1 agreement per scored position, as llama-perplexity --kl-divergence
// reports them against its f16 logits.
void run_kl_vs_f16(const PerplexityOptions& o, const Model& model, Context& ctx, const std::vector<int32_t>& tokens,
                   int bos) {
  ContextParams f16p{.n_ctx = o.n_ctx, .n_ubatch = o.n_ubatch, .n_threads = resolve_threads(o.threads)};
  Context f16(model, f16p);
  const int64_t n_windows = perplexity_windows(tokens.size(), o.n_ctx);
  double nll = 0, nll_f16 = 0, kl_sum = 0;
  int64_t scored = 0, agree = 0;
  std::vector<double> kls;
  Stopwatch clock;
  for (int64_t w = 0; w < n_windows; ++w) {
    std::vector<int32_t> window(tokens.begin() + w * o.n_ctx, tokens.begin() + (w + 1) * o.n_ctx);
    if (bos >= 0) window[0] = bos;
    f16.clear();
    ctx.clear();
    const eval::PplRecord r = eval::compare_window(f16, &ctx, window);
    nll += r.nll;
    nll_f16 += r.nll_dense;
    scored += r.scored;
    agree += r.top1_agree;
    for (float k : r.kl) kls.push_back(k);
    for (float k : r.kl) kl_sum += k;
    fmt::print(stderr, "[{}/{}] ppl {:.4f} (f16 {:.4f}), mean KL {:.6f} ({:.1f} s)\n", w + 1, n_windows,
               std::exp(nll / scored), std::exp(nll_f16 / scored), kl_sum / kls.size(), clock.ms() / 1000.0);
  }
  std::sort(kls.begin(), kls.end());
  const double mean_kl = kl_sum / kls.size();
  double var = 0;
  for (double k : kls) var += (k - mean_kl) * (k - mean_kl);
  fmt::print("Final estimate: PPL = {:.4f}, f16 cache PPL = {:.4f} ({:+.3f}%)\n", std::exp(nll / scored),
             std::exp(nll_f16 / scored), 100.0 * (std::exp((nll - nll_f16) / scored) - 1.0));
  fmt::print("Mean KLD vs f16 cache: {:.6f} +/- {:.6f}, 99th percentile {:.6f}, same top token {:.3f}% ({} positions)\n",
             mean_kl, std::sqrt(var / (kls.size() - 1) / kls.size()), kls[static_cast<size_t>(0.99 * (kls.size() - 1))],
             100.0 * agree / scored, scored);
  fmt::print(stderr, "{}, peak RSS {:.1f} MiB\n", kv_held_summary(ctx, o), peak_rss_mib());
}

void run_perplexity(const PerplexityOptions& o) {
  std::unique_ptr<Model> model = Model::load(resolve_model(o), o.model_options);
  const Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> tokens = tok.encode(read_file(o.file), true, false);
  if (o.max_windows > 0 && tokens.size() > static_cast<size_t>(o.max_windows) * o.n_ctx)
    tokens.resize(static_cast<size_t>(o.max_windows) * o.n_ctx);
  const int64_t n_windows = perplexity_windows(tokens.size(), o.n_ctx);
  ContextParams cp{.n_ctx = o.n_ctx, .n_ubatch = o.n_ubatch, .n_threads = resolve_threads(o.threads)};
  apply_kv_options(o, cp);
  Context ctx(*model, cp);
  warn_beyond_training(o.n_ctx, model->config(), o.dca_chunk);
  if (o.kl_f16) return run_kl_vs_f16(o, *model, ctx, tokens, tok.add_bos() ? tok.bos() : -1);
  fmt::print(stderr, "perplexity: {} tokens, {} windows of {} tokens, scoring the second half of each\n", tokens.size(),
             n_windows, o.n_ctx);
  Stopwatch clock;
  PerplexityResult r = perplexity(ctx, tokens, tok.add_bos() ? tok.bos() : -1, [&](int w, double ppl) {
    fmt::print(stderr, "[{}/{}] ppl {:.4f} ({:.1f} s)\n", w + 1, n_windows, ppl, clock.ms() / 1000.0);
  });
  fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_error);
  fmt::print(stderr, "scored {} tokens in {:.2f} s ({:.1f} tokens/s evaluated), peak RSS {:.1f} MiB\n", r.n_scored,
             clock.ms() / 1000.0, r.n_windows * static_cast<double>(o.n_ctx) / (clock.ms() / 1000.0), peak_rss_mib());
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto o = std::make_shared<PerplexityOptions>();
  CLI::App* cmd = app.add_subcommand("perplexity", "perplexity of a text file (llama-perplexity's method)");
  // -c is the window scored, which cannot be empty.
  add_shared_options_with_kv(*cmd, *o,
                     {{Opt::Model}, {Opt::Threads}, {.opt = Opt::Ctx, .range = Range{1, kMaxTokens}}, {Opt::Ubatch}, {Opt::Gemm}, {Opt::AttnMath}, {Opt::Rope}});
  cmd->add_option("-f,--file", o->file, "text file")->required()->check(CLI::ExistingFile);
  cmd->add_flag("--kl-f16", o->kl_f16, "also run an f16 cache on the same windows: mean KL, top-1 agreement, PPL change");
  cmd->add_option("--chunks", o->max_windows, "score at most this many windows (0: all)")->check(at_least(0));
  cmd->callback([o] { run_perplexity(*o); });
}

}  // namespace skim::cli
