// DapQ (position-aware pseudo queries; only the abstract is public): the
// observation window's queries should look like the queries decoding will
// ask, and their position matters more than their content. Assumed here (the
// reading docs/kv-policies.md states): SnapKV's scores from the window's own queries
// turned by RoPE to the next `window` positions (each moved forward by the
// window's length), so the scores reflect keys as the coming tokens see them.
#include "kvpolicy/policy.h"

namespace skim::kvpolicy {
namespace {

class FutureQueries final : public Scorer {
 public:
  explicit FutureQueries(int32_t kernel) : snapkv_(make_snapkv_scorer(kernel)) {}
  void score(const ScoreRequest& r, std::vector<float>& scores) const override { snapkv_->score(r, scores); }
  int32_t query_shift(int32_t window) const override { return window; }

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
