// Continuous batching over one Context: a fixed set of slots (one KV sequence
// each), a queue of completion requests, and one thread that runs the model.
// Each step decodes the next token of every generating slot and prefills a
// chunk of every waiting prompt, up to a token budget, so a long prompt never
// stalls the other streams and short prompts that arrive together share one
// forward pass. A new request starts from the longest cached prefix of its
// prompt held by any slot, kept prefix (prefix_cache.h) or --kv-dir file
// (copy-on-write pages) and prefills only the rest.
// Batch invariant: greedy answers do not depend on what else runs or what was
// cached (docs/server.md). Tokens in, tokens and text out: HTTP and JSON live in server/.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/prefix_cache.h"
#include "skim/context.h"
#include "skim/sampling.h"

namespace skim {

struct CompletionRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int max_tokens = -1;  // < 0: until end of generation or the slot's context is full
  std::vector<std::string> stop;
  bool logprobs = false;  // report each generated token's log-probability
  int top_logprobs = 0;   // and those of the most likely tokens
  bool ignore_eog = false;
  // With SchedulerParams::kv_dir: the cache is kept in KV_DIR/session-ID.kv
  // when the request ends, for the session's next request (even after a restart).
  std::string session_id;
  // The methods that shape the prompt's cache; empty: the server's.
  std::string attention;  // attention method (skim/attention.h)
  std::string kv_policy;  // KV selection policy (skim/kv.h); "none" keeps every row
  std::string kv_type_k, kv_type_v;  // formats of its KV rows (skim/kv.h); empty: the server's
};

struct GeneratedToken {
  int32_t id = 0;
  float logprob = 0;               // filled when the request asked for logprobs
  std::vector<TokenLogprob> top;  // the top_logprobs most likely tokens, most likely first
};

struct CompletionStats {
  int n_prompt = 0;
  int n_cached = 0;  // prompt tokens taken from the cache, not prefilled
  int n_gen = 0;
  int n_decoded = 0;     // tokens run through the model after the prompt
  int kv_rows = 0;       // rows the cache held at the end (fewer than the tokens once a KV policy evicted)
  double queue_ms = 0;   // submitted to placed in a slot
  double prompt_ms = 0;  // placed in a slot to first token sampled
  double gen_ms = 0;     // first token to the end
  double ttft_ms = 0;    // submitted to first token
};

// What a request produced since the owner last asked.
struct CompletionUpdate {
  std::string text;
  std::vector<GeneratedToken> tokens;
  bool done = false;
  std::string finish_reason;  // "stop" (end of generation or a stop string) | "length", once done
  std::string error;          // non-empty: the request failed (done is set)
  CompletionStats stats;      // once done
};

