#include "skim/context.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/method.h"
#include "kernels/dequant.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "kv/kv_types.h"
#include "kvpolicy/policy.h"
#include "model/arch.h"
#include "model/attention_observer.h"
#include "model/blocks.h"

namespace skim {

void ContextInternals::set_observer(Context& ctx, AttentionObserver observer) { *ctx.observer_ = std::move(observer); }
const kv::KvSequence& ContextInternals::sequence(const Context& ctx, int seq) { return ctx.sequence(seq); }

Context::Context(const Model& model, ContextParams params)
    : model_(model), params_(params), observer_(std::make_unique<AttentionObserver>()) {
  const ModelConfig& c = model.config();
  if (params_.n_ctx <= 0) params_.n_ctx = c.n_ctx_train;
  if (params_.n_ubatch <= 0) throw std::invalid_argument("micro-batch size must be positive");
  if (params_.n_seq_max <= 0) throw std::invalid_argument("the number of sequences must be positive");
  if (params_.n_threads < 0) throw std::invalid_argument("the thread count must not be negative");
  params_.n_ubatch = std::min(params_.n_ubatch, params_.n_ctx * params_.n_seq_max);
  if (params_.dca_chunk != 0) {
    if (params_.dca_local < 0) params_.dca_local = params_.dca_chunk / 16;
    if (params_.dca_chunk < 2 || params_.dca_local >= params_.dca_chunk || params_.dca_chunk > c.n_ctx_train)
      throw std::invalid_argument(fmt::format("dual chunk attention: chunk {} with local {} must satisfy 0 <= local < chunk <= "
                                              "the trained context ({})",
                                              params_.dca_chunk, params_.dca_local, c.n_ctx_train));
  }
  seq_methods_.assign(static_cast<size_t>(params_.n_seq_max), &method_for(params_.attention));
  if (params_.kv_cap_sequences < 0 || params_.kv_cap_sequences > params_.n_seq_max)
    throw std::invalid_argument(fmt::format("the KV cap's sequence count {} is outside 0..{}", params_.kv_cap_sequences,
                                            params_.n_seq_max));
  // Every pool holds n_ctx tokens of each sequence the cap counts, in whole
  // pages, in each (layer, KV head) it serves, plus kv_extra_bytes counted in
  // pages of the default KV types.
  double page_bytes_all_layers = 0;  // one page of every layer and KV head
  for (const kv::KvFormat& f : layer_formats(params_.kv_type_k, params_.kv_type_v))
    page_bytes_all_layers += static_cast<double>(c.n_head_kv) * static_cast<double>(kv::KvPool::page_bytes(c.head_dim, f));
  pages_per_head_ = (params_.n_ctx + kv::kPageRows - 1) / kv::kPageRows *
                        (params_.kv_cap_sequences > 0 ? params_.kv_cap_sequences : params_.n_seq_max) +
                    static_cast<int64_t>(std::ceil(static_cast<double>(params_.kv_extra_bytes) / page_bytes_all_layers));
  const std::vector<kv::KvPool*> layer_pools = kv_pools_for(params_.kv_type_k, params_.kv_type_v);
  for (int i = 0; i < params_.n_seq_max; ++i)
    seqs_.push_back(std::make_unique<kv::KvSequence>(layer_pools, c.n_head_kv, params_.n_ctx, params_.kv_f16_sinks));
  seq_kv_types_.assign(static_cast<size_t>(params_.n_seq_max), {params_.kv_type_k, params_.kv_type_v});
  seq_policies_.assign(static_cast<size_t>(params_.n_seq_max), policy_for(params_.kv_policy));
  s_ = std::make_unique<Activations>(c, params_.n_ubatch);
}

Context::~Context() = default;

// Each layer's format for KV types (k, v): kv_f16_layers stay f16.
std::vector<kv::KvFormat> Context::layer_formats(const std::string& k, const std::string& v) const {
  const ModelConfig& c = model_.config();
  const kv::KvFormat chosen{kv::parse_kv_type(k), kv::parse_kv_type(v, true)};
  std::vector<kv::KvFormat> formats(static_cast<size_t>(c.n_layer), chosen);
  for (int l : params_.kv_f16_layers) {
    if (l < -c.n_layer || l >= c.n_layer)
      throw std::invalid_argument(fmt::format("f16 KV layer {}: the model has layers 0..{}", l, c.n_layer - 1));
    formats[static_cast<size_t>(l < 0 ? c.n_layer + l : l)] = kv::KvFormat{};
  }
  for (const kv::KvFormat& f : formats)
    for (const kernels::KvDType t : {f.k, f.v})
      if (kernels::kv_tq_bits(t) != 0 && (!params_.kv_rotation || c.head_dim % 64 != 0))
        throw std::invalid_argument(fmt::format("KV type {} needs the Hadamard rotation: a head size that is a multiple "
                                                "of 64 (this model's is {}) and the rotation on",
                                                kv::kv_type_name(t), c.head_dim));
  return formats;
}

// Each layer's pool for KV types (k, v): one pool per distinct format among
// the layers, made on first use (a request's own types in the server).
std::vector<kv::KvPool*> Context::kv_pools_for(const std::string& k, const std::string& v) {
  const auto key = std::make_pair(k, v);
  if (const auto it = kv_groups_.find(key); it != kv_groups_.end()) return it->second;
  const ModelConfig& c = model_.config();
  const std::vector<kv::KvFormat> formats = layer_formats(k, v);
  double cap = static_cast<double>(kv_cap_bytes());
  for (const kv::KvFormat& f : formats)
    cap += static_cast<double>(pages_per_head_ * c.n_head_kv) * static_cast<double>(kv::KvPool::page_bytes(c.head_dim, f));
  kv::check_kv_cap(cap);
  std::vector<kv::KvPool*> layer_pools;
  std::vector<std::pair<kv::KvFormat, kv::KvPool*>> made;
  for (const kv::KvFormat& f : formats) {
    auto same = std::find_if(made.begin(), made.end(), [&](const auto& m) { return m.first == f; });
    if (same == made.end()) {
      const int64_t layers = std::count(formats.begin(), formats.end(), f);
      pools_.push_back(std::make_unique<kv::KvPool>(c.head_dim, f, pages_per_head_ * c.n_head_kv * layers));
      pool_heads_.push_back(layers * c.n_head_kv);
      made.emplace_back(f, pools_.back().get());
      same = made.end() - 1;
    }
    layer_pools.push_back(same->second);
  }
  return kv_groups_.emplace(key, std::move(layer_pools)).first->second;
}

void Context::set_kv_types(int seq, const std::string& k, const std::string& v) {
  sequence(seq);  // checks the id
  auto& types = seq_kv_types_[static_cast<size_t>(seq)];
  if (types.first == k && types.second == v) return;
  const std::vector<kv::KvPool*> layer_pools = kv_pools_for(k, v);
  seqs_[static_cast<size_t>(seq)] =
      std::make_unique<kv::KvSequence>(layer_pools, model_.config().n_head_kv, params_.n_ctx, params_.kv_f16_sinks);
  types = {k, v};
}

std::pair<std::string, std::string> Context::kv_types(int seq) const {
  sequence(seq);  // checks the id
  return seq_kv_types_[static_cast<size_t>(seq)];
}

void Context::check_kv_types(const std::string& k, const std::string& v) const { layer_formats(k, v); }

kv::KvSequence& Context::sequence(int seq) const {
  if (seq < 0 || seq >= params_.n_seq_max)
    throw std::invalid_argument(fmt::format("sequence id {} outside 0..{}", seq, params_.n_seq_max - 1));
  return *seqs_[static_cast<size_t>(seq)];
}

int Context::n_past(int seq) const {
  const kv::KvSequence& kv = sequence(seq);
  return kv.size() > 0 ? kv.position(kv.size() - 1) + 1 : 0;
}
int Context::n_cached(int seq) const { return static_cast<int>(sequence(seq).size()); }
bool Context::kv_evicted(int seq) const { return sequence(seq).evicted(); }
bool Context::kv_reusable(int seq) const {
  return !sequence(seq).evicted() && !sequence(seq).demoted() && !sequence(seq).has_row_scores();
}
std::vector<int64_t> Context::kv_layer_rows(int seq) const {
  const kv::KvSequence& kv = sequence(seq);
  std::vector<int64_t> rows(static_cast<size_t>(kv.n_layer()));
  for (int l = 0; l < kv.n_layer(); ++l) {
    const kernels::KvView v = kv.view(l);
    rows[static_cast<size_t>(l)] = v.n_keys - v.first_key;
  }
  return rows;
}
void Context::clear() {
  for (auto& seq : seqs_) seq->clear();
}
void Context::clear_sequence(int seq) { sequence(seq).clear(); }
void Context::truncate_sequence(int seq, int n_rows) {
  kv::KvSequence& kv = sequence(seq);
  if (n_rows < 0 || n_rows > kv.size())
    throw std::invalid_argument(fmt::format("truncate_sequence: {} rows, sequence {} holds {}", n_rows, seq, kv.size()));
  if (n_rows > 0 && n_rows < min_kept_rows(seq))
    throw std::invalid_argument(fmt::format("truncate_sequence: the sliding-window layers of sequence {} no longer hold "
                                            "the rows a prefix of {} needs (at least {})",
                                            seq, n_rows, min_kept_rows(seq)));
  kv.truncate(n_rows);
}
int Context::max_window() const {
  int w = 0;
  for (int l = 0; l < model_.config().n_layer; ++l) {
    const LayerSpec& spec = model_.layer_spec(l);
    if (spec.attention == AttentionKind::SlidingWindow) w = std::max(w, spec.window);
  }
  return w;
}
int Context::min_kept_rows(int seq) const {
  const kv::KvSequence& kv = sequence(seq);
  const int64_t released = kv.first_held();
  if (released == 0) return 1;
  // A prefix of n rows resumes at position(n - 1) + 1, whose window reaches back
  // to position(n - 1) + 2 - window: past the last released row.
  const int64_t reach = static_cast<int64_t>(kv.position(released - 1)) + max_window() - 1;
  int64_t n = released + 1;
  while (n < kv.size() && kv.position(n - 1) < reach) ++n;
  return static_cast<int>(n);
}
void Context::release_window_pages(kv::KvSequence& kv) const {
  const int window = max_window();
  if (window == 0 || kv.size() == 0) return;
  const int64_t next = kv.position(kv.size() - 1) + 1;
  for (int l = 0; l < model_.config().n_layer; ++l) {
    const LayerSpec& spec = model_.layer_spec(l);
    if (spec.attention != AttentionKind::SlidingWindow) continue;
    // One page more than the window needs, so that a prefix a little shorter can still be resumed.
    const int64_t needed = kv.view(l).first_slot_at(0, next - spec.window + 1);
    // Whole pages: the key tiles of the layer's attention then start where they did before.
    const int64_t slot = std::min<int64_t>(needed - kv::kPageRows, kv.size() - 1);
    if (slot > 0) kv.release_before(l, slot / kv::kPageRows * kv::kPageRows);
  }
}
void Context::copy_sequence(int from, int to) {
  kv::KvSequence& src = sequence(from);
  if (from == to) return;
  sequence(to).clear();
  seqs_[static_cast<size_t>(to)] = std::make_unique<kv::KvSequence>(src.fork());
  seq_kv_types_[static_cast<size_t>(to)] = seq_kv_types_[static_cast<size_t>(from)];
}
size_t Context::kv_cap_bytes() const {
  size_t bytes = 0;
  for (const auto& p : pools_) bytes += static_cast<size_t>(p->max_pages()) * p->page_bytes();
  return bytes;
}
std::vector<int64_t> Context::kv_f16_copied_rows(int seq) const {
  std::vector<int64_t> rows;
  for (int32_t l = 0; l < sequence(seq).n_layer(); ++l) rows.push_back(sequence(seq).copied_rows(l));
  return rows;
}
size_t Context::kv_held_bytes() const {
  size_t bytes = 0;
  for (const auto& p : pools_) bytes += p->held_bytes();
  for (const auto& s : seqs_)
    for (int32_t l = 0; l < s->n_layer(); ++l) bytes += s->copy_bytes(l);
  return bytes;
}
bool Context::rows_depend_on_cuts(const std::string& attention, const std::string& kv_type_k) {
  return !method_for(attention).is_dense() || blocks::centers_keys(params_.kv_center_keys, kv::parse_kv_type(kv_type_k));
}
attention::AttentionMethod& Context::method_for(const std::string& spec) {
  auto it = methods_.find(spec);
  if (it == methods_.end())
    it = methods_.emplace(spec, std::make_unique<attention::AttentionMethod>(spec, model_.config().n_layer)).first;
  return *it->second;
}
const kvpolicy::KvPolicy* Context::policy_for(const std::string& spec) {
  if (spec.empty()) return nullptr;
  if (params_.dca_chunk > 0)
    throw std::invalid_argument(fmt::format("KV selection policy '{}' does not run with dual chunk attention yet", spec));
  for (const std::string& type : {params_.kv_type_k, params_.kv_type_v})
    if (kernels::kv_kivi_bits(kv::parse_kv_type(type)) != 0)
      throw std::invalid_argument(fmt::format("KV selection policy '{}' does not run on a KIVI cache (-ct{} {}): its keys are "
                                              "quantized per channel over pages of rows, which eviction would split",
                                              spec, type == params_.kv_type_k ? 'k' : 'v', type));
  auto it = policies_.find(spec);
  if (it == policies_.end()) it = policies_.emplace(spec, std::make_unique<kvpolicy::KvPolicy>(spec)).first;
  return it->second.get();
}
void Context::set_kv_policy(int seq, const std::string& spec) {
  sequence(seq);  // checks the id
  seq_policies_[static_cast<size_t>(seq)] = policy_for(spec);
}
std::string Context::kv_policy(int seq) const {
  sequence(seq);
  for (const auto& [spec, p] : policies_)
    if (p.get() == seq_policies_[static_cast<size_t>(seq)]) return spec;
  return "";
}
void Context::set_attention(int seq, const std::string& spec) {
  sequence(seq);  // checks the id
  seq_methods_[static_cast<size_t>(seq)] = &method_for(spec);
}
const std::string& Context::attention(int seq) const {
  sequence(seq);
  for (const auto& [spec, m] : methods_)
    if (m.get() == seq_methods_[static_cast<size_t>(seq)]) return spec;
  throw std::logic_error("sequence without an attention method");
}
int Context::gemm_rows() const { return static_cast<int>(kernels::kDefaultGemvRows) + 1; }
int Context::gemv_batch_rows() const {
  // Above kDefaultGemvRows rows, a weight type without an integer kernel switches to the GEMM.
  const int most = static_cast<int>(kernels::kMaxBatchedGemvRows);
  auto batches = [most](const TensorInfo* w) { return !w || kernels::uses_gemv(w->type, most, most); };
  bool all = batches(&model_.output());
  for (int l = 0; l < model_.config().n_layer; ++l) {
    const LayerWeights& w = model_.layer(l);
    for (const TensorInfo* t : {w.wq, w.wk, w.wv, w.wo, w.w_gate, w.w_up, w.w_down}) all = all && batches(t);
  }
  return all ? most : static_cast<int>(kernels::kDefaultGemvRows);
}
int64_t Context::kv_pages_held() const {
  int64_t pages = 0;
  for (const auto& p : pools_) pages += p->pages_in_use();
  return pages;
}
int64_t Context::kv_free_pages_per_head() const {
  int64_t free = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < pools_.size(); ++i)
    free = std::min(free, (pools_[i]->max_pages() - pools_[i]->pages_in_use()) / pool_heads_[i]);
  return free;
}
size_t Context::kv_full_f16_bytes() const {
  const ModelConfig& c = model_.config();
  int64_t pages = 0;
  for (int seq = 0; seq < params_.n_seq_max; ++seq) pages += (n_past(seq) + kv::kPageRows - 1) / kv::kPageRows;
  return static_cast<size_t>(pages * c.n_layer * c.n_head_kv) * kv::KvPool::page_bytes(c.head_dim, kv::KvFormat{});
}
const AttentionReport& Context::attention_report() const { return report_; }
void Context::reset_attention_report() { report_ = {}; }

