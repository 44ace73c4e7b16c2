#include "tokenizer/spm_tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <queue>
#include <stdexcept>

#include <fmt/format.h>

namespace skim {
namespace {

constexpr const char* kModelKey = "tokenizer.ggml.model";
constexpr const char* kScoresKey = "tokenizer.ggml.scores";
constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581: SentencePiece writes spaces as this

// Bytes of the character a lead byte starts, by its high nibble, as llama.cpp's
// unicode_len_utf8 counts them (0xF8..0xFF count as 4, unlike
// unicode::utf8_sequence_length): symbols must split where llama.cpp's do.
size_t char_length(uint8_t lead) {
  static constexpr uint8_t kLength[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLength[lead >> 4];
}

const GgufFile& require_spm(const GgufFile& file) {
  const std::string model = file.get_string(kModelKey);
  if (model != "llama")
    throw GgufError(fmt::format("{}: {} = '{}' is not a SentencePiece vocabulary", file.path(), kModelKey, model));
  return file;
}

}  // namespace

// llama.cpp's SPM defaults: BOS 1, EOS 2, UNK 0, BOS added, space prefix added.
SpmTokenizer::SpmTokenizer(const GgufFile& file)
    : vocab_(require_spm(file), VocabDefaults{.bos = 1, .eos = 2, .unk = 0, .add_bos = true}) {
  const int32_t n = vocab_.size();
  scores_.assign(static_cast<size_t>(n), 0.0f);
  if (file.has(kScoresKey)) {
    const std::vector<double> scores = file.get_float_array(kScoresKey);
    if (scores.size() < scores_.size())
      throw GgufError(fmt::format("{}: {} has {} entries but the vocabulary has {} tokens", file.path(), kScoresKey,
                                  scores.size(), scores_.size()));
    for (size_t i = 0; i < scores_.size(); ++i) scores_[i] = static_cast<float>(scores[i]);
  }
  pre_ = file.get_string("tokenizer.ggml.pre", "");
  if (pre_.empty()) pre_ = "default";
  add_space_prefix_ = file.get_bool("tokenizer.ggml.add_space_prefix", true);

  // llama_vocab::byte_to_token: "<0xXX>", else the byte itself as a token.
  for (int b = 0; b < 256; ++b) {
    byte_tokens_[b] = vocab_.find(fmt::format("<0x{:02X}>", b));
    if (byte_tokens_[b] < 0) byte_tokens_[b] = vocab_.find(std::string(1, static_cast<char>(b)));
  }

  // Bytes that some token has right before a U+2581 (encode_fragment cuts elsewhere).
  for (int32_t id = 0; id < n; ++id) {
    const std::string& text = vocab_.text(id);
    for (size_t at = text.find(kSpaceMark, 1); at != std::string::npos; at = text.find(kSpaceMark, at + 1))
      joins_space_[static_cast<uint8_t>(text[at - 1])] = true;
  }

  // llama_vocab::impl::token_to_piece with special = true, for every token.
  pieces_.resize(static_cast<size_t>(n));
  for (int32_t id = 0; id < n; ++id) {
    const std::string& text = vocab_.text(id);
    std::string& piece = pieces_[id];
    switch (vocab_.type(id)) {
      case TokenType::Control:
      case TokenType::Unknown:
      case TokenType::UserDefined: piece = text; break;
      case TokenType::Normal:
        for (size_t at = 0; at < text.size();) {
          if (std::string_view(text).substr(at, kSpaceMark.size()) == kSpaceMark) {
            piece += ' ';
            at += kSpaceMark.size();
          } else {
            piece += text[at++];
          }
        }
        break;
      case TokenType::Byte: {
        // The two characters after "<0x", read as strtol reads them.
        const std::string hex = text.size() >= 3 ? text.substr(3, 2) : std::string();
        piece.push_back(static_cast<char>(std::strtol(hex.c_str(), nullptr, 16)));
        break;
      }
      case TokenType::Unused:
      case TokenType::Undefined: break;  // no text, like a control token
    }
  }
}

TokenType SpmTokenizer::token_type(int32_t id) const {
  vocab_.check_id(id);
  return vocab_.type(id);
}

float SpmTokenizer::score(int32_t id) const {
  vocab_.check_id(id);
  return scores_[id];
}

const std::string& SpmTokenizer::token_text(int32_t id) const {
  vocab_.check_id(id);
  return vocab_.text(id);
}

std::string SpmTokenizer::token_to_piece(int32_t id, bool special) const {
  vocab_.check_id(id);
  const TokenType type = vocab_.type(id);
  if (!special && (type == TokenType::Control || type == TokenType::Unknown)) return {};
  return pieces_[id];
}

std::string SpmTokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = token_to_piece(ids[i], special);
    // llama_detokenize strips one space from the first token only (when that
    // is BOS, there is nothing to strip and the space of the next one stays).
    const bool strip = i == 0 && add_space_prefix_ && !piece.empty() && piece.front() == ' ';
    text.append(piece, strip ? 1 : 0);
  }
  return text;
}

