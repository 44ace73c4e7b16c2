// Throughput of skim's attention kernel, next to llama.cpp's CPU flash
// attention (ggml_flash_attn_ext) on the same data and thread count when the
// bench is built against the peer ggml (SKIM_HAVE_GGML).
//
//   attention_bench [--threads N] [--min-seconds S] [--sizes 2048,8192]
//                   [--clock wall|cpu] [--no-ggml] [--no-prefill] [--no-bf16] [--no-sparse] [--no-decode]
//                   [--decode-kv f16,q8_0,q4_0]
//
// Shapes: d = 64 with 9 query / 3 KV heads (SmolLM2-135M) and d = 128 with
// 12 / 2 heads; K/V in f16 as in the KV cache; Q and O in f32.
//   1. Dense causal prefill of n rows at position 0, in causal-effective
//      GFLOP/s = 2 * 2 * n*n/2 * d * Hq / time (QK^T and PV over the causal half).
//   2. Sparse plans at densities 5/10/25/50% (random 64x64 block plans per q
//      head and per KV group, and column-heavy plans), as time / (density *
//      dense time): 1.0 means the sparse kernel costs exactly its share.
//   3. Decode (one row per head) at an 8K context: time per call and KV GB/s;
//      then the same with K and V stored in each --decode-kv format in a
//      paged cache, as a ratio to skim's f16 time in the same run.
// Each time is the best of at least 3 runs (more until --min-seconds have
// passed); skim and ggml runs alternate so both see the same machine load.
// --clock cpu measures process CPU time instead of wall time: use it with
// --threads 1 on a machine shared with other jobs.
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/attention_plan.h"
#include "kernels/attention.h"
#include "kernels/f16.h"
#include "kernels/kv_codec.h"
#include "kv/kv_pool.h"
#include "kv/kv_sequence.h"
#include "kv/kv_types.h"

#ifdef SKIM_HAVE_GGML
#include "ggml-cpu.h"
#include "ggml.h"
#endif