// Rows [begin, end) of a batch, and which of them want logits.
struct Context::Ubatch {
  const Batch& batch;
  int begin, end;
  std::vector<SequenceRows> seqs;
  std::vector<int> logit_rows;  // micro-batch rows, ascending
  std::vector<KvSelection> selections;  // what the KV policy keeps, for sequences whose prompt ends here
};

std::vector<float> Context::decode(std::span<const int32_t> tokens, bool all_logits, const ProgressFn& progress) {
  const size_t n_vocab = model_.config().n_vocab;
  if (tokens.empty()) throw std::invalid_argument("decode: no tokens");
  const int64_t from = all_logits ? 0 : static_cast<int64_t>(tokens.size()) - 1;
  std::vector<float> logits((tokens.size() - from) * n_vocab);
  decode_streaming(
      tokens, from,
      [&](int64_t first, int64_t rows, const float* l) {
        std::copy(l, l + rows * n_vocab, logits.begin() + (first - from) * n_vocab);
      },
      progress);
  return logits;
}

std::vector<float> Context::decode(const Batch& batch, const ProgressFn& progress) {
  const size_t n_vocab = model_.config().n_vocab;
  std::vector<float> logits;
  run(
      batch, [&](int64_t, int64_t rows, const float* l) { logits.insert(logits.end(), l, l + rows * n_vocab); },
      progress);
  return logits;
}

