// Model-level checks on the real default model: the attention core against
// the plain reference attention, chunked prefill against one batch, decode
// against prefill, errors for bad requests, the layer specs of loaded models.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <fstream>
#include <memory>
#include <utility>

#include "skim/context.h"
#include "skim/generate.h"
#include "skim/model.h"
#include "model/attention_observer.h"
#include "test_support.h"

namespace skim {
namespace {

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = &test::shared_model("smollm2-135m"); }
  static std::vector<int32_t> text_tokens(size_t n) {
    std::vector<int32_t> ids = model_->tokenizer().encode(test::long_english_text(), false, false);
    ids.resize(n);
    return ids;
  }
  static inline const Model* model_ = nullptr;
};

struct Closeness {
  double mean_kl = 0, max_kl = 0;
  int same_top1 = 0, rows = 0;
};

// KL(a || b) and top-1 agreement over rows of logits.
Closeness compare(const float* a, const float* b, int rows, int n_vocab) {
  Closeness c;
  for (int i = 0; i < rows; ++i) {
    const float* x = a + static_cast<size_t>(i) * n_vocab;
    const float* y = b + static_cast<size_t>(i) * n_vocab;
    const double kl = test::kl_divergence(x, y, n_vocab);
    c.mean_kl += kl / rows;
    c.max_kl = std::max(c.max_kl, kl);
    c.same_top1 += test::argmax(x, n_vocab) == test::argmax(y, n_vocab);
  }
  c.rows = rows;
  return c;
}

TEST_F(ModelTest, AttentionCoreMatchesReferenceAttention) {
  const test::ScopedGemmPath f32(kernels::GemmPath::kF32);
  const std::vector<int32_t> ids = text_tokens(400);
  Context kernel(*model_, {512, 128});
  Context reference(*model_, {512, 128});
  ContextInternals::set_observer(reference, {.reference_attention = true});
  const std::vector<float> a = kernel.decode(ids, true), b = reference.decode(ids, true);
  // Both compute in fp32 from the same f16 cache: only summation order differs.
  const Closeness c = compare(b.data(), a.data(), static_cast<int>(ids.size()), model_->config().n_vocab);
  std::printf("attention core vs reference: mean KL %.3g, max KL %.3g, top-1 %d/%d\n", c.mean_kl, c.max_kl, c.same_top1, c.rows);
  EXPECT_LT(c.mean_kl, 1e-5);
  EXPECT_LT(c.max_kl, 1e-3);
  EXPECT_GE(c.same_top1, c.rows - 2);
}

TEST_F(ModelTest, ChunkedPrefillAndDecodeMatchOneBatch) {
  const std::vector<int32_t> ids = text_tokens(300);
  const int n_vocab = model_->config().n_vocab;
  Context whole(*model_, {512, 512});
  const std::vector<float> expected = whole.decode(ids, true);

  Context chunked(*model_, {512, 64});  // 64-token micro-batches
  const Closeness c = compare(expected.data(), chunked.decode(ids, true).data(), static_cast<int>(ids.size()), n_vocab);
  EXPECT_LT(c.mean_kl, 1e-5);
  EXPECT_GE(c.same_top1, c.rows - 2);

  // Prefill 280 tokens, then decode the last 20 one at a time. The decode
  // GEMV quantizes activations to 8 bits (as llama.cpp does); prefill GEMMs
  // do not, so the two agree to within that rounding.
  Context stepwise(*model_, {512, 512});
  stepwise.decode(std::span(ids).first(280));
  std::vector<float> stepped;
  for (size_t i = 280; i < ids.size(); ++i) {
    const std::vector<float> l = stepwise.decode(std::span(ids).subspan(i, 1));
    stepped.insert(stepped.end(), l.begin(), l.end());
  }
  const Closeness d = compare(expected.data() + 280 * static_cast<size_t>(n_vocab), stepped.data(), 20, n_vocab);
  std::printf("decode vs prefill: mean KL %.3g, max KL %.3g, top-1 %d/%d\n", d.mean_kl, d.max_kl, d.same_top1, d.rows);
  EXPECT_LT(d.mean_kl, 5e-3);
  EXPECT_GE(d.same_top1, 18);
  EXPECT_EQ(stepwise.n_past(), 300);
}

