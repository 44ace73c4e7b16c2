#include "kernels/gemm_int8.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/gemm_int8.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/int_weights.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

static_assert(HWY_ARCH_X86, "DotU8I8 relies on x86's pairwise multiply-add lane order");

// Micro-tile: kMR activation rows x kNV vectors of weight rows. AVX-512 has 32
// registers for 2 x 6 integer and 2 x 6 float accumulators; AVX2 has 16.
#if HWY_TARGET <= HWY_AVX3
constexpr int kMR = 6;
#else
constexpr int kMR = 4;
#endif
constexpr int kNV = 2;
constexpr int64_t kLanes = HWY_LANES(int32_t);
constexpr int64_t kNR = kNV * kLanes;
constexpr int64_t kActBlock = 32;
// Weight rows per panel (one task): as the f32 GEMM.
constexpr int64_t kPanelRows = 128;

using DI = hn::ScalableTag<int32_t>;
using DF = hn::ScalableTag<float>;
using VI = hn::Vec<DI>;
using VF = hn::Vec<DF>;

// acc + the sums of four adjacent products of unsigned bytes u with signed
// bytes a, per 32-bit lane. kWide: u may exceed 127.
template <bool kWide>
HWY_INLINE VI DotU8I8(VI acc, VI u, VI a) {
#if HWY_TARGET == HWY_AVX3_DL
  // AVX3_DL implies AVX512-VNNI; Highway 1.0's target string names only the
  // VEX form, so the EVEX instruction is written out.
  asm("vpdpbusd %2, %1, %0" : "+v"(acc.raw) : "v"(u.raw), "v"(a.raw));
  return acc;
#else
  if constexpr (!kWide) {
    // Two products of at most 127 * 127 fit maddubs' saturating 16-bit sums.
#if HWY_TARGET <= HWY_AVX3
    return hn::Add(acc, VI{_mm512_madd_epi16(_mm512_maddubs_epi16(u.raw, a.raw), _mm512_set1_epi16(1))});
#elif HWY_TARGET == HWY_AVX2
    return hn::Add(acc, VI{_mm256_madd_epi16(_mm256_maddubs_epi16(u.raw, a.raw), _mm256_set1_epi16(1))});
#else
    return hn::Add(acc, VI{_mm_madd_epi16(_mm_maddubs_epi16(u.raw, a.raw), _mm_set1_epi16(1))});
#endif
  }
  // Exact: even and odd bytes widened to 16 bits, each pair multiply-added
  // into the lane that holds them (pmaddwd).
  const hn::Repartition<int16_t, DI> d16;
  const hn::Repartition<uint16_t, DI> du16;
  const DI di;
  const auto u16 = hn::BitCast(du16, u);
  const auto u_even = hn::BitCast(d16, hn::And(u16, hn::Set(du16, 0xFF)));
  const auto u_odd = hn::BitCast(d16, hn::ShiftRight<8>(u16));
  const auto a16 = hn::BitCast(d16, a);
  const auto a_even = hn::ShiftRight<8>(hn::ShiftLeft<8>(a16));
  const auto a_odd = hn::ShiftRight<8>(a16);
  VI unused = hn::Zero(di);
  acc = hn::ReorderWidenMulAccumulate(di, u_even, a_even, acc, unused);
  return hn::ReorderWidenMulAccumulate(di, u_odd, a_odd, acc, unused);
#endif
}

// Activations quantized and packed per micro-panel of kMR rows (rows past m
// zero): words [k/4][kMR] (four int8 quants each), scales d [k/32][kMR], and
// d times the sum of the quants per 16 and per 32 elements, which the
// weights' offsets multiply.
struct PackedActivations {
  int64_t k = 0;
  std::vector<int32_t> words;
  std::vector<float> d, sum16, sum32;

