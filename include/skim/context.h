// Inference state: the KV pool and the sequences' caches in it, scratch
// buffers, and the forward pass that turns a batch of tokens (of one or several
// sequences) into logits.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "skim/attention.h"
#include "skim/model.h"

namespace skim {

namespace kv {
class KvPool;
class KvSequence;
struct KvFormat;
}  // namespace kv
struct Activations;        // src/model/blocks.h
struct AttentionObserver;  // src/model/attention_observer.h
struct KvSelection;        // src/model/blocks.h
namespace attention {
class AttentionMethod;
}
namespace kvpolicy {
class KvPolicy;
}

struct ContextParams {
  int n_ctx = 0;       // KV capacity per sequence in tokens; 0 = the model's training context
  int n_ubatch = 512;  // tokens per forward micro-batch during prefill
  int n_seq_max = 1;   // sequences (ids 0..n_seq_max-1); the KV pool's cap is n_ctx tokens for each
  // The pool's cap counts n_ctx tokens for this many sequences only (0: every
  // one), plus room for kv_extra_bytes: the server's retained prefixes live
  // in sequences beyond its slots and give their pages back when slots need them.
  int kv_cap_sequences = 0;
  size_t kv_extra_bytes = 0;
  // Threads of this context's calls (0: OpenMP's default). Set for the calling
  // thread only while a call runs, so contexts on different threads keep their own.
  int n_threads = 0;
  // Attention method spec, "NAME[:key=value,...]" (skim/attention.h).
  std::string attention = "dense";
  // Formats of the K and V rows (skim/kv.h lists them: f16, bf16, f32, q8_0, q4_0, tq4, tq3, tq2).
  std::string kv_type_k = "f16", kv_type_v = "f16";
  // Layers kept in f16 whatever the types above (-1 is the last layer, -2 the one before).
  std::vector<int> kv_f16_layers;
  // Layers with quantized K or V also keep their first this many rows in f16
  // (the attention sinks: the first positions, whose keys stand out).
  int kv_f16_sinks = 0;
  // Layers with quantized K (V) turn Q and K (V) by a Hadamard rotation before
  // storing, as llama.cpp does; false turns it off (the tq formats need it).
  bool kv_rotation = true;
  // Quantized keys are stored minus a per-sequence mean key (SageAttention's
  // smoothing; softmax does not change): less for the quantizer to cover.
  bool kv_center_keys = true;
  // KV selection policy "NAME[:key=value,...]" (skim info --kv); empty: every row stays.
  std::string kv_policy;
  // Dual Chunk Attention (docs/length-extension.md): chunk size in tokens (0:
  // off; at most the trained context) and the part of it a query sees of the
  // previous chunk at true distances (-1: a sixteenth of the chunk).
  int dca_chunk = 0;
  int dca_local = -1;
};

// The tokens of one decode call, of one or more sequences (what llama_batch
// carries): per row the token, its position, its sequence and whether its
// logits are wanted.
struct Batch {
  std::vector<int32_t> tokens, positions, seq_ids;
  std::vector<uint8_t> logits;
  void add(int32_t token, int32_t position, int32_t seq_id, bool want_logits) {
    tokens.push_back(token);
    positions.push_back(position);
    seq_ids.push_back(seq_id);
    logits.push_back(want_logits ? 1 : 0);
  }
  void clear() { *this = {}; }
  size_t size() const { return tokens.size(); }
};

// Where a context's forward passes spent their wall time (ms) since it was
// created or the times were reset (skim bench --profile).
struct OpTimes {
  double weight_gemm_ms = 0;  // products with weight matrices: prefill GEMMs, decode GEMVs, the logits
  double attention_ms = 0;    // attention, prefill and decode; AttentionReport::plan_ms is the planning part
  double kv_store_ms = 0;     // K/V rows into the cache (centering, rotation, quantization) and KV policies
  double total_ms = 0;        // whole forward passes
  // The rest: embedding, norms, RoPE, SwiGLU, biases, residual adds.
  double other_ms() const { return total_ms - weight_gemm_ms - attention_ms - kv_store_ms; }
};

// Called after each micro-batch with (tokens done, tokens total).
using ProgressFn = std::function<void(int64_t, int64_t)>;

class Context {
 public:
  Context(const Model& model, ContextParams params);
  ~Context();

  // Appends `tokens` at positions n_past()..; returns the logits of every new
  // position ([n][vocab], all_logits) or of the last one ([vocab]).
  // Throws std::length_error when the tokens do not fit in the context.
  std::vector<float> decode(std::span<const int32_t> tokens, bool all_logits = false, const ProgressFn& progress = {});

