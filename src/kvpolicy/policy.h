// KV selection policies: after a prompt's prefill (and, under a budget, during
// decode) a policy decides which rows of a sequence's cache stay, per (layer,
// KV head), from scores; the pool (src/kv/) only moves and frees what they
// name. Every policy shares the same rules: the first `sink` positions and the
// last `window` rows are always kept, each KV head keeps the same number of
// rows, and the rest of the budget goes to the highest scores.
// docs/kv-policies.md says what each scorer computes and what it assumed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attention/planner.h"
#include "kernels/elementwise.h"
#include "kernels/kv_view.h"
#include "skim/attention.h"

namespace skim::kvpolicy {

// One layer of one sequence, after its attention ran on the chunk that ends
// the prompt (or on a decode step).
struct ScoreRequest {
  int32_t layer = 0, n_layers = 1;
  int32_t n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
  // The observation window: the last query rows of the chunk, [q_rows][n_q_heads * head_dim]
  // (row stride q_row_stride), at positions q_pos0 .., in the basis the keys are stored in.
  const float* q = nullptr;
  int64_t q_row_stride = 0;
  int32_t q_rows = 0;
  int32_t q_pos0 = 0;
  kernels::KvView kv;  // the layer's cache (the window's keys included): it holds slots [kv.first_key, kv.n_keys)
  float scale = 0;     // of q.k in the softmax
  // Turns rows laid out like q by RoPE (the model's rotation, in the keys'
  // basis): scorers that ask what later queries will see move queries with it.
  kernels::QueryTurn turn;
  // Per KV head, the attention each slot has received (kv::KvSequence::row_scores),
  // for a policy that accumulates it (Scorer::accumulates); empty otherwise.
  std::vector<const float*> received;
  int32_t group() const { return n_q_heads / n_kv_heads; }
};

// Scores per KV head and slot, higher = keep: scores[g * kv.n_keys + slot]
// (slots before kv.first_key are not held and not scored).
class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual void score(const ScoreRequest& r, std::vector<float>& scores) const = 0;
  // The rows layer r.layer keeps when the policy keeps `target` rows per
  // layer, always the first `sink` positions and the last `window` rows: a
  // per-layer budget (PyramidKV, ZipVL) answers its own count; by default
  // every layer keeps `target`.
  virtual int64_t layer_target(const ScoreRequest& r, const std::vector<float>& scores, int64_t target,
                               int32_t sink, int32_t window) const {
    (void)r, (void)scores, (void)sink, (void)window;
    return target;
  }
  // Whether layer_target reads the scores: such a policy judges every prompt,
  // even when `keep` asks for no cut.
  virtual bool adaptive() const { return false; }
  // Whether it scores from the attention rows have received from every query
  // (ScoreRequest::received), which the context then accumulates.
  virtual bool accumulates() const { return false; }
  // Whether the policy also chooses the precision of the rows it keeps
  // (ARKV): the best-scored keep their original f16 values, the others only
  // their quantized page rows. A layer's claim on original rows is its
  // preference, compared across the layers of a cut (KvPolicy::original_share).
  virtual bool mixed_precision() const { return false; }
  // score(), and the layer's preference from the same window attention.
  virtual double score_and_prefer(const ScoreRequest& r, std::vector<float>& scores) const {
    score(r, scores);
    return 1.0;
  }
};

// A kept row's new K and V once evicted rows were merged into it (merge=).
struct MergedRow {
  int32_t head = 0;
  int64_t slot = 0;
  std::vector<float> k, v;
};

class KvPolicy {
 public:
  // "NAME[:key=value,...]" (skim info --kv lists them). Throws std::invalid_argument.
  explicit KvPolicy(const std::string& spec);
  ~KvPolicy();

