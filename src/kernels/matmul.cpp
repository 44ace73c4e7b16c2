#include "kernels/matmul.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <mutex>
#include <span>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <hwy/targets.h>

#include "kernels/dequant.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_int8.h"
#include "kernels/gemm_tasks.h"
#include "kernels/quant_dot.h"
#include "skim/gemm.h"

namespace skim::kernels {
namespace {

// Up to this many activation rows, matmul streams the weights once per call
// (GEMV); above it, it dequantizes panels of W and multiplies them in f32.
static_assert(kDefaultGemvRows == kMaxIntegerDotRows);
// Batched decode raises the GEMV limit for weights with an integer kernel:
// the rows are quantized in groups of kMaxIntegerDotRows and every group is
// dotted with a weight row while it is in L1, so W is still read from memory
// once. Dequantizing W for a GEMM costs more than these few rows' products
// (SmolLM2 Q4_1, 8 sequences at 1K: 2.3x the GEMM's decode rate).
// Rows of W per prefill panel: per-panel costs (OpenBLAS repacks the
// activations on every call; the packed kernel re-reads them per panel) fall
// as 1 / panel rows, while enough panels must remain to share among threads.
// The OpenBLAS fallback gives very long rows fewer rows, keeping a panel under
// kMaxPanelBytes.
constexpr int64_t kPanelRows = 128;
constexpr int64_t kMinPanelRows = 16;
constexpr int64_t kMaxPanelBytes = 1 << 20;
// Below this many weight bytes a GEMV runs on one thread: the fork/join would
// cost more than the work.
constexpr size_t kMinParallelGemvBytes = 24 * 1024;
// Weights sharing one input that one integer GEMV serves together (q, k, v).
constexpr size_t kMaxSharedInputJobs = 4;
// Batched decode (several activation groups) walks the weights in blocks of
// this many rows, each dotted with every group while it is in L1.
constexpr int64_t kGemvRowBlock = 8;
// GEMV rows are split statically, one contiguous range per thread: each
// thread then streams its weights in order, which the hardware prefetcher
// follows, and shares no chunk counter. Handing out 32-row chunks
// dynamically cost SmolLM2's decode 20-30% on a 2-core AVX2 EPYC
// (docs/results/decode-gemv.md).

std::vector<float>& thread_scratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

void use_single_threaded_blas() {
  // Parallelism comes from our OpenMP panels; OpenBLAS's own threads would
  // oversubscribe the cores.
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

int max_threads() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

__attribute__((target("avx2,fma"))) float dot_f32_avx2(const float* a, const float* b, int64_t k) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= k; i += 32)
    for (int u = 0; u < 4; ++u)
      acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * u), _mm256_loadu_ps(b + i + 8 * u), acc[u]);
  for (; i + 8 <= k; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
  const __m256 s8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float sum = _mm_cvtss_f32(s);
  for (; i < k; ++i) sum += a[i] * b[i];
  return sum;
}

// Dot of a half-precision (F16 or BF16) weight row with f32 activations,
// converting in registers.
template <bool kBf16>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load_half8(const uint16_t* w) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  if constexpr (kBf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  else return _mm256_cvtph_ps(h);
}

template <bool kBf16>
__attribute__((target("avx2,fma,f16c"))) float dot_half_avx2(const uint16_t* w, const float* x, int64_t k) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= k; i += 32)
    for (int u = 0; u < 4; ++u)
      acc[u] = _mm256_fmadd_ps(load_half8<kBf16>(w + i + 8 * u), _mm256_loadu_ps(x + i + 8 * u), acc[u]);
  for (; i + 8 <= k; i += 8) acc[0] = _mm256_fmadd_ps(load_half8<kBf16>(w + i), _mm256_loadu_ps(x + i), acc[0]);
  const __m256 s8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float sum = _mm_cvtss_f32(s);
  for (; i < k; ++i) {
    float wi;
    dequantize_row(kBf16 ? GgmlType::BF16 : GgmlType::F16, w + i, &wi, 1);
    sum += wi * x[i];
  }
  return sum;
}

float dot_f32_scalar(const float* a, const float* b, int64_t k) {
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += a[i] * b[i];
  return sum;
}