// Rows that want no logits skip the last layer past its K/V. The logits of the
// others, and the cache the skipped rows leave, match computing every row.
TEST_F(ModelTest, LastLayerComputesOnlyRowsWithLogits) {
  const std::vector<int32_t> ids = text_tokens(300);
  const int n_vocab = model_->config().n_vocab;
  Context whole(*model_, {512, 512});
  const std::vector<float> expected = whole.decode(ids, true);

  // Logits from row 150 in 64-row micro-batches: the chunk holding row 150 is
  // cut inside, the two before it want no logits at all.
  Context partial(*model_, {512, 64});
  std::vector<float> tail;
  partial.decode_streaming(ids, 150, [&](int64_t, int64_t rows, const float* l) {
    tail.insert(tail.end(), l, l + rows * n_vocab);
  });
  const Closeness c = compare(expected.data() + 150 * static_cast<size_t>(n_vocab), tail.data(), 150, n_vocab);
  EXPECT_LT(c.mean_kl, 1e-5);
  EXPECT_GE(c.same_top1, c.rows - 2);

  // Only the last row: its last layer runs as one-row decode (8-bit activations,
  // see ChunkedPrefillAndDecodeMatchOneBatch). Then one decode step reads the
  // last layer's K/V of every row.
  Context last(*model_, {512, 512});
  const std::vector<float> last_logits = last.decode(std::span(ids).first(299));
  const Closeness d = compare(expected.data() + 298 * static_cast<size_t>(n_vocab), last_logits.data(), 1, n_vocab);
  EXPECT_LT(d.mean_kl, 5e-3);
  EXPECT_EQ(d.same_top1, 1);
  const std::vector<float> next = last.decode(std::span(ids).subspan(299, 1));
  const Closeness e = compare(expected.data() + 299 * static_cast<size_t>(n_vocab), next.data(), 1, n_vocab);
  std::printf("last row only: KL %.3g, then one decode step: KL %.3g\n", d.mean_kl, e.mean_kl);
  EXPECT_LT(e.mean_kl, 5e-3);
  EXPECT_EQ(e.same_top1, 1);
}

