#include "kv/kv_types.h"

#include <stdexcept>

#include <fmt/format.h>

#include "kv/kv_pool.h"
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
    {kernels::KvDType::TQ4J, "tq4j", "TurboQuant (inner product): a tq3 row plus the QJL 1-bit sketch of its residual"},
    {kernels::KvDType::TQ3J, "tq3j", "TurboQuant (inner product): a tq2 row plus the QJL 1-bit sketch of its residual"},
    {kernels::KvDType::KIVI_K4, "kivi4",
     "KIVI: 4-bit asymmetric keys per channel over each 64-row page, values per token (per 32 an f16 scale and "
     "minimum); the last, unfilled page f16; bytes: a key row with its share of the page's scales"},
    {kernels::KvDType::KIVI_K2, "kivi2", "KIVI: as kivi4 with 2-bit integers"},
};

// The value format of a name that means a per-channel key format for -ctk.
kernels::KvDType as_values(kernels::KvDType t) {
  return t == kernels::KvDType::KIVI_K4 ? kernels::KvDType::KIVI_V4
         : t == kernels::KvDType::KIVI_K2 ? kernels::KvDType::KIVI_V2
                                           : t;
}

}  // namespace

const std::vector<KvTypeInfo>& kv_cache_types() {
  static const std::vector<KvTypeInfo> types = [] {
    std::vector<KvTypeInfo> out;
    for (const TypeEntry& t : kTypes)
      out.push_back({t.name, t.summary,
                     kernels::kv_row_bytes(t.type, 64) + kernels::kv_page_param_bytes(t.type, 64) / kv::kPageRows,
                     kernels::kv_row_bytes(t.type, 128) + kernels::kv_page_param_bytes(t.type, 128) / kv::kPageRows});
    return out;
  }();
  return types;
}

namespace kv {

kernels::KvDType parse_kv_type(const std::string& name, bool values) {
  std::string names;
  for (const TypeEntry& t : kTypes) {
    if (name == t.name) return values ? as_values(t.type) : t.type;
    names += names.empty() ? t.name : std::string(", ") + t.name;
  }
  throw std::invalid_argument(fmt::format("KV cache type '{}': use one of {}", name, names));
}

const char* kv_type_name(kernels::KvDType type) {
  for (const TypeEntry& t : kTypes)
    if (t.type == type || as_values(t.type) == type) return t.name;
  throw std::logic_error("KV type without a name");
}

}  // namespace kv
}  // namespace skim
