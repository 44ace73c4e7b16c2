#include "kv/kv_file.h"

#include <fcntl.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kv/kv_types.h"

namespace skim::kv {
namespace {

using nlohmann::json;

std::string layer_formats(const KvSequence& seq, int32_t l) {
  const KvFormat f = seq.format(l);
  return fmt::format("{}/{}", kv_type_name(f.k), kv_type_name(f.v));
}

// One tensor's bytes as they are gathered from the pages, in file order.
struct Tensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  size_t bytes;
};

// A layer's f16 row copies (kv_sequence.h): their index, then each side's rows.
template <class Fn>
void for_each_copy_tensor(const KvSequence& seq, int32_t l, Fn&& fn) {
  const KvSequence::RowCopies& c = seq.row_copies(l);
  if (c.index.empty()) return;
  const int64_t h = seq.n_head_kv(), d = seq.head_dim(l);
  fn(fmt::format("l{}.copy_index", l), "I32", std::vector<int64_t>{static_cast<int64_t>(c.index.size()) / h, h},
     static_cast<const void*>(c.index.data()), c.index.size() * sizeof(int32_t));
  for (const auto* side : {&c.k, &c.v})
    if (!side->empty())
      fn(fmt::format("l{}.{}_copies", l, side == &c.k ? "k" : "v"), "F16",
         std::vector<int64_t>{static_cast<int64_t>(side->size()) / d, d}, static_cast<const void*>(side->data()),
         side->size() * sizeof(uint16_t));
}

std::vector<Tensor> tensors_of(KvSequence& seq, size_t n_tokens) {
  const int64_t rows = seq.size();
  std::vector<Tensor> t = {{"positions", "I32", {rows}, static_cast<size_t>(rows) * 4},
                           {"tokens", "I32", {static_cast<int64_t>(n_tokens)}, n_tokens * 4}};
  for (int32_t l = 0; l < seq.n_layer(); ++l) {
    const int64_t h = seq.n_head_kv();
    t.push_back({fmt::format("l{}.k", l), "U8", {h, rows, seq.k_row_bytes(l)}, static_cast<size_t>(h * rows * seq.k_row_bytes(l))});
    t.push_back({fmt::format("l{}.v", l), "U8", {h, rows, seq.v_row_bytes(l)}, static_cast<size_t>(h * rows * seq.v_row_bytes(l))});
    if (seq.has_key_offset(l))
      t.push_back({fmt::format("l{}.key_offset", l), "F32", {h, seq.head_dim(l)}, static_cast<size_t>(h * seq.head_dim(l)) * 4});
    for_each_copy_tensor(seq, l, [&](std::string name, const char* dtype, std::vector<int64_t> shape, const void*, size_t bytes) {
      t.push_back({std::move(name), dtype, std::move(shape), bytes});
    });
  }
  return t;
}

// Buffered writes; every failure is one error naming the file.
class Writer {
 public:
  explicit Writer(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create");
  }
  ~Writer() {
    if (fd_ >= 0) ::close(fd_);
  }
  void operator()(const void* p, size_t n) {
    buffer_.insert(buffer_.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    if (buffer_.size() >= (4u << 20)) flush();
  }
  void flush() {
    for (size_t done = 0; done < buffer_.size();) {
      const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("cannot write");
      done += static_cast<size_t>(n);
      written_ += static_cast<size_t>(n);
    }
    buffer_.clear();
  }
  size_t close_synced() {
    flush();
    if (::fsync(fd_) != 0) fail("cannot fsync");
    if (::close(fd_) != 0) fail("cannot close");
    fd_ = -1;
    return written_;
  }

 private:
  [[noreturn]] void fail(const char* what) {
    throw std::runtime_error(fmt::format("KV cache file {}: {} ({})", path_, what, std::strerror(errno)));
  }
  std::string path_;
  int fd_ = -1;
  std::vector<uint8_t> buffer_;
  size_t written_ = 0;
};

// Hands `sink` the tensor bytes, in the order tensors_of lists them.
template <class Sink>
void write_tensors(Sink& w, KvSequence& seq, std::span<const int32_t> tokens) {
  const int64_t rows = seq.size();
  for (int64_t s = 0; s < rows; ++s) {
    const int32_t p = seq.position(s);
    w(&p, 4);
  }
  w(tokens.data(), tokens.size_bytes());
  for (int32_t l = 0; l < seq.n_layer(); ++l) {
    for (const bool keys : {true, false}) {
      const int64_t row_bytes = keys ? seq.k_row_bytes(l) : seq.v_row_bytes(l);
      // Rows of a page are contiguous: one write per page. Pages a layer
      // gave back (release_before) are written as zeros (no reader reaches them).
      const int64_t first_page = seq.view(l).first_key >> kPageShift;
      const std::vector<uint8_t> zeros(first_page > 0 ? static_cast<size_t>(kPageRows * row_bytes) : 0);
      for (int32_t h = 0; h < seq.n_head_kv(); ++h)
        for (int64_t s = 0; s < rows; s += kPageRows) {
          const int64_t n = std::min<int64_t>(kPageRows, rows - s);
          w((s >> kPageShift) < first_page ? zeros.data() : keys ? seq.k_row(l, h, s) : seq.v_row(l, h, s),
            static_cast<size_t>(n * row_bytes));
        }
    }
    if (seq.has_key_offset(l))
      for (int32_t h = 0; h < seq.n_head_kv(); ++h)
        w(seq.key_offset(l, h), static_cast<size_t>(seq.head_dim(l)) * sizeof(float));
    for_each_copy_tensor(seq, l, [&](const std::string&, const char*, const std::vector<int64_t>&, const void* p, size_t bytes) {
      w(p, bytes);
    });
  }
}

}  // namespace

size_t save_kv_file(const std::string& path, KvSequence& seq, std::span<const int32_t> tokens, const KvFileMeta& meta) {
  seq.require_row_formats("save");
  const std::vector<Tensor> tensors = tensors_of(seq, tokens.size());
  // The checksum goes in the header, before the bytes it covers: a first pass computes it.
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  auto hash = [&state](const void* p, size_t n) { XXH3_64bits_update(&state, p, n); };
  write_tensors(hash, seq, tokens);
  const uint64_t checksum = XXH3_64bits_digest(&state);
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  json header = json::object();
  json m = json::object();
  for (const auto& [k, v] : meta) m[k] = v;
  m["skim.checksum"] = fmt::format("{:016x}", checksum);
  m["skim.rows"] = std::to_string(seq.size());
  for (int32_t l = 0; l < seq.n_layer(); ++l) m[fmt::format("skim.l{}.formats", l)] = layer_formats(seq, l);
  header["__metadata__"] = m;
  size_t offset = 0;
  for (const Tensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the tensor bytes start 8-aligned
  try {
    Writer w(tmp);
    const uint64_t n = text.size();
    w(&n, 8);
    w(text.data(), text.size());
    write_tensors(w, seq, tokens);
    const size_t written = w.close_synced();
    std::filesystem::rename(tmp, path);
    const std::string dir = std::filesystem::absolute(path).parent_path().string();
    if (const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    return written;
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

KvFile read_kv_file(const std::string& path) {
  auto bad = [&](const std::string& why) { return std::runtime_error(fmt::format("KV cache file {}: {}", path, why)); };
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw bad("cannot open it");
  KvFile f;
  f.bytes.resize(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(f.bytes.data()), static_cast<std::streamsize>(f.bytes.size()))) throw bad("cannot read it");
  uint64_t header_len = 0;
  if (f.bytes.size() < 8) throw bad("too short to be a cache file");
  std::memcpy(&header_len, f.bytes.data(), 8);
  if (header_len > f.bytes.size() - 8) throw bad("truncated, or not a cache file (header length past the end)");
  const json header = json::parse(f.bytes.begin() + 8, f.bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_len), nullptr, false);
  if (header.is_discarded() || !header.is_object() || !header.contains("__metadata__") || !header["__metadata__"].is_object())
    throw bad("not a skim cache file (no safetensors header with metadata)");
  for (const auto& [k, v] : header["__metadata__"].items()) {
    if (!v.is_string()) throw bad("metadata value of " + k + " is not a string");
    f.meta[k] = v.get<std::string>();
  }
  f.data_begin = 8 + header_len;
  const size_t data_size = f.bytes.size() - f.data_begin;
  size_t covered = 0;
  for (const auto& [name, t] : header.items()) {
    if (name == "__metadata__") continue;
    if (!t.contains("data_offsets") || !t["data_offsets"].is_array() || t["data_offsets"].size() != 2)
      throw bad("tensor " + name + " has no data_offsets");
    const size_t end = t["data_offsets"][1].get<size_t>();
    if (end > data_size || t["data_offsets"][0].get<size_t>() > end) throw bad("truncated (tensor " + name + " runs past the end)");
    covered = std::max(covered, end);
  }
  if (covered != data_size) throw bad(fmt::format("{} bytes after the last tensor: truncated or appended to", data_size - covered));
  const auto sum = f.meta.find("skim.checksum");
  if (sum == f.meta.end()) throw bad("not a skim cache file (no checksum)");
  const std::string actual = fmt::format("{:016x}", XXH3_64bits(f.bytes.data() + f.data_begin, data_size));
  if (actual != sum->second) throw bad("corrupted: checksum " + actual + ", the header says " + sum->second);
  const json& tokens = header.value("tokens", json::object());
  if (!tokens.contains("data_offsets")) throw bad("no tokens tensor");
  const size_t t0 = tokens["data_offsets"][0].get<size_t>(), t1 = tokens["data_offsets"][1].get<size_t>();
  f.tokens.resize((t1 - t0) / 4);
  std::memcpy(f.tokens.data(), f.bytes.data() + f.data_begin + t0, f.tokens.size() * 4);
  f.header = header.dump();
  return f;
}

KvFile read_kv_file_tokens(const std::string& path) {
  auto bad = [&](const std::string& why) { return std::runtime_error(fmt::format("KV cache file {}: {}", path, why)); };
  std::ifstream in(path, std::ios::binary);
  uint64_t header_len = 0;
  if (!in.read(reinterpret_cast<char*>(&header_len), 8) || header_len > (64u << 20)) throw bad("not a cache file");
  std::string text(header_len, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(header_len))) throw bad("truncated header");
  const json header = json::parse(text, nullptr, false);
  if (header.is_discarded() || !header.contains("__metadata__") || !header.contains("tokens")) throw bad("not a skim cache file");
  KvFile f;
  for (const auto& [k, v] : header["__metadata__"].items())
    if (v.is_string()) f.meta[k] = v.get<std::string>();
  const size_t b = header["tokens"]["data_offsets"][0].get<size_t>(), e = header["tokens"]["data_offsets"][1].get<size_t>();
  f.tokens.resize((e - b) / 4);
  in.seekg(static_cast<std::streamoff>(8 + header_len + b));
  if (!in.read(reinterpret_cast<char*>(f.tokens.data()), static_cast<std::streamsize>(f.tokens.size() * 4))) throw bad("truncated tokens");
  return f;
}

void load_kv_file(const KvFile& file, KvSequence& seq) {
  const json header = json::parse(file.header);
  const uint8_t* data = file.bytes.data() + file.data_begin;
  auto tensor = [&](const std::string& name, size_t want_bytes) -> const uint8_t* {
    if (!header.contains(name)) throw std::runtime_error("KV cache file: no tensor " + name);
    const json& t = header[name];
    const size_t b = t["data_offsets"][0].get<size_t>(), e = t["data_offsets"][1].get<size_t>();
    if (e - b != want_bytes)
      throw std::runtime_error(fmt::format("KV cache file: tensor {} has {} bytes, this context's layout needs {}", name, e - b, want_bytes));
    return data + b;
  };
  const int64_t rows = std::stoll(file.meta.at("skim.rows"));
  if (rows > seq.max_slots())
    throw std::runtime_error(fmt::format("KV cache file holds {} rows, the context holds {}", rows, seq.max_slots()));
  for (int32_t l = 0; l < seq.n_layer(); ++l) {
    const auto it = file.meta.find(fmt::format("skim.l{}.formats", l));
    if (it == file.meta.end() || it->second != layer_formats(seq, l))
      throw std::runtime_error(fmt::format("KV cache file: layer {} is stored as {}, this context stores {}", l,
                                           it == file.meta.end() ? "nothing" : it->second, layer_formats(seq, l)));
  }
  std::vector<int32_t> positions(static_cast<size_t>(rows));
  std::memcpy(positions.data(), tensor("positions", positions.size() * 4), positions.size() * 4);
  seq.clear();
  seq.append(positions);
  for (int32_t l = 0; l < seq.n_layer(); ++l) {
    for (const bool keys : {true, false}) {
      const int64_t row_bytes = keys ? seq.k_row_bytes(l) : seq.v_row_bytes(l);
      const uint8_t* src = tensor(fmt::format("l{}.{}", l, keys ? "k" : "v"),
                                  static_cast<size_t>(seq.n_head_kv() * rows * row_bytes));
      for (int32_t h = 0; h < seq.n_head_kv(); ++h)
        for (int64_t s = 0; s < rows; s += kPageRows) {
          const int64_t n = std::min<int64_t>(kPageRows, rows - s);
          std::memcpy(keys ? seq.k_row(l, h, s) : seq.v_row(l, h, s), src + (h * rows + s) * row_bytes,
                      static_cast<size_t>(n * row_bytes));
        }
    }
    const std::string offset_name = fmt::format("l{}.key_offset", l);
    if (header.contains(offset_name)) {
      const size_t n = static_cast<size_t>(seq.head_dim(l));
      const auto* src = reinterpret_cast<const float*>(tensor(offset_name, seq.n_head_kv() * n * sizeof(float)));
      for (int32_t h = 0; h < seq.n_head_kv(); ++h) std::memcpy(seq.key_offset(l, h), src + h * n, n * sizeof(float));
      seq.mark_key_offset_set(l);
    }
    // The copies are the file's, none when it has none: append made blank ones for the sink slots.
    if (header.contains(fmt::format("l{}.k_sink", l)) || header.contains(fmt::format("l{}.v_sink", l)))
      throw std::runtime_error("KV cache file: written by an older skim (its sink copies are l{L}.k_sink); save it again");
    KvSequence::RowCopies copies;
    const std::string index_name = fmt::format("l{}.copy_index", l);
    if (header.contains(index_name)) {
      const auto read = [&](const std::string& name, auto& into) {
        if (!header.contains(name)) return;
        const json& t = header[name];
        const size_t bytes = t["data_offsets"][1].get<size_t>() - t["data_offsets"][0].get<size_t>();
        into.resize(bytes / sizeof(into[0]));
        std::memcpy(into.data(), tensor(name, into.size() * sizeof(into[0])), bytes);
      };
      read(index_name, copies.index);
      read(fmt::format("l{}.k_copies", l), copies.k);
      read(fmt::format("l{}.v_copies", l), copies.v);
    }
    try {
      seq.restore_row_copies(l, std::move(copies));
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("KV cache file: ") + e.what());
    }
  }
}

}  // namespace skim::kv
