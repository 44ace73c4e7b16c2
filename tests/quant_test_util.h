// Helpers shared by the kernel tests: locating the Python that has gguf-py,
// running the vector generator, reading its files, making random weight blocks.
#pragma once

#include "skim/paths.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/f16.h"
#include "skim/gguf.h"
#include "test_support.h"

namespace skim::test {

// The Python interpreter with numpy and gguf: $SKIM_PYTHON, else the project
// venv under ${SKIM_CACHE:-$HOME/.cache/skim}.
inline std::string project_python() { return skim::paths::python().string(); }

inline std::filesystem::path tests_source_dir() {
#ifdef SKIM_SOURCE_DIR
  return std::filesystem::path(SKIM_SOURCE_DIR) / "tests";
#else
  return std::filesystem::path(__FILE__).parent_path();
#endif
}

// Runs `argv` (argv[0] is a path, no shell); returns its exit status, or -1 if it
// could not be started or died from a signal.
inline int run_process(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline std::vector<uint8_t> read_file_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Byte offsets of the f16 scale fields inside one block of `type`.
inline std::vector<int> f16_field_offsets(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0: return {0};
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q2_K: return {80, 82};
    case GgmlType::Q3_K: return {108};
    case GgmlType::Q6_K: return {208};
    default: return {};
  }
}

// Random weight data of `rows` rows of `k` elements: random bytes for the packed
// quants, with every scale a finite f16 of moderate size, so products stay far
// from overflow. Float types get values in [-1, 1].
inline std::vector<uint8_t> random_weights(GgmlType type, int64_t rows, int64_t k, std::mt19937_64& rng) {
  const size_t bytes = row_bytes(type, k) * static_cast<size_t>(rows);
  std::vector<uint8_t> w(bytes);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) {
    const int64_t n = rows * k;
    for (int64_t i = 0; i < n; ++i) {
      const float v = unit(rng);
      if (type == GgmlType::F32) {
        std::memcpy(w.data() + 4 * i, &v, 4);
      } else {
        uint16_t h;
        if (type == GgmlType::F16) {
          h = kernels::f32_to_f16(v);
        } else {
          uint32_t bits;
          std::memcpy(&bits, &v, 4);
          h = static_cast<uint16_t>(bits >> 16);
        }
        std::memcpy(w.data() + 2 * i, &h, 2);
      }
    }
    return w;
  }
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const auto& t = traits(type);
  const size_t blocks = bytes / t.type_size;
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (size_t b = 0; b < blocks; ++b)
    for (int off : f16_field_offsets(type)) {
      const float s = (rng() & 1 ? 1.0f : -1.0f) * scale(rng);
      const uint16_t h = kernels::f32_to_f16(s);
      std::memcpy(w.data() + b * t.type_size + off, &h, 2);
    }
  return w;
}

inline TensorInfo make_tensor(GgmlType type, int64_t k, int64_t n, const std::vector<uint8_t>& data) {
  TensorInfo t;
  t.name = "test_weight";
  t.type = type;
  t.dims = {k, n};
  t.data = data.data();
  t.nbytes = data.size();
  return t;
}

}  // namespace skim::test
