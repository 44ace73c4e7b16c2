// Batches of several sequences on the real default model: each sequence gets
// the logits it gets alone (prefill of different lengths in one batch, split
// across micro-batches or not, then batched decode steps); a sequence copied
// from another shares its pages and still matches running alone; malformed
// batches are refused with one clear error.
#include <gtest/gtest.h>

#include <cstring>
#include <omp.h>

#include <string>
#include <vector>

#include "skim/context.h"
#include "skim/generate.h"
#include "model/attention_observer.h"
#include "skim/model.h"
#include "test_support.h"

namespace skim {
namespace {

class BatchTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = &test::shared_model("smollm2-135m"); }
  // n tokens of English text starting at token `offset`.
  static std::vector<int32_t> text_tokens(size_t offset, size_t n) {
    const std::vector<int32_t> ids = model_->tokenizer().encode(test::long_english_text(), false, false);
    return {ids.begin() + offset, ids.begin() + offset + n};
  }
  static double max_kl(const std::vector<float>& a, const std::vector<float>& b) {
    const int n_vocab = model_->config().n_vocab;
    EXPECT_EQ(a.size(), b.size());
    double worst = 0;
    for (size_t r = 0; r < a.size() / n_vocab; ++r)
      worst = std::max(worst, test::kl_divergence(a.data() + r * n_vocab, b.data() + r * n_vocab, n_vocab));
    return worst;
  }
  static inline const Model* model_ = nullptr;
};

// A sequence's rows take the 8-bit GEMV when it brings at most 4 to a
// micro-batch (decode), the f32 GEMM otherwise, alone as in a batch: every
// piece of a prompt below has more than 4 rows. Alone, a prompt is fed in the
// pieces the batch's micro-batches cut it into: where a chunk boundary falls
// changes the kernels' rounding (query tiles of other sizes), and the last
// row's 8-bit products can amplify that to KL ~1e-3, with or without batching.
TEST_F(BatchTest, EverySequenceGetsTheLogitsItGetsAlone) {
  const int n_vocab = model_->config().n_vocab;
  const std::vector<size_t> lengths = {9, 150, 40, 77};
  std::vector<std::vector<int32_t>> prompts;
  for (size_t s = 0; s < lengths.size(); ++s) prompts.push_back(text_tokens(100 * s, lengths[s]));
  const std::vector<int32_t> next = text_tokens(900, 3 * lengths.size());

  for (int ubatch : {512, 64}) {  // 64: sequences cross micro-batch boundaries
    SCOPED_TRACE("n_ubatch " + std::to_string(ubatch));
    // Alone: each prompt in its own context, in the batch's pieces, then three decode steps.
    std::vector<std::vector<float>> alone(lengths.size());
    size_t row = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      Context ctx(*model_, {512, 512});
      for (size_t done = 0; done < lengths[s];) {
        const size_t piece = std::min(lengths[s] - done, ubatch - (row + done) % ubatch);
        alone[s] = ctx.decode(std::span(prompts[s]).subspan(done, piece));
        done += piece;
      }
      row += lengths[s];
      for (int step = 0; step < 3; ++step) {
        const std::vector<float> l = ctx.decode(std::span(next).subspan(step * lengths.size() + s, 1));
        alone[s].insert(alone[s].end(), l.begin(), l.end());
      }
    }

    Context ctx(*model_, {.n_ctx = 512, .n_ubatch = ubatch, .n_seq_max = 4});
    Batch prefill;
    for (size_t s = 0; s < lengths.size(); ++s)
      for (size_t i = 0; i < lengths[s]; ++i)
        prefill.add(prompts[s][i], static_cast<int32_t>(i), static_cast<int32_t>(s), i + 1 == lengths[s]);
    std::vector<std::vector<float>> batched(lengths.size());
    const std::vector<float> first = ctx.decode(prefill);
    ASSERT_EQ(first.size(), lengths.size() * n_vocab);
    for (size_t s = 0; s < lengths.size(); ++s) batched[s].assign(first.begin() + s * n_vocab, first.begin() + (s + 1) * n_vocab);
    for (int step = 0; step < 3; ++step) {
      Batch b;
      for (size_t s = 0; s < lengths.size(); ++s)
        b.add(next[step * lengths.size() + s], static_cast<int32_t>(lengths[s]) + step, static_cast<int32_t>(s), true);
      const std::vector<float> l = ctx.decode(b);
      for (size_t s = 0; s < lengths.size(); ++s)
        batched[s].insert(batched[s].end(), l.begin() + s * n_vocab, l.begin() + (s + 1) * n_vocab);
    }
    for (size_t s = 0; s < lengths.size(); ++s) {
      EXPECT_EQ(ctx.n_past(static_cast<int>(s)), static_cast<int>(lengths[s]) + 3);
      const double kl = max_kl(alone[s], batched[s]);
      std::printf("sequence %zu (%zu tokens + 3 steps), n_ubatch %d: max KL vs alone %.3g\n", s, lengths[s], ubatch, kl);
      EXPECT_LT(kl, 1e-4) << "sequence " << s;
    }
  }
}

