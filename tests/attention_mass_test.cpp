// The attention each key receives (kernels/attention_mass.h, H2O's scores)
// and the softmax rows themselves (the policies' window) against a float64
// softmax, on every SIMD target, the mass in both its forms (scores held, and
// two passes over transposed keys): paged f16 and quantized
// keys with gaps in their positions, grouped query heads, rows that see a
// prefix of the keys, and keys before the layer's first held slot untouched by
// the mass and zero in the rows. And E4's mass per key block of sampled rows.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/attention_mass.h"
#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "simd_targets.h"

namespace skim::kernels {
namespace {

constexpr int32_t kHq = 6, kHkv = 2;

TEST(AttentionMass, MatchesAFloat64SoftmaxOnEveryTarget) {
  for (const KvDType type : {KvDType::F16, KvDType::Q8_0}) {
    for (const int32_t d : {64, 128}) {
      SCOPED_TRACE(::testing::Message() << "d " << d << (type == KvDType::F16 ? " f16" : " q8_0"));
      kv::KvPool pool(d, {type, type}, 80);
      kv::KvSequence seq(pool, 1, kHkv, 4096);
      const int64_t n = 2100;
      std::vector<int32_t> positions(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(i + i / 3);  // gaps
      seq.append(positions);
      std::mt19937 rng(11 + d);
      std::normal_distribution<float> gauss(0.0f, 1.0f);
      std::vector<float> row(static_cast<size_t>(d));
      for (int32_t g = 0; g < kHkv; ++g)
        for (int64_t s = 0; s < n; ++s) {
          for (float& x : row) x = 2.0f * gauss(rng);
          seq.store_row(0, g, s, row.data(), row.data());
        }
      seq.release_before(0, 64);  // the first page is no longer held
      const KvView kv = seq.view(0);
      std::vector<float> keys(static_cast<size_t>(n * d));
      // 39 query rows (groups of four rows straddle the query heads) from
      // position 500, which see a prefix of the keys; 9 from position 80, the
      // first of which see no held key (slot 64 is at position 85): few
      // enough scores to hold. Then 200 rows, too many: the two-pass form.
      for (const auto [rows, q_pos0] : {std::pair{39, 500}, std::pair{9, 80}, std::pair{200, 1500}}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows from position " << q_pos0);
      std::vector<float> q(static_cast<size_t>(rows) * kHq * d);
      for (float& x : q) x = gauss(rng);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      for (int32_t g = 0; g < kHkv; ++g) {
        int seeing = 0;  // (row, query head) pairs that see at least one key
        read_k_rows(kv, g, kv.first_key, n - kv.first_key, d, keys.data() + kv.first_key * d);
        std::vector<double> want(static_cast<size_t>(n), 0.0);
        std::vector<double> want_probs(static_cast<size_t>(kHq / kHkv) * rows * n, 0.0);
        for (int32_t member = 0; member < kHq / kHkv; ++member)
          for (int32_t i = 0; i < rows; ++i) {
            const float* qr = q.data() + (static_cast<int64_t>(i) * kHq + g * (kHq / kHkv) + member) * d;
            const int64_t visible = kv.slots_through(g, q_pos0 + i);
            seeing += visible > kv.first_key;
            std::vector<double> s(static_cast<size_t>(n));
            double mx = -INFINITY, sum = 0.0;
            for (int64_t j = kv.first_key; j < visible; ++j) {
              double dot = 0.0;
              for (int32_t e = 0; e < d; ++e) dot += static_cast<double>(qr[e]) * keys[static_cast<size_t>(j * d + e)];
              s[static_cast<size_t>(j)] = dot * scale;
              mx = std::max(mx, s[static_cast<size_t>(j)]);
            }
            for (int64_t j = kv.first_key; j < visible; ++j) sum += std::exp(s[static_cast<size_t>(j)] - mx);
            for (int64_t j = kv.first_key; j < visible; ++j) {
              const double p = std::exp(s[static_cast<size_t>(j)] - mx) / sum;
              want[static_cast<size_t>(j)] += p;
              want_probs[(static_cast<size_t>(member) * rows + i) * n + j] = p;
            }
          }
        test::for_each_simd_target([&] {
          std::vector<float> got(static_cast<size_t>(n), -1.0f);
          std::fill(got.begin() + kv.first_key, got.end(), 0.0f);
          accumulate_attention_mass(q.data(), static_cast<int64_t>(kHq) * d, rows, q_pos0, kHq, kHkv, d, kv, g, scale,
                                    got.data());
          double total = 0.0;
          for (int64_t j = 0; j < n; ++j) {
            if (j < kv.first_key) {
              ASSERT_EQ(got[static_cast<size_t>(j)], -1.0f) << "slot " << j << " is not held";
              continue;
            }
            ASSERT_NEAR(got[static_cast<size_t>(j)], want[static_cast<size_t>(j)], 1e-6 + 1e-5 * want[static_cast<size_t>(j)])
                << "slot " << j;
            total += got[static_cast<size_t>(j)];
          }
          EXPECT_NEAR(total, seeing, 1e-3);  // every softmax sums to 1
          // The rows themselves (a policy's window): zeros where a row sees no held key.
          std::vector<float> probs(want_probs.size(), -1.0f);
          attention_probabilities(q.data(), static_cast<int64_t>(kHq) * d, rows, q_pos0, kHq, kHkv, d, kv, g, scale,
                                  probs.data());
          for (size_t k = 0; k < probs.size(); ++k)
            ASSERT_NEAR(probs[k], want_probs[k], 1e-6 + 1e-5 * want_probs[k]) << "row " << k / n << ", slot " << k % n;
        });
      }
      }
    }
  }
}

TEST(AttentionMass, RejectsBadShapes) {
  kv::KvPool pool(64, {KvDType::F16, KvDType::F16}, 4);
  kv::KvSequence seq(pool, 1, kHkv, 64);
  std::vector<float> q(kHq * 64), mass(64);
  EXPECT_THROW(accumulate_attention_mass(q.data(), kHq * 64, 1, 0, kHq, 4, 64, seq.view(0), 0, 1.0f, mass.data()),
               std::invalid_argument);
  EXPECT_THROW(accumulate_attention_mass(q.data(), kHq * 64, 1, 0, kHq, kHkv, 64, seq.view(0), kHkv, 1.0f, mass.data()),
               std::invalid_argument);
  EXPECT_THROW(attention_probabilities(q.data(), kHq * 64, 1, 0, kHq, 4, 64, seq.view(0), 0, 1.0f, mass.data()),
               std::invalid_argument);
}


// key_block_mass (E4's kernel): each sampled row's softmax mass per key block,
// rows that see different prefixes (past a 256-key block of the transposed
// layout, and ending inside a key block), against a float64 softmax.
TEST(KeyBlockMass, MatchesAFloat64SoftmaxOnEveryTarget) {
  for (const int32_t d : {32, 64, 128}) {
    const int64_t n = 700;
    std::mt19937 rng(5 + d);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::vector<float> keys(static_cast<size_t>(n * d));
    for (float& x : keys) x = 2.0f * gauss(rng);
    std::vector<float> kt(transposed_key_floats(n, d));
    transpose_key_blocks(keys.data(), n, d, kt.data());
    const std::vector<int64_t> visible = {1, 17, 255, 256, 257, 300, 511, 512, 600, 699, 700};
    const auto rows = static_cast<int32_t>(visible.size());
    std::vector<float> q(static_cast<size_t>(rows * d));
    for (float& x : q) x = 0.3f * gauss(rng);
    for (const int64_t kblock : {1, 16, 64}) {
      SCOPED_TRACE(::testing::Message() << "d " << d << ", key block " << kblock);
      const int64_t ld = (n + kblock - 1) / kblock;
      test::for_each_simd_target([&] {
        std::vector<float> mass(static_cast<size_t>(rows * ld), -1.0f);
        key_block_mass(q.data(), rows, visible.data(), kt.data(), d, kblock, mass.data(), ld);
        for (int32_t a = 0; a < rows; ++a) {
          const int64_t own = visible[static_cast<size_t>(a)];
          std::vector<double> logits(static_cast<size_t>(own));
          double top = -INFINITY;
          for (int64_t j = 0; j < own; ++j) {
            double dot = 0;
            for (int32_t e = 0; e < d; ++e)
              dot += double(q[static_cast<size_t>(a * d + e)]) * keys[static_cast<size_t>(j * d + e)];
            logits[static_cast<size_t>(j)] = dot;
            top = std::max(top, dot);
          }
          double total = 0;
          for (double& x : logits) total += (x = std::exp(x - top));
          for (int64_t c = 0; c * kblock < own; ++c) {
            double want = 0;
            for (int64_t j = c * kblock; j < std::min(own, (c + 1) * kblock); ++j) want += logits[static_cast<size_t>(j)];
            ASSERT_NEAR(mass[static_cast<size_t>(a * ld + c)], want / total, 1e-6 + 1e-5 * want / total)
                << "row " << a << ", block " << c;
          }
          for (int64_t c = (own + kblock - 1) / kblock; c < ld; ++c)  // blocks it does not see: untouched
            ASSERT_EQ(mass[static_cast<size_t>(a * ld + c)], -1.0f) << "row " << a << ", block " << c;
        }
      });
    }
  }
}

TEST(KeyBlockMass, RejectsRowsWithoutKeysAndShortOutputs) {
  std::vector<float> q(64), kt(transposed_key_floats(100, 64)), mass(8);
  const int64_t none = 0, many = 100;
  EXPECT_THROW(key_block_mass(q.data(), 1, &none, kt.data(), 64, 16, mass.data(), 8), std::invalid_argument);
  EXPECT_THROW(key_block_mass(q.data(), 1, &many, kt.data(), 64, 16, mass.data(), 6), std::invalid_argument);
  EXPECT_THROW(key_block_mass(q.data(), 1, &many, kt.data(), 40, 16, mass.data(), 8), std::invalid_argument);
}

}  // namespace
}  // namespace skim::kernels