void validate(const TensorInfo& w, const float* x, int64_t m, const float* y, int64_t ldy, int64_t n_begin,
              int64_t n_end) {
  if (!can_dequantize(w.type))
    throw std::invalid_argument(
        fmt::format("matmul: weight '{}' has unsupported type id {}", w.name, static_cast<uint32_t>(w.type)));
  if (w.dims.empty() || w.row_length() <= 0)
    throw std::invalid_argument(fmt::format("matmul: weight '{}' has no rows of positive length", w.name));
  const int64_t k = w.row_length(), n = w.rows();
  if (k % traits(w.type).block_size != 0)
    throw std::invalid_argument(fmt::format("matmul: weight '{}' row length {} is not a multiple of {}'s block size",
                                            w.name, k, traits(w.type).name));
  if (w.data == nullptr || w.nbytes < static_cast<size_t>(n) * w.row_size())
    throw std::invalid_argument(fmt::format("matmul: weight '{}' data is missing or shorter than its {} x {} shape",
                                            w.name, n, k));
  if (m < 0) throw std::invalid_argument(fmt::format("matmul: negative activation row count {}", m));
  if (n_begin < 0 || n_begin > n_end || n_end > n)
    throw std::invalid_argument(
        fmt::format("matmul: output rows [{}, {}) out of range for weight '{}' with {} rows", n_begin, n_end, w.name, n));
  if (ldy < n_end - n_begin)
    throw std::invalid_argument(fmt::format("matmul: output stride {} is less than the {} output columns", ldy,
                                            n_end - n_begin));
  if (m > 0 && n_end > n_begin && (x == nullptr || y == nullptr))
    throw std::invalid_argument("matmul: null activation or output pointer");
}

// Decode with integer kernels: quantize x to 8 bits once (groups of up to
// kMaxIntegerDotRows rows), then stream the weights of every job once, each
// weight row dotted with every group. The jobs (q/k/v, or gate/up, which share
// their input) split their rows between the threads in one parallel region:
// one fork/join and one wait for the slowest thread instead of one per weight.
void gemv_integer(std::span<const GemmJob> jobs, const float* x, int64_t m, ActivationFormat format, KernelIsa isa) {
  const int64_t k = jobs.front().w->row_length(), groups = (m + kMaxIntegerDotRows - 1) / kMaxIntegerDotRows;
  thread_local std::vector<QuantizedActivations> acts;
  if (static_cast<int64_t>(acts.size()) < groups) acts.resize(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g)
    quantize_activations(x + g * kMaxIntegerDotRows * k, std::min<int64_t>(kMaxIntegerDotRows, m - g * kMaxIntegerDotRows),
                         k, format, isa, acts[static_cast<size_t>(g)]);
  struct Part {
    const uint8_t* w;
    size_t stride;  // once per part: TensorInfo::row looks the type up per call, 2% of a decode step
    RowsDotFn dot;
    const GemmJob* job;
    int64_t first;  // index of the part's first row among all jobs' rows
  };
  std::array<Part, kMaxSharedInputJobs> parts;
  if (jobs.size() > parts.size()) throw std::invalid_argument("gemv_integer: too many weights sharing one input");
  int64_t total = 0;
  size_t bytes = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const GemmJob& job = jobs[j];
    parts[j] = {job.w->data, job.w->row_size(), select_rows_dot(job.w->type, isa), &job, total};
    total += job.n_end - job.n_begin;
    bytes += static_cast<size_t>(job.n_end - job.n_begin) * parts[j].stride;
  }
  const bool parallel = bytes * groups >= kMinParallelGemvBytes;
  const QuantizedActivations* a = acts.data();
#pragma omp parallel if (parallel) num_threads(max_threads())
  {
    // Static split, as in the single-weight case: contiguous rows per thread.
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = total * t / nt, end = total * (t + 1) / nt;
    for (size_t j = 0; j < jobs.size(); ++j) {
      const Part& p = parts[j];
      const int64_t lo = std::max(begin, p.first), hi = std::min(end, p.first + p.job->n_end - p.job->n_begin);
      // Row blocks small enough to stay in L1 while every group reads them.
      const int64_t block = groups > 1 ? kGemvRowBlock : hi - lo;
      for (int64_t i = lo; i < hi; i += block) {
        const int64_t col = i - p.first, rows = std::min(block, hi - i);
        const uint8_t* w_rows = p.w + (p.job->n_begin + col) * p.stride;
        for (int64_t g = 0; g < groups; ++g)
          p.dot(w_rows, p.stride, rows, a[g], p.job->y + g * kMaxIntegerDotRows * p.job->ldy + col, p.job->ldy);
      }
    }
  }
}

