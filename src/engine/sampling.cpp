#include "skim/sampling.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace skim {

Sampler::Sampler(const SamplingParams& params)
    : p_(params), seed_(params.seed == 0xFFFFFFFF ? std::random_device{}() : params.seed), rng_(seed_) {}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int32_t n_vocab = static_cast<int32_t>(logits.size());
  cand_.resize(n_vocab);
  for (int32_t i = 0; i < n_vocab; ++i) cand_[i] = {i, logits[i]};

  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
    const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min<size_t>(p_.repeat_last_n, history.size());
    std::unordered_set<int32_t> seen(history.end() - n, history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= n_vocab) continue;
      float& l = cand_[id].logit;  // CTRL-style: shrink positive logits, grow negative ones
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }

  auto by_logit = [](const Candidate& a, const Candidate& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  if (p_.temp <= 0.0f) return std::min_element(cand_.begin(), cand_.end(), by_logit)->id;

  size_t keep = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
    keep = p_.top_k;
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  cand_.resize(keep);

  // Softmax over the survivors (before temperature, as llama.cpp's top-p and min-p see them).
  std::vector<double> prob(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += prob[i] = std::exp(static_cast<double>(cand_[i].logit - cand_[0].logit));
  for (double& p : prob) p /= sum;

  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t n = 0;
    while (n < keep) {
      cum += prob[n++];
      if (cum >= p_.top_p) break;
    }
    keep = std::max<size_t>(n, 1);
  }
  if (p_.min_p > 0.0f) {
    size_t n = 1;
    while (n < keep && prob[n] >= p_.min_p * prob[0]) ++n;
    keep = n;
  }

  std::vector<double> weight(keep);
  for (size_t i = 0; i < keep; ++i) weight[i] = std::exp(static_cast<double>(cand_[i].logit - cand_[0].logit) / p_.temp);
  std::discrete_distribution<size_t> draw(weight.begin(), weight.end());
  return cand_[draw(rng_)].id;
}

float token_logprob(std::span<const float> logits, int32_t id, int n_top, std::vector<TokenLogprob>& top) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - max));
  const float log_z = max + static_cast<float>(std::log(sum));
  top.clear();
  if (n_top > 0) {
    std::vector<int32_t> ids(logits.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
    const size_t n = std::min<size_t>(static_cast<size_t>(n_top), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (size_t i = 0; i < n; ++i) top.push_back({ids[i], logits[ids[i]] - log_z});
  }
  return logits[id] - log_z;
}

}  // namespace skim
