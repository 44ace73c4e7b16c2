// The server's scheduler on the real model: every request gets exactly the
// tokens a cold, single-sequence generate() gives (batch invariance, prefix
// reuse, chunked prefill), and cancelled or impossible requests leave it serving.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <chrono>

#include "skim/generate.h"
#include "test_support.h"

namespace skim {
namespace {

using namespace std::chrono_literals;

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = &test::shared_model("smollm2-135m"); }

  std::vector<int32_t> tokens(const std::string& text) const { return model_->tokenizer().encode(text, true, false); }
  // A document's tokens followed by a question's.
  std::vector<int32_t> ask(const std::vector<int32_t>& doc, const std::string& question) const {
    std::vector<int32_t> p = doc;
    const std::vector<int32_t> q = model_->tokenizer().encode(question, false, false);
    p.insert(p.end(), q.begin(), q.end());
    return p;
  }

  // The greedy tokens of a fresh context running the prompt alone.
  std::vector<int32_t> cold(const std::vector<int32_t>& prompt, int n, ContextParams cp = {.n_ctx = 2048}) const {
    Context ctx(*model_, cp);
    Sampler greedy({.temp = 0});
    GenerationOptions opts;
    opts.n_predict = n;
    return generate(ctx, prompt, greedy, opts).tokens;
  }

  static CompletionUpdate wait(CompletionHandle& h) {
    CompletionUpdate all;
    for (;;) {
      CompletionUpdate u = h.next(1000ms);
      all.text += u.text;
      all.tokens.insert(all.tokens.end(), u.tokens.begin(), u.tokens.end());
      if (u.done) {
        all.done = true;
        all.error = u.error;
        all.finish_reason = u.finish_reason;
        all.stats = u.stats;
        return all;
      }
    }
  }
  static std::vector<int32_t> ids(const CompletionUpdate& u) {
    std::vector<int32_t> out;
    for (const GeneratedToken& t : u.tokens) out.push_back(t.id);
    return out;
  }

  static SchedulerParams params(int slots, int n_batch) {
    SchedulerParams p;
    p.context.n_ctx = 2048;
    p.context.n_seq_max = slots;
    p.n_batch = n_batch;
    return p;
  }
  static CompletionRequest greedy(std::vector<int32_t> prompt, int n) {
    CompletionRequest r;
    r.prompt = std::move(prompt);
    r.sampling.temp = 0;
    r.max_tokens = n;
    return r;
  }

  static inline const Model* model_ = nullptr;
};

TEST_F(SchedulerTest, ConcurrentRequestsGetTheTokensTheyGetAlone) {
  const std::vector<int32_t> text = tokens(test::long_english_text());
  // Short prompts (one under a GEMM's rows), and long ones cut into chunks by a 64-token budget.
  std::vector<std::vector<int32_t>> prompts = {tokens("Hi"), tokens("The capital of France is"),
                                               {text.begin(), text.begin() + 150}, {text.begin() + 7, text.begin() + 333},
                                               tokens("1, 2, 3, 4,"), {text.begin() + 40, text.begin() + 107}};
  ASSERT_LE(prompts[0].size(), 4u);
  Scheduler scheduler(*model_, params(4, 64));  // six requests, four slots: two wait
  std::vector<std::shared_ptr<CompletionHandle>> handles;
  for (const auto& p : prompts) handles.push_back(scheduler.submit(greedy(p, 12)));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const CompletionUpdate u = wait(*handles[i]);
    EXPECT_EQ(u.error, "");
    EXPECT_EQ(ids(u), cold(prompts[i], 12)) << "request " << i;
    EXPECT_EQ(u.stats.n_prompt, static_cast<int>(prompts[i].size()));
  }
  EXPECT_GT(scheduler.stats().steps, 12);
}

