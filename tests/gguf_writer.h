// Test helper: builds GGUF images in memory, including deliberately malformed
// ones. It encodes the format from the GGUF spec on its own (it does not use
// skim's reader tables), so tests compare two independent readings of the format.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace skim::test {

// GGUF metadata value type ids (spec numbering).
namespace gguf_type {
constexpr uint32_t U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
                   U64 = 10, I64 = 11, F64 = 12;
}

// ggml tensor type ids (spec numbering) used by the tests.
namespace ggml_type {
constexpr uint32_t F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10,
                   Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30;
}

// Block geometry of a ggml type (elements per block, bytes per block), from ggml's type table.
inline std::pair<uint64_t, uint64_t> ggml_block(uint32_t type) {
  switch (type) {
    case ggml_type::F32: return {1, 4};
    case ggml_type::F16: return {1, 2};
    case ggml_type::BF16: return {1, 2};
    case ggml_type::Q4_0: return {32, 2 + 16};
    case ggml_type::Q4_1: return {32, 2 + 2 + 16};
    case ggml_type::Q5_0: return {32, 2 + 4 + 16};
    case ggml_type::Q5_1: return {32, 2 + 2 + 4 + 16};
    case ggml_type::Q8_0: return {32, 2 + 32};
    case ggml_type::Q8_1: return {32, 4 + 32};
    case ggml_type::Q2_K: return {256, 16 + 64 + 2 + 2};
    case ggml_type::Q3_K: return {256, 32 + 64 + 12 + 2};
    case ggml_type::Q4_K: return {256, 2 + 2 + 12 + 128};
    case ggml_type::Q5_K: return {256, 2 + 2 + 12 + 32 + 128};
    case ggml_type::Q6_K: return {256, 128 + 64 + 16 + 2};
    case ggml_type::Q8_K: return {256, 4 + 256 + 32};
  }
  throw std::invalid_argument("gguf_writer: no block geometry for ggml type " + std::to_string(type));
}

// Bytes of a tensor of `type` with `dims` (ggml order).
inline uint64_t ggml_nbytes(uint32_t type, const std::vector<uint64_t>& dims) {
  auto [block, size] = ggml_block(type);
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n / block * size;
}

// Deterministic, non-repeating-looking filler so misplaced tensor data is detectable.
inline std::vector<uint8_t> pattern_bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> out(n);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    out[i] = static_cast<uint8_t>(x);
  }
  return out;
}

// Little-endian byte appender for hand-crafted images.
struct Bytes {
  std::vector<uint8_t> buf;

  template <typename T>
  Bytes& put(T v) {
    uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));  // the build host is little-endian like GGUF
    buf.insert(buf.end(), tmp, tmp + sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& raw(const void* p, size_t n) {
    auto* b = static_cast<const uint8_t*>(p);
    buf.insert(buf.end(), b, b + n);
    return *this;
  }
  Bytes& raw(const std::vector<uint8_t>& v) { return raw(v.data(), v.size()); }
  // GGUF string: u64 length then the bytes (no terminator).
  Bytes& str(std::string_view s) { return u64(s.size()).raw(s.data(), s.size()); }
  Bytes& pad_to(uint64_t alignment) {
    while (buf.size() % alignment) buf.push_back(0);
    return *this;
  }
};

// An encoded metadata value: its type id and the bytes that follow the type id.
struct WValue {
  uint32_t type = gguf_type::U8;
  std::vector<uint8_t> payload;

