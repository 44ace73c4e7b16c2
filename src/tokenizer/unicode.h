// Unicode helpers for the tokenizer: general-category classes (\p{L}, \p{N},
// ...), the White_Space property, and UTF-8 conversion that treats malformed
// input the way llama.cpp does (each bad byte becomes U+FFFD), so that token
// ids agree with it on any input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace skim::unicode {

// General-category groups; the values are fixed by gen_unicode_table.py.
enum class CharClass : uint8_t {
  Undefined = 0,  // Cn (unassigned)
  Number = 1,     // Nd Nl No
  Letter = 2,     // Lu Ll Lt Lm Lo
  Separator = 3,  // Zs Zl Zp
  Mark = 4,       // Mn Mc Me
  Punctuation = 5,
  Symbol = 6,
  Control = 7,  // Cc Cf Co Cs
};

struct ClassRange {
  uint32_t first;  // first code point of the run
  uint8_t bits;    // bits 0-2: CharClass, bit 3: White_Space
};

// Generated table (unicode_table.cpp).
extern const ClassRange kClassRanges[];
extern const size_t kClassRangeCount;
extern const char* const kUnicodeVersion;

constexpr uint32_t kMaxCodepoint = 0x10FFFF;
constexpr uint32_t kReplacementChar = 0xFFFD;
constexpr uint8_t kWhitespaceBit = 0x08;

// Class byte (CharClass | kWhitespaceBit) of a code point; Undefined above U+10FFFF.
uint8_t class_bits(uint32_t cp);

inline CharClass char_class(uint32_t cp) { return static_cast<CharClass>(class_bits(cp) & 0x07); }
inline bool is_letter(uint32_t cp) { return char_class(cp) == CharClass::Letter; }
inline bool is_number(uint32_t cp) { return char_class(cp) == CharClass::Number; }
inline bool is_punctuation(uint32_t cp) { return char_class(cp) == CharClass::Punctuation; }
inline bool is_whitespace(uint32_t cp) { return (class_bits(cp) & kWhitespaceBit) != 0; }

// Bytes of the UTF-8 sequence a lead byte announces (1 for ASCII and for bytes
// that cannot start a sequence).
size_t utf8_sequence_length(uint8_t lead);

// Decodes UTF-8 leniently: a byte that does not start a complete sequence
// becomes one U+FFFD and decoding resumes at the next byte.
std::vector<uint32_t> decode_utf8(std::string_view text);

void append_utf8(std::string& out, uint32_t cp);

// Length of the longest prefix of `bytes` made of whole UTF-8 characters or
// of bytes that can never become part of one; what follows is an incomplete
// (but so far valid) character.
size_t complete_utf8_prefix(std::string_view bytes);

// Replaces each malformed byte sequence by U+FFFD.
std::string sanitize_utf8(std::string_view bytes);

}  // namespace skim::unicode
