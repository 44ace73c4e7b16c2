// Expected Attention (Devoto et al., arXiv 2510.00636; kvpress
// ExpectedAttentionPress): attention-free at decode time. Future queries are
// modelled as a Gaussian: the mean and covariance of the prompt's queries
// before RoPE, turned by RoPE averaged over the next `future` positions. A
// key's expected softmax weight is then exp(s mu.k + s^2 k'Sigma k / 2)
// (s = 1/sqrt(d)), normalized over the keys, averaged over the query heads of
// each KV head and multiplied by the value's norm.
// Assumed (docs/kv-policies.md): the statistics come from the observation
// window's queries, the only ones kept by then, not from every prompt row.
#include "kvpolicy/policy.h"

#include <algorithm>
#include <cmath>

#include "kernels/kv_codec.h"

namespace skim::kvpolicy {
namespace {

class ExpectedAttention final : public Scorer {
 public:
  ExpectedAttention(int32_t future, bool covariance, bool value_norm)
      : future_(future), covariance_(covariance), value_norm_(value_norm) {}

  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    const int32_t d = r.head_dim, rows = r.q_rows;
    const int64_t q_dim = static_cast<int64_t>(r.n_q_heads) * d, n = r.kv.n_keys, first = r.kv.first_key;
    // Row 0: the mean query; rows 1..: each query minus the mean (the
    // covariance's factors), all before RoPE.
    const int32_t m = covariance_ ? rows + 1 : 1;
    std::vector<float> base(static_cast<size_t>(m * q_dim), 0.0f);
    std::vector<int32_t> back(static_cast<size_t>(rows));
    std::vector<float> unturned(static_cast<size_t>(rows * q_dim));
    for (int32_t i = 0; i < rows; ++i) {
      std::copy_n(r.q + i * r.q_row_stride, q_dim, unturned.data() + i * q_dim);
      back[static_cast<size_t>(i)] = -(r.q_pos0 + i);
    }
    r.turn(unturned.data(), rows, q_dim, back.data());
    for (int32_t i = 0; i < rows; ++i)
      for (int64_t e = 0; e < q_dim; ++e) base[e] += unturned[i * q_dim + e] / static_cast<float>(rows);
    if (covariance_)
      for (int32_t i = 0; i < rows; ++i)
        for (int64_t e = 0; e < q_dim; ++e) base[(i + 1) * q_dim + e] = unturned[i * q_dim + e] - base[e];
    const std::vector<float> stats = average_rotation(r, base, m, q_dim);

    std::vector<float> keys(static_cast<size_t>(n) * d), values(keys.size()), logits(static_cast<size_t>(n));
    scores.assign(static_cast<size_t>(r.n_kv_heads) * n, 0.0f);
    for (int32_t g = 0; g < r.n_kv_heads; ++g) {
      kernels::read_k_rows(r.kv, g, first, n - first, d, keys.data() + first * d);
      float* out = scores.data() + static_cast<size_t>(g) * n;
      for (int32_t h = g * r.group(); h < (g + 1) * r.group(); ++h) {
        const float* mu = stats.data() + static_cast<int64_t>(h) * d;
        for (int64_t s = first; s < n; ++s) {
          const float* k = keys.data() + s * d;
          double mean_dot = 0.0, spread = 0.0;
          for (int32_t e = 0; e < d; ++e) mean_dot += static_cast<double>(mu[e]) * k[e];
          for (int32_t i = 1; i < m; ++i) {
            const float* u = stats.data() + i * q_dim + static_cast<int64_t>(h) * d;
            double dot = 0.0;
            for (int32_t e = 0; e < d; ++e) dot += static_cast<double>(u[e]) * k[e];
            spread += dot * dot;
          }
          if (m > 1) spread /= rows;
          logits[s] = static_cast<float>(r.scale * mean_dot + 0.5 * r.scale * r.scale * spread);
        }
        const float mx = *std::max_element(logits.begin() + first, logits.end());
        double sum = 0.0;
        for (int64_t s = first; s < n; ++s) sum += logits[s] = std::exp(logits[s] - mx);
        for (int64_t s = first; s < n; ++s) out[s] += static_cast<float>(logits[s] / sum) / static_cast<float>(r.group());
      }
      if (!value_norm_) continue;
      kernels::read_v_rows(r.kv, g, first, n - first, d, values.data() + first * d);
      for (int64_t s = first; s < n; ++s) {
        double norm2 = 0.0;
        for (int32_t e = 0; e < d; ++e) norm2 += static_cast<double>(values[s * d + e]) * values[s * d + e];
        out[s] *= static_cast<float>(std::sqrt(norm2));
      }
    }
  }

 private:
  // Each of the m rows turned by RoPE averaged over the `future` positions
  // after the window: (1/F) sum_t R(t) x, a linear map, so it applies to the
  // mean and to the covariance's factors alike (Sigma' = R Sigma R').
  std::vector<float> average_rotation(const ScoreRequest& r, const std::vector<float>& base, int32_t m,
                                      int64_t q_dim) const {
    constexpr int32_t kBatch = 64;  // future positions turned at once
    const int32_t next = r.q_pos0 + r.q_rows;
    std::vector<float> sum(base.size(), 0.0f), turned(static_cast<size_t>(kBatch) * base.size());
    std::vector<int32_t> shifts(static_cast<size_t>(kBatch) * m);
    for (int32_t t0 = 0; t0 < future_; t0 += kBatch) {
      const int32_t count = std::min(kBatch, future_ - t0);
      for (int32_t t = 0; t < count; ++t) {
        std::copy(base.begin(), base.end(), turned.begin() + static_cast<int64_t>(t) * m * q_dim);
        std::fill_n(shifts.begin() + static_cast<int64_t>(t) * m, m, next + t0 + t);
      }
      r.turn(turned.data(), static_cast<int64_t>(count) * m, q_dim, shifts.data());
      for (int32_t t = 0; t < count; ++t)
        for (size_t e = 0; e < base.size(); ++e) sum[e] += turned[static_cast<size_t>(t) * base.size() + e];
    }
    for (float& x : sum) x /= static_cast<float>(future_);
    return sum;
  }

  int32_t future_;
  bool covariance_, value_norm_;
};

}  // namespace

PolicyDef expected_attention_policy() {
  return {{"expected",
           "Expected Attention: the softmax weight a Gaussian model of the next queries (mean and covariance, "
           "RoPE-averaged over future positions) puts on each key, times the value's norm",
           {{"future", "512", "future positions the queries' RoPE is averaged over"},
            {"cov", "1", "1: the queries' covariance widens the estimate; 0: their mean alone"},
            {"vnorm", "1", "1: scores times the value's L2 norm; 0: not"}}},
          [](const attention::MethodParams& p) {
            return std::make_unique<ExpectedAttention>(static_cast<int32_t>(p.integer("future", 1, 1 << 16)),
                                                       p.integer("cov", 0, 1) != 0, p.integer("vnorm", 0, 1) != 0);
          }};
}

}  // namespace skim::kvpolicy
