#include "tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include <fmt/format.h>

#include "tokenizer/unicode.h"

namespace skim {
namespace {

constexpr const char* kModelKey = "tokenizer.ggml.model";
constexpr const char* kTokensKey = "tokenizer.ggml.tokens";
constexpr const char* kTypesKey = "tokenizer.ggml.token_type";
constexpr const char* kMergesKey = "tokenizer.ggml.merges";
constexpr const char* kPreKey = "tokenizer.ggml.pre";

// Token texts that end a turn or a generation in common vocabularies. Files
// often omit their ids from the metadata, and some mark them as normal tokens;
// like llama.cpp, skim treats them as control tokens that end generation.
constexpr std::string_view kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>",  "<|end|>",          "<end_of_turn>",      "<|endoftext|>", "<|end_of_text|>",
    "<|eom_id|>", "<EOT>",       "_<EOT>",           "<end_of_utterance>", "</s>",          "<eos>",
    // fill-in-the-middle padding, repository and file separators
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<reponame>",
    "<|file_sep|>",
};
// Fill-in-the-middle markers: control tokens, but generation goes on after them.
constexpr std::string_view kFimTexts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<|fim_suffix|>", "<fim-suffix>",
    "<fim_suffix>",   "<|fim_middle|>", "<fim-middle>", "<fim_middle>",
};

bool contains(const auto& list, std::string_view text) {
  return std::find(std::begin(list), std::end(list), text) != std::end(list);
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

BpeTokenizer::BpeTokenizer(const GgufFile& file) {
  const std::string model = file.get_string(kModelKey);
  if (model != "gpt2")
    throw GgufError(fmt::format("{}: {} = '{}' is not a byte-level BPE vocabulary", file.path(), kModelKey, model));
  pre_ = PreTokenizer::from_name(file.get_string(kPreKey, ""));

  if (!file.has(kTokensKey)) throw GgufError(fmt::format("{}: missing metadata key '{}'", file.path(), kTokensKey));
  texts_ = file.get_string_array(kTokensKey);
  if (texts_.empty()) throw GgufError(fmt::format("{}: {} is empty", file.path(), kTokensKey));
  if (texts_.size() > static_cast<size_t>(INT32_MAX))
    throw GgufError(fmt::format("{}: {} has {} entries, too many", file.path(), kTokensKey, texts_.size()));
  const auto n_tokens = static_cast<int32_t>(texts_.size());

  types_.assign(texts_.size(), TokenType::Normal);
  if (file.has(kTypesKey)) {
    const std::vector<int64_t> types = file.get_int_array(kTypesKey);
    if (types.size() != texts_.size())
      throw GgufError(fmt::format("{}: {} has {} entries but the vocabulary has {} tokens", file.path(), kTypesKey,
                                  types.size(), texts_.size()));
    for (size_t i = 0; i < types.size(); ++i) {
      const int64_t t = types[i];
      types_[i] = t >= 1 && t <= 6 ? static_cast<TokenType>(t) : TokenType::Undefined;
    }
  }

  ids_.reserve(texts_.size() * 2);
  for (int32_t id = 0; id < n_tokens; ++id) {
    // An empty entry would match everywhere; give it a name that cannot occur
    // in a byte-level vocabulary (as llama.cpp does).
    if (texts_[id].empty()) texts_[id] = fmt::format("[EMPTY_{}]", id);
    ids_[texts_[id]] = id;  // a duplicated text resolves to its last id
  }

  for (int b = 0; b < 256; ++b) {
    const auto it = ids_.find(bytes_.encode(std::string_view(reinterpret_cast<const char*>(&b), 1)));
    byte_tokens_[b] = it == ids_.end() ? -1 : it->second;
  }

  if (!file.has(kMergesKey)) throw GgufError(fmt::format("{}: missing metadata key '{}'", file.path(), kMergesKey));
  const std::vector<std::string> merges = file.get_string_array(kMergesKey);
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& m = merges[rank];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos)
      throw GgufError(fmt::format("{}: {}[{}] = '{}' is not two tokens separated by a space", file.path(), kMergesKey,
                                  rank, m));
    const auto left = ids_.find(m.substr(0, space));
    const auto right = ids_.find(m.substr(space + 1));
    const auto result = ids_.find(m.substr(0, space) + m.substr(space + 1));
    if (left == ids_.end() || right == ids_.end() || result == ids_.end()) {
      ++unusable_merges_;
      continue;
    }
    const uint64_t key = (static_cast<uint64_t>(left->second) << 32) | static_cast<uint32_t>(right->second);
    merges_.try_emplace(key, Merge{static_cast<int32_t>(rank), result->second});  // first (best) rank wins
  }

  auto read_id = [&](const char* key) -> int32_t {
    if (!file.has(key)) return -1;
    const int64_t id = file.get_int(key);
    if (id < 0 || id >= n_tokens)
      throw GgufError(fmt::format("{}: {} = {} is outside the vocabulary (0..{})", file.path(), key, id, n_tokens - 1));
    return static_cast<int32_t>(id);
  };
  bos_ = read_id("tokenizer.ggml.bos_token_id");
  eos_ = read_id("tokenizer.ggml.eos_token_id");
  eot_ = read_id("tokenizer.ggml.eot_token_id");
  eom_ = read_id("tokenizer.ggml.eom_token_id");
  add_bos_ = file.get_bool("tokenizer.ggml.add_bos_token", pre_.default_add_bos());
  add_eos_ = file.get_bool("tokenizer.ggml.add_eos_token", false);
  if (add_bos_ && bos_ < 0)
    throw GgufError(fmt::format("{}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id", file.path()));
  if (add_eos_ && eos_ < 0)
    throw GgufError(fmt::format("{}: tokenizer.ggml.add_eos_token is set but there is no eos_token_id", file.path()));
  chat_template_ = file.get_string("tokenizer.chat_template", "");

  eog_.assign(texts_.size(), false);
  for (int32_t id = 0; id < n_tokens; ++id) {
    const bool ends_generation = contains(kEndOfGenerationTexts, texts_[id]);
    if (ends_generation || contains(kFimTexts, texts_[id])) types_[id] = TokenType::Control;
    if (ends_generation) eog_[id] = true;
  }
  for (int32_t id : {eos_, eot_, eom_, read_id("tokenizer.ggml.fim_pad_token_id"),
                     read_id("tokenizer.ggml.fim_rep_token_id"), read_id("tokenizer.ggml.fim_sep_token_id")}) {
    if (id >= 0) eog_[id] = true;
  }
  if (eot_ < 0) {
    for (std::string_view text : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"}) {
      if (int32_t id = token_id(text); id >= 0) {
        eot_ = id;
        break;
      }
    }
  }

  pieces_.resize(texts_.size());
  for (int32_t id = 0; id < n_tokens; ++id) {
    if (types_[id] != TokenType::Normal && types_[id] != TokenType::Byte) continue;
    std::string& piece = pieces_[id];
    const std::string& text = texts_[id];
    if (types_[id] == TokenType::Byte && text.size() == 6 && text.starts_with("<0x") && text.back() == '>' &&
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

  for (int32_t id = 0; id < n_tokens; ++id) {
    const TokenType t = types_[id];
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) specials_.push_back(id);
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int32_t a, int32_t b) { return texts_[a].size() > texts_[b].size(); });
}

void BpeTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= n_vocab())
    throw std::out_of_range(fmt::format("token id {} is outside the vocabulary (0..{})", id, n_vocab() - 1));
}

TokenType BpeTokenizer::token_type(int32_t id) const {
  check_id(id);
  return types_[id];
}

bool BpeTokenizer::is_eog(int32_t id) const { return id >= 0 && id < n_vocab() && eog_[id]; }

bool BpeTokenizer::is_control(int32_t id) const { return id >= 0 && id < n_vocab() && types_[id] == TokenType::Control; }

int32_t BpeTokenizer::token_id(std::string_view text) const {
  const auto it = ids_.find(std::string(text));
  return it == ids_.end() ? -1 : it->second;
}

const std::string& BpeTokenizer::token_text(int32_t id) const {
  check_id(id);
  return texts_[id];
}

std::string BpeTokenizer::token_to_piece(int32_t id, bool special) const {
  check_id(id);
  switch (types_[id]) {
    case TokenType::Normal:
    case TokenType::Byte: return pieces_[id];
    case TokenType::UserDefined: return texts_[id];
    case TokenType::Control:
    case TokenType::Unknown: return special ? texts_[id] : std::string();
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
    if (const auto it = ids_.find(bytes_.encode(word)); it != ids_.end()) {
      out.push_back(it->second);
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
      if (const auto it = ids_.find(std::string(1, ch)); it != ids_.end()) out.push_back(it->second);
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
  if (add_special && add_bos_) out.push_back(bos_);

  // Cut special-token texts out of the text first, longest token first; each
  // occurrence becomes that token. Control tokens count only when
  // parse_special is set; user-defined ones always do.
  struct Fragment {
    int32_t token;  // -1: text still to tokenize
    size_t offset, length;
  };
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (int32_t special : specials_) {
    if (!parse_special && types_[special] != TokenType::UserDefined) continue;
    const std::string& needle = texts_[special];
    bool found_any = false;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view hay = text.substr(0, f.offset + f.length);
      size_t pos = f.offset;
      while (true) {
        const size_t match = hay.find(needle, pos);
        if (match == std::string_view::npos) break;
        found_any = true;
        if (match > pos) next.push_back({-1, pos, match - pos});
        next.push_back({special, match, needle.size()});
        pos = match + needle.size();
      }
      if (pos < f.offset + f.length) next.push_back({-1, pos, f.offset + f.length - pos});
    }
    if (found_any) fragments.swap(next);
  }

  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
    } else {
      encode_text(text.substr(f.offset, f.length), out);
    }
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

}  // namespace skim