// Every sparse method at a budget covering all keys, in chunked prefill over
// all earlier keys, gives the dense model's logits bit for bit; at a real
// budget it changes them, and reports a density below 1.
TEST_F(ModelTest, SparseMethodsAtFullBudgetAreDenseInChunkedPrefill) {
  const std::vector<int32_t> ids = text_tokens(300);
  auto run = [&](const std::string& spec, AttentionReport* report = nullptr) {
    ContextParams p;
    p.n_ctx = 512;
    p.n_ubatch = 96;
    p.attention = spec;
    Context ctx(*model_, p);
    std::vector<float> logits = ctx.decode(ids, true);
    if (report) *report = ctx.attention_report();
    return logits;
  };
  const std::vector<float> dense = run("dense");
  // Each method's parameters for a budget covering every key. A method
  // missing here fails the test: every planner must be covered.
  const std::map<std::string, std::string> full_budget = {
      {"streaming", "sink=0,local=100000"},
      {"trishape", "sink=0,local=100000"},
      {"power", "local=100000"},
      {"blasst", "lambda=0"},
      {"minference", "v=1000000,s=1000000"},
      {"block_sparse", "topk=1000000"},
      {"flexprefill", "gamma=1,tau=0,min_budget=0"},
      {"xattention", "tau=1"},
      {"sale", "theta=0"},
      {"s2o", "target=1"},  // its own ordered plan visits keys in another order
      {"hip", "k=1000000"},
      {"dhsa", "budget=1"},
      {"longheads", "k=1000000"},
      {"token_sparse", "coverage=0,min_tokens=0"},
      {"tca", "target=1"},
      {"squeezed", "target=1"},
  };
  for (const AttentionMethodInfo& m : attention_methods()) {
    if (m.name == "dense") continue;
    ASSERT_TRUE(full_budget.count(m.name)) << "no full-budget spec for method " << m.name;
    // max_density=1, min_len=0: the full plan itself runs, not the policy's dense fallback.
    const std::string spec = m.name + ":last_q=0,max_density=1,min_len=0," + full_budget.at(m.name);
    AttentionReport report;
    const std::vector<float> full = run(spec, &report);
    EXPECT_EQ(std::memcmp(full.data(), dense.data(), dense.size() * sizeof(float)), 0) << spec;
    // 300 tokens = 4 chunks of <= 96 tokens, every one over all earlier keys.
    EXPECT_EQ(report.sparse_calls + report.dense_calls, 4 * model_->config().n_layer) << spec;
    // Every planner planned (blasst has none: it is the dense plan with lambda).
    if (m.name == "blasst")
      EXPECT_EQ(report.sparse_calls, 0) << spec;
    else
      EXPECT_GT(report.sparse_calls, 0) << spec;
    EXPECT_DOUBLE_EQ(report.density(), 1.0) << spec;
  }
  AttentionReport report;
  const std::vector<float> narrow = run("streaming:sink=16,local=64", &report);
  EXPECT_NE(std::memcmp(narrow.data(), dense.data(), dense.size() * sizeof(float)), 0);
  EXPECT_LT(report.density(), 0.6);
}

// Dual Chunk Attention in the model (docs/length-extension.md): a chunk
// longer than the prompt changes nothing; chunks of 224 positions (256 - 32)
// give the same rows however the prompt is cut into micro-batches, decode
// steps continue them, and a sparse method's plans run through it.
TEST_F(ModelTest, DualChunkAttentionInTheModel) {
  const std::vector<int32_t> ids = text_tokens(700);
  auto run = [&](int chunk, int ubatch, const std::string& attn = "dense", AttentionReport* report = nullptr) {
    ContextParams p;
    p.n_ctx = 1024;
    p.n_ubatch = ubatch;
    p.attention = attn;
    p.dca_chunk = chunk;
    p.dca_local = 32;
    Context ctx(*model_, p);
    std::vector<float> logits = ctx.decode(ids, true);
    if (report) *report = ctx.attention_report();
    return logits;
  };
  const size_t n_vocab = static_cast<size_t>(model_->config().n_vocab);
  const std::vector<float> plain = run(0, 512);
  EXPECT_EQ(run(4096, 512), plain);
  const std::vector<float> dca = run(256, 512);
  EXPECT_NE(dca, plain);
  EXPECT_EQ(run(256, 64), dca);
  // Within the first chunk (224 positions) DCA is plain attention.
  EXPECT_EQ(std::memcmp(dca.data(), plain.data(), 200 * n_vocab * sizeof(float)), 0);
  // The model still predicts its text: close to plain RoPE, which is trained this far.
  const Closeness c = compare(plain.data(), dca.data(), 700, static_cast<int>(n_vocab));
  std::printf("DCA chunk 256 vs plain at 700 tokens: mean KL %.3g, top-1 %d/%d\n", c.mean_kl, c.same_top1, c.rows);
  EXPECT_LT(c.mean_kl, 0.1);

  // Decode steps past two chunk boundaries continue the prefill.
  ContextParams p;
  p.n_ctx = 1024;
  p.dca_chunk = 256;
  p.dca_local = 32;
  Context stepwise(*model_, p);
  stepwise.decode(std::span(ids).first(440));
  std::vector<float> stepped;
  for (size_t i = 440; i < 460; ++i) {
    const std::vector<float> l = stepwise.decode(std::span(ids).subspan(i, 1));
    stepped.insert(stepped.end(), l.begin(), l.end());
  }
  const Closeness d = compare(dca.data() + 440 * n_vocab, stepped.data(), 20, static_cast<int>(n_vocab));
  EXPECT_LT(d.mean_kl, 5e-3);
  EXPECT_GE(d.same_top1, 18);

  // A sparse method composes: its plans run over the three regions.
  AttentionReport report;
  const std::vector<float> sparse = run(256, 128, "streaming:sink=16,local=128,min_len=0", &report);
  EXPECT_GT(report.sparse_calls, 0);
  EXPECT_LT(report.density(), 0.8);
  EXPECT_NE(sparse, dca);
  EXPECT_THROW(Context(*model_, ContextParams{.n_ctx = 1024, .kv_policy = "snapkv:keep=0.5", .dca_chunk = 256}),
               std::invalid_argument);
  EXPECT_THROW(Context(*model_, ContextParams{.n_ctx = 1024, .dca_chunk = 1 << 20}), std::invalid_argument);
}

