// skim run: generate text from a prompt or a file, streaming, with llama.cpp-style timings.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "common.h"
#include "skim/context.h"
#include "skim/generate.h"
#include "skim/model.h"

namespace skim::cli {
namespace {

struct RunOptions : SharedOptions {
  std::string prompt, file, system;
  bool chat = false;
  int n_predict = 128;
  bool ignore_eos = false;
  bool show_prompt = false;
  bool progress = true;
  int64_t seed = -1;  // -1: random, as llama.cpp's -s -1
  int parallel = 1;   // continuations of the prompt generated together
  std::string prompt_cache;  // KV cache file: reused when the prompt extends its tokens, then rewritten
  SamplingParams sampling;
};

// The perf lines llama.cpp's tools print, for one or several sequences.
void print_perf(double load_ms, const GenerationTimings& t, int sequences) {
  auto per = [](double ms, int n) { return n ? ms / n : 0.0; };
  auto rate = [](double ms, int n) { return ms > 0 ? 1000.0 * n / ms : 0.0; };
  std::fprintf(stderr, "\n");
  std::fprintf(stderr, "skim_perf:        load time = %10.2f ms\n", load_ms);
  std::fprintf(stderr, "skim_perf: prompt eval time = %10.2f ms / %5d tokens (%8.2f ms per token, %8.2f tokens per second)\n",
               t.prompt_ms, t.n_prompt, per(t.prompt_ms, t.n_prompt), rate(t.prompt_ms, t.n_prompt));
  std::fprintf(stderr, "skim_perf:        eval time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)%s\n",
               t.gen_ms, t.n_decoded, per(t.gen_ms, t.n_decoded), rate(t.gen_ms, t.n_decoded),
               sequences > 1 ? fmt::format(", {} sequences", sequences).c_str() : "");
  std::fprintf(stderr, "skim_perf: time to first token = %7.2f ms\n", t.ttft_ms);
  std::fprintf(stderr, "skim_perf:       total time = %10.2f ms / %5d tokens\n", load_ms + t.prompt_ms + t.gen_ms,
               t.n_prompt + t.n_gen);
}

// The rows of a prompt that its prefill ran as GEMMs (Context::gemm_rows):
// all of them, unless the prompt is too short for one.
size_t prefill_gemm_rows(const Context& ctx, const std::vector<int32_t>& prompt) {
  return prompt.size() >= static_cast<size_t>(ctx.gemm_rows()) ? prompt.size() : 0;
}

// Where a loaded prompt cache lets the prompt start; `common`: the whole
// prefix the file shares with the prompt (nothing to save when it is all of it).
int reused_from_cache(const Context& ctx, const Context::SavedSequence& saved, const std::vector<int32_t>& prompt,
                      size_t& common) {
  const size_t n = std::min(saved.tokens.size(), prompt.size());
  common = static_cast<size_t>(std::mismatch(saved.tokens.begin(), saved.tokens.begin() + n, prompt.begin()).first -
                               saved.tokens.begin());
  const size_t rows = static_cast<size_t>(ctx.n_cached(0));
  if (saved.tokens.size() != rows) return 0;
  return static_cast<int>(reusable_prefix(ctx, saved.tokens, saved_gemm_rows(saved.meta, rows), prompt));
}

void run(const RunOptions& o) {
  Stopwatch load_clock;
  const std::string path = resolve_model(o);
  const std::string& attn = o.attn.front();
  validate_attention_spec(attn);
  if (o.prompt.empty() == o.file.empty()) throw std::runtime_error("give exactly one of -p TEXT or -f FILE");
  if (!o.prompt_cache.empty() && o.parallel > 1)
    throw std::runtime_error("--prompt-cache keeps one sequence; it does not combine with --parallel");
  if (!o.prompt_cache.empty() && !o.kv_policy.empty())
    throw std::runtime_error("--prompt-cache saves one row per token; a --kv policy drops rows, so they do not combine");
  std::unique_ptr<Model> model = Model::load(path, o.model_options);
  const Tokenizer& tok = model->tokenizer();
  ContextParams cp;
  cp.n_ctx = o.n_ctx;
  cp.n_ubatch = o.n_ubatch;
  cp.attention = attn;
  cp.n_threads = resolve_threads(o.threads);
  cp.n_seq_max = o.parallel;
  apply_kv_options(o, cp);
  Context ctx(*model, cp);
  const double load_ms = load_clock.ms();

  std::string text = o.file.empty() ? o.prompt : read_file(o.file);
  std::vector<int32_t> prompt;
  if (o.chat) {
    std::vector<ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    msgs.push_back({"user", text});
    prompt = tok.encode(tok.apply_chat_template(msgs, true), true, true);
  } else {
    prompt = tok.encode(text, true, false);
  }
  if (prompt.empty()) throw std::runtime_error("the prompt is empty");
  if (static_cast<int>(prompt.size()) >= ctx.n_ctx())
    throw std::runtime_error(fmt::format("prompt has {} tokens, the context holds {} (raise -c up to the model's {}, or shorten it)",
                                         prompt.size(), ctx.n_ctx(), model->config().n_ctx_train));
  warn_beyond_training(ctx.n_ctx(), model->config(), o.dca_chunk);

  // A prompt cache is read before anything is printed: a refused file is the one error line.
  size_t cached_prefix = 0;  // prompt tokens the cache file already held
  int n_reused = 0;
  std::string cache_note;
  if (!o.prompt_cache.empty() && std::filesystem::exists(o.prompt_cache)) {
    Stopwatch clock;
    const Context::SavedSequence saved = ctx.load_sequence(0, o.prompt_cache);
    n_reused = reused_from_cache(ctx, saved, prompt, cached_prefix);
    if (n_reused < ctx.min_kept_rows(0)) n_reused = 0;  // a window layer no longer holds what it needs
    ctx.truncate_sequence(0, n_reused);
    cache_note = fmt::format("skim: prompt cache {}: {} of {} prompt tokens reused (file: {} tokens, {:.1f} MiB, read in {:.0f} ms)\n",
                             o.prompt_cache, n_reused, prompt.size(), saved.tokens.size(), saved.bytes / 1048576.0, clock.ms());
  }
  std::fprintf(stderr, "skim: model %s (%s), %zu prompt tokens, context %d, attention %s\n", model->config().name.c_str(),
               model->config().arch.c_str(), prompt.size(), ctx.n_ctx(), attn.c_str());
  std::fputs(cache_note.c_str(), stderr);
  if (o.show_prompt) std::fputs(text.c_str(), stdout);

  SamplingParams sampling = o.sampling;
  if (o.seed >= 0) sampling.seed = static_cast<uint64_t>(o.seed);
  Sampler sampler(sampling);
  if (o.parallel > 1) {
    // Continuation i samples with seed + i: reproducible from the one seed printed.
    std::vector<Sampler> samplers;
    for (int i = 0; i < o.parallel; ++i) {
      SamplingParams p = sampling;
      p.seed = sampler.seed() + static_cast<uint64_t>(i);
      samplers.emplace_back(p);
    }
    GenerationOptions g;
    g.n_predict = o.n_predict;
    g.ignore_eog = o.ignore_eos;
    const std::vector<GenerationResult> results = generate_parallel(ctx, prompt, std::move(samplers), g);
    GenerationTimings total = results.front().timings;
    total.n_gen = total.n_decoded = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      std::printf("%s--- sequence %zu (seed %llu, stop: %s) ---\n%s\n", i ? "\n" : "", i,
                  static_cast<unsigned long long>(sampler.seed() + i), results[i].stop_reason.c_str(), results[i].text.c_str());
      total.n_gen += results[i].timings.n_gen;
      total.n_decoded += results[i].timings.n_decoded;
    }
    print_perf(load_ms, total, o.parallel);
    print_attention_report(ctx.attention_report());
    std::fprintf(stderr, "skim_perf: peak RSS = %.1f MiB, %s, seed %llu\n", peak_rss_mib(), kv_held_summary(ctx, o).c_str(),
                 static_cast<unsigned long long>(sampler.seed()));
    return;
  }
  GenerationOptions g;
  g.n_predict = o.n_predict;
  g.ignore_eog = o.ignore_eos;
  g.n_reused = n_reused;
  g.on_text = [](const std::string& s) {
    std::fputs(s.c_str(), stdout);
    std::fflush(stdout);
  };
  Stopwatch prefill_clock;
  if (o.progress && prompt.size() > static_cast<size_t>(o.n_ubatch)) {
    g.on_prefill = [&](int64_t done, int64_t total) {
      std::fprintf(stderr, "\rprefill %lld/%lld tokens (%.0f tok/s)", static_cast<long long>(done),
                   static_cast<long long>(total), done / (prefill_clock.ms() / 1000.0));
      if (done == total) std::fputs("\n", stderr);
    };
  }
  GenerationResult r = generate(ctx, prompt, sampler, g);
  std::fputs("\n", stdout);
  if (!o.prompt_cache.empty() && cached_prefix < prompt.size()) {
    std::fflush(stdout);
    Stopwatch clock;
    std::vector<int32_t> held = prompt;  // and the generated tokens that were decoded
    held.insert(held.end(), r.tokens.begin(), r.tokens.begin() + (ctx.n_cached(0) - static_cast<int>(prompt.size())));
    const size_t bytes = ctx.save_sequence(0, held, o.prompt_cache, gemm_rows_meta(prefill_gemm_rows(ctx, prompt)));
    std::fprintf(stderr, "skim: prompt cache %s: %zu tokens saved (%.1f MiB in %.0f ms)\n", o.prompt_cache.c_str(), held.size(),
                 bytes / 1048576.0, clock.ms());
  }

