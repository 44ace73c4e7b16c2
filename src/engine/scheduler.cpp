#include "engine/scheduler.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <future>
#include <limits>
#include <regex>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "engine/stop_strings.h"
#include "kv/kv_file.h"
#include "kv/kv_pool.h"
#include "skim/generate.h"
#include "skim/kv.h"

namespace skim {
namespace {
using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
CompletionUpdate failed(const std::string& error) {
  CompletionUpdate u;
  u.done = true;
  u.error = error;
  return u;
}
}  // namespace

CompletionUpdate CompletionHandle::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return has_news_; });
  has_news_ = false;
  return std::exchange(pending_, {});
}

void CompletionHandle::post(CompletionUpdate u) {
  {
    std::lock_guard lock(mu_);
    pending_.text += u.text;
    pending_.tokens.insert(pending_.tokens.end(), std::make_move_iterator(u.tokens.begin()),
                           std::make_move_iterator(u.tokens.end()));
    if (u.done) {
      pending_.done = true;
      pending_.finish_reason = std::move(u.finish_reason);
      pending_.error = std::move(u.error);
      pending_.stats = u.stats;
    }
    has_news_ = true;
  }
  cv_.notify_all();
}

struct Scheduler::Job {
  Job(CompletionRequest r, std::shared_ptr<CompletionHandle> h)
      : req(std::move(r)), handle(std::move(h)), stop(req.stop), submitted(Clock::now()) {}
  CompletionRequest req;
  std::shared_ptr<CompletionHandle> handle;
  StopStrings stop;
  std::unique_ptr<Session> session;  // from placement on
  GenerationOptions opts;
  std::string text;  // what the session decoded since the last update
  size_t n_prefilled = 0;  // prompt tokens in the cache
  int n_reused = 0;
  int n_decoded = 0;
  Clock::time_point submitted, placed, first_token;
  bool prefilling() const { return n_prefilled < req.prompt.size(); }
};

struct Scheduler::Slot {
  int seq = 0;
  std::vector<int32_t> cached;  // the tokens whose rows the sequence holds, in order
  size_t gemm_rows = 0;         // leading rows computed by GEMM passes, as a cold prefill computes them
  std::string methods;          // the methods that computed its rows (methods_key)
  bool reusable = true;         // false once a KV policy evicted rows or accumulates attention: Context::kv_reusable
  bool cold_cuts = false;       // its rows depend on the cuts: prompts are cut where a cold run cuts them
  int64_t last_used = -1;
  std::shared_ptr<Job> job;     // null: idle
};

