// matmul / matmul_rows against a float64 reference on the dequantized weights.
//
// f32 paths (sgemm panels, and decode of types without an integer kernel) must
// be within 1e-5 of sum|x||W| per output. The integer paths (decode GEMV, and
// the int8 prefill GEMM on every SIMD target) quantize the activations to 8
// bits, so they are checked twice: tightly (1e-5) against the f64 product with
// those quantized activations, and against the exact product within the worst
// case of the activation rounding, sum_k |W_k| * d_k / 2.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/dequant.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_int8.h"
#include "kernels/matmul.h"
#include "kernels/quant_dot.h"
#include "quant_test_util.h"
#include "simd_targets.h"

namespace skim {
namespace {

using kernels::ActivationFormat;
using kernels::GemmPath;
using kernels::KernelIsa;

struct TypeCase {
  GgmlType type;
  const char* name;
};

void PrintTo(const TypeCase& c, std::ostream* os) { *os << c.name; }

const TypeCase kAllTypes[] = {
    {GgmlType::F32, "F32"},   {GgmlType::F16, "F16"},   {GgmlType::BF16, "BF16"}, {GgmlType::Q4_0, "Q4_0"},
    {GgmlType::Q4_1, "Q4_1"}, {GgmlType::Q5_0, "Q5_0"}, {GgmlType::Q5_1, "Q5_1"}, {GgmlType::Q8_0, "Q8_0"},
    {GgmlType::Q2_K, "Q2_K"}, {GgmlType::Q3_K, "Q3_K"}, {GgmlType::Q4_K, "Q4_K"}, {GgmlType::Q5_K, "Q5_K"},
    {GgmlType::Q6_K, "Q6_K"},
};

// Restores the kernel ISA, GEMM path and OpenMP thread count a test changes.
class KernelStateGuard {
 public:
  KernelStateGuard() : isa_(kernels::kernel_isa()), path_(kernels::gemm_path()), threads_(omp_get_max_threads()) {}
  ~KernelStateGuard() {
    kernels::set_kernel_isa(isa_);
    kernels::set_gemm_path(path_);
    omp_set_num_threads(threads_);
  }

 private:
  KernelIsa isa_;
  GemmPath path_;
  int threads_;
};

// Whether a product of m rows takes the int8 prefill GEMM now.
bool takes_int8_gemm(GgmlType type, int64_t m, int64_t gemv_rows = kernels::kDefaultGemvRows) {
  return kernels::gemm_path() == GemmPath::kInt8 && !kernels::uses_gemv(type, m, gemv_rows) &&
         kernels::gemm_int8_supports(type);
}

// Whether a product of m rows takes the bf16 prefill GEMM now.
bool takes_bf16_gemm(GgmlType type, int64_t m, int64_t gemv_rows = kernels::kDefaultGemvRows) {
  return kernels::gemm_path() == GemmPath::kBf16 && !kernels::uses_gemv(type, m, gemv_rows) &&
         kernels::gemm_bf16_supports(type);
}

// v rounded to bf16 (to nearest, ties to even), as f32.
float round_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

std::vector<float> rounded_to_bf16(std::vector<float> v) {
  for (float& e : v) e = round_to_bf16(e);
  return v;
}

// The int8 GEMM's activations: per row and 32 elements, d = max|x| / 127 and
// x ~ d * round(x / d). Returns the rounded x; d per block into `d`.
std::vector<float> int8_gemm_activations(const std::vector<float>& x, int64_t m, int64_t k, std::vector<float>& d) {
  std::vector<float> xq(x.size());
  d.assign(m * k / 32, 0.0f);
  for (int64_t b = 0; b < m * k / 32; ++b) {
    float amax = 0.0f;
    for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
    d[b] = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t i = 0; i < 32; ++i) xq[b * 32 + i] = std::nearbyint(x[b * 32 + i] * inv) * d[b];
  }
  return xq;
}

std::vector<float> random_activations(int64_t m, int64_t k, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(m * k);
  for (auto& v : x) v = normal(rng);
  for (int64_t r = 0; r < m; ++r) {
    // A few outliers per row, as real activations have; they widen the 8-bit steps.
    for (int i = 0; i < 3; ++i) x[r * k + rng() % k] *= 20.0f;
  }
  if (m >= 3) std::fill(x.begin() + k, x.begin() + 2 * k, 0.0f);  // an all-zero row (scale 0)
  return x;
}

std::vector<float> dequantize_all(GgmlType type, const std::vector<uint8_t>& w, int64_t n, int64_t k) {
  std::vector<float> out(n * k);
  const size_t rb = row_bytes(type, k);
  for (int64_t i = 0; i < n; ++i) kernels::dequantize_row(type, w.data() + i * rb, out.data() + i * k, k);
  return out;
}

// y_ref[r][n] in f64, and scale[r][n] = sum |x||W| (the natural size of the rounding error).
void reference(const std::vector<float>& wf, const std::vector<float>& x, int64_t m, int64_t n, int64_t k,
               std::vector<double>& y, std::vector<double>& scale) {
  y.assign(m * n, 0.0);
  scale.assign(m * n, 0.0);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0, a = 0.0;
      const float* wr = wf.data() + j * k;
      const float* xr = x.data() + r * k;
      for (int64_t i = 0; i < k; ++i) {
        s += static_cast<double>(wr[i]) * xr[i];
        a += std::fabs(static_cast<double>(wr[i]) * xr[i]);
      }
      y[r * n + j] = s;
      scale[r * n + j] = a;
    }
}

