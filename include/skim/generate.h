// The generation loop: prefill a prompt, then sample and decode token by token.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "skim/context.h"
#include "skim/sampling.h"

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
  bool ignore_eog = false;
  std::function<void(const std::string&)> on_text;  // streamed UTF-8-safe pieces
  ProgressFn on_prefill;
};

GenerationResult generate(Context& ctx, const std::vector<int32_t>& prompt, Sampler& sampler,
                          const GenerationOptions& opts);

}  // namespace skim
