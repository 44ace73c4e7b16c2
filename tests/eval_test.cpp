// skim eval: task generators, scoring, statistics, result files, the T2
// window comparison, and a smoke run of passkey on the real default model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>

#include "eval/corpus.h"
#include "eval/fidelity.h"
#include "eval/logit_compare.h"
#include "eval/metrics.h"
#include "eval/report.h"
#include "eval/results.h"
#include "eval/runner.h"
#include "eval/tasks.h"
#include "skim/model.h"
#include "skim/perplexity.h"
#include "test_support.h"

namespace skim::eval {
namespace {

// ---------------------------------------------------------------- statistics

TEST(EvalStats, WilsonMatchesNewcombesTable) {
  // Newcombe (1998), "Two-sided confidence intervals for the single proportion", score method without correction.
  struct Case {
    int64_t x, n;
    double lo, hi;
  };
  for (const Case& c : {Case{81, 263, 0.2553, 0.3662}, Case{15, 148, 0.0624, 0.1605}, Case{0, 20, 0.0, 0.1611}, Case{1, 29, 0.0061, 0.1718}}) {
    const Interval w = wilson(c.x, c.n);
    EXPECT_NEAR(w.lo, c.lo, 5e-5) << c.x << "/" << c.n;
    EXPECT_NEAR(w.hi, c.hi, 5e-5) << c.x << "/" << c.n;
  }
  const Interval all = wilson(10, 10);
  EXPECT_NEAR(all.lo, 0.7225, 5e-5);
  EXPECT_DOUBLE_EQ(all.hi, 1.0);
}

TEST(EvalStats, NewcombePairedMatchesPublishedExample) {
  // Cavo et al. (2012) as analysed in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
  // Tables", ch. 8: table [[59, 6], [16, 80]], Newcombe square-and-add -0.0621 (-0.1186 to -0.0046).
  const PairedCounts c{59, 6, 16, 80};
  EXPECT_NEAR(c.difference(), -0.0621, 5e-5);
  const Interval ci = newcombe_paired(c);
  EXPECT_NEAR(ci.lo, -0.1186, 5e-5);
  EXPECT_NEAR(ci.hi, -0.0046, 5e-5);
  // Swapping the roles negates the interval.
  const Interval swapped = newcombe_paired({59, 16, 6, 80});
  EXPECT_NEAR(swapped.lo, -ci.hi, 1e-12);
  EXPECT_NEAR(swapped.hi, -ci.lo, 1e-12);
  // Identical outcomes: difference 0, an interval around it that shrinks with n.
  const Interval same10 = newcombe_paired({7, 0, 0, 3}), same100 = newcombe_paired({70, 0, 0, 30});
  EXPECT_LT(same10.lo, 0);
  EXPECT_GT(same10.hi, 0);
  EXPECT_LT(same100.hi - same100.lo, same10.hi - same10.lo);
}

TEST(EvalStats, Percentile) {
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2, 4}, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2, 4}, 100), 4);
  EXPECT_DOUBLE_EQ(percentile({5}, 1), 5);
  EXPECT_TRUE(std::isnan(percentile({}, 50)));
}

// ------------------------------------------------------------------- scoring

TEST(EvalScore, AcceptsRightAndRejectsWrongAnswers) {
  EXPECT_EQ(string_match_all("The pass key is 48213.", {"48213"}), 1.0);
  EXPECT_EQ(string_match_all("48231", {"48213"}), 0.0);
  EXPECT_EQ(string_match_all("", {"48213"}), 0.0);
  EXPECT_EQ(string_match_all("It is Quiet-Lantern, surely", {"quiet-lantern"}), 1.0);  // case-insensitive
  EXPECT_EQ(string_match_all("1234567 and 7654321", {"1234567", "7654321", "1111111", "2222222"}), 0.5);
  EXPECT_EQ(string_match_all("anything", {}), 0.0);
  EXPECT_EQ(clean_prediction("  \x01 12345\t\n"), "12345");
  EXPECT_EQ(clean_prediction("a\x02z"), "a\nz");
}

// -------------------------------------------------------------------- corpus

