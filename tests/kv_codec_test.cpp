// The KV codecs against float64 references: llama.cpp's q8_0 and q4_0 blocks
// within their analytic error, TurboQuant's codebooks equal to the Lloyd-Max
// quantizer of N(0, 1), its rows equal to a float64 encoder's and within the
// paper's MSE bound, on every SIMD target; the Hadamard rotation is the
// orthonormal Sylvester matrix.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/f16.h"
#include "kernels/kv_codec.h"
#include "simd_targets.h"

namespace skim::kernels {
namespace {

constexpr int kDim = 64;

// Stores a row as `type` and reads it back through a view, as the kernel does.
std::vector<float> round_trip(const std::vector<float>& row, KvDType type, std::vector<uint8_t>* stored = nullptr) {
  const int32_t d = static_cast<int32_t>(row.size());
  std::vector<uint8_t> bytes(static_cast<size_t>(kv_row_bytes(type, d)));
  encode_kv_row(row.data(), type, d, bytes.data());
  std::vector<float> back(row.size());
  read_k_rows(KvView::contiguous(bytes.data(), bytes.data(), type, d, d, 1), 0, 0, 1, d, back.data());
  if (stored) *stored = bytes;
  return back;
}

std::vector<float> gaussian_row(std::mt19937& rng, float sigma, int d = kDim) {
  std::normal_distribution<float> gauss(0.0f, sigma);
  std::vector<float> row(static_cast<size_t>(d));
  for (float& x : row) x = gauss(rng);
  return row;
}

// q8_0 (per 32 values an f16 scale absmax/127 and int8 values): each value
// within half a step of what was stored, plus the scale's f16 rounding; a zero
// block decodes to zeros.
TEST(KvCodec, Q8_0RoundTripWithinHalfAStep) {
  test::for_each_simd_target([] {
    std::mt19937 rng(3);
    ASSERT_EQ(kv_row_bytes(KvDType::Q8_0, kDim), 68);  // two 34-byte blocks, as ggml's block_q8_0
    for (int trial = 0; trial < 100; ++trial) {
      std::vector<float> row = gaussian_row(rng, 3.0f);
      if (trial == 0) std::fill(row.begin(), row.end(), 0.0f);
      if (trial == 1) std::fill(row.begin(), row.begin() + 32, 0.0f);
      const std::vector<float> back = round_trip(row, KvDType::Q8_0);
      for (int b = 0; b < kDim; b += 32) {
        double amax = 0.0;
        for (int c = b; c < b + 32; ++c) amax = std::max(amax, std::abs(static_cast<double>(row[c])));
        const double step = amax / 127.0;  // half a step, plus 127 steps of the scale's f16 error (2^-11)
        for (int c = b; c < b + 32; ++c)
          ASSERT_LE(std::abs(back[c] - row[c]), 0.5 * step + 127.0 * step * 0x1p-11 + 1e-7) << "trial " << trial << " value " << c;
      }
    }
  });
}

// q4_0 (ggml's block_q4_0: the value of largest magnitude maps to -8 steps of
// an f16 scale): within half a step, a full step where the opposite extreme
// clamps at +7; the block layout is ggml's (value j low nibble, j + 16 high).
TEST(KvCodec, Q4_0RoundTripWithinHalfAStepAndGgmlLayout) {
  test::for_each_simd_target([] {
    std::mt19937 rng(4);
    ASSERT_EQ(kv_row_bytes(KvDType::Q4_0, kDim), 36);  // two 18-byte blocks
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> row = gaussian_row(rng, 2.0f);
      if (trial == 0) std::fill(row.begin(), row.end(), 0.0f);
      std::vector<uint8_t> stored;
      const std::vector<float> back = round_trip(row, KvDType::Q4_0, &stored);
      for (int b = 0; b < kDim; b += 32) {
        double extreme = 0.0;
        for (int c = b; c < b + 32; ++c)
          if (std::abs(row[c]) > std::abs(extreme)) extreme = row[c];
        const double step = extreme / -8.0;
        uint16_t half;
        std::memcpy(&half, stored.data() + b / 32 * 18, 2);
        ASSERT_NEAR(f16_to_f32(half), step, std::abs(step) * 0x1p-11 + 1e-12);
        for (int c = b; c < b + 32; ++c) {
          const double units = step != 0.0 ? row[c] / step : 0.0;
          const double bound = (units > 7.5 ? 1.0 : 0.5) * std::abs(step) + 8.0 * std::abs(step) * 0x1p-11 + 1e-7;
          ASSERT_LE(std::abs(back[c] - row[c]), bound) << "trial " << trial << " value " << c;
          // ggml's layout: nibble value q decodes to (q - 8) * scale.
          const uint8_t byte = stored[static_cast<size_t>(b / 32 * 18 + 2 + (c - b) % 16)];
          const int q = (c - b) < 16 ? byte & 15 : byte >> 4;
          ASSERT_EQ(back[c], (q - 8) * f16_to_f32(half)) << "value " << c;
        }
      }
    }
  });
}

// Lloyd-Max quantizer of N(0, 1) by float64 integration: levels are the
// means of their cells, and the mean squared error is the paper's
// (0.1175, 0.03454, 0.009497 for 2, 3, 4 bits).
TEST(KvCodec, TurboQuantCodebooksAreLloydMaxForTheGaussian) {
  const double published_mse[] = {0.1175, 0.03454, 0.009497};
  for (int bits = 2; bits <= 4; ++bits) {
    SCOPED_TRACE(bits);
    const int levels = 1 << bits;
    const float* c = tq_codebook(bits);
    for (int k = 0; k < kTqCodebookFloats; ++k)
      if (k >= levels) EXPECT_EQ(c[k], 0.0f);
    for (int k = 0; k + 1 < levels; ++k) ASSERT_LT(c[k], c[k + 1]);
    for (int k = 0; k < levels; ++k) EXPECT_NEAR(c[k], -c[levels - 1 - k], 1e-6);  // symmetric
    // Integrate the density on a fine grid: each cell's mean and the total error.
    std::vector<double> mass(levels), first(levels);
    double mse = 0.0;
    const double h = 1e-5;  // fine enough that the cells' cut grid steps move a mean by < 1e-5
    for (double t = -9.0; t < 9.0; t += h) {
      const double x = t + h / 2, w = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI) * h;
      int k = 0;
      while (k + 1 < levels && x > 0.5 * (c[k] + c[k + 1])) ++k;
      mass[k] += w;
      first[k] += w * x;
      mse += w * (x - c[k]) * (x - c[k]);
    }
    for (int k = 0; k < levels; ++k) EXPECT_NEAR(c[k], first[k] / mass[k], 1e-5) << "level " << k;
    EXPECT_NEAR(mse, published_mse[bits - 2], 0.002 * published_mse[bits - 2]);
  }
}

