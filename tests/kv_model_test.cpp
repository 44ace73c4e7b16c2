// KV formats and policies on the real default model: a policy that keeps
// everything, or an all-f16 layer override, changes nothing bit for bit; the
// prompt's own logits are computed before a policy evicts; afterwards a
// sequence holds its share of rows, positions go on where they were, and a
// decode budget caps the cache; q8_0 stays within the KL bar; KIVI
// decode agrees with a prefill of the same tokens and kivi4 stays near f16.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "kv/kv_sequence.h"
#include "model/attention_observer.h"
#include "skim/context.h"
#include "skim/model.h"
#include "skim/perplexity.h"
#include "test_support.h"

namespace skim {
namespace {

class KvModel : public ::testing::Test {
 protected:
  void SetUp() override { model_ = &test::shared_model("smollm2-135m"); }
  static std::vector<int32_t> text_tokens(size_t n) {
    const std::vector<int32_t> ids = model_->tokenizer().encode(test::long_english_text(), false, false);
    return {ids.begin(), ids.begin() + n};
  }
  // Logits of the prompt's last row, then of `steps` greedy-free decode steps
  // (the prompt's following tokens), as one vector.
  static std::vector<float> run(ContextParams p, const std::vector<int32_t>& prompt, const std::vector<int32_t>& next,
                                Context** out = nullptr) {
    p.n_ctx = 2048;
    p.n_threads = 2;
    static std::unique_ptr<Context> keep;
    keep = std::make_unique<Context>(*model_, p);
    std::vector<float> all = keep->decode(prompt);
    for (int32_t t : next) {
      const std::vector<float> l = keep->decode(std::span<const int32_t>(&t, 1));
      all.insert(all.end(), l.begin(), l.end());
    }
    if (out) *out = keep.get();
    return all;
  }
  static inline const Model* model_ = nullptr;
};

TEST_F(KvModel, KeepingEverythingChangesNothing) {
  const std::vector<int32_t> ids = text_tokens(308);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 300), next(ids.begin() + 300, ids.end());
  const std::vector<float> full = run({}, prompt, next);
  for (const std::string& policy : {"snapkv", "streaming:keep=1", "tova:budget=4096", "pyramid"})
    EXPECT_EQ(run({.kv_policy = policy}, prompt, next), full) << policy;
  // ARKV judges every prompt (its window's rows reach the last layer), so only the prompt's own row may differ.
  const int n_vocab = model_->config().n_vocab;
  Context* ctx = nullptr;
  const std::vector<float> arkv = run({.kv_policy = "arkv"}, prompt, next, &ctx);
  EXPECT_EQ(std::vector<float>(arkv.begin() + n_vocab, arkv.end()), std::vector<float>(full.begin() + n_vocab, full.end()));
  EXPECT_TRUE(ctx->kv_reusable());  // an f16 cache has no precision to split
  // Quantized types on no layer (every layer kept f16) are the f16 cache.
  std::vector<int> every(static_cast<size_t>(model_->config().n_layer));
  std::iota(every.begin(), every.end(), 0);
  EXPECT_EQ(run({.kv_type_k = "q4_0", .kv_type_v = "tq3", .kv_f16_layers = every}, prompt, next), full);
}

TEST_F(KvModel, EvictionAfterThePromptKeepsItsShareAndPositionsGoOn) {
  const std::vector<int32_t> ids = text_tokens(604);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 600), next(ids.begin() + 600, ids.end());
  const std::vector<float> full = run({}, prompt, next);
  const int n_vocab = model_->config().n_vocab;
  std::vector<ContextParams> cases;
  for (const std::string& policy :
       {"snapkv:keep=0.5", "streaming:keep=0.5", "tova:keep=0.5", "h2o:keep=0.5", "keydiff:keep=0.5", "dapq:keep=0.5",
        "expected:keep=0.5"})
    cases.push_back({.kv_policy = policy});
  // DapQ and Expected Attention over quantized keys: their queries are moved
  // in the Hadamard basis the keys are stored in.
  cases.push_back({.kv_type_k = "q8_0", .kv_type_v = "q8_0", .kv_policy = "dapq:keep=0.5"});
  cases.push_back({.kv_type_k = "q8_0", .kv_type_v = "q8_0", .kv_policy = "expected:keep=0.5"});
  // Evicted rows merged into kept ones (LOOK-M), over f16 and over quantized pages.
  cases.push_back({.kv_policy = "snapkv:keep=0.5,merge=average"});
  cases.push_back({.kv_type_k = "q8_0", .kv_type_v = "q8_0", .kv_policy = "tova:keep=0.5,merge=pivot"});
  for (const ContextParams& params : cases) {
    SCOPED_TRACE(params.kv_policy + " K " + params.kv_type_k);
    Context* ctx = nullptr;
    const std::vector<float> got = run(params, prompt, next, &ctx);
    // The prompt ran on the full cache: its last row's logits are the full
    // cache's, up to the rounding of a last layer run over the window's rows
    // too (the products' kernels depend on the row count, see BatchTest).
    EXPECT_LT(test::kl_divergence(full.data(), got.data(), n_vocab), 1e-3);
    EXPECT_EQ(ctx->n_cached(), 300 + 4);
    EXPECT_EQ(ctx->n_past(), 604);
    double kl = 0;
    for (size_t r = 1; r < full.size() / n_vocab; ++r)
      kl = std::max(kl, test::kl_divergence(full.data() + r * n_vocab, got.data() + r * n_vocab, n_vocab));
    EXPECT_TRUE(std::isfinite(kl));
    EXPECT_GT(kl, 0.0);  // later tokens do see the smaller cache
  }
}