TEST_F(SchedulerTest, ASharedPrefixIsReusedAndGivesTheColdAnswer) {
  const std::vector<int32_t> text = tokens(test::long_english_text());
  const std::vector<int32_t> doc(text.begin(), text.begin() + 600);
  Scheduler scheduler(*model_, params(2, 256));
  const CompletionUpdate first = wait(*scheduler.submit(greedy(ask(doc, "\nQuestion: who wrote this?"), 8)));
  EXPECT_EQ(first.stats.n_cached, 0);
  const std::vector<int32_t> second_prompt = ask(doc, "\nQuestion: what is it for?");
  const CompletionUpdate second = wait(*scheduler.submit(greedy(second_prompt, 8)));
  EXPECT_GE(second.stats.n_cached, static_cast<int>(doc.size()) - 1);
  EXPECT_LE(second.stats.n_cached, static_cast<int>(second_prompt.size()) - 5);
  EXPECT_EQ(ids(second), cold(second_prompt, 8));
  EXPECT_EQ(scheduler.stats().cache_hits, 1);
}

// With one slot, each new document takes it: the previous one's whole pages
// stay in memory (--cache-ram) and a question on it later prefills only the rest.
TEST_F(SchedulerTest, AKeptPrefixOutlivesItsSlot) {
  const std::vector<int32_t> text = tokens(test::long_english_text());
  const std::vector<int32_t> doc_a(text.begin(), text.begin() + 600), doc_b(text.begin() + 1000, text.begin() + 1600);
  SchedulerParams p = params(1, 256);
  p.cache_ram_bytes = 64u << 20;
  Scheduler scheduler(*model_, p);
  EXPECT_EQ(scheduler.n_slots(), 1);
  EXPECT_EQ(wait(*scheduler.submit(greedy(ask(doc_a, "\nQuestion: who wrote this?"), 6))).stats.n_cached, 0);
  EXPECT_EQ(wait(*scheduler.submit(greedy(ask(doc_b, "\nQuestion: who wrote this?"), 6))).stats.n_cached, 0);
  EXPECT_EQ(scheduler.stats().kept_prefixes, 1);
  EXPECT_EQ(scheduler.stats().kept_tokens, 576);  // doc A's 9 whole pages
  const std::vector<int32_t> again = ask(doc_a, "\nQuestion: what is it for?");
  const CompletionUpdate u = wait(*scheduler.submit(greedy(again, 6)));
  EXPECT_EQ(u.stats.n_cached, 576);
  EXPECT_EQ(ids(u), cold(again, 6));
  EXPECT_EQ(scheduler.stats().memory_hits, 1);
  EXPECT_EQ(scheduler.stats().kept_prefixes, 2);  // doc B's pages too, now that A took the slot
}

// A pool with room for one slot's context and about one kept document: the
// oldest kept prefix gives its pages back when a prompt needs them, and the
// one it kept longest is gone first.
TEST_F(SchedulerTest, KeptPrefixesGiveWayLeastRecentlyUsed) {
  const std::vector<int32_t> text = tokens(test::long_english_text());
  auto doc = [&](size_t i) { return std::vector<int32_t>(text.begin() + 700 * i, text.begin() + 700 * i + 700); };
  SchedulerParams p = params(1, 256);
  p.context.n_ctx = 1024;
  p.cache_ram_bytes = 16u << 20;  // 12 pages of SmolLM2's f16 rows per (layer, head); a document takes 10
  Scheduler scheduler(*model_, p);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(wait(*scheduler.submit(greedy(doc(i), 4))).stats.n_cached, 0);
  // B was kept when C took the slot; keeping A as well would have left C no room.
  EXPECT_EQ(scheduler.stats().kept_prefixes, 1);
  EXPECT_EQ(scheduler.stats().kept_tokens, 640);
  std::vector<int32_t> b = doc(1);
  b.resize(690);
  const CompletionUpdate hit = wait(*scheduler.submit(greedy(b, 4)));
  EXPECT_EQ(hit.stats.n_cached, 640);
  EXPECT_EQ(ids(hit), cold(b, 4));
  std::vector<int32_t> a = doc(0);
  a.resize(690);
  const CompletionUpdate miss = wait(*scheduler.submit(greedy(a, 4)));
  EXPECT_EQ(miss.stats.n_cached, 0);
  EXPECT_EQ(ids(miss), cold(a, 4));
  EXPECT_EQ(scheduler.stats().requests_failed, 0);
}