namespace {

using skim::kernels::Plan;
using skim::kernels::PlanBuilder;
using skim::kernels::PlanShape;
using skim::kernels::AttnParams;
using skim::kernels::KvDType;

struct Options {
  int threads = 0;
  double min_seconds = 1.0;
  std::vector<int64_t> sizes = {2048, 8192};
  bool ggml = true, prefill = true, sparse = true, decode = true, bf16 = true;
  bool cpu_clock = false;
  std::vector<KvDType> decode_kv;  // formats of the per-format decode table
};

struct HeadShape {
  int32_t d, hq, hkv;
};
const HeadShape kShapes[] = {{64, 9, 3}, {128, 12, 2}};

double now(bool cpu) {
  if (cpu) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best times of one or more functions over repeated calls, alternating
// between them so that a change in machine load hits all of them alike (one
// warm-up call each first).
std::vector<double> best_times(const Options& opt, const std::vector<std::function<void()>>& fns) {
  for (const auto& fn : fns) fn();
  std::vector<double> best(fns.size(), 1e30);
  const double start = now(false);
  int reps = 0;
  while (reps < 3 || now(false) - start < opt.min_seconds) {
    for (size_t i = 0; i < fns.size(); ++i) {
      const double t0 = now(opt.cpu_clock);
      fns[i]();
      best[i] = std::min(best[i], now(opt.cpu_clock) - t0);
    }
    ++reps;
  }
  return best;
}

double best_time(const Options& opt, const std::function<void()>& fn) { return best_times(opt, {fn})[0]; }

// Q [hq][n][d] f32, K/V [hkv][n_kv][d] f16, O in ggml's [n][hq][d] layout.
struct Data {
  HeadShape s;
  int64_t n_rows, n_kv, q_pos0;
  std::vector<float> q, out;
  std::vector<uint16_t> k, v;

  Data(HeadShape shape, int64_t rows, int64_t kv, uint64_t seed) : s(shape), n_rows(rows), n_kv(kv), q_pos0(kv - rows) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    q.resize(static_cast<size_t>(s.hq) * n_rows * s.d);
    for (float& x : q) x = normal(rng);
    k.resize(static_cast<size_t>(s.hkv) * n_kv * s.d);
    v.resize(k.size());
    for (auto& x : k) x = skim::kernels::f32_to_f16(normal(rng));
    for (auto& x : v) x = skim::kernels::f32_to_f16(normal(rng));
    out.assign(q.size(), 0.0f);
  }

  AttnParams params() {
    AttnParams p;
    p.n_q_heads = s.hq;
    p.n_kv_heads = s.hkv;
    p.head_dim = s.d;
    p.n_rows = n_rows;
    p.q_pos0 = q_pos0;
    p.q = q.data();
    p.kv = skim::kernels::KvView::contiguous(k.data(), v.data(), KvDType::F16, n_kv * s.d, s.d, n_kv);
    p.out = out.data();
    p.out_head_stride = s.d;
    p.out_row_stride = static_cast<int64_t>(s.hq) * s.d;
    p.validate_plan = false;
    return p;
  }
};

double causal_flops(const HeadShape& s, int64_t n) { return 2.0 * 2.0 * (static_cast<double>(n) * n / 2.0) * s.d * s.hq; }

// Relative L2 error of a against b.
double rel_l2(const float* a, const float* b, size_t n) {
  double e = 0.0, r = 0.0;
  for (size_t i = 0; i < n; ++i) {
    e += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    r += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(e / std::max(r, 1e-300));
}

#ifdef SKIM_HAVE_GGML
// One ggml_flash_attn_ext graph over copies of the same data.
class GgmlAttention {
 public:
  GgmlAttention(const Data& data, bool causal_mask, int threads) : threads_(threads) {
    const HeadShape& s = data.s;
    const size_t q_bytes = data.q.size() * 4, kv_bytes = data.k.size() * 2;
    const size_t mask_bytes = causal_mask ? static_cast<size_t>(data.n_kv) * data.n_rows * 2 : 0;
    ggml_init_params ip{};
    ip.mem_size = 2 * q_bytes + 2 * kv_bytes + mask_bytes + (256u << 20);
    ip.mem_buffer = nullptr;
    ip.no_alloc = false;
    ctx_ = ggml_init(ip);
    if (!ctx_) throw std::runtime_error("ggml_init failed");
    ggml_tensor* q = ggml_new_tensor_3d(ctx_, GGML_TYPE_F32, s.d, data.n_rows, s.hq);
    ggml_tensor* k = ggml_new_tensor_3d(ctx_, GGML_TYPE_F16, s.d, data.n_kv, s.hkv);
    ggml_tensor* v = ggml_new_tensor_3d(ctx_, GGML_TYPE_F16, s.d, data.n_kv, s.hkv);
    std::memcpy(q->data, data.q.data(), q_bytes);
    std::memcpy(k->data, data.k.data(), kv_bytes);
    std::memcpy(v->data, data.v.data(), kv_bytes);
    ggml_tensor* mask = nullptr;
    if (causal_mask) {
      mask = ggml_new_tensor_2d(ctx_, GGML_TYPE_F16, data.n_kv, data.n_rows);
      auto* m = static_cast<ggml_fp16_t*>(mask->data);
      const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), minus_inf = ggml_fp32_to_fp16(-INFINITY);
      for (int64_t i = 0; i < data.n_rows; ++i)
        for (int64_t j = 0; j < data.n_kv; ++j) m[i * data.n_kv + j] = j <= data.q_pos0 + i ? zero : minus_inf;
    }
    out_ = ggml_flash_attn_ext(ctx_, q, k, v, mask, 1.0f / std::sqrt(static_cast<float>(s.d)), 0.0f, 0.0f);
    graph_ = ggml_new_graph(ctx_);
    ggml_build_forward_expand(graph_, out_);
  }
  ~GgmlAttention() { ggml_free(ctx_); }
  GgmlAttention(const GgmlAttention&) = delete;
  GgmlAttention& operator=(const GgmlAttention&) = delete;

  void run() {
    if (ggml_graph_compute_with_ctx(ctx_, graph_, threads_) != GGML_STATUS_SUCCESS)
      throw std::runtime_error("ggml_graph_compute failed");
  }
  const float* out() const { return static_cast<const float*>(out_->data); }

 private:
  int threads_;
  ggml_context* ctx_ = nullptr;
  ggml_cgraph* graph_ = nullptr;
  ggml_tensor* out_ = nullptr;
};

#endif

// ---------------------------------------------------------------------------

void bench_dense(const Options& opt) {
  std::printf("\n== Dense causal prefill (f16 KV, %d threads), causal-effective GFLOP/s\n", opt.threads);
  std::printf("%-20s %6s %10s %9s %10s %9s %7s %10s\n", "shape", "n", "skim ms", "GFLOP/s", "ggml ms", "GFLOP/s",
              "ratio", "rel diff");
  for (const HeadShape& s : kShapes) {
    for (int64_t n : opt.sizes) {
      Data data(s, n, n, 1);
      AttnParams p = data.params();
      const auto skim_run = [&] { skim::kernels::attention_prefill(p); };
      char label[64];
      std::snprintf(label, sizeof label, "d%d %dq/%dkv", s.d, s.hq, s.hkv);
#ifdef SKIM_HAVE_GGML
      if (opt.ggml) {
        GgmlAttention g(data, true, opt.threads);
        const std::vector<double> t = best_times(opt, {skim_run, [&] { g.run(); }});
        std::printf("%-20s %6lld %10.2f %9.1f %10.2f %9.1f %6.2fx %10.2e\n", label, static_cast<long long>(n),
                    t[0] * 1e3, causal_flops(s, n) / t[0] / 1e9, t[1] * 1e3, causal_flops(s, n) / t[1] / 1e9,
                    t[1] / t[0], rel_l2(data.out.data(), g.out(), data.out.size()));
        std::fflush(stdout);
        continue;
      }
#endif
      const double t = best_time(opt, skim_run);
      std::printf("%-20s %6lld %10.2f %9.1f %10s %9s %7s %10s\n", label, static_cast<long long>(n), t * 1e3,
                  causal_flops(s, n) / t / 1e9, "-", "-", "-", "-");
      std::fflush(stdout);
    }
  }
}

// Random 64x64-block plan: the diagonal block and the first block always, others
// with probability chosen so that the listed share is about `density`.
Plan block_plan(const Data& data, bool group, double density, uint64_t seed) {
  const HeadShape& s = data.s;
  PlanShape shape{group ? s.hkv : s.hq, group ? s.hq / s.hkv : 1, 64, data.n_rows, data.q_pos0};
  PlanBuilder b(shape);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int64_t tiles = (data.n_rows + 63) / 64;
  // Forced blocks (first + diagonal) cover about 2 / (tiles/2) of the causal area.
  const double forced = std::min(1.0, 4.0 / static_cast<double>(tiles));
  const double p = std::clamp((density - forced) / std::max(1e-9, 1.0 - forced), 0.0, 1.0);
  for (int32_t h = 0; h < shape.n_heads; ++h)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t last = data.q_pos0 + std::min<int64_t>((t + 1) * 64, data.n_rows) - 1;
      const int64_t diag = last / 64;
      for (int64_t blk = 0; blk <= diag; ++blk)
        if (blk == 0 || blk == diag || u(rng) < p) b.add_range(blk * 64, std::min((blk + 1) * 64, last + 1));
      b.end_tile();
    }
  return b.finish();
}

