#include "eval/runner.h"

#include "eval/metrics.h"
#include "skim/generate.h"

namespace skim::eval {

TaskRecord run_sample(Context& ctx, const std::string& method, const Sample& sample, AttentionReport& prefill_report) {
  ctx.clear();
  ctx.reset_attention_report();
  GenerationOptions g;
  g.n_predict = sample.answer_tokens;
  std::optional<double> kv_share;
  g.on_prefill = [&](int64_t done, int64_t total) {
    if (done != total) return;
    prefill_report = ctx.attention_report();
    kv_share = static_cast<double>(ctx.kv_held_bytes()) / static_cast<double>(ctx.kv_full_f16_bytes());
  };
  SamplingParams greedy;
  greedy.temp = 0;
  Sampler sampler(greedy);
  const GenerationResult gen = generate(ctx, sample.tokens, sampler, g);

  TaskRecord r;
  r.task = sample.spec.task;
  r.length = sample.spec.length;
  if (find_task(r.task).depth_grid) r.depth = sample.spec.depth;
  r.method = method;
  r.prompt_tokens = static_cast<int>(sample.tokens.size());
  r.prediction = clean_prediction(gen.text);
  r.expected = sample.expected;
  r.score = string_match_all(r.prediction, r.expected);
  r.correct = r.score == 1.0;
  r.prefill_ms = gen.timings.prompt_ms;
  r.decode_ms = gen.timings.gen_ms;
  r.density = prefill_report.density();
  r.kv_share = kv_share;
  return r;
}

}  // namespace skim::eval
