// GGUF file reader: memory-maps a model file, parses its metadata and tensor
// directory, and exposes tensor data in place (weights are never copied).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace skim {

// Any problem with a GGUF file: malformed, truncated, unsupported.
class GgufError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ggml tensor types by their on-disk id.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  BF16 = 30,
};

struct TypeTraits {
  const char* name;
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
};

// Traits of a type id; nullopt for ids skim does not know.
std::optional<TypeTraits> type_traits(uint32_t type_id);
// Traits of a known type (throws GgufError for an unknown one).
const TypeTraits& traits(GgmlType type);
const char* type_name(uint32_t type_id);
// Bytes of a row of n elements (n must be a multiple of the block size).
size_t row_bytes(GgmlType type, int64_t n);

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};

struct GgufArray;
// A metadata value. Integers of every width are widened (signed to int64,
// unsigned to uint64); the original type is kept in `type`.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<GgufArray>> v;

  bool is_integer() const;
  int64_t as_int() const;      // throws unless an integer that fits int64
  double as_float() const;     // integer or float
  bool as_bool() const;
  const std::string& as_string() const;
  const GgufArray& as_array() const;
  std::string to_display(size_t max_items = 8) const;
};

struct GgufArray {
  GgufValueType elem_type = GgufValueType::U8;
  std::vector<GgufValue> items;  // nested arrays allowed
};

struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (row) length
  uint64_t offset = 0;        // relative to the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t nelements() const;
  int64_t row_length() const { return dims.empty() ? 1 : dims[0]; }
  int64_t rows() const { return row_length() ? nelements() / row_length() : 0; }
  size_t row_size() const { return row_bytes(type, row_length()); }
  const uint8_t* row(int64_t r) const { return data + r * row_size(); }
};

class GgufFile {
 public:
  // Opens and validates `path`; throws GgufError naming the problem.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Parses an in-memory image (not owned; must outlive the object). For tests and fuzzing.
  static std::unique_ptr<GgufFile> from_memory(const uint8_t* data, size_t size, std::string name = "<memory>");
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  size_t file_size() const { return size_; }
  const uint8_t* file_bytes() const { return base_; }  // the whole file, mapped
  uint64_t alignment() const { return alignment_; }

  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Typed getters: throw GgufError if the key is missing or has the wrong type.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  // Getters with a default for optional keys.
  std::string get_string(std::string_view key, const std::string& fallback) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* tensor(std::string_view name) const;
  // Tensor by name with an expected shape (ggml order); throws if missing or mismatched.
  const TensorInfo& require(std::string_view name, std::initializer_list<int64_t> dims) const;

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace skim