Scheduler::Scheduler(const Model& model, SchedulerParams params) : model_(model), params_(std::move(params)) {
  const int n_slots = params_.context.n_seq_max;
  if (n_slots < 1) throw std::invalid_argument("the server needs at least one slot");
  if (params_.n_batch < kMinBatch)
    throw std::invalid_argument(fmt::format("batch size {} is below {} tokens", params_.n_batch, kMinBatch));
  // A step's prompt chunks run as one micro-batch (a GEMM pass, see step()).
  params_.context.n_ubatch = params_.n_batch;
  // Kept prefixes are sequences after the slots', in room beyond the slots' contexts.
  const int n_kept = params_.cache_ram_bytes > 0 ? kKeptPrefixesPerSlot * n_slots : 0;
  ContextParams cp = params_.context;
  cp.n_seq_max = n_slots + n_kept;
  cp.kv_cap_sequences = n_slots;
  cp.kv_extra_bytes = params_.cache_ram_bytes;
  ctx_ = std::make_unique<Context>(model_, cp);
  if (n_kept > 0) kept_ = std::make_unique<PrefixCache>(*ctx_, n_slots, n_kept);
  params_.context.n_ctx = ctx_->n_ctx();
  slots_.resize(static_cast<size_t>(n_slots));
  for (int i = 0; i < n_slots; ++i) {
    slots_[static_cast<size_t>(i)].seq = i;
    slots_[static_cast<size_t>(i)].methods =
        methods_key(params_.context.attention, params_.context.kv_policy,
                    ctx_->kv_layout(params_.context.kv_type_k, params_.context.kv_type_v));
  }
  stats_.kv_cap_bytes = ctx_->kv_cap_bytes();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

// Rows are shared only between requests whose methods computed them alike.
std::string methods_key(const std::string& attention, const std::string& kv_policy, const std::string& kv_layout) {
  return attention + "\n" + kv_policy + "\n" + kv_layout;
}

bool valid_session_id(const std::string& id) {
  static const std::regex kId("[A-Za-z0-9_-]{1,128}");
  return std::regex_match(id, kId);
}

// Files in --kv-dir not indexed yet: left by a previous run or written by
// another process sharing the folder. A file that later does not load
// (another model, damaged) is dropped then.
void Scheduler::index_kv_dir() {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(params_.kv_dir, error)) {
    const std::string path = entry.path().string();
    if (entry.path().extension() != ".kv" || refused_.count(path) ||
        std::any_of(disk_.begin(), disk_.end(), [&](const DiskPrefix& d) { return d.path == path; }))
      continue;
    try {
      kv::KvFile header = kv::read_kv_file_tokens(path);
      const size_t gemm_rows = saved_gemm_rows(header.meta, header.tokens.size());
      auto meta = [&](const char* key) {
        const auto it = header.meta.find(key);
        return it == header.meta.end() ? std::string() : it->second;
      };
      disk_.push_back({path, std::move(header.tokens), gemm_rows,
                       methods_key(meta("skim.attention"), meta("skim.kv_policy"), meta("skim.kv"))});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "skim serve: ignoring %s: %s\n", path.c_str(), e.what());
      refused_.insert(path);
    }
  }
}

std::shared_ptr<CompletionHandle> Scheduler::submit(CompletionRequest request) {
  const auto& p = request.prompt;
  if (request.attention.empty()) request.attention = params_.context.attention;
  validate_attention_spec(request.attention);
  if (request.kv_policy.empty()) request.kv_policy = params_.context.kv_policy;
  if (request.kv_policy == "none") request.kv_policy.clear();
  if (!request.kv_policy.empty()) validate_kv_policy_spec(request.kv_policy);
  if (request.kv_type_k.empty()) request.kv_type_k = params_.context.kv_type_k;
  if (request.kv_type_v.empty()) request.kv_type_v = params_.context.kv_type_v;
  ctx_->check_kv_types(request.kv_type_k, request.kv_type_v);
  if (!request.session_id.empty()) {
    if (params_.kv_dir.empty()) throw std::invalid_argument("a session id needs a server started with --kv-dir");
    if (!valid_session_id(request.session_id))
      throw std::invalid_argument("a session id has 1 to 128 letters, digits, '_' or '-'");
  }
  if (p.empty()) throw std::invalid_argument("the prompt is empty");
  const int n_vocab = model_.config().n_vocab;
  for (int32_t id : p)
    if (id < 0 || id >= n_vocab) throw std::invalid_argument(fmt::format("token id {} outside the vocabulary 0..{}", id, n_vocab - 1));
  if (static_cast<int64_t>(p.size()) >= slot_context())
    throw std::invalid_argument(fmt::format("the prompt has {} tokens, a slot's context holds {}", p.size(), slot_context()));
  auto handle = std::make_shared<CompletionHandle>();
  auto job = std::make_shared<Job>(std::move(request), handle);
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw std::runtime_error("the server is shutting down");
    queue_.push_back(std::move(job));
    ++stats_.requests;
    stats_.queued = static_cast<int>(queue_.size());
  }
  cv_.notify_all();
  return handle;
}