// Column-heavy plan: the tile's own diagonal block plus random single keys.
Plan column_plan(const Data& data, double density, uint64_t seed) {
  const HeadShape& s = data.s;
  PlanShape shape{s.hq, 1, 64, data.n_rows, data.q_pos0};
  PlanBuilder b(shape);
  std::mt19937_64 rng(seed);
  const int64_t tiles = (data.n_rows + 63) / 64;
  for (int32_t h = 0; h < shape.n_heads; ++h)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t first = data.q_pos0 + t * 64;
      const int64_t last = data.q_pos0 + std::min<int64_t>((t + 1) * 64, data.n_rows) - 1;
      const int64_t diag_begin = (first / 64) * 64;
      b.add_range(diag_begin, last + 1);
      const int64_t want = static_cast<int64_t>(density * static_cast<double>(last + 1)) - (last + 1 - diag_begin);
      if (want > 0 && diag_begin > 0) {
        std::uniform_int_distribution<int64_t> pick(0, diag_begin - 1);
        for (int64_t c = 0; c < want; ++c) b.add_column(pick(rng));
      }
      b.end_tile();
    }
  return b.finish();
}

// The same dense prefill with bf16 arithmetic (skim::kernels::AttnMath) against
// f32 and ggml in one timing loop; rel diff of the bf16 output vs f32's.
void bench_bf16(const Options& opt) {
  using skim::kernels::AttnMath;
  std::printf("\n== Dense causal prefill, bf16 arithmetic (%s dot products), %d threads, GFLOP/s\n",
              skim::kernels::cpu_has_bf16_dot() ? "AVX512-BF16" : "emulated", opt.threads);
  std::printf("%-20s %6s %10s %10s %9s %7s %10s %9s %10s\n", "shape", "n", "f32 ms", "bf16 ms", "GFLOP/s", "bf16/f32",
              "ggml ms", "vs ggml", "rel diff");
  for (const HeadShape& s : kShapes) {
    for (int64_t n : opt.sizes) {
      Data data(s, n, n, 1);
      AttnParams p = data.params();
      auto with = [&](AttnMath math) {
        return [&, math] {
          skim::kernels::set_attention_math(math);
          skim::kernels::attention_prefill(p);
        };
      };
      std::vector<std::function<void()>> runs = {with(AttnMath::kF32), with(AttnMath::kBf16)};
#ifdef SKIM_HAVE_GGML
      std::unique_ptr<GgmlAttention> g;
      if (opt.ggml) {
        g = std::make_unique<GgmlAttention>(data, true, opt.threads);
        runs.push_back([&] { g->run(); });
      }
#endif
      const std::vector<double> t = best_times(opt, runs);
      with(AttnMath::kF32)();
      const std::vector<float> f32 = data.out;
      with(AttnMath::kBf16)();
      skim::kernels::set_attention_math(AttnMath::kF32);
      char label[64];
      std::snprintf(label, sizeof label, "d%d %dq/%dkv", s.d, s.hq, s.hkv);
      char ggml_ms[32] = "-", vs_ggml[32] = "-";
      if (t.size() > 2) {
        std::snprintf(ggml_ms, sizeof ggml_ms, "%.2f", t[2] * 1e3);
        std::snprintf(vs_ggml, sizeof vs_ggml, "%.2fx", t[2] / t[1]);
      }
      std::printf("%-20s %6lld %10.2f %10.2f %9.1f %6.2fx %10s %9s %10.2e\n", label, static_cast<long long>(n),
                  t[0] * 1e3, t[1] * 1e3, causal_flops(s, n) / t[1] / 1e9, t[0] / t[1], ggml_ms, vs_ggml,
                  rel_l2(data.out.data(), f32.data(), f32.size()));
      std::fflush(stdout);
    }
  }
}

