#include "engine/prefix_cache.h"

#include <xxhash.h>

#include <algorithm>
#include <stdexcept>

#include "kv/kv_pool.h"

namespace skim {

PrefixCache::PrefixCache(Context& ctx, int first_seq, int n_entries)
    : ctx_(ctx), first_seq_(first_seq), entries_(static_cast<size_t>(std::max(n_entries, 0))) {
  if (first_seq < 0 || first_seq + n_entries > ctx.n_seq_max())
    throw std::invalid_argument("prefix cache: its sequences lie outside the context's");
}

std::vector<uint64_t> PrefixCache::page_hashes(std::span<const int32_t> tokens, const std::string& methods) {
  std::vector<uint64_t> hashes;
  uint64_t h = XXH3_64bits(methods.data(), methods.size());
  for (size_t end = kv::kPageRows; end <= tokens.size(); end += kv::kPageRows) {
    h = XXH3_64bits_withSeed(tokens.data() + end - kv::kPageRows, kv::kPageRows * sizeof(int32_t), h);
    hashes.push_back(h);
  }
  return hashes;
}

PrefixCache::Hit PrefixCache::find(std::span<const int32_t> prompt, const std::string& methods) {
  const std::vector<uint64_t> hashes = page_hashes(prompt, methods);
  for (size_t pages = hashes.size(); pages > 0; --pages) {
    const size_t rows = pages * kv::kPageRows;
    auto [it, end] = index_.equal_range(hashes[pages - 1]);
    for (; it != end; ++it) {
      Entry& e = entries_[it->second];
      // A hash names the prefix; the tokens prove it.
      if (e.methods != methods || e.tokens.size() < rows || !std::equal(prompt.begin(), prompt.begin() + rows, e.tokens.begin()))
        continue;
      e.last_used = ++clock_;
      return {first_seq_ + static_cast<int>(it->second), rows, e.tokens};
    }
  }
  return {};
}

bool PrefixCache::retain(int seq, std::span<const int32_t> tokens, size_t rows, const std::string& methods,
                         int protect_seq) {
  rows = std::min(rows, tokens.size()) / kv::kPageRows * kv::kPageRows;
  if (rows == 0 || entries_.empty() || static_cast<int>(rows) < ctx_.min_kept_rows(seq)) return false;
  tokens = tokens.first(rows);
  const Hit held = find(tokens, methods);
  if (held.rows == rows) return true;
  // A free entry, else the least recently used one.
  size_t target = entries_.size();
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (first_seq_ + static_cast<int>(i) == protect_seq) continue;
    if (entries_[i].tokens.empty()) {
      target = i;
      break;
    }
    if (target == entries_.size() || entries_[i].last_used < entries_[target].last_used) target = i;
  }
  if (target == entries_.size()) return false;
  drop(target);
  Entry& e = entries_[target];
  const int entry_seq = first_seq_ + static_cast<int>(target);
  ctx_.copy_sequence(seq, entry_seq);
  ctx_.truncate_sequence(entry_seq, static_cast<int>(rows));
  e.tokens.assign(tokens.begin(), tokens.end());
  e.methods = methods;
  e.last_used = ++clock_;
  for (const uint64_t h : page_hashes(e.tokens, methods)) index_.emplace(h, target);
  return true;
}

void PrefixCache::drop(size_t entry) {
  Entry& e = entries_[entry];
  if (e.tokens.empty()) return;
  for (const uint64_t h : page_hashes(e.tokens, e.methods)) {
    auto [it, end] = index_.equal_range(h);
    while (it != end) it = it->second == entry ? index_.erase(it) : std::next(it);
  }
  ctx_.clear_sequence(first_seq_ + static_cast<int>(entry));
  e.tokens.clear();
  e.methods.clear();
}

bool PrefixCache::make_room(int64_t pages) {
  while (ctx_.kv_free_pages_per_head() < pages) {
    size_t oldest = entries_.size();
    for (size_t i = 0; i < entries_.size(); ++i)
      if (!entries_[i].tokens.empty() && (oldest == entries_.size() || entries_[i].last_used < entries_[oldest].last_used))
        oldest = i;
    if (oldest == entries_.size()) return false;
    drop(oldest);
  }
  return true;
}

int PrefixCache::entries() const {
  return static_cast<int>(std::count_if(entries_.begin(), entries_.end(), [](const Entry& e) { return !e.tokens.empty(); }));
}

int64_t PrefixCache::tokens_held() const {
  int64_t n = 0;
  for (const Entry& e : entries_) n += static_cast<int64_t>(e.tokens.size());
  return n;
}

}  // namespace skim
