#include "tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include <fmt/format.h>

#include "tokenizer/unicode.h"

namespace skim {
namespace {

constexpr const char* kModelKey = "tokenizer.ggml.model";
constexpr const char* kMergesKey = "tokenizer.ggml.merges";
constexpr const char* kPreKey = "tokenizer.ggml.pre";

const GgufFile& require_gpt2(const GgufFile& file) {
  const std::string model = file.get_string(kModelKey);
  if (model != "gpt2")
    throw GgufError(fmt::format("{}: {} = '{}' is not a byte-level BPE vocabulary", file.path(), kModelKey, model));
  return file;
}

}  // namespace

ByteEncoding::ByteEncoding() : to_byte_(256 + 68, -1) {
  // Printable Latin-1 bytes stand for themselves; the others (controls,
  // space, DEL, NBSP, soft hyphen) take code points from U+0100 upward in
  // byte order.
  uint32_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    to_cp_[b] = printable ? static_cast<uint32_t>(b) : next_extra++;
  }
  to_byte_.assign(next_extra, -1);
  for (int b = 0; b < 256; ++b) to_byte_[to_cp_[b]] = static_cast<int16_t>(b);
}

std::string ByteEncoding::encode(std::string_view bytes) const {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) unicode::append_utf8(out, to_cp_[static_cast<uint8_t>(c)]);
  return out;
}

BpeTokenizer::BpeTokenizer(const GgufFile& file)
    : pre_(PreTokenizer::from_name(require_gpt2(file).get_string(kPreKey, ""))),
      vocab_(file, VocabDefaults{.add_bos = pre_.default_add_bos()}) {
  const int32_t n_tokens = vocab_.size();
  for (int b = 0; b < 256; ++b)
    byte_tokens_[b] = vocab_.find(bytes_.encode(std::string_view(reinterpret_cast<const char*>(&b), 1)));

  if (!file.has(kMergesKey)) throw GgufError(fmt::format("{}: missing metadata key '{}'", file.path(), kMergesKey));
  const std::vector<std::string> merges = file.get_string_array(kMergesKey);
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& m = merges[rank];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos)
      throw GgufError(fmt::format("{}: {}[{}] = '{}' is not two tokens separated by a space", file.path(), kMergesKey,
                                  rank, m));
    const int32_t left = vocab_.find(std::string_view(m).substr(0, space));
    const int32_t right = vocab_.find(std::string_view(m).substr(space + 1));
    const int32_t result = vocab_.find(m.substr(0, space) + m.substr(space + 1));
    if (left < 0 || right < 0 || result < 0) {
      ++unusable_merges_;
      continue;
    }
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
    merges_.try_emplace(key, Merge{static_cast<int32_t>(rank), result});  // first (best) rank wins
  }

  pieces_.resize(static_cast<size_t>(n_tokens));
  for (int32_t id = 0; id < n_tokens; ++id) {
    const TokenType type = vocab_.type(id);
    if (type != TokenType::Normal && type != TokenType::Byte) continue;
    std::string& piece = pieces_[id];
    const std::string& text = vocab_.text(id);
    if (type == TokenType::Byte && text.size() == 6 && text.starts_with("<0x") && text.back() == '>' &&
        std::isxdigit(static_cast<unsigned char>(text[3])) && std::isxdigit(static_cast<unsigned char>(text[4]))) {
      piece.push_back(static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));  // "<0x0A>" style
      continue;
    }
    for (uint32_t cp : unicode::decode_utf8(text)) {
      const int b = bytes_.codepoint_to_byte(cp);
      if (b >= 0) {
        piece.push_back(static_cast<char>(b));
      } else {
        unicode::append_utf8(piece, cp);  // not a byte-level entry: keep it as text
      }
    }
  }
}

TokenType BpeTokenizer::token_type(int32_t id) const {
  vocab_.check_id(id);
  return vocab_.type(id);
}

const std::string& BpeTokenizer::token_text(int32_t id) const {
  vocab_.check_id(id);
  return vocab_.text(id);
}