TEST(EvalCorpus, SentenceBoundaries) {
  const std::string text = "Mr. Darcy came. He left! Did he?\nYes \"he did.\" Then J. Smith spoke.";
  std::vector<std::string> starts;
  for (size_t b : sentence_boundaries(text))
    if (b < text.size()) starts.push_back(text.substr(b, 4));
  EXPECT_EQ(starts, (std::vector<std::string>{"Mr. ", "He l", "Did ", "Yes ", "Then"}));
  EXPECT_EQ(sentence_boundaries(text).back(), text.size());
}

TEST(EvalCorpus, TakeTextWrapsAndKeepsWholeWords) {
  EXPECT_EQ(take_text("alpha beta gamma ", 6, 12), "beta gamma");
  EXPECT_EQ(take_text("one two ", 0, 16), "one two one two");
  EXPECT_EQ(take_text("one two ", 0, 14), "one two one");
}

TEST(EvalCorpus, BuiltinFallbackIsUsable) {
  const Corpus c = Corpus::load("/nonexistent/haystack");
  EXPECT_FALSE(c.cached);
  EXPECT_FALSE(c.essay.empty());
  EXPECT_GE(c.words.size(), 1000u);
  EXPECT_TRUE(c.austen.empty());
}

// ---------------------------------------------------------------- generators

class EvalTasks : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    builtin_ = new Corpus(Corpus::builtin());
    cached_ = new Corpus(Corpus::load());
  }
  static void TearDownTestSuite() {
    delete builtin_;
    delete cached_;
  }
  void SetUp() override {
    model_ = &test::shared_model(paths::kDefaultModel);
    ASSERT_TRUE(cached_->cached) << "haystack texts not fetched: run scripts/fetch-haystack";
  }
  static const Tokenizer& tok() { return model_->tokenizer(); }

  // Everything a sample must satisfy, whatever the task.
  static void check_sample(const Sample& s, bool chat) {
    SCOPED_TRACE(s.spec.task + " at " + std::to_string(s.spec.length));
    const int total = static_cast<int>(s.tokens.size()) + s.answer_tokens;
    EXPECT_LE(total, s.spec.length);
    EXPECT_GE(total, 0.98 * s.spec.length);
    EXPECT_EQ(s.tokens, PromptFormat(tok(), chat).encode(s.instruction, s.answer_prefix));
    EXPECT_NE(s.instruction.find(s.context), std::string::npos);
    ASSERT_FALSE(s.expected.empty());
    for (const Needle& n : s.needles) EXPECT_EQ(s.context.substr(n.offset, n.text.size()), n.text);
    for (const std::string& e : s.expected) {
      EXPECT_NE(s.context.find(e), std::string::npos) << e;
      if (s.needles.empty()) continue;  // cwe, fwe: the answer is a property of the whole list
      EXPECT_TRUE(std::any_of(s.needles.begin(), s.needles.end(), [&](const Needle& n) { return n.text.find(e) != std::string::npos; }))
          << e << " is in no needle";
    }
  }

  // The needle of a single-needle sample sits at the sentence boundary of the
  // haystack nearest to the requested depth.
  static void check_depth(const Sample& s) {
    ASSERT_EQ(s.needles.size(), 1u);
    const Needle& n = s.needles[0];
    const bool at_end = n.offset + n.text.size() == s.context.size();
    const std::string hay = at_end ? s.context.substr(0, n.offset - 1) : s.context.substr(0, n.offset) + s.context.substr(n.offset + n.text.size() + 1);
    const size_t at = at_end ? hay.size() : n.offset;
    const double target = s.spec.depth / 100 * hay.size();
    for (size_t b : sentence_boundaries(hay)) EXPECT_GE(std::abs(b - target), std::abs(at - target) - 1e-9) << "boundary " << b << " is nearer";
    EXPECT_NEAR(n.depth, 100.0 * at / hay.size(), 1e-9);
    EXPECT_NEAR(n.depth, s.spec.depth, 5.0);
  }

  static std::map<std::string, int> word_counts(const std::string& text) {
    std::map<std::string, int> counts;
    std::istringstream in(text);
    for (std::string w; in >> w;) counts[w]++;
    return counts;
  }

  static inline const Model* model_ = nullptr;
  static inline Corpus* builtin_ = nullptr;
  static inline Corpus* cached_ = nullptr;
};

