// DapQ (position-aware pseudo queries; only the abstract is public): the
// observation window's queries should look like the queries decoding will
// ask, and their position matters more than their content. Assumed here (the
// reading docs/kv-policies.md states): SnapKV's scores from the window's own queries
// turned by RoPE to the next `window` positions (each moved forward by the
// window's length), so the scores reflect keys as the coming tokens see them.
#include "kvpolicy/policy.h"

#include <algorithm>

namespace skim::kvpolicy {
namespace {

class FutureQueries final : public Scorer {
 public:
  explicit FutureQueries(int32_t kernel) : snapkv_(make_snapkv_scorer(kernel)) {}
  void score(const ScoreRequest& r, std::vector<float>& scores) const override {
    const int64_t q_dim = static_cast<int64_t>(r.n_q_heads) * r.head_dim;
    std::vector<float> moved(static_cast<size_t>(r.q_rows * q_dim));
    for (int32_t i = 0; i < r.q_rows; ++i)
      std::copy_n(r.q + i * r.q_row_stride, q_dim, moved.data() + i * q_dim);
    const std::vector<int32_t> shifts(static_cast<size_t>(r.q_rows), r.q_rows);
    r.turn(moved.data(), r.q_rows, q_dim, shifts.data());
    ScoreRequest ahead = r;
    ahead.q = moved.data();
    ahead.q_row_stride = q_dim;
    ahead.q_pos0 += r.q_rows;
    snapkv_->score(ahead, scores);
  }

 private:
  std::unique_ptr<Scorer> snapkv_;
};

}  // namespace

PolicyDef dapq_policy() {
  return {{"dapq",
           "DapQ: SnapKV's scores from the window's queries moved to the positions that follow the prompt",
           {{"kernel", "5", "average-pool width over neighbouring keys (odd; 1: no pooling)"}}},
          [](const attention::MethodParams& p) { return std::make_unique<FutureQueries>(pool_kernel(p)); }};
}

}  // namespace skim::kvpolicy