// Decode for types without an integer kernel: dequantize each row, f32 dots.
void gemv_float(const TensorInfo& w, const float* x, int64_t m, float* y, int64_t ldy, int64_t n_begin,
                int64_t n_end, KernelIsa isa) {
  const int64_t k = w.row_length();
  const size_t stride = w.row_size();  // once, as in gemv_integer
  const bool parallel = static_cast<size_t>(n_end - n_begin) * stride >= kMinParallelGemvBytes;
  const auto dot = isa != KernelIsa::kScalar ? dot_f32_avx2 : dot_f32_scalar;
#pragma omp parallel if (parallel) num_threads(max_threads())
  {
    std::vector<float>& row = thread_scratch();
    if (w.type != GgmlType::F32 && row.size() < static_cast<size_t>(k)) row.resize(k);
#pragma omp for schedule(static)
    for (int64_t n = n_begin; n < n_end; ++n) {
      if (isa != KernelIsa::kScalar && (w.type == GgmlType::F16 || w.type == GgmlType::BF16)) {
        const auto* wr = reinterpret_cast<const uint16_t*>(w.data + n * stride);
        for (int64_t r = 0; r < m; ++r)
          y[r * ldy + (n - n_begin)] = w.type == GgmlType::F16 ? dot_half_avx2<false>(wr, x + r * k, k)
                                                               : dot_half_avx2<true>(wr, x + r * k, k);
        continue;
      }
      const float* wr;
      if (w.type == GgmlType::F32) {
        wr = reinterpret_cast<const float*>(w.data + n * stride);
      } else {
        dequantize_row(w.type, w.data + n * stride, row.data(), k);
        wr = row.data();
      }
      for (int64_t r = 0; r < m; ++r) y[r * ldy + (n - n_begin)] = dot(wr, x + r * k, k);
    }
  }
}

// Prefill without AVX2: panels of W rows dequantized into per-thread scratch,
// OpenBLAS sgemm on each. (On AVX2 the packed kernel below is used instead:
// besides fusing the dequantization into the packing, it avoids OpenBLAS
// 0.3.21's Zen sgemm running ~4x slower on such narrow panels in a process
// that has not yet made a wide sgemm call.)
void gemm_panels(const TensorInfo& w, const float* x, int64_t m, float* y, int64_t ldy, int64_t n_begin,
                 int64_t n_end) {
  use_single_threaded_blas();
  const int64_t k = w.row_length(), rows = n_end - n_begin;
  const int threads = max_threads();
  // Panels of at most max_panel_rows rows; while there are few, a multiple of
  // the thread count so that no thread idles at the end.
  const int64_t max_panel_rows = std::clamp<int64_t>(kMaxPanelBytes / (k * static_cast<int64_t>(sizeof(float))),
                                                     kMinPanelRows, kPanelRows);
  int64_t panels = (rows + max_panel_rows - 1) / max_panel_rows;
  if (panels < 4 * threads) panels = (panels + threads - 1) / threads * threads;
  int64_t panel_rows = (rows + panels - 1) / panels;
  panel_rows = std::max<int64_t>(8, (panel_rows + 7) / 8 * 8);
  panels = (rows + panel_rows - 1) / panel_rows;
  // Too few panels to go around: split the activation rows too.
  const int64_t m_chunks = panels < threads ? std::min<int64_t>(threads, std::max<int64_t>(1, m / 16)) : 1;
  const int64_t m_chunk_rows = (m + m_chunks - 1) / m_chunks;
  const int64_t tasks = panels * m_chunks;

#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, tasks)))
  {
    std::vector<float>& scratch = thread_scratch();
    if (w.type != GgmlType::F32 && scratch.size() < static_cast<size_t>(panel_rows * k))
      scratch.resize(panel_rows * k);
    int64_t panel_in_scratch = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t p = t / m_chunks, chunk = t % m_chunks;
      const int64_t n0 = n_begin + p * panel_rows, np = std::min(panel_rows, n_end - n0);
      const int64_t m0 = chunk * m_chunk_rows, mm = std::min(m_chunk_rows, m - m0);
      if (mm <= 0) continue;
      const float* panel;
      if (w.type == GgmlType::F32) {
        panel = reinterpret_cast<const float*>(w.row(n0));
      } else {
        if (panel_in_scratch != p) {
          for (int64_t i = 0; i < np; ++i) dequantize_row(w.type, w.row(n0 + i), scratch.data() + i * k, k);
          panel_in_scratch = p;
        }
        panel = scratch.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(mm), static_cast<int>(np),
                  static_cast<int>(k), 1.0f, x + m0 * k, static_cast<int>(k), panel, static_cast<int>(k), 0.0f,
                  y + m0 * ldy + (n0 - n_begin), static_cast<int>(ldy));
    }
  }
}

