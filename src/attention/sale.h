// SALE-style low-bit block estimation (docs/methods.md#sale), adapted to an
// AVX2 CPU: int8 Q.K^T instead of int4 tensor cores.
//
// Per q head and 64-row query block the planner keeps the sink keys and a
// local band, and adds every key block (32 or 64 keys) that holds a key whose
// estimated weight, relative to the exact softmax over sink + local, exceeds
// theta for some row of the block:
//
//   est_ij > m_i + ln(theta * l_i)  =  LSE_i + ln(theta)
//
// where (m_i, l_i) are the row's max and sum over the sink and local keys and
// LSE_i = m_i + ln l_i, computed exactly (float) by the attention kernel on the
// sink + local plan. est_ij is the int8 estimate of the scaled logit:
//   Q per row, symmetric int8 in [-31, 31];
//   K with the per-channel mean over the call's keys removed ("smooth K"), per
//   key symmetric in [-63, 63], stored biased by +64 as uint8 (at most 127);
//   so each _mm256_maddubs_epi16(K_u8, Q_s8) lane is within 2 * 127 * 31 and
//   four of them add up in int16 before widening (4 * 2 * 127 * 31 < 2^15);
//   the bias is taken back out as 64 * sum(Q_s8) per row;
//   est_ij = scale * (s_q s_k (q8 . k8) + q_i . mean).
// The score of a (query block, key block) is max over its rows and keys of
// est_ij - LSE_i; the block is selected when score > ln(theta). The rows are
// est_rows of the block's 64 (Shape::est_rows, default 8), not all of them.
//
// The int8 product runs at about the float FMA rate on the AVX2 machines this
// targets (pmaddubsw/pmaddwd share one multiply pipe on Zen 1), so a full
// int8 Q.K^T would cost half the dense kernel. Two exact float bounds per
// (row, key block) decide most blocks for ~1/20 of that, and only the blocks
// between them get the int8 scan:
//   upper: q.k <= q+ . max_block(k) + q- . min_block(k)  (per-channel box)
//           -> a block whose upper bound is below the threshold is dropped;
//   lower: max_j q.k_j >= q . mean_block(k)
//           -> a block whose lower bound is above it is kept.
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "attention/planner.h"

namespace skim::attention::sale {

// The keys [0, n_keys) of every KV head of one call, smoothed and quantized,
// packed 8 keys at a time: for key vector v (keys 8v..8v+7) and dims 4c..4c+3,
// 32 bytes [key 0: 4 dims][key 1: 4 dims]...[key 7: 4 dims].
class QuantKeys {
 public:
  // Also keeps per-channel min, max and mean of each `block` keys (for the bounds).
  void quantize(const kernels::KvView& kv, int32_t n_kv_heads, int32_t head_dim, int64_t n_keys, int64_t block = 64);

  int32_t head_dim() const { return d_; }
  int64_t n_keys() const { return n_keys_; }
  const uint8_t* kvec(int32_t kv_head, int64_t v) const {
    return packed_.data() + (static_cast<size_t>(kv_head) * n_kvecs_ + v) * 8 * d_;
  }
  const float* scales(int32_t kv_head) const { return scale_.data() + static_cast<size_t>(kv_head) * n_kvecs_ * 8; }
  const float* mean(int32_t kv_head) const { return mean_.data() + static_cast<size_t>(kv_head) * d_; }
  // Per-channel max / min / mean of key block kb (keys [kb*block, (kb+1)*block) that exist).
  int64_t block() const { return block_; }
  const float* block_max(int32_t kv_head, int64_t kb) const { return stat(0, kv_head, kb); }
  const float* block_min(int32_t kv_head, int64_t kb) const { return stat(1, kv_head, kb); }
  const float* block_mean(int32_t kv_head, int64_t kb) const { return stat(2, kv_head, kb); }
  // The dequantized (smoothed) key j: scale_j * (u8 - 64) per dim (tests).
  std::vector<float> dequantized(int32_t kv_head, int64_t j) const;

 private:
  const float* stat(int which, int32_t kv_head, int64_t kb) const {
    return stats_.data() + ((static_cast<size_t>(which) * n_kv_heads_ + kv_head) * n_kblocks_ + kb) * d_;
  }
  int32_t d_ = 0, n_kv_heads_ = 0;
  int64_t n_keys_ = 0, n_kvecs_ = 0, block_ = 64, n_kblocks_ = 0;
  std::vector<uint8_t> packed_;
  std::vector<float> stats_;  // [max, min, mean][kv head][key block][d]
  std::vector<float> scale_;  // per key; padding keys have scale 0
  std::vector<float> mean_;   // per KV head, d values
};

// The query rows of one call, per q head: int8 values, scale, and the per-row
// terms of the estimate.
class QuantRows {
 public:
  // Quantizes the rows (all when null) of every q head and computes
  // q . mean(kv head) with `keys`' means.
  void quantize(const PlanRequest& r, const QuantKeys& keys, const std::vector<int32_t>* rows = nullptr);

