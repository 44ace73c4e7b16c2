#include "skim/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>

namespace skim {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
// Limits that no real file reaches; they stop absurd counts from turning into
// giant allocations before the truncation check can fire.
constexpr uint64_t kMaxStringBytes = 1ull << 30;
constexpr int kMaxArrayDepth = 8;
constexpr int kMaxDims = 4;

const TypeTraits* find_traits(uint32_t id) {
  static const TypeTraits kF32{"F32", 1, 4}, kF16{"F16", 1, 2}, kQ4_0{"Q4_0", 32, 18},
      kQ4_1{"Q4_1", 32, 20}, kQ5_0{"Q5_0", 32, 22}, kQ5_1{"Q5_1", 32, 24}, kQ8_0{"Q8_0", 32, 34},
      kQ8_1{"Q8_1", 32, 36}, kQ2_K{"Q2_K", 256, 84}, kQ3_K{"Q3_K", 256, 110},
      kQ4_K{"Q4_K", 256, 144}, kQ5_K{"Q5_K", 256, 176}, kQ6_K{"Q6_K", 256, 210},
      kQ8_K{"Q8_K", 256, 292}, kBF16{"BF16", 1, 2};
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::F32: return &kF32;
    case GgmlType::F16: return &kF16;
    case GgmlType::Q4_0: return &kQ4_0;
    case GgmlType::Q4_1: return &kQ4_1;
    case GgmlType::Q5_0: return &kQ5_0;
    case GgmlType::Q5_1: return &kQ5_1;
    case GgmlType::Q8_0: return &kQ8_0;
    case GgmlType::Q8_1: return &kQ8_1;
    case GgmlType::Q2_K: return &kQ2_K;
    case GgmlType::Q3_K: return &kQ3_K;
    case GgmlType::Q4_K: return &kQ4_K;
    case GgmlType::Q5_K: return &kQ5_K;
    case GgmlType::Q6_K: return &kQ6_K;
    case GgmlType::Q8_K: return &kQ8_K;
    case GgmlType::BF16: return &kBF16;
  }
  return nullptr;
}

const char* value_type_name(GgufValueType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                "string", "array", "u64", "i64", "f64"};
  auto i = static_cast<uint32_t>(t);
  return i < std::size(names) ? names[i] : "unknown";
}

// A key or tensor name as it appears in error messages: control bytes escaped and
// long names cut, since a corrupt file can hold any bytes, up to a gigabyte of them.
std::string printable(std::string_view name) {
  constexpr size_t kMaxShown = 120;
  std::string out;
  for (unsigned char c : name.substr(0, kMaxShown)) {
    if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  if (name.size() > kMaxShown) out += fmt::format("...({} bytes)", name.size());
  return out;
}

// Bounds-checked little-endian cursor over the file image.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* what) {
    uint64_t len = read<uint64_t>(what);
    if (len > kMaxStringBytes) throw GgufError(fmt::format("{}: string length {} is absurd (at byte {})", what, len, pos_ - 8));
    need(len, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }

  // Fails unless `n` more bytes exist.
  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_)
      throw GgufError(fmt::format("truncated file: {} needs {} bytes at offset {}, only {} left", what, n, pos_, size_ - pos_));
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

GgufValue read_value(Cursor& c, GgufValueType type, int depth, const std::string& key);

// Fewest bytes one encoded value of `type` can take; bounds array lengths by the bytes left.
uint64_t min_value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    case GgufValueType::STRING: return 8;   // length prefix
    case GgufValueType::ARRAY: return 12;   // element type + length
  }
  return 1;
}

GgufValue read_array(Cursor& c, int depth, const std::string& key) {
  if (depth >= kMaxArrayDepth)
    throw GgufError(fmt::format("metadata '{}': arrays nested deeper than {}", printable(key), kMaxArrayDepth));
  auto elem_type = static_cast<GgufValueType>(c.read<uint32_t>("array element type"));
  if (static_cast<uint32_t>(elem_type) > static_cast<uint32_t>(GgufValueType::F64))
    throw GgufError(fmt::format("metadata '{}': unknown array element type {}", printable(key),
                                static_cast<uint32_t>(elem_type)));
  uint64_t count = c.read<uint64_t>("array length");
  // Checked before allocating: a corrupt length must not become a giant reservation.
  uint64_t elem_min = min_value_bytes(elem_type);
  if (count > c.remaining() / elem_min)
    throw GgufError(fmt::format("metadata '{}': array of {} {} values cannot fit in the {} bytes left "
                                "(truncated or corrupt file)",
                                printable(key), count, value_type_name(elem_type), c.remaining()));
  auto arr = std::make_shared<GgufArray>();
  arr->elem_type = elem_type;
  arr->items.reserve(count);
  for (uint64_t i = 0; i < count; ++i) arr->items.push_back(read_value(c, elem_type, depth + 1, key));
  GgufValue v;
  v.type = GgufValueType::ARRAY;
  v.v = std::move(arr);
  return v;
}