  // Streaming form: logits of new positions >= logits_from (relative to
  // `tokens`) are handed to on_logits micro-batch by micro-batch as
  // (first row, row count, [rows][vocab]), so no [n][vocab] buffer is needed.
  using LogitsFn = std::function<void(int64_t, int64_t, const float*)>;
  void decode_streaming(std::span<const int32_t> tokens, int64_t logits_from, const LogitsFn& on_logits,
                        const ProgressFn& progress = {});

  // Runs a batch in one forward pass per micro-batch: the weight products see
  // the rows of all sequences, attention runs per sequence over its own cache.
  // A sequence's rows must be consecutive in the batch, at consecutive
  // positions after the last one it holds. Returns the logits of the rows that
  // want them, in batch order ([rows][vocab]). Throws std::invalid_argument
  // for a malformed batch, std::length_error when a sequence would exceed n_ctx.
  std::vector<float> decode(const Batch& batch, const ProgressFn& progress = {});

  int n_past(int seq = 0) const;    // the next position of the sequence: its last one + 1 (0 when empty)
  int n_cached(int seq = 0) const;  // the rows its cache holds (fewer than n_past once a policy evicted)
  // Whether a KV policy dropped rows of the sequence: its rows then no longer
  // stand for its tokens (a layer may hold fewer than n_cached).
  bool kv_evicted(int seq = 0) const;
  // Whether the sequence's cache is a function of its tokens alone, so a
  // prefix of it may be reused or saved: not once a policy evicted rows or
  // chose their precision (ARKV), nor
  // while its rows carry attention accumulated from its queries (H2O), which
  // truncating cannot take back.
  bool kv_reusable(int seq = 0) const;
  // Rows each layer holds for the sequence (per KV head): n_cached, or fewer
  // where a per-layer budget or a sliding window gave slots back.
  std::vector<int64_t> kv_layer_rows(int seq = 0) const;
  int n_ctx() const { return params_.n_ctx; }
  int n_seq_max() const { return params_.n_seq_max; }
  void clear();                   // forget all tokens of every sequence
  void clear_sequence(int seq);
  // The attention method of a sequence's prefill ("NAME[:key=value,...]",
  // skim/attention.h): ContextParams::attention until set. Throws
  // std::invalid_argument for a bad spec.
  void set_attention(int seq, const std::string& spec);
  const std::string& attention(int seq) const;
  // Whether a prompt's rows depend on where it is cut into micro-batches
  // (docs/server.md, batch invariance): with an attention method that plans
  // each micro-batch (a sparse one), or with quantized keys centered on the
  // mean key of the sequence's first micro-batch.
  bool rows_depend_on_cuts(const std::string& attention, const std::string& kv_type_k);
  // The KV selection policy of a sequence ("NAME[:key=value,...]", skim/kv.h;
  // "" keeps every row): ContextParams::kv_policy until set.
  void set_kv_policy(int seq, const std::string& spec);
  std::string kv_policy(int seq) const;
  // The KV types of a sequence's rows (kv_f16_layers stay f16):
  // ContextParams::kv_type_k/v until set. Setting other types empties the
  // sequence. Throw std::invalid_argument for a type this context cannot
  // store (skim/kv.h), std::length_error when their pools would not fit in memory.
  void set_kv_types(int seq, const std::string& k, const std::string& v);
  std::pair<std::string, std::string> kv_types(int seq) const;
  void check_kv_types(const std::string& k, const std::string& v) const;
  // What a cache's rows depend on in the KV layout with types (k, v): also the
  // f16 layers, the rotation and the key centering (a cache file's "skim.kv").
  std::string kv_layout(const std::string& k, const std::string& v) const;
  // Keeps the first n_rows rows of the sequence's cache (a prefix to reuse):
  // 0, or at least min_kept_rows(seq) (else std::invalid_argument).
  void truncate_sequence(int seq, int n_rows);
  // Sliding-window layers give back the pages their window has left behind
  // (docs/architecture.md), so a prefix shorter than this cannot be resumed:
  // the next token's window would reach rows no longer held. 1 when nothing was given back.
  int min_kept_rows(int seq) const;
  // Sequence `to` (cleared first) holds what `from` holds, sharing its KV pages
  // until either writes (copy-on-write).
  void copy_sequence(int from, int to);
  const Model& model() const { return model_; }
  size_t kv_cap_bytes() const;   // the KV pools' cap: n_ctx tokens in whole pages (nothing held up front)
  size_t kv_held_bytes() const;  // the pages in use: the tokens held, rounded up to 64-token pages
  int64_t kv_pages_held() const;  // pages in use, each 64 rows of one layer and KV head
  // Per layer, the (KV head, row) pairs of a sequence read from f16 copies
  // beside quantized pages: sinks (kv_f16_sinks) and a mixed-precision
  // policy's original rows (ARKV).
  std::vector<int64_t> kv_f16_copied_rows(int seq) const;
  // Pages each (layer, KV head) can still take: what `n` more rows in one
  // sequence need is n / 64 + 2 (a partial page, and a shared one copied on write).
  int64_t kv_free_pages_per_head() const;
  // What an f16 cache of every position each sequence has seen, in every
  // layer, would take (no eviction, no window pages given back): the
  // compression ratio's numerator.
  size_t kv_full_f16_bytes() const;
  // Batch invariance (docs/server.md): a micro-batch in which some sequence
  // has gemm_rows() rows or more runs its weight products as GEMMs, any other
  // as matrix-vector products, for at most gemv_batch_rows() rows. A row's
  // logits depend on which of the two kinds ran it, never on the other rows
  // or on where a prompt was cut into chunks (when every chunk is GEMM-sized).
  int gemm_rows() const;
  int gemv_batch_rows() const;
  // Persistence (docs/server.md): sequence `seq`'s cache in its page formats
  // and the tokens its rows hold, with a fingerprint of the model file and of
  // every setting that shapes the cache, as one safetensors file (written to a
  // temporary file, fsynced, renamed). `extra`: the caller's own strings, which
  // load_sequence returns. Returns the bytes written.
  size_t save_sequence(int seq, std::span<const int32_t> tokens, const std::string& path,
                       const std::map<std::string, std::string>& extra = {});
  struct SavedSequence {
    std::vector<int32_t> tokens;
    std::map<std::string, std::string> meta;  // the file's metadata, `extra` included
    size_t bytes = 0;                         // the file's size
  };
  // Replaces sequence `seq` with a saved one. Throws std::runtime_error naming
  // what differs for a file of another model or setting, and for a truncated or
  // corrupted file; the sequence is then empty.
  SavedSequence load_sequence(int seq, const std::string& path);
  const AttentionReport& attention_report() const;
  void reset_attention_report();
  const OpTimes& op_times() const { return op_times_; }
  void reset_op_times() { op_times_ = {}; }

