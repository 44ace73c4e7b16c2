// KIVI pages (docs/kv-formats.md) against float64 references: values per token
// and keys per channel within half a step of their group's range, on every SIMD
// target; the last, unfilled page held f16 until it fills; a truncate into a
// sealed page, a fork, and the operations that would move quantized rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <tuple>
#include <vector>

#include "kernels/kv_codec.h"
#include "kv/kv_file.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "simd_targets.h"

namespace skim::kv {
namespace {

using kernels::KvDType;
constexpr int kDim = 64, kHeads = 2;

// Keys with a few outlier channels (large offset and spread), as KIVI found in real keys.
std::vector<float> key_rows(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> rows(static_cast<size_t>(n * kHeads * kDim));
  for (size_t i = 0; i < rows.size(); ++i) {
    const int c = static_cast<int>(i % kDim);
    rows[i] = c % 16 == 3 ? 20.0f + 8.0f * gauss(rng) : gauss(rng);
  }
  return rows;
}

const float* row_of(const std::vector<float>& rows, int64_t slot, int h) {
  return rows.data() + (slot * kHeads + h) * kDim;
}

void store(KvSequence& seq, const std::vector<float>& k, const std::vector<float>& v, int64_t first, int64_t n) {
  for (int64_t s = first; s < first + n; ++s)
    for (int h = 0; h < kHeads; ++h) seq.store_row(0, h, s, row_of(k, s, h), row_of(v, s, h));
  seq.seal(0);
}

std::vector<float> read(const KvSequence& seq, bool values, int h) {
  std::vector<float> out(static_cast<size_t>(seq.size() * kDim));
  (values ? kernels::read_v_rows : kernels::read_k_rows)(seq.view(0), h, 0, seq.size(), kDim, out.data());
  return out;
}

// A row as the f16 codec stores it (the stage's format).
std::vector<float> f16_row(const float* x) {
  std::vector<uint16_t> half(kDim);
  kernels::encode_kv_row(x, KvDType::F16, kDim, half.data());
  std::vector<float> back(kDim);
  kernels::read_k_rows(kernels::KvView::contiguous(half.data(), half.data(), KvDType::F16, kDim, kDim, 1), 0, 0, 1, kDim,
                       back.data());
  return back;
}

// Half a step of an asymmetric b-bit grid over [lo, hi], plus the f16 rounding
// of the stored minimum and scale (relative 2^-11 each, the scale's times the top index).
double half_step_bound(double lo, double hi, int bits) {
  const double top = (1 << bits) - 1, step = (hi - lo) / top;
  return 0.5 * step * (1 + 1e-3) + std::ldexp(std::max(std::abs(lo), std::abs(hi)) + step * top, -10);
}

// Sealed key rows: every value within half a step of its channel's range over
// the page's 64 rows; value rows within half a step of their 32-value group's.
TEST(Kivi, SealedPagesWithinHalfAStepOfTheirGroups) {
  test::for_each_simd_target([] {
    for (const auto& [k_type, v_type, bits] : {std::tuple{KvDType::KIVI_K2, KvDType::KIVI_V2, 2},
                                               std::tuple{KvDType::KIVI_K4, KvDType::KIVI_V4, 4}}) {
      KvPool pool(kDim, {k_type, v_type}, 64);
      KvSequence seq(pool, 1, kHeads, 1024);
      const int64_t n = 200;
      const std::vector<float> k = key_rows(n, 1), v = key_rows(n, 2);
      std::vector<int32_t> pos(n);
      for (int i = 0; i < n; ++i) pos[i] = i;
      seq.append(pos);
      store(seq, k, v, 0, n);
      for (int h = 0; h < kHeads; ++h) {
        const std::vector<float> kb = read(seq, false, h), vb = read(seq, true, h);
        for (int64_t page = 0; page < 3; ++page)  // sealed: slots 0..191
          for (int c = 0; c < kDim; ++c) {
            double lo = INFINITY, hi = -INFINITY;
            for (int64_t s = page * 64; s < page * 64 + 64; ++s) {
              lo = std::min<double>(lo, row_of(k, s, h)[c]);
              hi = std::max<double>(hi, row_of(k, s, h)[c]);
            }
            for (int64_t s = page * 64; s < page * 64 + 64; ++s)
              ASSERT_LE(std::abs(kb[s * kDim + c] - row_of(k, s, h)[c]), half_step_bound(lo, hi, bits))
                  << "bits " << bits << " slot " << s << " channel " << c;
          }
        for (int64_t s = 0; s < 192; ++s)
          for (int g = 0; g < kDim; g += 32) {
            const float* x = row_of(v, s, h) + g;
            const double lo = *std::min_element(x, x + 32), hi = *std::max_element(x, x + 32);
            for (int c = 0; c < 32; ++c)
              ASSERT_LE(std::abs(vb[s * kDim + g + c] - x[c]), half_step_bound(lo, hi, bits)) << "slot " << s;
          }
        // The unfilled last page: the rows as stored, in f16.
        for (int64_t s = 192; s < n; ++s) {
          ASSERT_EQ(std::vector<float>(kb.begin() + s * kDim, kb.begin() + (s + 1) * kDim), f16_row(row_of(k, s, h)));
          ASSERT_EQ(std::vector<float>(vb.begin() + s * kDim, vb.begin() + (s + 1) * kDim), f16_row(row_of(v, s, h)));
        }
      }
      // Bytes: three sealed pages and the f16 stage of 8 rows.
      EXPECT_EQ(seq.held_bytes(), 4 * kHeads * KvPool::page_bytes(kDim, {k_type, v_type}) + 8 * kHeads * kDim * 2 * 2);
    }
  });
}

// Truncating into a sealed page puts its kept rows back in the stage as
// decoded; the pages before stay as they were, and the page seals again once
// refilled. A fork keeps its own stage.
TEST(Kivi, TruncateAndForkKeepEachSequencesRows) {
  KvPool pool(kDim, {KvDType::KIVI_K2, KvDType::KIVI_V4}, 64);
  KvSequence seq(pool, 1, kHeads, 1024);
  std::vector<int32_t> pos(300);
  for (int i = 0; i < 300; ++i) pos[i] = i;
  const std::vector<float> k = key_rows(300, 3), v = key_rows(300, 4);
  seq.append(std::span(pos).first(128));
  store(seq, k, v, 0, 128);
  const std::vector<float> sealed = read(seq, false, 1);
  seq.truncate(100);
  const std::vector<float> kept = read(seq, false, 1);
  for (int64_t s = 0; s < 100; ++s) {
    const std::vector<float> row(sealed.begin() + s * kDim, sealed.begin() + (s + 1) * kDim);
    ASSERT_EQ(std::vector<float>(kept.begin() + s * kDim, kept.begin() + (s + 1) * kDim), s < 64 ? row : f16_row(row.data()))
        << "slot " << s;
  }

  KvSequence other = seq.fork();
  seq.append(std::span(pos).subspan(100, 60));
  store(seq, k, v, 100, 60);
  const std::vector<float> grown = read(seq, false, 1);
  for (int64_t i = 0; i < 64 * kDim; ++i) ASSERT_EQ(grown[i], sealed[i]);  // page 0 untouched
  for (int64_t s = 128; s < 160; ++s)
    ASSERT_EQ(std::vector<float>(grown.begin() + s * kDim, grown.begin() + (s + 1) * kDim), f16_row(row_of(k, s, 1)));
  // The fork still reads its 100 rows as they were, though the page it shares was sealed again by seq.
  EXPECT_EQ(read(other, false, 1), kept);
  EXPECT_EQ(pool.pages_in_use(), 4 * kHeads);  // page 0 shared; the fork's page 1; seq's copy of it and its page 2
}

TEST(Kivi, RowsThatWouldMoveAreRefused) {
  KvPool pool(kDim, {KvDType::KIVI_K4, KvDType::F16}, 64);
  KvSequence seq(pool, 1, kHeads, 1024);
  std::vector<int32_t> pos(70);
  for (int i = 0; i < 70; ++i) pos[i] = i;
  const std::vector<float> k = key_rows(70, 5);
  seq.append(pos);
  store(seq, k, k, 0, 70);
  EXPECT_THROW(seq.erase(3, 5), std::invalid_argument);
  std::vector<std::vector<std::vector<int64_t>>> kept(1, std::vector<std::vector<int64_t>>(kHeads, {0, 69}));
  EXPECT_THROW(seq.keep_rows(kept), std::invalid_argument);
  std::vector<float> row(kDim);
  EXPECT_THROW(seq.write_row(0, 0, 3, row.data(), row.data()), std::invalid_argument);
  EXPECT_THROW(save_kv_file("/tmp/skim_kivi_refused.safetensors", seq, pos, {}), std::invalid_argument);
  EXPECT_THROW(KvPool(96, {KvDType::KIVI_K2, KvDType::F16}, 4), std::invalid_argument);  // keys need 64-value channel blocks
}

}  // namespace
}  // namespace skim::kv
