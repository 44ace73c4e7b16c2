// GGUF reader tests: well-formed images built in memory, every class of
// malformed input, and the real SmolLM2 model cross-checked against the PyPI
// `gguf` package's GGUFReader.
#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "gguf_writer.h"
#include "skim/gguf.h"
#include "skim/paths.h"
#include "test_support.h"

namespace skim {
namespace {

namespace fs = std::filesystem;
using test::Bytes;
using test::GgufWriter;
using test::WTensor;
using test::WValue;
namespace vt = test::gguf_type;
namespace gt = test::ggml_type;

std::unique_ptr<GgufFile> parse(const std::vector<uint8_t>& image) {
  return GgufFile::from_memory(image.data(), image.size(), "test.gguf");
}

// Parses `image`, expecting a GgufError whose message contains `needle`; returns the message.
std::string expect_error(const std::vector<uint8_t>& image, const std::string& needle) {
  try {
    parse(image);
  } catch (const GgufError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message '" << msg << "' does not mention '" << needle << "'";
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected GgufError mentioning '" << needle << "', got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected GgufError mentioning '" << needle << "', but the image parsed";
  return {};
}

// Files of this test binary's run, in its own temporary directory.
fs::path temp_path(const std::string& stem) {
  static const test::TempDir dir;
  return dir / stem;
}

// ---------------------------------------------------------------------------
// Well-formed images

TEST(GgufParse, ScalarTypesRoundTripWithExtremes) {
  GgufWriter w;
  w.kv("t.u8", WValue::u8(255))
      .kv("t.i8", WValue::i8(-128))
      .kv("t.u16", WValue::u16(65535))
      .kv("t.i16", WValue::i16(-32768))
      .kv("t.u32", WValue::u32(4294967295u))
      .kv("t.i32", WValue::i32(std::numeric_limits<int32_t>::min()))
      .kv("t.u64", WValue::u64(std::numeric_limits<uint64_t>::max()))
      .kv("t.i64", WValue::i64(std::numeric_limits<int64_t>::min()))
      .kv("t.f32", WValue::f32(1e-5f))
      .kv("t.f64", WValue::f64(-2.5e300))
      .kv("t.true", WValue::boolean(true))
      .kv("t.false", WValue::boolean(false));
  auto f = parse(w.build());
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), 12u);
  EXPECT_TRUE(f->tensors().empty());

