// The blocks a layer is made of, shared by the architectures (arch.h says
// which of them a family's layer runs), and the micro-batch state they work on.
#pragma once

#include <vector>

#include "skim/attention.h"
#include "skim/model.h"

namespace skim {

class KvCache;
struct AttentionObserver;
namespace attention {
class AttentionMethod;
}

// Activations of one micro-batch, sized once for a context's n_ubatch rows.
struct Activations {
  Activations(const ModelConfig& c, size_t rows);
  std::vector<float> x, xn, q, k, v, attn, proj, gate, up, logits;
  std::vector<float> rope_cos, rope_sin;  // per row: head_dim / 2 angles
};

// One micro-batch on its way through the layers, with the context state the
// blocks read and write.
struct Forward {
  const Model& model;
  Activations& s;
  KvCache& kv;
  attention::AttentionMethod& method;
  AttentionReport& report;
  const AttentionObserver& observer;
  int n;             // rows (tokens) of the micro-batch
  int pos0;          // position of row 0; the cache holds the rows' K/V at pos0 + i
  bool final_chunk;  // the micro-batch ends the tokens of its decode call
  int first = 0;     // rows [first, n) run the whole layer; earlier rows only give K/V
  const std::vector<float>* rope_angles_of = nullptr;  // the RoPE frequencies s.rope_cos/sin hold angles for
};

inline const float* f32_data(const TensorInfo& t) { return reinterpret_cast<const float*>(t.data); }

namespace blocks {
// x += Wo Attention(RoPE(Wq n), RoPE(Wk n), Wv n), n = RMSNorm(x) (biases when
// the layer has them); every row's K/V go into the layer's cache.
void attention(Forward& f, int layer);
// x += Wdown (SiLU(Wgate n) * Wup n), n = RMSNorm(x).
void ffn_swiglu(Forward& f, int layer);
}  // namespace blocks

}  // namespace skim