std::string BpeTokenizer::token_to_piece(int32_t id, bool special) const {
  vocab_.check_id(id);
  switch (vocab_.type(id)) {
    case TokenType::Normal:
    case TokenType::Byte: return pieces_[id];
    case TokenType::UserDefined: return vocab_.text(id);
    case TokenType::Control:
    case TokenType::Unknown: return special ? vocab_.text(id) : std::string();
    case TokenType::Unused:
    case TokenType::Undefined: return {};
  }
  return {};
}

const BpeTokenizer::Merge* BpeTokenizer::find_merge(int32_t left, int32_t right) const {
  if (left < 0 || right < 0) return nullptr;
  const auto it = merges_.find((static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeTokenizer::merge_word(const std::string& word, std::vector<int32_t>& out) const {
  if (pre_.ignore_merges()) {
    if (const int32_t id = vocab_.find(bytes_.encode(word)); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  // Symbols form a linked list over the word's bytes; a merge folds the right
  // symbol into the left one. The best-ranked adjacent pair is merged first,
  // the leftmost one among equals.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  constexpr int32_t kMergedAway = -2;

  if (word.size() > static_cast<size_t>(INT32_MAX))
    throw std::length_error(fmt::format("tokenizer: a {}-byte word is too long to encode", word.size()));
  const auto n = static_cast<int32_t>(word.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i)
    symbols[i] = {byte_tokens_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1};

  // Candidates are (rank << 32 | left position), smallest first: best rank,
  // then leftmost. Entries go stale as symbols merge; one is still valid iff
  // the pair now at `left` has the same rank, since a rank names one pair.
  std::vector<uint64_t> heap;
  auto key = [](int32_t rank, int32_t left) { return (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(left); };
  auto pair_merge = [&](int32_t left) -> const Merge* {
    if (left < 0 || symbols[left].next < 0) return nullptr;
    return find_merge(symbols[left].id, symbols[symbols[left].next].id);
  };
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const Merge* m = pair_merge(i)) heap.push_back(key(m->rank, i));
  }
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  auto consider = [&](int32_t left) {
    if (const Merge* m = pair_merge(left)) {
      heap.push_back(key(m->rank, left));
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const uint64_t top = heap.back();
    heap.pop_back();
    const auto rank = static_cast<int32_t>(top >> 32);
    const auto pos = static_cast<int32_t>(top & 0xFFFFFFFFu);
    const Merge* m = pair_merge(pos);
    if (!m || m->rank != rank) continue;  // stale
    Symbol& left = symbols[pos];
    Symbol& right = symbols[left.next];
    left.id = m->result;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = pos;
    right.id = kMergedAway;
    consider(left.prev);
    consider(pos);
  }

  for (int32_t i = 0; i >= 0 && i < n; i = symbols[i].next) {
    if (symbols[i].id >= 0) {
      out.push_back(symbols[i].id);
      continue;
    }
    // A byte without its own token: like llama.cpp, try the single bytes of
    // its encoded form and drop what is not in the vocabulary.
    const std::string encoded = bytes_.encode(word.substr(i, 1));
    for (char ch : encoded) {
      if (const int32_t id = vocab_.find(std::string_view(&ch, 1)); id >= 0) out.push_back(id);
    }
  }
}

void BpeTokenizer::encode_word(const std::string& word, std::vector<int32_t>& out) const {
  constexpr size_t kMaxCacheEntries = 1 << 18;
  {
    std::lock_guard lock(cache_mutex_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge_word(word, out);
  std::lock_guard lock(cache_mutex_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(word, std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(start), out.end()));
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string> words;
  pre_.split(text, words);
  for (const std::string& w : words) encode_word(w, out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && vocab_.add_bos()) out.push_back(vocab_.bos());
  for (const Vocabulary::Fragment& f : vocab_.partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
    } else {
      encode_text(text.substr(f.offset, f.length), out);
    }
  }
  if (add_special && vocab_.add_eos()) out.push_back(vocab_.eos());
  return out;
}

}  // namespace skim