void bench_sparse(const Options& opt) {
  const int64_t n = opt.sizes.back();
  std::printf("\n== Sparse plans, n = %lld: time / (density * dense time); 1.00 = proportional\n",
              static_cast<long long>(n));
  std::printf("%-14s %-13s %8s %9s %9s %9s\n", "shape", "plan", "target", "density", "ms", "t/(r*T)");
  for (const HeadShape& s : kShapes) {
    Data data(s, n, n, 2);
    AttnParams p = data.params();
    const Plan dense = skim::kernels::make_dense_plan(PlanShape{s.hq, 1, 64, n, 0});
    const double t_dense = best_time(opt, [&] { skim::kernels::attention_prefill(p, &dense); });
    const double dense_pairs = static_cast<double>(dense.listed_pairs());
    char label[64];
    std::snprintf(label, sizeof label, "d%d %dq/%dkv", s.d, s.hq, s.hkv);
    std::printf("%-14s %-13s %8s %9.3f %9.2f %9s\n", label, "dense/head", "100%", 1.0, t_dense * 1e3, "1.00");
    for (double rho : {0.05, 0.10, 0.25, 0.50}) {
      struct Variant {
        const char* name;
        Plan plan;
      };
      Variant variants[] = {{"block/head", block_plan(data, false, rho, 10)},
                            {"block/group", block_plan(data, true, rho, 11)},
                            {"columns/head", column_plan(data, rho, 12)}};
      for (Variant& var : variants) {
        const double actual = static_cast<double>(var.plan.listed_pairs()) / dense_pairs;
        const double t = best_time(opt, [&] { skim::kernels::attention_prefill(p, &var.plan); });
        std::printf("%-14s %-13s %7.0f%% %9.3f %9.2f %9.2f\n", label, var.name, rho * 100, actual, t * 1e3,
                    t / (actual * t_dense));
        std::fflush(stdout);
      }
    }
  }
}

