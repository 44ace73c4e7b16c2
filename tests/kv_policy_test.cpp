// KV selection policies: each keeps exactly its budget per KV head, never the
// sinks or the window it promises away, keeps everything when the budget is
// everything, and the scoring policies find the keys the window attends to;
// compaction moves rows with their positions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/attention_mass.h"
#include "kernels/elementwise.h"
#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

constexpr int32_t kHq = 6, kHkv = 2, kDim = 64, kWindow = 16;

// RoPE over every head of q rows (base 10000, pairs (i, i + d/2)), as the model turns queries.
void rope_turn(float* q, int64_t rows, int64_t row_stride, const int32_t* shift) {
  std::vector<float> inv_freq(kDim / 2), cos(kDim / 2), sin(kDim / 2);
  for (int i = 0; i < kDim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / kDim);
  for (int64_t r = 0; r < rows; ++r) {
    kernels::rope_angles(static_cast<float>(shift[r]), inv_freq.data(), kDim, cos.data(), sin.data());
    kernels::rope(q + r * row_stride, kHq, kDim, cos.data(), sin.data(), false);
  }
}

// One layer of n keys at positions 0, 2, 4, ... (gaps, as after an earlier
// eviction), random but for `hot` keys that every window query aligns with.
struct Problem {
  kv::KvPool pool{kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 256};
  kv::KvSequence seq{pool, 1, kHkv, 4096};
  std::vector<float> q;
  std::set<int64_t> hot;
  std::vector<float> direction = std::vector<float>(kDim);

  explicit Problem(int64_t n, uint32_t seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::vector<int32_t> positions(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(2 * i);
    seq.append(positions);
    std::vector<float> row(kDim);
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
    // What the context accumulates for H2O, here from the window's queries alone.
    for (int32_t g = 0; g < kHkv; ++g)
      kernels::accumulate_attention_mass(q.data(), kHq * kDim, kWindow, q_pos0(), kHq, kHkv, kDim, seq.view(0), g, 0.125f,
                                         seq.row_scores(0, g));
  }
  int32_t q_pos0() const { return static_cast<int32_t>(2 * (seq.size() - kWindow)); }
  ScoreRequest request() const {
    const int64_t n = seq.size();
    return {.n_q_heads = kHq, .n_kv_heads = kHkv, .head_dim = kDim, .q = q.data(), .q_row_stride = kHq * kDim,
            .q_rows = kWindow, .q_pos0 = static_cast<int32_t>(2 * (n - kWindow)), .kv = seq.view(0), .scale = 0.125f,
            // The fixture's queries carry no rotation: turning them is the identity (theta = 0).
            .turn = [](float*, int64_t, int64_t, const int32_t*) {},
            .received = {seq.row_scores(0, 0), seq.row_scores(0, 1)}};
  }
};

// Per-layer budgets (pyramid, zipvl) keep their own count: the shared rules are checked on them below.
const std::vector<std::string> kPolicies = {"streaming", "snapkv", "tova", "h2o", "h2o:mean=1", "keydiff", "dapq", "expected",
                                            "arkv"};

TEST(KvPolicy, EachKeepsItsBudgetTheSinksAndTheWindow) {
  Problem p(1000);
  for (const std::string& name : kPolicies) {
    SCOPED_TRACE(name);
    const KvPolicy policy(name + (name.find(':') == std::string::npos ? ":" : ",") + "sink=8,window=16");
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
  for (const std::string& name :
       {"snapkv:kernel=1", "snapkv", "tova", "h2o", "h2o:mean=1", "dapq", "expected", "expected:cov=0,vnorm=0", "arkv"}) {
    SCOPED_TRACE(name);
    const auto kept = KvPolicy(name).select(p.request(), 60);  // 2 sink slots + 32 window + 26 chosen
    for (const auto& k : kept)
      for (int64_t hot : p.hot) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), hot)) << "hot key " << hot;
  }
  // Streaming keeps none of them: they are neither sinks nor recent.
  for (const auto& k : KvPolicy("streaming").select(p.request(), 60))
    for (int64_t hot : p.hot) EXPECT_FALSE(std::binary_search(k.begin(), k.end(), hot));
}