// Per-layer budgets: each layer keeps its own count (PyramidKV: falling with
// depth; ZipVL: what its attention needs), the bytes held follow the average,
// the prompt's logits are the full cache's and decoding goes on.
TEST_F(KvModel, PerLayerBudgetsHoldTheirShareOfBytes) {
  const std::vector<int32_t> ids = text_tokens(604);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 600), next(ids.begin() + 600, ids.end());
  const std::vector<float> full = run({}, prompt, next);
  const int n_vocab = model_->config().n_vocab;
  for (const std::string& policy : {"pyramid:keep=0.5", "zipvl:tau=0.9"}) {
    SCOPED_TRACE(policy);
    Context* ctx = nullptr;
    const std::vector<float> got = run({.kv_policy = policy}, prompt, next, &ctx);
    EXPECT_LT(test::kl_divergence(full.data(), got.data(), n_vocab), 1e-3);
    EXPECT_TRUE(ctx->kv_evicted());
    EXPECT_EQ(ctx->n_past(), 604);
    const double share = static_cast<double>(ctx->kv_held_bytes()) / static_cast<double>(ctx->kv_full_f16_bytes());
    if (policy.starts_with("pyramid")) {
      // The first layer keeps about twice the mean, 2 x 276 + 36 of 600 rows: the
      // sequence's slots follow it, while the bytes follow the mean (page-rounded).
      EXPECT_GT(ctx->n_cached(), 500);
      EXPECT_GT(share, 0.45);
      EXPECT_LT(share, 0.62);
    } else {
      EXPECT_LT(share, 0.95);
    }
    for (size_t r = 1; r < full.size() / n_vocab; ++r)
      EXPECT_TRUE(std::isfinite(test::kl_divergence(full.data() + r * n_vocab, got.data() + r * n_vocab, n_vocab)));
  }

  // ZipVL keeping all of the mass keeps every row: the cache is the full one
  // (the prompt's own row differs only by the last layer's row count).
  Context* all = nullptr;
  const std::vector<float> kept = run({.kv_policy = "zipvl:tau=1"}, prompt, next, &all);
  EXPECT_FALSE(all->kv_evicted());
  EXPECT_EQ(std::vector<float>(kept.begin() + n_vocab, kept.end()), std::vector<float>(full.begin() + n_vocab, full.end()));

}

