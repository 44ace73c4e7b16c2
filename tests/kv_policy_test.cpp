// KV selection policies: each keeps exactly its budget per KV head, never the
// sinks or the window it promises away, keeps everything when the budget is
// everything, and the scoring policies find the keys the window attends to;
// compaction moves rows with their positions.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

constexpr int32_t kHq = 6, kHkv = 2, kDim = 64, kWindow = 16;

// One layer of n keys at positions 0, 2, 4, ... (gaps, as after an earlier
// eviction), random but for `hot` keys that every window query aligns with.
struct Problem {
  kv::KvPool pool{kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 256};
  kv::KvSequence seq{pool, 1, kHkv, 4096};
  std::vector<float> q;
  std::set<int64_t> hot;

  explicit Problem(int64_t n, uint32_t seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::vector<int32_t> positions(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(2 * i);
    seq.append(positions);
    std::vector<float> direction(kDim), row(kDim);
    for (float& x : direction) x = gauss(rng);
    for (int64_t s : {n / 5, n / 3, n / 2}) hot.insert(s);
    for (int32_t g = 0; g < kHkv; ++g)
      for (int64_t s = 0; s < n; ++s) {
        for (int e = 0; e < kDim; ++e) row[e] = hot.count(s) ? 3.0f * direction[e] : gauss(rng);
        kernels::encode_kv_row(row.data(), kernels::KvDType::F16, kDim, seq.k_row(0, g, s));
        kernels::encode_kv_row(row.data(), kernels::KvDType::F16, kDim, seq.v_row(0, g, s));
      }
    q.resize(static_cast<size_t>(kWindow) * kHq * kDim);
    for (size_t i = 0; i < q.size(); ++i) q[i] = direction[i % kDim] + 0.3f * gauss(rng);
  }
  ScoreRequest request() const {
    const int64_t n = seq.size();
    return {.n_q_heads = kHq, .n_kv_heads = kHkv, .head_dim = kDim, .q = q.data(), .q_row_stride = kHq * kDim,
            .q_rows = kWindow, .q_pos0 = static_cast<int32_t>(2 * (n - kWindow)), .kv = seq.view(0), .scale = 0.125f};
  }
};

const std::vector<std::string> kPolicies = {"streaming", "snapkv", "tova", "keydiff", "dapq"};

TEST(KvPolicy, EachKeepsItsBudgetTheSinksAndTheWindow) {
  Problem p(1000);
  for (const std::string& name : kPolicies) {
    SCOPED_TRACE(name);
    const KvPolicy policy(name + ":sink=8,window=16");
    for (int64_t target : {40, 300, 999}) {
      const auto kept = policy.select(p.request(), target);
      ASSERT_EQ(kept.size(), static_cast<size_t>(kHkv));
      for (const auto& k : kept) {
        ASSERT_EQ(static_cast<int64_t>(k.size()), target);
        ASSERT_TRUE(std::is_sorted(k.begin(), k.end()));
        ASSERT_EQ(std::adjacent_find(k.begin(), k.end()), k.end());
        for (int64_t s = 0; s < 4; ++s) EXPECT_EQ(k[s], s) << "sink position " << 2 * s;  // positions 0..7 are slots 0..3
        for (int64_t s = 1000 - 16; s < 1000; ++s) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), s)) << "window slot " << s;
      }
    }
  }
}

TEST(KvPolicy, EverythingKeptWhenTheBudgetIsEverything) {
  Problem p(500);
  for (const std::string& name : kPolicies) {
    const auto kept = KvPolicy(name).select(p.request(), 500);
    for (const auto& k : kept) {
      ASSERT_EQ(k.size(), 500u) << name;
      for (int64_t s = 0; s < 500; ++s) ASSERT_EQ(k[s], s) << name;
    }
  }
}

TEST(KvPolicy, AttentionScorersKeepTheKeysTheWindowAttendsTo) {
  Problem p(1000);
  for (const std::string& name : {"snapkv:kernel=1", "snapkv", "tova", "dapq"}) {
    SCOPED_TRACE(name);
    const auto kept = KvPolicy(name).select(p.request(), 60);  // 2 sink slots + 32 window + 26 chosen
    for (const auto& k : kept)
      for (int64_t hot : p.hot) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), hot)) << "hot key " << hot;
  }
  // Streaming keeps none of them: they are neither sinks nor recent.
  for (const auto& k : KvPolicy("streaming").select(p.request(), 60))
    for (int64_t hot : p.hot) EXPECT_FALSE(std::binary_search(k.begin(), k.end(), hot));
}

TEST(KvPolicy, BadSpecsAreRefused) {
  EXPECT_THROW(KvPolicy("nosuch"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("snapkv:keep=0"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("snapkv:kernel=4"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("tova:budget=10"), std::invalid_argument);  // below sink + window
  EXPECT_THROW(KvPolicy("streaming:local=5"), std::invalid_argument);
}

TEST(KvPolicy, TargetsFollowKeepAndBudget) {
  EXPECT_EQ(KvPolicy("snapkv:keep=0.5").target_after_prompt(1000), 500);
  EXPECT_EQ(KvPolicy("snapkv:keep=0.5,budget=300").target_after_prompt(1000), 300);
  EXPECT_EQ(KvPolicy("snapkv").target_after_prompt(1000), 1000);
  EXPECT_EQ(KvPolicy("snapkv:keep=0.1").target_after_prompt(30), 30);  // not more than sink + window: all stay
}

// Compaction moves each kept row, K, V and position, to the front of its
// (layer, head); other heads choose their own rows.
TEST(KvPolicy, CompactionMovesRowsWithTheirPositions) {
  Problem p(300);
  std::vector<float> before(static_cast<size_t>(300) * kDim), after(before.size());
  const std::vector<std::vector<int64_t>> kept = {{0, 5, 64, 65, 200, 299}, {1, 2, 3, 150, 298, 299}};
  std::vector<std::vector<float>> rows_before;
  for (int32_t g = 0; g < kHkv; ++g) {
    kernels::read_k_rows(p.seq.view(0), g, 0, 300, kDim, before.data());
    rows_before.push_back(before);
  }
  for (int32_t g = 0; g < kHkv; ++g) p.seq.compact(0, g, kept[static_cast<size_t>(g)]);
  p.seq.truncate(6);
  for (int32_t g = 0; g < kHkv; ++g) {
    const kernels::KvView view = p.seq.view(0);
    kernels::read_k_rows(view, g, 0, 6, kDim, after.data());
    for (int64_t i = 0; i < 6; ++i) {
      const int64_t from = kept[static_cast<size_t>(g)][static_cast<size_t>(i)];
      EXPECT_EQ(view.position(g, i), 2 * from);
      for (int e = 0; e < kDim; ++e) ASSERT_EQ(after[i * kDim + e], rows_before[g][from * kDim + e]);
    }
  }
  EXPECT_THROW(p.seq.compact(0, 0, std::vector<int64_t>{3, 2}), std::invalid_argument);
}

}  // namespace
}  // namespace skim::kvpolicy