// Expected Attention undoes each window query's RoPE and turns the mean by
// the rotation averaged over the future positions. Window queries that are one
// vector c seen at their own positions, R(p) c, with keys that match c only
// as it will be seen right after the window, R(next) c: with future=1 the
// policy must keep exactly those keys.
TEST(KvPolicy, ExpectedAttentionLooksAtTheNextPositions) {
  Problem p(1000, 3);
  std::mt19937 rng(7);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> c(kDim);
  for (float& x : c) x = gauss(rng);
  ScoreRequest r = p.request();
  r.turn = rope_turn;
  std::vector<float> q(static_cast<size_t>(kWindow) * kHq * kDim);
  for (int32_t i = 0; i < kWindow; ++i)
    for (int32_t h = 0; h < kHq; ++h) std::copy(c.begin(), c.end(), q.begin() + (i * kHq + h) * kDim);
  std::vector<int32_t> pos(kWindow);
  for (int32_t i = 0; i < kWindow; ++i) pos[i] = r.q_pos0 + i;
  rope_turn(q.data(), kWindow, kHq * kDim, pos.data());
  r.q = q.data();
  // Keys: R(next) c at the hot slots; elsewhere decoys of the same norm along
  // what the queries' mean turned by `next` without undoing their own RoPE
  // would look for, so a scorer that skipped that step would keep decoys.
  std::vector<float> ahead(static_cast<size_t>(kHq) * kDim), decoy(ahead.size(), 0.0f);
  for (int32_t h = 0; h < kHq; ++h) std::copy(c.begin(), c.end(), ahead.begin() + h * kDim);
  for (int32_t i = 0; i < kWindow; ++i)
    for (int32_t e = 0; e < kHq * kDim; ++e) decoy[e] += q[i * kHq * kDim + e] / kWindow;
  const int32_t next = r.q_pos0 + kWindow;
  rope_turn(ahead.data(), 1, kHq * kDim, &next);
  rope_turn(decoy.data(), 1, kHq * kDim, &next);
  double c_norm = 0.0, decoy_norm = 0.0;
  for (int e = 0; e < kDim; ++e) {
    c_norm += static_cast<double>(c[e]) * c[e];
    decoy_norm += static_cast<double>(decoy[e]) * decoy[e];
  }
  for (float& x : decoy) x *= static_cast<float>(std::sqrt(c_norm / decoy_norm));
  for (int32_t g = 0; g < kHkv; ++g)
    for (int64_t s = 4; s < 1000 - 32; ++s) {
      std::vector<float> row(kDim);
      for (int e = 0; e < kDim; ++e) row[e] = (p.hot.count(s) ? ahead[e] : decoy[e]) + 0.05f * gauss(rng);
      kernels::encode_kv_row(row.data(), kernels::KvDType::F16, kDim, p.seq.k_row(0, g, s));
    }
  r.kv = p.seq.view(0);
  for (const auto& k : KvPolicy("expected:future=1,sink=4,window=32").select(r, 4 + 32 + 3))
    for (int64_t hot : p.hot) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), hot)) << "hot key " << hot;
}

// PyramidKV: the layers' counts fall linearly from the first layer to the
// last, average the target, and each keeps the sinks, the window and its
// share of the hot keys.
TEST(KvPolicy, PyramidBudgetsFallWithDepthAndAverageTheTarget) {
  Problem p(1000);
  const KvPolicy policy("pyramid:sink=8,window=16");
  ScoreRequest r = p.request();
  r.n_layers = 5;
  std::vector<int64_t> counts;
  for (int32_t l = 0; l < r.n_layers; ++l) {
    r.layer = l;
    const auto kept = policy.select(r, 300);
    for (const auto& k : kept) {
      ASSERT_EQ(k.size(), kept.front().size());
      for (int64_t s = 0; s < 4; ++s) EXPECT_EQ(k[s], s);
      for (int64_t s = 1000 - 16; s < 1000; ++s) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), s));
      for (int64_t hot : p.hot) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), hot)) << "layer " << l;
    }
    counts.push_back(static_cast<int64_t>(kept.front().size()));
  }
  // m = 300 - 24 chosen rows on average: from 2m - m/20 down to m/20.
  EXPECT_EQ(counts.front(), 24 + 552 - 14);
  EXPECT_EQ(counts.back(), 24 + 14);
  for (size_t l = 1; l < counts.size(); ++l) EXPECT_LT(counts[l], counts[l - 1]);
  EXPECT_NEAR(static_cast<double>(std::accumulate(counts.begin(), counts.end(), int64_t{0})) / 5.0, 300.0, 1.0);
  // Nothing left to choose from: every layer keeps everything.
  for (int32_t l = 0; l < r.n_layers; ++l) {
    r.layer = l;
    EXPECT_EQ(policy.select(r, 1000).front().size(), 1000u);
  }
}

