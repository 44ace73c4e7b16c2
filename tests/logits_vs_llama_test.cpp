// skim's all-position logits against llama.cpp's on the real models: top-1
// agreement and KL(llama.cpp || skim) per position.
//
// llama.cpp disagrees with itself at a measurable rate when only its own
// precision choices change (f32 instead of f16 KV cache): on SmolLM2-135M Q4_1
// that alone gives ~96% top-1 agreement and ~0.005 nats mean KL, because many
// positions have near-tied candidates. So top-1 agreement is checked against
// that noise floor, measured in the same run, and KL against the absolute bar.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "skim/context.h"
#include "skim/model.h"
#include "skim/paths.h"
#include "test_support.h"

namespace skim {
namespace {

// Runs the peer tool and reads its [n][vocab] float32 logits.
std::vector<float> peer_logits(const std::string& model, const std::vector<int32_t>& ids, int n_vocab,
                               const std::string& extra_flags = "") {
  const test::TempDir dir;
  const std::filesystem::path ids_path = dir / "ids.txt", out_path = dir / "logits.bin";
  {
    std::ofstream f(ids_path);
    for (int32_t id : ids) f << id << "\n";
  }
  const std::string cmd = test::shell_quote(test::peer_tool("skim-peer").string()) + " logits " + test::shell_quote(model) +
                          " " + test::shell_quote(ids_path.string()) + " " + test::shell_quote(out_path.string()) +
                          " --threads 2 " + extra_flags;
  const test::CommandResult run = test::run_command(cmd, 300);
  if (run.status != 0) throw std::runtime_error("peer failed: " + cmd + "\n" + run.errors);
  std::ifstream f(out_path, std::ios::binary);
  char magic[4];
  uint32_t n = 0, v = 0;
  f.read(magic, 4).read(reinterpret_cast<char*>(&n), 4).read(reinterpret_cast<char*>(&v), 4);
  if (!f || std::memcmp(magic, "SKLG", 4) != 0 || n != ids.size() || static_cast<int>(v) != n_vocab)
    throw std::runtime_error("peer logits file has an unexpected header");
  std::vector<float> logits(static_cast<size_t>(n) * v);
  f.read(reinterpret_cast<char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!f) throw std::runtime_error("peer logits file is truncated");
  return logits;
}

struct Agreement {
  int64_t positions = 0, top1_same = 0;
  double kl_sum = 0, kl_max = 0;
  double top1() const { return static_cast<double>(top1_same) / positions; }
  double mean_kl() const { return kl_sum / positions; }
  void add_row(const float* ref, const float* other, int n_vocab);
  void add(const Agreement& o) {
    positions += o.positions;
    top1_same += o.top1_same;
    kl_sum += o.kl_sum;
    kl_max = std::max(kl_max, o.kl_max);
  }
};

void Agreement::add_row(const float* ref, const float* other, int n_vocab) {
  const double kl = test::kl_divergence(ref, other, n_vocab);
  kl_sum += kl;
  kl_max = std::max(kl_max, kl);
  top1_same += std::max_element(ref, ref + n_vocab) - ref == std::max_element(other, other + n_vocab) - other;
  ++positions;
}

struct Comparison {
  Agreement skim;         // llama.cpp (defaults: f16 KV) vs skim
  Agreement peer_noise;   // llama.cpp (defaults) vs llama.cpp with an f32 KV cache
  Agreement skim_f32kv;   // llama.cpp with an f32 KV cache vs skim (reported)
};

Comparison compare_with_peer(const Model& model, const std::string& path, const std::vector<int32_t>& ids) {
  const int n_vocab = model.config().n_vocab;
  const std::vector<float> ref = peer_logits(path, ids, n_vocab);
  const std::vector<float> ref_f32kv = peer_logits(path, ids, n_vocab, "--kv-type f32");
  Comparison c;
  for (size_t i = 0; i < ids.size(); ++i)
    c.peer_noise.add_row(ref.data() + i * n_vocab, ref_f32kv.data() + i * n_vocab, n_vocab);
  Context ctx(model, {static_cast<int>(ids.size()), 512});
  ctx.decode_streaming(ids, 0, [&](int64_t row0, int64_t rows, const float* logits) {
    for (int64_t i = 0; i < rows; ++i) {
      c.skim.add_row(ref.data() + (row0 + i) * n_vocab, logits + i * n_vocab, n_vocab);
      c.skim_f32kv.add_row(ref_f32kv.data() + (row0 + i) * n_vocab, logits + i * n_vocab, n_vocab);
    }
  });
  return c;
}

// Prompts of the given lengths cut from the start of a long English text.
std::vector<std::vector<int32_t>> prompts(const Tokenizer& tok, const std::vector<int>& lengths) {
  const std::vector<int32_t> all = tok.encode(test::long_english_text(), false, false);
  std::vector<std::vector<int32_t>> out;
  size_t offset = 0;
  for (int n : lengths) {
    if (offset + n > all.size()) offset = 0;
    out.emplace_back(all.begin() + offset, all.begin() + offset + n);
    offset += n / 3;  // different windows of the text
  }
  return out;
}

// Bars: skim's mean KL against llama.cpp at most max_kl, or (max_kl < 0) at
// most llama.cpp's against itself; the noise floor itself at most noise_max_kl.
void check_model(const std::string& name, const std::vector<int>& lengths, double max_kl = 0.005, double noise_max_kl = 0.01) {
  const std::string path = test::require_model(name);
  std::unique_ptr<Model> model = Model::load(path);
  Comparison total;
  for (const std::vector<int32_t>& ids : prompts(model->tokenizer(), lengths)) {
    Comparison c = compare_with_peer(*model, path, ids);
    std::printf("%s, %4zu tokens: skim top-1 %.4f, mean KL %.6f (max %.4f) | llama.cpp f16-vs-f32 KV: top-1 %.4f, mean KL %.6f\n",
                name.c_str(), ids.size(), c.skim.top1(), c.skim.mean_kl(), c.skim.kl_max, c.peer_noise.top1(),
                c.peer_noise.mean_kl());
    total.skim.add(c.skim);
    total.peer_noise.add(c.peer_noise);
    total.skim_f32kv.add(c.skim_f32kv);
  }
  std::printf("%s overall, %lld positions: skim vs llama.cpp top-1 %.4f, mean KL %.6f nats; "
              "llama.cpp vs itself (f32 KV) top-1 %.4f, mean KL %.6f nats\n",
              name.c_str(), static_cast<long long>(total.skim.positions), total.skim.top1(), total.skim.mean_kl(),
              total.peer_noise.top1(), total.peer_noise.mean_kl());
  std::printf("%s overall: skim vs llama.cpp with an f32 KV cache top-1 %.4f, mean KL %.6f nats\n", name.c_str(),
              total.skim_f32kv.top1(), total.skim_f32kv.mean_kl());
  EXPECT_LE(total.skim.mean_kl(), max_kl >= 0 ? max_kl : total.peer_noise.mean_kl());
  EXPECT_GE(total.skim.top1(), std::min(0.99, total.peer_noise.top1() - 0.01));
  // The noise floor itself is sane (measured: 95.5-97.6% top-1, 0.003-0.0045
  // nats): a broken f32-KV peer run must fail here, not lower skim's bar.
  EXPECT_GE(total.peer_noise.top1(), 0.93);
  EXPECT_LE(total.peer_noise.mean_kl(), noise_max_kl);
}

TEST(LogitsVsLlamaCpp, SmolLM2FivePrompts) { check_model("smollm2-135m", {16, 100, 333, 1024, 2048}); }

// The bf16 prefill GEMM (--gemm bf16) against the same bars: bf16 keeps 8
// significant bits of every activation, int8 (the default) about 7 of a block's largest.
TEST(LogitsVsLlamaCpp, SmolLM2Bf16Gemm) {
  const test::ScopedGemmPath bf16(kernels::GemmPath::kBf16);
  check_model("smollm2-135m", {100, 1024, 2048});
}

// The bf16 attention arithmetic (--attn-math bf16, what "auto" picks where
// the CPU's bf16 dot product is fast) against the same bars, on both families.
TEST(LogitsVsLlamaCpp, SmolLM2Bf16Attention) {
  const test::ScopedAttnMath bf16(kernels::AttnMath::kBf16);
  check_model("smollm2-135m", {100, 1024, 2048});
}
TEST(LogitsVsLlamaCpp, Qwen25Coder05BBf16Attention) {
  const test::ScopedAttnMath bf16(kernels::AttnMath::kBf16);
  check_model("qwen2.5-coder-0.5b", {2048});
}

TEST(LogitsVsLlamaCpp, Qwen25Coder05B) { check_model("qwen2.5-coder-0.5b", {2048}); }

// Five of its six layers see a 512-token window: the longer prompts run past
// it. Its logits are far more sensitive to rounding than the others' (llama.cpp's
// own f16-vs-f32 KV noise: ~0.017 nats), so the bar is that noise, as the issue sets it.
TEST(LogitsVsLlamaCpp, Gemma3_270M_FivePrompts) { check_model("gemma3-270m", {16, 100, 333, 1024, 2048}, -1, 0.03); }

}  // namespace
}  // namespace skim
