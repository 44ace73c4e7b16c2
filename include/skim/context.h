// Inference state for one sequence: KV cache, scratch buffers, and the forward
// pass that turns tokens into logits.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "skim/attention.h"
#include "skim/model.h"

namespace skim {

class KvCache;
struct Activations;        // src/model/blocks.h
struct AttentionObserver;  // src/model/attention_observer.h
namespace attention {
class AttentionMethod;
}

struct ContextParams {
  int n_ctx = 0;       // KV capacity in tokens; 0 = the model's training context
  int n_ubatch = 512;  // tokens per forward micro-batch during prefill
  // Attention method spec, "NAME[:key=value,...]" (skim/attention.h).
  std::string attention = "dense";
};

// Called after each micro-batch with (tokens done, tokens total).
using ProgressFn = std::function<void(int64_t, int64_t)>;

class Context {
 public:
  Context(const Model& model, ContextParams params);
  ~Context();

  // Appends `tokens` at positions n_past()..; returns the logits of every new
  // position ([n][vocab], all_logits) or of the last one ([vocab]).
  // Throws std::length_error when the tokens do not fit in the context.
  std::vector<float> decode(std::span<const int32_t> tokens, bool all_logits = false, const ProgressFn& progress = {});

  // Streaming form: logits of new positions >= logits_from (relative to
  // `tokens`) are handed to on_logits micro-batch by micro-batch as
  // (first row, row count, [rows][vocab]), so no [n][vocab] buffer is needed.
  using LogitsFn = std::function<void(int64_t, int64_t, const float*)>;
  void decode_streaming(std::span<const int32_t> tokens, int64_t logits_from, const LogitsFn& on_logits,
                        const ProgressFn& progress = {});

  int n_past() const;
  int n_ctx() const { return params_.n_ctx; }
  void clear();  // forget all tokens
  const Model& model() const { return model_; }
  size_t kv_bytes() const;       // reserved for n_ctx tokens (resident only where written)
  size_t kv_held_bytes() const;  // the K/V rows of the tokens held
  const AttentionReport& attention_report() const;
  void reset_attention_report();

 private:
  friend struct ContextInternals;  // src/model/attention_observer.h: test and analysis hooks

  // Logits for rows [logits_from, n) of the micro-batch go to logits_out (none if logits_from >= n).
  // final_chunk: the micro-batch ends the tokens of this decode call.
  void forward_ubatch(std::span<const int32_t> tokens, int64_t logits_from, float* logits_out, bool final_chunk);

  const Model& model_;
  ContextParams params_;
  std::unique_ptr<attention::AttentionMethod> method_;
  AttentionReport report_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<AttentionObserver> observer_;  // never null; the default observes nothing
  std::unique_ptr<Activations> s_;
};

}  // namespace skim