// ARKV over q4_0 pages: each layer keeps half of the prompt's rows; of them
// the sinks, the window and the layer's share of the rows chosen by score
// keep f16 originals (the layer that prefers them most: every one), the
// others only their q4_0 rows; decode rows stay original.
TEST_F(KvModel, ArkvKeepsEachLayersShareOfItsRowsOriginal) {
  const std::vector<int32_t> ids = text_tokens(604);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 600), next(ids.begin() + 600, ids.end());
  const int n_vocab = model_->config().n_vocab;
  const int64_t heads = model_->config().n_head_kv;
  const std::vector<float> evicted = run({.kv_policy = "arkv:keep=0.5"}, prompt, next);
  Context* ctx = nullptr;
  const std::vector<float> mixed = run({.kv_type_k = "q4_0", .kv_type_v = "q4_0", .kv_policy = "arkv:keep=0.5"}, prompt, next, &ctx);
  const std::vector<int64_t> copied = ctx->kv_f16_copied_rows(0);
  int64_t all_original = 0, fewer = 0;
  for (const int64_t rows : copied) {
    EXPECT_GE(rows, (4 + 32 + 4) * heads);  // sinks, window, decode rows
    EXPECT_LE(rows, (300 + 4) * heads);
    all_original += rows == (300 + 4) * heads;
    fewer += rows < (300 + 4) * heads;
  }
  EXPECT_GE(all_original, 1);
  EXPECT_GE(fewer, 1);
  std::printf("ARKV f16 rows per layer (of %lld kept per head):", static_cast<long long>(304));
  for (const int64_t rows : copied) std::printf(" %lld", static_cast<long long>(rows / heads));
  std::printf("\n");
  EXPECT_NE(mixed, evicted);
  EXPECT_FALSE(ctx->kv_reusable());  // a prefix would hold rows whose precision the whole prompt chose
  for (size_t r = 0; r < mixed.size() / n_vocab; ++r)
    EXPECT_LT(test::kl_divergence(evicted.data() + r * n_vocab, mixed.data() + r * n_vocab, n_vocab), 0.05) << "row " << r;
}

// Perplexity under a policy scores the window's second half on the cache the
// policy cut from its first half (decode_scored); keeping everything scores
// as the full cache does.
TEST_F(KvModel, PerplexityScoresOnTheCutCache) {
  const std::vector<int32_t> tokens = text_tokens(1024);
  const auto ppl = [&](const std::string& policy) {
    Context ctx(*model_, {.n_ctx = 1024, .n_threads = 2, .kv_policy = policy});
    return perplexity(ctx, tokens, -1).ppl;
  };
  const double full = ppl("");
  EXPECT_NEAR(ppl("snapkv"), full, 1e-9 * full);
  const double cut = ppl("snapkv:keep=0.25");
  EXPECT_GT(std::abs(cut - full), 1e-4 * full) << "cut " << cut << " full " << full;
}

// The server prefills a prompt in chunks (batches whose last row wants no
// logits until the prompt's end): the policy acts once, on the whole prompt.
TEST_F(KvModel, APromptInChunksIsCutOnceAtItsEnd) {
  const std::vector<int32_t> prompt = text_tokens(600);
  Context ctx(*model_, {.n_ctx = 2048, .n_threads = 2, .kv_policy = "snapkv:keep=0.5"});
  for (int begin = 0; begin < 600; begin += 200) {
    Batch chunk;
    for (int i = begin; i < begin + 200; ++i) chunk.add(prompt[static_cast<size_t>(i)], i, 0, i == 599);
    ctx.decode(chunk);
    EXPECT_EQ(ctx.n_cached(), begin + 200 < 600 ? begin + 200 : 300) << "after the chunk at " << begin;
  }
  EXPECT_EQ(ctx.n_past(), 600);
}