void Context::decode_streaming(std::span<const int32_t> tokens, int64_t logits_from, const LogitsFn& on_logits,
                               const ProgressFn& progress) {
  if (tokens.empty()) throw std::invalid_argument("decode: no tokens");
  if (static_cast<int64_t>(n_cached()) + static_cast<int64_t>(tokens.size()) > params_.n_ctx)
    throw std::length_error(fmt::format("{} tokens after {} cached exceed the context of {} tokens (raise -c)",
                                        tokens.size(), n_cached(), params_.n_ctx));
  Batch batch;
  const int pos0 = n_past();
  for (size_t i = 0; i < tokens.size(); ++i)
    batch.add(tokens[i], pos0 + static_cast<int>(i), 0, static_cast<int64_t>(i) >= logits_from);
  const int64_t from = std::max<int64_t>(0, logits_from);
  run(
      batch, [&](int64_t first, int64_t rows, const float* l) { on_logits(from + first, rows, l); }, progress);
}

namespace {
// The calling thread's OpenMP team size for one call; the ICV belongs to the
// calling thread, so nothing outside the call sees it.
class ThreadScope {
 public:
  explicit ThreadScope(int n) : saved_(omp_get_max_threads()) {
    if (n > 0) omp_set_num_threads(n);
  }
  ~ThreadScope() { omp_set_num_threads(saved_); }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
};
}  // namespace