// Worst-case effect of the activation rounding: sum_k |W_k| * d_k / 2 per output.
std::vector<double> activation_rounding_bound(const std::vector<float>& wf, const kernels::QuantizedActivations& a,
                                              int64_t n) {
  const int64_t k = a.k, block = kernels::activation_block_size(a.format);
  std::vector<double> bound(a.rows * n, 0.0);
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t i = 0; i < k; ++i) s += std::fabs(wf[j * k + i]) * a.d[r * (k / block) + i / block] * 0.5;
      bound[r * n + j] = s;
    }
  return bound;
}

struct Shape {
  int64_t m, k, n;
};

// Row lengths to test for a type: the model's sizes, rounded to the block size
// where they are not multiples of it (K types need multiples of 256). 608 is
// 19 blocks of 32: groups of 8, a pair and an unpaired last block (AVX2), or
// three blocks after the last group (AVX-512); 672 is 21 blocks, so AVX-512
// takes a lone group of four and one block after it. Types with
// blocks of one value also take an odd length (the bf16 GEMM's last pair).
std::vector<int64_t> row_lengths(GgmlType type) {
  if (traits(type).block_size == 256) return {256, 768, 1536, 4864};
  if (traits(type).block_size == 1) return {101, 576, 608, 896, 1536, 4864};
  return {576, 608, 672, 896, 1536, 4864};
}

std::vector<Shape> shapes_for(GgmlType type) {
  const int64_t ms[] = {1, 2, 3, 7, 13, 16, 17, 64, 200, 513};
  const int64_t ns[] = {1, 7, 37, 131, 19, 3};
  std::vector<Shape> shapes;
  int i = 0;
  for (int64_t k : row_lengths(type))
    for (int64_t m : ms) {
      int64_t n = ns[i++ % 6];
      if (m * k * n > 60'000'000) n = 7;  // keeps the f64 reference quick
      shapes.push_back({m, k, n});
    }
  return shapes;
}

class MatmulVsReference : public ::testing::TestWithParam<TypeCase> {};