TEST_F(ModelTest, GreedyAnswerIsParis) {
  Context ctx(*model_, {256, 512});
  SamplingParams sp;
  sp.temp = 0;
  Sampler sampler(sp);
  GenerationOptions opts;
  opts.n_predict = 4;
  const GenerationResult r = generate(ctx, model_->tokenizer().encode("The capital of France is", true, false), sampler, opts);
  EXPECT_EQ(r.text.substr(0, 6), " Paris") << r.text;
}

TEST_F(ModelTest, RejectsWhatDoesNotFit) {
  Context ctx(*model_, {32, 16});
  const std::vector<int32_t> ids = text_tokens(40);
  EXPECT_THROW(ctx.decode(ids), std::length_error);
  const std::vector<int32_t> bad = {1, 2, model_->config().n_vocab};
  EXPECT_THROW(ctx.decode(bad), std::out_of_range);
  EXPECT_THROW(ctx.decode(std::span<const int32_t>()), std::invalid_argument);
}

// Every layer of the llama-family models runs full attention at the model's
// RoPE base, read here straight from the GGUF metadata.
TEST(ModelLoad, LlamaFamilyLayersAreFullAttentionAtTheFilesRopeBase) {
  for (const auto& [name, key] : {std::pair{"smollm2-135m", "llama.rope.freq_base"},
                                  std::pair{"qwen2.5-coder-0.5b", "qwen2.rope.freq_base"}}) {
    SCOPED_TRACE(name);
    const std::unique_ptr<GgufFile> file = GgufFile::open(test::require_model(name));
    const double base = file->get_float(key);
    ASSERT_EQ(file->tensor("rope_freqs.weight"), nullptr);  // no per-pair factors: theta_i = base^(-2i/d)
    const Model& model = test::shared_model(name);
    const int hd = model.config().head_dim;
    for (int l = 0; l < model.config().n_layer; ++l) {
      const LayerSpec& spec = model.layer_spec(l);
      EXPECT_EQ(spec.attention, AttentionKind::Full) << "layer " << l;
      EXPECT_EQ(spec.rope_base, static_cast<float>(base)) << "layer " << l;
      ASSERT_EQ(spec.rope_inv_freq.size(), static_cast<size_t>(hd / 2));
      for (int i = 0; i < hd / 2; ++i)
        EXPECT_FLOAT_EQ(spec.rope_inv_freq[i], static_cast<float>(std::pow(base, -2.0 * i / hd))) << "layer " << l << " pair " << i;
    }
  }
}

TEST(ModelLoad, MissingFileAndWrongFileAreClearErrors) {
  EXPECT_THROW(Model::load("/nonexistent/model.gguf"), GgufError);
  const test::TempDir dir;
  const std::string not_gguf = (dir / "not_a_model.gguf").string();
  std::ofstream(not_gguf) << "this is not a gguf file at all";
  try {
    Model::load(not_gguf);
    FAIL() << "expected GgufError";
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("bad magic"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace skim
