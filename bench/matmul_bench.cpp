// Throughput of kernels::matmul on SmolLM2-135M's weight shapes.
//
//   matmul_bench [--model smollm2|qwen0.5b] [--types T1,T2,...] [--min-seconds S] [--prefill-rows M]
//                [--isa scalar|avx2|avx512]   (the decode kernels' instruction set; default: the best here)
//
// For each shape: prefill (m = 512, or M rows) in GFLOP/s on the f32, the
// int8 and the bf16 GEMM path, next to plain OpenBLAS sgemm on an f32 copy of the same
// weights (the ceiling the f32 panel path aims at), and
// decode (m = 1) as time per call and weight GB/s, both with the weights hot in
// cache (one matrix) and cold (rotating over copies larger than the L3), with
// 1 and 2 threads. Each is timed per call: the median is the typical speed, the
// best (marked *) the speed without interference from other processes.
// Weights are random: speed does not depend on the values.
// It first prints the f32 FMA peak of the machine, the ceiling for prefill.
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/dequant.h"
#include "kernels/f16.h"
#include "kernels/matmul.h"
#include "kernels/quant_dot.h"
#include "skim/gguf.h"

namespace {

using skim::GgmlType;

struct Shape {
  const char* role;
  int64_t k, n;
  GgmlType type;
};

// The model's matrices: attention q/o (576x576), k/v (576->192), MLP up/gate
// (576->1536), down (1536->576) in Q4_1; the tied embedding/output in Q8_0.
const Shape kModelShapes[] = {
    {"attn_q/o", 576, 576, GgmlType::Q4_1},    {"attn_k/v", 576, 192, GgmlType::Q4_1},
    {"ffn_up/gate", 576, 1536, GgmlType::Q4_1}, {"ffn_down", 1536, 576, GgmlType::Q4_1},
    {"output", 576, 49152, GgmlType::Q8_0},
};

// Qwen2.5-0.5B Q4_K_M: q/o (896x896) and k/v (896->128) in Q5_0 (half the v in
// Q8_0), MLP up/gate (896->4864) in Q5_0, down (4864->896) in Q4_K or Q6_K.
const Shape kQwenShapes[] = {
    {"attn_q/o", 896, 896, GgmlType::Q5_0},     {"attn_k/v", 896, 128, GgmlType::Q5_0},
    {"attn_v", 896, 128, GgmlType::Q8_0},       {"ffn_up/gate", 896, 4864, GgmlType::Q5_0},
    {"ffn_down", 4864, 896, GgmlType::Q4_K},    {"ffn_down", 4864, 896, GgmlType::Q6_K},
};

GgmlType type_from_name(const std::string& name) {
  for (uint32_t id = 0; id < 64; ++id)
    if (auto t = skim::type_traits(id); t && name == t->name) return static_cast<GgmlType>(id);
  throw std::invalid_argument("unknown type name: " + name);
}

// Random block bytes with small finite f16 scales (or random floats).
std::vector<uint8_t> random_weights(GgmlType type, int64_t n, int64_t k, std::mt19937_64& rng) {
  std::vector<uint8_t> w(skim::row_bytes(type, k) * n);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  if (type == GgmlType::F32) {
    std::uniform_real_distribution<float> u(-1, 1);
    for (size_t i = 0; i < w.size() / 4; ++i) {
      const float v = u(rng);
      std::memcpy(w.data() + 4 * i, &v, 4);
    }
    return w;
  }
  // Every block size is even, so each f16 field's high byte sits at an odd
  // offset; clearing its top exponent bit keeps every scale finite and below 2.
  for (size_t i = 1; i < w.size(); i += 2) w[i] &= 0xBF;
  return w;
}

struct Timing {
  double median;  // typical seconds per call
  double best;    // fastest call: the code's speed when nothing else interferes
};

// Times single calls of f for at least min_seconds (and 5 calls).
template <class F>
Timing time_calls(F&& f, double min_seconds) {
  f();  // warm up (allocations, page faults, OpenMP team)
  std::vector<double> times;
  const auto start = std::chrono::steady_clock::now();
  while (times.size() < 5 ||
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < min_seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], times.front()};
}

