// The KV cache's storage: rows read back what was written, unwritten rows are
// zero, and resident memory follows the rows written, not the capacity.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <fstream>

#include "kv/kv_cache.h"

namespace skim {
namespace {

double resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return static_cast<double>(resident) * sysconf(_SC_PAGE_SIZE) / 1048576.0;
}

TEST(KvCache, ResidentMemoryFollowsTheRowsWritten) {
  // SmolLM2's shape (30 layers, 3 KV heads, d 64) with room for 128K tokens:
  // 2.8 GiB reserved. Writing 1024 tokens' rows touches 22.5 MiB.
  constexpr int kLayers = 30, kHeads = 3, kDim = 64, kCapacity = 1 << 17, kWritten = 1024;
  const double before = resident_mib();
  KvCache kv(kLayers, kHeads, kDim, kCapacity);
  EXPECT_NEAR(kv.bytes() / 1048576.0, 2880.0, 1e-9);
  EXPECT_LT(resident_mib() - before, 1.0);

  for (int l = 0; l < kLayers; ++l)
    for (int h = 0; h < kHeads; ++h)
      for (int i = 0; i < kWritten * kDim; ++i) {
        kv.k(l, h)[i] = static_cast<uint16_t>(l + h + i);
        kv.v(l, h)[i] = static_cast<uint16_t>(l * h + i);
      }
  kv.resize(kWritten);
  const double held_mib = kv.held_bytes() / 1048576.0;
  EXPECT_NEAR(held_mib, 22.5, 1e-9);
  const double grown = resident_mib() - before;
  EXPECT_GE(grown, held_mib - 0.5);
  EXPECT_LE(grown, held_mib + 8.0);

  for (int l = 0; l < kLayers; l += 7)
    for (int h = 0; h < kHeads; ++h) {
      EXPECT_EQ(kv.k(l, h)[kWritten * kDim - 1], static_cast<uint16_t>(l + h + kWritten * kDim - 1));
      EXPECT_EQ(kv.v(l, h)[5], static_cast<uint16_t>(l * h + 5));
      EXPECT_EQ(kv.k(l, h)[static_cast<int64_t>(kCapacity - 1) * kDim], 0);  // never written: zero
    }
}

TEST(KvCache, RefusesACapacityBeyondMemory) {
  EXPECT_THROW(KvCache(30, 3, 64, 1 << 30), std::length_error);  // 22.5 TiB
}

}  // namespace
}  // namespace skim