// The request's side of the scheduler: updates come in, a cancel goes out.
class CompletionHandle {
 public:
  // Waits up to `timeout` for news; returns what arrived (empty when none did).
  CompletionUpdate next(std::chrono::milliseconds timeout);
  // The client is gone: the slot is freed at the scheduler's next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Scheduler;
  void post(CompletionUpdate u);  // merges into what is pending
  std::mutex mu_;
  std::condition_variable cv_;
  CompletionUpdate pending_;
  bool has_news_ = false;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerParams {
  ContextParams context;  // n_seq_max is the slot count, n_ctx each slot's context (n_ubatch is n_batch)
  int n_batch = 512;      // prompt tokens per step, in chunks of every waiting prompt (chunked prefill)
  // Cache files: a slot's prefix about to be overwritten is saved here, and
  // any file here whose tokens start a new prompt is loaded instead of prefilled.
  std::string kv_dir;
  // Bytes the files in kv_dir may take (0: no cap): past it, the least
  // recently used files go first (a hit counts as a use).
  uint64_t kv_dir_max_bytes = 0;
  // KV memory beyond the slots' contexts for prefixes kept after their slot
  // took another prompt (0: none kept). The pool never holds more than the
  // slots' contexts plus this; kept prefixes give their pages back, least
  // recently used first, whenever a slot needs them (engine/prefix_cache.h).
  uint64_t cache_ram_bytes = 0;
};
// Kept prefixes per slot at most (each a context sequence holding whole pages).
inline constexpr int kKeptPrefixesPerSlot = 8;
// Shorter prefixes are not worth a file.
inline constexpr size_t kMinSpillTokens = 64;
// A session id names a file: letters, digits, '_' and '-' only (no path).
bool valid_session_id(const std::string& id);
// What a cache's rows depend on beyond the tokens: the attention method, the
// KV policy and the KV layout (Context::kv_layout).
std::string methods_key(const std::string& attention, const std::string& kv_policy, const std::string& kv_layout);
inline constexpr int kMinBatch = 16;

// Totals since start, for /metrics.
struct SchedulerStats {
  int64_t requests = 0, requests_failed = 0, requests_cancelled = 0;
  int64_t prompt_tokens = 0;  // prefilled
  int64_t cached_tokens = 0;  // prompt tokens reused from the cache
  int64_t cache_hits = 0;     // requests that reused at least one cached token
  int64_t disk_hits = 0;      // of them, from a --kv-dir file
  int64_t memory_hits = 0;    // of them, from a kept prefix (SchedulerParams::cache_ram_bytes)
  int kept_prefixes = 0;      // prefixes kept in memory now
  int64_t kept_tokens = 0;    // and their rows
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  double prefill_ms = 0, decode_ms = 0;  // step time split by the rows of each kind
  int slots_busy = 0, queued = 0;
  size_t kv_held_bytes = 0, kv_cap_bytes = 0;
  int64_t kv_pages = 0;
};

class Scheduler {
 public:
  Scheduler(const Model& model, SchedulerParams params);
  ~Scheduler();  // fails what is queued, finishes the step in flight
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Throws std::invalid_argument when it cannot run (empty
  // prompt, a prompt that does not fit a slot's context, a bad token id).
  std::shared_ptr<CompletionHandle> submit(CompletionRequest request);

  // A slot's cache to a file and back (Context::save_sequence): run between
  // steps; the slot must be idle. Throw std::invalid_argument for a bad or busy
  // slot, std::runtime_error for a file that cannot be written or is refused.
  struct SlotFile {
    int tokens = 0;
    size_t bytes = 0;
    double ms = 0;
  };
  SlotFile save_slot(int slot, const std::string& path);
  SlotFile restore_slot(int slot, const std::string& path);

  int n_slots() const;
  int slot_context() const { return params_.context.n_ctx; }
  const std::string& attention() const { return params_.context.attention; }
  SchedulerStats stats() const;

 private:
  struct Job;
  struct Slot;
  void loop();
  // Runs `task` on the scheduler's thread between steps and returns its result.
  SlotFile between_steps(std::function<SlotFile()> task);
  Slot& idle_slot(int slot);
  void place(std::shared_ptr<Job> job);  // into an idle slot, from the best cached prefix
  void spill(Slot& slot, size_t keep, const std::string& file_in_use = {});
  void keep_in_memory(const Slot& slot, size_t keep, int protect_seq);
  size_t shareable_rows(const Slot& slot) const;
  size_t next_chunk(const Slot& slot) const;
  void index_kv_dir();
  void cap_kv_dir(const std::vector<std::string>& keep);
  void save_to_disk(Slot& slot, const std::string& path, size_t n_tokens, const std::string& file_in_use = {});
  // A --kv-dir file: its tokens, the first gemm_rows of which may be shared.
  struct DiskPrefix {
    std::string path;
    std::vector<int32_t> tokens;
    size_t gemm_rows;
    std::string methods;  // the methods that computed its rows (Scheduler::methods_key)
  };
  // A forward pass of one step: its batch, which slot owns which rows, and
  // the slots whose logits it returns (in batch order).
  struct Pass {
    struct Rows {
      Slot* slot;
      size_t first, count;
    };
    Batch batch;
    std::vector<Rows> rows;
    std::vector<Slot*> sampled;
    std::pair<std::string, std::string> kv_types;  // of every sequence in it: the forward pass stores one layout
  };
  void step();
  void add_rows(Pass& pass, Slot& slot, size_t n);
  void run(Pass& pass);
  // Ends a slot's request early: failed, or cancelled by its client.
  void finish(Slot& slot, const std::string& error, bool cancelled = false);
  void sample(Slot& slot, const float* logits);

  const Model& model_;
  SchedulerParams params_;
  std::unique_ptr<Context> ctx_;
  std::vector<Slot> slots_;
  std::unique_ptr<PrefixCache> kept_;  // null without cache_ram_bytes
  int64_t clock_ = 0;  // step counter: a slot's last use, for least-recently-used reuse
  std::vector<DiskPrefix> disk_;
  std::set<std::string> refused_;  // --kv-dir files that did not load: not indexed again
  int64_t disk_hits_ = 0, memory_hits_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::deque<std::function<void()>> tasks_;  // between_steps
  SchedulerStats stats_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace skim
