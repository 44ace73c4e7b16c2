#include "skim/generate.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include <fmt/format.h>

namespace skim {
namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

Session::Session(const Tokenizer& tok, int seq_id, const std::vector<int32_t>& prompt, Sampler sampler)
    : tok_(tok), seq_id_(seq_id), history_(prompt), sampler_(std::move(sampler)), stream_(tok) {
  result_.stop_reason = "length";
  result_.timings.n_prompt = static_cast<int>(prompt.size());
}

bool Session::accept(std::span<const float> logits, int n_cached, int n_ctx, const GenerationOptions& opts) {
  if (done_) throw std::logic_error("Session::accept after generation stopped");
  const int32_t id = sampler_.sample(logits, history_);
  ++result_.timings.n_gen;
  done_ = true;
  if (!opts.ignore_eog && tok_.is_eog(id)) {
    result_.stop_reason = "eog";
    return false;
  }
  result_.tokens.push_back(id);
  history_.push_back(id);
  const std::string piece = stream_.push(id);
  result_.text += piece;
  if (opts.on_text && !piece.empty()) opts.on_text(piece);
  if (opts.n_predict >= 0 && result_.timings.n_gen >= opts.n_predict) return false;
  if (n_cached >= n_ctx) {
    result_.stop_reason = "context";
    return false;
  }
  done_ = false;
  return true;
}

std::string Session::finish() {
  const std::string tail = stream_.flush();
  result_.text += tail;
  return tail;
}

size_t reusable_prefix(const Context& ctx, std::span<const int32_t> cached, size_t gemm_rows,
                       std::span<const int32_t> prompt) {
  const size_t rest = static_cast<size_t>(ctx.gemm_rows());
  if (prompt.size() <= rest) return 0;
  const size_t n = std::min({cached.size(), gemm_rows, prompt.size() - rest});
  return static_cast<size_t>(std::mismatch(cached.begin(), cached.begin() + n, prompt.begin()).first - cached.begin());
}

namespace {
constexpr const char* kGemmRowsKey = "skim.gemm_rows";
}

std::map<std::string, std::string> gemm_rows_meta(size_t gemm_rows) { return {{kGemmRowsKey, std::to_string(gemm_rows)}}; }

size_t saved_gemm_rows(const std::map<std::string, std::string>& meta, size_t n_rows) {
  const auto it = meta.find(kGemmRowsKey);
  return std::min<size_t>(it == meta.end() ? 0 : std::stoull(it->second), n_rows);
}

GenerationResult generate(Context& ctx, const std::vector<int32_t>& prompt, Sampler& sampler,
                          const GenerationOptions& opts) {
  Session s(ctx.model().tokenizer(), 0, prompt, sampler);
  GenerationTimings& t = s.result().timings;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = ctx.decode(std::span(prompt).subspan(static_cast<size_t>(opts.n_reused)), false, opts.on_prefill);
  t.prompt_ms = ms_since(t0);

  bool more = s.accept(logits, ctx.n_cached(), ctx.n_ctx(), opts);
  t.ttft_ms = ms_since(t0);
  const auto t_gen = std::chrono::steady_clock::now();
  while (more) {
    const int32_t next[1] = {s.last_token()};
    logits = ctx.decode(next);
    ++t.n_decoded;
    more = s.accept(logits, ctx.n_cached(), ctx.n_ctx(), opts);
  }
  t.gen_ms = ms_since(t_gen);
  const std::string tail = s.finish();
  if (opts.on_text && !tail.empty()) opts.on_text(tail);
  sampler = s.sampler();
  return s.result();
}

std::vector<GenerationResult> generate_parallel(Context& ctx, const std::vector<int32_t>& prompt,
                                                std::vector<Sampler> samplers, const GenerationOptions& opts) {
  const int n = static_cast<int>(samplers.size());
  if (n < 1 || n > ctx.n_seq_max())
    throw std::invalid_argument(fmt::format("{} parallel sequences, the context holds {}", n, ctx.n_seq_max()));
  GenerationOptions quiet = opts;
  quiet.on_text = nullptr;
  std::vector<Session> sessions;
  for (int i = 0; i < n; ++i) sessions.emplace_back(ctx.model().tokenizer(), i, prompt, std::move(samplers[i]));
  ctx.clear();

  auto t0 = std::chrono::steady_clock::now();
  const std::vector<float> first = ctx.decode(prompt, false, opts.on_prefill);
  for (int i = 1; i < n; ++i) ctx.copy_sequence(0, i);
  const double prompt_ms = ms_since(t0);
  for (Session& s : sessions) s.accept(first, ctx.n_cached(s.seq_id()), ctx.n_ctx(), quiet);
  const double ttft_ms = ms_since(t0);

  const auto t_gen = std::chrono::steady_clock::now();
  const size_t n_vocab = static_cast<size_t>(ctx.model().config().n_vocab);
  for (;;) {
    Batch step;
    std::vector<Session*> live;
    for (Session& s : sessions)
      if (!s.done()) {
        step.add(s.last_token(), ctx.n_past(s.seq_id()), s.seq_id(), true);
        live.push_back(&s);
      }
    if (live.empty()) break;
    const std::vector<float> logits = ctx.decode(step);
    for (size_t k = 0; k < live.size(); ++k) {
      ++live[k]->result().timings.n_decoded;
      live[k]->accept({logits.data() + k * n_vocab, n_vocab}, ctx.n_cached(live[k]->seq_id()), ctx.n_ctx(), quiet);
    }
  }
  const double gen_ms = ms_since(t_gen);
  std::vector<GenerationResult> results;
  for (Session& s : sessions) {
    s.finish();
    GenerationTimings& t = s.result().timings;
    t.prompt_ms = prompt_ms;
    t.ttft_ms = ttft_ms;
    t.gen_ms = gen_ms;
    results.push_back(std::move(s.result()));
  }
  return results;
}

}  // namespace skim
