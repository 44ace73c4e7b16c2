// dequantize_row against gguf-py's reference dequantization, bit for bit.
// The vectors are generated at test time by tests/gen_quant_vectors.py with the
// project Python ($SKIM_PYTHON or ${SKIM_CACHE:-$HOME/.cache/skim}/venv).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "kernels/dequant.h"
#include "kernels/quant_blocks.h"
#include "quant_test_util.h"

namespace skim {
namespace {

struct TypeCase {
  GgmlType type;
  const char* name;
};

void PrintTo(const TypeCase& c, std::ostream* os) { *os << c.name; }

class DequantVsGgufPy : public ::testing::TestWithParam<TypeCase> {};

TEST_P(DequantVsGgufPy, BitExact) {
  const TypeCase tc = GetParam();
  const std::string python = test::project_python();
  const std::filesystem::path script = test::tests_source_dir() / "gen_quant_vectors.py";
  ASSERT_TRUE(std::filesystem::exists(script)) << "generator script missing: " << script;
  ASSERT_EQ(access(python.c_str(), X_OK), 0)
      << "no Python at " << python
      << " (run scripts/setup to create the venv with numpy and gguf, or set SKIM_PYTHON); "
         "the dequantization reference vectors cannot be generated";

  test::TempDir dir;
  const int status = test::run_process({python, script.string(), "--out", dir.path().string(), "--types", tc.name});
  ASSERT_EQ(status, 0) << "gen_quant_vectors.py failed (exit " << status << ") with " << python
                       << "; does that Python have numpy and the PyPI gguf package?";

  const std::vector<uint8_t> quantized = test::read_file_bytes(dir.path() / (std::string(tc.name) + ".q"));
  const std::vector<uint8_t> expected_bytes = test::read_file_bytes(dir.path() / (std::string(tc.name) + ".f32"));
  const TypeTraits& t = traits(tc.type);
  ASSERT_EQ(quantized.size() % t.type_size, 0u);
  const int64_t n = static_cast<int64_t>(quantized.size() / t.type_size) * t.block_size;
  ASSERT_GT(n, 0);
  ASSERT_EQ(expected_bytes.size(), static_cast<size_t>(n) * sizeof(float));

  std::vector<float> got(n);
  kernels::dequantize_row(tc.type, quantized.data(), got.data(), n);
  if (std::memcmp(got.data(), expected_bytes.data(), expected_bytes.size()) != 0) {
    std::vector<float> expected(n);
    std::memcpy(expected.data(), expected_bytes.data(), expected_bytes.size());
    int reported = 0;
    int64_t mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (std::memcmp(&got[i], &expected[i], sizeof(float)) == 0) continue;
      ++mismatches;
      if (reported++ < 8)
        ADD_FAILURE() << tc.name << " element " << i << " (block " << i / t.block_size << "): got " << got[i]
                      << ", gguf-py " << expected[i];
    }
    FAIL() << tc.name << ": " << mismatches << " of " << n << " elements differ from gguf-py";
  }

  // A row dequantized in pieces gives the same values as in one call.
  if (n >= 2 * t.block_size) {
    const int64_t first = (n / t.block_size / 2) * t.block_size;
    std::vector<float> pieces(n);
    kernels::dequantize_row(tc.type, quantized.data(), pieces.data(), first);
    kernels::dequantize_row(tc.type, quantized.data() + first / t.block_size * t.type_size, pieces.data() + first,
                            n - first);
    EXPECT_EQ(std::memcmp(pieces.data(), got.data(), n * sizeof(float)), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantVsGgufPy,
                         ::testing::Values(TypeCase{GgmlType::F32, "F32"}, TypeCase{GgmlType::F16, "F16"},
                                           TypeCase{GgmlType::BF16, "BF16"}, TypeCase{GgmlType::Q4_0, "Q4_0"},
                                           TypeCase{GgmlType::Q4_1, "Q4_1"}, TypeCase{GgmlType::Q5_0, "Q5_0"},
                                           TypeCase{GgmlType::Q5_1, "Q5_1"}, TypeCase{GgmlType::Q8_0, "Q8_0"},
                                           TypeCase{GgmlType::Q2_K, "Q2_K"}, TypeCase{GgmlType::Q3_K, "Q3_K"},
                                           TypeCase{GgmlType::Q4_K, "Q4_K"}, TypeCase{GgmlType::Q5_K, "Q5_K"},
                                           TypeCase{GgmlType::Q6_K, "Q6_K"}),
                         [](const ::testing::TestParamInfo<TypeCase>& info) { return std::string(info.param.name); });

TEST(Dequant, RejectsUnsupportedType) {
  uint8_t block[292] = {};
  float out[256];
  EXPECT_THROW(kernels::dequantize_row(GgmlType::Q8_K, block, out, 256), GgufError);
  EXPECT_THROW(kernels::dequantize_row(static_cast<GgmlType>(99), block, out, 32), GgufError);
  EXPECT_FALSE(kernels::can_dequantize(GgmlType::Q8_K));
  EXPECT_TRUE(kernels::can_dequantize(GgmlType::Q6_K));
}

TEST(Dequant, RejectsPartialBlocks) {
  uint8_t block[210] = {};
  float out[256];
  EXPECT_THROW(kernels::dequantize_row(GgmlType::Q4_0, block, out, 31), GgufError);
  EXPECT_THROW(kernels::dequantize_row(GgmlType::Q6_K, block, out, 128), GgufError);
  EXPECT_THROW(kernels::dequantize_row(GgmlType::Q4_0, block, out, -32), GgufError);
  EXPECT_NO_THROW(kernels::dequantize_row(GgmlType::Q4_0, block, out, 0));
}

TEST(Dequant, HandWorkedBlocks) {
  // Q4_1: d = 0.5, m = -1; nibble j of byte j is element j, high nibble element j+16.
  kernels::BlockQ4_1 b{};
  b.d = kernels::f32_to_f16(0.5f);
  b.m = kernels::f32_to_f16(-1.0f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  kernels::dequantize_row(GgmlType::Q4_1, &b, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * j - 1.0f) << j;
    EXPECT_EQ(y[j + 16], 0.5f * (15 - j) - 1.0f) << j;
  }
  // Q8_0: plain signed bytes times d.
  kernels::BlockQ8_0 q8{};
  q8.d = kernels::f32_to_f16(0.25f);
  for (int j = 0; j < 32; ++j) q8.qs[j] = static_cast<int8_t>(j * 8 - 128);
  kernels::dequantize_row(GgmlType::Q8_0, &q8, y, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.25f * (j * 8 - 128)) << j;
}

}  // namespace
}  // namespace skim
