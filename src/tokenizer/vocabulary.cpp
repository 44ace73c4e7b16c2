#include "tokenizer/vocabulary.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace skim {
namespace {

constexpr const char* kTokensKey = "tokenizer.ggml.tokens";
constexpr const char* kTypesKey = "tokenizer.ggml.token_type";

constexpr uint8_t kLstrip = 1, kRstrip = 2;

// Texts of tokens that end generation (llama.cpp's list in
// llama_vocab::impl::load); a token with one of them becomes a control token
// even where the file marks it otherwise (Gemma 3's user-defined "</s>").
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",  // DeepSeek, full-width bars
    "[e~[",
};

// Special roles that llama.cpp looks up by text when the metadata names no
// id; the token found becomes a control token. Where several texts exist it
// takes the first in its hash map's order; skim takes the lowest id.
struct Role {
  std::array<const char*, 2> keys;  // metadata keys, the later one wins (a deprecated alias)
  std::array<std::string_view, 11> texts;
  bool eog;  // the token ends generation
};
const Role kRoles[] = {
    {{"tokenizer.ggml.eot_token_id"},
     {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
      "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "<end_of_utterance>"},
     true},
    {{"tokenizer.ggml.eom_token_id"}, {"<|eom_id|>"}, true},
    {{"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"},
     {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
      "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"},
     false},
    {{"tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"},
     {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>",
      "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"},
     false},
    {{"tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"},
     {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>",
      "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"},
     false},
    {{"tokenizer.ggml.fim_pad_token_id"}, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}, true},
    {{"tokenizer.ggml.fim_rep_token_id"},
     {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
     true},
    {{"tokenizer.ggml.fim_sep_token_id"}, {"<|file_sep|>"}, true},
};

bool contains(const auto& list, std::string_view text) {
  return std::find(std::begin(list), std::end(list), text) != std::end(list);
}

// A fast hash of a short string (tokens are a few bytes): 8-byte words
// through a multiply-xorshift mix.
uint64_t text_hash(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  auto mix = [&](uint64_t word) {
    h = (h ^ word) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  };
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, s.data() + i, 8);
    mix(word);
  }
  if (i < s.size()) {
    uint64_t word = 0;
    std::memcpy(&word, s.data() + i, s.size() - i);
    mix(word);
  }
  h *= 0x94D049BB133111EBull;
  return h ^ (h >> 32);
}

// A token id from the metadata; -1 if the key is absent.
int32_t metadata_id(const GgufFile& file, const char* key, int32_t n_tokens) {
  if (!file.has(key)) return -1;
  const int64_t id = file.get_int(key);
  if (id < 0 || id >= n_tokens)
    throw GgufError(fmt::format("{}: {} = {} is outside the vocabulary (0..{})", file.path(), key, id, n_tokens - 1));
  return static_cast<int32_t>(id);
}

// C isspace in the "C" locale, which llama.cpp's lstrip/rstrip use.
bool is_c_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

}  // namespace