TEST_F(EvalTasks, EveryTaskFitsItsLengthAndHidesItsAnswers) {
  for (const Corpus* corpus : {builtin_, cached_}) {
    for (bool chat : {true, false}) {
      const PromptFormat format(tok(), chat);
      for (const TaskInfo& t : tasks())
        for (int length : {1024, 4096}) {
          const Sample s = make_sample({t.name, length, 37, sample_seed(7, t.name, length, 0)}, *corpus, format);
          check_sample(s, chat);
          if (t.depth_grid) check_depth(s);
        }
    }
  }
}

TEST_F(EvalTasks, NeedleDepthGridInRealProse) {
  const PromptFormat format(tok(), true);
  for (const std::string task : {"passkey", "niah"})
    for (double depth : {0.0, 10.0, 50.0, 90.0, 100.0})
      for (int length : {1024, 2048}) {
        const Sample s = make_sample({task, length, depth, sample_seed(1, task, length, 3)}, *cached_, format);
        SCOPED_TRACE(task + " depth " + std::to_string(depth));
        check_sample(s, true);
        check_depth(s);
      }
}

TEST_F(EvalTasks, SamplesAreAFunctionOfTheirSeed) {
  const PromptFormat format(tok(), true);
  for (const TaskInfo& t : tasks()) {
    const Sample a = make_sample({t.name, 1024, 50, 11}, *builtin_, format);
    const Sample b = make_sample({t.name, 1024, 50, 11}, *builtin_, format);
    const Sample c = make_sample({t.name, 1024, 50, 12}, *builtin_, format);
    EXPECT_EQ(a.tokens, b.tokens) << t.name;
    EXPECT_NE(a.expected, c.expected) << t.name;
  }
  EXPECT_NE(sample_seed(42, "passkey", 1024, 0), sample_seed(42, "passkey", 1024, 1));
  EXPECT_NE(sample_seed(42, "passkey", 1024, 0), sample_seed(42, "niah", 1024, 0));
  EXPECT_NE(sample_seed(42, "passkey", 1024, 0), sample_seed(42, "passkey", 2048, 0));
}

TEST_F(EvalTasks, RulerTaskShapes) {
  const PromptFormat format(tok(), true);
  const Corpus& corpus = *cached_;
  auto make = [&](const std::string& task, int length) { return make_sample({task, length, 50, sample_seed(5, task, length, 0)}, corpus, format); };

  EXPECT_EQ(make("niah_multikey", 2048).needles.size(), 4u);
  EXPECT_EQ(make("niah_multikey", 2048).expected.size(), 1u);
  EXPECT_EQ(make("niah_multivalue", 2048).expected.size(), 4u);
  EXPECT_EQ(make("niah_multiquery", 2048).expected.size(), 4u);
  const Sample uuid = make("niah_single_2", 2048);
  EXPECT_EQ(uuid.expected[0].size(), 36u);
  EXPECT_EQ(uuid.expected[0][14], '4');

  // Variable tracking: the chain appears in order, each hop naming the previous variable.
  const Sample vt = make("vt", 2048);
  ASSERT_EQ(vt.needles.size(), 5u);
  for (size_t i = 1; i < vt.needles.size(); ++i) {
    EXPECT_LT(vt.needles[i - 1].offset, vt.needles[i].offset);
    EXPECT_EQ(vt.needles[i].text, "VAR " + vt.expected[i] + " = VAR " + vt.expected[i - 1]);
  }

  // Common words: the 10 expected words are each listed 6 times below 4K and 30 times from 4K; every other word less.
  for (auto [length, freq] : {std::pair{2048, 6}, std::pair{4096, 30}}) {
    const Sample cwe = make("cwe", length);
    const auto counts = word_counts(cwe.context);
    for (const auto& [word, n] : counts) {
      if (word.back() == '.') continue;  // list numbers
      const bool common = std::find(cwe.expected.begin(), cwe.expected.end(), word) != cwe.expected.end();
      if (common) EXPECT_EQ(n, freq) << word;
      else EXPECT_LT(n, freq) << word;
    }
  }

  // Frequent words: the expected words are ranks 2-4 after the dots.
  const Sample fwe = make("fwe", 2048);
  std::vector<std::pair<int, std::string>> ranked;
  for (const auto& [word, n] : word_counts(fwe.context)) ranked.push_back({n, word});
  std::sort(ranked.rbegin(), ranked.rend());
  EXPECT_EQ(ranked[0].second, "....");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ranked[i + 1].second, fwe.expected[i]);
  EXPECT_GT(ranked[3].first, ranked[4].first);
}

