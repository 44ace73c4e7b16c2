// What the tests that use real models and the llama.cpp peer need. Missing
// prerequisites fail the test with the command that provides them: a skipped
// comparison would read as a pass.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include <stdlib.h>
#include <sys/wait.h>

#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "skim/model.h"
#include "skim/paths.h"

namespace skim::test {

// `s` as one single-quoted shell word.
inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

inline std::string require_model(const std::string& name) {
  try {
    return paths::model(name).string();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
    throw;
  }
}

// The model `name`, loaded once per test binary on first use. Loading inside
// the test (not in SetUpTestSuite, whose failure gtest reports as "skipped")
// makes a missing model fail every test that needs it.
inline const Model& shared_model(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Model>> loaded;
  std::unique_ptr<Model>& slot = loaded[name];
  if (!slot) slot = Model::load(require_model(name));
  return *slot;
}

// A program of the llama.cpp peer build (skim-peer, llama-perplexity, ...).
inline std::filesystem::path peer_tool(const std::string& name) {
  const std::filesystem::path bin = paths::peer_prefix() / "bin" / name;
  if (!std::filesystem::exists(bin)) {
    ADD_FAILURE() << "llama.cpp peer missing at " << bin << ": run scripts/build-llama-cpp";
    throw std::runtime_error("peer missing");
  }
  return bin;
}

// A fresh directory under the system temp dir, removed on destruction: tests
// running side by side never share a file name.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "skim_test_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("cannot create a temporary directory");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A shell command's exit status, standard output and the tail of its
// standard error. The command is killed after `timeout_s` (status 124, or 137
// when it ignored SIGTERM), so a hung peer fails the test instead of stalling
// the suite.
struct CommandResult {
  int status = -1;
  std::string output;
  std::string errors;  // the last 2000 bytes of standard error
};
inline CommandResult run_command(const std::string& cmd, int timeout_s) {
  const TempDir dir;
  const std::filesystem::path err_path = dir / "stderr.txt";
  const std::string bounded =
      "timeout -k 10 " + std::to_string(timeout_s) + " sh -c " + shell_quote(cmd) + " 2>" + shell_quote(err_path.string());
  FILE* pipe = popen(bounded.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run " + cmd);
  CommandResult r;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  r.errors.assign(std::istreambuf_iterator<char>(err), std::istreambuf_iterator<char>());
  if (r.errors.size() > 2000) r.errors.erase(0, r.errors.size() - 2000);
  if (r.status == 124 || r.status == 137) ADD_FAILURE() << "timed out after " << timeout_s << " s: " << cmd;
  return r;
}

// Long public-domain-licensed English prose present on every Debian system.
inline std::string long_english_text() {
  std::string text;
  for (const char* f : {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"}) {
    std::ifstream in(f);
    if (!in) throw std::runtime_error(std::string("missing ") + f);
    std::ostringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  return text;
}

// KL(p || q) between the softmax distributions of two logit rows, in nats.
inline double kl_divergence(const float* p_logits, const float* q_logits, int n) {
  auto log_norm = [n](const float* l) {
    const float mx = *std::max_element(l, l + n);
    double s = 0;
    for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(l[i]) - mx);
    return mx + std::log(s);
  };
  const double zp = log_norm(p_logits), zq = log_norm(q_logits);
  double kl = 0;
  for (int i = 0; i < n; ++i) {
    const double lp = p_logits[i] - zp, lq = q_logits[i] - zq;
    kl += std::exp(lp) * (lp - lq);
  }
  return std::max(0.0, kl);
}

inline int argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

// Pins a process-wide kernel setting for a test's lifetime.
template <class T, T (*kGet)(), void (*kSet)(T)>
class ScopedSetting {
 public:
  explicit ScopedSetting(T value) : saved_(kGet()) { kSet(value); }
  ~ScopedSetting() { kSet(saved_); }
  ScopedSetting(const ScopedSetting&) = delete;
  ScopedSetting& operator=(const ScopedSetting&) = delete;

 private:
  T saved_;
};
// The prefill GEMM path. Tests that isolate another component (attention, a
// KV format) compare two runs that differ only there, on the f32 path: the
// int8 path's activation rounding flips with any input difference and would
// add its own noise to both sides of the comparison.
using ScopedGemmPath = ScopedSetting<kernels::GemmPath, kernels::gemm_path, kernels::set_gemm_path>;

// Pins the attention kernel's prefill arithmetic for a test's lifetime.
using ScopedAttnMath = ScopedSetting<kernels::AttnMath, kernels::attention_math, kernels::set_attention_math>;

}  // namespace skim::test