// TurboQuant rows: every index is the float64 nearest level of the value
// scaled to unit variance, the stored scale makes the decoded norm the
// original's (norm correction), and the relative squared error over many
// Gaussian rows stays within the paper's bound (sqrt(3) pi / 2) 4^-b.
TEST(KvCodec, TurboQuantRowsMatchAFloat64EncoderWithinThePaperBound) {
  test::for_each_simd_target([] {
    for (KvDType type : {KvDType::TQ4, KvDType::TQ3, KvDType::TQ2}) {
      const int bits = kv_tq_bits(type), levels = 1 << bits;
      SCOPED_TRACE(bits);
      ASSERT_EQ(kv_row_bytes(type, kDim), 2 + kDim * bits / 8);
      const float* c = tq_codebook(bits);
      std::mt19937 rng(10 + bits);
      double err_sum = 0.0;
      const int rows = 2000;
      for (int trial = 0; trial < rows; ++trial) {
        const std::vector<float> row = gaussian_row(rng, 0.7f);
        const std::vector<float> back = round_trip(row, type);
        double norm2 = 0.0;
        for (float x : row) norm2 += static_cast<double>(x) * x;
        std::vector<int> idx(kDim);
        double decoded2 = 0.0;
        for (int e = 0; e < kDim; ++e) {
          const double t = row[e] * std::sqrt(kDim / norm2);
          int best = 0;
          for (int k = 1; k < levels; ++k)
            if (std::abs(t - c[k]) < std::abs(t - c[best])) best = k;
          idx[e] = best;
          decoded2 += static_cast<double>(c[best]) * c[best];
        }
        const float scale = f16_to_f32(f32_to_f16(static_cast<float>(std::sqrt(norm2 / decoded2))));
        double err = 0.0;
        for (int e = 0; e < kDim; ++e) {
          ASSERT_EQ(back[e], scale * c[idx[e]]) << "row " << trial << " value " << e;
          err += (back[e] - row[e]) * static_cast<double>(back[e] - row[e]);
        }
        err_sum += err / norm2;
      }
      const double bound = std::sqrt(3.0) * M_PI / 2.0 * std::pow(4.0, -bits);
      EXPECT_LT(err_sum / rows, bound);
    }
    // A zero row stays zero.
    EXPECT_EQ(round_trip(std::vector<float>(kDim, 0.0f), KvDType::TQ3), std::vector<float>(kDim, 0.0f));
  });
}

