// MInference block-sparse (docs/methods.md#minference-block-sparse): Q and K
// mean-pooled over 64-row / 64-key blocks (E2), block pairs scored by the raw
// pooled dot product (no scale, no softmax), and each query block keeps its
// top-k key blocks, plus the sink block 0 and the key blocks its own rows lie
// in (the diagonal).
#include <algorithm>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

class BlockTopkPlanner : public Planner {
 public:
  explicit BlockTopkPlanner(int64_t topk) : topk_(topk) {}

  // The mass estimate is the pooled blocks' softmax at the attention scale.
  bool estimates_mass() const override { return true; }
  void estimate_mass(const PlanRequest& r, BlockScores& mass) override {
    keys_.load(r);
    estimate_pooled(r, keys_, KeySelection::kBlock, r.scale, true, mass);
  }

  std::optional<Plan> plan(const PlanRequest& r) override {
    constexpr int64_t B = KeySelection::kBlock;
    keys_.load(r);
    estimate_pooled(r, keys_, B, 1.0f, false, est_);
    KeySelection sel(r);
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * sel.n_blocks() * est_.n_kb * 8))
    {
      std::vector<int32_t> picked;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          const int64_t f = sel.block_first(qb), l = sel.block_last(qb);
          const int64_t diag = f / B;  // first key block holding the query block's rows
          sel.add_range(h, qb, 0, B);
          sel.add_range(h, qb, diag * B, l + 1);
          // Candidates: key blocks 1 .. diag-1 (before the diagonal, after the sink).
          if (diag > 1) {
            top_k(est_.row(h, qb) + 1, diag - 1, topk_, picked);
            for (int32_t c : picked) sel.add_key_block(h, qb, c + 1, B);
          }
        }
      }
    }
    return sel.build();
  }

 private:
  int64_t topk_;
  KeysF32 keys_;
  BlockScores est_;
};

}  // namespace

MethodDef block_sparse_method() {
  AttentionMethodInfo info{"block_sparse",
                           "MInference block-sparse: mean-pooled 64-blocks, top-k key blocks per query block "
                           "(raw dot product) + sink block + diagonal",
                           {{"topk", "16", "key blocks of 64 per query block, besides the sink and diagonal blocks"},
                            crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            return std::make_unique<BlockTopkPlanner>(p.integer("topk", 0, int64_t{1} << 24));
          }};
}

}  // namespace skim::attention
