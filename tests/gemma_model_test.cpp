// Gemma 3 on the real model: its layer layout from the GGUF, the window
// layers' attention against the plain reference, chunked prefill and decode
// against one batch, and the pages the window layers give back (what may and
// may not be resumed afterwards). Logits and perplexity against llama.cpp are
// in logits_vs_llama_test.cpp and perplexity_vs_llama_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <span>
#include <stdexcept>
#include <vector>

#include "kernels/matmul.h"
#include "kv/kv_pool.h"
#include "model/attention_observer.h"
#include "skim/context.h"
#include "skim/model.h"
#include "test_support.h"

namespace skim {
namespace {

constexpr const char* kGemma = "gemma3-270m";

class GemmaModel : public ::testing::Test {
 protected:
  void SetUp() override { model_ = &test::shared_model(kGemma); }
  static std::vector<int32_t> text_tokens(size_t n) {
    std::vector<int32_t> ids = model_->tokenizer().encode(test::long_english_text(), true, false);
    ids.resize(n);
    return ids;
  }
  // Mean KL(a || b) over rows, and how many rows share their top token.
  static std::pair<double, int> closeness(const float* a, const float* b, int rows) {
    const int n_vocab = model_->config().n_vocab;
    double kl = 0;
    int same = 0;
    for (int i = 0; i < rows; ++i) {
      const float* x = a + static_cast<size_t>(i) * n_vocab;
      const float* y = b + static_cast<size_t>(i) * n_vocab;
      kl += test::kl_divergence(x, y, n_vocab) / rows;
      same += test::argmax(x, n_vocab) == test::argmax(y, n_vocab);
    }
    return {kl, same};
  }
  static inline const Model* model_ = nullptr;
};

TEST_F(GemmaModel, LayersFollowTheFilesWindowPattern) {
  const std::unique_ptr<GgufFile> file = GgufFile::open(test::require_model(kGemma));
  const int window = static_cast<int>(file->get_int("gemma3.attention.sliding_window"));
  const double global_base = file->get_float("gemma3.rope.freq_base");
  ASSERT_FALSE(file->has("gemma3.attention.sliding_window_pattern"));  // the default: every sixth layer is global
  ASSERT_FALSE(file->has("gemma3.rope.freq_base_swa"));               // the default: 10000
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.rope_style, RopeStyle::HalfSplit);
  EXPECT_FLOAT_EQ(c.embedding_scale, std::sqrt(static_cast<float>(c.n_embd)));
  EXPECT_EQ(c.logit_softcap, 0.f);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerSpec& spec = model_->layer_spec(l);
    const bool global = l % 6 == 5;
    EXPECT_EQ(spec.attention, global ? AttentionKind::Full : AttentionKind::SlidingWindow) << "layer " << l;
    EXPECT_EQ(spec.window, global ? 0 : window) << "layer " << l;
    const double base = global ? global_base : 10000.0;
    for (int i = 0; i < c.head_dim / 2; ++i)
      EXPECT_FLOAT_EQ(spec.rope_inv_freq[i], static_cast<float>(std::pow(base, -2.0 * i / c.head_dim))) << l << " " << i;
    const LayerWeights& w = model_->layer(l);
    EXPECT_TRUE(w.q_norm && w.k_norm && w.attn_post_norm && w.ffn_post_norm) << "layer " << l;
  }
}

// 1200 tokens in 128-row micro-batches: the window layers' keys slide past
// their 512-token window and their pages are given back between micro-batches.
TEST_F(GemmaModel, AttentionCoreMatchesReferenceWindowedAttention) {
  const test::ScopedGemmPath f32(kernels::GemmPath::kF32);
  const std::vector<int32_t> ids = text_tokens(1200);
  Context kernel(*model_, {1280, 128});
  Context reference(*model_, {1280, 128});
  ContextInternals::set_observer(reference, {.reference_attention = true});
  const std::vector<float> a = kernel.decode(ids, true), b = reference.decode(ids, true);
  const auto [kl, same] = closeness(b.data(), a.data(), static_cast<int>(ids.size()));
  std::printf("gemma3 attention core vs reference: mean KL %.3g, top-1 %d/%zu\n", kl, same, ids.size());
  EXPECT_LT(kl, 1e-4);
  EXPECT_GE(same, static_cast<int>(ids.size()) - 4);
}

