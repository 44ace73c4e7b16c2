#include "skim/perplexity.h"

#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace skim {

double log_softmax_at(const float* logits, int n_vocab, int index) {
  float mx = logits[0];
  for (int i = 1; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return static_cast<double>(logits[index]) - mx - std::log(sum);
}

int64_t perplexity_windows(size_t n_tokens, int n_ctx) {
  // Positions n_ctx/2 .. n_ctx-2 are scored: windows under 3 tokens score none (and a NaN perplexity).
  if (n_ctx < 3) throw std::invalid_argument(fmt::format("a window of {} tokens scores none: use at least 3", n_ctx));
  const int64_t n_windows = static_cast<int64_t>(n_tokens) / n_ctx;
  if (n_windows < 1)
    throw std::invalid_argument(fmt::format("perplexity needs at least one window of {} tokens, the text has {}", n_ctx, n_tokens));
  return n_windows;
}

void decode_scored(Context& ctx, std::span<const int32_t> window, int64_t first, const Context::LogitsFn& on_logits) {
  if (ctx.kv_policy(0).empty()) return ctx.decode_streaming(window, first, on_logits);
  // The prompt's last row wants logits, so the policy cuts once the prompt is in.
  ctx.decode_streaming(window.first(static_cast<size_t>(first)), first - 1, [](int64_t, int64_t, const float*) {});
  ctx.decode_streaming(window.subspan(static_cast<size_t>(first)), 0,
                       [&](int64_t row0, int64_t rows, const float* logits) { on_logits(first + row0, rows, logits); });
}

PerplexityResult perplexity(Context& ctx, const std::vector<int32_t>& tokens, int bos_token,
                            const std::function<void(int, double)>& on_window) {
  const int n_ctx = ctx.n_ctx();
  const int n_vocab = ctx.model().config().n_vocab;
  const int64_t n_windows = perplexity_windows(tokens.size(), n_ctx);
  const int first = n_ctx / 2;

  PerplexityResult r;
  double nll_sum = 0, nll2_sum = 0;
  for (int64_t w = 0; w < n_windows; ++w) {
    std::vector<int32_t> window(tokens.begin() + w * n_ctx, tokens.begin() + (w + 1) * n_ctx);
    if (bos_token >= 0) window[0] = bos_token;
    ctx.clear();
    // Position j predicts token j+1; positions first .. n_ctx-2 are scored.
    decode_scored(ctx, window, first, [&](int64_t row0, int64_t rows, const float* logits) {
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t j = row0 + i;
        if (j + 1 >= n_ctx) break;
        const double nll = -log_softmax_at(logits + i * n_vocab, n_vocab, window[j + 1]);
        nll_sum += nll;
        nll2_sum += nll * nll;
        ++r.n_scored;
      }
    });
    ++r.n_windows;
    r.running_ppl.push_back(std::exp(nll_sum / r.n_scored));
    if (on_window) on_window(static_cast<int>(w), r.running_ppl.back());
  }
  const double mean = nll_sum / r.n_scored;
  const double var = nll2_sum / r.n_scored - mean * mean;
  r.ppl = std::exp(mean);
  r.ppl_error = r.n_scored > 1 ? r.ppl * std::sqrt(std::max(0.0, var) / (r.n_scored - 1)) : 0;
  return r;
}

}  // namespace skim