int Scheduler::n_slots() const { return static_cast<int>(slots_.size()); }

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void Scheduler::loop() {
  auto idle = [this] { return std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.job; }); };
  auto busy = [this] { return std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.job != nullptr; }); };
  std::deque<std::function<void()>> tasks;
  std::vector<std::shared_ptr<Job>> arrivals;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || busy() || !tasks_.empty() || (!queue_.empty() && idle()); });
      if (stopping_) break;
      tasks.swap(tasks_);
      auto n_idle = std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.job; });
      while (!queue_.empty() && n_idle > 0) {
        std::shared_ptr<Job> job = std::move(queue_.front());
        queue_.pop_front();
        if (job->handle->cancelled()) {
          ++stats_.requests_cancelled;
          continue;
        }
        arrivals.push_back(std::move(job));
        --n_idle;
      }
      stats_.queued = static_cast<int>(queue_.size());
    }
    for (auto& task : tasks) task();
    tasks.clear();
    // Placement may read or write cache files: outside the lock.
    for (auto& job : arrivals) place(std::move(job));
    arrivals.clear();
    try {
      step();
    } catch (const std::exception& e) {
      for (Slot& s : slots_)
        if (s.job) finish(s, e.what());
    }
  }
  std::lock_guard lock(mu_);
  for (auto& job : queue_) job->handle->post(failed("the server is shutting down"));
  queue_.clear();
  for (Slot& s : slots_)
    if (s.job) s.job->handle->post(failed("the server is shutting down"));
}