void Context::run(const Batch& b, const LogitsFn& on_logits, const ProgressFn& progress) {
  const ThreadScope threads(params_.n_threads);
  const int n_vocab = model_.config().n_vocab;
  const int n = static_cast<int>(b.size());
  if (n == 0) throw std::invalid_argument("decode: no tokens");
  if (b.positions.size() != b.size() || b.seq_ids.size() != b.size() || b.logits.size() != b.size())
    throw std::invalid_argument("decode: the batch's tokens, positions, sequence ids and logit flags differ in length");
  // Per sequence: one run of rows at consecutive positions after its last.
  std::vector<int> last_row(static_cast<size_t>(params_.n_seq_max), -1);
  for (int i = 0; i < n; ++i) {
    const int32_t t = b.tokens[i], seq = b.seq_ids[i], pos = b.positions[i];
    if (t < 0 || t >= n_vocab) throw std::out_of_range(fmt::format("token id {} outside the vocabulary (0..{})", t, n_vocab - 1));
    const kv::KvSequence& kv = sequence(seq);
    int& last = last_row[static_cast<size_t>(seq)];
    if (last >= 0 && last != i - 1)
      throw std::invalid_argument(fmt::format("decode: the rows of sequence {} are not consecutive in the batch", seq));
    const int32_t prev = last >= 0 ? b.positions[last] : (kv.size() > 0 ? kv.position(kv.size() - 1) : -1);
    if (last >= 0 ? pos != prev + 1 : pos <= prev)
      throw std::invalid_argument(fmt::format("decode: sequence {} gets position {} after position {}", seq, pos, prev));
    last = i;
  }
  // What the KV policy cuts each sequence back to once this call's rows are in (-1: nothing).
  std::vector<int64_t> cut_to(static_cast<size_t>(params_.n_seq_max), -1);
  for (int seq = 0; seq < params_.n_seq_max; ++seq) {
    const int64_t rows = last_row[seq] < 0 ? 0 : std::count(b.seq_ids.begin(), b.seq_ids.end(), seq);
    const int64_t after = sequence(seq).size() + rows;
    if (after > params_.n_ctx)
      throw std::length_error(fmt::format("{} tokens after {} cached exceed the context of {} tokens (raise -c)", rows,
                                          sequence(seq).size(), params_.n_ctx));
    const kvpolicy::KvPolicy* policy = seq_policies_[static_cast<size_t>(seq)];
    // A mixed-precision policy chooses the precision of rows after they are stored: keep their originals till then.
    if (rows > 0) sequence(seq).keep_originals(policy && policy->mixed_precision());
    if (!policy || rows == 0) continue;
    // A chunk that does not end its prompt (its last row wants no logits: the
    // server's chunked prefill) waits: the policy judges the whole prompt.
    if (rows > 1 && !b.logits[static_cast<size_t>(last_row[seq])]) continue;
    // A prompt (several rows) is cut to the policy's share of it; decode steps
    // only when they outgrow the budget by a page.
    const int64_t target = rows > 1 ? policy->target_after_prompt(after)
                           : policy->budget() > 0 && after > policy->budget() + kv::kPageRows
                               ? policy->budget()
                               : after;
    // An adaptive policy (a count from the scores) judges every prompt.
    if (target < after || (rows > 1 && policy->adaptive())) cut_to[static_cast<size_t>(seq)] = target;
  }

  // The widest observation window of the policies that cut a sequence in this call.
  int window = 0;
  for (int seq = 0; seq < params_.n_seq_max; ++seq)
    if (cut_to[static_cast<size_t>(seq)] >= 0) window = std::max(window, seq_policies_[static_cast<size_t>(seq)]->window());
  int64_t logits_done = 0;
  for (int begin = 0; begin < n;) {
    int end = std::min(n, begin + params_.n_ubatch);
    // A policy's observation window is the last rows of the micro-batch that
    // ends a prompt: do not leave that one fewer rows than the window.
    if (window > 0 && end < n && n - end < window && n - window > begin) end = n - window;
    // A tail of gemv-sized rows would run the matrix-vector kernels while the
    // rest ran GEMMs, so a row's result would depend on where the cut fell:
    // the tail keeps a GEMM's worth (batch invariance, docs/server.md).
    if (end < n && n - end < gemm_rows() && n - gemm_rows() > begin) end = n - gemm_rows();
    Ubatch ub{b, begin, end, {}, {}, {}};
    for (int i = begin; i < end; ++i) {
      if (b.logits[i]) ub.logit_rows.push_back(i - begin);
      if (i == begin || b.seq_ids[i] != b.seq_ids[i - 1]) {
        const int32_t seq = b.seq_ids[i];
        ub.seqs.push_back({&sequence(seq), seq, i - begin, 0, b.positions[i], 0, false});
        ub.seqs.back().method = seq_methods_[static_cast<size_t>(seq)];
        ub.seqs.back().kv_policy = seq_policies_[static_cast<size_t>(seq)];
      }
      SequenceRows& sr = ub.seqs.back();
      ++sr.n;
      sr.final_chunk = i == last_row[static_cast<size_t>(sr.seq_id)];
      if (sr.final_chunk && cut_to[static_cast<size_t>(sr.seq_id)] >= 0) {
        sr.selection = static_cast<int>(ub.selections.size());
        const auto n_layer = static_cast<size_t>(model_.config().n_layer);
        const bool mixed = sr.kv_policy->mixed_precision();
        ub.selections.push_back({sr.kv, cut_to[static_cast<size_t>(sr.seq_id)],
                                 std::vector<std::vector<std::vector<int64_t>>>(n_layer),
                                 std::vector<double>(mixed ? n_layer : 0, NAN),
                                 std::vector<std::vector<std::vector<int64_t>>>(mixed ? n_layer : 0)});
      }
    }
    const size_t need = ub.logit_rows.size() * static_cast<size_t>(n_vocab);
    if (s_->logits.size() < need) s_->logits.resize(need);  // sized on demand: prefill usually wants one row
    forward_ubatch(ub, s_->logits.data());
    if (!ub.logit_rows.empty()) on_logits(logits_done, static_cast<int64_t>(ub.logit_rows.size()), s_->logits.data());
    logits_done += static_cast<int64_t>(ub.logit_rows.size());
    begin = end;
    if (progress) progress(begin, n);
  }
}

