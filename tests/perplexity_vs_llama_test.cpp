// `skim perplexity` against llama-perplexity on the same text, context and
// number of windows: the two estimates must agree within 1%.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
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

// Both at the same context and windows, both with the same RoPE scaling
// (`rope` for skim, `peer_flags` for llama-perplexity).
void check_perplexity(const std::string& model_name, int kCtx = 2048, int kWindows = 4, const ModelOptions& rope = {},
                      const std::string& peer_flags = "") {
  const std::string model_path = test::require_model(model_name);
  const test::TempDir dir;
  const std::filesystem::path text_path = dir / "text.txt";
  std::ofstream(text_path) << test::long_english_text();

  const test::CommandResult run = test::run_command(
      test::shell_quote(test::peer_tool("llama-perplexity").string()) + " -m " + test::shell_quote(model_path) + " -f " +
          test::shell_quote(text_path.string()) + " -c " + std::to_string(kCtx) + " --chunks " + std::to_string(kWindows) +
          " -t 2 " + peer_flags + " 2>&1",
      600);
  const std::string& peer = run.output;
  ASSERT_EQ(run.status, 0) << peer;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(peer, m, std::regex(R"(Final estimate: PPL = ([0-9.]+))"))) << peer;
  const double peer_ppl = std::stod(m[1]);

  std::unique_ptr<Model> model = Model::load(model_path, rope);
  std::vector<int32_t> tokens = model->tokenizer().encode(test::long_english_text(), true, false);
  ASSERT_GE(tokens.size(), static_cast<size_t>(kCtx * kWindows));
  tokens.resize(kCtx * kWindows);
  Context ctx(*model, {kCtx, 512});
  const PerplexityResult r = perplexity(ctx, tokens, model->tokenizer().add_bos() ? model->tokenizer().bos() : -1);
  std::printf("%s: perplexity at context %d over %d windows: skim %.4f, llama.cpp %.4f, ratio %.5f\n", model_name.c_str(),
              kCtx, r.n_windows, r.ppl, peer_ppl, r.ppl / peer_ppl);
  EXPECT_EQ(r.n_windows, kWindows);
  EXPECT_NEAR(r.ppl / peer_ppl, 1.0, 0.01);
}

TEST(PerplexityVsLlamaCpp, SmolLM2Context2048) { check_perplexity("smollm2-135m"); }

// Its window layers (512 tokens) run past their window in every 2048-token window.
TEST(PerplexityVsLlamaCpp, Gemma3_270M_Context2048) { check_perplexity("gemma3-270m"); }

// YaRN and linear stretching as llama.cpp computes them: SmolLM2 told it was
// trained at 2048 tokens, stretched 2x to a 4096-token window.
TEST(PerplexityVsLlamaCpp, SmolLM2YarnAndLinearScaling) {
  for (const char* rule : {"yarn", "linear"}) {
    SCOPED_TRACE(rule);
    const ModelOptions rope{.rope_scaling = rule, .rope_scale = 2.f, .yarn_orig_ctx = 2048};
    check_perplexity("smollm2-135m", 4096, 2, rope, fmt::format("--rope-scaling {} --rope-scale 2 --yarn-orig-ctx 2048", rule));
  }
}

}  // namespace
}  // namespace skim
