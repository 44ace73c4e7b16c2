// Test and analysis hooks on a Context's attention, kept out of the public
// ContextParams: the reference attention the kernels are tested against,
// fidelity sampling (skim eval --fidelity) and the prefill hook (skim
// calibrate). Set on a context with ContextInternals::set_observer.
#pragma once

#include <functional>

#include "skim/context.h"

namespace skim {
namespace attention {
struct PlanRequest;  // src/attention/planner.h
}

struct AttentionObserver {
  // The plain GEMM-softmax-GEMM attention instead of the attention core; it
  // exists as the reference the kernels are tested against.
  bool reference_attention = false;
  // When > 0, every sparse layer call also runs dense attention on this many
  // sampled query rows per chunk and records recall and output error per
  // (layer, head) in the attention report (slower; for evaluation).
  int fidelity_rows = 0;
  // Called for every layer of every prefill micro-batch of more than one
  // token, once the chunk's K/V are in the cache and before its attention
  // runs, with the request a planner gets (Q after RoPE, the layer's KV view,
  // positions). Its pointers are valid only during the call; it must not
  // change the context. Not called with reference_attention. Unset (the
  // default), it costs one test per layer.
  std::function<void(const attention::PlanRequest&)> on_prefill_attention;

  // Without a prefill hook and with fidelity_rows = 0, the last layer computes,
  // past its K/V, only the rows that want logits; a lone such row then takes
  // the decode path (8-bit activations in its products). An observer of every
  // layer's attention keeps every row in every layer, so all-logits results
  // are the same either way.
  bool keeps_every_row() const { return on_prefill_attention || fidelity_rows > 0; }
};

struct ContextInternals {
  // Replaces the context's observer (the default observes nothing); it applies
  // from the next micro-batch on.
  static void set_observer(Context& ctx, AttentionObserver observer);
  // A sequence's cache, for tests that look at what the pool holds.
  static const kv::KvSequence& sequence(const Context& ctx, int seq);
};

}  // namespace skim
