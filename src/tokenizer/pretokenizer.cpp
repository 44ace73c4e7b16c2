#include "tokenizer/pretokenizer.h"

#include <algorithm>
#include <string>

#include "skim/gguf.h"
#include "tokenizer/unicode.h"

namespace skim {
namespace {

using unicode::CharClass;

// Text as code points with their class bytes, and the current split into
// pieces (lengths in code points); each pass refines every piece on its own,
// so no match ever crosses a boundary made by an earlier pass.
struct SplitState {
  std::vector<uint32_t> cps;
  std::vector<uint8_t> bits;
  std::vector<size_t> pieces;
};

constexpr uint8_t kLetter = static_cast<uint8_t>(CharClass::Letter);
constexpr uint8_t kNumber = static_cast<uint8_t>(CharClass::Number);

// Per-piece cursor with out-of-range reads answering "nothing here", which is
// how the regexes' lookaheads see the end of a piece.
class Cursor {
 public:
  Cursor(const SplitState& s, size_t begin, size_t end) : s_(s), begin_(begin), end_(end) {}
  bool in_range(size_t pos) const { return pos >= begin_ && pos < end_; }
  uint32_t cp(size_t pos) const { return in_range(pos) ? s_.cps[pos] : kNone; }
  bool letter(size_t pos) const { return in_range(pos) && (s_.bits[pos] & 0x07) == kLetter; }
  bool number(size_t pos) const { return in_range(pos) && (s_.bits[pos] & 0x07) == kNumber; }
  bool space(size_t pos) const { return in_range(pos) && (s_.bits[pos] & unicode::kWhitespaceBit); }
  // [^\s\p{L}\p{N}]
  bool other(size_t pos) const { return in_range(pos) && !space(pos) && !letter(pos) && !number(pos); }
  size_t end() const { return end_; }

  static constexpr uint32_t kNone = 0xFFFFFFFF;