Scheduler::SlotFile Scheduler::between_steps(std::function<SlotFile()> task) {
  auto done = std::make_shared<std::promise<SlotFile>>();
  std::future<SlotFile> result = done->get_future();
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw std::runtime_error("the server is shutting down");
    tasks_.push_back([task = std::move(task), done] {
      try {
        done->set_value(task());
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  cv_.notify_all();
  return result.get();
}

Scheduler::Slot& Scheduler::idle_slot(int slot) {
  if (slot < 0 || slot >= n_slots()) throw std::invalid_argument(fmt::format("slot {} outside 0..{}", slot, n_slots() - 1));
  Slot& s = slots_[static_cast<size_t>(slot)];
  if (s.job) throw std::invalid_argument(fmt::format("slot {} is busy", slot));
  return s;
}

// A saved slot records how many of its leading rows a GEMM pass computed, so a
// restored prefix is shared only as far as a cold prefill would agree with it.
Scheduler::SlotFile Scheduler::save_slot(int slot, const std::string& path) {
  return between_steps([this, slot, path] {
    const auto t0 = Clock::now();
    Slot& s = idle_slot(slot);
    if (!s.reusable)
      throw std::invalid_argument(fmt::format("slot {}: its cache no longer matches its tokens (a KV policy evicted rows "
                                              "or accumulates attention, or a restored file's rows did not match)", slot));
    const size_t bytes = ctx_->save_sequence(s.seq, s.cached, path, gemm_rows_meta(s.gemm_rows));
    return SlotFile{static_cast<int>(s.cached.size()), bytes, ms_between(t0, Clock::now())};
  });
}

Scheduler::SlotFile Scheduler::restore_slot(int slot, const std::string& path) {
  return between_steps([this, slot, path] {
    const auto t0 = Clock::now();
    Slot& s = idle_slot(slot);
    s.cached.clear();
    s.gemm_rows = 0;
    ctx_->clear_sequence(s.seq);
    if (kept_) kept_->make_room(ctx_->n_ctx() / kv::kPageRows + 2);  // the most a slot's file can hold
    Context::SavedSequence saved = ctx_->load_sequence(s.seq, path);
    const size_t rows = static_cast<size_t>(ctx_->n_cached(s.seq));
    s.reusable = saved.tokens.size() == rows;
    s.cached = std::move(saved.tokens);
    s.gemm_rows = saved_gemm_rows(saved.meta, rows);
    s.last_used = ++clock_;
    return SlotFile{static_cast<int>(s.cached.size()), saved.bytes, ms_between(t0, Clock::now())};
  });
}

void Scheduler::place(std::shared_ptr<Job> job) {
  const std::vector<int32_t>& prompt = job->req.prompt;
  if (!params_.kv_dir.empty()) index_kv_dir();
  // The longest usable prefix of the prompt: in a slot's cache (busy or not),
  // or in a cache file of --kv-dir.
  Slot* donor = nullptr;
  size_t reuse = 0;
  // Rows computed by other methods differ.
  const std::string methods =
      methods_key(job->req.attention, job->req.kv_policy, ctx_->kv_layout(job->req.kv_type_k, job->req.kv_type_v));
  for (Slot& s : slots_) {
    if (!s.reusable || s.methods != methods) continue;
    const size_t n = reusable_prefix(*ctx_, s.cached, shareable_rows(s), prompt);
    if (n > reuse && n >= static_cast<size_t>(ctx_->min_kept_rows(s.seq))) reuse = n, donor = &s;
  }
  PrefixCache::Hit kept;  // a prefix kept in memory
  if (kept_) {
    const PrefixCache::Hit hit = kept_->find(prompt, methods);
    const size_t n = hit.seq < 0 ? 0 : reusable_prefix(*ctx_, hit.tokens, hit.tokens.size(), prompt);
    if (n > reuse && n >= static_cast<size_t>(ctx_->min_kept_rows(hit.seq))) reuse = n, kept = hit, donor = nullptr;
  }
  std::string file;  // the path, not the entry: spilling below may grow disk_
  for (const DiskPrefix& d : disk_) {
    if (d.methods != methods) continue;
    const size_t n = reusable_prefix(*ctx_, d.tokens, d.gemm_rows, prompt);
    if (n > reuse) reuse = n, file = d.path, donor = nullptr, kept = {};
  }
  // The donor itself when idle; else an empty slot, else the least recently used.
  Slot* target = nullptr;
  if (donor && !donor->job && reuse > 0) {
    target = donor;
  } else {
    for (Slot& s : slots_)
      if (!s.job && (!target || (s.cached.empty() && !target->cached.empty()) ||
                     (s.cached.empty() == target->cached.empty() && s.last_used < target->last_used)))
        target = &s;
  }
  // Rows that depend on the cuts resume only where a cold run cut the prompt.
  const bool cold_cuts = ctx_->rows_depend_on_cuts(job->req.attention, job->req.kv_type_k);
  if (cold_cuts) reuse = reuse / static_cast<size_t>(params_.n_batch) * static_cast<size_t>(params_.n_batch);
  keep_in_memory(*target, target == donor ? reuse : 0, kept.seq);
  spill(*target, target == donor ? reuse : 0, file);
  try {
    ctx_->set_kv_types(target->seq, job->req.kv_type_k, job->req.kv_type_v);
  } catch (const std::exception& e) {  // its pools would not fit in memory: this request fails, the rest go on
    job->handle->post(failed(e.what()));
    std::lock_guard lock(mu_);
    ++stats_.requests_failed;
    return;
  }
  ctx_->set_attention(target->seq, job->req.attention);
  ctx_->set_kv_policy(target->seq, job->req.kv_policy);
  target->methods = methods;
  if (!file.empty()) {
    try {
      if (kept_) {
        const auto d = std::find_if(disk_.begin(), disk_.end(), [&](const DiskPrefix& p) { return p.path == file; });
        if (d != disk_.end()) kept_->make_room(static_cast<int64_t>(d->tokens.size()) / kv::kPageRows + 2);
      }
      // Another process may have rewritten the file since it was indexed: its own tokens count.
      Context::SavedSequence saved = ctx_->load_sequence(target->seq, file);
      const size_t gemm_rows = saved_gemm_rows(saved.meta, static_cast<size_t>(ctx_->n_cached(target->seq)));
      reuse = saved.tokens.size() == static_cast<size_t>(ctx_->n_cached(target->seq))
                  ? reusable_prefix(*ctx_, saved.tokens, gemm_rows, prompt)
                  : 0;
      if (cold_cuts) reuse = reuse / static_cast<size_t>(params_.n_batch) * static_cast<size_t>(params_.n_batch);
      if (reuse < static_cast<size_t>(ctx_->min_kept_rows(target->seq))) reuse = 0;
      for (DiskPrefix& d : disk_)
        if (d.path == file) d.tokens = std::move(saved.tokens), d.gemm_rows = gemm_rows;
      std::error_code ignored;  // a hit is a use: the file's time orders --kv-dir-size's evictions
      std::filesystem::last_write_time(file, std::filesystem::file_time_type::clock::now(), ignored);
      ++disk_hits_;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "skim serve: dropping cache file %s: %s\n", file.c_str(), e.what());
      std::erase_if(disk_, [&](const DiskPrefix& d) { return d.path == file; });
      refused_.insert(file);
      reuse = 0;
    }
  } else if (kept.seq >= 0) {
    ctx_->copy_sequence(kept.seq, target->seq);
    ++memory_hits_;
  } else if (reuse > 0 && donor != target) {
    ctx_->copy_sequence(donor->seq, target->seq);
  }
  if (reuse == 0)
    ctx_->clear_sequence(target->seq);
  else
    ctx_->truncate_sequence(target->seq, static_cast<int>(reuse));
  target->cached.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(reuse));
  target->gemm_rows = reuse;
  target->reusable = true;
  target->cold_cuts = cold_cuts;

  job->n_prefilled = reuse;
  job->n_reused = static_cast<int>(reuse);
  job->placed = Clock::now();
  job->session = std::make_unique<Session>(model_.tokenizer(), target->seq, prompt, Sampler(job->req.sampling));
  job->opts.n_predict = job->req.max_tokens;
  job->opts.ignore_eog = job->req.ignore_eog;
  job->opts.on_text = [j = job.get()](const std::string& piece) { j->text += piece; };
  std::lock_guard lock(mu_);
  stats_.cached_tokens += static_cast<int64_t>(reuse);
  if (reuse > 0) ++stats_.cache_hits;
  stats_.disk_hits = disk_hits_;
  stats_.memory_hits = memory_hits_;
  if (kept_) stats_.kept_prefixes = kept_->entries(), stats_.kept_tokens = kept_->tokens_held();
  ++stats_.slots_busy;
  target->job = std::move(job);
}

// A slot's cache about to be cut to `keep` rows stays in memory, as far as
// whole pages of rows a GEMM computed reach past `keep` (docs/server.md).
void Scheduler::keep_in_memory(const Slot& slot, size_t keep, int protect_seq) {
  const size_t rows = shareable_rows(slot);
  if (!kept_ || !slot.reusable || rows / kv::kPageRows * kv::kPageRows <= keep) return;
  kept_->retain(slot.seq, slot.cached, rows, slot.methods, protect_seq);
}

// Rows another prompt may share: those a GEMM pass computed, as a cold
// prefill computes them. Where rows depend on the cuts, only the
// micro-batches a cold run with -ub = -b cuts the same way: up to the last
// multiple of -b before the prompt's end (or before its last micro-batch,
// when Context::decode moved that cut to keep the tail GEMM-sized).
size_t Scheduler::shareable_rows(const Slot& slot) const {
  if (!slot.cold_cuts) return slot.gemm_rows;
  const size_t u = static_cast<size_t>(params_.n_batch), n = slot.gemm_rows, tail = n % u;
  if (tail == 0 || tail >= static_cast<size_t>(ctx_->gemm_rows())) return n - tail;
  return n - tail >= u ? n - tail - u : 0;
}

// The prompt rows of a cold run's next micro-batch for this slot (Context::decode's
// cut; the rows done end one of its micro-batches).
size_t Scheduler::next_chunk(const Slot& slot) const {
  const size_t u = static_cast<size_t>(params_.n_batch), g = static_cast<size_t>(ctx_->gemm_rows());
  const size_t done = slot.job->n_prefilled, n = slot.job->req.prompt.size();
  size_t end = std::min(n, done + u);
  if (end < n && n - end < g && n - g > done) end = n - g;
  return end - done;
}

// A slot's cache about to be cut to `keep` rows goes to --kv-dir, named by a
// hash of its tokens, when what is lost is worth a file (docs/server.md).
void Scheduler::spill(Slot& slot, size_t keep, const std::string& file_in_use) {
  const size_t rows = shareable_rows(slot);
  if (params_.kv_dir.empty() || !slot.reusable || rows < keep + kMinSpillTokens) return;
  const std::span<const int32_t> tokens(slot.cached.data(), rows);
  const std::string path =
      (std::filesystem::path(params_.kv_dir) / fmt::format("prefix-{:016x}.kv", XXH3_64bits(tokens.data(), tokens.size_bytes())))
          .string();
  if (std::any_of(disk_.begin(), disk_.end(), [&](const DiskPrefix& d) { return d.path == path; })) return;
  save_to_disk(slot, path, tokens.size(), file_in_use);
}

void Scheduler::save_to_disk(Slot& slot, const std::string& path, size_t n_tokens, const std::string& file_in_use) {
  // Only the rows a GEMM computed are kept: the file's rows are its tokens' rows.
  ctx_->truncate_sequence(slot.seq, static_cast<int>(n_tokens));
  slot.cached.resize(n_tokens);
  try {
    ctx_->save_sequence(slot.seq, slot.cached, path, gemm_rows_meta(n_tokens));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "skim serve: cannot keep a cache file: %s\n", e.what());
    return;
  }
  std::erase_if(disk_, [&](const DiskPrefix& d) { return d.path == path; });
  refused_.erase(path);
  disk_.push_back({path, slot.cached, n_tokens, slot.methods});
  cap_kv_dir({path, file_in_use});
}