TEST_F(KvModel, ADecodeBudgetCapsTheCache) {
  const std::vector<int32_t> ids = text_tokens(300);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 100), next(ids.begin() + 100, ids.end());
  Context* ctx = nullptr;
  for (const std::string policy : {"streaming:budget=128", "h2o:budget=128", "h2o:mean=1,budget=128"}) {
    SCOPED_TRACE(policy);
    run({.kv_policy = policy}, prompt, next, &ctx);
    EXPECT_LE(ctx->n_cached(), 128 + 64);
    EXPECT_GE(ctx->n_cached(), 128);
    EXPECT_EQ(ctx->n_past(), 300);
  }
  // ARKV over q4_0: each cut while decoding also demotes the rows past each
  // layer's share, the shares its prompt gave (one query gives no preference).
  // After the last cut to 128 rows a layer holds f16 copies of at most its 4
  // sinks, 32 window rows and its share of the 92 chosen, plus the rows
  // decoded since; without the demotion it would hold nearly every row's.
  run({.kv_type_k = "q4_0", .kv_type_v = "q4_0", .kv_policy = "arkv:budget=128"}, prompt, next, &ctx);
  EXPECT_LE(ctx->n_cached(), 128 + 64);
  EXPECT_GE(ctx->n_cached(), 128);
  const std::vector<double>& shares = ContextInternals::sequence(*ctx, 0).original_shares();
  ASSERT_EQ(shares.size(), static_cast<size_t>(model_->config().n_layer));
  EXPECT_LT(*std::min_element(shares.begin(), shares.end()), 1.0);
  const std::vector<int64_t> copied = ctx->kv_f16_copied_rows(0);
  for (size_t l = 0; l < copied.size(); ++l)
    EXPECT_LE(copied[l], model_->config().n_head_kv * (4 + 32 + std::llround(shares[l] * 92) + (ctx->n_cached() - 128)))
        << "layer " << l << " share " << shares[l];
  EXPECT_THROW(Context(*model_, {.kv_policy = "nosuch"}), std::invalid_argument);
}

// H2O's scores are what every query paid each row, and each query row's
// softmax sums to 1: after a 300-token prompt in micro-batches of 128 and 4
// decode steps, every layer's scores sum, per KV head, to 304 rows x the
// group's query heads (the last layer computes every row too). Such a cache
// depends on its queries, not only its tokens: it is not reused or saved.
TEST_F(KvModel, H2oCountsEveryQueryOfEveryMicroBatch) {
  const std::vector<int32_t> ids = text_tokens(304);
  Context ctx(*model_, {.n_ctx = 2048, .n_ubatch = 128, .n_threads = 2, .kv_policy = "h2o"});
  ctx.decode(std::span<const int32_t>(ids.data(), 300));
  for (size_t i = 300; i < ids.size(); ++i) ctx.decode(std::span<const int32_t>(&ids[i], 1));
  const kv::KvSequence& seq = ContextInternals::sequence(ctx, 0);
  const ModelConfig& c = model_->config();
  ASSERT_EQ(seq.size(), 304);
  for (int32_t l = 0; l < c.n_layer; ++l)
    for (int32_t g = 0; g < c.n_head_kv; ++g) {
      double sum = 0.0;
      for (int64_t s = 0; s < seq.size(); ++s) {
        sum += seq.row_scores(l, g)[s];
        // Only the rows at or after it (its position is its slot) paid it anything.
        ASSERT_LE(seq.row_scores(l, g)[s], (304.0 - static_cast<double>(s)) * (c.n_head / c.n_head_kv) + 1e-3)
            << "layer " << l << " slot " << s;
      }
      EXPECT_NEAR(sum, 304.0 * (c.n_head / c.n_head_kv), 0.01) << "layer " << l << " head " << g;
    }
  EXPECT_FALSE(ctx.kv_reusable());
  const test::TempDir dir;
  EXPECT_THROW(ctx.save_sequence(0, ids, (dir / "h2o.kv").string()), std::runtime_error);
  ctx.clear();
  EXPECT_TRUE(ctx.kv_reusable());
}

