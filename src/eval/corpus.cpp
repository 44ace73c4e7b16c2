#include "eval/corpus.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "skim/paths.h"

namespace skim::eval {
namespace {

// Fallback prose when the haystack cache is absent (written for skim).
constexpr std::string_view kBuiltinEssay =
    "The town library opens at nine in the morning and closes at six. Most visitors come for the newspapers, "
    "which are kept on a long oak table by the window. On rainy days the reading room fills up quickly, and "
    "the librarian brings out extra chairs from the storeroom. Children are welcome in the afternoon, when a "
    "volunteer reads stories aloud in the corner near the maps. The building itself is older than the railway "
    "station, and its roof was repaired twice in the last century. A small garden behind it grows herbs that "
    "the neighbours are free to pick. In winter the garden is covered with straw, and the path is swept every "
    "morning before the doors open. Few people know that the clock above the entrance was a gift from a "
    "retired sailor. He wound it himself every Sunday until he moved away to live with his daughter. Since "
    "then the caretaker has kept it running, and it is rarely more than a minute late.\n\n";

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool is_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// A period after these words (or after a single letter, as in initials) does not end a sentence.
bool is_abbreviation(std::string_view word) {
  static constexpr std::array<std::string_view, 22> kAbbreviations = {
      "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "Gen", "Col", "Capt",
      "Lt", "Rev", "Hon", "Gov", "Sen", "Rep", "No", "vs", "etc", "Co", "Inc"};
  return word.size() == 1 || std::find(kAbbreviations.begin(), kAbbreviations.end(), word) != kAbbreviations.end();
}

// Whether a sentence starts at text[i]: a non-space character after whitespace
// that follows a newline or a sentence end.
bool starts_sentence(std::string_view t, size_t i) {
  if (i == 0) return !t.empty() && !is_space(t[0]);
  if (i >= t.size() || is_space(t[i]) || !is_space(t[i - 1])) return false;
  size_t j = i;
  while (j > 0 && is_space(t[j - 1]))
    if (t[--j] == '\n') return true;
  if (j == 0) return true;
  size_t k = j - 1;  // last character before the whitespace
  // Skip closing quotes and brackets, ASCII or UTF-8 (’ ” are E2 80 99 / E2 80 9D).
  for (;;) {
    if (k > 0 && (t[k] == '"' || t[k] == '\'' || t[k] == ')' || t[k] == ']')) {
      --k;
    } else if (k >= 3 && t[k - 2] == '\xE2' && t[k - 1] == '\x80' && (t[k] == '\x99' || t[k] == '\x9D')) {
      k -= 3;
    } else {
      break;
    }
  }
  if (t[k] == '!' || t[k] == '?') return true;
  if (t[k] != '.') return false;
  size_t w = k;
  while (w > 0 && is_letter(t[w - 1])) --w;
  return !is_abbreviation(t.substr(w, k - w));
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read {}: run scripts/fetch-haystack --force", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Pronounceable pseudo-words (consonant-vowel-consonant-vowel), for the fallback word list.
std::vector<std::string> builtin_words() {
  constexpr std::string_view kConsonants = "bdfgklmnprstvz", kVowels = "aeiou";
  std::vector<std::string> words;
  for (char a : kConsonants)
    for (char b : kVowels)
      for (char c : kConsonants)
        for (char d : kVowels) words.push_back({a, b, c, d});
  return words;
}

}  // namespace

std::filesystem::path Corpus::default_dir() { return paths::cache_dir() / "haystack"; }

Corpus Corpus::builtin() {
  Corpus c;
  c.essay = kBuiltinEssay;
  c.words = builtin_words();
  return c;
}

Corpus Corpus::load(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "sources.json")) return builtin();
  Corpus c;
  c.cached = true;
  c.austen = read_text(dir / "austen.txt");
  c.essay = read_text(dir / "sotu.txt") + "\n" + c.austen + "\n";
  std::istringstream words(read_text(dir / "words.txt"));
  for (std::string w; std::getline(words, w);)
    if (!w.empty()) c.words.push_back(w);
  if (c.austen.size() < (1u << 20) || c.essay.size() < (4u << 20) || c.words.size() < 10000)
    throw std::runtime_error(fmt::format("the haystack texts in {} are truncated: run scripts/fetch-haystack --force", dir.string()));
  return c;
}

std::string take_text(std::string_view src, size_t start, size_t chars) {
  if (src.empty()) throw std::invalid_argument("take_text: empty source text");
  std::string out;
  out.reserve(chars);
  size_t p = start % src.size();
  while (out.size() < chars) {
    const size_t n = std::min(chars - out.size(), src.size() - p);
    out.append(src.substr(p, n));
    p = (p + n) % src.size();
  }
  if (!out.empty() && !is_space(src[p])) {  // the cut fell inside a word
    const size_t last_space = out.find_last_of(" \n\t\r");
    out.resize(last_space == std::string::npos ? 0 : last_space);
  }
  while (!out.empty() && is_space(out.back())) out.pop_back();
  return out;
}

size_t next_sentence_start(std::string_view src, size_t pos) {
  for (size_t i = pos; i < src.size(); ++i)
    if (starts_sentence(src, i)) return i;
  return src.size();
}

std::vector<size_t> sentence_boundaries(std::string_view text) {
  std::vector<size_t> out{0};
  for (size_t i = 1; i < text.size(); ++i)
    if (starts_sentence(text, i)) out.push_back(i);
  if (text.size() > 0) out.push_back(text.size());
  return out;
}

}  // namespace skim::eval
