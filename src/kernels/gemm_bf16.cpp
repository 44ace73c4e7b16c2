#include "kernels/gemm_bf16.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/gemm_bf16.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/bf16-inl.h"
#include "kernels/dequant.h"
#include "kernels/f16.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Micro-tile: kMR activation rows x kNV vectors of weight rows, one f32
// accumulator each. AVX-512 has 32 registers for 6 x 2 accumulators; AVX2's 16
// hold 4 x 2 beside the widened operands the emulated step needs.
#if HWY_TARGET <= HWY_AVX3
constexpr int kMR = 6;
#else
constexpr int kMR = 4;
#endif
constexpr int kNV = 2;
constexpr int64_t kLanes = HWY_LANES(float);
constexpr int64_t kNR = kNV * kLanes;
// Weight rows per panel (one task): as the f32 and int8 GEMMs.
constexpr int64_t kPanelRows = 128;

using DF = Bf16DF;
using DU = Bf16DU;
using VF = hn::Vec<DF>;
using VU = hn::Vec<DU>;

// out[g] = (x[2g], x[2g+1]) rounded to bf16, for g < ceil(k / 2); an odd
// last element pairs with 0.
void PackRowPairs(const float* x, int64_t k, uint32_t* out) {
  const DF df;
  const DU du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t e = 0;
  for (; e + 2 * N <= k; e += 2 * N) {
    const VF lo = hn::LoadU(df, x + e), hi = hn::LoadU(df, x + e + N);
    hn::StoreU(PackPair(du, hn::ConcatEven(df, hi, lo), hn::ConcatOdd(df, hi, lo)), du, out + e / 2);
  }
  for (; e < k; e += 2) {
    alignas(64) float pair[2 * kLanes] = {};
    pair[0] = x[e];
    pair[N] = e + 1 < k ? x[e + 1] : 0.0f;
    const VU packed = PackPair(du, hn::Load(df, pair), hn::Load(df, pair + N));
    out[e / 2] = hn::GetLane(packed);
  }
}

// Rows [0, m) of x (row stride k) as micro-panels [pairs][kMR] of packed
// pairs, rows past m zero; micro-panels split over the enclosing team.
void PackActivations(const float* x, int64_t m, int64_t k, uint32_t* packed) {
  const int64_t pairs = (k + 1) / 2, panels = (m + kMR - 1) / kMR;
  std::vector<uint32_t> row(static_cast<size_t>(pairs));
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    uint32_t* dst = packed + p * pairs * kMR;
    for (int i = 0; i < kMR; ++i) {
      const int64_t r = p * kMR + i;
      if (r < m) PackRowPairs(x + r * k, k, row.data());
      else std::fill(row.begin(), row.end(), 0u);
      for (int64_t g = 0; g < pairs; ++g) dst[g * kMR + i] = row[g];
    }
  }
}

// Rows [n0, n0 + np) of w dequantized, rounded and laid out as micro-panels
// [pairs][kNR] (rows past np zero). `row` and `pair_row` are scratch.
void PackPanel(const TensorInfo& w, int64_t n0, int64_t np, uint32_t* packed, float* row, uint32_t* pair_row) {
  const int64_t k = w.row_length(), pairs = (k + 1) / 2;
  for (int64_t q = 0; q < (np + kNR - 1) / kNR; ++q) {
    uint32_t* dst = packed + q * pairs * kNR;
    for (int64_t j = 0; j < kNR; ++j) {
      if (q * kNR + j < np) {
        dequantize_row(w.type, w.row(n0 + q * kNR + j), row, k);
        PackRowPairs(row, k, pair_row);
      } else {
        std::fill(pair_row, pair_row + pairs, 0u);
      }
      for (int64_t g = 0; g < pairs; ++g) dst[g * kNR + j] = pair_row[g];
    }
  }
}