// ZipVL: a layer keeps the fewest keys holding tau of the window's mass. With
// three hot keys drawing nearly all of it, a high tau keeps little more than
// them; tau = 1 keeps every key the window paid anything; `keep` caps the count.
TEST(KvPolicy, ZipvlKeepsTheFewestKeysHoldingTauOfTheMass) {
  Problem p(1000);
  const KvPolicy policy("zipvl:tau=0.9,sink=4,window=16");
  EXPECT_TRUE(policy.adaptive());
  const auto kept = policy.select(p.request(), 1000);
  for (const auto& k : kept) {
    EXPECT_LT(k.size(), 60u);
    for (int64_t hot : p.hot) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), hot));
    for (int64_t s = 1000 - 16; s < 1000; ++s) EXPECT_TRUE(std::binary_search(k.begin(), k.end(), s));
  }
  EXPECT_EQ(KvPolicy("zipvl:tau=1").select(p.request(), 1000).front().size(), 1000u);
  EXPECT_EQ(KvPolicy("zipvl:tau=1").select(p.request(), 400).front().size(), 400u);
}

// LOOK-M merging: every evicted row goes to the kept row of its head whose key
// is closest in cosine, and that row becomes the mean (average) or the mean of
// the pairwise means (pivot); checked against a float64 reference. Rows that
// absorb nothing are not rewritten; keeping everything merges nothing.
TEST(KvPolicy, MergedRowsAreTheMeansOfWhatTheyAbsorb) {
  Problem p(200, 5);
  for (const bool pivot : {false, true}) {
    SCOPED_TRACE(pivot ? "pivot" : "average");
    const KvPolicy policy(std::string("streaming:sink=4,window=16,merge=") + (pivot ? "pivot" : "average"));
    const ScoreRequest r = p.request();
    const auto kept = policy.select(r, 60);
    const std::vector<MergedRow> merged = policy.merge(r, kept);
    for (int32_t g = 0; g < kHkv; ++g) {
      std::vector<float> k(200 * kDim), v(k.size());
      kernels::read_k_rows(r.kv, g, 0, 200, kDim, k.data());
      kernels::read_v_rows(r.kv, g, 0, 200, kDim, v.data());
      const auto cosine = [&](int64_t a, int64_t b) {
        double dot = 0, na = 0, nb = 0;
        for (int e = 0; e < kDim; ++e) {
          dot += double(k[a * kDim + e]) * k[b * kDim + e];
          na += double(k[a * kDim + e]) * k[a * kDim + e];
          nb += double(k[b * kDim + e]) * k[b * kDim + e];
        }
        return dot / std::sqrt(na * nb);
      };
      const std::vector<int64_t>& keep = kept[g];
      std::vector<std::vector<double>> k_sum(keep.size(), std::vector<double>(kDim, 0.0)), v_sum = k_sum;
      std::vector<int> absorbed(keep.size(), 0);
      for (int64_t e = 0; e < 200; ++e) {
        if (std::binary_search(keep.begin(), keep.end(), e)) continue;
        size_t best = 0;
        for (size_t t = 1; t < keep.size(); ++t)
          if (cosine(e, keep[t]) > cosine(e, keep[best])) best = t;
        for (int c = 0; c < kDim; ++c) {
          const int64_t to = keep[best];
          k_sum[best][c] += pivot ? 0.5 * (k[e * kDim + c] + k[to * kDim + c]) : k[e * kDim + c];
          v_sum[best][c] += pivot ? 0.5 * (v[e * kDim + c] + v[to * kDim + c]) : v[e * kDim + c];
        }
        ++absorbed[best];
      }
      size_t rewritten = 0;
      for (size_t t = 0; t < keep.size(); ++t) {
        const auto it = std::find_if(merged.begin(), merged.end(),
                                     [&](const MergedRow& m) { return m.head == g && m.slot == keep[t]; });
        ASSERT_EQ(it != merged.end(), absorbed[t] > 0) << "slot " << keep[t];
        if (it == merged.end()) continue;
        ++rewritten;
        for (int c = 0; c < kDim; ++c) {
          EXPECT_NEAR(it->k[c], (k[keep[t] * kDim + c] + k_sum[t][c]) / (1 + absorbed[t]), 1e-5);
          EXPECT_NEAR(it->v[c], (v[keep[t] * kDim + c] + v_sum[t][c]) / (1 + absorbed[t]), 1e-5);
        }
      }
      EXPECT_GT(rewritten, 0u);
    }
    EXPECT_TRUE(policy.merge(r, policy.select(r, 200)).empty());
  }
}