// Oldest-used files out until the folder fits --kv-dir-size; `keep` (the file
// just written, the one about to be loaded) stays. Files of other processes
// sharing the folder count too.
void Scheduler::cap_kv_dir(const std::vector<std::string>& keep) {
  if (params_.kv_dir_max_bytes == 0) return;
  struct File {
    std::filesystem::file_time_type used;
    uint64_t bytes;
    std::string path;
  };
  std::vector<File> files;
  uint64_t total = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(params_.kv_dir, error)) {
    if (entry.path().extension() != ".kv") continue;
    const uint64_t bytes = entry.file_size(error);
    files.push_back({entry.last_write_time(error), bytes, entry.path().string()});
    total += bytes;
  }
  std::sort(files.begin(), files.end(), [](const File& a, const File& b) { return a.used < b.used; });
  for (const File& f : files) {
    if (total <= params_.kv_dir_max_bytes) break;
    if (std::find(keep.begin(), keep.end(), f.path) != keep.end() || !std::filesystem::remove(f.path, error)) continue;
    total -= f.bytes;
    std::erase_if(disk_, [&](const DiskPrefix& d) { return d.path == f.path; });
  }
}

// One step runs up to three kinds of forward pass, kept apart so that every
// row gets exactly the logits it would get alone (Context::gemm_rows): the
// generating slots' next tokens (with whole prompts too short for a GEMM) in
// matrix-vector passes, then prompt chunks of at least gemm_rows() rows each,
// up to the token budget, in one GEMM pass.
void Scheduler::step() {
  for (Slot& s : slots_)
    if (s.job && s.job->handle->cancelled()) finish(s, "cancelled", true);
  const size_t gemm_rows = static_cast<size_t>(ctx_->gemm_rows());
  const size_t gemv_rows = static_cast<size_t>(ctx_->gemv_batch_rows());

  // Passes hold sequences of one KV layout each; decode passes up to gemv_rows rows.
  std::vector<Pass> passes;
  auto pass_for = [&](const Slot& s, size_t rows, size_t limit, size_t first = 0) -> Pass& {
    const auto types = ctx_->kv_types(s.seq);
    for (size_t i = first; i < passes.size(); ++i)
      if (passes[i].kv_types == types && passes[i].batch.size() + rows <= limit) return passes[i];
    passes.emplace_back().kv_types = types;
    return passes.back();
  };
  for (Slot& s : slots_) {
    if (!s.job) continue;
    const size_t left = s.job->req.prompt.size() - s.job->n_prefilled;
    if (s.job->prefilling() && left >= gemm_rows) continue;
    const size_t rows = s.job->prefilling() ? left : 1;
    add_rows(pass_for(s, rows, gemv_rows), s, rows);
  }
  const size_t decode_passes = passes.size();

  std::vector<Slot*> waiting;
  for (Slot& s : slots_)
    if (s.job && s.job->req.prompt.size() - s.job->n_prefilled >= gemm_rows) waiting.push_back(&s);
  std::sort(waiting.begin(), waiting.end(), [](Slot* a, Slot* b) { return a->job->submitted < b->job->submitted; });
  size_t budget = static_cast<size_t>(params_.n_batch), completing = 0;
  for (Slot* s : waiting) {
    const size_t left = s->job->req.prompt.size() - s->job->n_prefilled;
    size_t take = std::min(left, budget);
    if (take < left && left - take < gemm_rows) take = left - gemm_rows;  // the rest stays GEMM-sized
    if (s->cold_cuts) {
      take = next_chunk(*s);
      if (take > budget) continue;  // waits for a step with room for the whole micro-batch
    }
    if (take < gemm_rows) break;
    // The logits rows of one pass stay few enough for the matrix-vector kernel.
    if (take == left && ++completing > gemv_rows) break;
    add_rows(pass_for(*s, take, std::numeric_limits<size_t>::max(), decode_passes), *s, take);
    budget -= take;
  }
  for (Pass& pass : passes) {
    if (pass.batch.size() == 0) continue;
    if (kept_) {
      // Kept prefixes make room for the pass's new pages (or the pass fails as without them).
      int64_t pages = 0;
      for (const Pass::Rows& r : pass.rows) pages += static_cast<int64_t>(r.count) / kv::kPageRows + 2;
      kept_->make_room(pages);
    }
    run(pass);
  }
}

