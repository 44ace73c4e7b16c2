// The planner contract: a sparse-prefill method looks at one layer's chunk of
// queries (and the keys cached so far) and returns a Plan for the attention
// kernel. Each method lives in its own file and registers a MethodDef here.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "skim/attention.h"

namespace skim::attention {

// The plan type lives with the kernel that executes it; planners build it.
using kernels::KeyRange;
using kernels::make_dense_plan;
using kernels::Plan;
using kernels::PlanBuilder;
using kernels::PlanError;
using kernels::PlanShape;
using kernels::validate_plan;
using kernels::validate_plan_structure;

// Rows are cut into tiles of this many queries; planners that work on blocks
// use it as their key-block size too.
inline constexpr int32_t kTileRows = 64;

// One layer's attention call for a chunk of query rows.
struct PlanRequest {
  int32_t layer = 0;
  int32_t n_layers = 0;
  int32_t n_q_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int64_t n_rows = 0;   // query rows in the chunk
  int64_t q_pos0 = 0;   // absolute position of row 0
  bool final_chunk = true;  // the chunk ends the prompt (its last rows feed generation)
  int32_t sequence = 0;     // which sequence of the batch the chunk belongs to
  // Q after RoPE: row i of q head h at q + h*q_head_stride + i*q_row_stride.
  const float* q = nullptr;
  int64_t q_head_stride = 0;
  int64_t q_row_stride = 0;
  // The layer's keys by slot; the chunk's own keys are its last n_rows slots
  // (q_slot0() + i for row i), so row i sees slots [0, q_slot0() + i].
  // Plans name slots; rules about positions (sinks, windows, diagonals,
  // distances) go through kv's stored positions.
  kernels::KvView kv;
  float scale = 0;  // softmax scale (1/sqrt(d))
  // GQA: true = one plan per KV head over the union of its q heads' key sets
  // (one K/V read per group); false = one plan per q head.
  bool group_union = true;

  int64_t n_keys() const { return kv.n_keys; }
  int64_t q_slot0() const { return kv.n_keys - n_rows; }
  // The first slot of KV head kv_head stored at a position >= pos.
  int64_t first_slot_at(int32_t kv_head, int64_t pos) const { return kv.first_slot_at(kv_head, pos); }
  kernels::PlanShape shape(int32_t n_heads, int32_t group_size, int32_t tile_rows) const {
    return {n_heads, group_size, tile_rows, n_rows, q_pos0, q_slot0()};
  }
  int32_t group() const { return n_q_heads / n_kv_heads; }
  int64_t n_tiles() const { return (n_rows + kTileRows - 1) / kTileRows; }
  const float* q_row(int32_t h, int64_t i) const { return q + h * q_head_stride + i * q_row_stride; }
};

// key=value parameters of a spec, typed on read. A key not given takes its
// default from the method's AttentionMethodInfo, or for policy keys from
// attention_policy_params(). Every given key must be read, or reject_unread()
// reports it as unknown.
class MethodParams {
 public:
  MethodParams(const AttentionMethodInfo* info, std::string method, std::map<std::string, std::string> values)
      : info_(info), method_(std::move(method)), values_(std::move(values)) {}
  double number(const std::string& key, double min, double max) const;
  int64_t integer(const std::string& key, int64_t min, int64_t max) const;  // accepts 4k = 4096
  std::string text(const std::string& key) const;
  void reject_unread() const;
  const std::string& method() const { return method_; }

 private:
  const std::string& value(const std::string& key) const;
  const AttentionMethodInfo* info_;
  std::string method_;
  std::map<std::string, std::string> values_;
  mutable std::vector<std::string> read_;
};

struct BlockScores;  // attention/estimate.h

class Planner {
 public:
  virtual ~Planner() = default;
  // The plan for this chunk, or nullopt to run it dense.
  virtual std::optional<Plan> plan(const PlanRequest& request) = 0;
  // Estimating planners: the estimated attention mass of every (q head,
  // 64-row query block, 64-key block) of the chunk, each row summing to 1 over
  // its visible key blocks, for the recall-targeted policy
  // (docs/methods.md#recall-targeted-policy).
  virtual bool estimates_mass() const { return false; }
  virtual void estimate_mass(const PlanRequest& request, BlockScores& mass);
};

struct MethodDef {
  AttentionMethodInfo info;
  // Reads its parameters (defaults from info) and builds the planner.
  std::function<std::unique_ptr<Planner>(const MethodParams&)> make;
};

// A method's own min_len default: the prompt length below which it did not beat
// dense in `skim bench` (docs/results/smollm2-crossover.md), so shorter chunks
// skip planning that would cost more than it saves.
inline AttentionParamInfo crossover_param(const char* keys) {
  return {"min_len", keys, "run dense while a chunk has fewer keys than this (measured crossover)"};
}

// The sparse methods, one per planner file.
MethodDef streaming_method();
MethodDef trishape_method();
MethodDef power_method();
MethodDef blasst_method();
MethodDef minference_method();    // vertical_slash.cpp
MethodDef block_sparse_method();  // block_topk.cpp
MethodDef flexprefill_method();
MethodDef xattention_method();
MethodDef sale_method();
MethodDef s2o_method();
MethodDef hip_method();
MethodDef dhsa_method();
MethodDef longheads_method();
MethodDef token_sparse_method();
MethodDef tca_method();
MethodDef squeezed_method();

// The registry in listing order (dense is not a planner and is not listed here).
const std::vector<MethodDef>& sparse_methods();

// A parsed "NAME[:k=v,...]".
struct MethodSpec {
  std::string name;
  std::map<std::string, std::string> values;
};
MethodSpec parse_method_spec(const std::string& spec);

}  // namespace skim::attention
