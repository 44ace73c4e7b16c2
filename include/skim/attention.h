// Attention methods: dense, and the training-free sparse-prefill planners.
//
// A method is chosen by a spec string "NAME[:key=value,...]", e.g. "dense",
// "streaming:sink=128,local=1024", "xattention:tau=0.9,min_len=2048". Keys are
// the method's own parameters plus the policy keys every method accepts (see
// attention_policy_params()). Context takes the spec in ContextParams and
// reports what the method did in an AttentionReport.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace skim {

struct AttentionParamInfo {
  std::string name;
  std::string default_value;
  std::string help;
};

struct AttentionMethodInfo {
  std::string name;
  std::string summary;
  std::vector<AttentionParamInfo> params;
};

// Every method skim knows, "dense" first.
const std::vector<AttentionMethodInfo>& attention_methods();
// Keys every method accepts (dense crossover, dense layers, BLASST lambda, plan reuse, ...).
const std::vector<AttentionParamInfo>& attention_policy_params();
// Throws std::invalid_argument naming the problem (unknown method or key, bad value).
void validate_attention_spec(const std::string& spec);

// Attention fidelity of one (layer, q head) against dense attention on the
// same Q/K/V, over sampled query rows (T1 of the eval protocol).
struct HeadFidelity {
  int64_t rows = 0;                // sampled rows measured
  double recall_sum = 0;           // sum of exp(LSE_method - LSE_dense)
  double recall_min = 1;
  std::vector<float> recalls;      // every sampled recall (for percentiles)
  double err_sq_sum = 0;           // sum |O_method - O_dense|^2
  double ref_sq_sum = 0;           // sum |O_dense|^2
  double recall_mean() const { return rows ? recall_sum / rows : 1.0; }
  double rel_l2() const;           // sqrt(err_sq_sum / ref_sq_sum)
  double recall_percentile(double p) const;  // p in [0, 100]
};

// What the attention method did since the context was created or the report reset.
struct AttentionReport {
  int64_t pairs_listed = 0;   // (query row, key) pairs the plans asked for, summed over q heads and layers
  int64_t pairs_dense = 0;    // the same for dense causal attention
  int64_t sparse_calls = 0;   // layer calls that ran a sparse plan
  int64_t dense_calls = 0;    // layer calls that ran dense (method dense, below min_len, dense layer)
  int64_t reused_plans = 0;   // layer calls that reused another layer's plan
  int64_t key_tiles = 0;           // key tiles the kernel streamed
  int64_t key_tiles_computed = 0;  // ... of which went through softmax and P.V (BLASST skips the rest)
  double plan_ms = 0;         // time spent planning (estimation + plan building)
  double kernel_ms = 0;       // time in the attention kernel (prefill calls)
  std::vector<int64_t> layer_pairs_listed;  // per layer
  std::vector<int64_t> layer_pairs_dense;
  // [layer * n_head + head]; empty unless the context samples fidelity rows (skim eval --fidelity).
  std::vector<HeadFidelity> fidelity;
  double density() const { return pairs_dense ? static_cast<double>(pairs_listed) / pairs_dense : 1.0; }
};

}  // namespace skim