// c (row stride ldc) = the kMR x kNR tile of one activation micro-panel and
// one weight micro-panel.
template <bool kNative>
void Tile(int64_t pairs, const uint32_t* HWY_RESTRICT a, const uint32_t* HWY_RESTRICT w, float* c, int64_t ldc) {
  const DF df;
  const DU du;
  VF acc[kMR][kNV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = hn::Zero(df);
  for (int64_t g = 0; g < pairs; ++g, a += kMR, w += kNR) {
    VU wv[kNV];
    for (int v = 0; v < kNV; ++v) wv[v] = hn::LoadU(du, w + v * kLanes);
    for (int i = 0; i < kMR; ++i) {
      const VU av = hn::Set(du, a[i]);
      for (int v = 0; v < kNV; ++v) acc[i][v] = DotPair<kNative>(df, av, wv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) hn::StoreU(acc[i][v], df, c + i * ldc + v * kLanes);
}

// Output rows [m0, m1) x [0, np) of a packed panel into y (row stride ldy).
template <bool kNative>
void PanelProduct(const uint32_t* xp, const uint32_t* wp, int64_t pairs, int64_t m0, int64_t m1, int64_t np, float* y,
                  int64_t ldy) {
  alignas(64) float edge[kMR * kNR];
  for (int64_t i0 = m0; i0 < m1; i0 += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m1 - i0);
    for (int64_t j0 = 0; j0 < np; j0 += kNR) {
      const int64_t cols = std::min<int64_t>(kNR, np - j0);
      const bool full = rows == kMR && cols == kNR;
      float* c = full ? y + i0 * ldy + j0 : edge;
      Tile<kNative>(pairs, xp + i0 * pairs, wp + j0 * pairs, c, full ? ldy : kNR);
      if (!full)
        for (int64_t i = 0; i < rows; ++i) std::memcpy(y + (i0 + i) * ldy + j0, edge + i * kNR, cols * sizeof(float));
    }
  }
}

void GemmBf16(GemmJob* job_data, size_t n_jobs, const float* x, int64_t m, int threads) {
  const std::span<GemmJob> jobs(job_data, n_jobs);
  const int64_t k = jobs.front().w->row_length(), pairs = (k + 1) / 2;
  const int64_t tasks = plan_gemm_tasks(jobs, m, threads, kPanelRows, kMR, kNR);
  int64_t max_panel_rows = 0;
  for (const GemmJob& j : jobs) max_panel_rows = std::max(max_panel_rows, j.panel_rows);
  const int64_t panel_words = (max_panel_rows + kNR - 1) / kNR * kNR * pairs;
  // Inside the parallel region a thread_local name means each thread's own
  // copy: the team shares the caller's through this pointer.
  thread_local std::vector<uint32_t> caller_activations;
  caller_activations.resize(static_cast<size_t>((m + kMR - 1) / kMR * kMR * pairs));
  uint32_t* xp = caller_activations.data();
  const bool native = cpu_has_bf16_dot();
#pragma omp parallel num_threads(threads)
  {
    PackActivations(x, m, k, xp);  // ends with the implicit barrier of its omp for
    thread_local std::vector<uint32_t> panel;
    thread_local std::vector<float> row;
    thread_local std::vector<uint32_t> pair_row;
    panel.resize(static_cast<size_t>(panel_words));
    row.resize(static_cast<size_t>(k));
    pair_row.resize(static_cast<size_t>(pairs));
    run_gemm_tasks(
        jobs, tasks, m,
        [&](const GemmTask& task) { PackPanel(*task.job->w, task.n0, task.np, panel.data(), row.data(), pair_row.data()); },
        [&](const GemmTask& task) {
          const GemmJob& j = *task.job;
          float* y = j.y + (task.n0 - j.n_begin);
          if (native) PanelProduct<true>(xp, panel.data(), pairs, task.m0, task.m1, task.np, y, j.ldy);
          else PanelProduct<false>(xp, panel.data(), pairs, task.m0, task.m1, task.np, y, j.ldy);
        });
  }
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels {

HWY_EXPORT(GemmBf16);

bool gemm_bf16_supports(GgmlType type) { return type != GgmlType::F32 && type != GgmlType::F16; }

void gemm_bf16(std::span<GemmJob> jobs, const float* x, int64_t m, int threads) {
  if (jobs.empty() || m == 0) return;
  HWY_DYNAMIC_DISPATCH(GemmBf16)(jobs.data(), jobs.size(), x, m, threads);
}

}  // namespace skim::kernels
#endif  // HWY_ONCE
