// Row-wise operations of the transformer block, vectorized with Highway
// (compiled once per x86 target, chosen at run time) and split over threads:
// at 8K tokens on SmolLM2 they took ~9 s of a 71 s prefill when scalar and
// serial, while the GEMMs and attention around them ran on every core.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/elementwise.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"

HWY_BEFORE_NAMESPACE();
namespace skim::kernels::elementwise_detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of squares in double (as ggml's rms_norm: float products, double sum),
// then y = x * scale * w.
void RmsNormRow(const float* x, const float* w, float* y, int64_t n, float eps) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> dhalf;  // as many floats as doubles
  const int64_t nd = static_cast<int64_t>(hn::Lanes(dd));
  auto acc0 = hn::Zero(dd), acc1 = hn::Zero(dd);
  int64_t i = 0;
  for (; i + 2 * nd <= n; i += 2 * nd) {
    const auto a = hn::LoadU(dhalf, x + i), b = hn::LoadU(dhalf, x + i + nd);
    acc0 = hn::Add(acc0, hn::PromoteTo(dd, hn::Mul(a, a)));
    acc1 = hn::Add(acc1, hn::PromoteTo(dd, hn::Mul(b, b)));
  }
  double ss = hn::GetLane(hn::SumOfLanes(dd, hn::Add(acc0, acc1)));
  for (; i < n; ++i) ss += static_cast<double>(x[i] * x[i]);
  const float scale = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);

  const hn::ScalableTag<float> df;
  const int64_t nf = static_cast<int64_t>(hn::Lanes(df));
  const auto vscale = hn::Set(df, scale);
  i = 0;
  for (; i + nf <= n; i += nf)
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(df, x + i), vscale), hn::LoadU(df, w + i)), df, y + i);
  for (; i < n; ++i) y[i] = x[i] * scale * w[i];
}

// gate = silu(gate) * up, silu(g) = g * sigmoid(g). sigmoid from e = exp(-|g|)
// (never overflows): 1 / (1 + e) for g >= 0, e / (1 + e) below.
void SwigluSpan(float* gate, const float* up, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t nf = static_cast<int64_t>(hn::Lanes(df));
  const auto one = hn::Set(df, 1.0f);
  int64_t i = 0;
  for (; i + nf <= n; i += nf) {
    const auto g = hn::LoadU(df, gate + i);
    const auto e = hn::Exp(df, hn::Neg(hn::Abs(g)));
    const auto num = hn::IfThenElse(hn::Ge(g, hn::Zero(df)), one, e);
    const auto sig = hn::Div(num, hn::Add(one, e));
    hn::StoreU(hn::Mul(hn::Mul(g, sig), hn::LoadU(df, up + i)), df, gate + i);
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

// gate = gelu(gate) * up, gelu(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))),
// the tanh form Gemma was trained with (ggml_gelu).
void GegluSpan(float* gate, const float* up, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t nf = static_cast<int64_t>(hn::Lanes(df));
  constexpr float kSqrt2OverPi = 0.7978845608028654f, kCubic = 0.044715f;
  const auto half = hn::Set(df, 0.5f), one = hn::Set(df, 1.0f), c0 = hn::Set(df, kSqrt2OverPi),
             c1 = hn::Set(df, kCubic * kSqrt2OverPi);
  int64_t i = 0;
  for (; i + nf <= n; i += nf) {
    const auto g = hn::LoadU(df, gate + i);
    const auto inner = hn::Mul(g, hn::MulAdd(hn::Mul(g, g), c1, c0));
    const auto gelu = hn::Mul(hn::Mul(half, g), hn::Add(one, hn::Tanh(df, inner)));
    hn::StoreU(hn::Mul(gelu, hn::LoadU(df, up + i)), df, gate + i);
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    gate[i] = 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + kCubic * g * g * g))) * up[i];
  }
}

void AddSpan(float* y, const float* x, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t nf = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + nf <= n; i += nf) hn::StoreU(hn::Add(hn::LoadU(df, y + i), hn::LoadU(df, x + i)), df, y + i);
  for (; i < n; ++i) y[i] += x[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace skim::kernels::elementwise_detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace skim::kernels {
namespace elementwise_detail {
HWY_EXPORT(RmsNormRow);
HWY_EXPORT(SwigluSpan);
HWY_EXPORT(GegluSpan);
HWY_EXPORT(AddSpan);

// Below this many values a parallel region costs more than it saves (decode).
constexpr int64_t kParallelValues = 1 << 14;
// Flat spans are split into pieces of this many values (a multiple of any vector width).
constexpr int64_t kSpanPiece = 1 << 13;

bool worth_threads(int64_t values) { return values >= kParallelValues && !omp_in_parallel(); }

template <class F>
void for_span_pieces(int64_t n, const F& f) {
  const int64_t pieces = (n + kSpanPiece - 1) / kSpanPiece;
#pragma omp parallel for schedule(static) if (worth_threads(n))
  for (int64_t p = 0; p < pieces; ++p) f(p * kSpanPiece, std::min(kSpanPiece, n - p * kSpanPiece));
}
}  // namespace elementwise_detail

using namespace elementwise_detail;

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps) {
  const auto row = HWY_DYNAMIC_DISPATCH(RmsNormRow);
#pragma omp parallel for schedule(static) if (worth_threads(rows * n))
  for (int64_t r = 0; r < rows; ++r) row(x + r * n, w, y + r * n, n, eps);
}

void rope_angles(float pos, const float* inv_freq, int head_dim, float* cos_out, float* sin_out) {
  for (int i = 0; i < head_dim / 2; ++i) {
    const float theta = pos * inv_freq[i];
    cos_out[i] = std::cos(theta);
    sin_out[i] = std::sin(theta);
  }
}

void rope(float* x, int n_heads, int head_dim, const float* cos, const float* sin, bool interleaved) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float c = cos[i], s = sin[i];
    for (int h = 0; h < n_heads; ++h) {
      float* xh = x + static_cast<int64_t>(h) * head_dim;
      const int a = interleaved ? 2 * i : i;
      const int b = interleaved ? 2 * i + 1 : i + half;
      const float x0 = xh[a], x1 = xh[b];
      xh[a] = x0 * c - x1 * s;
      xh[b] = x0 * s + x1 * c;
    }
  }
}

void hadamard(float* x, int64_t n, int32_t block) {
  const float norm = 1.0f / std::sqrt(static_cast<float>(block));
  for (float* b = x; b < x + n; b += block) {
    for (int32_t h = 1; h < block; h *= 2)
      for (int32_t i = 0; i < block; i += 2 * h)
        for (int32_t j = i; j < i + h; ++j) {
          const float a = b[j], c = b[j + h];
          b[j] = a + c;
          b[j + h] = a - c;
        }
    for (int32_t j = 0; j < block; ++j) b[j] *= norm;
  }
}

void swiglu(float* gate, const float* up, int64_t n) {
  const auto span = HWY_DYNAMIC_DISPATCH(SwigluSpan);
  for_span_pieces(n, [&](int64_t at, int64_t len) { span(gate + at, up + at, len); });
}

void geglu(float* gate, const float* up, int64_t n) {
  const auto span = HWY_DYNAMIC_DISPATCH(GegluSpan);
  for_span_pieces(n, [&](int64_t at, int64_t len) { span(gate + at, up + at, len); });
}

void add_inplace(float* y, const float* x, int64_t n) {
  const auto span = HWY_DYNAMIC_DISPATCH(AddSpan);
  for_span_pieces(n, [&](int64_t at, int64_t len) { span(y + at, x + at, len); });
}

}  // namespace skim::kernels
#endif  // HWY_ONCE
