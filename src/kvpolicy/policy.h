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
#include "kernels/kv_view.h"
#include "skim/attention.h"

namespace skim::kvpolicy {

// One layer of one sequence, after its attention ran on the chunk that ends
// the prompt (or on a decode step).
struct ScoreRequest {
  int32_t n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
  // The observation window: the last query rows of the chunk, [q_rows][n_q_heads * head_dim]
  // (row stride q_row_stride), at positions q_pos0 .., in the basis the keys are stored in.
  const float* q = nullptr;
  int64_t q_row_stride = 0;
  int32_t q_rows = 0;
  int32_t q_pos0 = 0;
  kernels::KvView kv;  // the layer's cache, every slot (the window's keys included)
  float scale = 0;     // of q.k in the softmax
  int32_t group() const { return n_q_heads / n_kv_heads; }
};

// Scores per KV head and slot, higher = keep: scores[g * kv.n_keys + slot].
class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual void score(const ScoreRequest& r, std::vector<float>& scores) const = 0;
  // Positions the window's queries are moved forward by before scoring (RoPE
  // turned on by this many positions): 0 scores with the queries as they are.
  virtual int32_t query_shift(int32_t window) const {
    (void)window;
    return 0;
  }
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
  int32_t query_shift() const { return scorer_->query_shift(window_); }
  // Per KV head, the `target` slots to keep, ascending.
  std::vector<std::vector<int64_t>> select(const ScoreRequest& r, int64_t target) const;

 private:
  std::string name_;
  std::unique_ptr<Scorer> scorer_;
  double keep_ = 1.0;
  int64_t budget_ = 0;
  int32_t sink_ = 4, window_ = 32;
};

// Every policy, for skim info --kv.
const std::vector<AttentionMethodInfo>& policy_infos();

// Helpers for scorers.
// probs[(h * q_rows + i) * n_keys + slot]: softmax over the keys window row i
// may see (stored position <= its own), per q head h; 0 for the others.
void window_attention(const ScoreRequest& r, std::vector<float>& probs);

// A policy's registration: its info (parameters with defaults) and a factory
// reading its own parameters.
struct PolicyDef {
  AttentionMethodInfo info;
  std::function<std::unique_ptr<Scorer>(const attention::MethodParams&)> make;
};
PolicyDef streaming_policy();
PolicyDef snapkv_policy();
PolicyDef tova_policy();
PolicyDef keydiff_policy();
PolicyDef dapq_policy();
// SnapKV's scores from any window of queries (snapkv.cpp; DapQ reuses it).
std::unique_ptr<Scorer> make_snapkv_scorer(int32_t kernel);
int32_t pool_kernel(const attention::MethodParams& p);  // its "kernel" parameter, checked

}  // namespace skim::kvpolicy