// The bar for q8_0: mean KL against the f16 cache at most 0.002, over
// every position of a 512-token prompt (f32 GEMMs: the cache's effect alone).
TEST_F(KvModel, Q8_0StaysWithinTheKlBar) {
  const test::ScopedGemmPath f32(kernels::GemmPath::kF32);
  const std::vector<int32_t> prompt = text_tokens(512);
  const int n_vocab = model_->config().n_vocab;
  Context f16(*model_, {.n_ctx = 512, .n_threads = 2});
  Context q8(*model_, {.n_ctx = 512, .n_threads = 2, .kv_type_k = "q8_0", .kv_type_v = "q8_0"});
  const std::vector<float> a = f16.decode(prompt, true), b = q8.decode(prompt, true);
  double kl = 0;
  for (size_t r = 0; r < prompt.size(); ++r) kl += test::kl_divergence(a.data() + r * n_vocab, b.data() + r * n_vocab, n_vocab);
  EXPECT_LT(kl / static_cast<double>(prompt.size()), 0.002);
}

// KIVI (docs/kv-formats.md): over a prompt and 30 decode steps, whose rows
// wait in the f16 stage until their page (slots 256..319) seals mid-way,
// 4-bit KIVI's logits stay nearer the f16 cache's than q4_0's do (at 4K: mean
// KL 0.018 against 0.034), and are not the f16 cache's.
TEST_F(KvModel, KiviStaysNearerF16ThanQ4_0ThroughPromptAndDecode) {
  const test::ScopedGemmPath f32(kernels::GemmPath::kF32);
  const int n_vocab = model_->config().n_vocab;
  const std::vector<int32_t> ids = text_tokens(330);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 300), next(ids.begin() + 300, ids.end());
  const std::vector<float> reference = run({}, prompt, next);
  const auto mean_kl = [&](const std::vector<float>& logits) {
    double kl = 0;
    for (size_t r = 0; r < next.size() + 1; ++r)
      kl += test::kl_divergence(reference.data() + r * n_vocab, logits.data() + r * n_vocab, n_vocab);
    return kl / static_cast<double>(next.size() + 1);
  };
  const double kivi = mean_kl(run({.kv_type_k = "kivi4", .kv_type_v = "kivi4"}, prompt, next));
  const double q4 = mean_kl(run({.kv_type_k = "q4_0", .kv_type_v = "q4_0"}, prompt, next));
  std::printf("mean KL vs f16 over 31 rows: kivi4 %.5f, q4_0 %.5f\n", kivi, q4);
  EXPECT_GT(kivi, 0.0);
  EXPECT_LT(kivi, q4);
}

// --kv-f16-sinks: a quantized layer's first rows are read from f16 copies.
// With every row of the prompt and its 30 decode steps a sink (and the keys
// stored as they come: no Hadamard turn, no centring), a q4_0 cache reads
// exactly what the f16 cache holds, so every logit is the f16 cache's.
// (Turned or centred rows rounded to f16 differ from the f16 cache's by
// rounding alone; decode's 8-bit activations amplify that to a mean KL near
// 2e-3, the same noise floor as any other change in the last bits.)
TEST_F(KvModel, F16SinkRowsAreReadInF16) {
  const std::vector<int32_t> ids = text_tokens(330);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 300), next(ids.begin() + 300, ids.end());
  const std::vector<float> reference = run({}, prompt, next);
  ContextParams q4{.kv_type_k = "q4_0", .kv_type_v = "q4_0", .kv_rotation = false, .kv_center_keys = false};
  EXPECT_NE(run(q4, prompt, next), reference);
  q4.kv_f16_sinks = 400;
  EXPECT_EQ(run(q4, prompt, next), reference);
}

}  // namespace
}  // namespace skim