TEST_F(SchedulerTest, ACancelledRequestFreesItsSlot) {
  Scheduler scheduler(*model_, params(1, 64));
  CompletionRequest endless = greedy(tokens("Tell me a story."), 100000);
  endless.ignore_eog = true;
  auto h = scheduler.submit(endless);
  auto next = scheduler.submit(greedy(tokens("Hello"), 3));  // waits for the only slot
  while (h->next(1000ms).tokens.empty()) {
  }
  h->cancel();
  const CompletionUpdate u = wait(*next);
  EXPECT_EQ(u.error, "");
  EXPECT_EQ(u.stats.n_gen, 3);
  EXPECT_EQ(wait(*h).error, "cancelled");
  EXPECT_EQ(scheduler.stats().requests_cancelled, 1);
  EXPECT_LT(scheduler.stats().generated_tokens, 1000);
}

TEST_F(SchedulerTest, StopStringsAndLogprobs) {
  Scheduler scheduler(*model_, params(1, 64));
  CompletionRequest r = greedy(tokens("The capital of France is"), 16);
  r.logprobs = true;
  r.top_logprobs = 2;
  const CompletionUpdate full = wait(*scheduler.submit(r));
  ASSERT_GT(full.text.size(), 4u);
  for (const GeneratedToken& t : full.tokens) {
    ASSERT_EQ(t.top.size(), 2u);
    EXPECT_EQ(t.top[0].id, t.id);  // greedy
    EXPECT_FLOAT_EQ(t.top[0].logprob, t.logprob);
    EXPECT_LE(t.top[1].logprob, t.logprob);
  }
  r.stop = {full.text.substr(2, 3)};
  const CompletionUpdate cut = wait(*scheduler.submit(r));
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(r.stop[0])));
  EXPECT_EQ(cut.finish_reason, "stop");
}

TEST_F(SchedulerTest, EachRequestRunsItsOwnMethods) {
  const std::vector<int32_t> text = tokens(test::long_english_text());
  const std::vector<int32_t> prompt(text.begin(), text.begin() + 600);
  Scheduler scheduler(*model_, params(2, 256));  // the prompt is prefilled in three chunks
  CompletionRequest evicting = greedy(prompt, 4);
  evicting.kv_policy = "snapkv:keep=0.5";
  const CompletionUpdate cut = wait(*scheduler.submit(evicting));
  EXPECT_EQ(cut.error, "");
  EXPECT_EQ(cut.stats.kv_rows, 300 + 3);  // half the prompt, once, and the decoded tokens
  const CompletionUpdate full = wait(*scheduler.submit(greedy(prompt, 4)));
  EXPECT_EQ(full.stats.n_cached, 0);  // the evicting request's rows are not the prompt's
  EXPECT_EQ(full.stats.kv_rows, 600 + 3);
  CompletionRequest sparse = greedy(prompt, 4);
  sparse.attention = "streaming:sink=64,local=128";
  EXPECT_EQ(wait(*scheduler.submit(sparse)).stats.n_cached, 0);  // dense rows are not shared with it
  CompletionRequest bad = greedy(prompt, 4);
  bad.kv_policy = "nosuch";
  EXPECT_THROW(scheduler.submit(bad), std::invalid_argument);
  bad.kv_policy.clear();
  bad.attention = "nosuch";
  EXPECT_THROW(scheduler.submit(bad), std::invalid_argument);
}

// A sparse method plans each micro-batch: the server cuts its prompts where
// a cold run with -ub = -b cuts them, whatever else is waiting, and shares
// only whole such micro-batches of a cached prefix.
TEST_F(SchedulerTest, ASparseMethodGetsTheColdAnswerWhateverTheChunking) {
  const std::string sparse = "xattention:tau=0.8";
  const std::vector<int32_t> text = tokens(test::long_english_text());
  const std::vector<int32_t> doc(text.begin(), text.begin() + 700);
  std::vector<std::vector<int32_t>> prompts = {ask(doc, "\nQuestion: who wrote this?"), {text.begin() + 90, text.begin() + 500},
                                               ask(doc, "\nQuestion: what is it for?"), {text.begin() + 33, text.begin() + 290}};
  SchedulerParams p = params(2, 128);
  p.context.attention = sparse;
  Scheduler scheduler(*model_, p);
  std::vector<std::shared_ptr<CompletionHandle>> handles;
  for (const auto& prompt : prompts) handles.push_back(scheduler.submit(greedy(prompt, 10)));
  int cached = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const CompletionUpdate u = wait(*handles[i]);
    EXPECT_EQ(u.error, "");
    EXPECT_EQ(ids(u), cold(prompts[i], 10, {.n_ctx = 2048, .n_ubatch = 128, .attention = sparse})) << "request " << i;
    EXPECT_EQ(u.stats.n_cached % 128, 0) << "request " << i;
    cached += u.stats.n_cached;
  }
  EXPECT_GE(cached, 512);  // the second question shares the document's whole micro-batches
}

