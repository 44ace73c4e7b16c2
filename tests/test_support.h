// What the tests that use real models and the llama.cpp peer need. Missing
// prerequisites fail the test with the command that provides them: a skipped
// comparison would read as a pass.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "skim/paths.h"

namespace skim::test {

inline std::string require_model(const std::string& name) {
  try {
    return paths::model(name).string();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
    throw;
  }
}

inline void require_peer() {
  const std::filesystem::path bin = paths::peer_prefix() / "bin" / "skim-peer";
  if (!std::filesystem::exists(bin)) {
    ADD_FAILURE() << "llama.cpp peer missing at " << bin << ": run scripts/build-llama-cpp";
    throw std::runtime_error("peer missing");
  }
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

}  // namespace skim::test