// ---------------------------------------------------------------------------
// Prefill on AVX2: a packed f32 GEMM with the dequantization fused into the
// packing of W, and the activations packed once per call for all threads.
//
// y tiles of kMR x kNR are computed by a register-blocked micro-kernel (12
// accumulators, 2 loads and 6 broadcasts per k step, FMA-bound). K is split
// only when longer than kKBlock: each split re-reads and re-writes the whole
// m x 128 output panel, which at m = 2048 (1 MiB) no longer fits in L2, and
// those misses cost more (GEMM at 60 vs 72 GFLOP/s on 2 Zen 1 cores, m = 2048)
// than streaming a long kc x 16 weight micro-panel from L2 does. The 6 x kc
// activation micro-panel (24 KiB at most) stays in L1.

constexpr int kMR = 6;
constexpr int kNR = 16;
constexpr int64_t kKBlock = 1024;

// c[i][j] (+)= sum_kk a[kk][i] * b[kk][j] for a 6 x 16 tile; a is packed
// [kc][6], b [kc][16]; c has row stride ldc.
template <bool kAccumulate>
__attribute__((target("avx2,fma"))) void micro_kernel_6x16(int64_t kc, const float* a, const float* b, float* c,
                                                            int64_t ldc) {
  __m256 acc[kMR][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < kc; ++kk, a += kMR, b += kNR) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    float* ci = c + i * ldc;
    if constexpr (kAccumulate) {
      acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(ci));
      acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(ci + 8));
    }
    _mm256_storeu_ps(ci, acc[i][0]);
    _mm256_storeu_ps(ci + 8, acc[i][1]);
  }
}

// dst[kk][i] = src[i][kk] for 6 rows i (row stride k) and 8 columns kk: an
// 8 x 8 transpose of the rows plus two zero rows, each column's first 6 lanes
// stored.
__attribute__((target("avx2,fma"))) void transpose_6x8(const float* src, int64_t k, float* dst) {
  __m256 r[8];
  for (int i = 0; i < kMR; ++i) r[i] = _mm256_loadu_ps(src + i * k);
  r[6] = r[7] = _mm256_setzero_ps();
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  const __m256 cols[8] = {
      _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
      _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
      _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
      _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  for (int c = 0; c < 8; ++c) {
    float* out = dst + c * kMR;
    _mm_storeu_ps(out, _mm256_castps256_ps128(cols[c]));
    _mm_storel_pi(reinterpret_cast<__m64*>(out + 4), _mm256_extractf128_ps(cols[c], 1));
  }
}

// Packs rows [0, m) of x (row stride k) as micro-panels [m/6][k][6], the rows
// past m zero. Micro-panels are split over the threads of the enclosing team.
void pack_activations(const float* x, int64_t m, int64_t k, float* packed) {
  const int64_t panels = (m + kMR - 1) / kMR;
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed + p * kMR * k;
    const float* src = x + p * kMR * k;
    const int64_t rows = std::min<int64_t>(kMR, m - p * kMR);
    int64_t kk = 0;
    if (rows == kMR)
      for (; kk + 8 <= k; kk += 8) transpose_6x8(src + kk, k, dst + kk * kMR);
    for (; kk < k; ++kk) {
      for (int64_t i = 0; i < rows; ++i) dst[kk * kMR + i] = src[i * k + kk];
      for (int64_t i = rows; i < kMR; ++i) dst[kk * kMR + i] = 0.0f;
    }
  }
}

// Dequantizes rows [n0, n0 + np) of w into micro-panels [np/16][k][16] (rows
// past np zero), using `row` (k floats) as scratch.
void pack_weights(const TensorInfo& w, int64_t n0, int64_t np, float* packed, float* row) {
  const int64_t k = w.row_length();
  const int64_t panels = (np + kNR - 1) / kNR;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = packed + p * kNR * k;
    for (int64_t j = 0; j < kNR; ++j) {
      if (p * kNR + j < np) {
        dequantize_row(w.type, w.row(n0 + p * kNR + j), row, k);
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = row[kk];
      } else {
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = 0.0f;
      }
    }
  }
}

