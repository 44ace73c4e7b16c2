// Names of the KV formats (skim/kv.h lists them for users).
#pragma once

#include <string>

#include "kernels/kv_view.h"

namespace skim::kv {

// Throws std::invalid_argument naming the formats for an unknown name. A name
// means its value layout when `values` (-ctv): kivi4/kivi2 keys are per
// channel, values per token.
kernels::KvDType parse_kv_type(const std::string& name, bool values = false);
const char* kv_type_name(kernels::KvDType type);

}  // namespace skim::kv