GgufValue read_value(Cursor& c, GgufValueType type, int depth, const std::string& key) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::U8: v.v = uint64_t{c.read<uint8_t>("u8 value")}; break;
    case GgufValueType::I8: v.v = int64_t{c.read<int8_t>("i8 value")}; break;
    case GgufValueType::U16: v.v = uint64_t{c.read<uint16_t>("u16 value")}; break;
    case GgufValueType::I16: v.v = int64_t{c.read<int16_t>("i16 value")}; break;
    case GgufValueType::U32: v.v = uint64_t{c.read<uint32_t>("u32 value")}; break;
    case GgufValueType::I32: v.v = int64_t{c.read<int32_t>("i32 value")}; break;
    case GgufValueType::U64: v.v = c.read<uint64_t>("u64 value"); break;
    case GgufValueType::I64: v.v = c.read<int64_t>("i64 value"); break;
    case GgufValueType::F32: v.v = double{c.read<float>("f32 value")}; break;
    case GgufValueType::F64: v.v = c.read<double>("f64 value"); break;
    case GgufValueType::BOOL: {
      uint8_t b = c.read<uint8_t>("bool value");
      if (b > 1) throw GgufError(fmt::format("metadata '{}': bool value {} is neither 0 nor 1", printable(key), b));
      v.v = b == 1;
      break;
    }
    case GgufValueType::STRING: v.v = c.read_string("string value"); break;
    case GgufValueType::ARRAY: return read_array(c, depth, key);
    default:
      throw GgufError(fmt::format("metadata '{}': unknown value type {}", printable(key), static_cast<uint32_t>(type)));
  }
  return v;
}

}  // namespace

std::optional<TypeTraits> type_traits(uint32_t type_id) {
  if (const TypeTraits* t = find_traits(type_id)) return *t;
  return std::nullopt;
}

const TypeTraits& traits(GgmlType type) {
  if (const TypeTraits* t = find_traits(static_cast<uint32_t>(type))) return *t;
  throw GgufError(fmt::format("unknown tensor type {}", static_cast<uint32_t>(type)));
}

const char* type_name(uint32_t type_id) {
  const TypeTraits* t = find_traits(type_id);
  return t ? t->name : "unknown";
}

size_t row_bytes(GgmlType type, int64_t n) {
  const TypeTraits& t = traits(type);
  if (n % t.block_size != 0)
    throw GgufError(fmt::format("row of {} elements is not a multiple of {}'s block size {}", n, t.name, t.block_size));
  return static_cast<size_t>(n / t.block_size * t.type_size);
}

// ---- GgufValue ----

bool GgufValue::is_integer() const {
  return std::holds_alternative<uint64_t>(v) || std::holds_alternative<int64_t>(v);
}

int64_t GgufValue::as_int() const {
  if (auto* u = std::get_if<uint64_t>(&v)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) throw GgufError("integer value does not fit in int64");
    return static_cast<int64_t>(*u);
  }
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  throw GgufError(fmt::format("expected an integer, found {}", value_type_name(type)));
}

double GgufValue::as_float() const {
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* u = std::get_if<uint64_t>(&v)) return static_cast<double>(*u);
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  throw GgufError(fmt::format("expected a number, found {}", value_type_name(type)));
}

bool GgufValue::as_bool() const {
  if (auto* b = std::get_if<bool>(&v)) return *b;
  throw GgufError(fmt::format("expected a bool, found {}", value_type_name(type)));
}

const std::string& GgufValue::as_string() const {
  if (auto* s = std::get_if<std::string>(&v)) return *s;
  throw GgufError(fmt::format("expected a string, found {}", value_type_name(type)));
}

const GgufArray& GgufValue::as_array() const {
  if (auto* a = std::get_if<std::shared_ptr<GgufArray>>(&v)) return **a;
  throw GgufError(fmt::format("expected an array, found {}", value_type_name(type)));
}

