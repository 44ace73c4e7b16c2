// H2O (Zhang et al., arXiv 2306.14048; FMInference/H2O's H2OKVCache_LayerWise):
// a row's score is the attention it has received from every query since it
// arrived, summed over the query heads of its KV head. The context adds each
// layer's attention to the rows' scores after every micro-batch, prefill and
// decode (kernels/attention_mass.h), and the scores move with their rows, so
// a decode budget keeps the heavy hitters seen so far. mean=1 divides by the
// number of queries that could see the row (kvpress's ObservedAttentionPress),
// so old rows do not win by age alone.
#include "kvpolicy/policy.h"

#include <algorithm>
#include <stdexcept>

namespace skim::kvpolicy {
namespace {

class ReceivedAttention final : public Scorer {
 public:
  explicit ReceivedAttention(bool mean) : mean_(mean) {}
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    if (static_cast<int32_t>(r.received.size()) != r.n_kv_heads)
      throw std::logic_error("H2O: the context kept no accumulated attention for this sequence");
    const int64_t n = r.kv.n_keys;
    const int32_t last_query = r.q_pos0 + r.q_rows - 1;
    scores.assign(static_cast<size_t>(r.n_kv_heads) * n, 0.0f);
    for (int32_t g = 0; g < r.n_kv_heads; ++g)
      for (int64_t s = r.kv.first_key; s < n; ++s) {
        const float received = r.received[static_cast<size_t>(g)][s];
        scores[static_cast<size_t>(g) * n + s] =
            mean_ ? received / static_cast<float>(std::max(1, last_query - r.kv.position(g, s) + 1)) : received;
      }
  }
  bool accumulates() const override { return true; }

 private:
  bool mean_;
};

}  // namespace

PolicyDef h2o_policy() {
  return {{"h2o", "H2O: the attention each row has received from every query so far (accumulated, prefill and decode)",
           {{"mean", "0", "1: divided by the number of queries that could see the row (ObservedAttention); 0: the sum"}}},
          [](const attention::MethodParams& p) {
            return std::make_unique<ReceivedAttention>(p.integer("mean", 0, 1) == 1);
          }};
}

}  // namespace skim::kvpolicy
