#include "eval/logit_compare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "skim/perplexity.h"

namespace skim::eval {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// log-softmax of one row, in double.
void log_softmax(const float* logits, int n, std::vector<double>& out) {
  out.resize(n);
  const float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double log_z = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[i] = logits[i] - log_z;
}

struct RowScore {
  double nll_dense = 0, nll = 0, kl = 0;
  bool top1_agree = true;
};

RowScore compare_row(const float* dense, const float* method, int n_vocab, int32_t next) {
  thread_local std::vector<double> lp, lq;
  log_softmax(dense, n_vocab, lp);
  RowScore r;
  r.nll_dense = -lp[next];
  if (!method) {
    r.nll = r.nll_dense;
    return r;
  }
  log_softmax(method, n_vocab, lq);
  r.nll = -lq[next];
  for (int i = 0; i < n_vocab; ++i) r.kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  r.kl = std::max(0.0, r.kl);
  r.top1_agree = std::max_element(dense, dense + n_vocab) - dense == std::max_element(method, method + n_vocab) - method;
  return r;
}

}  // namespace

PplRecord compare_window(Context& dense, Context* method, std::span<const int32_t> window) {
  const int64_t n = static_cast<int64_t>(window.size());
  const int n_vocab = dense.model().config().n_vocab;
  if (n < 4) throw std::invalid_argument("perplexity windows need at least 4 tokens");
  const int64_t first = n / 2;
  PplRecord rec;
  rec.length = static_cast<int>(n);

  // Scores rows [row0, row0 + rows) given both contexts' logits for them.
  std::vector<RowScore> scores;
  auto score_rows = [&](int64_t row0, int64_t rows, const float* dense_logits, const float* method_logits) {
    const int64_t count = std::max<int64_t>(0, std::min(rows, n - 1 - row0));  // the last position has no next token
    scores.assign(count, {});
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i)
      scores[i] = compare_row(dense_logits + i * n_vocab, method_logits ? method_logits + i * n_vocab : nullptr, n_vocab,
                              window[row0 + i + 1]);
    for (const RowScore& s : scores) {
      rec.nll_dense += s.nll_dense;
      rec.nll += s.nll;
      rec.top1_agree += s.top1_agree;
      if (method_logits) rec.kl.push_back(static_cast<float>(s.kl));
    }
    rec.scored += count;
  };

  dense.clear();
  const Clock::time_point t0 = Clock::now();
  if (!method) {
    dense.decode_streaming(window, first, [&](int64_t row0, int64_t rows, const float* l) { score_rows(row0, rows, l, nullptr); });
    rec.prefill_ms = ms_since(t0);  // includes the scoring, which is small next to the prefill
    rec.density = 1;
    return rec;
  }

  method->clear();
  method->reset_attention_report();
  int64_t dense_done = 0;
  std::vector<float> dense_rows;
  double outside_ms = 0;  // dense and scoring, run from inside the method's prefill
  decode_scored(*method, window, first, [&](int64_t row0, int64_t rows, const float* method_logits) {
    const Clock::time_point t_in = Clock::now();
    dense_rows.resize(static_cast<size_t>(rows) * n_vocab);
    const int64_t base = dense_done;
    dense.decode_streaming(window.subspan(base, row0 + rows - base), row0 - base, [&](int64_t r0, int64_t r, const float* l) {
      std::copy(l, l + r * n_vocab, dense_rows.begin() + (base + r0 - row0) * n_vocab);
    });
    dense_done = row0 + rows;
    score_rows(row0, rows, dense_rows.data(), method_logits);
    outside_ms += ms_since(t_in);
  });
  rec.prefill_ms = ms_since(t0) - outside_ms;
  rec.density = method->attention_report().density();
  return rec;
}

}  // namespace skim::eval