  template <typename T>
  static WValue scalar(uint32_t type, T v) {
    WValue w{type, {}};
    Bytes b;
    b.put(v);
    w.payload = std::move(b.buf);
    return w;
  }
  static WValue u8(uint8_t v) { return scalar(gguf_type::U8, v); }
  static WValue i8(int8_t v) { return scalar(gguf_type::I8, v); }
  static WValue u16(uint16_t v) { return scalar(gguf_type::U16, v); }
  static WValue i16(int16_t v) { return scalar(gguf_type::I16, v); }
  static WValue u32(uint32_t v) { return scalar(gguf_type::U32, v); }
  static WValue i32(int32_t v) { return scalar(gguf_type::I32, v); }
  static WValue u64(uint64_t v) { return scalar(gguf_type::U64, v); }
  static WValue i64(int64_t v) { return scalar(gguf_type::I64, v); }
  static WValue f32(float v) { return scalar(gguf_type::F32, v); }
  static WValue f64(double v) { return scalar(gguf_type::F64, v); }
  static WValue boolean(bool v) { return scalar(gguf_type::BOOL, static_cast<uint8_t>(v)); }
  static WValue str(std::string_view s) {
    Bytes b;
    b.str(s);
    return {gguf_type::STRING, std::move(b.buf)};
  }
  // Array of `elem_type`; every item must have that type (nested arrays: elem_type ARRAY).
  static WValue array(uint32_t elem_type, const std::vector<WValue>& items) {
    Bytes b;
    b.u32(elem_type).u64(items.size());
    for (const WValue& item : items) {
      if (item.type != elem_type) throw std::invalid_argument("gguf_writer: array item type differs from element type");
      b.raw(item.payload);
    }
    return {gguf_type::ARRAY, std::move(b.buf)};
  }
  // Anything at all, for malformed images.
  static WValue raw(uint32_t type, std::vector<uint8_t> payload) { return {type, std::move(payload)}; }
};

struct WTensor {
  std::string name;
  uint32_t type = ggml_type::F32;
  std::vector<uint64_t> dims;
  std::vector<uint8_t> data;
  std::optional<uint64_t> offset;  // relative to the data section; default: next aligned slot
};

// Where the writer put things in the last image it built.
struct GgufLayout {
  uint64_t data_start = 0;            // absolute offset of the data section
  std::vector<uint64_t> offsets;      // per tensor, relative to data_start
  uint64_t end_of_tensor_data = 0;    // absolute end of the last tensor's bytes
};

class GgufWriter {
 public:
  uint32_t magic = 0x46554747;  // "GGUF"
  uint32_t version = 3;
  uint64_t alignment = 32;      // used for layout; add the general.alignment key yourself (or use set_alignment)
  std::optional<uint64_t> tensor_count_override, kv_count_override;
  bool pad_after_last_tensor = false;  // off: every strict prefix of the image is then truncated
  GgufLayout layout;

  GgufWriter& kv(std::string key, WValue value) {
    kvs_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  GgufWriter& set_alignment(uint32_t a) {
    alignment = a;
    return kv("general.alignment", WValue::u32(a));
  }
  // Adds a tensor filled with pattern bytes of the right size.
  GgufWriter& tensor(std::string name, uint32_t type, std::vector<uint64_t> dims) {
    std::vector<uint8_t> data = pattern_bytes(ggml_nbytes(type, dims), static_cast<uint32_t>(tensors_.size() + 7));
    return tensor(WTensor{std::move(name), type, std::move(dims), std::move(data), std::nullopt});
  }
  GgufWriter& tensor(WTensor t) {
    tensors_.push_back(std::move(t));
    return *this;
  }
  const std::vector<WTensor>& tensors() const { return tensors_; }

  std::vector<uint8_t> build() {
    Bytes b;
    b.u32(magic).u32(version);
    b.u64(tensor_count_override.value_or(tensors_.size()));
    b.u64(kv_count_override.value_or(kvs_.size()));
    for (const auto& [key, value] : kvs_) b.str(key).u32(value.type).raw(value.payload);

    layout = GgufLayout{};
    uint64_t next = 0;
    for (const WTensor& t : tensors_) {
      uint64_t off = t.offset.value_or(next);
      layout.offsets.push_back(off);
      next = round_up(std::max(next, off + t.data.size()), alignment);
      b.str(t.name).u32(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) b.u64(d);
      b.u32(t.type).u64(off);
    }
    if (tensors_.empty()) return std::move(b.buf);
    b.pad_to(alignment);
    layout.data_start = b.buf.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      uint64_t at = layout.data_start + layout.offsets[i];
      const std::vector<uint8_t>& data = tensors_[i].data;
      if (data.empty()) continue;  // tensors pointing outside the image carry no bytes
      if (b.buf.size() < at + data.size()) b.buf.resize(at + data.size(), 0);
      std::memcpy(b.buf.data() + at, data.data(), data.size());
      layout.end_of_tensor_data = std::max(layout.end_of_tensor_data, at + data.size());
    }
    if (pad_after_last_tensor) b.pad_to(alignment);
    return std::move(b.buf);
  }

 private:
  static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
  std::vector<std::pair<std::string, WValue>> kvs_;
  std::vector<WTensor> tensors_;
};

inline void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("gguf_writer: cannot write " + path);
}

}  // namespace skim::test