// ARKV ranks the rows it chooses best first, and a layer's preference for
// original rows is disp^(1/t1) var^(1/t2) kurt^(1/t3) of the window's
// attention on the keys before the window, here against a float64 reference.
TEST(KvPolicy, ArkvRanksItsRowsAndPrefersLayersByTheirAttentionShape) {
  Problem p(400);
  const ScoreRequest r = p.request();
  const KvPolicy policy("arkv:sink=8,window=16,kernel=1,gamma=0");  // score: the mean attention alone
  std::vector<std::vector<int64_t>> ranked;
  const auto kept = policy.select(r, 100, &ranked);
  ASSERT_EQ(ranked.size(), static_cast<size_t>(kHkv));
  std::vector<float> mass;
  window_attention_mass(r, mass);
  for (int32_t g = 0; g < kHkv; ++g) {
    const auto& k = kept[static_cast<size_t>(g)];
    const auto& chosen = ranked[static_cast<size_t>(g)];
    ASSERT_EQ(chosen.size(), 100u - 4 - 16);  // sinks: slots 0..3 (positions 0..7)
    for (size_t i = 0; i < chosen.size(); ++i) {
      EXPECT_TRUE(std::binary_search(k.begin(), k.end(), chosen[i]));
      EXPECT_GE(chosen[i], 4);
      EXPECT_LT(chosen[i], 400 - 16);
      if (i > 0) EXPECT_GE(mass[g * 400 + chosen[i - 1]], mass[g * 400 + chosen[i]]) << "rank " << i;
    }
    for (int64_t hot : p.hot) EXPECT_TRUE(std::find(chosen.begin(), chosen.begin() + 3, hot) != chosen.begin() + 3);
  }
  // Everything kept: every row between sinks and window is still ranked.
  EXPECT_EQ(policy.select(r, 400, &ranked)[0].size(), 400u);
  EXPECT_EQ(ranked[0].size(), 400u - 4 - 16);

  // The preference, from keys and queries in float64, with queries turned
  // down so that attention spreads and varies across them (the fixture's
  // peaks hold all the mass, the same for every query: rounding alone).
  std::vector<float> soft(p.q);
  for (float& x : soft) x *= 0.05f;
  ScoreRequest spread = r;
  spread.q = soft.data();
  const int64_t n = 400, before = n - kWindow;
  double disp = 0, var = 0, kurt = 0;
  std::vector<float> key(kDim);
  for (int32_t h = 0; h < kHq; ++h) {
    std::vector<std::vector<double>> probs(kWindow, std::vector<double>(n, 0.0));
    for (int32_t i = 0; i < kWindow; ++i) {
      const int64_t visible = before + i / 2 + 1;  // keys at positions 2s, window row i at 2 before + i
      std::vector<double> logit(static_cast<size_t>(visible));
      double top = -INFINITY, sum = 0;
      for (int64_t s = 0; s < visible; ++s) {
        kernels::read_k_rows(r.kv, h / (kHq / kHkv), s, 1, kDim, key.data());
        double dot = 0;
        for (int e = 0; e < kDim; ++e) dot += static_cast<double>(soft[(i * kHq + h) * kDim + e]) * key[e];
        logit[s] = 0.125 * dot;
        top = std::max(top, logit[s]);
      }
      for (int64_t s = 0; s < visible; ++s) sum += std::exp(logit[s] - top);
      for (int64_t s = 0; s < visible; ++s) probs[i][s] = std::exp(logit[s] - top) / sum;
    }
    for (int64_t s = 0; s < before; ++s) {
      double mean = 0, m2 = 0, m4 = 0;
      for (int32_t i = 0; i < kWindow; ++i) {
        disp -= probs[i][s] * std::log(probs[i][s] + 1e-10);
        mean += probs[i][s] / kWindow;
      }
      for (int32_t i = 0; i < kWindow; ++i) {
        m2 += std::pow(probs[i][s] - mean, 2);
        m4 += std::pow(probs[i][s] - mean, 4);
      }
      var += m2 / (kWindow - 1);
      kurt += (m4 / kWindow) / std::pow(std::max(m2 / kWindow, 1e-8), 2);
    }
  }
  const double want = std::pow(disp, 1 / 7.7744) * std::pow(var, 1 / 5.4070) * std::pow(kurt, 1 / 5.5277);
  double preference = 0;
  KvPolicy("arkv").select(spread, 200, &ranked, &preference);
  EXPECT_NEAR(preference, want, 1e-4 * want);
  EXPECT_TRUE(KvPolicy("arkv").mixed_precision());
  EXPECT_FALSE(KvPolicy("snapkv").mixed_precision());

  // Shares: each layer's preference over the largest; unjudged layers keep every row original.
  EXPECT_EQ(KvPolicy::original_share({2.0, 4.0, NAN, 1.0}), (std::vector<double>{0.5, 1.0, 1.0, 0.25}));
}

