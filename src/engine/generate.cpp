#include "skim/generate.h"

#include <chrono>

namespace skim {
namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerationResult generate(Context& ctx, const std::vector<int32_t>& prompt, Sampler& sampler,
                          const GenerationOptions& opts) {
  const Tokenizer& tok = ctx.model().tokenizer();
  GenerationResult r;
  StreamDecoder stream(tok);
  std::vector<int32_t> history(prompt);

  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = ctx.decode(prompt, false, opts.on_prefill);
  r.timings.prompt_ms = ms_since(t0);
  r.timings.n_prompt = static_cast<int>(prompt.size());

  auto t_gen = std::chrono::steady_clock::now();
  r.stop_reason = "length";
  for (int i = 0; opts.n_predict < 0 || i < opts.n_predict; ++i) {
    const int32_t id = sampler.sample(logits, history);
    if (i == 0) {
      r.timings.ttft_ms = ms_since(t0);
      t_gen = std::chrono::steady_clock::now();
    }
    ++r.timings.n_gen;
    if (!opts.ignore_eog && tok.is_eog(id)) {
      r.stop_reason = "eog";
      break;
    }
    r.tokens.push_back(id);
    history.push_back(id);
    const std::string piece = stream.push(id);
    r.text += piece;
    if (opts.on_text && !piece.empty()) opts.on_text(piece);
    if (opts.n_predict >= 0 && i + 1 >= opts.n_predict) break;
    if (ctx.n_past() >= ctx.n_ctx()) {
      r.stop_reason = "context";
      break;
    }
    const int32_t next[1] = {id};
    logits = ctx.decode(next);
    ++r.timings.n_decoded;
  }
  r.timings.gen_ms = ms_since(t_gen);
  const std::string tail = stream.flush();
  r.text += tail;
  if (opts.on_text && !tail.empty()) opts.on_text(tail);
  return r;
}

}  // namespace skim
