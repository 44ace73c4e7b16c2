// LOOK-M-style merging (Wan et al., arXiv 2406.18139; the authors' code,
// docs/kv-policies.md): instead of dropping an evicted row, fold it into the
// kept row whose key is closest in cosine, K and V alike (the same
// assignment). `average`: a kept row becomes the mean of itself and the rows
// it absorbs; `pivot`: each absorbed row is first averaged with the kept row.
// Works on the stored values (Hadamard-turned, centred keys): both are linear,
// so a mean there is the mean of the keys.
#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "kernels/kv_codec.h"
#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

constexpr int64_t kEvictedBlock = 256;  // evicted rows compared with every kept row at once

void normalize_rows(float* rows, int64_t n, int32_t d) {
  for (int64_t i = 0; i < n; ++i) {
    float* r = rows + i * d;
    double norm2 = 0.0;
    for (int32_t e = 0; e < d; ++e) norm2 += static_cast<double>(r[e]) * r[e];
    const float inv = norm2 > 0.0 ? static_cast<float>(1.0 / std::sqrt(norm2)) : 0.0f;
    for (int32_t e = 0; e < d; ++e) r[e] *= inv;
  }
}

}  // namespace

std::vector<MergedRow> merge_evicted(const ScoreRequest& r, const std::vector<std::vector<int64_t>>& kept, bool pivot) {
  const int64_t n = r.kv.n_keys, first = r.kv.first_key;
  const int32_t d = r.head_dim;
  std::vector<MergedRow> merged;
  std::vector<float> keys(static_cast<size_t>(n) * d), values(keys.size());
  for (int32_t g = 0; g < r.n_kv_heads; ++g) {
    const std::vector<int64_t>& keep = kept[static_cast<size_t>(g)];
    std::vector<int64_t> evicted;
    for (int64_t s = first, i = 0; s < n; ++s) {
      if (i < static_cast<int64_t>(keep.size()) && keep[static_cast<size_t>(i)] == s) {
        ++i;
      } else {
        evicted.push_back(s);
      }
    }
    if (evicted.empty()) continue;
    kernels::read_k_rows(r.kv, g, first, n - first, d, keys.data() + first * d);
    kernels::read_v_rows(r.kv, g, first, n - first, d, values.data() + first * d);
    const int64_t n_keep = static_cast<int64_t>(keep.size());
    std::vector<float> kept_dirs(static_cast<size_t>(n_keep) * d), evicted_dirs(static_cast<size_t>(kEvictedBlock) * d),
        sim(static_cast<size_t>(kEvictedBlock * n_keep));
    for (int64_t i = 0; i < n_keep; ++i)
      std::copy_n(keys.data() + keep[static_cast<size_t>(i)] * d, d, kept_dirs.data() + i * d);
    normalize_rows(kept_dirs.data(), n_keep, d);
    // Sums of what each kept row absorbs, and how many.
    std::vector<double> k_sum(static_cast<size_t>(n_keep) * d, 0.0), v_sum(k_sum.size(), 0.0);
    std::vector<int64_t> absorbed(static_cast<size_t>(n_keep), 0);
    for (int64_t b0 = 0; b0 < static_cast<int64_t>(evicted.size()); b0 += kEvictedBlock) {
      const int64_t m = std::min<int64_t>(kEvictedBlock, static_cast<int64_t>(evicted.size()) - b0);
      for (int64_t j = 0; j < m; ++j)
        std::copy_n(keys.data() + evicted[static_cast<size_t>(b0 + j)] * d, d, evicted_dirs.data() + j * d);
      normalize_rows(evicted_dirs.data(), m, d);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n_keep), d, 1.0f,
                  evicted_dirs.data(), d, kept_dirs.data(), d, 0.0f, sim.data(), static_cast<int>(n_keep));
      for (int64_t j = 0; j < m; ++j) {
        const float* row = sim.data() + j * n_keep;
        const int64_t t = std::max_element(row, row + n_keep) - row;
        const int64_t e = evicted[static_cast<size_t>(b0 + j)], to = keep[static_cast<size_t>(t)];
        for (int32_t c = 0; c < d; ++c) {
          const double k = keys[e * d + c], v = values[e * d + c];
          k_sum[t * d + c] += pivot ? 0.5 * (k + keys[to * d + c]) : k;
          v_sum[t * d + c] += pivot ? 0.5 * (v + values[to * d + c]) : v;
        }
        ++absorbed[static_cast<size_t>(t)];
      }
    }
    for (int64_t t = 0; t < n_keep; ++t) {
      if (absorbed[static_cast<size_t>(t)] == 0) continue;
      const int64_t s = keep[static_cast<size_t>(t)];
      const double count = 1.0 + static_cast<double>(absorbed[static_cast<size_t>(t)]);
      MergedRow row{g, s, std::vector<float>(static_cast<size_t>(d)), std::vector<float>(static_cast<size_t>(d))};
      for (int32_t c = 0; c < d; ++c) {
        row.k[c] = static_cast<float>((keys[s * d + c] + k_sum[t * d + c]) / count);
        row.v[c] = static_cast<float>((values[s * d + c] + v_sum[t * d + c]) / count);
      }
      merged.push_back(std::move(row));
    }
  }
  return merged;
}

}  // namespace skim::kvpolicy