 private:
  friend struct ContextInternals;  // src/model/attention_observer.h: test and analysis hooks

  struct Ubatch;  // rows of a batch: context.cpp
  // Logits of the micro-batch rows that want them go to logits_out, in row order.
  void forward_ubatch(Ubatch& ub, float* logits_out);
  void run(const Batch& batch, const LogitsFn& on_logits, const ProgressFn& progress);
  kv::KvSequence& sequence(int seq) const;
  // Gives back the pages of the window layers that no later position of the sequence can see.
  void release_window_pages(kv::KvSequence& kv) const;
  int max_window() const;  // the widest sliding window of the model's layers (0: none)

  const Model& model_;
  ContextParams params_;
  attention::AttentionMethod& method_for(const std::string& spec);
  std::map<std::string, std::unique_ptr<attention::AttentionMethod>> methods_;  // by spec
  std::vector<attention::AttentionMethod*> seq_methods_;                        // per sequence
  AttentionReport report_;
  OpTimes op_times_;
  std::vector<std::unique_ptr<kv::KvPool>> pools_;  // one per format some layer uses
  std::vector<int64_t> pool_heads_;                 // per pool: the (layer, KV head) pairs it serves
  int64_t pages_per_head_ = 0;                      // each pool's cap per (layer, KV head) it serves
  std::map<std::pair<std::string, std::string>, std::vector<kv::KvPool*>> kv_groups_;  // (k, v) types -> per-layer pools
  std::vector<std::pair<std::string, std::string>> seq_kv_types_;                      // per sequence
  std::vector<kv::KvFormat> layer_formats(const std::string& k, const std::string& v) const;
  std::vector<kv::KvPool*> kv_pools_for(const std::string& k, const std::string& v);
  const kvpolicy::KvPolicy* policy_for(const std::string& spec);  // null for ""
  std::map<std::string, std::unique_ptr<kvpolicy::KvPolicy>> policies_;  // by spec
  std::vector<const kvpolicy::KvPolicy*> seq_policies_;                   // per sequence; null: none
  // After a mixed-precision policy's cut: the chosen rows past each layer's share keep only their quantized rows.
  static void split_precision(const KvSelection& sel);
  std::vector<std::unique_ptr<kv::KvSequence>> seqs_;
  std::unique_ptr<AttentionObserver> observer_;  // never null; the default observes nothing
  std::unique_ptr<Activations> s_;
  std::map<std::string, std::string> cache_fingerprint(int seq) const;
  mutable std::string model_hash_;  // of the whole model file, computed at the first save or load
};

}  // namespace skim
