// Perplexity the way llama-perplexity computes it: the token stream is cut
// into non-overlapping windows of n_ctx tokens, each evaluated from an empty
// cache (its first token replaced by BOS when the vocabulary adds one), and
// the second half of each window is scored.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "skim/context.h"

namespace skim {

struct PerplexityResult {
  double ppl = 0;
  double ppl_error = 0;  // standard error, propagated from the per-token NLL spread
  int n_windows = 0;
  int64_t n_scored = 0;
  std::vector<double> running_ppl;  // after each window
};

// Windows of n_ctx tokens that `n_tokens` tokens give; throws when none can be scored.
int64_t perplexity_windows(size_t n_tokens, int n_ctx);

// Decodes `window` into ctx's sequence 0 (empty) and hands on the logits of
// rows first.. (first > 0). With a KV policy the rows before `first` are a
// prompt the policy cuts, and the scored rows see the cut cache, as later
// tokens do when decoding (docs/kv-policies.md); without one, a single pass.
void decode_scored(Context& ctx, std::span<const int32_t> window, int64_t first, const Context::LogitsFn& on_logits);

// Calls on_window(window index, running ppl) after each window.
PerplexityResult perplexity(Context& ctx, const std::vector<int32_t>& tokens, int bos_token,
                            const std::function<void(int, double)>& on_window = {});

// Natural-log softmax of one row, in double: log p[i] = l[i] - max - log(sum exp(l - max)).
double log_softmax_at(const float* logits, int n_vocab, int index);

}  // namespace skim