TEST_F(EvalTasks, ClearErrors) {
  const PromptFormat format(tok(), true);
  EXPECT_THROW(make_sample({"nope", 1024, 50, 1}, *builtin_, format), std::invalid_argument);
  EXPECT_THROW(make_sample({"passkey", 1024, 150, 1}, *builtin_, format), std::invalid_argument);
  try {
    make_sample({"cwe", 200, 50, 1}, *builtin_, format);
    FAIL() << "a 200-token cwe sample cannot exist";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("too short for task cwe"), std::string::npos) << e.what();
  }
}

// -------------------------------------------------------------- result files

TEST(EvalResults, RoundTripAndResumeGuard) {
  const test::TempDir tmp;
  const std::filesystem::path dir = tmp / "results";
  const RunConfig config{"m.gguf", 42, true, {0, 50, 100}, "builtin"};
  {
    ResultStore store(dir, config);
    TaskRecord a{"passkey", 1024, 0, 50.0, "dense", 1000, "12345", {"12345"}, 1, true, 80, 20, 1};
    TaskRecord b = a;
    b.method = "streaming:sink=4,local=64";
    b.prediction = "\xff oops";  // invalid UTF-8 must not break the file
    b.score = 0;
    b.correct = false;
    b.prefill_ms = 40;
    b.density = 0.25;
    store.add(a);
    store.add(b);
    store.add(a);  // duplicates are ignored
    store.add(PplRecord{1024, 0, "dense", 511, 1500, 1500, 511, {}, 90, 1});
    store.save();
  }
  ResultStore again(dir, config);
  EXPECT_EQ(again.tasks().size(), 2u);
  EXPECT_TRUE(again.has_task("passkey", 1024, 0, "streaming:sink=4,local=64"));
  EXPECT_FALSE(again.has_task("passkey", 1024, 1, "dense"));
  EXPECT_TRUE(again.has_ppl(1024, 0, "dense"));
  EXPECT_EQ(again.tasks()[0].depth, 50.0);

  const Summary s = summarize(again);
  ASSERT_EQ(s.cells.size(), 2u);
  EXPECT_EQ(s.methods, (std::vector<std::string>{"dense", "streaming:sink=4,local=64"}));
  ASSERT_TRUE(s.cells[1].paired.has_value());
  EXPECT_EQ(s.cells[1].paired->only_dense, 1);
  EXPECT_DOUBLE_EQ(s.cells[1].speedup, 2.0);
  const std::string md = render_markdown(s, config, "skim eval ...", nullptr, {});
  EXPECT_NE(md.find("| passkey | 1K | `dense` | 1 | 100.0 |"), std::string::npos) << md;

  RunConfig other = config;
  other.seed = 7;
  EXPECT_THROW(ResultStore(dir, other), std::runtime_error);
}