TEST_F(GemmaModel, ChunkedPrefillGivesBackWindowPagesAndMatchesOneBatch) {
  const int n = 2000;
  const std::vector<int32_t> ids = text_tokens(n);
  Context whole(*model_, {2048, 2048});
  const std::vector<float> expected = whole.decode(ids, true);
  Context chunked(*model_, {2048, 64});
  const std::vector<float> got = chunked.decode(ids, true);
  // Bit for bit (batch invariance, docs/server.md): the window's key tiles
  // do not depend on where the query tiles fall.
  EXPECT_EQ(expected, got);

  // Full layers hold every page; a window layer the pages its window reaches
  // plus one page of slack (min_kept_rows).
  const ModelConfig& c = model_->config();
  const int64_t pages = (n + kv::kPageRows - 1) / kv::kPageRows;
  int64_t most = 0, all = 0;
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerSpec& spec = model_->layer_spec(l);
    const int64_t window_pages = (spec.window + 2 * kv::kPageRows - 1) / kv::kPageRows + 1;
    most += (spec.attention == AttentionKind::Full ? pages : window_pages) * c.n_head_kv;
    all += pages * c.n_head_kv;
  }
  for (const Context* ctx : {&whole, &chunked}) {
    EXPECT_LE(ctx->kv_pages_held(), most);
    EXPECT_LT(ctx->kv_pages_held(), all / 2);
  }
}

TEST_F(GemmaModel, DecodeAfterPagesWereGivenBackMatchesPrefill) {
  const std::vector<int32_t> ids = text_tokens(1100);
  Context whole(*model_, {1280, 512});
  const std::vector<float> expected = whole.decode(ids, true);
  Context stepwise(*model_, {1280, 512});
  stepwise.decode(std::span(ids).first(1080));
  std::vector<float> stepped;
  for (size_t i = 1080; i < ids.size(); ++i) {
    const std::vector<float> l = stepwise.decode(std::span(ids).subspan(i, 1));
    stepped.insert(stepped.end(), l.begin(), l.end());
  }
  // Decode rounds activations to 8 bits in its matrix-vector products (prefill does not).
  const auto [kl, same] = closeness(expected.data() + 1080 * static_cast<size_t>(model_->config().n_vocab), stepped.data(), 20);
  std::printf("gemma3 decode vs prefill after the window: mean KL %.3g, top-1 %d/20\n", kl, same);
  EXPECT_LT(kl, 2e-2);
  EXPECT_GE(same, 17);
}

TEST_F(GemmaModel, OnlyPrefixesTheWindowStillHoldsCanBeResumed) {
  const std::vector<int32_t> ids = text_tokens(1300);
  Context ctx(*model_, {2048, 512});
  ctx.decode(std::span(ids).first(1200));
  const int min_rows = ctx.min_kept_rows(0);
  EXPECT_GT(min_rows, 600);
  EXPECT_LT(min_rows, 1200);
  EXPECT_THROW(ctx.truncate_sequence(0, 100), std::invalid_argument);
  EXPECT_THROW(ctx.truncate_sequence(0, min_rows - 1), std::invalid_argument);
  EXPECT_EQ(ctx.n_cached(0), 1200);  // a refused cut changes nothing
  // A resumable prefix continues as a fresh run of the same tokens does.
  ctx.truncate_sequence(0, min_rows);
  const std::vector<float> resumed = ctx.decode(std::span(ids).subspan(static_cast<size_t>(min_rows), 64), true);
  Context fresh(*model_, {2048, 512});
  fresh.decode(std::span(ids).first(static_cast<size_t>(min_rows)));
  const std::vector<float> cold = fresh.decode(std::span(ids).subspan(static_cast<size_t>(min_rows), 64), true);
  // Bit for bit: where a prompt was cut does not change its rows (docs/server.md).
  EXPECT_EQ(resumed, cold);
  ctx.clear_sequence(0);
  EXPECT_EQ(ctx.min_kept_rows(0), 1);
}

// A KV policy cuts the global layers; the window layers keep what their
// window holds (they give back the pages before it as without a policy).
// Decoding goes on at the right positions, with fewer bytes held.
TEST_F(GemmaModel, KvPoliciesCutTheGlobalLayers) {
  const std::vector<int32_t> ids = model_->tokenizer().encode(test::long_english_text(), false, false);
  ASSERT_GE(ids.size(), 1004u);
  ContextParams p{2048, 512};
  Context full(*model_, p);
  p.kv_policy = "snapkv:keep=0.5";
  Context cut(*model_, p);
  const std::vector<float> a = full.decode(std::span(ids).first(1000)), b = cut.decode(std::span(ids).first(1000));
  EXPECT_LT(test::kl_divergence(a.data(), b.data(), model_->config().n_vocab), 1e-3);  // the prompt ran on the full cache
  for (size_t i = 1000; i < 1004; ++i) {
    full.decode(std::span(ids).subspan(i, 1));
    for (float x : cut.decode(std::span(ids).subspan(i, 1))) ASSERT_TRUE(std::isfinite(x));
  }
  EXPECT_EQ(cut.n_past(), 1004);
  EXPECT_TRUE(cut.kv_evicted());
  // One layer in six is global and gives back about half its pages; the window layers keep theirs.
  EXPECT_LT(cut.kv_held_bytes(), full.kv_held_bytes() * 0.95);
  EXPECT_GT(cut.kv_held_bytes(), full.kv_held_bytes() * 0.8);
}

}  // namespace
}  // namespace skim
