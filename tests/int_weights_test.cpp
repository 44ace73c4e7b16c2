// The integer form of every quantized weight type (kernels/int_weights.h)
// against dequantize_row: scale * u + offset gives each weight to within the
// rounding of that expression, u stays within the type's stated maximum, and
// types without an integer form are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/dequant.h"
#include "kernels/int_weights.h"
#include "quant_test_util.h"

namespace skim {
namespace {

TEST(IntWeights, ReproduceDequantizeRow) {
  const GgmlType types[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                            GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};
  std::mt19937_64 rng(3);
  for (GgmlType type : types) {
    SCOPED_TRACE(traits(type).name);
    const int64_t k = 1024, rows = 16;
    const int block = kernels::int_block_size(type);
    ASSERT_TRUE(block == 16 || block == 32);
    const std::vector<uint8_t> w = test::random_weights(type, rows, k, rng);
    std::vector<float> ref(k), scale(k / block), offset(k / block);
    std::vector<uint8_t> u(k);
    int largest = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = w.data() + r * row_bytes(type, k);
      kernels::dequantize_row(type, row, ref.data(), k);
      kernels::unpack_int_row(type, row, k, u.data(), scale.data(), offset.data());
      for (int64_t i = 0; i < k; ++i) {
        const float s = scale[i / block], z = offset[i / block];
        const float got = s * static_cast<float>(u[i]) + z;
        // Two f32 roundings at most (the product, the add), each within half an
        // ulp of the larger of the terms.
        const float size = std::max(std::fabs(s * static_cast<float>(u[i])), std::fabs(z));
        ASSERT_LE(std::fabs(got - ref[i]), 1.2e-7f * size) << "row " << r << " element " << i << ": u " << int(u[i])
                                                           << ", scale " << s << ", offset " << z;
        largest = std::max<int>(largest, u[i]);
      }
    }
    EXPECT_LE(largest, kernels::int_max_value(type));
  }
}

TEST(IntWeights, FloatTypesHaveNoIntegerForm) {
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    EXPECT_EQ(kernels::int_block_size(type), 0);
    uint8_t u[32];
    float s, z;
    const float row[32] = {};
    EXPECT_THROW(kernels::unpack_int_row(type, row, 32, u, &s, &z), std::invalid_argument);
  }
}

}  // namespace
}  // namespace skim
