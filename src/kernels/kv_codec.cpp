#include "kernels/kv_codec.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <cmath>
#include <stdexcept>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kv_codec.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/kv_codec-inl.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {

void ReadRows(const KvView& kv, bool values, int32_t head, int64_t slot0, int64_t count, int32_t d, float* dst) {
  const hn::ScalableTag<float> df;
  for (int64_t j = 0; j < count; ++j, dst += d) DecodeViewRow(df, kv, values, head, slot0 + j, d, dst);
}

void EncodeRow(const float* src, KvDType type, int32_t n, void* dst) {
  EncodeKvRow(hn::ScalableTag<float>(), src, type, n, dst);
}

void EncodeKeyPage(const float* src, int32_t rows, KvDType type, int32_t d, int64_t row_bytes, void* dst, void* params) {
  EncodeKiviKeyPage(src, rows, kv_kivi_bits(type), d, row_bytes, static_cast<uint8_t*>(dst), params);
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels {

HWY_EXPORT(ReadRows);
HWY_EXPORT(EncodeRow);
HWY_EXPORT(EncodeKeyPage);

namespace {
// Page ids of a contiguous view: head h is page h.
constexpr int kMaxContiguousHeads = 1024;
const uint32_t* identity_pages() {
  static const auto table = [] {
    static uint32_t ids[kMaxContiguousHeads];
    for (uint32_t i = 0; i < kMaxContiguousHeads; ++i) ids[i] = i;
    return ids;
  }();
  return table;
}
}  // namespace

KvView KvView::contiguous(const void* k, const void* v, KvDType type, int64_t head_stride, int64_t row_stride,
                          int64_t n_keys, const int32_t* positions) {
  KvView view;
  view.k_type = view.v_type = type;
  view.k = static_cast<const uint8_t*>(k);
  view.v = static_cast<const uint8_t*>(v);
  view.page_ids = identity_pages();
  view.pages_per_head = 1;
  view.page_bytes = kv_row_bytes(type, head_stride);
  view.k_row_bytes = view.v_row_bytes = kv_row_bytes(type, row_stride);
  view.page_shift = 31;
  view.positions = positions;
  view.pos_page_stride = 0;  // every head reads the same positions
  view.n_keys = n_keys;
  return view;
}

namespace {
// Lloyd's iteration for the N(0, 1) density: each level moves to the mean of
// its cell, each cell boundary to the midpoint of its two levels.
std::vector<float> lloyd_max_gaussian(int levels) {
  const auto pdf = [](double t) { return std::exp(-0.5 * t * t) / std::sqrt(2.0 * M_PI); };
  const auto cdf = [](double t) { return 0.5 * std::erfc(-t / std::sqrt(2.0)); };
  std::vector<double> c(static_cast<size_t>(levels));
  std::vector<float> padded(kTqCodebookFloats, 0.0f);
  for (int k = 0; k < levels; ++k) c[k] = -3.0 + 6.0 * (k + 0.5) / levels;
  for (double moved = 1.0; moved > 1e-13;) {  // converges linearly: some 10^4 rounds
    moved = 0.0;
    for (int k = 0; k < levels; ++k) {
      const double lo = k == 0 ? -INFINITY : 0.5 * (c[k - 1] + c[k]);
      const double hi = k == levels - 1 ? INFINITY : 0.5 * (c[k] + c[k + 1]);
      const double mass = cdf(hi) - cdf(lo);
      const double mean = ((std::isinf(lo) ? 0.0 : pdf(lo)) - (std::isinf(hi) ? 0.0 : pdf(hi))) / mass;
      moved = std::max(moved, std::abs(mean - c[k]));
      c[k] = mean;
    }
  }
  std::copy(c.begin(), c.end(), padded.begin());
  return padded;
}
}  // namespace

const float* tq_codebook(int bits) {
  static const std::array<std::vector<float>, 3> books = {lloyd_max_gaussian(4), lloyd_max_gaussian(8),
                                                          lloyd_max_gaussian(16)};
  if (bits < 2 || bits > 4) throw std::invalid_argument("TurboQuant codebooks have 2, 3 or 4 bits");
  return books[static_cast<size_t>(bits - 2)].data();
}

const float* qjl_matrix(int32_t n) {
  if (n <= 0 || n > kMaxKvRow || n % 16 != 0)
    throw std::invalid_argument("qjl_matrix: a row of a multiple of 16 values, at most 512");
  // One matrix per row length, made on first use: standard normals from
  // splitmix64 through Box-Muller, so every platform draws the same matrix.
  static std::array<std::vector<float>, kMaxKvRow / 16 + 1> matrices;
  static std::array<std::once_flag, kMaxKvRow / 16 + 1> made;
  std::vector<float>& m = matrices[static_cast<size_t>(n / 16)];
  std::call_once(made[static_cast<size_t>(n / 16)], [&m, n] {
    uint64_t state = 0x51A7C0DEull + static_cast<uint64_t>(n);
    const auto uniform = [&state] {  // (0, 1]
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return (static_cast<double>((z ^ (z >> 31)) >> 11) + 1.0) / 9007199254740992.0;
    };
    m.resize(static_cast<size_t>(n) * n);
    for (size_t i = 0; i < m.size(); i += 2) {
      const double radius = std::sqrt(-2.0 * std::log(uniform())), angle = 2.0 * M_PI * uniform();
      m[i] = static_cast<float>(radius * std::cos(angle));
      m[i + 1] = static_cast<float>(radius * std::sin(angle));
    }
  });
  return m.data();
}

void read_k_rows(const KvView& kv, int32_t head, int64_t slot0, int64_t count, int32_t head_dim, float* dst) {
  HWY_DYNAMIC_DISPATCH(ReadRows)(kv, false, head, slot0, count, head_dim, dst);
}

void read_v_rows(const KvView& kv, int32_t head, int64_t slot0, int64_t count, int32_t head_dim, float* dst) {
  HWY_DYNAMIC_DISPATCH(ReadRows)(kv, true, head, slot0, count, head_dim, dst);
}

void encode_kv_row(const float* src, KvDType type, int32_t n, void* dst) {
  if (kv_grouped(type)) throw std::logic_error("a grouped KV format is encoded a page at a time");
  HWY_DYNAMIC_DISPATCH(EncodeRow)(src, type, n, dst);
}

void encode_kv_key_page(const float* src, int32_t rows, KvDType type, int32_t n, int64_t row_bytes, void* dst,
                        void* params) {
  if (!kv_grouped(type) || rows > 64 || n % 64 != 0)
    throw std::logic_error("encode_kv_key_page: a grouped format, at most 64 rows of a multiple of 64 values");
  HWY_DYNAMIC_DISPATCH(EncodeKeyPage)(src, rows, type, n, row_bytes, dst, params);
}

}  // namespace skim::kernels
#endif  // HWY_ONCE