  const int8_t* row(int32_t h, int64_t i) const { return q_.data() + (static_cast<size_t>(h) * n_rows_ + i) * d_; }
  float scale(int32_t h, int64_t i) const { return scale_[static_cast<size_t>(h) * n_rows_ + i]; }
  int32_t bias(int32_t h, int64_t i) const { return bias_[static_cast<size_t>(h) * n_rows_ + i]; }
  float dot_mean(int32_t h, int64_t i) const { return dot_mean_[static_cast<size_t>(h) * n_rows_ + i]; }

 private:
  int32_t d_ = 0;
  int64_t n_rows_ = 0;
  std::vector<int8_t> q_;
  std::vector<float> scale_;
  std::vector<int32_t> bias_;   // 64 * sum of the row's int8 values
  std::vector<float> dot_mean_; // q_i . mean(K) in float
};

// max over `rows` of q head `h` and keys [k0, k1) of
//   a_r * (s_k (q8 . k8)) + c_r,   a_r = scale * s_q(r),  c_r = scale * q_r.mean - base[i]
// (base[i] for rows[i]), i.e. the estimated scaled logit minus a per-row
// base. Stops early and returns a value > stop as soon as one is seen (stop =
// +inf: never). base may be null (0). Keys must lie in [0, keys.n_keys()).
float block_score(const QuantRows& q, int32_t h, std::span<const int32_t> rows, const QuantKeys& keys, int32_t kv_head,
                  int64_t k0, int64_t k1, float scale, const float* base,
                  float stop = std::numeric_limits<float>::infinity());

struct Shape {
  int64_t sink = 64;    // keys [0, sink) are always attended
  int64_t local = 128;  // each query block attends [first - local + 1, last]
  int64_t block = 64;   // key block size of the selection (32 or 64)
  // Rows of each 64-row query block the estimate is computed on (evenly
  // spaced, ending with its last row). SALE uses all 64. On this CPU the int8
  // scan costs what float attention does, so fewer rows are what makes the
  // estimate cheap; measured on SmolLM2 (demo prompt, 3.5K keys), 8 rows reach
  // the same or better recall at equal density (theta moves along the curve):
  // the max over 64 rows mostly adds blocks picked by one row's noise.
  int64_t est_rows = 8;
};

// Scores of one call: per (q head, 64-row query block, key block), the
// block's max of est_ij - LSE_i over the keys not already in sink or local
// band; -inf for blocks with no such key.
struct BlockScores {
  int64_t n_qblocks = 0, n_kblocks = 0;
  int32_t n_heads = 0;
  std::vector<float> s;  // [head][qblock][kblock]
  float at(int32_t h, int64_t qb, int64_t kb) const {
    return s[(static_cast<size_t>(h) * n_qblocks + qb) * n_kblocks + kb];
  }
};

// How exact the scores must be. Without a floor every score is the int8
// estimate. With floor (one per q head, e.g. ln theta):
//   blocks whose score is <= floor may report any value <= floor (their upper
//   bound), and blocks above it report the int8 estimate; with early_stop
//   they may instead report any value above the floor (a lower bound, or the
//   int8 scan cut short as soon as it crossed the floor): enough to select.
struct ScoreOptions {
  const std::vector<float>* floor = nullptr;  // a head with floor -inf is skipped (all -inf)
  bool early_stop = false;
};

// Counts of how the blocks of the last score() call were decided.
struct ScoreCounts {
  int64_t dropped_by_bound = 0, kept_by_bound = 0, scanned = 0;
};

// Runs the estimate for a call: quantization, the exact sink + local pass
// (LSE per row, through the attention kernel), the bounds and the int8 scans.
// The buffers are kept between calls.
class Estimator {
 public:
  const BlockScores& score(const PlanRequest& r, const Shape& shape, const ScoreOptions& options = {});
  const ScoreCounts& counts() const { return counts_; }
  // Exact LSE over sink + local of row i of q head h, from the last score()
  // call (only for the rows the estimate uses).
  float partial_lse(int32_t h, int64_t i) const { return lse_[static_cast<size_t>(h) * n_rows_ + i]; }

 private:
  QuantKeys keys_;
  QuantRows rows_;
  std::vector<std::vector<int32_t>> rows_of_block_;
  std::vector<float> lse_, out_;
  int64_t n_rows_ = 0;
  BlockScores scores_;
  ScoreCounts counts_;
};

// The plan: sink + local + every scored block above ln_theta[h] (one value per
// q head; -inf keeps every block, i.e. dense).
Plan build_plan(const PlanRequest& r, const Shape& shape, const BlockScores& scores, const std::vector<float>& ln_theta);

}  // namespace skim::attention::sale
