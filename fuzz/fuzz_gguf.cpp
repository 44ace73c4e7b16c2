// libFuzzer target for the GGUF reader: any input must either parse into a
// directory whose every value and tensor byte can be touched safely, or throw
// GgufError. Any other exception escapes and libFuzzer reports it as a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "skim/gguf.h"

namespace {

// Visits every value, including the elements of nested arrays, through each accessor.
size_t touch(const skim::GgufValue& v) {
  size_t sum = v.to_display().size() + v.to_display(1000).size();
  if (v.type == skim::GgufValueType::ARRAY) {
    for (const skim::GgufValue& item : v.as_array().items) sum += touch(item);
    return sum;
  }
  try {
    sum += static_cast<size_t>(v.as_int());
  } catch (const skim::GgufError&) {
  }
  try {
    sum += static_cast<size_t>(v.as_float() != 0);
  } catch (const skim::GgufError&) {
  }
  try {
    sum += v.as_bool();
  } catch (const skim::GgufError&) {
  }
  try {
    sum += v.as_string().size();
  } catch (const skim::GgufError&) {
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<skim::GgufFile> f;
  try {
    f = skim::GgufFile::from_memory(data, size, "fuzz");
  } catch (const skim::GgufError&) {
    return 0;
  }
  volatile size_t sink = f->version() + f->alignment();
  for (const auto& [key, value] : f->metadata()) {
    sink = sink + key.size() + touch(value);
    // The typed getters on every key: each either returns or throws GgufError.
    try {
      sink = sink + f->get_string_array(key).size();
    } catch (const skim::GgufError&) {
    }
    try {
      sink = sink + f->get_int_array(key).size();
    } catch (const skim::GgufError&) {
    }
    try {
      sink = sink + f->get_float_array(key).size();
    } catch (const skim::GgufError&) {
    }
  }
  for (const skim::TensorInfo& t : f->tensors()) {
    // First and last byte of the data, and of the last row: out-of-range pointers trip ASan.
    sink = sink + t.data[0] + t.data[t.nbytes - 1];
    const uint8_t* last_row = t.row(t.rows() - 1);
    sink = sink + last_row[0] + last_row[t.row_size() - 1];
    sink = sink + static_cast<size_t>(t.nelements()) + t.offset;
    if (f->tensor(t.name) != &t) __builtin_trap();  // name lookup must find this very tensor
  }
  (void)sink;
  return 0;
}
