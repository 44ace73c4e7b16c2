// XAttention (docs/methods.md#xattention): the antidiagonal estimate (E3, stride S)
// gives each (query block, key block) an estimated attention mass; each query
// block keeps key block 0 (sink) and the key blocks its own rows lie in (the
// diagonal), then the other blocks in descending mass for as long as the mass
// kept so far is below tau times the block row's total (the smallest prefix
// reaching tau).
#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "attention/estimate.h"
#include "attention/selection.h"

namespace skim::attention {
namespace {

class XAttentionPlanner : public Planner {
 public:
  XAttentionPlanner(int64_t stride, int64_t block, double tau) : stride_(stride), block_(block), tau_(tau) {}

  bool estimates_mass() const override { return block_ == KeySelection::kBlock; }
  void estimate_mass(const PlanRequest& r, BlockScores& mass) override {
    keys_.load(r, stride_);
    estimate_antidiag(r, keys_, stride_, KeySelection::kBlock, mass);
    normalize_rows(mass);
  }

  std::optional<Plan> plan(const PlanRequest& r) override {
    const int64_t B = block_, sel_per_block = B / KeySelection::kBlock;
    keys_.load(r, stride_);
    estimate_antidiag(r, keys_, stride_, B, est_);
    KeySelection sel(r);
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * est_.n_qb * est_.n_kb * 16))
    {
      std::vector<int32_t> order;
      std::vector<char> keep;
#pragma omp for collapse(2) schedule(dynamic, 4)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        for (int64_t qb = 0; qb < est_.n_qb; ++qb) {
          const float* e = est_.row(h, qb);
          const int64_t vis = est_.visible(qb);
          const int64_t diag = (r.q_slot0() + qb * B) / B;  // first key block holding the block's rows
          keep.assign(static_cast<size_t>(vis), 0);
          double total = 0, acc = 0;
          for (int64_t c = 0; c < vis; ++c) total += e[c];
          keep[0] = 1;
          for (int64_t c = diag; c < vis; ++c) keep[c] = 1;
          order.clear();
          for (int64_t c = 0; c < vis; ++c) {
            if (keep[c])
              acc += e[c];
            else
              order.push_back(static_cast<int32_t>(c));
          }
          std::sort(order.begin(), order.end(), [e](int32_t a, int32_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); });
          const double target = tau_ * total;
          for (int32_t c : order) {
            if (tau_ < 1.0 && acc >= target) break;
            acc += e[c];
            keep[c] = 1;
          }
          // Emit runs of kept blocks as ranges, for both 64-row tiles of a 128-row block.
          for (int64_t c = 0; c < vis;) {
            if (!keep[c]) {
              ++c;
              continue;
            }
            int64_t c1 = c;
            while (c1 < vis && keep[c1]) ++c1;
            for (int64_t s = qb * sel_per_block; s < std::min(sel.n_blocks(), (qb + 1) * sel_per_block); ++s)
              sel.add_range(h, s, c * B, c1 * B);
            c = c1;
          }
        }
      }
    }
    return sel.build();
  }

 private:
  int64_t stride_, block_;
  double tau_;
  KeysF32 keys_;
  BlockScores est_;
};

}  // namespace

MethodDef xattention_method() {
  AttentionMethodInfo info{"xattention",
                           "XAttention: strided antidiagonal block estimate, per-row cumulative threshold tau "
                           "+ sink block + diagonal",
                           {{"stride", "8", "antidiagonal stride S (a divisor of block; estimate cost 1/(2S) of dense)"},
                            {"block", "64", "block size in keys / query rows (a multiple of 64)"},
                            {"tau", "0.9", "estimated attention mass each query block's kept key blocks must reach"},
                            crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            const int64_t stride = p.integer("stride", 1, 64), block = p.integer("block", KeySelection::kBlock, 1024);
            const double tau = p.number("tau", 0.0, 1.0);
            if (block % KeySelection::kBlock != 0)
              throw std::invalid_argument(
                  fmt::format("xattention: block={} is not a multiple of {}", block, KeySelection::kBlock));
            if (block % stride != 0)
              throw std::invalid_argument(fmt::format("xattention: stride={} does not divide block={}", stride, block));
            return std::make_unique<XAttentionPlanner>(stride, block, tau);
          }};
}

}  // namespace skim::attention
