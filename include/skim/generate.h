// The generation loop: prefill a prompt, then sample and decode token by token.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "skim/context.h"
#include "skim/sampling.h"
#include "skim/tokenizer.h"

namespace skim {

struct GenerationTimings {
  double prompt_ms = 0;  // prefill of the prompt (all micro-batches)
  double gen_ms = 0;     // decoding of generated tokens after the first
  double ttft_ms = 0;    // prompt start to first generated token sampled
  int n_prompt = 0;
  int n_gen = 0;         // tokens sampled
  int n_decoded = 0;     // tokens run through the model after the prompt
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (the end-of-generation token excluded)
  std::string text;
  std::string stop_reason;  // "eog" | "length" | "context"
  GenerationTimings timings;
};

struct GenerationOptions {
  int n_predict = 128;      // < 0: until end of generation or context full
  int n_reused = 0;         // leading prompt tokens sequence 0 already holds (a loaded prompt cache)
  bool ignore_eog = false;
  std::function<void(const std::string&)> on_text;  // streamed UTF-8-safe pieces
  ProgressFn on_prefill;
};

// How many leading prompt tokens may come from a cache holding `cached`
// tokens, the first `gemm_rows` of them computed by GEMMs: their common prefix,
// leaving at least ctx.gemm_rows() tokens to prefill, so that the answer is the
// one a cold run gives (docs/server.md, batch invariance).
size_t reusable_prefix(const Context& ctx, std::span<const int32_t> cached, size_t gemm_rows,
                       std::span<const int32_t> prompt);

// A saved cache records how many of its leading rows a GEMM computed: only
// those may start another prompt (reusable_prefix). The metadata entry for
// Context::save_sequence, and its value read back (at most n_rows; 0 if absent).
std::map<std::string, std::string> gemm_rows_meta(size_t gemm_rows);
size_t saved_gemm_rows(const std::map<std::string, std::string>& meta, size_t n_rows);

GenerationResult generate(Context& ctx, const std::vector<int32_t>& prompt, Sampler& sampler,
                          const GenerationOptions& opts);

// One sequence being generated in a shared Context: its sequence id, token
// history, sampler, text decoder and what it produced so far. What a server
// keeps per request; the model, the context and its KV pool are shared.
class Session {
 public:
  Session(const Tokenizer& tok, int seq_id, const std::vector<int32_t>& prompt, Sampler sampler);

  int seq_id() const { return seq_id_; }
  const std::vector<int32_t>& history() const { return history_; }  // prompt and generated tokens
  bool done() const { return done_; }
  int32_t last_token() const { return history_.back(); }
  const Sampler& sampler() const { return sampler_; }

  // Samples the next token from the logits of the last one. False when
  // generation stops (end of generation, n_predict, or a full context:
  // result().stop_reason); true when the sampled token is to be decoded next.
  bool accept(std::span<const float> logits, int n_cached, int n_ctx, const GenerationOptions& opts);
  // The text decoder's tail, once generation has stopped.
  std::string finish();
  GenerationResult& result() { return result_; }

 private:
  const Tokenizer& tok_;
  int seq_id_;
  std::vector<int32_t> history_;
  Sampler sampler_;
  StreamDecoder stream_;
  GenerationResult result_;
  bool done_ = false;
};

// n continuations of one prompt, generated together (as llama.cpp's
// llama-batched): the prompt is prefilled once into sequence 0 and shared by
// the others through the KV pool (copy-on-write), then every step decodes the
// last token of each unfinished session as one batch. One sampler per
// continuation; ctx.n_seq_max() must be at least their number. opts.on_text is
// not called (the texts are in the results). The context is cleared first.
std::vector<GenerationResult> generate_parallel(Context& ctx, const std::vector<int32_t>& prompt,
                                                std::vector<Sampler> samplers, const GenerationOptions& opts);

}  // namespace skim