std::string GgufValue::to_display(size_t max_items) const {
  switch (type) {
    case GgufValueType::STRING: {
      const std::string& s = as_string();
      return s.size() > 80 ? fmt::format("\"{}...\" ({} bytes)", s.substr(0, 77), s.size()) : "\"" + s + "\"";
    }
    case GgufValueType::ARRAY: {
      const GgufArray& a = as_array();
      std::string out = fmt::format("[{} x {}]", a.items.size(), value_type_name(a.elem_type));
      if (a.items.size() <= max_items) {
        out += " {";
        for (size_t i = 0; i < a.items.size(); ++i) out += (i ? ", " : "") + a.items[i].to_display(max_items);
        out += "}";
      }
      return out;
    }
    case GgufValueType::BOOL: return as_bool() ? "true" : "false";
    case GgufValueType::F32:
    case GgufValueType::F64: return fmt::format("{}", as_float());
    default:
      if (auto* u = std::get_if<uint64_t>(&v)) return fmt::format("{}", *u);
      return fmt::format("{}", std::get<int64_t>(v));
  }
}

// ---- TensorInfo ----

int64_t TensorInfo::nelements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// ---- GgufFile ----

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw GgufError(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw GgufError(fmt::format("'{}' is not a regular file", path));
  }
  if (st.st_size == 0) {
    ::close(fd);
    throw GgufError(fmt::format("'{}' is empty, not a GGUF file", path));
  }
  void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw GgufError(fmt::format("cannot mmap '{}': {}", path, std::strerror(errno)));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->base_ = static_cast<const uint8_t*>(p);
  f->size_ = static_cast<size_t>(st.st_size);
  f->mapped_ = true;
  try {
    f->parse();
  } catch (const GgufError& e) {
    throw GgufError(fmt::format("{}: {}", path, e.what()));
  }
  return f;
}

std::unique_ptr<GgufFile> GgufFile::from_memory(const uint8_t* data, size_t size, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = std::move(name);
  f->base_ = data;
  f->size_ = size;
  f->parse();
  return f;
}

GgufFile::~GgufFile() {
  if (mapped_) munmap(const_cast<uint8_t*>(base_), size_);
}