TEST_F(BatchTest, ACopiedSequenceSharesItsPrefixAndMatchesRunningAlone) {
  const std::vector<int32_t> prefix = text_tokens(0, 100), a_tail = text_tokens(300, 20), b_tail = text_tokens(500, 30);
  auto alone = [&](const std::vector<int32_t>& tail) {
    Context ctx(*model_, {512, 512});
    ctx.decode(prefix);
    return ctx.decode(tail);
  };
  Context ctx(*model_, {.n_ctx = 512, .n_ubatch = 512, .n_seq_max = 2});
  ctx.decode(prefix);
  const size_t held = ctx.kv_held_bytes();
  ctx.copy_sequence(0, 1);
  EXPECT_EQ(ctx.kv_held_bytes(), held);  // shared, not copied
  Batch b;
  for (size_t i = 0; i < a_tail.size(); ++i) b.add(a_tail[i], static_cast<int32_t>(100 + i), 0, i + 1 == a_tail.size());
  for (size_t i = 0; i < b_tail.size(); ++i) b.add(b_tail[i], static_cast<int32_t>(100 + i), 1, i + 1 == b_tail.size());
  const std::vector<float> both = ctx.decode(b);
  const int n_vocab = model_->config().n_vocab;
  EXPECT_LT(max_kl(alone(a_tail), {both.begin(), both.begin() + n_vocab}), 1e-4);
  EXPECT_LT(max_kl(alone(b_tail), {both.begin() + n_vocab, both.end()}), 1e-4);
}

