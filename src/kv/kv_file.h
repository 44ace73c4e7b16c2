// One sequence's KV cache as a file, in its page formats (f16, q8_0, 4-bit...):
// safetensors, so any reader of that format can open it. Tensors:
//   positions        I32 [rows]                       each row's stored position
//   tokens           I32 [n]                          what the caller says the rows hold
//   l{L}.k, l{L}.v   U8  [n_head_kv, rows, row bytes] layer L's rows, in its format
//   l{L}.key_offset  F32 [n_head_kv, head_dim]        the keys' stored offset, when set
//   l{L}.copy_index  I32 [slots, n_head_kv]           the f16 copy of each row, -1: none (KvSequence::RowCopies)
//   l{L}.k_copies, l{L}.v_copies  F16 [copies, head_dim]  those copies, per quantized side
// and string metadata: the caller's (model and settings fingerprint), each
// layer's formats, and an XXH3-64 checksum of the tensor bytes.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kv/kv_sequence.h"

namespace skim::kv {

using KvFileMeta = std::map<std::string, std::string>;

// Writes PATH.tmp.PID, fsyncs it, renames it over `path` and fsyncs the
// directory: a crash at any point leaves the previous file or the new one.
// Returns the bytes written. Throws std::runtime_error on an I/O error.
size_t save_kv_file(const std::string& path, KvSequence& seq, std::span<const int32_t> tokens, const KvFileMeta& meta);

struct KvFile {
  KvFileMeta meta;
  std::vector<int32_t> tokens;
  std::string header;          // the safetensors JSON header
  std::vector<uint8_t> bytes;  // the whole file
  size_t data_begin = 0;       // where the tensor bytes start
};
// Reads and checks a cache file: the safetensors layout, every tensor inside
// the file, the checksum. Throws std::runtime_error naming what is wrong
// (not a cache file, truncated, corrupted).
KvFile read_kv_file(const std::string& path);
// The metadata and tokens of a cache file, without its rows or checksum (an index).
KvFile read_kv_file_tokens(const std::string& path);
// Replaces what `seq` holds with the file's rows. Throws std::runtime_error when
// a layer's formats or shape differ from the sequence's.
void load_kv_file(const KvFile& file, KvSequence& seq);

}  // namespace skim::kv
