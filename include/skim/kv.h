// KV cache formats: what -ctk / -ctv (ContextParams::kv_type_k / kv_type_v) accept.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "skim/attention.h"

namespace skim {

struct KvTypeInfo {
  std::string name;     // as -ctk / -ctv take it
  std::string summary;  // what a row holds
  int64_t row_bytes_64 = 0, row_bytes_128 = 0;  // bytes of one K or V row of a 64- and a 128-value head
};

// Every format, f16 (the default) first.
const std::vector<KvTypeInfo>& kv_cache_types();

// Every KV selection policy (ContextParams::kv_policy) with its parameters.
const std::vector<AttentionMethodInfo>& kv_policies();
// Throws std::invalid_argument naming the problem (unknown policy or key, bad value).
void validate_kv_policy_spec(const std::string& spec);

}  // namespace skim