TEST(EvalFidelity, PoolsReportsPerMethodAndLength) {
  auto head = [](std::vector<float> recalls, double err, double ref) {
    HeadFidelity h;
    h.rows = static_cast<int64_t>(recalls.size());
    for (float r : recalls) {
      h.recall_sum += r;
      h.recall_min = std::min<double>(h.recall_min, r);
    }
    h.recalls = std::move(recalls);
    h.err_sq_sum = err;
    h.ref_sq_sum = ref;
    return h;
  };
  AttentionReport a, b, none;
  a.fidelity = {head({1.0f, 0.5f}, 1, 100), head({0.9f}, 0, 1)};  // 1 layer x 2 heads
  b.fidelity = {head({0.75f}, 3, 300), head({0.7f}, 0, 1)};
  FidelityLog log(1, 2);
  EXPECT_TRUE(log.empty());
  log.add("m", 1024, none);  // no fidelity rows: nothing to record
  EXPECT_TRUE(log.empty());
  log.add("m", 1024, a);
  log.add("m", 1024, b);
  log.add("m", 2048, a);
  EXPECT_THROW(log.add("m", 1024, AttentionReport{.fidelity = {head({1.0f}, 0, 1)}}), std::logic_error);

  const nlohmann::json j = log.to_json();
  ASSERT_EQ(j["runs"].size(), 2u);
  const nlohmann::json& run = j["runs"][0];
  EXPECT_EQ(run["length"], 1024);
  EXPECT_EQ(run["rows"], 5);
  EXPECT_NEAR(run["recall_mean"].get<double>(), (1.0 + 0.5 + 0.9 + 0.75 + 0.7) / 5, 1e-6);
  EXPECT_NEAR(run["recall_min"].get<double>(), 0.5, 1e-6);
  const nlohmann::json& h0 = run["heads"][0];
  EXPECT_EQ(h0["layer"], 0);
  EXPECT_EQ(h0["head"], 0);
  EXPECT_EQ(h0["rows"], 3);
  EXPECT_NEAR(h0["recall_mean"].get<double>(), 0.75, 1e-6);
  EXPECT_NEAR(h0["rel_l2"].get<double>(), 0.1, 1e-9);  // sqrt(4 / 400)
  EXPECT_EQ(run["heads"][1]["head"], 1);

  // A resumed eval: runs it did not measure keep the earlier file's figures, a
  // run it measured replaces the earlier one, and another model's file counts for nothing.
  nlohmann::json earlier = j;
  earlier["runs"][0]["recall_mean"] = 0.123;  // "m" at 1024: measured again now
  nlohmann::json other = j["runs"][1];
  other["method"] = "earlier";
  earlier["runs"].push_back(other);
  std::vector<std::string> replaced;
  const nlohmann::json merged = log.to_json_with(earlier, replaced);
  ASSERT_EQ(merged["runs"].size(), 3u);
  EXPECT_EQ(merged["runs"][0]["method"], "earlier");
  EXPECT_EQ(merged["runs"][1], j["runs"][0]);
  EXPECT_EQ(merged["runs"][2], j["runs"][1]);
  EXPECT_EQ(replaced, (std::vector<std::string>{"m at 1024", "m at 2048"}));
  earlier["n_head"] = 3;
  replaced.clear();
  EXPECT_EQ(log.to_json_with(earlier, replaced), j);
  EXPECT_TRUE(replaced.empty());
  EXPECT_EQ(FidelityLog(1, 2).to_json_with(nullptr, replaced), nullptr);
  EXPECT_EQ(FidelityLog(1, 2).to_json_with(j, replaced), j);  // --report-only keeps the file's runs

  // What an earlier invocation left is checked before it is used.
  EXPECT_NO_THROW(check_fidelity_json(j));
  nlohmann::json nan_run = j;
  nan_run["runs"][0]["recall_p1"] = nullptr;  // NaN, as JSON writes it
  EXPECT_NO_THROW(check_fidelity_json(nan_run));
  for (const char* broken : {R"([])", R"({"n_layer": 1, "n_head": 2})", R"({"n_layer": "1", "n_head": 2, "runs": []})",
                             R"({"n_layer": 1, "n_head": 2, "runs": [{"method": 3, "length": 1, "heads": []}]})"})
    EXPECT_THROW(check_fidelity_json(nlohmann::json::parse(broken)), std::runtime_error) << broken;
  nlohmann::json no_recall = j;
  no_recall["runs"][1].erase("recall_mean");
  EXPECT_THROW(check_fidelity_json(no_recall), std::runtime_error);
}

// ------------------------------------------------------ real model (CI smoke)

class EvalModel : public ::testing::Test {
 protected:
  void SetUp() override { model_ = Model::load(test::require_model(paths::kDefaultModel)); }
  std::unique_ptr<Model> model_;
};