TEST(KvPolicy, BadSpecsAreRefused) {
  EXPECT_THROW(KvPolicy("nosuch"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("snapkv:keep=0"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("snapkv:kernel=4"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("tova:budget=10"), std::invalid_argument);  // below sink + window
  EXPECT_THROW(KvPolicy("streaming:local=5"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("expected:future=0"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("expected:cov=2"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("pyramid:beta=0.5"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("zipvl:tau=0"), std::invalid_argument);
  EXPECT_THROW(KvPolicy("snapkv:merge=mean"), std::invalid_argument);
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
  p.seq.keep_rows({kept});
  ASSERT_EQ(p.seq.size(), 6);
  for (int32_t g = 0; g < kHkv; ++g) {
    const kernels::KvView view = p.seq.view(0);
    kernels::read_k_rows(view, g, 0, 6, kDim, after.data());
    for (int64_t i = 0; i < 6; ++i) {
      const int64_t from = kept[static_cast<size_t>(g)][static_cast<size_t>(i)];
      EXPECT_EQ(view.position(g, i), 2 * from);
      for (int e = 0; e < kDim; ++e) ASSERT_EQ(after[i * kDim + e], rows_before[g][from * kDim + e]);
    }
  }
  EXPECT_THROW(p.seq.keep_rows({{{3, 2}, {1, 2}}}), std::invalid_argument);
}

// Accumulated scores (H2O) move with their rows through compaction and
// erase, a fork keeps them, and rows appended later start from zero.
TEST(KvPolicy, RowScoresMoveWithTheirRows) {
  Problem p(300);
  const std::vector<std::vector<int64_t>> kept = {{0, 5, 64, 65, 200, 299}, {1, 2, 3, 150, 298, 299}};
  std::vector<std::vector<float>> before;
  for (int32_t g = 0; g < kHkv; ++g) before.emplace_back(p.seq.row_scores(0, g), p.seq.row_scores(0, g) + 300);
  const auto score_of = [&](int32_t g, size_t i) {
    return before[static_cast<size_t>(g)][static_cast<size_t>(kept[static_cast<size_t>(g)][i])];
  };
  p.seq.keep_rows({kept});
  const kv::KvSequence fork = p.seq.fork();
  p.seq.append(std::vector<int32_t>{1000, 1001});
  for (int32_t g = 0; g < kHkv; ++g) {
    for (size_t i = 0; i < 6; ++i) {
      EXPECT_EQ(p.seq.row_scores(0, g)[i], score_of(g, i));
      EXPECT_EQ(fork.row_scores(0, g)[i], score_of(g, i));
    }
    EXPECT_EQ(p.seq.row_scores(0, g)[6], 0.0f);
    EXPECT_EQ(p.seq.row_scores(0, g)[7], 0.0f);
  }
  p.seq.erase(1, 3);  // later rows move down with their scores
  for (int32_t g = 0; g < kHkv; ++g) {
    EXPECT_EQ(p.seq.row_scores(0, g)[0], score_of(g, 0));
    EXPECT_EQ(p.seq.row_scores(0, g)[1], score_of(g, 3));
  }
  p.seq.clear();  // an emptied sequence drops them
  EXPECT_FALSE(p.seq.has_row_scores());
}

}  // namespace
}  // namespace skim::kvpolicy
