// The blocks a layer is made of, shared by the architectures (arch.h says
// which of them a family's layer runs), and the micro-batch state they work on.
#pragma once

#include <chrono>
#include <span>
#include <vector>

#include "kernels/kv_view.h"
#include "model/dca.h"
#include "skim/attention.h"
#include "skim/context.h"
#include "skim/model.h"

namespace skim {

namespace kv {
class KvSequence;
}
struct AttentionObserver;
namespace attention {
class AttentionMethod;
}
namespace kvpolicy {
class KvPolicy;
}

// Activations of one micro-batch, sized once for a context's n_ubatch rows.
struct Activations {
  Activations(const ModelConfig& c, size_t rows);
  std::vector<float> x, xn, q, k, v, attn, proj, gate, up, logits;
  std::vector<float> rope_cos, rope_sin;  // per row: head_dim / 2 angles
};

// The rows of one sequence in a micro-batch: consecutive rows at consecutive
// positions, whose K/V go at the end of the sequence's cache.
struct SequenceRows {
  kv::KvSequence* kv;
  int32_t seq_id;
  int row0, n;       // micro-batch rows [row0, row0 + n)
  int pos0;          // position of row row0 + i is pos0 + i
  int64_t slot0;     // its cache slot is slot0 + i
  bool final_chunk;  // the rows end the sequence's tokens of this decode call
  int selection = -1;  // index of the KvSelection a KV policy fills for it in this micro-batch (-1: none)
  attention::AttentionMethod* method = nullptr;  // its prefill attention (Context::set_attention)
  const kvpolicy::KvPolicy* kv_policy = nullptr;  // its KV selection policy; null: none
};

// The rows a KV policy keeps of one sequence: per layer, per KV head,
// ascending slots (`target` of them, or the layer's own count under a
// per-layer budget); applied once every layer has run.
struct KvSelection {
  kv::KvSequence* kv;
  int64_t target;
  std::vector<std::vector<std::vector<int64_t>>> layers;
  // For a mixed-precision policy (ARKV), else empty: per layer its preference
  // for original rows (NaN: not judged) and, per KV head, the rows it chose by
  // score, best first (KvPolicy::select).
  std::vector<double> preference;
  std::vector<std::vector<std::vector<int64_t>>> ranked;
};

// One micro-batch on its way through the layers, with the context state the
// blocks read and write. The weight products run over all rows; attention runs
// per sequence over its own cache.
struct Forward {
  const Model& model;
  Activations& s;
  AttentionReport& report;
  OpTimes& times;
  const AttentionObserver& observer;
  int n;                              // rows (tokens) of the micro-batch
  std::span<const SequenceRows> seqs; // ordered by row0, covering rows [0, n)
  // The rows that run the whole layer, ascending; the others only give K/V.
  // Q, attention output and FFN work on them packed: active row k is row active[k].
  std::span<const int> active;
  std::span<const int> all_rows;  // 0..n-1
  bool kv_rotation = true;        // Hadamard-rotate Q/K/V of layers with quantized K/V (ContextParams)
  bool kv_center_keys = true;     // subtract the sequence's key offset before storing quantized keys
  std::vector<KvSelection>* selections = nullptr;  // filled for sequences whose rows name one
  DcaLayout dca{};                // Dual Chunk Attention on the full-attention layers (off by default)
  const LayerSpec* rope_angles_of = nullptr;  // the layer whose RoPE s.rope_cos/sin hold
  bool rope_angles_dca = false;               // ... at DCA's intra-chunk positions
};

inline const float* f32_data(const TensorInfo& t) { return reinterpret_cast<const float*>(t.data); }

// Adds the wall time of its scope to `ms` (an OpTimes field).
class ScopedTimer {
 public:
  explicit ScopedTimer(double& ms) : ms_(ms), t0_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() { ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count(); }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& ms_;
  std::chrono::steady_clock::time_point t0_;
};

namespace blocks {
// The Hadamard block a layer's keys (values) are rotated by before they are
// stored: 0 (none) unless the format is quantized (not KIVI) and the head size a multiple
// of 64, as llama.cpp does: keys by the largest power of two dividing the head
// size, values by 64.
int32_t kv_rotation_block(kernels::KvDType type, int head_dim, bool keys);
// Whether keys of type k are stored minus the sequence's mean key (--kv-center-keys).
bool centers_keys(bool enabled, kernels::KvDType k);
// The GEMV row limit for products over these micro-batch rows (kernels/matmul.h):
// all of them when no sequence brings more than the default (a batch of
// decodes: each sequence then gets the products it gets alone), else the default.
int64_t gemv_rows(const Forward& f, std::span<const int> rows);
// x += Wo Attention(RoPE(Wq n), RoPE(Wk n), Wv n), n = RMSNorm(x), with the
// parts the layer has: Q/K/V biases, RMSNorm of each Q and K head before RoPE,
// RMSNorm of the output before the add. The layer's spec says full or
// sliding-window attention. Every row's K/V go into the layer's cache.
void attention(Forward& f, int layer);
enum class Gate { Silu, Gelu };
// x += Wdown (act(Wgate n) * Wup n), n = RMSNorm(x) (and RMSNorm of the
// output before the add when the layer has ffn_post_norm).
void ffn_gated(Forward& f, int layer, Gate act);
}  // namespace blocks

}  // namespace skim