// The CI smoke test: 8 passkey samples at 1K tokens, dense, depths 0..100%.
// SmolLM2-135M-Instruct does not get all 8: measured 7/8 (seed 42), the miss
// being sample 3 (depth 43%), where it answers with a phrase of the filler
// instead of the key. A 135M model is at its limit here (it gets 1 of 4 at 2K
// in docs/eval.md).
TEST_F(EvalModel, PasskeySmokeDense1K) {
  const Corpus corpus = Corpus::builtin();
  const PromptFormat format(model_->tokenizer(), true);
  ContextParams p;
  p.n_ctx = 1024;
  Context ctx(*model_, p);
  int correct = 0;
  for (int i = 0; i < 8; ++i) {
    const Sample s = make_sample({"passkey", 1024, 100.0 * i / 7, sample_seed(42, "passkey", 1024, i)}, corpus, format);
    ASSERT_GE(s.tokens.size() + s.answer_tokens, 1000u);  // a real 1K prompt, not a degenerate one
    AttentionReport report;
    const TaskRecord r = run_sample(ctx, "dense", s, report);
    correct += r.correct;
    if (!r.correct) std::printf("passkey sample %d (depth %.0f%%): expected %s, got '%s'\n", i, s.spec.depth, s.expected[0].c_str(), r.prediction.c_str());
    EXPECT_DOUBLE_EQ(r.density, 1.0);
  }
  // Two below the measured 7/8 absorbs rounding differences between CPUs and
  // SIMD targets; a broken engine or harness finds no 5-digit key (0-1 of 8).
  EXPECT_GE(correct, 5);
}

// Dense alone through compare_window gives llama-perplexity's numbers; a
// method that keeps every key agrees with dense exactly.
TEST_F(EvalModel, WindowComparisonAgreesWithPerplexity) {
  const Tokenizer& tok = model_->tokenizer();
  constexpr int kWindow = 128;
  std::vector<int32_t> tokens = tok.encode(test::long_english_text(), false, false);
  tokens.resize(2 * kWindow);
  const int bos = tok.add_bos() ? tok.bos() : -1;
  ContextParams p;
  p.n_ctx = kWindow;
  p.n_ubatch = 32;  // several micro-batches in both halves
  Context dense(*model_, p);
  // The window covers every key, and max_density=1 runs that plan instead of
  // the policy's dense fallback.
  p.attention = "streaming:sink=4,local=4096,max_density=1";
  Context wide(*model_, p);
  p.attention = "streaming:sink=4,local=16,min_len=0";  // really sparse: must differ
  Context narrow(*model_, p);

  double nll = 0;
  int64_t scored = 0;
  for (int w = 0; w < 2; ++w) {
    std::vector<int32_t> window(tokens.begin() + w * kWindow, tokens.begin() + (w + 1) * kWindow);
    if (bos >= 0) window[0] = bos;
    const PplRecord alone = compare_window(dense, nullptr, window);
    nll += alone.nll;
    scored += alone.scored;

    const PplRecord paired = compare_window(dense, &wide, window);
    EXPECT_EQ(paired.scored, kWindow / 2 - 1);
    EXPECT_NEAR(paired.nll_dense, alone.nll, 1e-6 * alone.nll);
    EXPECT_EQ(paired.top1_agree, paired.scored);
    EXPECT_DOUBLE_EQ(paired.density, 1.0);
    EXPECT_GT(wide.attention_report().sparse_calls, 0);
    EXPECT_EQ(wide.attention_report().dense_calls, 0);
    ASSERT_EQ(paired.kl.size(), static_cast<size_t>(paired.scored));
    for (float kl : paired.kl) EXPECT_LT(kl, 1e-4);

    const PplRecord sparse = compare_window(dense, &narrow, window);
    EXPECT_LT(sparse.density, 0.6);
    EXPECT_NEAR(sparse.nll_dense, alone.nll, 1e-6 * alone.nll);
    double kl_sum = 0;
    for (float kl : sparse.kl) kl_sum += kl;
    EXPECT_GT(kl_sum / sparse.kl.size(), 1e-3) << "a 16-key window left the logits unchanged";
  }
  const PerplexityResult ref = perplexity(dense, tokens, bos);
  EXPECT_EQ(scored, ref.n_scored);
  EXPECT_NEAR(std::exp(nll / scored), ref.ppl, 1e-6 * ref.ppl);
}

}  // namespace
}  // namespace skim::eval
