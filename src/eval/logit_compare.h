// Tier T2 of skim eval: perplexity, KL(dense || method) and top-1 agreement
// on windows of long coherent text, the way llama-perplexity's KL-divergence
// mode measures them, but with dense and the method run window by window in
// the same process instead of through a saved logits file.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "eval/results.h"
#include "skim/context.h"

namespace skim::eval {

// Scores positions [n/2, n-1) of `window` (its first token already BOS if the
// model wants one). Without `method`, only dense runs (nll = nll_dense, no KL).
// With it, the method prefills the whole window in one call, as in real use,
// while dense is advanced in step, micro-batch by micro-batch (dense attention
// gives the same logits however the window is cut), so only one micro-batch
// of logits per context is held at a time. prefill_ms is the method's own
// prefill time, without dense and without the comparison.
PplRecord compare_window(Context& dense, Context* method, std::span<const int32_t> window);

}  // namespace skim::eval