void Context::split_precision(const KvSelection& sel) {
  std::vector<double>& shares = sel.kv->original_shares();
  if (std::any_of(sel.preference.begin(), sel.preference.end(), [](double p) { return std::isfinite(p); }))
    shares = kvpolicy::KvPolicy::original_share(sel.preference);
  const int64_t end = sel.kv->size();
  for (size_t l = 0; l < sel.ranked.size(); ++l) {
    const double share = l < shares.size() ? shares[l] : 1.0;
    std::vector<std::vector<int64_t>> demoted(sel.ranked[l].size());
    for (size_t h = 0; h < sel.ranked[l].size(); ++h) {
      // keep_rows moved head h's kept rows (ascending) to the slots ending at `end`.
      const std::vector<int64_t>& kept = sel.layers[l][h];
      const std::vector<int64_t>& chosen = sel.ranked[l][h];
      const int64_t first = end - static_cast<int64_t>(kept.size());
      for (size_t i = static_cast<size_t>(std::llround(share * static_cast<double>(chosen.size()))); i < chosen.size(); ++i)
        demoted[h].push_back(first + (std::lower_bound(kept.begin(), kept.end(), chosen[i]) - kept.begin()));
    }
    sel.kv->drop_copies(static_cast<int32_t>(l), demoted);
  }
}

