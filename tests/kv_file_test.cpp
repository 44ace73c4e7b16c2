// KV cache files (Context::save_sequence / load_sequence) on the real model: a
// loaded cache continues exactly as the saved one would, and a file from
// another model or setting, truncated, flipped or half-written is refused.
#include "kv/kv_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "skim/context.h"
#include "test_support.h"

namespace skim {
namespace {

class KvFile : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = &test::shared_model("smollm2-135m");
    dir_ = std::filesystem::temp_directory_path() / ("skim_kv_file_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::vector<int32_t> prompt(size_t n) const {
    std::vector<int32_t> ids = model_->tokenizer().encode(test::long_english_text(), false, false);
    ids.resize(n);
    return ids;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static void flip_byte(const std::string& file, std::streamoff at) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(at);
    f.write(&c, 1);
  }
  static std::string error_of(Context& ctx, const std::string& file) {
    try {
      ctx.load_sequence(0, file);
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(ctx.n_cached(0), 0) << "a refused file leaves the sequence empty";
      return e.what();
    }
    return "";
  }

  const Model* model_ = nullptr;
  std::filesystem::path dir_;
};

TEST_F(KvFile, ALoadedCacheContinuesExactlyAsTheSavedOne) {
  const std::vector<int32_t> ids = prompt(300);
  // The last case keeps its first 4 rows in f16 too (--kv-f16-sinks): the file holds those copies.
  for (const auto [type, sinks] : {std::pair{"f16", 0}, std::pair{"q8_0", 0}, std::pair{"q4_0", 0}, std::pair{"tq4", 0},
                                   std::pair{"q4_0", 4}}) {
    SCOPED_TRACE(::testing::Message() << type << " sinks " << sinks);
    const ContextParams p{.n_ctx = 512, .kv_type_k = type, .kv_type_v = type, .kv_f16_sinks = sinks};
    Context saved(*model_, p);
    saved.decode(ids);
    const size_t bytes = saved.save_sequence(0, ids, path("a.kv"), {{"note", "mine"}});
    EXPECT_EQ(bytes, std::filesystem::file_size(path("a.kv")));

    Context loaded(*model_, p);
    const Context::SavedSequence s = loaded.load_sequence(0, path("a.kv"));
    EXPECT_EQ(s.tokens, ids);
    EXPECT_EQ(s.meta.at("note"), "mine");
    EXPECT_EQ(loaded.n_cached(0), 300);
    EXPECT_EQ(loaded.n_past(0), 300);
    const int32_t next[1] = {42};
    const std::vector<float> a = saved.decode(next), b = loaded.decode(next);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  }
}

TEST_F(KvFile, FilesOfAnotherModelOrSettingOrDamagedAreRefused) {
  const std::vector<int32_t> ids = prompt(100);
  Context ctx(*model_, {.n_ctx = 512});
  ctx.decode(ids);
  const std::string good = path("good.kv");
  ctx.save_sequence(0, ids, good);

  Context other_attention(*model_, {.n_ctx = 512, .attention = "streaming"});
  EXPECT_NE(error_of(other_attention, good).find("attention"), std::string::npos);
  Context other_kv(*model_, {.n_ctx = 512, .kv_type_v = "q8_0"});
  EXPECT_NE(error_of(other_kv, good).find("q8_0"), std::string::npos);
  Context qwen(test::shared_model("qwen2.5-coder-0.5b"), {.n_ctx = 512});
  EXPECT_NE(error_of(qwen, good).find("another model file"), std::string::npos);

  Context fresh(*model_, {.n_ctx = 512});
  const auto size = std::filesystem::file_size(good);
  std::filesystem::copy_file(good, path("cut.kv"));
  std::filesystem::resize_file(path("cut.kv"), size - 1000);
  EXPECT_NE(error_of(fresh, path("cut.kv")).find("truncated"), std::string::npos);
  std::filesystem::copy_file(good, path("flip.kv"));
  flip_byte(path("flip.kv"), static_cast<std::streamoff>(size - 5000));
  EXPECT_NE(error_of(fresh, path("flip.kv")).find("corrupted"), std::string::npos);
  std::ofstream(path("junk.kv")) << "not a cache file at all";
  EXPECT_NE(error_of(fresh, path("junk.kv")).find("cache file"), std::string::npos);
  EXPECT_NE(error_of(fresh, path("missing.kv")).find("cannot open"), std::string::npos);
  EXPECT_EQ(fresh.load_sequence(0, good).tokens, ids);  // the context still loads a good one
}

TEST_F(KvFile, AKillDuringASaveLeavesThePreviousFileWhole) {
  const std::vector<int32_t> ids = prompt(1500);
  Context ctx(*model_, {.n_ctx = 2048});
  ctx.decode(ids);
  const std::string file = path("kill.kv");
  ctx.save_sequence(0, std::span(ids).first(10), file);  // the previous file: 10 tokens
  const auto t0 = std::chrono::steady_clock::now();
  ctx.save_sequence(0, ids, path("timing.kv"));
  const auto save_time = std::chrono::steady_clock::now() - t0;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      for (;;) ctx.save_sequence(0, ids, file);  // killed mid-write
    }
    std::this_thread::sleep_for(save_time * attempt / 4);
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status));
    Context loaded(*model_, {.n_ctx = 2048});
    const size_t n = loaded.load_sequence(0, file).tokens.size();
    EXPECT_TRUE(n == 10 || n == ids.size()) << n;
  }
}

}  // namespace
}  // namespace skim