// y[m0..m1) x [n0..n0+np) from packed activations and a packed weight panel.
void gemm_tile_range(const float* xp, const float* wp, int64_t k, int64_t m0, int64_t m1, int64_t np, float* y,
                     int64_t ldy) {
  const int64_t kblocks = (k + kKBlock - 1) / kKBlock;
  const int64_t kc_even = (k + kblocks - 1) / kblocks;
  alignas(32) float edge[kMR * kNR];
  for (int64_t k0 = 0; k0 < k; k0 += kc_even) {
    const int64_t kc = std::min(kc_even, k - k0);
    const bool accumulate = k0 > 0;
    for (int64_t i0 = m0; i0 < m1; i0 += kMR) {
      const float* a = xp + i0 * k + k0 * kMR;  // micro-panel i0 / kMR starts at i0 * k
      const int64_t rows = std::min<int64_t>(kMR, m1 - i0);
      for (int64_t j0 = 0; j0 < np; j0 += kNR) {
        const float* b = wp + j0 * k + k0 * kNR;
        const int64_t cols = std::min<int64_t>(kNR, np - j0);
        float* c = y + i0 * ldy + j0;
        if (rows == kMR && cols == kNR) {
          if (accumulate)
            micro_kernel_6x16<true>(kc, a, b, c, ldy);
          else
            micro_kernel_6x16<false>(kc, a, b, c, ldy);
        } else {
          micro_kernel_6x16<false>(kc, a, b, edge, kNR);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j)
              c[i * ldy + j] = accumulate ? c[i * ldy + j] + edge[i * kNR + j] : edge[i * kNR + j];
        }
      }
    }
  }
}

// Computes every job from activations x packed once, all jobs' tasks shared
// by one thread team (dynamic scheduling: panels cost alike, threads may not).
void gemm_packed_avx2(std::span<GemmJob> jobs, const float* x, int64_t m) {
  const int64_t k = jobs.front().w->row_length();
  const int threads = max_threads();
  const int64_t tasks = plan_gemm_tasks(jobs, m, threads, kPanelRows, kMR, kNR);
  int64_t max_panel_rows = 0;
  for (const GemmJob& j : jobs) max_panel_rows = std::max(max_panel_rows, j.panel_rows);

  thread_local std::vector<float> packed_x;
  const size_t packed_x_size = static_cast<size_t>((m + kMR - 1) / kMR * kMR * k);
  if (packed_x.size() < packed_x_size) packed_x.resize(packed_x_size);
  float* xp = packed_x.data();

#pragma omp parallel num_threads(threads)
  {
    pack_activations(x, m, k, xp);  // ends with the implicit barrier of its omp for
    std::vector<float>& scratch = thread_scratch();
    const size_t need = static_cast<size_t>(max_panel_rows * k + k);
    if (scratch.size() < need) scratch.resize(need);
    float* wp = scratch.data();
    float* row = scratch.data() + max_panel_rows * k;
    run_gemm_tasks(
        jobs, tasks, m, [&](const GemmTask& task) { pack_weights(*task.job->w, task.n0, task.np, wp, row); },
        [&](const GemmTask& task) {
          gemm_tile_range(xp, wp, k, task.m0, task.m1, task.np, task.job->y + (task.n0 - task.job->n_begin),
                          task.job->ldy);
        });
  }
}

GemmPath& gemm_path_setting() {
  static GemmPath path = GemmPath::kInt8;
  return path;
}

// The prefill GEMM for jobs that share x: the chosen int8 or bf16 GEMM for
// the weights it supports, the f32 one for the rest.
void gemm(std::span<GemmJob> jobs, const float* x, int64_t m) {
  const GemmPath path = gemm_path_setting();
  if (path != GemmPath::kF32) {
    const auto supports = path == GemmPath::kInt8 ? gemm_int8_supports : gemm_bf16_supports;
    const auto f32_begin = std::stable_partition(jobs.begin(), jobs.end(),
                                                 [supports](const GemmJob& j) { return supports(j.w->type); });
    const std::span<GemmJob> own(jobs.begin(), f32_begin);
    if (path == GemmPath::kInt8) gemm_int8(own, x, m, max_threads());
    else gemm_bf16(own, x, m, max_threads());
    jobs = std::span(f32_begin, jobs.end());
    if (jobs.empty()) return;
  }
  if (kernel_isa() != KernelIsa::kScalar) {
    gemm_packed_avx2(jobs, x, m);
  } else {
    for (const GemmJob& j : jobs) gemm_panels(*j.w, x, m, j.y, j.ldy, j.n_begin, j.n_end);
  }
}

}  // namespace

