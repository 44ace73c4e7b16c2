#include "kernels/attention_reference.h"

#include <cblas.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/f16.h"

namespace skim::kernels {

void attention_reference(const float* q, int n, int pos0, const KvCache& kv, int layer, int n_head, float* out) {
  const int hd = kv.head_dim(), n_kv_head = kv.n_head_kv(), group = n_head / n_kv_head;
  const int n_keys = pos0 + n, ld = n_head * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> k(static_cast<size_t>(n_keys) * hd), v(k.size()), s(static_cast<size_t>(n) * n_keys);
    int loaded = -1;
#pragma omp for schedule(static)
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      if (g != loaded) {
        f16_to_f32_row(kv.k(layer, g), k.data(), static_cast<int64_t>(n_keys) * hd);
        f16_to_f32_row(kv.v(layer, g), v.data(), static_cast<int64_t>(n_keys) * hd);
        loaded = g;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n_keys, hd, scale, q + h * hd, ld, k.data(), hd, 0.f,
                  s.data(), n_keys);
      for (int i = 0; i < n; ++i) {
        float* row = s.data() + static_cast<size_t>(i) * n_keys;
        const int visible = pos0 + i + 1;  // causal: keys at positions <= the query's
        float mx = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < visible; ++j) mx = std::max(mx, row[j]);
        double sum = 0;
        for (int j = 0; j < visible; ++j) sum += (row[j] = std::exp(row[j] - mx));
        const float inv = static_cast<float>(1.0 / sum);
        for (int j = 0; j < visible; ++j) row[j] *= inv;
        for (int j = visible; j < n_keys; ++j) row[j] = 0.f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, n_keys, 1.f, s.data(), n_keys, v.data(), hd, 0.f,
                  out + h * hd, ld);
    }
  }
}

}  // namespace skim::kernels