  const int32_t* panel_words(int64_t p) const { return words.data() + p * (k / 4) * kMR; }
  const float* panel_d(int64_t p) const { return d.data() + p * (k / kActBlock) * kMR; }
  const float* panel_sums(int64_t p, int block) const {
    return block == 16 ? sum16.data() + p * (k / 16) * kMR : sum32.data() + p * (k / 32) * kMR;
  }
};

// Quantizes one row of k floats: q[k], d[k/32], sums per 16 elements (of q).
void QuantizeRow(const float* x, int64_t k, int8_t* q, float* d, int32_t* sums16) {
  const DF df;
  const DI di;
  const hn::Rebind<int8_t, DI> d8;
  constexpr int64_t L = kLanes;
  for (int64_t b = 0; b < k / kActBlock; ++b) {
    const float* xb = x + b * kActBlock;
    VF amax = hn::Zero(df);
    for (int64_t j = 0; j < kActBlock; j += L) amax = hn::Max(amax, hn::Abs(hn::LoadU(df, xb + j)));
    const float a = hn::GetLane(hn::MaxOfLanes(df, amax));
    d[b] = a / 127.0f;
    const VF inv = hn::Set(df, a > 0.0f ? 127.0f / a : 0.0f);
    VI sum = hn::Zero(di);
    for (int64_t j = 0; j < kActBlock; j += L) {
      const VI qi = hn::NearestInt(hn::Mul(hn::LoadU(df, xb + j), inv));
      hn::StoreU(hn::DemoteTo(d8, qi), d8, q + b * kActBlock + j);
      sum = hn::Add(sum, qi);
      if ((j + L) % 16 == 0) {
        sums16[(b * kActBlock + j) / 16] = hn::GetLane(hn::SumOfLanes(di, sum));
        sum = hn::Zero(di);
      }
    }
  }
}

// Packs the m rows of x into `a`, micro-panels split over the enclosing team.
void PackActivations(const float* x, int64_t m, int64_t k, PackedActivations& a) {
  const int64_t k4 = k / 4, kb = k / kActBlock, k16 = k / 16;
  const int64_t panels = (m + kMR - 1) / kMR;
  std::vector<int8_t> q(static_cast<size_t>(k));
  std::vector<float> d(static_cast<size_t>(kb));
  std::vector<int32_t> sums(static_cast<size_t>(k16));
#pragma omp for schedule(static)
  for (int64_t p = 0; p < panels; ++p) {
    int32_t* words = a.words.data() + p * k4 * kMR;
    float* pd = a.d.data() + p * kb * kMR;
    float* s16 = a.sum16.data() + p * k16 * kMR;
    float* s32 = a.sum32.data() + p * kb * kMR;
    for (int i = 0; i < kMR; ++i) {
      const int64_t r = p * kMR + i;
      if (r < m) {
        QuantizeRow(x + r * k, k, q.data(), d.data(), sums.data());
      } else {
        std::fill(q.begin(), q.end(), 0);
        std::fill(d.begin(), d.end(), 0.0f);
        std::fill(sums.begin(), sums.end(), 0);
      }
      for (int64_t g = 0; g < k4; ++g) std::memcpy(&words[g * kMR + i], q.data() + 4 * g, 4);
      for (int64_t b = 0; b < kb; ++b) {
        pd[b * kMR + i] = d[b];
        s16[2 * b * kMR + i] = d[b] * static_cast<float>(sums[2 * b]);
        s16[(2 * b + 1) * kMR + i] = d[b] * static_cast<float>(sums[2 * b + 1]);
        s32[b * kMR + i] = d[b] * static_cast<float>(sums[2 * b] + sums[2 * b + 1]);
      }
    }
  }
}

// A panel of weight rows in integer form, per micro-panel of kNR rows (rows
// past the panel zero): bytes [k/4][kNR][4], scales and offsets [k/block][kNR].
struct PackedPanel {
  std::vector<uint8_t> u;
  std::vector<float> scale, offset;
  std::vector<uint8_t> row_u;  // one row, unpacked
  std::vector<float> row_scale, row_offset;
};

