// Token sampling from logits, in llama.cpp's order: repetition penalty,
// top-k, top-p, min-p, temperature, then a seeded draw. temp <= 0 is greedy.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace skim {

struct SamplingParams {
  float temp = 0.8f;
  int top_k = 40;            // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;    // how many recent tokens the penalty looks at
  uint64_t seed = 0xFFFFFFFF;  // 0xFFFFFFFF: random seed
};

struct TokenLogprob {
  int32_t id;
  float logprob;
};
// The log-probability of token `id` under the raw logits (before any sampler
// setting, as OpenAI's logprobs), and the n_top most likely tokens', most likely first.
float token_logprob(std::span<const float> logits, int32_t id, int n_top, std::vector<TokenLogprob>& top);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // `history`: prompt and generated tokens so far (for the repetition penalty).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  uint64_t seed() const { return seed_; }

 private:
  SamplingParams p_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  struct Candidate {
    int32_t id;
    float logit;
  };
  std::vector<Candidate> cand_;
};

}  // namespace skim