bool uses_gemv(GgmlType type, int64_t m, int64_t gemv_rows) {
  return m <= kDefaultGemvRows || (m <= std::min(gemv_rows, kMaxBatchedGemvRows) &&
                                   integer_activation_format(type) != ActivationFormat::kNone);
}

void matmul_rows(const TensorInfo& w, const float* x, int64_t m, float* y, int64_t ldy, int64_t n_begin,
                 int64_t n_end, int64_t gemv_rows) {
  validate(w, x, m, y, ldy, n_begin, n_end);
  if (m == 0 || n_begin == n_end) return;
  const KernelIsa isa = kernel_isa();
  if (uses_gemv(w.type, m, gemv_rows)) {
    const ActivationFormat format = integer_activation_format(w.type);
    if (format != ActivationFormat::kNone) {
      const GemmJob job{&w, y, ldy, n_begin, n_end};
      gemv_integer(std::span(&job, 1), x, m, format, isa);
    } else
      gemv_float(w, x, m, y, ldy, n_begin, n_end, isa);
    return;
  }
  GemmJob job{&w, y, ldy, n_begin, n_end};
  gemm(std::span(&job, 1), x, m);
}

void matmul(const TensorInfo& w, const float* x, int64_t m, float* y, int64_t gemv_rows) {
  const int64_t n = w.dims.empty() ? 0 : w.rows();
  matmul_rows(w, x, m, y, n, 0, n, gemv_rows);
}

void matmul_shared_input(std::span<const MatmulTarget> targets, const float* x, int64_t m, int64_t gemv_rows) {
  if (targets.empty()) return;
  std::vector<GemmJob> jobs;
  for (const MatmulTarget& t : targets) {
    if (t.w == nullptr) throw std::invalid_argument("matmul: null weight");
    const int64_t n = t.w->dims.empty() ? 0 : t.w->rows();
    validate(*t.w, x, m, t.y, n, 0, n);
    if (t.w->row_length() != targets.front().w->row_length())
      throw std::invalid_argument(fmt::format("matmul: weights '{}' and '{}' have different row lengths ({} and {})",
                                              targets.front().w->name, t.w->name,
                                              targets.front().w->row_length(), t.w->row_length()));
    if (n > 0) jobs.push_back({t.w, t.y, n, 0, n});
  }
  const bool any_gemv = std::any_of(targets.begin(), targets.end(), [m, gemv_rows](const MatmulTarget& t) { return uses_gemv(t.w->type, m, gemv_rows); });
  const ActivationFormat format = jobs.empty() ? ActivationFormat::kNone : integer_activation_format(jobs.front().w->type);
  const bool one_integer_gemv =
      format != ActivationFormat::kNone && jobs.size() <= kMaxSharedInputJobs &&
      std::all_of(jobs.begin(), jobs.end(), [&](const GemmJob& j) {
        return uses_gemv(j.w->type, m, gemv_rows) && integer_activation_format(j.w->type) == format;
      });
  if (one_integer_gemv) {
    gemv_integer(jobs, x, m, format, kernel_isa());
    return;
  }
  if (any_gemv || jobs.empty()) {
    for (const GemmJob& j : jobs) matmul_rows(*j.w, x, m, j.y, j.ldy, j.n_begin, j.n_end, gemv_rows);
    return;
  }
  gemm(jobs, x, m);  // no target takes the GEMV path here
}

GemmPath gemm_path() { return gemm_path_setting(); }
void set_gemm_path(GemmPath path) { gemm_path_setting() = path; }

}  // namespace skim::kernels

namespace skim {

const std::vector<std::string>& gemm_paths() {
  static const std::vector<std::string> names = {"int8", "f32", "bf16"};
  return names;
}

void set_gemm(const std::string& name) {
  if (name == "int8")
    kernels::set_gemm_path(kernels::GemmPath::kInt8);
  else if (name == "f32")
    kernels::set_gemm_path(kernels::GemmPath::kF32);
  else if (name == "bf16")
    kernels::set_gemm_path(kernels::GemmPath::kBf16);
  else
    throw std::invalid_argument(fmt::format("unknown GEMM path '{}' (int8, f32, bf16)", name));
}

std::string gemm() {
  switch (kernels::gemm_path()) {
    case kernels::GemmPath::kInt8: return "int8";
    case kernels::GemmPath::kBf16: return "bf16";
    case kernels::GemmPath::kF32: break;
  }
  return "f32";
}

std::string simd_target() {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();  // best first
  return targets.empty() ? "none" : hwy::TargetName(targets.front());
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown CPU";
}

}  // namespace skim
