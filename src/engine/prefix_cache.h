// Prefixes the server keeps in memory after their slot moved on to another
// prompt (docs/server.md): each entry is a context sequence beyond the slots
// that shares a slot's whole pages of prompt rows (copy-on-write, so keeping
// them costs no copy). Every whole page of an entry is indexed by a hash of
// the tokens up to its end, chained page by page, so a new prompt finds the
// entry holding its longest prefix without comparing against every entry.
// When the KV pool needs the room, entries go least recently used first.
// Policy over the Context's sequences; the pages themselves are kv/ mechanism.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "skim/context.h"

namespace skim {

class PrefixCache {
 public:
  // Entries live in sequences [first_seq, first_seq + n_entries) of ctx.
  PrefixCache(Context& ctx, int first_seq, int n_entries);

  // Keeps the first `rows` rows of sequence `seq` (cut to whole pages), whose
  // tokens are `tokens` and which `methods` computed (Scheduler's
  // methods_key). A prefix an entry already holds is only marked used; else
  // it takes a free entry or the least recently used one but `protect_seq`'s.
  // Returns whether an entry holds it now.
  bool retain(int seq, std::span<const int32_t> tokens, size_t rows, const std::string& methods, int protect_seq = -1);

  struct Hit {
    int seq = -1;                     // the entry's sequence; -1: none
    size_t rows = 0;                  // the prompt's rows it holds (whole pages)
    std::span<const int32_t> tokens;  // all the rows it holds
  };
  // The entry holding the longest whole-page prefix of `prompt` computed with
  // `methods` (marked used), or none.
  Hit find(std::span<const int32_t> prompt, const std::string& methods);

  // Drops least recently used entries until every (layer, KV head) of the
  // pool has `pages` free pages. Returns false when it cannot (no entry left).
  bool make_room(int64_t pages);

  int entries() const;
  int64_t tokens_held() const;

 private:
  struct Entry {
    std::vector<int32_t> tokens;  // empty: free
    std::string methods;
    int64_t last_used = 0;
  };
  // Chained hashes of prompt[0, 64 (i + 1)) for each whole page i.
  static std::vector<uint64_t> page_hashes(std::span<const int32_t> tokens, const std::string& methods);
  void drop(size_t entry);

  Context& ctx_;
  int first_seq_;
  std::vector<Entry> entries_;
  std::unordered_multimap<uint64_t, size_t> index_;  // page hash -> entry
  int64_t clock_ = 0;
};

}  // namespace skim
