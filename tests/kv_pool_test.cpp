// The KV pool and sequences (mechanism): pages hold what was written with
// their positions, resident memory follows the pages in use, the cap is a cap,
// forks share pages until one side writes (copy-on-write), erase keeps the
// other slots' rows and positions.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/f16.h"
#include "kv/kv_file.h"
#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "simd_targets.h"

namespace skim::kv {
namespace {

double resident_mib() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return static_cast<double>(resident) * sysconf(_SC_PAGE_SIZE) / 1048576.0;
}

constexpr int kDim = 64;

// A row's values encode (layer, head, position, K or V) so a misplaced row
// shows; small integers, exact in f16 and bf16.
float value_of(int layer, int head, int32_t pos, int c, bool v) {
  return static_cast<float>((layer * 31 + head * 7 + pos % 89 + (v ? 50 : 0) + c % 4) % 128);
}

void write_rows(KvSequence& seq, int64_t first, std::span<const int32_t> positions) {
  std::vector<float> row(kDim);
  for (int l = 0; l < seq.n_layer(); ++l)
    for (int h = 0; h < seq.n_head_kv(); ++h)
      for (size_t i = 0; i < positions.size(); ++i)
        for (bool v : {false, true}) {
          for (int c = 0; c < kDim; ++c) row[c] = value_of(l, h, positions[i], c, v);
          kernels::encode_kv_row(row.data(), v ? seq.view(l).v_type : seq.view(l).k_type, kDim,
                                 v ? seq.v_row(l, h, first + static_cast<int64_t>(i)) : seq.k_row(l, h, first + static_cast<int64_t>(i)));
        }
}

int64_t append_written(KvSequence& seq, const std::vector<int32_t>& positions) {
  const int64_t first = seq.append(positions);
  write_rows(seq, first, positions);
  return first;
}

// Every slot of every layer and head reads back the row of its stored position.
void expect_rows(const KvSequence& seq, const std::vector<int32_t>& positions) {
  ASSERT_EQ(seq.size(), static_cast<int64_t>(positions.size()));
  std::vector<float> k(positions.size() * kDim), v(k.size());
  for (int l = 0; l < seq.n_layer(); ++l) {
    const kernels::KvView view = seq.view(l);
    for (int h = 0; h < seq.n_head_kv(); ++h) {
      kernels::read_k_rows(view, h, 0, seq.size(), kDim, k.data());
      kernels::read_v_rows(view, h, 0, seq.size(), kDim, v.data());
      for (size_t s = 0; s < positions.size(); ++s) {
        ASSERT_EQ(view.position(h, static_cast<int64_t>(s)), positions[s]) << "layer " << l << " head " << h << " slot " << s;
        for (int c = 0; c < kDim; c += 13) {
          ASSERT_EQ(k[s * kDim + c], value_of(l, h, positions[s], c, false)) << "slot " << s;
          ASSERT_EQ(v[s * kDim + c], value_of(l, h, positions[s], c, true)) << "slot " << s;
        }
      }
    }
  }
}

std::vector<int32_t> iota(int32_t begin, int32_t end) {
  std::vector<int32_t> p;
  for (int32_t i = begin; i < end; ++i) p.push_back(i);
  return p;
}

TEST(KvPool, ResidentMemoryFollowsThePagesInUse) {
  // SmolLM2's shape (30 layers, 3 KV heads, d 64) with a cap of 128K tokens
  // (2.8 GiB of pages); 1000 tokens take 16 pages per (layer, head): 22.9 MiB.
  constexpr int kLayers = 30, kHeads = 3, kCap = 1 << 17;
  const double before = resident_mib();
  KvPool pool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, int64_t{kCap / kPageRows} * kLayers * kHeads);
  KvSequence seq(pool, kLayers, kHeads, kCap);
  EXPECT_LT(resident_mib() - before, 4.0);  // the page table and refcounts only

  const std::vector<int32_t> positions = iota(0, 1000);
  append_written(seq, positions);
  EXPECT_EQ(pool.pages_in_use(), 16 * kLayers * kHeads);
  const double held_mib = pool.held_bytes() / 1048576.0;
  EXPECT_NEAR(held_mib, 16.0 * kLayers * kHeads * (2 * 64 * 64 * 2 + 256) / 1048576.0, 1e-9);
  const double grown = resident_mib() - before;
  EXPECT_GE(grown, held_mib - 0.5);
  EXPECT_LE(grown, held_mib + 8.0);
  expect_rows(seq, positions);

  seq.clear();
  EXPECT_EQ(pool.pages_in_use(), 0);
}