// Twelve independent FMA chains (more than latency x throughput), in registers.
__attribute__((target("avx2,fma"))) float fma_chains(int64_t iterations) {
  __m256 a0 = _mm256_set1_ps(0.0f), a1 = _mm256_set1_ps(0.1f), a2 = _mm256_set1_ps(0.2f), a3 = _mm256_set1_ps(0.3f),
         a4 = _mm256_set1_ps(0.4f), a5 = _mm256_set1_ps(0.5f), a6 = _mm256_set1_ps(0.6f), a7 = _mm256_set1_ps(0.7f),
         a8 = _mm256_set1_ps(0.8f), a9 = _mm256_set1_ps(0.9f), a10 = _mm256_set1_ps(1.0f), a11 = _mm256_set1_ps(1.1f);
  const __m256 mul = _mm256_set1_ps(0.9999f), add = _mm256_set1_ps(1e-4f);
  for (int64_t i = 0; i < iterations; ++i) {
    a0 = _mm256_fmadd_ps(a0, mul, add), a1 = _mm256_fmadd_ps(a1, mul, add), a2 = _mm256_fmadd_ps(a2, mul, add);
    a3 = _mm256_fmadd_ps(a3, mul, add), a4 = _mm256_fmadd_ps(a4, mul, add), a5 = _mm256_fmadd_ps(a5, mul, add);
    a6 = _mm256_fmadd_ps(a6, mul, add), a7 = _mm256_fmadd_ps(a7, mul, add), a8 = _mm256_fmadd_ps(a8, mul, add);
    a9 = _mm256_fmadd_ps(a9, mul, add), a10 = _mm256_fmadd_ps(a10, mul, add), a11 = _mm256_fmadd_ps(a11, mul, add);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                               _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
  return _mm256_cvtss_f32(s);
}

// The machine's f32 FMA ceiling with `threads` threads (no memory traffic);
// prefill GFLOP/s are best read against it.
double fma_peak_gflops(int threads) {
  constexpr int64_t kIterations = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += fma_chains(kIterations);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sink == 12345.0f) std::printf(" ");  // keeps the chains alive
    best = std::max(best, threads * kIterations * 12 * 16.0 / elapsed / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Shape> model_shapes(std::begin(kModelShapes), std::end(kModelShapes));
  std::vector<Shape> shapes = model_shapes;
  double min_seconds = 0.6;
  int64_t m_prefill = 512;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--types" && i + 1 < argc) {
      std::vector<GgmlType> types;
      std::string list = argv[++i];
      for (size_t pos = 0; pos <= list.size();) {
        const size_t comma = std::min(list.find(',', pos), list.size());
        try {
          types.push_back(type_from_name(list.substr(pos, comma - pos)));
        } catch (const std::exception& e) {
          std::fprintf(stderr, "%s\n", e.what());
          return 2;
        }
        pos = comma + 1;
      }
      std::vector<Shape> expanded;
      for (const Shape& s : model_shapes)
        for (GgmlType t : types)
          if (s.k % skim::traits(t).block_size == 0) expanded.push_back({s.role, s.k, s.n, t});
      shapes = expanded;
    } else if (arg == "--model" && i + 1 < argc && (argv[i + 1] == std::string("smollm2") ||
                                                      argv[i + 1] == std::string("qwen0.5b"))) {
      if (argv[++i] == std::string("smollm2"))
        model_shapes.assign(std::begin(kModelShapes), std::end(kModelShapes));
      else
        model_shapes.assign(std::begin(kQwenShapes), std::end(kQwenShapes));
      shapes = model_shapes;
    } else if (arg == "--min-seconds" && i + 1 < argc) {
      min_seconds = std::atof(argv[++i]);
    } else if (arg == "--isa" && i + 1 < argc) {
      const std::string name = argv[++i];
      const auto isa = name == "scalar" ? skim::kernels::KernelIsa::kScalar
                       : name == "avx2" ? skim::kernels::KernelIsa::kAvx2
                                        : skim::kernels::KernelIsa::kAvx512Vnni;
      if (name != "scalar" && name != "avx2" && name != "avx512") {
        std::fprintf(stderr, "matmul_bench: unknown --isa '%s' (scalar, avx2, avx512)\n", name.c_str());
        return 2;
      }
      try {
        skim::kernels::set_kernel_isa(isa);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "matmul_bench: %s\n", e.what());
        return 2;
      }
    } else if (arg == "--prefill-rows" && i + 1 < argc && std::atoll(argv[i + 1]) > 4) {
      m_prefill = std::atoll(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--model smollm2|qwen0.5b] [--types T1,T2,...] [--min-seconds S] [--prefill-rows M (> 4)] [--isa scalar|avx2|avx512]\n", argv[0]);
      return 2;
    }
  }

  std::printf("f32 FMA peak: %.1f GFLOP/s (1 thread), %.1f GFLOP/s (2 threads)\n", fma_peak_gflops(1),
              fma_peak_gflops(2));
  std::mt19937_64 rng(42);
  std::printf("prefill m=%lld: GFLOP/s of matmul, median and best call; decode m=1: microseconds per call\n"
              "(median, best) and weight GB/s of the best call, hot (same matrix each call) and cold (rotating\n"
              "over copies larger than the L3). Last: OpenBLAS sgemm on f32 copies of the weights, for scale.\n",
              static_cast<long long>(m_prefill));
  std::printf("%-12s %-5s %6s %6s %3s | %7s %7s | %7s %7s | %7s %7s | %8s %8s %6s | %8s %8s %6s\n", "matrix", "type",
              "k", "n", "thr", "f32", "best", "int8", "best", "bf16", "best", "hot us", "best", "GB/s", "cold us", "best",
              "GB/s");
  struct Prepared {
    Shape shape;
    std::vector<uint8_t> w;
    std::vector<float> wf, x;
  };
  std::vector<Prepared> prepared;
  for (const Shape& s : shapes) {
    Prepared p{s, random_weights(s.type, s.n, s.k, rng), std::vector<float>(s.n * s.k),
               std::vector<float>(m_prefill * s.k)};
    skim::TensorInfo t;
    t.name = s.role;
    t.type = s.type;
    t.dims = {s.k, s.n};
    t.data = p.w.data();
    t.nbytes = p.w.size();
    for (int64_t r = 0; r < s.n; ++r) skim::kernels::dequantize_row(s.type, t.row(r), p.wf.data() + r * s.k, s.k);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : p.x) v = normal(rng);

    // Copies of the matrix totalling > 64 MiB, so the cold GEMV streams from DRAM.
    const size_t copies = std::max<size_t>(2, (64u << 20) / p.w.size() + 1);
    std::vector<uint8_t> cold_pool(p.w.size() * copies);
    for (size_t c = 0; c < copies; ++c) std::memcpy(cold_pool.data() + c * p.w.size(), p.w.data(), p.w.size());
    std::vector<float> y(m_prefill * s.n);

    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      const double flops = 2.0 * m_prefill * s.n * s.k;
      skim::kernels::set_gemm_path(skim::kernels::GemmPath::kF32);
      const Timing prefill =
          time_calls([&] { skim::kernels::matmul(t, p.x.data(), m_prefill, y.data()); }, min_seconds);
      skim::kernels::set_gemm_path(skim::kernels::GemmPath::kInt8);
      const Timing prefill_int8 =
          time_calls([&] { skim::kernels::matmul(t, p.x.data(), m_prefill, y.data()); }, min_seconds);
      skim::kernels::set_gemm_path(skim::kernels::GemmPath::kBf16);
      const Timing prefill_bf16 =
          time_calls([&] { skim::kernels::matmul(t, p.x.data(), m_prefill, y.data()); }, min_seconds);
      const Timing gemv = time_calls([&] { skim::kernels::matmul(t, p.x.data(), 1, y.data()); }, min_seconds);
      size_t next = 0;
      skim::TensorInfo tc = t;
      const Timing cold = time_calls(
          [&] {
            tc.data = cold_pool.data() + (next++ % copies) * p.w.size();
            skim::kernels::matmul(tc, p.x.data(), 1, y.data());
          },
          min_seconds);
      const double bytes = static_cast<double>(p.w.size());
      std::printf("%-12s %-5s %6lld %6lld %3d | %7.1f %7.1f | %7.1f %7.1f | %7.1f %7.1f | %8.1f %8.1f %6.1f | %8.1f %8.1f %6.1f\n",
                  s.role, skim::traits(s.type).name, static_cast<long long>(s.k), static_cast<long long>(s.n),
                  threads, flops / prefill.median / 1e9, flops / prefill.best / 1e9,
                  flops / prefill_int8.median / 1e9, flops / prefill_int8.best / 1e9, flops / prefill_bf16.median / 1e9,
                  flops / prefill_bf16.best / 1e9, gemv.median * 1e6,
                  gemv.best * 1e6,
                  bytes / gemv.best / 1e9, cold.median * 1e6, cold.best * 1e6, bytes / cold.best / 1e9);
      std::fflush(stdout);
    }
    prepared.push_back(std::move(p));
  }

  // OpenBLAS with its own threads last: its workers keep spinning for a while
  // after a call and would slow the measurements above.
  std::printf("\nOpenBLAS sgemm, f32 weights, m=%lld (GFLOP/s median / best)\n", static_cast<long long>(m_prefill));
  for (const Prepared& p : prepared) {
    const Shape& s = p.shape;
    std::vector<float> y(m_prefill * s.n);
    std::printf("%-12s %6lld %6lld |", s.role, static_cast<long long>(s.k), static_cast<long long>(s.n));
    for (int threads : {1, 2}) {
      openblas_set_num_threads(threads);
      const Timing sgemm = time_calls(
          [&] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m_prefill, s.n, s.k, 1.0f, p.x.data(), s.k,
                        p.wf.data(), s.k, 0.0f, y.data(), s.n);
          },
          min_seconds);
      const double flops = 2.0 * m_prefill * s.n * s.k;
      std::printf("  %d thr: %6.1f / %6.1f", threads, flops / sgemm.median / 1e9, flops / sgemm.best / 1e9);
    }
    std::printf("\n");
  }
  openblas_set_num_threads(1);
  return 0;
}