void Context::forward_ubatch(Ubatch& ub, float* logits_out) {
  const ModelConfig& c = model_.config();
  const int n = ub.end - ub.begin, d = c.n_embd;
  const ScopedTimer total(op_times_.total_ms);
  std::vector<SequenceRows> seqs = ub.seqs;
  for (SequenceRows& sr : seqs)
    sr.slot0 = sr.kv->append({ub.batch.positions.data() + ub.begin + sr.row0, static_cast<size_t>(sr.n)});
  std::vector<int> all_rows(static_cast<size_t>(n));
  std::iota(all_rows.begin(), all_rows.end(), 0);
  Forward f{model_, *s_, report_, op_times_, *observer_, n, seqs, {}, all_rows, params_.kv_rotation, params_.kv_center_keys,
            ub.selections.empty() ? nullptr : &ub.selections};
  f.dca = {params_.dca_chunk, std::max(params_.dca_local, 0)};
  Activations& s = *s_;

  const TensorInfo& embd = model_.token_embd();
  for (int i = 0; i < n; ++i) {
    float* x = s.x.data() + static_cast<size_t>(i) * d;
    kernels::dequantize_row(embd.type, embd.row(ub.batch.tokens[ub.begin + i]), x, d);
    if (c.embedding_scale != 1.f)
      for (int e = 0; e < d; ++e) x[e] *= c.embedding_scale;
  }

  // The last layer only feeds the logits: past its K/V (cached for later
  // tokens), only the rows that want logits are computed, as llama.cpp does,
  // each as it would be alone. Observers of every layer's attention keep all rows.
  // A KV policy's observation window needs its rows' queries there too.
  const bool prune_last = !observer_->keeps_every_row();
  std::vector<int> last_rows = ub.logit_rows;
  // One that accumulates the attention rows receive (H2O) needs every query.
  for (const SequenceRows& sr : seqs) {
    const int from = sr.kv_policy && sr.kv_policy->accumulates() ? 0
                     : sr.selection >= 0                          ? std::max(0, sr.n - sr.kv_policy->window())
                                                                  : sr.n;
    for (int i = from; i < sr.n; ++i) last_rows.push_back(sr.row0 + i);
  }
  std::sort(last_rows.begin(), last_rows.end());
  last_rows.erase(std::unique(last_rows.begin(), last_rows.end()), last_rows.end());
  for (int l = 0; l < c.n_layer; ++l) {
    f.active = l == c.n_layer - 1 && prune_last ? std::span<const int>(last_rows) : std::span<const int>(all_rows);
    model_.arch().layer(f, l);
  }

  // The policy's choice, layer by layer: each (layer, head) keeps the rows it chose.
  for (KvSelection& sel : ub.selections) {
    const ScopedTimer timer(op_times_.kv_store_ms);
    sel.kv->keep_rows(sel.layers);  // changes nothing when it throws: demote after it
    if (!sel.ranked.empty()) split_precision(sel);
  }
  for (const SequenceRows& sr : seqs) release_window_pages(*sr.kv);

  if (ub.logit_rows.empty()) return;
  const int rows = static_cast<int>(ub.logit_rows.size());
  for (int k = 0; k < rows; ++k)
    std::copy_n(s.x.data() + static_cast<size_t>(ub.logit_rows[k]) * d, d, s.proj.data() + static_cast<size_t>(k) * d);
  kernels::rms_norm(s.proj.data(), f32_data(model_.output_norm()), s.xn.data(), rows, d, c.rms_eps);
  const ScopedTimer timer(op_times_.weight_gemm_ms);
  kernels::matmul(model_.output(), s.xn.data(), rows, logits_out, blocks::gemv_rows(f, ub.logit_rows));
  if (c.logit_softcap > 0.f)
    for (int64_t i = 0; i < static_cast<int64_t>(rows) * c.n_vocab; ++i)
      logits_out[i] = c.logit_softcap * std::tanh(logits_out[i] / c.logit_softcap);
}

}  // namespace skim