  print_perf(load_ms, r.timings, 1);
  print_attention_report(ctx.attention_report());
  std::fprintf(stderr, "skim_perf: peak RSS = %.1f MiB, %s, seed %llu, stop: %s\n", peak_rss_mib(),
               kv_held_summary(ctx, o).c_str(), static_cast<unsigned long long>(sampler.seed()), r.stop_reason.c_str());
}

}  // namespace

void register_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "generate text from a prompt (-p) or a file (-f)");
  add_shared_options_with_kv(*cmd, *o, {{Opt::Model}, {Opt::Threads}, {Opt::Ctx}, {Opt::Ubatch}, {Opt::Attn}, {Opt::Gemm}, {Opt::AttnMath}, {Opt::Rope}});
  cmd->add_option("-p,--prompt", o->prompt, "prompt text");
  cmd->add_option("-f,--file", o->file, "read the prompt from a file")->check(CLI::ExistingFile);
  cmd->add_flag("--chat", o->chat, "wrap the prompt in the model's chat template (ChatML or Gemma's) as a user message");
  cmd->add_option("--system-prompt", o->system, "system message for --chat");
  cmd->add_option("-n,--n-predict", o->n_predict, "tokens to generate (-1: until end of generation)")
      ->check(in_range(-1, kMaxTokens));
  cmd->add_option("--temp", o->sampling.temp, "temperature (0: greedy)")->check(at_least(0.0f));
  cmd->add_option("--top-k", o->sampling.top_k, "top-k sampling (0: off)")->check(at_least(0));
  cmd->add_option("--top-p", o->sampling.top_p, "top-p sampling (1: off)")->check(in_range(0.0f, 1.0f));
  cmd->add_option("--min-p", o->sampling.min_p, "min-p sampling (0: off)")->check(in_range(0.0f, 1.0f));
  cmd->add_option("--repeat-penalty", o->sampling.repeat_penalty, "repetition penalty (1: off)")->check(at_least(0.0f));
  cmd->add_option("--repeat-last-n", o->sampling.repeat_last_n, "tokens the repetition penalty looks back (-1: all)")
      ->check(at_least(-1));
  cmd->add_option("-s,--seed", o->seed, "sampling seed (-1: random)")
      ->check(in_range<int64_t>(-1, std::numeric_limits<int64_t>::max()));
  cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating past end-of-generation tokens");
  cmd->add_option("--parallel", o->parallel,
                  "continuations of the prompt generated together (-np): one prefill shared by copy-on-write, "
                  "then one batch per step")
      ->check(in_range(1, 256));
  cmd->add_option("--prompt-cache", o->prompt_cache,
                  "KV cache file: start from it when the prompt extends its tokens, save the new cache there after");
  cmd->add_flag("--show-prompt", o->show_prompt, "echo the prompt text before the generated text");
  cmd->add_flag("!--no-progress", o->progress, "no prefill progress line");
  cmd->callback([o] { run(*o); });
}

}  // namespace skim::cli