Vocabulary::Vocabulary(const GgufFile& file, const VocabDefaults& defaults) {
  if (!file.has(kTokensKey)) throw GgufError(fmt::format("{}: missing metadata key '{}'", file.path(), kTokensKey));
  texts_ = file.get_string_array(kTokensKey);
  if (texts_.empty()) throw GgufError(fmt::format("{}: {} is empty", file.path(), kTokensKey));
  if (texts_.size() > static_cast<size_t>(INT32_MAX))
    throw GgufError(fmt::format("{}: {} has {} entries, too many", file.path(), kTokensKey, texts_.size()));
  const int32_t n = size();

  types_.assign(texts_.size(), TokenType::Normal);
  if (file.has(kTypesKey)) {
    const std::vector<int64_t> types = file.get_int_array(kTypesKey);
    if (types.size() < texts_.size())
      throw GgufError(fmt::format("{}: {} has {} entries but the vocabulary has {} tokens", file.path(), kTypesKey,
                                  types.size(), texts_.size()));
    for (size_t i = 0; i < texts_.size(); ++i) {
      const int64_t t = types[i];
      types_[i] = t >= 1 && t <= 6 ? static_cast<TokenType>(t) : TokenType::Undefined;
    }
  }

  slots_.assign(std::bit_ceil(texts_.size() * 2), 0);
  const size_t mask = slots_.size() - 1;
  for (int32_t id = 0; id < n; ++id) {
    // An empty entry would match everywhere; give it a name no input has (as llama.cpp does).
    if (texts_[id].empty()) texts_[id] = fmt::format("[EMPTY_{}]", id);
    max_text_length_ = std::max(max_text_length_, texts_[id].size());
    const uint64_t h = text_hash(texts_[id]);
    for (size_t at = h & mask;; at = (at + 1) & mask) {
      uint64_t& slot = slots_[at];
      const auto other = static_cast<int32_t>(slot & 0xFFFFFFFFu) - 1;
      if (slot == 0 || ((slot >> 32) == (h >> 32) && texts_[other] == texts_[id])) {
        slot = (h >> 32 << 32) | static_cast<uint32_t>(id + 1);  // a duplicated text resolves to its last id
        break;
      }
    }
  }

  auto read_id = [&](const char* key, int32_t fallback) {
    return file.has(key) ? metadata_id(file, key, n) : fallback >= 0 && fallback < n ? fallback : -1;
  };
  bos_ = read_id("tokenizer.ggml.bos_token_id", defaults.bos);
  eos_ = read_id("tokenizer.ggml.eos_token_id", defaults.eos);
  unk_ = read_id("tokenizer.ggml.unknown_token_id", defaults.unk);
  add_bos_ = file.get_bool("tokenizer.ggml.add_bos_token", defaults.add_bos);
  add_eos_ = file.get_bool("tokenizer.ggml.add_eos_token", false);
  if (add_bos_ && bos_ < 0)
    throw GgufError(fmt::format("{}: BOS is to be added (tokenizer.ggml.add_bos_token) but there is no bos_token_id",
                                file.path()));
  if (add_eos_ && eos_ < 0)
    throw GgufError(fmt::format("{}: tokenizer.ggml.add_eos_token is set but there is no eos_token_id", file.path()));
  chat_template_ = file.get_string("tokenizer.chat_template", "");

  mark_special_tokens(file);
  for (int32_t id = 0; id < n; ++id) {
    const TokenType t = types_[id];
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) specials_.push_back(id);
  }
  // llama.cpp orders them with std::sort (not stable): the same call gives the
  // same order among equally long texts, which decides overlapping matches.
  std::sort(specials_.begin(), specials_.end(),
            [&](int32_t a, int32_t b) { return texts_[a].size() > texts_[b].size(); });
  set_strip_flags(file);
  build_special_index();
}

// The fixes llama.cpp applies to the file's token types and special ids
// (llama_vocab::impl::load), in its order.
void Vocabulary::mark_special_tokens(const GgufFile& file) {
  const int32_t n = size();
  eog_.assign(texts_.size(), false);
  std::vector<int32_t> role_ids;
  for (const Role& role : kRoles) {
    int32_t id = -1;
    for (const char* key : role.keys) {
      if (key && file.has(key)) id = metadata_id(file, key, n);
    }
    if (id < 0) {
      for (std::string_view text : role.texts) {
        if (text.empty()) break;
        if (const int32_t found = find(text); found >= 0 && (id < 0 || found < id)) id = found;
      }
      if (id >= 0) types_[id] = TokenType::Control;
    }
    role_ids.push_back(id);
    if (id >= 0 && role.eog) eog_[id] = true;
  }
  eot_ = role_ids[0];
  eom_ = role_ids[1];

  for (int32_t id = 0; id < n; ++id) {
    if (!contains(kEogTexts, texts_[id])) continue;
    eog_[id] = true;
    types_[id] = TokenType::Control;
  }
  // gpt-oss: its channel markers are always rendered.
  for (std::string_view text : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    if (const int32_t id = find(text); id >= 0) types_[id] = TokenType::UserDefined;
  }
  if (eos_ >= 0) eog_[eos_] = true;

  // Vocabularies where a usual end marker is an ordinary token: o200k_harmony
  // and solar-open ("<|end|>" ends a message, not the generation), Gemma 4 and
  // PLaMo 2 ("</s>").
  auto eog_has = [&](std::string_view text) {
    const int32_t id = find(text);
    return id >= 0 && eog_[id];
  };
  const bool has_call = eog_has("<|call|>") || eog_has("<|calls|>");
  if (eog_has("<|end|>") && has_call && (eog_has("<|return|>") || eog_has("<|flush|>"))) {
    const int32_t id = find("<|end|>");
    eog_[id] = false;
    types_[id] = TokenType::UserDefined;
  }
  if (eog_has("</s>") && (eog_has("<|tool_response>") || eog_has("<|plamo:eos|>"))) {
    const int32_t id = find("</s>");
    eog_[id] = false;
    types_[id] = TokenType::Normal;
  }
}