TEST_P(MatmulVsReference, AllShapes) {
  const GgmlType type = GetParam().type;
  KernelStateGuard guard;
  std::mt19937_64 rng(1234 + static_cast<int>(type));
  const ActivationFormat format = kernels::integer_activation_format(type);
  for (const Shape& s : shapes_for(type)) {
    SCOPED_TRACE(::testing::Message() << GetParam().name << " m=" << s.m << " k=" << s.k << " n=" << s.n);
    const std::vector<uint8_t> w = test::random_weights(type, s.n, s.k, rng);
    const TensorInfo t = test::make_tensor(type, s.k, s.n, w);
    const std::vector<float> x = random_activations(s.m, s.k, rng);
    const std::vector<float> wf = dequantize_all(type, w, s.n, s.k);
    std::vector<double> ref, scale;
    reference(wf, x, s.m, s.n, s.k, ref, scale);

    // The default GEMV limit, and the batched-decode one where it changes the
    // path; each prefill GEMM path where the type has an int8 one.
    for (const GemmPath path : {GemmPath::kF32, GemmPath::kInt8, GemmPath::kBf16})
    for (const int64_t gemv_rows : {kernels::kDefaultGemvRows, kernels::kMaxBatchedGemvRows}) {
      if (gemv_rows != kernels::kDefaultGemvRows && kernels::uses_gemv(type, s.m, gemv_rows) == kernels::uses_gemv(type, s.m))
        continue;
      kernels::set_gemm_path(path);
      if (path == GemmPath::kInt8 && !takes_int8_gemm(type, s.m, gemv_rows)) continue;
      if (path == GemmPath::kBf16 && !takes_bf16_gemm(type, s.m, gemv_rows)) continue;
      SCOPED_TRACE(::testing::Message() << "gemv_rows=" << gemv_rows
                                        << (path == GemmPath::kInt8 ? " int8" : path == GemmPath::kBf16 ? " bf16" : " f32"));
      const bool int8_gemm = takes_int8_gemm(type, s.m, gemv_rows), bf16_gemm = takes_bf16_gemm(type, s.m, gemv_rows);
      const bool integer_path = int8_gemm || (kernels::uses_gemv(type, s.m, gemv_rows) && format != ActivationFormat::kNone);
      // Paths that round the operands: the product of the rounded operands
      // (within f32 summation error) and the rounding's worst-case effect.
      std::vector<double> ref_quantized, bound;
      if (bf16_gemm) {
        std::vector<double> unused;
        reference(rounded_to_bf16(wf), rounded_to_bf16(x), s.m, s.n, s.k, ref_quantized, unused);
        // Each product's two operands are off by at most 2^-8 of themselves.
        bound.resize(scale.size());
        for (size_t i = 0; i < scale.size(); ++i) bound[i] = scale[i] * (0x1p-7 + 0x1p-16);
      } else if (int8_gemm) {
        std::vector<float> d;
        const std::vector<float> xq = int8_gemm_activations(x, s.m, s.k, d);
        std::vector<double> unused;
        reference(wf, xq, s.m, s.n, s.k, ref_quantized, unused);
        bound.assign(s.m * s.n, 0.0);
        for (int64_t r = 0; r < s.m; ++r)
          for (int64_t j = 0; j < s.n; ++j)
            for (int64_t i = 0; i < s.k; ++i)
              bound[r * s.n + j] += std::fabs(wf[j * s.k + i]) * d[(r * s.k + i) / 32] * 0.5;
      } else if (integer_path) {
        kernels::QuantizedActivations a;
        kernels::quantize_activations(x.data(), s.m, s.k, format, KernelIsa::kScalar, a);
        std::vector<float> xq(s.m * s.k);
        const int64_t block = kernels::activation_block_size(format);
        for (int64_t r = 0; r < s.m; ++r)
          for (int64_t i = 0; i < s.k; ++i)
            xq[r * s.k + i] = a.q[r * s.k + kernels::activation_position(a, i)] * a.d[(r * s.k + i) / block];
        std::vector<double> unused;
        reference(wf, xq, s.m, s.n, s.k, ref_quantized, unused);
        bound = activation_rounding_bound(wf, a, s.n);
      }

      std::vector<KernelIsa> isas = kernels::runnable_isas();
      if (int8_gemm || bf16_gemm) isas.resize(1);  // these GEMMs run every SIMD target instead
      for (KernelIsa isa : isas)
        for (int threads : {1, 2}) {
          SCOPED_TRACE(::testing::Message() << kernels::isa_name(isa) << " threads=" << threads);
          kernels::set_kernel_isa(isa);
          omp_set_num_threads(threads);
          int failures = 0;
          const auto run = [&] {
            std::vector<float> y(s.m * s.n, std::nanf(""));
            kernels::matmul(t, x.data(), s.m, y.data(), gemv_rows);
            for (int64_t i = 0; i < s.m * s.n && failures < 5; ++i) {
              const double tol = 1e-5 * scale[i] + 1e-30;
              if (integer_path || bf16_gemm) {
                const double err_q = std::fabs(y[i] - ref_quantized[i]);
                const double err = std::fabs(y[i] - ref[i]);
                if (!(err_q <= tol) || !(err <= bound[i] * 1.001 + tol)) {
                  ADD_FAILURE() << "output " << i << ": got " << y[i] << ", exact " << ref[i] << " (rounding bound "
                                << bound[i] << "), with quantized activations " << ref_quantized[i] << " (tol "
                                << tol << ")";
                  ++failures;
                }
              } else if (!(std::fabs(y[i] - ref[i]) <= tol)) {
                ADD_FAILURE() << "output " << i << ": got " << y[i] << ", expected " << ref[i] << " (tol " << tol
                              << ")";
                ++failures;
              }
            }
          };
          if (int8_gemm || bf16_gemm)
            test::for_each_simd_target(run);
          else
            run();
          if (failures) return;
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulVsReference, ::testing::ValuesIn(kAllTypes),
                         [](const ::testing::TestParamInfo<TypeCase>& info) { return std::string(info.param.name); });

// The integer path's error is dominated by 8-bit activation rounding; on
// typical data it is far below the worst case and about 1% of the output's
// scale. This guards against a kernel that is merely within the loose bound.
TEST(MatmulInteger, TypicalErrorIsSmall) {
  KernelStateGuard guard;
  std::mt19937_64 rng(77);
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                        GgmlType::Q4_K, GgmlType::Q6_K}) {
    SCOPED_TRACE(traits(type).name);
    const int64_t k = 1536, n = 256;
    const std::vector<uint8_t> w = test::random_weights(type, n, k, rng);
    const TensorInfo t = test::make_tensor(type, k, n, w);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(k);
    for (auto& v : x) v = normal(rng);
    std::vector<double> ref, scale;
    reference(dequantize_all(type, w, n, k), x, 1, n, k, ref, scale);
    std::vector<float> y(n);
    kernels::matmul(t, x.data(), 1, y.data());
    double err2 = 0, ref2 = 0;
    for (int64_t j = 0; j < n; ++j) {
      err2 += (y[j] - ref[j]) * (y[j] - ref[j]);
      ref2 += ref[j] * ref[j];
    }
    EXPECT_LT(std::sqrt(err2 / ref2), 0.02);
  }
}

TEST(MatmulRows, WritesOnlyTheRequestedColumns) {
  KernelStateGuard guard;
  std::mt19937_64 rng(5);
  for (GgmlType type : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q3_K, GgmlType::F16}) {
    for (int64_t m : {1, 4, 9, 70}) {
      SCOPED_TRACE(::testing::Message() << traits(type).name << " m=" << m);
      const int64_t k = 512, n = 301, n_begin = 37, n_end = 250, ldy = n + 5;
      const std::vector<uint8_t> w = test::random_weights(type, n, k, rng);
      const TensorInfo t = test::make_tensor(type, k, n, w);
      const std::vector<float> x = random_activations(m, k, rng);
      std::vector<float> full(m * n);
      kernels::matmul(t, x.data(), m, full.data());
      std::vector<double> ref, scale;
      reference(dequantize_all(type, w, n, k), x, m, n, k, ref, scale);
      const float sentinel = -12345.0f;
      std::vector<float> y(m * ldy, sentinel);
      kernels::matmul_rows(t, x.data(), m, y.data() + n_begin, ldy, n_begin, n_end);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < ldy; ++j) {
          const float got = y[r * ldy + j];
          if (j < n_begin || j >= n_end) {
            ASSERT_EQ(got, sentinel) << "row " << r << " col " << j << " was written";
          } else if (kernels::uses_gemv(type, m) || takes_int8_gemm(type, m)) {
            // GEMV and the int8 GEMM compute each output on its own: the same value as in the full product.
            ASSERT_EQ(got, full[r * n + j]) << "row " << r << " col " << j;
          } else {
            // sgemm panels split differently, so the last bits may differ.
            ASSERT_NEAR(got, ref[r * n + j], 1e-5 * scale[r * n + j]) << "row " << r << " col " << j;
          }
        }
    }
  }
}

