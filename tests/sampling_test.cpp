#include <gtest/gtest.h>

#include <map>

#include "skim/sampling.h"

namespace skim {
namespace {

std::vector<float> logits_of(std::initializer_list<float> l) { return std::vector<float>(l); }

TEST(Sampler, GreedyTakesTheArgmaxAndLowestIdOnTies) {
  SamplingParams p;
  p.temp = 0;
  Sampler s(p);
  EXPECT_EQ(s.sample(logits_of({0.1f, 3.f, -2.f, 2.9f}), {}), 1);
  EXPECT_EQ(s.sample(logits_of({1.f, 5.f, 5.f}), {}), 1);
}

TEST(Sampler, RepetitionPenaltyDemotesSeenTokens) {
  SamplingParams p;
  p.temp = 0;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  const std::vector<int32_t> history = {1};
  EXPECT_EQ(s.sample(logits_of({2.f, 3.f}), history), 0);  // 3/2 < 2
  EXPECT_EQ(s.sample(logits_of({-1.f, -0.6f}), history), 0);  // -0.6*2 < -1
}

// Temperature sampling with every truncation off.
SamplingParams unrestricted(float temp, uint64_t seed) {
  SamplingParams p;
  p.temp = temp;
  p.top_k = 0;
  p.top_p = 1;
  p.min_p = 0;
  p.seed = seed;
  return p;
}

std::map<int32_t, int> histogram(SamplingParams p, const std::vector<float>& logits, int draws) {
  Sampler s(p);
  std::map<int32_t, int> h;
  for (int i = 0; i < draws; ++i) ++h[s.sample(logits, {})];
  return h;
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  SamplingParams p = unrestricted(1, 7);
  p.top_k = 2;
  auto h = histogram(p, logits_of({1.f, 1.1f, 0.9f, 1.05f}), 2000);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_TRUE(h.count(1) && h.count(3));
}

TEST(Sampler, TopPAndMinPCutTheTail) {
  SamplingParams p = unrestricted(1, 3);
  p.top_p = 0.5f;
  // probabilities ~ 0.64, 0.24, 0.09, 0.03: top-p 0.5 keeps only the first.
  auto h = histogram(p, logits_of({3.f, 2.f, 1.f, 0.f}), 500);
  EXPECT_EQ(h.size(), 1u);
  p.top_p = 1;
  p.min_p = 0.3f;  // keeps tokens with p >= 0.3 * 0.64: the first two
  h = histogram(p, logits_of({3.f, 2.f, 1.f, 0.f}), 2000);
  EXPECT_EQ(h.size(), 2u);
}

TEST(Sampler, TemperatureSamplingFollowsTheDistribution) {
  const SamplingParams p = unrestricted(1, 11);
  const int draws = 20000;
  auto h = histogram(p, logits_of({std::log(0.7f), std::log(0.2f), std::log(0.1f)}), draws);
  EXPECT_NEAR(h[0] / double(draws), 0.7, 0.02);
  EXPECT_NEAR(h[1] / double(draws), 0.2, 0.02);
  EXPECT_NEAR(h[2] / double(draws), 0.1, 0.02);
}

TEST(Sampler, SameSeedSameSequence) {
  const SamplingParams p = unrestricted(1.5f, 42);
  Sampler a(p), b(p);
  const std::vector<float> l = logits_of({0.f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(l, {}), b.sample(l, {}));
}

}  // namespace
}  // namespace skim
