// `skim perplexity` against llama-perplexity on the same text, context and
// number of windows: the two estimates must agree within 1%.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <string>

#include "skim/context.h"
#include "skim/model.h"
#include "skim/paths.h"
#include "skim/perplexity.h"
#include "test_support.h"

namespace skim {
namespace {

std::string run_and_capture(const std::string& cmd) {
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  if (pclose(pipe) != 0) throw std::runtime_error("command failed: " + cmd + "\n" + out);
  return out;
}

TEST(PerplexityVsLlamaCpp, SmolLM2Context2048) {
  constexpr int kCtx = 2048, kWindows = 4;
  const std::string model_path = test::require_model("smollm2-135m");
  test::require_peer();
  const std::string text_path = testing::TempDir() + "/ppl_text.txt";
  std::ofstream(text_path) << test::long_english_text();

  const std::string peer = run_and_capture("'" + (paths::peer_prefix() / "bin" / "llama-perplexity").string() + "' -m '" +
                                           model_path + "' -f '" + text_path + "' -c " + std::to_string(kCtx) +
                                           " --chunks " + std::to_string(kWindows) + " -t 2 2>&1");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(peer, m, std::regex(R"(Final estimate: PPL = ([0-9.]+))"))) << peer;
  const double peer_ppl = std::stod(m[1]);

  std::unique_ptr<Model> model = Model::load(model_path);
  std::vector<int32_t> tokens = model->tokenizer().encode(test::long_english_text(), true, false);
  ASSERT_GE(tokens.size(), static_cast<size_t>(kCtx * kWindows));
  tokens.resize(kCtx * kWindows);
  Context ctx(*model, {kCtx, 512});
  const PerplexityResult r = perplexity(ctx, tokens, model->tokenizer().add_bos() ? model->tokenizer().bos() : -1);
  std::printf("perplexity at context %d over %d windows: skim %.4f, llama.cpp %.4f, ratio %.5f\n", kCtx, r.n_windows, r.ppl,
              peer_ppl, r.ppl / peer_ppl);
  EXPECT_EQ(r.n_windows, kWindows);
  EXPECT_NEAR(r.ppl / peer_ppl, 1.0, 0.01);
}

}  // namespace
}  // namespace skim