void Scheduler::add_rows(Pass& pass, Slot& slot, size_t n) {
  Job& job = *slot.job;
  const int pos0 = ctx_->n_past(slot.seq);
  pass.rows.push_back({&slot, pass.batch.size(), n});
  if (!job.prefilling()) {
    pass.batch.add(job.session->last_token(), pos0, slot.seq, true);
    pass.sampled.push_back(&slot);
    return;
  }
  const std::vector<int32_t>& prompt = job.req.prompt;
  for (size_t i = 0; i < n; ++i) {
    const size_t at = job.n_prefilled + i;
    pass.batch.add(prompt[at], pos0 + static_cast<int>(i), slot.seq, at + 1 == prompt.size());
  }
  if (job.n_prefilled + n == prompt.size()) pass.sampled.push_back(&slot);
}

void Scheduler::run(Pass& pass) {
  const Batch& batch = pass.batch;
  const bool gemm = std::any_of(pass.rows.begin(), pass.rows.end(),
                                [this](const Pass::Rows& r) { return r.count >= static_cast<size_t>(ctx_->gemm_rows()); });
  const auto t0 = Clock::now();
  std::vector<float> logits;
  try {
    logits = ctx_->decode(batch);
  } catch (const std::exception& e) {
    // The context refused the pass as a whole (the KV pool is full): its requests fail, the rest go on.
    for (const Pass::Rows& r : pass.rows) {
      ctx_->clear_sequence(r.slot->seq);
      r.slot->cached.clear();
      r.slot->gemm_rows = 0;
      finish(*r.slot, e.what());
    }
    return;
  }
  const double ms = ms_between(t0, Clock::now());

  size_t prompt_rows = 0;
  for (const Pass::Rows& r : pass.rows) {
    Slot& s = *r.slot;
    // Rows a GEMM pass computed are what a cold prefill computes: they may be shared.
    if (gemm && s.gemm_rows == s.cached.size()) s.gemm_rows += r.count;
    s.cached.insert(s.cached.end(), batch.tokens.begin() + static_cast<std::ptrdiff_t>(r.first),
                    batch.tokens.begin() + static_cast<std::ptrdiff_t>(r.first + r.count));
    // Once sliding-window layers gave rows back, no shorter prefix can be
    // resumed: the shareable rows then include decoded ones (docs/server.md).
    const size_t resumable = static_cast<size_t>(ctx_->min_kept_rows(s.seq));
    if (resumable > 1) s.gemm_rows = std::max(s.gemm_rows, std::min(resumable, s.cached.size()));
    if (s.job->prefilling()) {
      s.job->n_prefilled += r.count;
      prompt_rows += r.count;
    } else {
      ++s.job->n_decoded;
    }
    if (!ctx_->kv_reusable(s.seq)) s.reusable = false;
  }
  const size_t n_vocab = static_cast<size_t>(model_.config().n_vocab);
  for (size_t k = 0; k < pass.sampled.size(); ++k) sample(*pass.sampled[k], logits.data() + k * n_vocab);

  std::lock_guard lock(mu_);
  ++stats_.steps;
  const double share = static_cast<double>(prompt_rows) / static_cast<double>(batch.size());
  stats_.prefill_ms += ms * share;
  stats_.decode_ms += ms * (1 - share);
  stats_.prompt_tokens += static_cast<int64_t>(prompt_rows);
  stats_.kv_held_bytes = ctx_->kv_held_bytes();
  stats_.kv_pages = ctx_->kv_pages_held();
  if (kept_) stats_.kept_prefixes = kept_->entries(), stats_.kept_tokens = kept_->tokens_held();
}