TEST(KvPool, TheCapIsEnforcedAndNothingIsHalfAppended) {
  KvPool pool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 2 * 4);  // 2 layers x 2 heads x 2 pages
  KvSequence seq(pool, 2, 2, 1000);
  append_written(seq, iota(0, 100));
  EXPECT_THROW(seq.append(iota(100, 200)), std::length_error);  // would need a third page
  EXPECT_EQ(seq.size(), 100);
  expect_rows(seq, iota(0, 100));
  append_written(seq, iota(100, 128));
  EXPECT_EQ(seq.size(), 128);

  KvSequence small(pool, 2, 2, 10);
  EXPECT_THROW(small.append(iota(0, 11)), std::length_error);  // past its context
  EXPECT_THROW(seq.append(std::vector<int32_t>{127}), std::invalid_argument);  // positions must increase
}

TEST(KvPool, RefusesAPoolBeyondItsShapeAndBadFormats) {
  EXPECT_THROW(KvPool(48, {kernels::KvDType::Q4_0, kernels::KvDType::F16}, 4), std::invalid_argument);  // blocks of 32
  EXPECT_THROW(KvPool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 0), std::invalid_argument);
  EXPECT_THROW(KvPool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, int64_t{1} << 31), std::length_error);  // 34 TiB of pages
}

TEST(KvPool, ForkSharesPagesAndCopiesOnWrite) {
  KvPool pool(kDim, {kernels::KvDType::BF16, kernels::KvDType::BF16}, 64);
  KvSequence a(pool, 2, 2, 1000);
  const std::vector<int32_t> prefix = iota(0, 100);  // a full page and a partial one
  append_written(a, prefix);
  const int64_t before = pool.pages_in_use();
  KvSequence b = a.fork();
  EXPECT_EQ(pool.pages_in_use(), before);  // shared, not copied
  EXPECT_EQ(a.page_refs(1, 1, 99), 2);

  // b appends into the shared partial page: it copies that page, a keeps its own.
  std::vector<int32_t> b_positions = prefix;
  for (int32_t p = 500; p < 520; ++p) b_positions.push_back(p);
  append_written(b, std::vector<int32_t>(b_positions.begin() + 100, b_positions.end()));
  EXPECT_EQ(pool.pages_in_use(), before + 4);  // the copied partial page of each (layer, head)
  EXPECT_EQ(a.page_refs(0, 0, 0), 2);          // the full first page stays shared
  EXPECT_EQ(a.page_refs(0, 0, 99), 1);
  expect_rows(a, prefix);
  expect_rows(b, b_positions);

  // a appends different tokens: b's rows are unchanged.
  std::vector<int32_t> a_positions = prefix;
  for (int32_t p = 100; p < 130; ++p) a_positions.push_back(p);
  append_written(a, std::vector<int32_t>(a_positions.begin() + 100, a_positions.end()));
  expect_rows(a, a_positions);
  expect_rows(b, b_positions);
}

TEST(KvPool, EraseMovesLaterSlotsDownWithTheirPositions) {
  KvPool pool(kDim, {kernels::KvDType::F16, kernels::KvDType::F16}, 64);
  KvSequence a(pool, 2, 2, 1000);
  std::vector<int32_t> positions = iota(0, 200);
  append_written(a, positions);
  KvSequence b = a.fork();
  a.erase(10, 90);
  positions.erase(positions.begin() + 10, positions.begin() + 90);
  expect_rows(a, positions);
  expect_rows(b, iota(0, 200));  // the fork saw nothing
  const kernels::KvView view = a.view(1);
  EXPECT_EQ(view.slots_through(0, 9), 10);
  EXPECT_EQ(view.slots_through(0, 50), 10);  // positions 10..89 are gone
  EXPECT_EQ(view.slots_through(0, 90), 11);
  EXPECT_EQ(view.first_slot_at(0, 95), 15);
}

