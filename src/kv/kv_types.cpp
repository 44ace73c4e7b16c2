#include "kv/kv_types.h"

#include <stdexcept>

#include <fmt/format.h>

#include "skim/kv.h"

namespace skim {
namespace {

struct TypeEntry {
  kernels::KvDType type;
  const char* name;
  const char* summary;
};

constexpr TypeEntry kTypes[] = {
    {kernels::KvDType::F16, "f16", "half precision"},
    {kernels::KvDType::BF16, "bf16", "bfloat16"},
    {kernels::KvDType::F32, "f32", "single precision (a reference)"},
    {kernels::KvDType::Q8_0, "q8_0", "llama.cpp's q8_0 blocks: per 32 values an f16 scale and 8-bit values; Hadamard-rotated"},
    {kernels::KvDType::Q4_0, "q4_0", "llama.cpp's q4_0 blocks: per 32 values an f16 scale and 4-bit values; Hadamard-rotated"},
    {kernels::KvDType::TQ4, "tq4", "TurboQuant (MSE): Hadamard rotation, per row an f16 norm, 4-bit Lloyd-Max levels"},
    {kernels::KvDType::TQ3, "tq3", "TurboQuant (MSE): as tq4 with 3-bit levels"},
    {kernels::KvDType::TQ2, "tq2", "TurboQuant (MSE): as tq4 with 2-bit levels"},
};

}  // namespace

const std::vector<KvTypeInfo>& kv_cache_types() {
  static const std::vector<KvTypeInfo> types = [] {
    std::vector<KvTypeInfo> out;
    for (const TypeEntry& t : kTypes)
      out.push_back({t.name, t.summary, kernels::kv_row_bytes(t.type, 64), kernels::kv_row_bytes(t.type, 128)});
    return out;
  }();
  return types;
}

namespace kv {

kernels::KvDType parse_kv_type(const std::string& name) {
  std::string names;
  for (const TypeEntry& t : kTypes) {
    if (name == t.name) return t.type;
    names += names.empty() ? t.name : std::string(", ") + t.name;
  }
  throw std::invalid_argument(fmt::format("KV cache type '{}': use one of {}", name, names));
}

const char* kv_type_name(kernels::KvDType type) {
  for (const TypeEntry& t : kTypes)
    if (t.type == type) return t.name;
  throw std::logic_error("KV type without a name");
}

}  // namespace kv
}  // namespace skim