// Per-model lstrip/rstrip attributes of special tokens (llama.cpp sets them
// by model name; none apply to the models skim tests).
void Vocabulary::set_strip_flags(const GgufFile& file) {
  strip_.assign(texts_.size(), 0);
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  auto contains_any = [](const std::string& s, std::initializer_list<std::string_view> parts) {
    return std::any_of(parts.begin(), parts.end(), [&](std::string_view p) { return s.find(p) != std::string::npos; });
  };
  auto set = [&](std::string_view text, uint8_t flag, bool on) {
    if (const int32_t id = find(text); id >= 0) strip_[id] = on ? (strip_[id] | flag) : (strip_[id] & ~flag);
  };
  const std::string pre = file.get_string("tokenizer.ggml.pre", "");
  const std::string arch = file.get_string("general.architecture", "");
  const std::string name = lower(file.get_string("general.name", ""));
  if (contains_any(pre, {"jina-v2-de", "jina-v2-es", "jina-v2-code"}) ||
      contains_any(arch, {"nomic-bert-moe", "jina-bert-v3"})) {
    set("<mask>", kLstrip, true);
  } else if (contains_any(name, {"phi-3", "phi3"})) {
    for (int32_t id : specials_) strip_[id] |= kRstrip;
    set("</s>", kRstrip, true);
    for (std::string_view text : {"<unk>", "<s>", "<|endoftext|>"}) set(text, kRstrip, false);
  } else if (contains_any(name, {"modern-bert"})) {
    set("[MASK]", kLstrip, true);
  }
}

void Vocabulary::build_special_index() {
  trie_.assign(1, TrieNode{});
  trie_root_.fill(-1);
  special_node_.clear();
  for (int32_t id : specials_) {
    int32_t node = 0;
    for (char ch : texts_[id]) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t child = -1;
      if (node == 0) {
        child = trie_root_[b];
      } else {
        for (const auto& [c, next] : trie_[node].children)
          if (c == b) child = next;
      }
      if (child < 0) {
        child = static_cast<int32_t>(trie_.size());
        trie_.emplace_back();
        if (node == 0) {
          trie_root_[b] = child;
        } else {
          trie_[node].children.emplace_back(b, child);
        }
      }
      node = child;
    }
    trie_[node].terminal = true;
    special_node_.push_back(node);
  }
}

std::vector<bool> Vocabulary::occurring_specials(std::string_view text) const {
  std::vector<bool> seen(trie_.size(), false);
  for (size_t start = 0; start < text.size(); ++start) {
    int32_t node = trie_root_[static_cast<uint8_t>(text[start])];
    for (size_t i = start + 1; node >= 0; ++i) {
      if (trie_[node].terminal) seen[node] = true;
      if (i == text.size()) break;
      const auto b = static_cast<uint8_t>(text[i]);
      int32_t next = -1;
      for (const auto& [c, child] : trie_[node].children)
        if (c == b) next = child;
      node = next;
    }
  }
  return seen;
}

int32_t Vocabulary::find(std::string_view text) const {
  const uint64_t h = text_hash(text);
  const size_t mask = slots_.size() - 1;
  for (size_t at = h & mask;; at = (at + 1) & mask) {
    const uint64_t slot = slots_[at];
    if (slot == 0) return -1;
    const auto id = static_cast<int32_t>(slot & 0xFFFFFFFFu) - 1;
    if ((slot >> 32) == (h >> 32) && texts_[id] == text) return id;
  }
}

void Vocabulary::check_id(int32_t id) const {
  if (id < 0 || id >= size())
    throw std::out_of_range(fmt::format("token id {} is outside the vocabulary (0..{})", id, size() - 1));
}

std::vector<Vocabulary::Fragment> Vocabulary::partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({-1, 0, text.size()});
  if (specials_.empty()) return fragments;
  // A special that occurs nowhere in the text cannot split any fragment of it.
  const std::vector<bool> occurs = occurring_specials(text);
  std::vector<Fragment> next;
  for (size_t s = 0; s < specials_.size(); ++s) {
    const int32_t special = specials_[s];
    if (!occurs[special_node_[s]]) continue;
    if (!parse_special && types_[special] != TokenType::UserDefined) continue;
    const std::string& needle = texts_[special];
    const bool lstrip = strip_[special] & kLstrip, rstrip = strip_[special] & kRstrip;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t base = f.offset, length = f.length;
      while (true) {
        const size_t match = text.substr(0, base + length).find(needle, base);
        if (match == std::string_view::npos) {
          if (length > 0) next.push_back({-1, base, length});
          break;
        }
        size_t left = match - base;
        if (lstrip)
          while (left > 0 && is_c_space(text[base + left - 1])) --left;
        if (left > 0) next.push_back({-1, base, left});
        next.push_back({special, match, needle.size()});
        size_t right = match + needle.size(), right_length = base + length - right;
        if (right_length == 0) break;
        if (rstrip)
          while (right_length > 0 && is_c_space(text[right])) ++right, --right_length;
        base = right;
        length = right_length;
      }
    }
    fragments.swap(next);
  }
  return fragments;
}

}  // namespace skim