TEST(Matmul, ThreadCountDoesNotChangeResults) {
  KernelStateGuard guard;
  std::mt19937_64 rng(9);
  const int64_t k = 576, n = 1000;
  const std::vector<uint8_t> w = test::random_weights(GgmlType::Q4_1, n, k, rng);
  const TensorInfo t = test::make_tensor(GgmlType::Q4_1, k, n, w);
  for (int64_t m : {1, 3, 100}) {
    const std::vector<float> x = random_activations(m, k, rng);
    std::vector<float> y1(m * n), y2(m * n);
    omp_set_num_threads(1);
    kernels::matmul(t, x.data(), m, y1.data());
    omp_set_num_threads(2);
    kernels::matmul(t, x.data(), m, y2.data());
    EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)), 0) << "m=" << m;
  }
}

// Q, K and V (or gate and up) share one activation pack and one thread team:
// each output must be bit for bit what its own matmul gives, on row counts with
// partial micro-panels and row lengths that are not a multiple of 8.
TEST(MatmulSharedInput, EqualsSeparateProducts) {
  KernelStateGuard guard;
  std::mt19937_64 rng(11);
  struct Case {
    int64_t k;
    std::vector<std::pair<GgmlType, int64_t>> weights;  // type, rows
  };
  // The first two cases share one integer GEMV (one activation format: Qwen's
  // q/k/v, a K-quant pair); the third mixes formats.
  const Case cases[] = {{896, {{GgmlType::Q5_0, 896}, {GgmlType::Q5_0, 128}, {GgmlType::Q8_0, 129}}},
                        {512, {{GgmlType::Q4_K, 64}, {GgmlType::Q6_K, 41}}},
                        {576, {{GgmlType::Q4_1, 576}, {GgmlType::Q8_0, 192}, {GgmlType::Q4_K, 37}}},
                        {100, {{GgmlType::F16, 64}, {GgmlType::F32, 5}, {GgmlType::BF16, 19}}},
                        {101, {{GgmlType::BF16, 40}, {GgmlType::F32, 3}}}};
  for (const GemmPath path : {GemmPath::kInt8, GemmPath::kBf16, GemmPath::kF32})
  for (const Case& c : cases) {
    kernels::set_gemm_path(path);
    std::vector<std::vector<uint8_t>> data;
    std::vector<TensorInfo> tensors;
    for (auto [type, rows] : c.weights) {
      if (c.k % traits(type).block_size != 0) continue;
      data.push_back(test::random_weights(type, rows, c.k, rng));
      tensors.push_back(test::make_tensor(type, c.k, rows, data.back()));
    }
    for (int64_t m : {1, 4, 7, 70, 300}) {
      SCOPED_TRACE(::testing::Message() << "k=" << c.k << " m=" << m);
      const std::vector<float> x = random_activations(m, c.k, rng);
      std::vector<std::vector<float>> fused, separate;
      std::vector<kernels::MatmulTarget> targets;
      for (const TensorInfo& t : tensors) {
        fused.emplace_back(m * t.rows(), -1.0f);
        separate.emplace_back(m * t.rows());
        kernels::matmul(t, x.data(), m, separate.back().data());
      }
      for (size_t i = 0; i < tensors.size(); ++i) targets.push_back({&tensors[i], fused[i].data()});
      kernels::matmul_shared_input(targets, x.data(), m);
      for (size_t i = 0; i < tensors.size(); ++i)
        EXPECT_EQ(std::memcmp(fused[i].data(), separate[i].data(), fused[i].size() * sizeof(float)), 0)
            << "weight " << i << " (" << traits(tensors[i].type).name << ")";
    }
  }
}