void Scheduler::sample(Slot& slot, const float* logits) {
  Job& job = *slot.job;
  const std::span<const float> row(logits, static_cast<size_t>(model_.config().n_vocab));
  Session& session = *job.session;
  const size_t before = session.result().tokens.size();
  const bool first = session.result().timings.n_gen == 0;
  bool more = session.accept(row, ctx_->n_cached(slot.seq), ctx_->n_ctx(), job.opts);
  if (first) job.first_token = Clock::now();

  CompletionUpdate u;
  if (session.result().tokens.size() > before) {
    GeneratedToken t;
    t.id = session.result().tokens.back();
    if (job.req.logprobs) t.logprob = token_logprob(row, t.id, job.req.top_logprobs, t.top);
    u.tokens.push_back(std::move(t));
    std::lock_guard lock(mu_);
    ++stats_.generated_tokens;
  }
  u.text = job.stop.push(std::exchange(job.text, {}));
  if (job.stop.stopped()) {
    more = false;
    u.finish_reason = "stop";
  } else if (!more) {
    u.finish_reason = session.result().stop_reason == "eog" ? "stop" : "length";
    u.text += job.stop.push(session.finish());
    if (job.stop.stopped()) u.finish_reason = "stop";
    u.text += job.stop.flush();
  }
  if (more) {
    job.handle->post(std::move(u));
    return;
  }
  u.done = true;
  const auto end = Clock::now();
  u.stats.n_prompt = static_cast<int>(job.req.prompt.size());
  u.stats.n_cached = job.n_reused;
  u.stats.n_gen = static_cast<int>(session.result().tokens.size());
  u.stats.n_decoded = job.n_decoded;
  u.stats.kv_rows = ctx_->n_cached(slot.seq);
  u.stats.queue_ms = ms_between(job.submitted, job.placed);
  u.stats.prompt_ms = ms_between(job.placed, job.first_token);
  u.stats.gen_ms = ms_between(job.first_token, end);
  u.stats.ttft_ms = ms_between(job.submitted, job.first_token);
  // A session's cache is on disk before its client hears the end.
  if (!job.req.session_id.empty() && slot.reusable)
    save_to_disk(slot, (std::filesystem::path(params_.kv_dir) / ("session-" + job.req.session_id + ".kv")).string(),
                 shareable_rows(slot));
  job.handle->post(std::move(u));
  std::shared_ptr<Job> done = std::move(slot.job);
  slot.last_used = ++clock_;
  std::lock_guard lock(mu_);
  --stats_.slots_busy;
}

void Scheduler::finish(Slot& slot, const std::string& error, bool cancelled) {
  slot.job->handle->post(failed(error));
  slot.job.reset();
  slot.last_used = ++clock_;
  std::lock_guard lock(mu_);
  --stats_.slots_busy;
  ++(cancelled ? stats_.requests_cancelled : stats_.requests_failed);
}

}  // namespace skim