// QJL rows (tq4j, tq3j): the bytes of the tq3 (tq2) row first, then the
// residual's sketch; the decoded row is the tq row plus sqrt(pi/2)/d |r| S^T s,
// s = sign(S r), recomputed here in float64 from the same matrix; the matrix's
// entries are standard normal (mean 0, variance 1 within sampling error).
TEST(KvCodec, QjlRowsAddTheSketchedResidual) {
  const float* S = qjl_matrix(kDim);
  double mean = 0.0, var = 0.0;
  for (int i = 0; i < kDim * kDim; ++i) mean += S[i] / (kDim * kDim);
  for (int i = 0; i < kDim * kDim; ++i) var += (S[i] - mean) * (S[i] - mean) / (kDim * kDim);
  EXPECT_LT(std::abs(mean), 4.0 / kDim);  // 4 standard errors of 4096 draws
  EXPECT_NEAR(var, 1.0, 0.1);
  test::for_each_simd_target([S] {
    for (const auto& [type, base] : {std::pair{KvDType::TQ4J, KvDType::TQ3}, std::pair{KvDType::TQ3J, KvDType::TQ2}}) {
      const int bits = kv_tq_bits(base);
      ASSERT_EQ(kv_row_bytes(type, kDim), kv_row_bytes(base, kDim) + 2 + kDim / 8);
      std::mt19937 rng(20 + bits);
      for (int trial = 0; trial < 200; ++trial) {
        const std::vector<float> row = gaussian_row(rng, 0.7f);
        std::vector<uint8_t> stored, stored_base;
        const std::vector<float> back = round_trip(row, type, &stored);
        const std::vector<float> mse = round_trip(row, base, &stored_base);
        ASSERT_TRUE(std::equal(stored_base.begin(), stored_base.end(), stored.begin()));
        std::vector<double> r(kDim);
        double r2 = 0.0;
        for (int c = 0; c < kDim; ++c) {
          r[c] = static_cast<double>(row[c]) - mse[c];
          r2 += r[c] * r[c];
        }
        const double coef = std::sqrt(M_PI / 2.0) / kDim * f16_to_f32(f32_to_f16(static_cast<float>(std::sqrt(r2))));
        for (int c = 0; c < kDim; ++c) {
          double expect = mse[c];
          for (int j = 0; j < kDim; ++j) {
            double dot = 0.0;
            for (int e = 0; e < kDim; ++e) dot += static_cast<double>(S[j * kDim + e]) * static_cast<float>(r[e]);
            expect += (dot >= 0.0 ? coef : -coef) * S[j * kDim + c];
          }
          ASSERT_NEAR(back[c], expect, 1e-4 * (1.0 + std::abs(expect))) << "row " << trial << " value " << c;
        }
      }
    }
  });
}

// hadamard(): the orthonormal Walsh-Hadamard matrix in Sylvester order,
// H[i][j] = (-1)^popcount(i & j) / sqrt(n), applied per block; its own inverse.
TEST(KvCodec, HadamardIsTheOrthonormalSylvesterMatrix) {
  std::mt19937 rng(8);
  for (int block : {32, 64, 128}) {
    SCOPED_TRACE(block);
    const std::vector<float> x = gaussian_row(rng, 1.0f, 2 * block);
    std::vector<float> y = x;
    hadamard(y.data(), static_cast<int64_t>(y.size()), block);
    for (int b = 0; b < 2 * block; b += block)
      for (int i = 0; i < block; ++i) {
        double want = 0.0;
        for (int j = 0; j < block; ++j) want += (__builtin_popcount(i & j) % 2 ? -1.0 : 1.0) * x[b + j];
        ASSERT_NEAR(y[b + i], want / std::sqrt(block), 1e-5);
      }
    hadamard(y.data(), static_cast<int64_t>(y.size()), block);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], x[i], 1e-5);
  }
}

}  // namespace
}  // namespace skim::kernels