void bench_decode(const Options& opt) {
  const int64_t ctx = 8192;
  std::printf("\n== Decode, one row per head, %lld-token context (f16 KV)\n", static_cast<long long>(ctx));
  std::printf("%-14s %10s %9s %10s %9s %7s %10s\n", "shape", "skim us", "KV GB/s", "ggml us", "KV GB/s", "ratio",
              "rel diff");
  for (const HeadShape& s : kShapes) {
    Data data(s, 1, ctx, 3);
    AttnParams p = data.params();
    const auto skim_run = [&] { skim::kernels::attention_decode(p); };
    const double kv_bytes = 2.0 * ctx * s.d * s.hkv * 2.0;
    char label[64];
    std::snprintf(label, sizeof label, "d%d %dq/%dkv", s.d, s.hq, s.hkv);
#ifdef SKIM_HAVE_GGML
    if (opt.ggml) {
      GgmlAttention g(data, false, opt.threads);
      const std::vector<double> t = best_times(opt, {skim_run, [&] { g.run(); }});
      std::printf("%-14s %10.1f %9.1f %10.1f %9.1f %6.2fx %10.2e\n", label, t[0] * 1e6, kv_bytes / t[0] / 1e9,
                  t[1] * 1e6, kv_bytes / t[1] / 1e9, t[1] / t[0], rel_l2(data.out.data(), g.out(), data.out.size()));
      std::fflush(stdout);
      continue;
    }
#endif
    const double t = best_time(opt, skim_run);
    std::printf("%-14s %10.1f %9.1f %10s %9s %7s %10s\n", label, t * 1e6, kv_bytes / t / 1e9, "-", "-", "-", "-");
  }
  if (opt.decode_kv.empty()) return;
  std::printf("\n== Decode per KV format (K and V alike), %lld-token context\n", static_cast<long long>(ctx));
  std::printf("%-14s %-7s %10s %9s %8s\n", "shape", "format", "skim us", "KV GB/s", "vs f16");
  for (const HeadShape& s : kShapes) {
    Data data(s, 1, ctx, 3);
    AttnParams p = data.params();
    // The same rows in each format, encoded from their f16 values into a paged cache.
    std::vector<std::unique_ptr<skim::kv::KvPool>> pools;
    std::vector<std::unique_ptr<skim::kv::KvSequence>> seqs;
    std::vector<int32_t> positions(static_cast<size_t>(ctx));
    for (int64_t i = 0; i < ctx; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    std::vector<float> row(static_cast<size_t>(s.d));
    std::vector<std::function<void()>> runs{[&] { skim::kernels::attention_decode(p); }};
    std::vector<AttnParams> params(opt.decode_kv.size(), p);
    for (size_t f = 0; f < opt.decode_kv.size(); ++f) {
      const int64_t pages = s.hkv * (ctx / skim::kv::kPageRows + 1);
      pools.push_back(std::make_unique<skim::kv::KvPool>(s.d, skim::kv::KvFormat{opt.decode_kv[f], opt.decode_kv[f]}, pages));
      seqs.push_back(std::make_unique<skim::kv::KvSequence>(*pools.back(), 1, s.hkv, ctx));
      skim::kv::KvSequence& seq = *seqs.back();
      seq.append(positions);
      for (int32_t h = 0; h < s.hkv; ++h)
        for (int64_t j = 0; j < ctx; ++j) {
          const int64_t at = (static_cast<int64_t>(h) * ctx + j) * s.d;
          for (int32_t c = 0; c < s.d; ++c) row[c] = skim::kernels::f16_to_f32(data.k[at + c]);
          skim::kernels::encode_kv_row(row.data(), opt.decode_kv[f], s.d, seq.k_row(0, h, j));
          for (int32_t c = 0; c < s.d; ++c) row[c] = skim::kernels::f16_to_f32(data.v[at + c]);
          skim::kernels::encode_kv_row(row.data(), opt.decode_kv[f], s.d, seq.v_row(0, h, j));
        }
      params[f].kv = seq.view(0);
      runs.push_back([&params, f] { skim::kernels::attention_decode(params[f]); });
    }
    const std::vector<double> t = best_times(opt, runs);
    char label[64];
    std::snprintf(label, sizeof label, "d%d %dq/%dkv", s.d, s.hq, s.hkv);
    for (size_t f = 0; f <= opt.decode_kv.size(); ++f) {
      const KvDType type = f == 0 ? KvDType::F16 : opt.decode_kv[f - 1];
      const double bytes = 2.0 * s.hkv * ctx * static_cast<double>(skim::kernels::kv_row_bytes(type, s.d));
      std::printf("%-14s %-7s %10.1f %9.1f %7.2fx\n", f == 0 ? label : "", skim::kv::kv_type_name(type), t[f] * 1e6,
                  bytes / t[f] / 1e9, t[0] / t[f]);
    }
    std::fflush(stdout);
  }
}

Options parse(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--threads") {
      opt.threads = std::stoi(value());
      if (opt.threads <= 0) throw std::invalid_argument("--threads must be positive");
    } else if (a == "--min-seconds") {
      opt.min_seconds = std::stod(value());
    } else if (a == "--sizes") {
      opt.sizes.clear();
      std::string list = value();
      size_t pos = 0;
      while (pos <= list.size()) {
        const size_t comma = list.find(',', pos);
        const std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        const long long n = std::stoll(item);
        if (n <= 0) throw std::invalid_argument("--sizes: sizes must be positive");
        opt.sizes.push_back(n);
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else if (a == "--clock") {
      const std::string c = value();
      if (c != "wall" && c != "cpu") throw std::invalid_argument("--clock must be wall or cpu");
      opt.cpu_clock = c == "cpu";
    } else if (a == "--no-ggml") {
      opt.ggml = false;
    } else if (a == "--no-sparse") {
      opt.sparse = false;
    } else if (a == "--no-bf16") {
      opt.bf16 = false;
    } else if (a == "--no-prefill") {
      opt.prefill = false;
    } else if (a == "--no-decode") {
      opt.decode = false;
    } else if (a == "--decode-kv") {
      std::string list = value();
      for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        if (comma == pos) throw std::invalid_argument("--decode-kv: an empty format name in '" + list + "'");
        const KvDType type = skim::kv::parse_kv_type(list.substr(pos, comma - pos));
        if (skim::kernels::kv_grouped(type)) throw std::invalid_argument("--decode-kv: grouped formats need pages");
        opt.decode_kv.push_back(type);
        pos = comma + 1;
      }
    } else if (a == "-h" || a == "--help") {
      std::printf("attention_bench [--threads N] [--min-seconds S] [--sizes 2048,8192] [--clock wall|cpu] "
                  "[--no-ggml] [--no-prefill] [--no-bf16] [--no-sparse] [--no-decode] [--decode-kv f16,q8_0,q4_0]\n");
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument: " + a);
    }
  }
  if (opt.sizes.empty()) throw std::invalid_argument("--sizes is empty");
  return opt;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options opt = parse(argc, argv);
    if (opt.threads == 0) opt.threads = omp_get_max_threads();
    omp_set_num_threads(opt.threads);
#ifdef SKIM_HAVE_GGML
    ggml_cpu_init();
    std::printf("attention_bench: skim vs ggml_flash_attn_ext (llama.cpp peer build), %d threads, %s clock\n",
                opt.threads, opt.cpu_clock ? "cpu" : "wall");
#else
    std::printf("attention_bench: built without ggml (no peer llama.cpp found), %d threads, %s clock\n", opt.threads,
                opt.cpu_clock ? "cpu" : "wall");
#endif
    if (opt.prefill) bench_dense(opt);
    if (opt.prefill && opt.bf16) bench_bf16(opt);
    if (opt.sparse) bench_sparse(opt);
    if (opt.decode) bench_decode(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