void GgufFile::parse() {
  Cursor c(base_, size_);
  uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) throw GgufError("not a GGUF file (bad magic)");
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    // A big-endian file stores its small version number in the high bytes.
    if ((version_ & 0xFFFF) == 0 && version_ != 0)
      throw GgufError(fmt::format(
          "unsupported GGUF version {} (looks like a big-endian file; skim reads little-endian versions 2 and 3)",
          version_));
    throw GgufError(fmt::format("unsupported GGUF version {} (skim reads versions 2 and 3)", version_));
  }
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  // A metadata entry needs >= 13 bytes and a tensor entry >= 28: bound counts by the file size.
  if (n_kv > size_ / 13)
    throw GgufError(
        fmt::format("metadata count {} is absurd for a {}-byte file (truncated or corrupt file)", n_kv, size_));
  if (n_tensors > size_ / 28)
    throw GgufError(
        fmt::format("tensor count {} is absurd for a {}-byte file (truncated or corrupt file)", n_tensors, size_));

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("metadata key");
    auto type = static_cast<GgufValueType>(c.read<uint32_t>("metadata value type"));
    GgufValue value = read_value(c, type, 0, key);
    if (!kv_.emplace(key, std::move(value)).second)
      throw GgufError(fmt::format("duplicate metadata key '{}'", printable(key)));
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_integer())
      throw GgufError(fmt::format("general.alignment must be an integer, found {}", value_type_name(a->type)));
    const auto* u = std::get_if<uint64_t>(&a->v);
    const auto* i = std::get_if<int64_t>(&a->v);
    bool positive = u ? *u > 0 : *i > 0;
    uint64_t al = u ? *u : static_cast<uint64_t>(*i);
    if (!positive || (al & (al - 1)) != 0 || al > (1u << 20))
      throw GgufError(fmt::format("general.alignment {} is not a power of two between 1 and {}",
                                  a->to_display(), 1u << 20));
    alignment_ = al;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.read_string("tensor name");
    uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      throw GgufError(fmt::format("tensor '{}': {} dimensions (1 to {} allowed)", printable(t.name), n_dims, kMaxDims));
    int64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = c.read<uint64_t>("tensor dimension");
      if (ne == 0 || ne > (1ull << 40) || static_cast<uint64_t>(nel) > (1ull << 50) / ne)
        throw GgufError(fmt::format("tensor '{}': dimension {} = {} is absurd", printable(t.name), d, ne));
      nel *= static_cast<int64_t>(ne);
      t.dims.push_back(static_cast<int64_t>(ne));
    }
    uint32_t type_id = c.read<uint32_t>("tensor type");
    const TypeTraits* tt = find_traits(type_id);
    if (!tt) throw GgufError(fmt::format("tensor '{}': unknown tensor type {}", printable(t.name), type_id));
    t.type = static_cast<GgmlType>(type_id);
    if (t.dims[0] % tt->block_size != 0)
      throw GgufError(fmt::format("tensor '{}': row length {} is not a multiple of {}'s block size {}",
                                  printable(t.name), t.dims[0], tt->name, tt->block_size));
    t.nbytes = static_cast<size_t>(nel / tt->block_size * tt->type_size);
    t.offset = c.read<uint64_t>("tensor data offset");
    if (t.offset % alignment_ != 0)
      throw GgufError(
          fmt::format("tensor '{}': data offset {} is not aligned to {}", printable(t.name), t.offset, alignment_));
    if (!tensor_index_.emplace(t.name, tensors_.size()).second)
      throw GgufError(fmt::format("duplicate tensor name '{}'", printable(t.name)));
    tensors_.push_back(std::move(t));
  }

  if (tensors_.empty()) return;  // e.g. vocab-only files, which may end without padding
  uint64_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > size_)
    throw GgufError(fmt::format("truncated file: tensor data section would start at offset {}, past the end ({} bytes)",
                                data_start, size_));
  uint64_t data_size = size_ - data_start;
  for (TensorInfo& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      throw GgufError(fmt::format(
          "tensor '{}': {} data bytes at offset {} lie outside the file's {}-byte data section (truncated file?)",
          printable(t.name), t.nbytes, t.offset, data_size));
    t.data = base_ + data_start + t.offset;
  }
  // Overlapping tensors mean a corrupt directory (writers lay tensors out back to back).
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const TensorInfo& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& next = *by_offset[i];
    if (prev.offset + prev.nbytes > next.offset)
      throw GgufError(fmt::format("tensor '{}' (data at offset {}, {} bytes) overlaps tensor '{}' (data at offset {})",
                                  printable(prev.name), prev.offset, prev.nbytes, printable(next.name), next.offset));
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {
template <typename F>
auto typed_get(const GgufFile& f, std::string_view key, F&& get) {
  const GgufValue* v = f.find(key);
  if (!v) throw GgufError(fmt::format("{}: missing metadata key '{}'", f.path(), key));
  try {
    return get(*v);
  } catch (const GgufError& e) {
    throw GgufError(fmt::format("{}: metadata key '{}': {}", f.path(), key, e.what()));
  }
}
}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_string(); });
}
int64_t GgufFile::get_int(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_int(); });
}
double GgufFile::get_float(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_float(); });
}
bool GgufFile::get_bool(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) { return v.as_bool(); });
}
std::string GgufFile::get_string(std::string_view key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t GgufFile::get_int(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double GgufFile::get_float(std::string_view key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GgufFile::get_bool(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) {
    std::vector<std::string> out;
    for (const GgufValue& item : v.as_array().items) out.push_back(item.as_string());
    return out;
  });
}
std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) {
    std::vector<int64_t> out;
    for (const GgufValue& item : v.as_array().items) out.push_back(item.as_int());
    return out;
  });
}
std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  return typed_get(*this, key, [](const GgufValue& v) {
    std::vector<double> out;
    for (const GgufValue& item : v.as_array().items) out.push_back(item.as_float());
    return out;
  });
}

const TensorInfo* GgufFile::tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& GgufFile::require(std::string_view name, std::initializer_list<int64_t> dims) const {
  const TensorInfo* t = tensor(name);
  if (!t) throw GgufError(fmt::format("{}: missing tensor '{}'", path_, name));
  std::vector<int64_t> want(dims);
  if (t->dims != want) {
    throw GgufError(fmt::format("{}: tensor '{}' has shape [{}], expected [{}]", path_, name, fmt::join(t->dims, ", "),
                                fmt::join(want, ", ")));
  }
  return *t;
}

}  // namespace skim
