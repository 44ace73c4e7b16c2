#include "kernels/attention_reference.h"

#include <cblas.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/kv_codec.h"

namespace skim::kernels {

void attention_reference(const float* q, int n, int q_pos0, const KvView& kv, int n_head, int n_head_kv, int hd,
                         float* out, int window) {
  const int group = n_head / n_head_kv, ld = n_head * hd;
  const int first = static_cast<int>(kv.first_key), n_keys = static_cast<int>(kv.n_keys - kv.first_key);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> k(static_cast<size_t>(n_keys) * hd), v(k.size()), s(static_cast<size_t>(n) * n_keys);
    std::vector<int32_t> pos(static_cast<size_t>(n_keys));
    int loaded = -1;
#pragma omp for schedule(static)
    for (int h = 0; h < n_head; ++h) {
      const int g = h / group;
      if (g != loaded) {
        read_k_rows(kv, g, first, n_keys, hd, k.data());
        read_v_rows(kv, g, first, n_keys, hd, v.data());
        for (int j = 0; j < n_keys; ++j) pos[j] = kv.position(g, first + j);
        loaded = g;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n_keys, hd, scale, q + h * hd, ld, k.data(), hd, 0.f,
                  s.data(), n_keys);
      for (int i = 0; i < n; ++i) {
        float* row = s.data() + static_cast<size_t>(i) * n_keys;
        const int32_t qpos = q_pos0 + i;  // causal: keys stored at positions <= the query's
        const auto visible = [&](int j) { return pos[j] <= qpos && (window <= 0 || pos[j] > qpos - window); };
        float mx = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < n_keys; ++j)
          if (visible(j)) mx = std::max(mx, row[j]);
        double sum = 0;
        for (int j = 0; j < n_keys; ++j) sum += (row[j] = visible(j) ? std::exp(row[j] - mx) : 0.f);
        const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.f;
        for (int j = 0; j < n_keys; ++j) row[j] *= inv;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, n_keys, 1.f, s.data(), n_keys, v.data(), hd, 0.f,
                  out + h * hd, ld);
    }
  }
}

}  // namespace skim::kernels