  const std::string& name() const { return name_; }
  // Rows to keep of a prompt that left n slots; n when the policy keeps everything.
  int64_t target_after_prompt(int64_t n) const;
  // The decode-time cap (0: none): past it by a page, the cache is cut back to it.
  int64_t budget() const { return budget_; }
  int32_t window() const { return window_; }
  // Whether the policy decides its counts from scores, even with nothing to cut (Scorer::adaptive).
  bool adaptive() const { return scorer_->adaptive(); }
  // Whether the context must accumulate the attention each row receives (Scorer::accumulates).
  bool accumulates() const { return scorer_->accumulates(); }
  bool mixed_precision() const { return scorer_->mixed_precision(); }
  // Per layer, the share of its ranked rows (select) a mixed-precision policy
  // keeps original: its preference over the largest of the cut's layers
  // (ARKV's origin budget); layers without a preference (NaN: not scored) keep all.
  static std::vector<double> original_share(const std::vector<double>& preference);
  // Whether evicted rows are merged into their closest kept row (merge=average|pivot).
  bool merges() const { return merge_ != "none"; }
  // The kept rows that absorb evicted ones (not in `kept`), with their merged values (merge.cpp).
  std::vector<MergedRow> merge(const ScoreRequest& r, const std::vector<std::vector<int64_t>>& kept) const;
  // Per KV head, the slots to keep, ascending: `target` of them (at most the
  // layer's held rows), or the layer's own count under a per-layer budget.
  // `ranked`, when given, receives per KV head the kept slots chosen by score
  // (neither sinks nor window), best first; a mixed-precision policy is then
  // scored even when it keeps every row, and `preference`, when given,
  // receives the layer's preference (Scorer::score_and_prefer).
  std::vector<std::vector<int64_t>> select(const ScoreRequest& r, int64_t target,
                                           std::vector<std::vector<int64_t>>* ranked = nullptr,
                                           double* preference = nullptr) const;

 private:
  std::string name_;
  std::unique_ptr<Scorer> scorer_;
  double keep_ = 1.0;
  int64_t budget_ = 0;
  int32_t sink_ = 4, window_ = 32;
  std::string merge_ = "none";
};

// Every policy, for skim info --kv.
const std::vector<AttentionMethodInfo>& policy_infos();

// Helpers for scorers.
// probs[(h * q_rows + i) * n_keys + slot]: softmax over the held keys window
// row i may see (stored position <= its own), per q head h; 0 for the others.
void window_attention(const ScoreRequest& r, std::vector<float>& probs);
// Per KV head, the window's attention summed over its rows and the group's q heads.
void window_attention_mass(const ScoreRequest& r, std::vector<float>& mass);

// A policy's registration: its info (parameters with defaults) and a factory
// reading its own parameters.
struct PolicyDef {
  AttentionMethodInfo info;
  std::function<std::unique_ptr<Scorer>(const attention::MethodParams&)> make;
};
PolicyDef streaming_policy();
PolicyDef snapkv_policy();
PolicyDef tova_policy();
PolicyDef h2o_policy();
PolicyDef keydiff_policy();
PolicyDef dapq_policy();
PolicyDef expected_attention_policy();
PolicyDef pyramid_policy();
PolicyDef zipvl_policy();
PolicyDef arkv_policy();
// LOOK-M's merge of every held row not in `kept` into the kept row of the
// same head whose key is closest in cosine (merge.cpp); `pivot`: each absorbed
// row first averaged with that row.
std::vector<MergedRow> merge_evicted(const ScoreRequest& r, const std::vector<std::vector<int64_t>>& kept, bool pivot);
// SnapKV's scores from any window of queries (snapkv.cpp; DapQ reuses it).
std::unique_ptr<Scorer> make_snapkv_scorer(int32_t kernel);
int32_t pool_kernel(const attention::MethodParams& p);  // its "kernel" parameter, checked
// SnapKV's smoothing: out[s] the mean of in[s - kernel/2 .. s + kernel/2],
// zero outside [0, n) (PyTorch's avg_pool1d with count_include_pad).
void average_pool(const float* in, int64_t n, int32_t kernel, float* out);

}  // namespace skim::kvpolicy