void PackPanel(const TensorInfo& w, int64_t n0, int64_t np, int block, PackedPanel& out) {
  const int64_t k = w.row_length(), k4 = k / 4, kb = k / block;
  const int64_t micro = (np + kNR - 1) / kNR;
  out.u.resize(static_cast<size_t>(micro * kNR * k));
  out.scale.resize(static_cast<size_t>(micro * kNR * kb));
  out.offset.resize(out.scale.size());
  out.row_u.resize(static_cast<size_t>(k));
  out.row_scale.resize(static_cast<size_t>(kb));
  out.row_offset.resize(static_cast<size_t>(kb));
  for (int64_t q = 0; q < micro; ++q) {
    uint8_t* u = out.u.data() + q * kNR * k;
    float* scale = out.scale.data() + q * kNR * kb;
    float* offset = out.offset.data() + q * kNR * kb;
    for (int64_t j = 0; j < kNR; ++j) {
      if (q * kNR + j < np) {
        unpack_int_row(w.type, w.row(n0 + q * kNR + j), k, out.row_u.data(), out.row_scale.data(),
                       out.row_offset.data());
      } else {
        std::fill(out.row_u.begin(), out.row_u.end(), 0);
        std::fill(out.row_scale.begin(), out.row_scale.end(), 0.0f);
        std::fill(out.row_offset.begin(), out.row_offset.end(), 0.0f);
      }
      for (int64_t g = 0; g < k4; ++g) std::memcpy(u + (g * kNR + j) * 4, out.row_u.data() + 4 * g, 4);
      for (int64_t b = 0; b < kb; ++b) {
        scale[b * kNR + j] = out.row_scale[b];
        offset[b * kNR + j] = out.row_offset[b];
      }
    }
  }
}

// c (row stride ldc) = the kMR x kNR tile of one activation micro-panel and one
// weight micro-panel: per weight block, integer dots, then
// c += (weight scale * activation d) * dot + weight offset * (activation d * sum).
template <int kBlock, bool kWide>
void Tile(int64_t k, const int32_t* aw, const float* ad, const float* asum, const uint8_t* wu, const float* ws,
          const float* wz, float* c, int64_t ldc) {
  const DI di;
  const DF df;
  constexpr int64_t kSteps = kBlock / 4;
  VF acc[kMR][kNV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = hn::Zero(df);
  const int64_t blocks = k / kBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    VI dot[kMR][kNV];
    for (int i = 0; i < kMR; ++i)
      for (int v = 0; v < kNV; ++v) dot[i][v] = hn::Zero(di);
    for (int64_t s = 0; s < kSteps; ++s) {
      const int32_t* a = aw + (b * kSteps + s) * kMR;
      const int32_t* w = reinterpret_cast<const int32_t*>(wu + (b * kSteps + s) * kNR * 4);
      VI wv[kNV];
      for (int v = 0; v < kNV; ++v) wv[v] = hn::LoadU(di, w + v * kLanes);
      for (int i = 0; i < kMR; ++i) {
        const VI av = hn::Set(di, a[i]);
        for (int v = 0; v < kNV; ++v) dot[i][v] = DotU8I8<kWide>(dot[i][v], wv[v], av);
      }
    }
    VF scale[kNV], offset[kNV];
    for (int v = 0; v < kNV; ++v) {
      scale[v] = hn::LoadU(df, ws + b * kNR + v * kLanes);
      offset[v] = hn::LoadU(df, wz + b * kNR + v * kLanes);
    }
    const float* adb = ad + (b * kBlock / kActBlock) * kMR;
    const float* asb = asum + b * kMR;
    for (int i = 0; i < kMR; ++i) {
      const VF d = hn::Set(df, adb[i]), sum = hn::Set(df, asb[i]);
      for (int v = 0; v < kNV; ++v) {
        acc[i][v] = hn::MulAdd(hn::ConvertTo(df, dot[i][v]), hn::Mul(scale[v], d), acc[i][v]);
        acc[i][v] = hn::MulAdd(offset[v], sum, acc[i][v]);
      }
    }
  }
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) hn::StoreU(acc[i][v], df, c + i * ldc + v * kLanes);
}

