#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace skim::unicode {
namespace {

// Class bytes of the Basic Multilingual Plane, expanded from the range table
// once: almost all text lives there and a direct lookup keeps the
// pre-tokenizer fast. Code points above it use a binary search.
struct BmpTable {
  std::array<uint8_t, 0x10000> bits{};
  BmpTable() {
    for (size_t i = 0; i < kClassRangeCount; ++i) {
      const uint32_t first = kClassRanges[i].first;
      if (first >= 0x10000) break;
      const uint32_t end = i + 1 < kClassRangeCount ? std::min<uint32_t>(kClassRanges[i + 1].first, 0x10000) : 0x10000;
      std::fill(bits.begin() + first, bits.begin() + end, kClassRanges[i].bits);
    }
  }
};

const BmpTable& bmp_table() {
  static const BmpTable table;
  return table;
}

// Strict UTF-8 check of the sequence starting at p[0] (n >= 1 bytes available).
// Returns its length if complete and well formed, 0 if it is a well-formed
// start that needs more bytes, -1 if p[0] cannot start a character here.
int check_sequence(const uint8_t* p, size_t n, uint32_t* cp_out) {
  const uint8_t lead = p[0];
  if (lead < 0x80) {
    *cp_out = lead;
    return 1;
  }
  int len;
  uint32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    len = 2;
    cp = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    len = 3;
    cp = lead & 0x0F;
    if (lead == 0xE0) lo = 0xA0;  // no overlong forms
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    len = 4;
    cp = lead & 0x07;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int i = 1; i < len; ++i) {
    if (static_cast<size_t>(i) >= n) return 0;
    const uint8_t b = p[i];
    const uint8_t min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) return -1;
    cp = (cp << 6) | (b & 0x3F);
  }
  *cp_out = cp;
  return len;
}

}  // namespace

uint8_t class_bits(uint32_t cp) {
  if (cp < 0x10000) return bmp_table().bits[cp];
  if (cp > kMaxCodepoint) return static_cast<uint8_t>(CharClass::Undefined);
  const ClassRange* end = kClassRanges + kClassRangeCount;
  const ClassRange* it = std::upper_bound(kClassRanges, end, cp,
                                          [](uint32_t value, const ClassRange& r) { return value < r.first; });
  return (it - 1)->bits;
}

size_t utf8_sequence_length(uint8_t lead) {
  if (lead >= 0xF0 && lead <= 0xF7) return 4;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xC0 && lead <= 0xDF) return 2;
  return 1;
}

std::vector<uint32_t> decode_utf8(std::string_view text) {
  // Deliberately as permissive as llama.cpp's decoder (overlong forms and
  // surrogates pass through) so both see the same code points; only bytes
  // that do not begin a structurally complete sequence become U+FFFD.
  std::vector<uint32_t> cps;
  cps.reserve(text.size());
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t lead = p[i];
    if (lead < 0x80) {
      cps.push_back(lead);
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if (lead >= 0xC0 && lead <= 0xDF) {
      len = 2;
      cp = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      len = 3;
      cp = lead & 0x0F;
    } else if (lead >= 0xF0 && lead <= 0xF7) {
      len = 4;
      cp = lead & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok && cp <= kMaxCodepoint) {
      cps.push_back(cp);
      i += len;
    } else {
      cps.push_back(kReplacementChar);
      ++i;
    }
  }
  return cps;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t complete_utf8_prefix(std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    uint32_t cp;
    const int len = check_sequence(p + i, n - i, &cp);
    if (len == 0) break;  // a character still waiting for its last bytes
    i += len > 0 ? static_cast<size_t>(len) : 1;
  }
  return i;
}

std::string sanitize_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    uint32_t cp;
    const int len = check_sequence(p + i, n - i, &cp);
    if (len > 0) {
      out.append(bytes.substr(i, static_cast<size_t>(len)));
      i += static_cast<size_t>(len);
    } else {
      append_utf8(out, kReplacementChar);
      ++i;
    }
  }
  return out;
}

}  // namespace skim::unicode
