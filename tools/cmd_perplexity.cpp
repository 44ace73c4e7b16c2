// skim perplexity: llama-perplexity's measurement (windows of -c tokens, second half scored).
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "common.h"
#include "skim/model.h"
#include "skim/perplexity.h"

namespace skim::cli {
namespace {

struct PerplexityOptions : SharedOptions {
  PerplexityOptions() { n_ctx = 512; }  // llama-perplexity's window
  std::string file;
  int max_windows = 0;
};

void run_perplexity(const PerplexityOptions& o) {
  std::unique_ptr<Model> model = Model::load(resolve_model(o));
  const Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> tokens = tok.encode(read_file(o.file), true, false);
  if (o.max_windows > 0 && tokens.size() > static_cast<size_t>(o.max_windows) * o.n_ctx)
    tokens.resize(static_cast<size_t>(o.max_windows) * o.n_ctx);
  const int64_t n_windows = perplexity_windows(tokens.size(), o.n_ctx);
  Context ctx(*model, {.n_ctx = o.n_ctx, .n_ubatch = o.n_ubatch, .n_threads = resolve_threads(o.threads), .kv_type = o.kv_type});
  warn_beyond_training(o.n_ctx, model->config().n_ctx_train);
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
  add_shared_options(*cmd, *o,
                     {{Opt::Model}, {Opt::Threads}, {.opt = Opt::Ctx, .range = Range{1, kMaxTokens}}, {Opt::Ubatch}, {Opt::KvType}});
  cmd->add_option("-f,--file", o->file, "text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--chunks", o->max_windows, "score at most this many windows (0: all)")->check(at_least(0));
  cmd->callback([o] { run_perplexity(*o); });
}

}  // namespace skim::cli