  EXPECT_EQ(f->find("t.u8")->type, GgufValueType::U8);
  EXPECT_EQ(f->get_int("t.u8"), 255);
  EXPECT_EQ(f->find("t.i8")->type, GgufValueType::I8);
  EXPECT_EQ(f->get_int("t.i8"), -128);
  EXPECT_EQ(f->find("t.u16")->type, GgufValueType::U16);
  EXPECT_EQ(f->get_int("t.u16"), 65535);
  EXPECT_EQ(f->find("t.i16")->type, GgufValueType::I16);
  EXPECT_EQ(f->get_int("t.i16"), -32768);
  EXPECT_EQ(f->find("t.u32")->type, GgufValueType::U32);
  EXPECT_EQ(f->get_int("t.u32"), 4294967295ll);
  EXPECT_EQ(f->find("t.i32")->type, GgufValueType::I32);
  EXPECT_EQ(f->get_int("t.i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(f->find("t.i64")->type, GgufValueType::I64);
  EXPECT_EQ(f->get_int("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f->find("t.f32")->type, GgufValueType::F32);
  EXPECT_EQ(f->get_float("t.f32"), static_cast<double>(1e-5f));  // widened exactly
  EXPECT_EQ(f->find("t.f64")->type, GgufValueType::F64);
  EXPECT_EQ(f->get_float("t.f64"), -2.5e300);
  EXPECT_EQ(f->find("t.true")->type, GgufValueType::BOOL);
  EXPECT_TRUE(f->get_bool("t.true"));
  EXPECT_FALSE(f->get_bool("t.false"));

  // u64 max is kept exactly but does not fit int64.
  const GgufValue* big = f->find("t.u64");
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->type, GgufValueType::U64);
  EXPECT_EQ(std::get<uint64_t>(big->v), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(big->to_display(), "18446744073709551615");
  EXPECT_EQ(big->as_float(), 18446744073709551615.0);
  try {
    f->get_int("t.u64");
    ADD_FAILURE() << "u64 max must not convert to int64";
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("t.u64"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("int64"), std::string::npos) << e.what();
  }

  EXPECT_EQ(f->find("t.i8")->to_display(), "-128");
  EXPECT_EQ(f->find("t.true")->to_display(), "true");
  EXPECT_EQ(f->find("t.false")->to_display(), "false");
  EXPECT_EQ(f->find("t.f64")->to_display(), "-2.5e+300");
  EXPECT_TRUE(f->find("t.u16")->is_integer());
  EXPECT_FALSE(f->find("t.f32")->is_integer());
  EXPECT_EQ(f->get_float("t.i16"), -32768.0);  // integers read as floats too
}

TEST(GgufParse, StringsKeepTheirExactBytes) {
  const std::string with_nul("a\0b", 3);
  const std::string utf8 = "h\xC3\xA9llo \xE2\x9C\x93";
  const std::string long_text(200, 'x');
  GgufWriter w;
  w.kv("s.empty", WValue::str("")).kv("s.nul", WValue::str(with_nul)).kv("s.utf8", WValue::str(utf8));
  w.kv("s.long", WValue::str(long_text)).kv("", WValue::str("empty key"));
  auto f = parse(w.build());
  EXPECT_EQ(f->get_string("s.empty"), "");
  EXPECT_EQ(f->get_string("s.nul"), with_nul);
  EXPECT_EQ(f->get_string("s.utf8"), utf8);
  EXPECT_EQ(f->get_string("s.long"), long_text);
  EXPECT_EQ(f->get_string(""), "empty key");
  EXPECT_EQ(f->find("s.utf8")->to_display(), "\"" + utf8 + "\"");
  EXPECT_EQ(f->find("s.long")->to_display(), "\"" + std::string(77, 'x') + "...\" (200 bytes)");
}

TEST(GgufParse, ArraysOfEveryElementType) {
  GgufWriter w;
  w.kv("a.u8", WValue::array(vt::U8, {WValue::u8(0), WValue::u8(255)}))
      .kv("a.i8", WValue::array(vt::I8, {WValue::i8(-1), WValue::i8(127)}))
      .kv("a.u16", WValue::array(vt::U16, {WValue::u16(7)}))
      .kv("a.i16", WValue::array(vt::I16, {WValue::i16(1), WValue::i16(-2), WValue::i16(3)}))
      .kv("a.u32", WValue::array(vt::U32, {WValue::u32(1u << 31)}))
      .kv("a.i32", WValue::array(vt::I32, {WValue::i32(-5), WValue::i32(6)}))
      .kv("a.u64", WValue::array(vt::U64, {WValue::u64(1ull << 40)}))
      .kv("a.i64", WValue::array(vt::I64, {WValue::i64(-(1ll << 40))}))
      .kv("a.f32", WValue::array(vt::F32, {WValue::f32(0.5f), WValue::f32(-1.25f)}))
      .kv("a.f64", WValue::array(vt::F64, {WValue::f64(3.0), WValue::f64(1e-300)}))
      .kv("a.bool", WValue::array(vt::BOOL, {WValue::boolean(true), WValue::boolean(false)}))
      .kv("a.str", WValue::array(vt::STRING, {WValue::str("<s>"), WValue::str(""), WValue::str("\xC4\xA0the")}))
      .kv("a.empty", WValue::array(vt::F32, {}));
  auto f = parse(w.build());
  EXPECT_EQ(f->get_int_array("a.u8"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(f->get_int_array("a.i8"), (std::vector<int64_t>{-1, 127}));
  EXPECT_EQ(f->get_int_array("a.u16"), (std::vector<int64_t>{7}));
  EXPECT_EQ(f->get_int_array("a.i16"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f->get_int_array("a.u32"), (std::vector<int64_t>{1ll << 31}));
  EXPECT_EQ(f->get_int_array("a.i32"), (std::vector<int64_t>{-5, 6}));
  EXPECT_EQ(f->get_int_array("a.u64"), (std::vector<int64_t>{1ll << 40}));
  EXPECT_EQ(f->get_int_array("a.i64"), (std::vector<int64_t>{-(1ll << 40)}));
  EXPECT_EQ(f->get_float_array("a.f32"), (std::vector<double>{0.5, -1.25}));
  EXPECT_EQ(f->get_float_array("a.f64"), (std::vector<double>{3.0, 1e-300}));
  EXPECT_EQ(f->get_string_array("a.str"), (std::vector<std::string>{"<s>", "", "\xC4\xA0the"}));
  EXPECT_TRUE(f->get_float_array("a.empty").empty());

  const GgufArray& bools = f->find("a.bool")->as_array();
  EXPECT_EQ(bools.elem_type, GgufValueType::BOOL);
  ASSERT_EQ(bools.items.size(), 2u);
  EXPECT_TRUE(bools.items[0].as_bool());
  EXPECT_FALSE(bools.items[1].as_bool());

  const std::map<std::string, GgufValueType> elem_types = {
      {"a.u8", GgufValueType::U8},   {"a.i8", GgufValueType::I8},   {"a.u16", GgufValueType::U16},
      {"a.i16", GgufValueType::I16}, {"a.u32", GgufValueType::U32}, {"a.i32", GgufValueType::I32},
      {"a.u64", GgufValueType::U64}, {"a.i64", GgufValueType::I64}, {"a.f32", GgufValueType::F32},
      {"a.f64", GgufValueType::F64}, {"a.str", GgufValueType::STRING}, {"a.empty", GgufValueType::F32}};
  for (const auto& [key, type] : elem_types) {
    const GgufValue* v = f->find(key);
    ASSERT_NE(v, nullptr) << key;
    EXPECT_EQ(v->type, GgufValueType::ARRAY) << key;
    EXPECT_EQ(v->as_array().elem_type, type) << key;
    for (const GgufValue& item : v->as_array().items) EXPECT_EQ(item.type, type) << key;
  }

  EXPECT_EQ(f->find("a.i16")->to_display(), "[3 x i16] {1, -2, 3}");
  EXPECT_EQ(f->find("a.str")->to_display(), "[3 x string] {\"<s>\", \"\", \"\xC4\xA0the\"}");
  EXPECT_EQ(f->find("a.i16")->to_display(2), "[3 x i16]");  // long arrays show only their size
  EXPECT_EQ(f->find("a.empty")->to_display(), "[0 x f32] {}");

  // Wrong-typed access names the key and both types.
  try {
    f->get_string_array("a.i32");
    ADD_FAILURE() << "an i32 array is not a string array";
  } catch (const GgufError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("a.i32"), std::string::npos) << msg;
    EXPECT_NE(msg.find("string"), std::string::npos) << msg;
  }
}

TEST(GgufParse, NestedArrays) {
  auto row = [](std::vector<int32_t> xs) {
    std::vector<WValue> items;
    for (int32_t x : xs) items.push_back(WValue::i32(x));
    return WValue::array(vt::I32, items);
  };
  WValue ragged = WValue::array(vt::ARRAY, {row({1, 2, 3}), row({}), row({-4})});
  WValue three_levels = WValue::array(
      vt::ARRAY, {WValue::array(vt::ARRAY, {WValue::array(vt::STRING, {WValue::str("deep")})}),
                  WValue::array(vt::ARRAY, {})});
  GgufWriter w;
  w.kv("n.ragged", ragged).kv("n.three", three_levels);
  auto f = parse(w.build());

  const GgufArray& r = f->find("n.ragged")->as_array();
  EXPECT_EQ(r.elem_type, GgufValueType::ARRAY);
  ASSERT_EQ(r.items.size(), 3u);
  EXPECT_EQ(r.items[0].as_array().elem_type, GgufValueType::I32);
  ASSERT_EQ(r.items[0].as_array().items.size(), 3u);
  EXPECT_EQ(r.items[0].as_array().items[2].as_int(), 3);
  EXPECT_TRUE(r.items[1].as_array().items.empty());
  EXPECT_EQ(r.items[2].as_array().items.at(0).as_int(), -4);
  EXPECT_EQ(f->find("n.ragged")->to_display(), "[3 x array] {[3 x i32] {1, 2, 3}, [0 x i32] {}, [1 x i32] {-4}}");

  const GgufArray& t = f->find("n.three")->as_array();
  ASSERT_EQ(t.items.size(), 2u);
  const GgufArray& level2 = t.items[0].as_array();
  ASSERT_EQ(level2.items.size(), 1u);
  EXPECT_EQ(level2.items[0].as_array().items.at(0).as_string(), "deep");
  EXPECT_TRUE(t.items[1].as_array().items.empty());
  EXPECT_EQ(t.items[1].as_array().elem_type, GgufValueType::ARRAY);
}

// A mix of every tensor type skim knows, with 1 to 4 dimensions.
GgufWriter several_tensor_types(bool with_q8_1 = true) {
  GgufWriter w;
  w.kv("general.architecture", WValue::str("llama"));
  w.tensor("f32.vec", gt::F32, {8})
      .tensor("f16.mat", gt::F16, {4, 3})
      .tensor("bf16.cube", gt::BF16, {2, 2, 2})
      .tensor("q4_0", gt::Q4_0, {32, 2})
      .tensor("q4_1", gt::Q4_1, {64, 3})
      .tensor("q5_0", gt::Q5_0, {32, 1})
      .tensor("q5_1", gt::Q5_1, {32, 1})
      .tensor("q8_0", gt::Q8_0, {32, 1, 2});
  if (with_q8_1) w.tensor("q8_1", gt::Q8_1, {32});
  w.tensor("q2_k", gt::Q2_K, {256})
      .tensor("q3_k", gt::Q3_K, {256})
      .tensor("q4_k", gt::Q4_K, {256, 2})
      .tensor("q5_k", gt::Q5_K, {256})
      .tensor("q6_k", gt::Q6_K, {256, 1, 1, 2})
      .tensor("q8_k", gt::Q8_K, {512});
  return w;
}

TEST(GgufParse, TensorsOfSeveralTypes) {
  GgufWriter w = several_tensor_types();
  std::vector<uint8_t> image = w.build();
  auto f = parse(image);
  ASSERT_EQ(f->tensors().size(), w.tensors().size());
  for (size_t i = 0; i < w.tensors().size(); ++i) {
    const WTensor& want = w.tensors()[i];
    const TensorInfo& got = f->tensors()[i];  // directory order is kept
    SCOPED_TRACE(want.name);
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(static_cast<uint32_t>(got.type), want.type);
    EXPECT_EQ(std::vector<uint64_t>(got.dims.begin(), got.dims.end()), want.dims);
    EXPECT_EQ(got.offset, w.layout.offsets[i]);
    EXPECT_EQ(got.offset % 32, 0u);
    EXPECT_EQ(got.nbytes, want.data.size());
    ASSERT_EQ(got.data, image.data() + w.layout.data_start + w.layout.offsets[i]);
    EXPECT_EQ(std::vector<uint8_t>(got.data, got.data + got.nbytes), want.data);

    int64_t n = 1;
    for (uint64_t d : want.dims) n *= static_cast<int64_t>(d);
    EXPECT_EQ(got.nelements(), n);
    EXPECT_EQ(got.row_length(), static_cast<int64_t>(want.dims[0]));
    EXPECT_EQ(got.rows(), n / static_cast<int64_t>(want.dims[0]));
    auto [block, block_bytes] = test::ggml_block(want.type);
    EXPECT_EQ(got.row_size(), want.dims[0] / block * block_bytes);
    EXPECT_EQ(got.row(got.rows() - 1) + got.row_size(), got.data + got.nbytes);
    EXPECT_EQ(f->tensor(want.name), &got);
  }
  EXPECT_EQ(f->tensor("missing"), nullptr);
  EXPECT_EQ(&f->require("q4_1", {64, 3}), f->tensor("q4_1"));
  try {
    f->require("q4_1", {3, 64});
    ADD_FAILURE() << "wrong shape accepted";
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("has shape [64, 3], expected [3, 64]"), std::string::npos) << e.what();
  }
  try {
    f->require("nope", {1});
    ADD_FAILURE() << "missing tensor accepted";
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'nope'"), std::string::npos) << e.what();
  }
}

TEST(GgufParse, TypeTraitsMatchTheWriterTable) {
  for (uint32_t id : {gt::F32, gt::F16, gt::BF16, gt::Q4_0, gt::Q4_1, gt::Q5_0, gt::Q5_1, gt::Q8_0, gt::Q8_1, gt::Q2_K,
                      gt::Q3_K, gt::Q4_K, gt::Q5_K, gt::Q6_K, gt::Q8_K}) {
    auto t = type_traits(id);
    ASSERT_TRUE(t.has_value()) << id;
    auto [block, bytes] = test::ggml_block(id);
    EXPECT_EQ(t->block_size, static_cast<int64_t>(block)) << t->name;
    EXPECT_EQ(t->type_size, static_cast<int64_t>(bytes)) << t->name;
    EXPECT_STREQ(type_name(id), t->name);
  }
  EXPECT_FALSE(type_traits(4).has_value());  // Q4_2, removed from ggml
  EXPECT_STREQ(type_name(12345), "unknown");
  EXPECT_EQ(row_bytes(GgmlType::Q4_1, 576), 576u / 32 * 20);
  EXPECT_THROW(row_bytes(GgmlType::Q4_1, 33), GgufError);
  EXPECT_THROW(traits(static_cast<GgmlType>(99)), GgufError);
}

TEST(GgufParse, Version2AndVersion3ReadTheSame) {
  GgufWriter w = several_tensor_types();
  w.kv("v.arr", WValue::array(vt::U64, {WValue::u64(1), WValue::u64(2)}));
  w.version = 2;
  std::vector<uint8_t> v2 = w.build();
  w.version = 3;
  std::vector<uint8_t> v3 = w.build();
  auto f2 = parse(v2);
  auto f3 = parse(v3);
  EXPECT_EQ(f2->version(), 2u);
  EXPECT_EQ(f3->version(), 3u);
  ASSERT_EQ(f2->metadata().size(), f3->metadata().size());
  for (const auto& [key, value] : f3->metadata()) EXPECT_EQ(f2->find(key)->to_display(), value.to_display()) << key;
  ASSERT_EQ(f2->tensors().size(), f3->tensors().size());
  for (size_t i = 0; i < f3->tensors().size(); ++i) {
    EXPECT_EQ(f2->tensors()[i].name, f3->tensors()[i].name);
    EXPECT_EQ(f2->tensors()[i].dims, f3->tensors()[i].dims);
    EXPECT_EQ(f2->tensors()[i].offset, f3->tensors()[i].offset);
    EXPECT_EQ(f2->tensors()[i].data - v2.data(), f3->tensors()[i].data - v3.data());
  }
}

TEST(GgufParse, CustomAlignment) {
  for (uint32_t alignment : {1u, 8u, 64u, 256u, 4096u}) {
    SCOPED_TRACE(alignment);
    GgufWriter w;
    w.set_alignment(alignment);
    // 12-byte tensors, so every alignment above 4 needs padding between them.
    w.tensor("a", gt::F32, {3}).tensor("b", gt::F32, {3}).tensor("c", gt::Q8_0, {32});
    std::vector<uint8_t> image = w.build();
    auto f = parse(image);
    EXPECT_EQ(f->alignment(), alignment);
    EXPECT_EQ(w.layout.data_start % alignment, 0u);
    for (size_t i = 0; i < 3; ++i) {
      const TensorInfo& t = f->tensors()[i];
      EXPECT_EQ(t.offset, w.layout.offsets[i]);
      EXPECT_EQ(t.offset % alignment, 0u);
      EXPECT_EQ(static_cast<uint64_t>(t.data - image.data()), w.layout.data_start + w.layout.offsets[i]);
      EXPECT_EQ(std::vector<uint8_t>(t.data, t.data + t.nbytes), w.tensors()[i].data);
    }
    EXPECT_EQ(f->tensors()[1].offset, (12 + alignment - 1) / alignment * alignment);
  }
}

TEST(GgufParse, AlignmentMayBeAnyIntegerType) {
  for (WValue value : {WValue::u64(64), WValue::i32(64), WValue::u16(64), WValue::u8(64)}) {
    GgufWriter w;
    w.alignment = 64;
    w.kv("general.alignment", value).tensor("a", gt::F32, {3}).tensor("b", gt::F32, {5});
    auto f = parse(w.build());
    EXPECT_EQ(f->alignment(), 64u);
    EXPECT_EQ(f->tensors()[1].offset, 64u);
  }
}

TEST(GgufParse, DefaultAlignmentIs32) {
  GgufWriter w;
  w.tensor("a", gt::F32, {1}).tensor("b", gt::F32, {1});
  auto f = parse(w.build());
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->tensors()[1].offset, 32u);
}

TEST(GgufParse, FileWithoutTensorsMayEndUnaligned) {
  // Vocab-only files end right after their metadata, with no data section padding.
  GgufWriter w;
  w.kv("tokenizer.ggml.model", WValue::str("gpt2"));
  std::vector<uint8_t> image = w.build();
  ASSERT_NE(image.size() % 32, 0u);
  auto f = parse(image);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "gpt2");
}

TEST(GgufParse, GettersNameTheKeyAndUseFallbacks) {
  GgufWriter w;
  w.kv("k.int", WValue::u32(7)).kv("k.str", WValue::str("x"));
  auto f = parse(w.build());
  EXPECT_EQ(f->get_int("k.missing", 42), 42);
  EXPECT_EQ(f->get_int("k.int", 42), 7);
  EXPECT_EQ(f->get_string("k.missing", "fb"), "fb");
  EXPECT_EQ(f->get_float("k.missing", 1.5), 1.5);
  EXPECT_TRUE(f->get_bool("k.missing", true));
  EXPECT_FALSE(f->has("k.missing"));
  EXPECT_TRUE(f->has("k.int"));
  try {
    f->get_string("k.missing");
    ADD_FAILURE();
  } catch (const GgufError& e) {
    EXPECT_STREQ(e.what(), "test.gguf: missing metadata key 'k.missing'");
  }
  try {
    f->get_int("k.str");
    ADD_FAILURE();
  } catch (const GgufError& e) {
    EXPECT_STREQ(e.what(), "test.gguf: metadata key 'k.str': expected an integer, found string");
  }
  EXPECT_THROW(f->get_bool("k.int"), GgufError);
  EXPECT_THROW(f->get_string("k.int", "fallback only when missing"), GgufError);
}

TEST(GgufParse, OpenMapsAFileLikeFromMemory) {
  GgufWriter w = several_tensor_types();
  std::vector<uint8_t> image = w.build();
  fs::path path = temp_path("open.gguf");
  test::write_file(path, image);
  auto mapped = GgufFile::open(path);
  auto mem = parse(image);
  EXPECT_EQ(mapped->path(), path.string());
  EXPECT_EQ(mapped->file_size(), image.size());
  ASSERT_EQ(mapped->tensors().size(), mem->tensors().size());
  for (size_t i = 0; i < mem->tensors().size(); ++i) {
    const TensorInfo& a = mapped->tensors()[i];
    const TensorInfo& b = mem->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.offset, b.offset);
    EXPECT_EQ(std::vector<uint8_t>(a.data, a.data + a.nbytes), std::vector<uint8_t>(b.data, b.data + b.nbytes));
  }
  fs::remove(path);
}

TEST(GgufParse, OpenReportsUnusablePaths) {
  auto expect_open_error = [](const std::string& path, const std::string& needle) {
    try {
      GgufFile::open(path);
      ADD_FAILURE() << path << " opened";
    } catch (const GgufError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
    }
  };
  expect_open_error("/nonexistent/dir/model.gguf", "cannot open");
  expect_open_error(fs::temp_directory_path().string(), "not a regular file");
  fs::path empty = temp_path("empty.gguf");
  test::write_file(empty, {});
  expect_open_error(empty, "empty");
  fs::path junk = temp_path("junk.gguf");
  test::write_file(junk, {'G', 'G', 'M', 'L', 1, 0, 0, 0});
  expect_open_error(junk, "bad magic");
  fs::remove(empty);
  fs::remove(junk);
}

// ---------------------------------------------------------------------------
// Malformed images: each must give a GgufError naming the problem.

// Header + metadata + tensor directory, hand-encoded, for byte-level corruption.
struct Crafted {
  Bytes b;
  Crafted(uint64_t n_tensors, uint64_t n_kv) { b.u32(0x46554747).u32(3).u64(n_tensors).u64(n_kv); }
  std::vector<uint8_t> image() const { return b.buf; }
};

TEST(GgufMalformed, BadMagic) {
  GgufWriter w;
  w.magic = 0x4C4D4747;  // "GGML", the pre-GGUF format
  expect_error(w.build(), "bad magic");
  expect_error({'g', 'g', 'u', 'f', 3, 0, 0, 0}, "bad magic");
}

TEST(GgufMalformed, UnsupportedVersion) {
  for (uint32_t version : {0u, 1u, 4u, 1000u}) {
    GgufWriter w;
    w.version = version;
    std::string msg = expect_error(w.build(), "unsupported GGUF version " + std::to_string(version));
    EXPECT_NE(msg.find("versions 2 and 3"), std::string::npos) << msg;
  }
  GgufWriter big_endian;
  big_endian.version = 0x03000000;
  expect_error(big_endian.build(), "big-endian");
}

// A small image touching every parse path: all value kinds, nesting, tensors.
GgufWriter small_complete_writer() {
  GgufWriter w;
  w.set_alignment(16);
  w.kv("general.architecture", WValue::str("llama"))
      .kv("x.u8", WValue::u8(1))
      .kv("x.i16", WValue::i16(-2))
      .kv("x.f32", WValue::f32(0.25f))
      .kv("x.u64", WValue::u64(9))
      .kv("x.f64", WValue::f64(0.5))
      .kv("x.bool", WValue::boolean(true))
      .kv("x.strs", WValue::array(vt::STRING, {WValue::str("ab"), WValue::str("c")}))
      .kv("x.nested", WValue::array(vt::ARRAY, {WValue::array(vt::I8, {WValue::i8(3)}), WValue::array(vt::I8, {})}));
  w.tensor("t.q8", gt::Q8_0, {32}).tensor("t.f32", gt::F32, {3, 2}).tensor("t.f16", gt::F16, {5});
  return w;
}

TEST(GgufMalformed, TruncatedAtEveryByteOffset) {
  GgufWriter w = small_complete_writer();
  std::vector<uint8_t> image = w.build();
  ASSERT_EQ(w.layout.end_of_tensor_data, image.size());  // no trailing padding: every prefix loses something
  ASSERT_NO_THROW(parse(image));
  size_t failures = 0;
  for (size_t len = 0; len < image.size(); ++len) {
    std::vector<uint8_t> prefix(image.begin(), image.begin() + static_cast<ptrdiff_t>(len));
    SCOPED_TRACE("prefix of " + std::to_string(len) + " bytes");
    std::string msg = expect_error(prefix, "truncated");
    failures += !msg.empty();
  }
  EXPECT_EQ(failures, image.size());
}

TEST(GgufMalformed, AbsurdCounts) {
  expect_error(Crafted(0, 1ull << 62).image(), "metadata count 4611686018427387904 is absurd");
  expect_error(Crafted(0, ~0ull).image(), "metadata count");
  expect_error(Crafted(1ull << 63, 0).image(), "tensor count 9223372036854775808 is absurd");
  // Counts a little larger than what follows are plain truncation.
  GgufWriter w = small_complete_writer();
  w.kv_count_override = 11;  // 10 present: the tensor directory is then misread as metadata
  EXPECT_THROW(parse(w.build()), GgufError);
  GgufWriter t = small_complete_writer();
  t.tensor_count_override = 4;
  expect_error(t.build(), "tensor");
}

TEST(GgufMalformed, AbsurdStringLengths) {
  Crafted key(0, 1);
  key.b.u64(1ull << 62);
  expect_error(key.image(), "metadata key: string length 4611686018427387904 is absurd");
  Crafted gib(0, 1);
  gib.b.u64((1ull << 30) + 1);
  expect_error(gib.image(), "is absurd");
  // Sane-looking lengths that run past the end are truncation.
  Crafted past(0, 1);
  past.b.u64(100).raw("abc", 3);
  expect_error(past.image(), "truncated file: metadata key needs 100 bytes");

  GgufWriter value;
  value.kv("k", WValue::raw(vt::STRING, Bytes().u64(~0ull).buf));
  expect_error(value.build(), "string value: string length 18446744073709551615 is absurd");
  GgufWriter name;
  name.tensor(WTensor{"t", gt::F32, {1}, {0, 0, 0, 0}, std::nullopt});
  std::vector<uint8_t> image = name.build();
  // The tensor name length is the first field after the 24-byte header.
  std::memset(image.data() + 24, 0x7F, 8);
  expect_error(image, "tensor name: string length");
}

TEST(GgufMalformed, AbsurdArrayLengths) {
  GgufWriter w;
  w.kv("arr", WValue::raw(vt::ARRAY, Bytes().u32(vt::U8).u64(1ull << 62).buf));
  expect_error(w.build(), "metadata 'arr': array of 4611686018427387904 u8 values cannot fit");
  // 3 u64 elements need 24 bytes; 16 are there.
  GgufWriter u;
  u.kv("arr64", WValue::raw(vt::ARRAY, Bytes().u32(vt::U64).u64(3).u64(1).u64(2).buf));
  expect_error(u.build(), "metadata 'arr64': array of 3 u64 values cannot fit in the 16 bytes left");
  GgufWriter s;
  s.kv("strs", WValue::raw(vt::ARRAY, Bytes().u32(vt::STRING).u64(~0ull).buf));
  expect_error(s.build(), "cannot fit");
}

TEST(GgufMalformed, UnknownValueType) {
  for (uint32_t type : {13u, 100u, 0xFFFFFFFFu}) {
    GgufWriter w;
    w.kv("odd.key", WValue::raw(type, {0, 0, 0, 0, 0, 0, 0, 0}));
    expect_error(w.build(), "metadata 'odd.key': unknown value type " + std::to_string(type));
    GgufWriter a;
    a.kv("odd.array", WValue::raw(vt::ARRAY, Bytes().u32(type).u64(1).u64(0).buf));
    expect_error(a.build(), "metadata 'odd.array': unknown array element type " + std::to_string(type));
  }
}

TEST(GgufMalformed, UnknownTensorType) {
  // 4 and 5 were removed from ggml; 16-29 are i-quants skim does not read.
  for (uint32_t type : {4u, 5u, 16u, 29u, 31u, 1000u, 0xFFFFFFFFu}) {
    GgufWriter w;
    w.tensor(WTensor{"weird", type, {32}, std::vector<uint8_t>(1024), std::nullopt});
    expect_error(w.build(), "tensor 'weird': unknown tensor type " + std::to_string(type));
  }
}

TEST(GgufMalformed, DimensionCounts) {
  GgufWriter zero;
  zero.tensor(WTensor{"scalar", gt::F32, {}, {0, 0, 0, 0}, std::nullopt});
  expect_error(zero.build(), "tensor 'scalar': 0 dimensions (1 to 4 allowed)");
  GgufWriter five;
  five.tensor(WTensor{"t5", gt::F32, {1, 1, 1, 1, 1}, {0, 0, 0, 0}, std::nullopt});
  expect_error(five.build(), "tensor 't5': 5 dimensions");
  Crafted huge(1, 0);
  huge.b.str("many").u32(0xFFFFFFFF);
  expect_error(huge.image(), "4294967295 dimensions");
  // Exactly 4 is fine.
  GgufWriter four;
  four.tensor("t4", gt::F32, {1, 2, 1, 2});
  EXPECT_EQ(parse(four.build())->tensors()[0].dims, (std::vector<int64_t>{1, 2, 1, 2}));
}

TEST(GgufMalformed, DimensionValues) {
  auto with_dims = [](std::vector<uint64_t> dims) {
    GgufWriter w;
    w.tensor(WTensor{"big", gt::F32, std::move(dims), std::vector<uint8_t>(64), std::nullopt});
    return w.build();
  };
  expect_error(with_dims({0}), "tensor 'big': dimension 0 = 0 is absurd");
  expect_error(with_dims({4, 0}), "dimension 1 = 0");
  expect_error(with_dims({1ull << 63}), "dimension 0 = 9223372036854775808 is absurd");
  expect_error(with_dims({~0ull}), "is absurd");
  // Each dimension is plausible alone but the product overflows.
  expect_error(with_dims({1ull << 32, 1ull << 32}), "dimension 1 = 4294967296 is absurd");
  expect_error(with_dims({1ull << 20, 1ull << 20, 1ull << 20}), "dimension 2");
  expect_error(with_dims({1ull << 16, 1ull << 16, 1ull << 16, 1ull << 16}), "absurd");
  // A sane element count whose data is simply not in the file.
  expect_error(with_dims({1ull << 20, 1ull << 10}), "outside");
}

TEST(GgufMalformed, RowNotAWholeNumberOfBlocks) {
  GgufWriter w;
  w.tensor(WTensor{"q", gt::Q4_1, {33, 2}, std::vector<uint8_t>(64), std::nullopt});
  expect_error(w.build(), "tensor 'q': row length 33 is not a multiple of Q4_1's block size 32");
}

TEST(GgufMalformed, MisalignedOffset) {
  GgufWriter w;
  w.tensor("a", gt::F32, {4});
  w.tensor(WTensor{"c", gt::F32, {1}, std::vector<uint8_t>(4), uint64_t{68}});
  expect_error(w.build(), "tensor 'c': data offset 68 is not aligned to 32");
  GgufWriter custom;
  custom.set_alignment(64);
  custom.tensor(WTensor{"d", gt::F32, {1}, std::vector<uint8_t>(4), uint64_t{32}});
  expect_error(custom.build(), "tensor 'd': data offset 32 is not aligned to 64");
  // With alignment 1 any offset is fine.
  GgufWriter loose;
  loose.set_alignment(1);
  loose.tensor(WTensor{"e", gt::F32, {1}, {1, 2, 3, 4}, uint64_t{3}});
  auto f = parse(loose.build());
  EXPECT_EQ(f->tensors()[0].offset, 3u);
  EXPECT_EQ(f->tensors()[0].data[0], 1);
}

TEST(GgufMalformed, DataPastEndOfFile) {
  GgufWriter far;
  far.tensor("a", gt::F32, {8});
  far.tensor(WTensor{"b", gt::F32, {8}, {}, uint64_t{1} << 40});
  expect_error(far.build(), "tensor 'b': 32 data bytes at offset 1099511627776 lie outside");
  // Offset inside the file, data running off its end.
  GgufWriter tail;
  tail.tensor(WTensor{"c", gt::F32, {64}, std::vector<uint8_t>(100), std::nullopt});
  expect_error(tail.build(), "tensor 'c': 256 data bytes at offset 0 lie outside the file's 100-byte data section");
  // offset + size would wrap around 2^64.
  GgufWriter wrap;
  wrap.tensor(WTensor{"d", gt::F32, {16}, {}, ~uint64_t{31}});
  expect_error(wrap.build(), "tensor 'd'");
  // A file that ends inside the padding before its data section.
  GgufWriter nodata;
  nodata.tensor(WTensor{"e", gt::F32, {1}, {}, std::nullopt});
  std::vector<uint8_t> image = nodata.build();
  ASSERT_EQ(image.size(), nodata.layout.data_start);
  image.pop_back();  // the 57-byte directory is padded to 64; drop one padding byte
  expect_error(image, "truncated file: tensor data section would start");
}

TEST(GgufMalformed, OverlappingTensorData) {
  GgufWriter w;
  w.tensor("a", gt::F32, {16});  // 64 bytes at 0
  w.tensor(WTensor{"b", gt::F32, {8}, std::vector<uint8_t>(32), uint64_t{32}});
  expect_error(w.build(), "tensor 'a' (data at offset 0, 64 bytes) overlaps tensor 'b' (data at offset 32)");
  GgufWriter same;
  same.tensor("x", gt::F32, {1});
  same.tensor(WTensor{"y", gt::F32, {1}, std::vector<uint8_t>(4), uint64_t{0}});
  expect_error(same.build(), "overlaps");
}

TEST(GgufMalformed, DuplicateKeysAndTensorNames) {
  GgufWriter keys;
  keys.kv("a.b", WValue::u8(1)).kv("a.c", WValue::u8(2)).kv("a.b", WValue::str("again"));
  expect_error(keys.build(), "duplicate metadata key 'a.b'");
  GgufWriter names;
  names.tensor("w", gt::F32, {4}).tensor("v", gt::F32, {4}).tensor("w", gt::F32, {4});
  expect_error(names.build(), "duplicate tensor name 'w'");
}

TEST(GgufMalformed, BadAlignmentValue) {
  const std::vector<std::pair<WValue, std::string>> cases = {
      {WValue::u32(0), "general.alignment 0 is not a power of two"},
      {WValue::u32(3), "general.alignment 3 is not a power of two"},
      {WValue::u32(48), "general.alignment 48"},
      {WValue::u32(1u << 21), "general.alignment 2097152"},
      {WValue::u64(1ull << 63), "general.alignment 9223372036854775808"},
      {WValue::u64(~0ull), "general.alignment 18446744073709551615"},
      {WValue::i32(-32), "general.alignment -32"},
      {WValue::i64(std::numeric_limits<int64_t>::min()), "general.alignment -9223372036854775808"},
      {WValue::str("32"), "general.alignment must be an integer, found string"},
      {WValue::f32(32.0f), "general.alignment must be an integer, found f32"},
      {WValue::boolean(true), "general.alignment must be an integer, found bool"},
      {WValue::array(vt::U32, {WValue::u32(32)}), "general.alignment must be an integer, found array"},
  };
  for (const auto& [value, needle] : cases) {
    GgufWriter w;
    w.kv("general.alignment", value);
    expect_error(w.build(), needle);
  }
}

TEST(GgufMalformed, NamesInErrorsAreEscapedAndCut) {
  GgufWriter control;
  control.kv(std::string("bad\nkey\x01", 8), WValue::raw(vt::BOOL, {7}));
  expect_error(control.build(), "metadata 'bad\\x0akey\\x01': bool value 7");
  const std::string long_key(5000, 'k');
  GgufWriter dup;
  dup.kv(long_key, WValue::u8(1)).kv(long_key, WValue::u8(2));
  std::string msg = expect_error(dup.build(), "duplicate metadata key '" + std::string(120, 'k') + "...(5000 bytes)'");
  EXPECT_LT(msg.size(), 300u);
  GgufWriter tensor_name;
  tensor_name.tensor(WTensor{std::string("w\0\x7f", 3), 1000, {32}, std::vector<uint8_t>(128), std::nullopt});
  expect_error(tensor_name.build(), "tensor 'w\\x00\\x7f': unknown tensor type 1000");
}

TEST(GgufMalformed, BoolNotZeroOrOne) {
  for (uint8_t b : {2, 255}) {
    GgufWriter w;
    w.kv("flag", WValue::raw(vt::BOOL, {b}));
    expect_error(w.build(), "metadata 'flag': bool value " + std::to_string(b) + " is neither 0 nor 1");
    GgufWriter a;
    a.kv("flags", WValue::raw(vt::ARRAY, Bytes().u32(vt::BOOL).u64(3).u8(0).u8(1).u8(b).buf));
    expect_error(a.build(), "metadata 'flags': bool value");
  }
}

TEST(GgufMalformed, DeepNesting) {
  auto nested = [](int depth) {
    WValue v = WValue::array(vt::U8, {WValue::u8(7)});
    for (int i = 1; i < depth; ++i) v = WValue::array(vt::ARRAY, {v});
    return v;
  };
  GgufWriter ok;
  ok.kv("deep", nested(8));
  auto f = parse(ok.build());
  const GgufValue* v = f->find("deep");
  for (int i = 1; i < 8; ++i) v = &v->as_array().items.at(0);
  EXPECT_EQ(v->as_array().items.at(0).as_int(), 7);

  GgufWriter too_deep;
  too_deep.kv("deeper", nested(9));
  expect_error(too_deep.build(), "metadata 'deeper': arrays nested deeper than 8");
  // Far deeper than any stack could recurse naively: still a clean error.
  Bytes chain;
  for (int i = 0; i < 100000; ++i) chain.u32(vt::ARRAY).u64(1);
  GgufWriter bomb;
  bomb.kv("bomb", WValue::raw(vt::ARRAY, chain.buf));
  expect_error(bomb.build(), "nested deeper than 8");
}

// ---------------------------------------------------------------------------
// Cross-checks against the PyPI `gguf` package.

// Dumps what GGUFReader sees: metadata leaves (nested arrays flattened, as the
// reader does), the tensor directory with a CRC-32 of each tensor's bytes, and
// ggml's type size table. Strings go out as hex, floats as their f64 bits.
constexpr const char* kPythonDump = R"PY(
import json, struct, sys, zlib
try:
    from gguf import GGUFReader, GGML_QUANT_SIZES, GGUFValueType
except ImportError as e:
    print(f"cannot import the PyPI gguf package: {e}", file=sys.stderr)
    sys.exit(3)

reader = GGUFReader(sys.argv[1])
FLOATS = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}

def leaf(kind, part):
    if kind == GGUFValueType.STRING:
        return bytes(part).hex()
    x = part.tolist()[0]
    if kind in FLOATS:
        return struct.unpack("<Q", struct.pack("<d", float(x)))[0]
    if kind == GGUFValueType.BOOL:
        return bool(x)
    return int(x)

metadata = []
for name, field in list(reader.fields.items())[3:]:  # skip the GGUF.* header pseudo-fields
    kind = field.types[-1]
    metadata.append({"key": bytes(field.parts[1]).hex(), "types": [int(t) for t in field.types],
                     "leaves": [leaf(kind, field.parts[i]) for i in field.data]})

tensors = []
for t in reader.tensors:
    end = t.data_offset + t.n_bytes
    tensors.append({"name": bytes(t.field.parts[1]).hex(), "type": int(t.tensor_type),
                    "dims": [int(d) for d in t.shape], "offset": int(t.field.parts[5][0]),
                    "data_offset": int(t.data_offset), "n_bytes": int(t.n_bytes),
                    "crc32": zlib.crc32(reader.data[t.data_offset:end])})

json.dump({"version": int(reader.fields["GGUF.version"].parts[0][0]), "alignment": int(reader.alignment),
           "data_offset": int(reader.data_offset), "metadata": metadata, "tensors": tensors,
           "quant_sizes": {str(int(k)): [int(v[0]), int(v[1])] for k, v in GGML_QUANT_SIZES.items()}},
          open(sys.argv[2], "w"))
)PY";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

uint32_t crc32(const uint8_t* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// Runs the dump script on `gguf_path`; fails the test (returning null) if python or gguf is missing.
std::optional<nlohmann::json> python_dump(const fs::path& gguf_path) {
  const std::string python = paths::python().string();
  if (!fs::exists(python)) {
    ADD_FAILURE() << "python not found at " << python
                  << " (needed to cross-check against the PyPI gguf package; run scripts/setup or set SKIM_PYTHON)";
    return std::nullopt;
  }
  fs::path script = temp_path("dump_gguf.py"), out = temp_path("dump.json"), err = temp_path("dump.err");
  std::ofstream(script) << kPythonDump;
  std::string cmd = "'" + python + "' '" + script.string() + "' '" + gguf_path.string() + "' '" + out.string() +
                    "' 2> '" + err.string() + "'";
  int rc = std::system(cmd.c_str());
  std::string json_text = read_text(out), err_text = read_text(err);
  fs::remove(script), fs::remove(out), fs::remove(err);
  if (rc != 0) {
    std::string status = WIFEXITED(rc) ? "exit " + std::to_string(WEXITSTATUS(rc)) : "killed";
    ADD_FAILURE() << "python gguf dump failed (" << status << "): " << cmd << "\n" << err_text;
    return std::nullopt;
  }
  return nlohmann::json::parse(json_text);
}

void flatten_leaves(const GgufValue& v, std::vector<const GgufValue*>& out) {
  if (v.type != GgufValueType::ARRAY) {
    out.push_back(&v);
    return;
  }
  for (const GgufValue& item : v.as_array().items) flatten_leaves(item, out);
}

// The value type chain the python reader records: top type, then element types via first items.
std::vector<uint32_t> type_chain(const GgufValue& v) {
  std::vector<uint32_t> chain{static_cast<uint32_t>(v.type)};
  const GgufValue* cur = &v;
  while (cur->type == GgufValueType::ARRAY && !cur->as_array().items.empty()) {
    cur = &cur->as_array().items[0];
    chain.push_back(static_cast<uint32_t>(cur->type));
  }
  return chain;
}

void expect_leaf_equal(const GgufValue& ours, const nlohmann::json& theirs, const std::string& where) {
  switch (ours.type) {
    case GgufValueType::STRING: EXPECT_EQ(hex(ours.as_string()), theirs.get<std::string>()) << where; break;
    case GgufValueType::BOOL: EXPECT_EQ(ours.as_bool(), theirs.get<bool>()) << where; break;
    case GgufValueType::F32:
    case GgufValueType::F64:
      EXPECT_EQ(std::bit_cast<uint64_t>(ours.as_float()), theirs.get<uint64_t>()) << where;
      break;
    default:
      if (auto* u = std::get_if<uint64_t>(&ours.v)) EXPECT_EQ(*u, theirs.get<uint64_t>()) << where;
      else EXPECT_EQ(std::get<int64_t>(ours.v), theirs.get<int64_t>()) << where;
  }
}

// Everything skim parsed from `path` must agree with GGUFReader.
void cross_check_with_python(const fs::path& path) {
  auto dump = python_dump(path);
  if (!dump) return;
  const nlohmann::json& py = *dump;
  // Parsed from memory so absolute tensor offsets can be measured from the image start.
  std::string image = read_text(path);
  auto f = GgufFile::from_memory(reinterpret_cast<const uint8_t*>(image.data()), image.size(), path.string());
  const uint8_t* base = reinterpret_cast<const uint8_t*>(image.data());

  EXPECT_EQ(f->version(), py["version"].get<uint32_t>());
  EXPECT_EQ(f->alignment(), py["alignment"].get<uint64_t>());

  ASSERT_EQ(f->metadata().size(), py["metadata"].size());
  for (const auto& entry : py["metadata"]) {
    std::string key_hex = entry["key"];
    const GgufValue* ours = nullptr;
    std::string key;
    for (const auto& [k, v] : f->metadata())
      if (hex(k) == key_hex) ours = &v, key = k;
    ASSERT_NE(ours, nullptr) << "skim lacks metadata key (hex) " << key_hex;
    std::vector<uint32_t> py_types = entry["types"].get<std::vector<uint32_t>>();
    EXPECT_EQ(type_chain(*ours), py_types) << key;
    std::vector<const GgufValue*> leaves;
    if (ours->type == GgufValueType::ARRAY) flatten_leaves(*ours, leaves);
    else leaves.push_back(ours);
    ASSERT_EQ(leaves.size(), entry["leaves"].size()) << key;
    for (size_t i = 0; i < leaves.size(); ++i)
      expect_leaf_equal(*leaves[i], entry["leaves"][i], key + "[" + std::to_string(i) + "]");
  }

  ASSERT_EQ(f->tensors().size(), py["tensors"].size());
  for (size_t i = 0; i < f->tensors().size(); ++i) {
    const TensorInfo& t = f->tensors()[i];
    const auto& pt = py["tensors"][i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(hex(t.name), pt["name"].get<std::string>());
    EXPECT_EQ(static_cast<uint32_t>(t.type), pt["type"].get<uint32_t>());
    EXPECT_EQ(t.dims, pt["dims"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.offset, pt["offset"].get<uint64_t>());
    EXPECT_EQ(static_cast<uint64_t>(t.data - base), pt["data_offset"].get<uint64_t>());
    EXPECT_EQ(t.nbytes, pt["n_bytes"].get<uint64_t>());
    EXPECT_EQ(crc32(t.data, t.nbytes), pt["crc32"].get<uint32_t>());
  }

  // skim's type table against ggml's, as the gguf package records it. Exception:
  // gguf-py still lists Q8_1 with the old f32 scales (40 bytes); ggml's
  // block_q8_1 has f16 d and s (static_assert: 2*sizeof(ggml_half) + 32 = 36).
  for (uint32_t id = 0; id < 64; ++id) {
    auto ours = type_traits(id);
    if (!ours || id == test::ggml_type::Q8_1) continue;
    const auto& sizes = py["quant_sizes"][std::to_string(id)];
    ASSERT_FALSE(sizes.is_null()) << "gguf package does not know type " << ours->name;
    EXPECT_EQ(ours->block_size, sizes[0].get<int64_t>()) << ours->name;
    EXPECT_EQ(ours->type_size, sizes[1].get<int64_t>()) << ours->name;
  }
}

TEST(GgufPython, WriterImagesMatchGGUFReader) {
  // Everything the writer can express, read by both readers (no Q8_1: see cross_check_with_python).
  GgufWriter w = several_tensor_types(/*with_q8_1=*/false);
  w.set_alignment(64);
  w.kv("x.u8", WValue::u8(200))
      .kv("x.i8", WValue::i8(-100))
      .kv("x.u16", WValue::u16(60000))
      .kv("x.i16", WValue::i16(-30000))
      .kv("x.u32", WValue::u32(4000000000u))
      .kv("x.i32", WValue::i32(-2000000000))
      .kv("x.u64", WValue::u64(~0ull))
      .kv("x.i64", WValue::i64(std::numeric_limits<int64_t>::min()))
      .kv("x.f32", WValue::f32(-0.1f))
      .kv("x.f64", WValue::f64(1.0 / 3))
      .kv("x.bool", WValue::boolean(true))
      .kv("x.str", WValue::str("h\xC3\xA9llo"))
      .kv("x.strs", WValue::array(vt::STRING, {WValue::str("a"), WValue::str(""), WValue::str("bc")}))
      .kv("x.f32s", WValue::array(vt::F32, {WValue::f32(1.5f), WValue::f32(-2.0f)}))
      .kv("x.empty", WValue::array(vt::I32, {}))
      .kv("x.nested", WValue::array(vt::ARRAY, {WValue::array(vt::I16, {WValue::i16(1), WValue::i16(-1)}),
                                               WValue::array(vt::I16, {}), WValue::array(vt::I16, {WValue::i16(5)})}));
  for (uint32_t version : {2u, 3u}) {
    w.version = version;
    fs::path path = temp_path("writer_v" + std::to_string(version) + ".gguf");
    test::write_file(path, w.build());
    SCOPED_TRACE(path.string());
    cross_check_with_python(path);
    fs::remove(path);
  }
}

TEST(GgufRealModel, SmolLM2Directory) {
  auto f = GgufFile::open(test::require_model("smollm2-135m"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  ASSERT_EQ(f->tensors().size(), 272u);
  std::map<std::string, int> histogram;
  for (const TensorInfo& t : f->tensors()) ++histogram[type_name(static_cast<uint32_t>(t.type))];
  EXPECT_EQ(histogram, (std::map<std::string, int>{{"Q4_1", 210}, {"F32", 61}, {"Q8_0", 1}}));
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  const TensorInfo& embd = f->require("token_embd.weight", {576, 49152});
  EXPECT_EQ(embd.type, GgmlType::Q8_0);
}

TEST(GgufRealModel, SmolLM2MatchesGGUFReader) {
  cross_check_with_python(test::require_model("smollm2-135m"));
}

}  // namespace
}  // namespace skim