TEST(MatmulSharedInput, RejectsWeightsOfDifferentRowLengths) {
  std::mt19937_64 rng(12);
  const std::vector<uint8_t> a = test::random_weights(GgmlType::Q8_0, 4, 64, rng);
  const std::vector<uint8_t> b = test::random_weights(GgmlType::Q8_0, 4, 96, rng);
  const TensorInfo ta = test::make_tensor(GgmlType::Q8_0, 64, 4, a), tb = test::make_tensor(GgmlType::Q8_0, 96, 4, b);
  std::vector<float> x(16 * 96, 1.0f), ya(16 * 4), yb(16 * 4);
  const kernels::MatmulTarget targets[] = {{&ta, ya.data()}, {&tb, yb.data()}};
  EXPECT_THROW(kernels::matmul_shared_input(targets, x.data(), 16), std::invalid_argument);
  const kernels::MatmulTarget missing[] = {{nullptr, ya.data()}};
  EXPECT_THROW(kernels::matmul_shared_input(missing, x.data(), 16), std::invalid_argument);
}

TEST(Matmul, ZeroRowsIsANoOp) {
  std::mt19937_64 rng(3);
  const std::vector<uint8_t> w = test::random_weights(GgmlType::Q8_0, 4, 64, rng);
  const TensorInfo t = test::make_tensor(GgmlType::Q8_0, 64, 4, w);
  float y = 7.0f;
  kernels::matmul(t, nullptr, 0, &y);
  EXPECT_EQ(y, 7.0f);
}