void SpmTokenizer::append_bytes(std::string_view symbol, std::vector<int32_t>& out) const {
  for (char c : symbol) {
    const int32_t id = byte_tokens_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      out.push_back(id);
    } else if (vocab_.unk() >= 0) {
      // llama.cpp throws here (the vocabulary cannot spell the byte);
      // SentencePiece itself gives the unknown token.
      out.push_back(vocab_.unk());
    } else {
      throw std::runtime_error(
          fmt::format("tokenizer: byte 0x{:02X} has no token and the vocabulary has no unknown token",
                      static_cast<uint8_t>(c)));
    }
  }
}

// llm_tokenizer_spm_session::tokenize: the text's characters are symbols;
// the adjacent pair whose concatenation is the highest-scoring token merges
// first (the leftmost among equal scores) until no pair forms a token. A
// symbol that is no token (a character outside the vocabulary) becomes its
// byte tokens.
//
// llama.cpp runs one queue over the whole fragment. Here the fragment is cut
// before each U+2581 that no token joins to the byte before it: no token, so
// no merge, can span such a cut, and the pieces between cuts merge exactly as
// they would in one queue (each merge only touches its neighbours), with
// small queues.
void SpmTokenizer::encode_fragment(std::string_view raw, bool space_prefix, std::vector<int32_t>& out) const {
  std::string text;
  text.reserve(raw.size() + 16);
  if (space_prefix) text += kSpaceMark;
  for (char c : raw) {
    if (c == ' ') {
      text += kSpaceMark;
    } else {
      text += c;
    }
  }
  if (text.size() > static_cast<size_t>(INT32_MAX))
    throw std::length_error(fmt::format("tokenizer: a {}-byte text fragment is too long to encode", raw.size()));
  const std::string_view view(text);

  struct Symbol {
    int32_t prev, next;
    uint32_t start, length;  // length 0: merged into its left neighbour
    int32_t id;              // token of the text, -1 if not known to be one
  };
  struct Bigram {
    float score;
    int32_t left, right;
    uint32_t size;
    int32_t id;
  };
  // llm_bigram_spm::comparator: best score on top, then the leftmost pair.
  auto lower_priority = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower_priority)> queue(lower_priority);
  std::vector<Symbol> symbols;
  const size_t max_length = vocab_.max_text_length();
  auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const size_t size = symbols[left].length + symbols[right].length;
    if (size > max_length) return;  // longer than any token
    const int32_t id = vocab_.find(view.substr(symbols[left].start, size));
    if (id >= 0) queue.push({scores_[id], left, right, static_cast<uint32_t>(size), id});
  };

  size_t at = 0;
  while (at < text.size()) {
    // One piece: characters up to the next cut.
    symbols.clear();
    do {
      const size_t length = std::min(char_length(static_cast<uint8_t>(text[at])), text.size() - at);
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({index - 1, index + 1, static_cast<uint32_t>(at), static_cast<uint32_t>(length), -1});
      at += length;
    } while (at < text.size() && !(view.substr(at, kSpaceMark.size()) == kSpaceMark &&
                                    !joins_space_[static_cast<uint8_t>(text[at - 1])]));
    symbols.back().next = -1;

    for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.left];
      Symbol& right = symbols[top.right];
      // Stale: one side has merged since (sizes only grow, so equal sizes mean unchanged).
      if (left.length == 0 || right.length == 0 || left.length + right.length != top.size) continue;
      left.length += right.length;
      left.id = top.id;
      right.length = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.left;
      try_add(left.prev, top.left);
      try_add(top.left, left.next);
    }

    for (int32_t i = 0; i != -1; i = symbols[i].next) {
      const Symbol& s = symbols[i];
      const std::string_view piece = view.substr(s.start, s.length);
      const int32_t id = s.id >= 0 ? s.id : vocab_.find(piece);
      if (id >= 0) {
        out.push_back(id);
      } else {
        append_bytes(piece, out);
      }
    }
  }
}

std::vector<int32_t> SpmTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && vocab_.add_bos()) out.push_back(vocab_.bos());
  // The space prefix goes before text that starts the input or follows a special token.
  bool after_special = true;
  for (const Vocabulary::Fragment& f : vocab_.partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
    } else {
      encode_fragment(text.substr(f.offset, f.length), add_space_prefix_ && after_special, out);
      after_special = false;
    }
  }
  if (add_special && vocab_.add_eos()) out.push_back(vocab_.eos());
  return out;
}

}  // namespace skim