TEST_F(BatchTest, MalformedBatchesAreRefused) {
  Context ctx(*model_, {.n_ctx = 64, .n_ubatch = 64, .n_seq_max = 2});
  auto refuses = [&](const Batch& b, const std::string& what) {
    try {
      ctx.decode(b);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  Batch b;
  b.add(1, 0, 0, false);
  b.add(2, 0, 1, false);
  b.add(3, 1, 0, true);
  refuses(b, "not consecutive");
  b.clear();
  b.add(1, 0, 2, true);
  refuses(b, "sequence id 2");
  b.clear();
  b.add(1, 0, 0, false);
  b.add(2, 2, 0, true);
  refuses(b, "position 2 after position 0");
  b.clear();
  for (int i = 0; i < 65; ++i) b.add(1, i, 1, i == 64);
  refuses(b, "exceed the context of 64");
  EXPECT_EQ(ctx.n_past(0), 0);  // nothing of a refused batch was kept
  EXPECT_EQ(ctx.n_past(1), 0);
}

// Continuations of one prompt generated together (shared prefill, one batch
// per step) are the continuations generated alone with the same samplers.
TEST_F(BatchTest, ParallelContinuationsMatchGeneratingAlone) {
  const std::vector<int32_t> prompt = model_->tokenizer().encode("Once upon a time, in a small village,", true, false);
  GenerationOptions opts;
  opts.n_predict = 24;
  opts.ignore_eog = true;
  auto sampling = [](uint64_t seed) {
    SamplingParams p;
    p.seed = seed;
    return p;
  };
  // 6 sequences: more rows than one integer-dot group (4), the batched GEMV.
  std::vector<Sampler> samplers;
  for (uint64_t seed = 11; seed < 17; ++seed) samplers.emplace_back(sampling(seed));
  Context ctx(*model_, {.n_ctx = 128, .n_ubatch = 128, .n_seq_max = 6});
  const std::vector<GenerationResult> together = generate_parallel(ctx, prompt, samplers, opts);
  ASSERT_EQ(together.size(), 6u);
  for (size_t i = 0; i < together.size(); ++i) {
    Context alone(*model_, {128, 128});
    Sampler sampler(sampling(11 + i));
    const GenerationResult r = generate(alone, prompt, sampler, opts);
    EXPECT_EQ(together[i].tokens, r.tokens) << "sequence " << i;
    EXPECT_EQ(together[i].text, r.text) << "sequence " << i;
  }
  EXPECT_NE(together[0].tokens, together[1].tokens);  // different seeds, different continuations
}

// A context's thread count holds inside its calls and nowhere else: the
// caller's OpenMP setting is what it was, before and after.
TEST_F(BatchTest, ThreadCountIsTheContextsOwn) {
  const int outside = omp_get_max_threads();
  Context ctx(*model_, {.n_ctx = 256, .n_ubatch = 256, .n_threads = outside + 1});
  int inside = 0;
  ContextInternals::set_observer(ctx, {.on_prefill_attention = [&](const attention::PlanRequest&) { inside = omp_get_max_threads(); }});
  ctx.decode(text_tokens(0, 32));
  EXPECT_EQ(inside, outside + 1);
  EXPECT_EQ(omp_get_max_threads(), outside);
}

}  // namespace
}  // namespace skim

namespace skim {
namespace {

// Batch invariance (docs/server.md): a prompt cut anywhere into GEMM-sized
// chunks, by calls or by -ub, gives bit-identical logits, and so do decode
// rows batched with other sequences. What the server's greedy answers rest on.
TEST_F(BatchTest, LogitsDoNotDependOnWhereAPromptIsCutOrWhatElseRuns) {
  const std::vector<int32_t> prompt = text_tokens(0, 1500);
  const std::span<const int32_t> all(prompt);
  auto last_logits = [&](int split, int ubatch) {
    Context ctx(*model_, {.n_ctx = 2048, .n_ubatch = ubatch});
    if (split > 0) ctx.decode(all.first(static_cast<size_t>(split)));
    return ctx.decode(all.subspan(static_cast<size_t>(split)));
  };
  const std::vector<float> whole = last_logits(0, 512);
  for (auto [split, ubatch] : {std::pair{1495, 512}, {1400, 512}, {700, 512}, {0, 499}, {0, 64}}) {
    const std::vector<float> cut = last_logits(split, ubatch);
    EXPECT_EQ(std::memcmp(cut.data(), whole.data(), whole.size() * sizeof(float)), 0) << "split " << split << ", -ub " << ubatch;
  }

  // Decode rows of three sequences in one batch, and the first one alone.
  const std::vector<int32_t> b = text_tokens(1500, 300), c = text_tokens(2000, 40);
  Context ctx(*model_, {.n_ctx = 2048, .n_seq_max = 3});
  Context alone(*model_, {.n_ctx = 2048});
  Batch prefill;
  for (auto [seq, ids] : {std::pair{0, &prompt}, {1, &b}, {2, &c}})
    for (size_t i = 0; i < ids->size(); ++i) prefill.add((*ids)[i], static_cast<int32_t>(i), seq, false);
  ctx.decode(prefill);
  alone.decode(prompt);
  Batch step;
  for (int seq = 0; seq < 3; ++seq) step.add(100 + seq, ctx.n_past(seq), seq, true);
  const std::vector<float> batched = ctx.decode(step);
  const int32_t next[1] = {100};
  const std::vector<float> single = alone.decode(next);
  EXPECT_EQ(std::memcmp(batched.data(), single.data(), single.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace skim