using TileFn = void (*)(int64_t, const int32_t*, const float*, const float*, const uint8_t*, const float*,
                        const float*, float*, int64_t);

TileFn SelectTile(GgmlType type) {
  const bool wide = int_max_value(type) > 127;
  if (int_block_size(type) == 16) return wide ? &Tile<16, true> : &Tile<16, false>;
  return wide ? &Tile<32, true> : &Tile<32, false>;
}

// Output rows [m0, m1) x [0, np) of a packed panel into y (row stride ldy).
void PanelProduct(const PackedActivations& a, const PackedPanel& panel, int block, TileFn tile, int64_t k,
                  int64_t m0, int64_t m1, int64_t np, float* y, int64_t ldy) {
  const int64_t kb = k / block;
  alignas(64) float edge[kMR * kNR];
  for (int64_t i0 = m0; i0 < m1; i0 += kMR) {
    const int64_t p = i0 / kMR, rows = std::min<int64_t>(kMR, m1 - i0);
    for (int64_t j0 = 0; j0 < np; j0 += kNR) {
      const int64_t q = j0 / kNR, cols = std::min<int64_t>(kNR, np - j0);
      const bool full = rows == kMR && cols == kNR;
      float* c = full ? y + i0 * ldy + j0 : edge;
      tile(k, a.panel_words(p), a.panel_d(p), a.panel_sums(p, block), panel.u.data() + q * kNR * k,
           panel.scale.data() + q * kNR * kb, panel.offset.data() + q * kNR * kb, c, full ? ldy : kNR);
      if (!full)
        for (int64_t i = 0; i < rows; ++i) std::memcpy(y + (i0 + i) * ldy + j0, edge + i * kNR, cols * sizeof(float));
    }
  }
}

void GemmInt8(GemmJob* job_data, size_t n_jobs, const float* x, int64_t m, int threads) {
  const std::span<GemmJob> jobs(job_data, n_jobs);
  const int64_t k = jobs.front().w->row_length();
  const int64_t tasks = plan_gemm_tasks(jobs, m, threads, kPanelRows, kMR, kNR);
  // Inside the parallel region a thread_local name means each thread's own
  // copy: the team shares the caller's through this reference.
  thread_local PackedActivations caller_activations;
  PackedActivations& a = caller_activations;
  const int64_t panels = (m + kMR - 1) / kMR;
  a.k = k;
  a.words.resize(static_cast<size_t>(panels * (k / 4) * kMR));
  a.d.resize(static_cast<size_t>(panels * (k / kActBlock) * kMR));
  a.sum32.resize(a.d.size());
  a.sum16.resize(2 * a.d.size());
#pragma omp parallel num_threads(threads)
  {
    PackActivations(x, m, k, a);  // ends with the implicit barrier of its omp for
    thread_local PackedPanel panel;
    run_gemm_tasks(
        jobs, tasks, m,
        [&](const GemmTask& task) { PackPanel(*task.job->w, task.n0, task.np, int_block_size(task.job->w->type), panel); },
        [&](const GemmTask& task) {
          const GemmJob& j = *task.job;
          PanelProduct(a, panel, int_block_size(j.w->type), SelectTile(j.w->type), k, task.m0, task.m1, task.np,
                       j.y + (task.n0 - j.n_begin), j.ldy);
        });
  }
}

}  // namespace skim::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels {

HWY_EXPORT(GemmInt8);

bool gemm_int8_supports(GgmlType type) { return int_block_size(type) != 0; }

void gemm_int8(std::span<GemmJob> jobs, const float* x, int64_t m, int threads) {
  if (jobs.empty() || m == 0) return;
  HWY_DYNAMIC_DISPATCH(GemmInt8)(jobs.data(), jobs.size(), x, m, threads);
}

}  // namespace skim::kernels
#endif  // HWY_ONCE
