// LongHeads (docs/methods.md#longheads), from its abstract: every q head picks
// its own key chunks, so each head attends to a bounded span while the heads
// together cover the context. Keys are cut into `chunk`-key chunks; each
// (q head, 64-row query block) keeps the first chunk, the chunk holding the
// block's first row and the one before it (the local context), and its top k
// other chunks by the block's mean query against the chunk's keys. A chunk is
// scored by its best 64-key block (mean-pooled, E2): the mean of a whole
// chunk dilutes a short relevant passage chunk / 64 times.
#include <algorithm>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

class LongHeadsPlanner : public Planner {
 public:
  LongHeadsPlanner(int64_t chunk, int64_t k) : chunk_(chunk), k_(k) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    constexpr int64_t B = KeySelection::kBlock;
    keys_.load(r);
    estimate_pooled(r, keys_, B, r.scale, false, est_);
    KeySelection sel(r);
    const int64_t blocks_per_chunk = chunk_ / B;
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * sel.n_blocks() * est_.n_kb * 4))
    {
      std::vector<float> scores;
      std::vector<int32_t> picked;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          const int64_t local = std::max<int64_t>(sel.block_first(qb) / chunk_ - 1, 0);  // first local chunk
          sel.add_range(h, qb, 0, chunk_);
          sel.add_range(h, qb, local * chunk_, sel.block_last(qb) + 1);
          // Candidates: chunks 1 .. local - 1, each scored by its best key block.
          if (local <= 1) continue;
          const float* block_scores = est_.row(h, qb);
          scores.resize(static_cast<size_t>(local - 1));
          for (int64_t c = 1; c < local; ++c)
            scores[c - 1] = *std::max_element(block_scores + c * blocks_per_chunk, block_scores + (c + 1) * blocks_per_chunk);
          top_k(scores.data(), local - 1, k_, picked);
          for (int32_t c : picked) sel.add_key_block(h, qb, c + 1, chunk_);
        }
      }
    }
    return sel.build();
  }

 private:
  int64_t chunk_, k_;
  KeysF32 keys_;
  BlockScores est_;
};

}  // namespace

MethodDef longheads_method() {
  AttentionMethodInfo info{"longheads",
                           "LongHeads: each q head keeps its top-k key chunks per query block (scored by the best "
                           "64-key block of the chunk) + the first chunk + the local chunks",
                           {{"chunk", "128", "chunk size in keys (a multiple of 64)"},
                            {"k", "6", "chunks per query block and head, besides the first and local chunks"},
                            crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const int64_t chunk = p.integer("chunk", KeySelection::kBlock, int64_t{1} << 20);
            if (chunk % KeySelection::kBlock != 0)
              throw std::invalid_argument(
                  fmt::format("longheads: chunk={} is not a multiple of {}", chunk, KeySelection::kBlock));
            return std::make_unique<LongHeadsPlanner>(chunk, p.integer("k", 0, int64_t{1} << 24));
          }};
}

}  // namespace skim::attention
