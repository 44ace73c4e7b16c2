// The transformer block's row-wise kernels (vectorized, threaded) against
// plain double-precision references, on sizes with vector tails and on spans
// large enough to take the threaded path, on every SIMD target this CPU runs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "simd_targets.h"

namespace skim {
namespace {

std::vector<float> random_values(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = gauss(rng);
  return v;
}

TEST(Elementwise, RmsNormMatchesDoubleReference) {
  test::for_each_simd_target([] {
    for (int64_t n : {1, 3, 8, 17, 64, 576, 896, 1000})
      for (int64_t rows : {1, 2, 7, 64}) {
        const std::vector<float> x = random_values(rows * n, 3.0f, 1), w = random_values(n, 1.0f, 2);
        std::vector<float> y(x.size());
        kernels::rms_norm(x.data(), w.data(), y.data(), rows, n, 1e-5f);
        for (int64_t r = 0; r < rows; ++r) {
          double ss = 0;
          for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[r * n + i]) * x[r * n + i];
          const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
          for (int64_t i = 0; i < n; ++i) {
            const double want = x[r * n + i] * scale * w[i];
            ASSERT_NEAR(y[r * n + i], want, 1e-5 * std::abs(want) + 1e-6)
                << "n=" << n << " rows=" << rows << " i=" << i;
          }
        }
      }
  });
}

TEST(Elementwise, SwigluMatchesDoubleReferenceIncludingExtremes) {
  test::for_each_simd_target([] {
    for (int64_t n : {1, 5, 8, 31, 1536, 100003}) {  // the last takes the threaded path
      std::vector<float> gate = random_values(n, 4.0f, 3);
      const std::vector<float> up = random_values(n, 1.0f, 4);
      const float extremes[] = {0.0f, -0.0f, 90.0f, -90.0f, 200.0f, -200.0f, 1e30f, -1e30f};
      for (size_t e = 0; e < std::size(extremes) && e < gate.size(); ++e) gate[e * 3 % gate.size()] = extremes[e];
      const std::vector<float> g0 = gate;
      kernels::swiglu(gate.data(), up.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = g0[i];
        const double want = g / (1.0 + std::exp(-g)) * up[i];
        ASSERT_TRUE(std::isfinite(gate[i])) << "g=" << g;
        ASSERT_NEAR(gate[i], want, 2e-6 * std::abs(want) + 1e-30) << "n=" << n << " g=" << g;
      }
    }
  });
}

TEST(Elementwise, GegluMatchesDoubleReferenceIncludingExtremes) {
  test::for_each_simd_target([] {
    for (int64_t n : {1, 5, 8, 31, 2048, 100003}) {
      std::vector<float> gate = random_values(n, 4.0f, 7);
      const std::vector<float> up = random_values(n, 1.0f, 8);
      const float extremes[] = {0.0f, -0.0f, 9.0f, -9.0f, 200.0f, -200.0f, 1e30f, -1e30f};
      for (size_t e = 0; e < std::size(extremes) && e < gate.size(); ++e) gate[e * 3 % gate.size()] = extremes[e];
      const std::vector<float> g0 = gate;
      kernels::geglu(gate.data(), up.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = g0[i];
        const double want = 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g))) * up[i];
        ASSERT_TRUE(std::isfinite(gate[i])) << "g=" << g;
        ASSERT_NEAR(gate[i], want, 4e-6 * std::abs(want) + 1e-6 * std::abs(up[i])) << "n=" << n << " g=" << g;
      }
    }
  });
}

TEST(Elementwise, AddMatchesOnEverySize) {
  test::for_each_simd_target([] {
    for (int64_t n : {1, 7, 8, 9, 4096, 70001}) {
      std::vector<float> y = random_values(n, 1.0f, 5);
      const std::vector<float> x = random_values(n, 1.0f, 6), y0 = y;
      kernels::add_inplace(y.data(), x.data(), n);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], y0[i] + x[i]) << "n=" << n << " i=" << i;
    }
  });
}

}  // namespace
}  // namespace skim

namespace skim::kernels {
namespace {
// RoPE rotations compose: turning a query rotated for position p by `shift`
// more positions gives the query rotated for p + shift (DapQ's moved queries
// rely on it, src/model/blocks.cpp).
TEST(Elementwise, RopeRotationsCompose) {
  const int hd = 64, heads = 3;
  std::vector<float> inv_freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / hd);
  std::mt19937 rng(2);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> x(heads * hd), cos_a(hd / 2), sin_a(hd / 2), cos_b(hd / 2), sin_b(hd / 2), cos_ab(hd / 2), sin_ab(hd / 2);
  for (float& v : x) v = gauss(rng);
  rope_angles(700.0f, inv_freq.data(), hd, cos_a.data(), sin_a.data());
  rope_angles(32.0f, inv_freq.data(), hd, cos_b.data(), sin_b.data());
  rope_angles(732.0f, inv_freq.data(), hd, cos_ab.data(), sin_ab.data());
  for (bool interleaved : {false, true}) {
    std::vector<float> twice = x, once = x;
    rope(twice.data(), heads, hd, cos_a.data(), sin_a.data(), interleaved);
    rope(twice.data(), heads, hd, cos_b.data(), sin_b.data(), interleaved);
    rope(once.data(), heads, hd, cos_ab.data(), sin_ab.data(), interleaved);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(twice[i], once[i], 2e-4) << i;
  }
}
}  // namespace
}  // namespace skim::kernels