// --kv-f16-sinks: a quantized layer keeps f16 copies of its first rows, which
// its view reads; the pages hold every row as well. A row moved into those
// slots brings its page values, a fork copies the copies, and an emptied
// sequence holds none. A layer keeping fewer rows keeps its copies with them.
// A full-precision side keeps no copies.
TEST(KvPool, F16RowCopiesShadowQuantizedRowsAndMoveWithThem) {
  KvPool pool(kDim, {kernels::KvDType::Q4_0, kernels::KvDType::Q4_0}, 32);
  KvSequence seq(pool, 1, 2, 1000, 8);
  EXPECT_EQ(seq.held_bytes(), 0u);
  seq.append(iota(0, 100));
  std::mt19937 rng(5);
  std::normal_distribution<float> gauss(0.0f, 3.0f);
  std::vector<float> written(static_cast<size_t>(2 * 100 * kDim));
  for (float& x : written) x = gauss(rng);
  // Row s of head h, as K and V, into slots 0..99 of every layer.
  const auto store_written = [&written](KvSequence& into, int layers) {
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < 2; ++h)
        for (int64_t s = 0; s < 100; ++s) {
          const float* row = written.data() + (h * 100 + s) * kDim;
          into.store_row(l, h, s, row, row);
        }
  };
  store_written(seq, 1);
  const auto read = [](const kernels::KvView& view, int h, int64_t s, bool values) {
    std::vector<float> row(kDim);
    if (values) kernels::read_v_rows(view, h, s, 1, kDim, row.data());
    else kernels::read_k_rows(view, h, s, 1, kDim, row.data());
    return row;
  };
  const auto f16 = [](std::vector<float> row) {
    for (float& x : row) x = kernels::f16_to_f32(kernels::f32_to_f16(x));
    return row;
  };
  // The page rows alone: a view without its copies.
  const auto pages_of = [](kernels::KvView v) {
    v.copy_index = nullptr;
    v.copy_slots = 0;
    return v;
  };
  const auto written_f16 = [&](int h, int64_t s) {
    const float* w = written.data() + (h * 100 + s) * kDim;
    return f16(std::vector<float>(w, w + kDim));
  };
  kernels::KvView view = seq.view(0);
  ASSERT_EQ(view.copy_slots, 8);
  EXPECT_EQ(seq.copied_rows(0), 2 * 8);
  const kernels::KvView pages = pages_of(view);
  for (int h = 0; h < 2; ++h)
    for (int64_t s = 0; s < 100; ++s)
      for (const bool values : {false, true}) {
        if (s < 8) EXPECT_EQ(read(view, h, s, values), written_f16(h, s)) << "sink slot " << s;
        else EXPECT_EQ(read(view, h, s, values), read(pages, h, s, values)) << "slot " << s;
        EXPECT_NE(read(pages, h, s, values), written_f16(h, s)) << "the page holds q4_0 rows";
      }
  // Copies move with their rows: slot 50 moved into slot 4 brings its q4_0 values.
  std::vector<std::vector<float>> page_50 = {read(pages, 0, 50, false), read(pages, 1, 50, true)};
  const std::vector<int64_t> kept = {0, 1, 2, 3, 50, 51, 52, 53, 60, 99};
  seq.keep_rows({{kept, kept}});
  view = seq.view(0);
  EXPECT_EQ(read(view, 0, 4, false), page_50[0]);
  EXPECT_EQ(read(view, 1, 4, true), page_50[1]);
  EXPECT_EQ(read(view, 0, 0, false), written_f16(0, 0));  // slot 0 kept its f16 copy
  EXPECT_EQ(seq.copied_rows(0), 2 * 4);
  const KvSequence fork = seq.fork();
  for (int64_t s = 0; s < 10; ++s) EXPECT_EQ(read(fork.view(0), 0, s, false), read(view, 0, s, false));
  seq.truncate(2);
  EXPECT_EQ(seq.copied_rows(0), 2 * 2);
  seq.clear();
  EXPECT_EQ(seq.copy_bytes(0), 0u);

  // A per-layer budget: layer 1 keeps fewer rows, which end where layer 0's
  // do, so its sinks move to later slots with their copies.
  KvSequence layered(pool, 2, 2, 1000, 8);
  layered.append(iota(0, 100));
  store_written(layered, 2);
  std::vector<int64_t> more(20);
  std::iota(more.begin(), more.end(), 0);
  const std::vector<int64_t> fewer = {1, 2, 3, 50, 60, 99};
  const kernels::KvView upper_before = pages_of(layered.view(1));
  std::vector<std::vector<float>> fewer_pages;
  for (const int64_t s : fewer) fewer_pages.push_back(read(upper_before, 1, s, true));
  layered.keep_rows({{more, more}, {fewer, fewer}});
  const kernels::KvView upper = layered.view(1);
  EXPECT_EQ(upper.first_key, 14);
  for (int64_t j = 0; j < 6; ++j) {
    if (fewer[j] < 8) EXPECT_EQ(read(upper, 1, 14 + j, true), written_f16(1, fewer[j])) << "from slot " << fewer[j];
    else EXPECT_EQ(read(upper, 1, 14 + j, true), fewer_pages[j]) << "from slot " << fewer[j];
  }
  // A fork and a cache file keep the moved copies.
  const KvSequence layered_fork = layered.fork();
  EXPECT_EQ(read(layered_fork.view(1), 1, 14, true), read(upper, 1, 14, true));
  const std::vector<int32_t> tokens(20, 1);
  const std::string path = ::testing::TempDir() + "copies.kv";
  save_kv_file(path, layered, tokens, {});
  KvSequence loaded(pool, 2, 2, 1000, 8);
  load_kv_file(read_kv_file(path), loaded);
  for (int l = 0; l < 2; ++l)
    for (int64_t s = layered.view(l).first_key; s < 20; ++s)
      EXPECT_EQ(read(loaded.view(l), 1, s, false), read(layered.view(l), 1, s, false)) << "layer " << l << " slot " << s;
  EXPECT_EQ(loaded.copied_rows(1), layered.copied_rows(1));

  // erase moves later rows down with their copies.
  KvSequence erased(pool, 1, 2, 1000, 8);
  erased.append(iota(0, 100));
  store_written(erased, 1);
  const kernels::KvView before_pages = pages_of(erased.view(0));
  std::vector<std::vector<float>> page_rows;
  for (int64_t s = 8; s < 11; ++s) page_rows.push_back(read(before_pages, 1, s, false));
  erased.erase(2, 5);
  const kernels::KvView after_erase = erased.view(0);
  for (int64_t s = 2; s < 5; ++s) EXPECT_EQ(read(after_erase, 1, s, false), written_f16(1, s + 3)) << "slot " << s;
  for (int64_t s = 5; s < 8; ++s) EXPECT_EQ(read(after_erase, 1, s, false), page_rows[s - 5]) << "slot " << s;

  // keep_originals: every row stored keeps a copy until drop_copies demotes it to its page values.
  KvSequence originals(pool, 1, 2, 1000, 0);
  originals.keep_originals(true);
  originals.append(iota(0, 100));
  store_written(originals, 1);
  EXPECT_EQ(originals.copied_rows(0), 2 * 100);
  const size_t all_copies = originals.copy_bytes(0);
  const std::vector<int64_t> demoted = {3, 40, 41, 99};
  originals.drop_copies(0, {{}, demoted});
  EXPECT_EQ(originals.copied_rows(0), 2 * 100 - 4);
  EXPECT_LT(originals.copy_bytes(0), all_copies);
  const kernels::KvView ov = originals.view(0);
  const kernels::KvView op = pages_of(ov);
  for (int64_t s = 0; s < 100; ++s) {
    const bool is_demoted = std::find(demoted.begin(), demoted.end(), s) != demoted.end();
    EXPECT_EQ(read(ov, 1, s, true), is_demoted ? read(op, 1, s, true) : written_f16(1, s)) << "slot " << s;
    EXPECT_EQ(read(ov, 0, s, true), written_f16(0, s)) << "head 0 keeps every copy, slot " << s;
  }
  EXPECT_TRUE(originals.demoted());
  // Erasing rows without copies before rows with them, then a file: it holds what the sequence reads.
  originals.drop_copies(0, {{10, 11, 12}, {10, 11, 12}});
  originals.erase(10, 13);
  const std::vector<int32_t> kept_tokens(97, 1);
  save_kv_file(path, originals, kept_tokens, {});
  KvSequence reloaded(pool, 1, 2, 1000, 0);
  load_kv_file(read_kv_file(path), reloaded);
  for (int64_t s = 0; s < 97; ++s) EXPECT_EQ(read(reloaded.view(0), 1, s, true), read(originals.view(0), 1, s, true)) << "slot " << s;
  // A file without copies, loaded where sink slots get copies: the page rows, not blank copies.
  KvSequence plain(pool, 1, 2, 1000, 0);
  plain.append(iota(0, 100));
  store_written(plain, 1);
  save_kv_file(path, plain, std::vector<int32_t>(100, 1), {});
  KvSequence with_sinks(pool, 1, 2, 1000, 8);
  load_kv_file(read_kv_file(path), with_sinks);
  EXPECT_EQ(with_sinks.copied_rows(0), 0);
  for (int64_t s = 0; s < 10; ++s) EXPECT_EQ(read(with_sinks.view(0), 0, s, false), read(plain.view(0), 0, s, false)) << "slot " << s;
  // Emptied, a sequence stops keeping originals.
  originals.clear();
  originals.append(iota(0, 10));
  EXPECT_EQ(originals.copied_rows(0), 0);
  EXPECT_FALSE(originals.demoted());

  // f32 keys, q4_0 values: the keys are read as stored, the values from their copies.
  KvPool mixed_pool(kDim, {kernels::KvDType::F32, kernels::KvDType::Q4_0}, 4);
  KvSequence mixed(mixed_pool, 1, 2, 1000, 8);
  mixed.append(iota(0, 10));
  const float* w = written.data();
  mixed.store_row(0, 0, 0, w, w);
  const kernels::KvView mv = mixed.view(0);
  EXPECT_EQ(mv.k_copies, nullptr);
  ASSERT_NE(mv.v_copies, nullptr);
  EXPECT_EQ(read(mv, 0, 0, false), std::vector<float>(w, w + kDim));
  EXPECT_EQ(read(mv, 0, 0, true), f16(std::vector<float>(w, w + kDim)));
}

}  // namespace
}  // namespace skim::kv