 private:
  const SplitState& s_;
  size_t begin_, end_;
};

uint32_t ascii_lower(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp; }

// Length of a contraction ('s 't 're 've 'm 'll 'd) at pos, 0 if none.
size_t contraction_length(const Cursor& c, size_t pos, bool any_case) {
  if (c.cp(pos) != '\'' || !c.in_range(pos + 1)) return 0;
  auto fold = [&](uint32_t cp) { return any_case ? ascii_lower(cp) : cp; };
  const uint32_t next = fold(c.cp(pos + 1));
  if (next == 's' || next == 't' || next == 'm' || next == 'd') return 2;
  if (!c.in_range(pos + 2)) return 0;
  const uint32_t next2 = fold(c.cp(pos + 2));
  if ((next == 'r' && next2 == 'e') || (next == 'v' && next2 == 'e') || (next == 'l' && next2 == 'l')) return 3;
  return 0;
}

// Runs `split_piece(cursor, emit)` on every piece, collecting the new pieces.
template <typename SplitPiece>
void refine(SplitState& s, SplitPiece split_piece) {
  std::vector<size_t> out;
  out.reserve(s.pieces.size() * 2);
  size_t begin = 0;
  for (size_t len : s.pieces) {
    const size_t end = begin + len;
    Cursor c(s, begin, end);
    size_t prev_end = begin;
    auto emit = [&](size_t token_end) {
      if (token_end > prev_end) out.push_back(token_end - prev_end);
      prev_end = token_end;
    };
    split_piece(c, begin, emit);
    emit(end);
    begin = end;
  }
  s.pieces = std::move(out);
}

void split_gpt2(SplitState& s) {
  refine(s, [](const Cursor& c, size_t pos, auto& emit) {
    while (pos < c.end()) {
      if (size_t n = contraction_length(c, pos, /*any_case=*/false)) {
        pos += n;
        emit(pos);
        continue;
      }
      // An optional leading space joins a following letter/number/other run.
      const bool lead_space = c.cp(pos) == ' ';
      const size_t run = lead_space ? pos + 1 : pos;
      if (c.letter(run)) {
        pos = run;
        while (c.letter(pos)) ++pos;
        emit(pos);
        continue;
      }
      if (c.number(run)) {
        pos = run;
        while (c.number(pos)) ++pos;
        emit(pos);
        continue;
      }
      if (c.other(run)) {
        pos = run;
        while (c.other(pos)) ++pos;
        emit(pos);
        continue;
      }
      size_t n_space = 0;
      while (c.space(pos + n_space)) ++n_space;
      if (n_space > 1 && c.in_range(pos + n_space)) {
        pos += n_space - 1;  // \s+(?!\S): the last space goes with the next word
      } else if (n_space > 0) {
        pos += n_space;
      } else {
        ++pos;
      }
      emit(pos);
    }
  });
}

// Llama 3 and Qwen2 patterns; they differ only in how many digits group.
void split_llama3(SplitState& s, size_t max_digits) {
  refine(s, [max_digits](const Cursor& c, size_t pos, auto& emit) {
    while (pos < c.end()) {
      if (size_t n = contraction_length(c, pos, /*any_case=*/true)) {
        pos += n;
        emit(pos);
        continue;
      }
      const uint32_t cp = c.cp(pos);
      // [^\r\n\p{L}\p{N}]?\p{L}+
      if (cp != '\r' && cp != '\n' && !c.number(pos) && (c.letter(pos) || c.letter(pos + 1))) {
        ++pos;
        while (c.letter(pos)) ++pos;
        emit(pos);
        continue;
      }
      // \p{N}{1,max_digits}
      if (c.number(pos)) {
        size_t group_begin = pos;
        while (c.number(pos)) {
          ++pos;
          if (pos - group_begin >= max_digits) {
            emit(pos);
            group_begin = pos;
          }
        }
        emit(pos);
        continue;
      }
      // " ?[^\s\p{L}\p{N}]+[\r\n]*"
      const size_t run = cp == ' ' ? pos + 1 : pos;
      if (c.other(run) || (cp == ' ' && !c.in_range(run))) {
        pos = run;
        while (c.other(pos)) ++pos;
        while (c.cp(pos) == '\r' || c.cp(pos) == '\n') ++pos;
        emit(pos);
        continue;
      }
      size_t n_space = 0, after_last_newline = 0;
      while (c.space(pos + n_space)) {
        const uint32_t w = c.cp(pos + n_space);
        ++n_space;
        if (w == '\r' || w == '\n') after_last_newline = pos + n_space;
      }
      if (after_last_newline > 0) {
        pos = after_last_newline;  // \s*[\r\n]+
      } else if (n_space > 1 && c.in_range(pos + n_space)) {
        pos += n_space - 1;  // \s+(?!\S)
      } else if (n_space > 0) {
        pos += n_space;
      } else {
        ++pos;
      }
      emit(pos);
    }
  });
}

// Isolates matches of a one-character class repeated `run` times (0: as many
// as possible); text between matches stays together, as with a regex iterator.
template <typename Pred>
void isolate(SplitState& s, Pred matches, size_t run) {
  refine(s, [&](const Cursor& c, size_t pos, auto& emit) {
    while (pos < c.end()) {
      if (!matches(c, pos)) {
        ++pos;
        continue;
      }
      size_t n = 0;
      while (matches(c, pos + n) && (run == 0 || n < run)) ++n;
      if (run != 0 && n < run) {  // too short to match: plain text
        pos += n;
        continue;
      }
      emit(pos);
      pos += n;
      emit(pos);
    }
  });
}

bool is_extra_default_punct(uint32_t cp) {
  return cp == '$' || cp == '+' || cp == '<' || cp == '=' || cp == '>' || cp == '^' || cp == '~' || cp == '|';
}

}  // namespace

PreTokenizer PreTokenizer::from_name(std::string_view name) {
  PreTokenizer p;
  p.name_ = std::string(name);
  auto is_any = [&](std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  if (is_any({"default", ""})) {
    p.passes_ = {Pass::IsolatePunctuationRuns, Pass::Gpt2, Pass::IsolateNumberRuns, Pass::IsolateAsciiDigitTriples};
  } else if (is_any({"gpt-2", "phi-2", "mpt", "olmo"})) {
    p.passes_ = {Pass::Gpt2};
  } else if (is_any({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})) {
    p.passes_ = {Pass::IsolateEachNumber, Pass::Gpt2};
  } else if (is_any({"llama3", "llama-v3", "llama-bpe", "falcon3"})) {
    p.passes_ = {Pass::Llama3};
    p.ignore_merges_ = true;
    p.default_add_bos_ = true;
  } else if (is_any({"dbrx", "smaug-bpe"})) {
    p.passes_ = {Pass::Llama3};
  } else if (is_any({"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"})) {
    p.passes_ = {Pass::Qwen2};
  } else {
    throw GgufError("tokenizer.ggml.pre = '" + p.name_ +
                    "': unsupported pre-tokenizer (supported: default, gpt-2, phi-2, mpt, olmo, smollm, starcoder, "
                    "refact, command-r, codeshell, exaone, minerva-7b, llama3, llama-v3, llama-bpe, falcon3, dbrx, "
                    "smaug-bpe, qwen2, deepseek-r1-qwen, stablelm2, megrez)");
  }
  return p;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string>& words) const {
  if (text.empty()) return;
  SplitState s;
  s.cps = unicode::decode_utf8(text);
  s.bits.resize(s.cps.size());
  for (size_t i = 0; i < s.cps.size(); ++i) s.bits[i] = unicode::class_bits(s.cps[i]);
  s.pieces = {s.cps.size()};

  auto number = [](const Cursor& c, size_t pos) { return c.number(pos); };
  for (Pass pass : passes_) {
    switch (pass) {
      case Pass::Gpt2: split_gpt2(s); break;
      case Pass::Llama3: split_llama3(s, 3); break;
      case Pass::Qwen2: split_llama3(s, 1); break;
      case Pass::IsolateEachNumber: isolate(s, number, 1); break;
      case Pass::IsolateNumberRuns: isolate(s, number, 0); break;
      case Pass::IsolateAsciiDigitTriples:
        isolate(s, [](const Cursor& c, size_t pos) { return c.cp(pos) >= '0' && c.cp(pos) <= '9'; }, 3);
        break;
      case Pass::IsolatePunctuationRuns:
        isolate(s,
                [&s](const Cursor& c, size_t pos) {
                  return c.in_range(pos) && ((s.bits[pos] & 0x07) == static_cast<uint8_t>(CharClass::Punctuation) ||
                                             is_extra_default_punct(s.cps[pos]));
                },
                0);
        break;
    }
  }

  size_t begin = 0;
  for (size_t len : s.pieces) {
    std::string word;
    word.reserve(len);
    for (size_t i = begin; i < begin + len; ++i) unicode::append_utf8(word, s.cps[i]);
    words.push_back(std::move(word));
    begin += len;
  }
}

}  // namespace skim