// Each request may store its rows in its own KV types: the scheduler runs
// sequences of different layouts in different passes, and shares a prefix
// only between requests of the same layout.
TEST_F(SchedulerTest, EachRequestStoresItsOwnKvTypes) {
  const std::vector<int32_t> text = tokens(test::long_english_text());
  const std::vector<int32_t> doc(text.begin(), text.begin() + 400);
  struct Case {
    std::string k, v;
    std::vector<int32_t> prompt;
  };
  const std::vector<Case> cases = {{"f16", "f16", ask(doc, "\nQuestion: who?")},
                                   {"q8_0", "q8_0", ask(doc, "\nQuestion: who?")},
                                   {"q4_0", "f16", {text.begin() + 50, text.begin() + 300}},
                                   {"q8_0", "q8_0", ask(doc, "\nQuestion: why?")}};
  Scheduler scheduler(*model_, params(4, 128));
  std::vector<std::shared_ptr<CompletionHandle>> handles;
  for (const Case& c : cases) {
    CompletionRequest r = greedy(c.prompt, 8);
    r.kv_type_k = c.k;
    r.kv_type_v = c.v;
    handles.push_back(scheduler.submit(r));
  }
  std::vector<CompletionUpdate> answers;
  for (size_t i = 0; i < cases.size(); ++i) {
    answers.push_back(wait(*handles[i]));
    EXPECT_EQ(answers[i].error, "");
    EXPECT_EQ(ids(answers[i]), cold(cases[i].prompt, 8, {.n_ctx = 2048, .n_ubatch = 128, .kv_type_k = cases[i].k, .kv_type_v = cases[i].v}))
        << cases[i].k << "/" << cases[i].v;
  }
  // The f16 request answered first; a new q8_0 question shares the q8_0 rows, an f16 one the f16 rows.
  CompletionRequest again = greedy(ask(doc, "\nQuestion: when?"), 8);
  again.kv_type_k = again.kv_type_v = "q8_0";
  const CompletionUpdate q8 = wait(*scheduler.submit(again));
  EXPECT_EQ(q8.stats.n_cached, 384);  // whole micro-batches: centered q8_0 keys depend on the first cut
  EXPECT_EQ(ids(q8), cold(again.prompt, 8, {.n_ctx = 2048, .n_ubatch = 128, .kv_type_k = "q8_0", .kv_type_v = "q8_0"}));
  CompletionRequest bad = greedy(doc, 4);
  bad.kv_type_k = "q3_x";
  EXPECT_THROW(scheduler.submit(bad), std::invalid_argument);
}

TEST_F(SchedulerTest, RequestsThatCannotRunAreRefused) {
  Scheduler scheduler(*model_, params(1, 64));
  EXPECT_THROW(scheduler.submit(greedy({}, 4)), std::invalid_argument);
  EXPECT_THROW(scheduler.submit(greedy(std::vector<int32_t>(2048, 1), 4)), std::invalid_argument);
  EXPECT_THROW(scheduler.submit(greedy({1, model_->config().n_vocab}, 4)), std::invalid_argument);
  EXPECT_EQ(wait(*scheduler.submit(greedy(tokens("Hello"), 2))).stats.n_gen, 2);
  EXPECT_THROW(Scheduler(*model_, params(1, 8)), std::invalid_argument);
}

}  // namespace
}  // namespace skim