TEST(Matmul, RejectsBadArguments) {
  std::mt19937_64 rng(4);
  const std::vector<uint8_t> w = test::random_weights(GgmlType::Q4_0, 8, 64, rng);
  const TensorInfo t = test::make_tensor(GgmlType::Q4_0, 64, 8, w);
  std::vector<float> x(2 * 64, 1.0f), y(2 * 8);
  EXPECT_THROW(kernels::matmul_rows(t, x.data(), 2, y.data(), 8, 0, 9), std::invalid_argument);
  EXPECT_THROW(kernels::matmul_rows(t, x.data(), 2, y.data(), 8, 5, 3), std::invalid_argument);
  EXPECT_THROW(kernels::matmul_rows(t, x.data(), 2, y.data(), 8, -1, 3), std::invalid_argument);
  EXPECT_THROW(kernels::matmul_rows(t, x.data(), 2, y.data(), 3, 0, 8), std::invalid_argument);
  EXPECT_THROW(kernels::matmul(t, x.data(), -1, y.data()), std::invalid_argument);
  EXPECT_THROW(kernels::matmul(t, nullptr, 2, y.data()), std::invalid_argument);

  TensorInfo unsupported = t;
  unsupported.type = GgmlType::Q8_K;
  EXPECT_THROW(kernels::matmul(unsupported, x.data(), 1, y.data()), std::invalid_argument);
  TensorInfo ragged = t;
  ragged.dims = {48, 8};  // not a multiple of Q4_0's 32-element blocks
  EXPECT_THROW(kernels::matmul(ragged, x.data(), 1, y.data()), std::invalid_argument);
  TensorInfo truncated = t;
  truncated.nbytes = w.size() - 1;
  EXPECT_THROW(kernels::matmul(truncated, x.data(), 1, y.data()), std::invalid_argument);
  TensorInfo no_data = t;
  no_data.data = nullptr;
  EXPECT_THROW(kernels::matmul(no_data, x.data(), 1, y.data()), std::invalid_argument);
}

}  // namespace
}  // namespace skim
