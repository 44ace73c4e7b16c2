// The texts the eval tasks are built from: public-domain prose for needle
// haystacks and perplexity (fetched by scripts/fetch-haystack), a word list
// for keys, and a built-in fallback so that nothing needs the network.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace skim::eval {

// The classic passkey / RULER "noise" filler.
inline constexpr std::string_view kNoiseLine =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

struct Corpus {
  std::string essay;               // needle haystack prose: State of the Union addresses, then Austen
  std::string austen;              // long coherent text for perplexity; empty without the cache
  std::vector<std::string> words;  // distinct lowercase words for keys and word lists
  bool cached = false;             // false: the built-in fallback

  // The texts under `dir` (default: <cache>/haystack), or the fallback when
  // they are missing. Throws if they are present but unreadable or too small.
  static Corpus load(const std::filesystem::path& dir = default_dir());
  static Corpus builtin();
  static std::filesystem::path default_dir();
};

// About `chars` characters of `src` read from `start` on, wrapping around at
// its end, cut back to whole words (no trailing whitespace).
std::string take_text(std::string_view src, size_t start, size_t chars);

// Offset of the first sentence start at or after `pos` (src.size() if none).
size_t next_sentence_start(std::string_view src, size_t pos);

// Offsets where a sentence may be inserted: 0, every sentence start (after
// ". ", "! ", "? " with optional closing quotes, except after common
// abbreviations such as "Mr."; and after a newline), and text.size().
std::vector<size_t> sentence_boundaries(std::string_view text);

}  // namespace skim::eval
