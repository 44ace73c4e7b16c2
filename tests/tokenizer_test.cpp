// Tokenizer tests: Unicode tables, pre-tokenizer splits, BPE and SentencePiece
// on small hand-built vocabularies, chat templates, and the real SmolLM2 /
// Qwen2.5 / Gemma 3 vocabularies with ids checked against llama.cpp (known
// answers recorded from `skim-peer tokenize`, plus a live comparison with the
// peer build).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gguf_writer.h"
#include "skim/gguf.h"
#include "skim/paths.h"
#include "skim/tokenizer.h"
#include "test_support.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/unicode.h"

namespace skim {
namespace {

namespace fs = std::filesystem;
using test::GgufWriter;
using test::WValue;
namespace gt = test::gguf_type;
using Ids = std::vector<int32_t>;

// A loaded model file and its tokenizer, shared by the tests of one model.
struct LoadedVocab {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  std::string path;
};

// Loads the cached model `name` once; a missing model fails the calling test.
const LoadedVocab& vocab(const std::string& name) {
  static std::map<std::string, std::unique_ptr<LoadedVocab>> cache;
  auto& slot = cache[name];
  if (!slot) {
    auto loaded = std::make_unique<LoadedVocab>();
    loaded->path = test::require_model(name);
    loaded->file = GgufFile::open(loaded->path);
    loaded->tok = Tokenizer::from_gguf(*loaded->file);
    slot = std::move(loaded);
  }
  return *slot;
}

constexpr const char* kSmolLm = "smollm2-135m";
constexpr const char* kQwen = "qwen2.5-coder-0.5b";
constexpr const char* kGemma = "gemma3-270m";

std::vector<std::string> split_words(std::string_view pre, std::string_view text) {
  std::vector<std::string> words;
  PreTokenizer::from_name(pre).split(text, words);
  return words;
}

// ---------------------------------------------------------------------------
// Unicode

TEST(TokenizerUnicode, ClassesFollowTheUnicodeDatabase) {
  using unicode::CharClass;
  using unicode::char_class;
  EXPECT_EQ(char_class('A'), CharClass::Letter);
  EXPECT_EQ(char_class('z'), CharClass::Letter);
  EXPECT_EQ(char_class('7'), CharClass::Number);
  EXPECT_EQ(char_class('!'), CharClass::Punctuation);
  EXPECT_EQ(char_class('$'), CharClass::Symbol);
  EXPECT_EQ(char_class(0x00E9), CharClass::Letter);    // é
  EXPECT_EQ(char_class(0x0301), CharClass::Mark);      // combining acute
  EXPECT_EQ(char_class(0x4E00), CharClass::Letter);    // 一
  EXPECT_EQ(char_class(0x0661), CharClass::Number);    // Arabic-Indic one
  EXPECT_EQ(char_class(0x00BD), CharClass::Number);    // ½
  EXPECT_EQ(char_class(0x2163), CharClass::Number);    // Roman numeral four (Nl)
  EXPECT_EQ(char_class(0x1F600), CharClass::Symbol);   // 😀
  EXPECT_EQ(char_class(0x1D400), CharClass::Letter);   // 𝐀 (outside the BMP)
  EXPECT_EQ(char_class(0x20000), CharClass::Letter);   // CJK extension B
  EXPECT_EQ(char_class(0x2EBF0), CharClass::Letter);   // CJK extension I: Unicode 15.1, as in llama.cpp
  EXPECT_EQ(char_class(0x1C89), CharClass::Undefined);  // assigned only in Unicode 16
  EXPECT_EQ(char_class(0x200B), CharClass::Control);   // zero-width space (Cf)
  EXPECT_EQ(char_class(0xE000), CharClass::Control);   // private use
  EXPECT_EQ(char_class(0x0378), CharClass::Undefined);  // unassigned
  EXPECT_EQ(char_class(0x10FFFF), CharClass::Undefined);
  EXPECT_EQ(char_class(0x110000), CharClass::Undefined);
  EXPECT_EQ(char_class(0x00A0), CharClass::Separator);
}

TEST(TokenizerUnicode, WhiteSpaceIsTheUnicodeProperty) {
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u,
                      0x2029u, 0x202Fu, 0x205Fu, 0x3000u})
    EXPECT_TRUE(unicode::is_whitespace(cp)) << std::hex << cp;
  for (uint32_t cp : {0x00u, 0x1Fu, 0x41u, 0x200Bu, 0x180Eu, 0xFEFFu, 0x2060u})
    EXPECT_FALSE(unicode::is_whitespace(cp)) << std::hex << cp;
}

TEST(TokenizerUnicode, DecodeReplacesEachMalformedByte) {
  using V = std::vector<uint32_t>;
  EXPECT_EQ(unicode::decode_utf8("a\xE2\x82\xAC\xF0\x9F\x98\x80"), (V{'a', 0x20AC, 0x1F600}));
  EXPECT_EQ(unicode::decode_utf8("\x80"), (V{0xFFFD}));
  EXPECT_EQ(unicode::decode_utf8("x\xC3"), (V{'x', 0xFFFD}));               // truncated at the end
  EXPECT_EQ(unicode::decode_utf8("\xE2\x82y"), (V{0xFFFD, 0xFFFD, 'y'}));  // lead + continuation, then ASCII
  EXPECT_EQ(unicode::decode_utf8("\xFF\xFE"), (V{0xFFFD, 0xFFFD}));
  // Structurally complete forms pass through as llama.cpp decodes them.
  EXPECT_EQ(unicode::decode_utf8("\xC0\xAF"), (V{0x2F}));
  EXPECT_EQ(unicode::decode_utf8("\xED\xA0\x80"), (V{0xD800}));
  // Beyond U+10FFFF is not a code point.
  EXPECT_EQ(unicode::decode_utf8("\xF4\x90\x80\x80").size(), 4u);
}

TEST(TokenizerUnicode, CompletePrefixHoldsOnlyUnfinishedCharacters) {
  EXPECT_EQ(unicode::complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(unicode::complete_utf8_prefix("ab\xE2\x82"), 2u);
  EXPECT_EQ(unicode::complete_utf8_prefix("ab\xE2\x82\xAC"), 5u);
  EXPECT_EQ(unicode::complete_utf8_prefix("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(unicode::complete_utf8_prefix("\x80"), 1u);      // can never complete: released
  EXPECT_EQ(unicode::complete_utf8_prefix("\xE2(a"), 3u);    // broken sequence: released
  EXPECT_EQ(unicode::sanitize_utf8("a\x80z"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(unicode::sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::sanitize_utf8("\xE2\x82\xAC"), "\xE2\x82\xAC");
}

TEST(TokenizerUnicode, ByteEncodingIsGpt2s) {
  ByteEncoding enc;
  std::set<uint32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = enc.byte_to_codepoint(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(cp).second) << "byte " << b << " shares code point " << cp;
    EXPECT_EQ(enc.codepoint_to_byte(cp), b);
  }
  EXPECT_EQ(enc.byte_to_codepoint('A'), static_cast<uint32_t>('A'));
  EXPECT_EQ(enc.byte_to_codepoint(0x00), 0x100u);  // Ā
  EXPECT_EQ(enc.byte_to_codepoint(' '), 0x120u);   // Ġ
  EXPECT_EQ(enc.byte_to_codepoint('\n'), 0x10Au);  // Ċ
  EXPECT_EQ(enc.byte_to_codepoint(0xAD), 0x143u);  // soft hyphen, the last remapped byte
  EXPECT_EQ(enc.codepoint_to_byte('A' + 0x1000), -1);
}

// ---------------------------------------------------------------------------
// Pre-tokenizers (expected splits follow the tokenizers' regexes)

using Words = std::vector<std::string>;

TEST(TokenizerPreTokenizer, SmolLmIsolatesDigitsThenSplitsLikeGpt2) {
  EXPECT_EQ(split_words("smollm", "Hello world, it's 2024!"),
            (Words{"Hello", " world", ",", " it", "'s", " ", "2", "0", "2", "4", "!"}));
  EXPECT_EQ(split_words("smollm", "IT'S x"), (Words{"IT", "'", "S", " x"}));  // gpt2 contractions are lower case only
  EXPECT_EQ(split_words("smollm", "a  \tb"), (Words{"a", "  ", "\t", "b"}));
  EXPECT_EQ(split_words("smollm", "end   "), (Words{"end", "   "}));
  EXPECT_EQ(split_words("smollm", " ?!x"), (Words{" ?!", "x"}));
}

TEST(TokenizerPreTokenizer, Gpt2KeepsNumberRuns) {
  EXPECT_EQ(split_words("gpt-2", "abc 12345 ½"), (Words{"abc", " 12345", " ½"}));
}

TEST(TokenizerPreTokenizer, Qwen2SplitsSingleDigitsAndKeepsNewlinesWithPunctuation) {
  EXPECT_EQ(split_words("qwen2", "Hello world, it's 2024!"),
            (Words{"Hello", " world", ",", " it", "'s", " ", "2", "0", "2", "4", "!"}));
  EXPECT_EQ(split_words("qwen2", "IT'S"), (Words{"IT", "'S"}));  // case-insensitive contractions
  EXPECT_EQ(split_words("qwen2", "Hi!!\n\n  there"), (Words{"Hi", "!!\n\n", " ", " there"}));
  EXPECT_EQ(split_words("qwen2", "x \n\n y"), (Words{"x", " \n\n", " y"}));
  EXPECT_EQ(split_words("qwen2", "\tword"), (Words{"\tword"}));
}

TEST(TokenizerPreTokenizer, Llama3GroupsDigitsByThree) {
  EXPECT_EQ(split_words("llama-bpe", "12345 abc"), (Words{"123", "45", " abc"}));
  EXPECT_EQ(split_words("llama-bpe", "1234567"), (Words{"123", "456", "7"}));
  const PreTokenizer p = PreTokenizer::from_name("llama-bpe");
  EXPECT_TRUE(p.ignore_merges());
  EXPECT_TRUE(p.default_add_bos());
}

TEST(TokenizerPreTokenizer, DefaultChainsFourPasses) {
  EXPECT_EQ(split_words("default", "a+b=12345"), (Words{"a", "+", "b", "=", "123", "45"}));
  EXPECT_EQ(split_words("default", "x 9876x"), (Words{"x", " ", "987", "6", "x"}));
}

TEST(TokenizerPreTokenizer, MalformedUtf8BecomesReplacementCharacters) {
  EXPECT_EQ(split_words("smollm", "a\xFF"), (Words{"a", "\xEF\xBF\xBD"}));
}

TEST(TokenizerPreTokenizer, UnknownNamesAreRejected) {
  try {
    PreTokenizer::from_name("no-such-pre");
    FAIL() << "expected GgufError";
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-pre"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// Hand-built vocabularies

// A byte-level vocabulary: the 256 byte tokens, then `extra` tokens.
struct TinyVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::string model = "gpt2";
  std::string pre = "gpt-2";

  TinyVocab() {
    ByteEncoding enc;
    for (int b = 0; b < 256; ++b) {
      std::string s;
      unicode::append_utf8(s, enc.byte_to_codepoint(static_cast<uint8_t>(b)));
      tokens.push_back(s);
      types.push_back(1);
    }
  }
  int32_t add(const std::string& text, int32_t type = 1) {
    tokens.push_back(text);
    types.push_back(type);
    return static_cast<int32_t>(tokens.size() - 1);
  }
  std::vector<uint8_t> image(const std::vector<std::pair<std::string, WValue>>& extra_kv = {}) const {
    GgufWriter w;
    w.kv("tokenizer.ggml.model", WValue::str(model));
    w.kv("tokenizer.ggml.pre", WValue::str(pre));
    std::vector<WValue> t, ty, m;
    for (const auto& s : tokens) t.push_back(WValue::str(s));
    for (int32_t v : types) ty.push_back(WValue::i32(v));
    for (const auto& s : merges) m.push_back(WValue::str(s));
    w.kv("tokenizer.ggml.tokens", WValue::array(gt::STRING, t));
    w.kv("tokenizer.ggml.token_type", WValue::array(gt::I32, ty));
    w.kv("tokenizer.ggml.merges", WValue::array(gt::STRING, m));
    for (const auto& [k, v] : extra_kv) w.kv(k, v);
    return w.build();
  }
};

struct TinyTokenizer {
  std::vector<uint8_t> bytes;
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  explicit TinyTokenizer(std::vector<uint8_t> image)
      : bytes(std::move(image)),
        file(GgufFile::from_memory(bytes.data(), bytes.size())),
        tok(Tokenizer::from_gguf(*file)) {}
  template <typename Vocab>
  explicit TinyTokenizer(const Vocab& v, const std::vector<std::pair<std::string, WValue>>& kv = {})
      : TinyTokenizer(v.image(kv)) {}
};

template <typename Vocab>
void expect_load_error(const Vocab& v, const std::string& needle,
                       const std::vector<std::pair<std::string, WValue>>& kv = {}) {
  const std::vector<uint8_t> bytes = v.image(kv);
  const auto file = GgufFile::from_memory(bytes.data(), bytes.size());
  try {
    Tokenizer::from_gguf(*file);
    ADD_FAILURE() << "expected GgufError mentioning '" << needle << "'";
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerBpe, BestRankMergesFirstAndChainsMerges) {
  TinyVocab v;
  const int32_t bc = v.add("bc"), abc = v.add("abc"), ab = v.add("ab");
  v.merges = {"b c", "a b", "a bc"};  // "b c" outranks "a b", so "abcd" becomes abc + d
  TinyTokenizer t(v);
  EXPECT_EQ(t.tok->encode("abcd", false, false), (Ids{abc, 'd'}));
  EXPECT_EQ(t.tok->encode("abd", false, false), (Ids{ab, 'd'}));
  EXPECT_EQ(t.tok->encode("bcbc", false, false), (Ids{bc, bc}));
}

TEST(TokenizerBpe, EqualRanksMergeLeftmostFirst) {
  TinyVocab v;
  const int32_t aa = v.add("aa"), aaaa = v.add("aaaa");
  v.merges = {"a a", "aa aa"};
  TinyTokenizer t(v);
  EXPECT_EQ(t.tok->encode("aaaaa", false, false), (Ids{aaaa, 'a'}));
  EXPECT_EQ(t.tok->encode("aaa", false, false), (Ids{aa, 'a'}));
}

TEST(TokenizerBpe, SpacesAreByteEncoded) {
  TinyVocab v;
  const int32_t space_x = v.add("\xC4\xA0x");  // "Ġx"
  v.merges = {"\xC4\xA0 x"};
  TinyTokenizer t(v);
  EXPECT_EQ(t.tok->encode("x x", false, false), (Ids{'x', space_x}));
  EXPECT_EQ(t.tok->token_to_piece(space_x), " x");
  EXPECT_EQ(t.tok->decode({'x', space_x}), "x x");
}

TEST(TokenizerBpe, SpecialTokensLongestFirstAndOnlyWhenAsked) {
  TinyVocab v;
  const int32_t start = v.add("<s>", 3), start_long = v.add("<s>x", 3), user = v.add("[U]", 4);
  TinyTokenizer t(v, {{"tokenizer.ggml.bos_token_id", WValue::u32(static_cast<uint32_t>(start))},
                      {"tokenizer.ggml.add_bos_token", WValue::boolean(true)}});
  EXPECT_EQ(t.tok->encode("<s>xy<s>", false, true), (Ids{start_long, 'y', start}));
  // Without parse_special control texts are plain text, user-defined ones still match.
  EXPECT_EQ(t.tok->encode("<s>[U]", false, false), (Ids{'<', 's', '>', user}));
  EXPECT_EQ(t.tok->encode("a", true, false), (Ids{start, 'a'}));
  EXPECT_EQ(t.tok->encode("", true, false), (Ids{start}));
  EXPECT_EQ(t.tok->encode("", false, false), Ids{});
  EXPECT_EQ(t.tok->token_to_piece(start), "");
  EXPECT_EQ(t.tok->token_to_piece(start, true), "<s>");
  EXPECT_EQ(t.tok->token_to_piece(user), "[U]");
  EXPECT_TRUE(t.tok->is_control(start));
  EXPECT_FALSE(t.tok->is_control(user));
}

TEST(TokenizerBpe, EndOfGenerationTokensAreRecognisedByText) {
  TinyVocab v;
  const int32_t im_end = v.add("<|im_end|>", 1);  // marked normal in the file
  const int32_t eos = v.add("<eos-custom>", 3);
  TinyTokenizer t(v, {{"tokenizer.ggml.eos_token_id", WValue::u32(static_cast<uint32_t>(eos))}});
  EXPECT_TRUE(t.tok->is_eog(im_end));
  EXPECT_TRUE(t.tok->is_control(im_end));
  EXPECT_TRUE(t.tok->is_eog(eos));
  EXPECT_FALSE(t.tok->is_eog('a'));
  EXPECT_FALSE(t.tok->is_eog(-1));
  EXPECT_EQ(t.tok->eos(), eos);
  EXPECT_EQ(t.tok->bos(), -1);
}

TEST(TokenizerBpe, BadIdsAreReported) {
  TinyVocab v;
  TinyTokenizer t(v);
  EXPECT_THROW(t.tok->token_to_piece(256), std::out_of_range);
  EXPECT_THROW(t.tok->token_to_piece(-1), std::out_of_range);
  EXPECT_THROW(t.tok->decode({1, 99999}), std::out_of_range);
}

TEST(TokenizerBpe, UnsupportedOrBrokenVocabulariesAreRejected) {
  TinyVocab t5;
  t5.model = "t5";
  expect_load_error(t5, "not supported");
  TinyVocab bert;
  bert.model = "bert";
  expect_load_error(bert, "WordPiece");
  TinyVocab odd;
  odd.model = "mystery";
  expect_load_error(odd, "mystery");
  TinyVocab pre;
  pre.pre = "weird-pre";
  expect_load_error(pre, "weird-pre");
  TinyVocab merge;
  merge.merges = {"nospace"};
  expect_load_error(merge, "nospace");
  TinyVocab types;
  types.types.pop_back();
  expect_load_error(types, "token_type");
  TinyVocab v;
  expect_load_error(v, "bos_token_id", {{"tokenizer.ggml.bos_token_id", WValue::u32(100000)}});
  expect_load_error(v, "add_bos_token", {{"tokenizer.ggml.add_bos_token", WValue::boolean(true)}});

  GgufWriter w;
  w.kv("general.architecture", WValue::str("llama"));
  const std::vector<uint8_t> bytes = w.build();
  const auto file = GgufFile::from_memory(bytes.data(), bytes.size());
  EXPECT_THROW(Tokenizer::from_gguf(*file), GgufError);
}

TEST(TokenizerBpe, ChatTemplateNeedsChatMlTokens) {
  TinyVocab v;
  TinyTokenizer t(v);
  EXPECT_THROW(t.tok->apply_chat_template({{"user", "hi"}}, true), std::runtime_error);
}

// ---------------------------------------------------------------------------
// SentencePiece on hand-built vocabularies (expected ids follow llama.cpp's
// llm_tokenizer_spm_session)

// A SentencePiece vocabulary laid out like Llama 2's: <unk>, <s>, </s>, the
// 256 byte tokens <0x00>..<0xFF> (ids 3..258), then `add`ed pieces.
struct SpmVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  std::string chat_template;

  explicit SpmVocab(bool byte_tokens = true) {
    add("<unk>", 0, 2);
    add("<s>", 0, 3);
    add("</s>", 0, 3);
    if (byte_tokens)
      for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0, 6);
  }
  int32_t add(const std::string& text, float score = 0, int32_t type = 1) {
    tokens.push_back(text);
    scores.push_back(score);
    types.push_back(type);
    return static_cast<int32_t>(tokens.size() - 1);
  }
  static int32_t byte(uint8_t b) { return 3 + b; }
  std::vector<uint8_t> image(const std::vector<std::pair<std::string, WValue>>& extra_kv = {}) const {
    GgufWriter w;
    w.kv("tokenizer.ggml.model", WValue::str("llama"));
    std::vector<WValue> t, sc, ty;
    for (const auto& x : tokens) t.push_back(WValue::str(x));
    for (float x : scores) sc.push_back(WValue::f32(x));
    for (int32_t x : types) ty.push_back(WValue::i32(x));
    w.kv("tokenizer.ggml.tokens", WValue::array(gt::STRING, t));
    w.kv("tokenizer.ggml.scores", WValue::array(gt::F32, sc));
    w.kv("tokenizer.ggml.token_type", WValue::array(gt::I32, ty));
    if (!chat_template.empty()) w.kv("tokenizer.chat_template", WValue::str(chat_template));
    for (const auto& [k, v] : extra_kv) w.kv(k, v);
    return w.build();
  }
};

const std::vector<std::pair<std::string, WValue>> kNoSpacePrefix = {
    {"tokenizer.ggml.add_space_prefix", WValue::boolean(false)}};
const std::string kSpaceMark = "\xE2\x96\x81";  // U+2581

TEST(TokenizerSpm, HighestScoringMergeFirst) {
  SpmVocab v;
  const int32_t a = v.add("a", -1), b = v.add("b", -1), c = v.add("c", -1), d = v.add("d", -1);
  const int32_t ab = v.add("ab", -3), bc = v.add("bc", -2);
  TinyTokenizer t(v, kNoSpacePrefix);
  EXPECT_EQ(t.tok->encode("abc", false, false), (Ids{a, bc}));  // "bc" outscores "ab"
  EXPECT_EQ(t.tok->encode("ab", false, false), (Ids{ab}));
  EXPECT_EQ(t.tok->encode("dab", false, false), (Ids{d, ab}));
  EXPECT_EQ(t.tok->encode("c", false, false), (Ids{c}));
  EXPECT_EQ(t.tok->encode("b", false, false), (Ids{b}));

  // A merged symbol pairs again: its pair with a neighbour is scored by the
  // token that pair spells, whichever merges made it.
  SpmVocab w;
  w.add("a", -1), w.add("b", -1), w.add("c", -1), w.add("d", -1);
  w.add("ab", -1), w.add("bc", -1.5f), w.add("cd", -2);
  const int32_t abcd = w.add("abcd", -0.5f);
  TinyTokenizer u(w, kNoSpacePrefix);
  EXPECT_EQ(u.tok->encode("abcd", false, false), (Ids{abcd}));  // ab, then cd, then ab+cd
}

TEST(TokenizerSpm, EqualScoresMergeLeftmostFirst) {
  SpmVocab v;
  const int32_t a = v.add("a", -1), b = v.add("b", -1);
  const int32_t aa = v.add("aa", -2), ab = v.add("ab", -4), ba = v.add("ba", -4), aaaa = v.add("aaaa", -5);
  TinyTokenizer t(v, kNoSpacePrefix);
  EXPECT_EQ(t.tok->encode("aaa", false, false), (Ids{aa, a}));
  EXPECT_EQ(t.tok->encode("aaaaa", false, false), (Ids{aaaa, a}));
  EXPECT_EQ(t.tok->encode("aba", false, false), (Ids{ab, a}));
  EXPECT_EQ(t.tok->encode("bab", false, false), (Ids{ba, b}));
}

TEST(TokenizerSpm, CharactersOutsideTheVocabularyBecomeByteTokens) {
  SpmVocab v;
  const int32_t x = v.add("x", -1), a = v.add("a", -1);
  TinyTokenizer t(v, kNoSpacePrefix);
  EXPECT_EQ(t.tok->encode("x\xC3\xA9x", false, false), (Ids{x, SpmVocab::byte(0xC3), SpmVocab::byte(0xA9), x}));
  // A symbol is a whole character by its lead byte, even a malformed one: 0xF8
  // announces four bytes, so "a" after it is spelled in bytes too.
  EXPECT_EQ(t.tok->encode("\xF8" "ax", false, false),
            (Ids{SpmVocab::byte(0xF8), SpmVocab::byte('a'), SpmVocab::byte('x')}));
  EXPECT_EQ(t.tok->encode("a\x80", false, false), (Ids{a, SpmVocab::byte(0x80)}));
  EXPECT_EQ(t.tok->decode(t.tok->encode("x\xC3\xA9\xFF", false, false)), "x\xC3\xA9\xFF");
}

TEST(TokenizerSpm, WithoutByteTokensOneByteTextThenUnknownIsUsed) {
  SpmVocab v(false);
  const int32_t x = v.add("x", -1), c3 = v.add("\xC3", -1);
  TinyTokenizer t(v, kNoSpacePrefix);
  // llama.cpp fails on a byte it cannot spell; skim gives <unk> (id 0 by default).
  EXPECT_EQ(t.tok->encode("x\xC3\xA9", false, false), (Ids{x, c3, 0}));
}

TEST(TokenizerSpm, SpacesAreWrittenAsU2581) {
  SpmVocab v;
  const int32_t hi = v.add("hi", -1), space_hi = v.add(kSpaceMark + "hi", -0.5f);
  v.add("h", -1), v.add("i", -1), v.add(kSpaceMark, -1);
  TinyTokenizer t(v, kNoSpacePrefix);
  EXPECT_EQ(t.tok->encode("hi hi", false, false), (Ids{hi, space_hi}));
  EXPECT_EQ(t.tok->encode("hi" + kSpaceMark + "hi", false, false), (Ids{hi, space_hi}));  // U+2581 itself too
  EXPECT_EQ(t.tok->token_to_piece(space_hi), " hi");
  EXPECT_EQ(t.tok->decode({hi, space_hi}), "hi hi");
}

TEST(TokenizerSpm, SpacePrefixStartsTextAfterSpecialTokens) {
  SpmVocab v;
  const int32_t hi = v.add("hi", -1), space_hi = v.add(kSpaceMark + "hi", -0.5f);
  const int32_t ctrl = v.add("<c>", 0, 3), user = v.add("<u>", 0, 4);
  v.add("h", -1), v.add("i", -1), v.add(kSpaceMark, -1);
  TinyTokenizer t(v);  // add_space_prefix defaults to on, as for Llama 2
  EXPECT_TRUE(static_cast<const SpmTokenizer&>(*t.tok).add_space_prefix());
  EXPECT_EQ(t.tok->encode("hi", false, false), (Ids{space_hi}));
  EXPECT_EQ(t.tok->encode("hi", true, false), (Ids{1, space_hi}));
  EXPECT_EQ(t.tok->encode("hi<u>hi", false, false), (Ids{space_hi, user, space_hi}));
  EXPECT_EQ(t.tok->encode("<c>hi", false, true), (Ids{ctrl, space_hi}));
  // Decoding drops the first token's leading space; after BOS nothing is dropped.
  EXPECT_EQ(t.tok->decode({space_hi, space_hi}), "hi hi");
  EXPECT_EQ(t.tok->decode({1, space_hi}), " hi");
  EXPECT_EQ(t.tok->token_to_piece(space_hi), " hi");

  TinyTokenizer off(v, kNoSpacePrefix);
  EXPECT_EQ(off.tok->encode("hi", false, false), (Ids{hi}));
  EXPECT_EQ(off.tok->encode("<c>hi", false, true), (Ids{ctrl, hi}));
  EXPECT_EQ(off.tok->decode({space_hi}), " hi");
}

TEST(TokenizerSpm, SpecialTokensLongestFirstUserDefinedAlways) {
  SpmVocab v;
  const int32_t a = v.add("a", -1);
  const int32_t ctrl = v.add("<c>", 0, 3), ctrl_long = v.add("<c>a", 0, 3), user = v.add("<u>", 0, 4);
  const int32_t end_of_turn = v.add("<end_of_turn>", 0, 4);  // user-defined in the file, like Gemma's "</s>"
  TinyTokenizer t(v, kNoSpacePrefix);
  EXPECT_EQ(t.tok->encode("<c>a<c>", false, true), (Ids{ctrl_long, ctrl}));
  EXPECT_EQ(t.tok->encode("a<u>a", false, false), (Ids{a, user, a}));
  EXPECT_EQ(t.tok->encode("<c>", false, false),
            (Ids{SpmVocab::byte('<'), SpmVocab::byte('c'), SpmVocab::byte('>')}));
  // An end-of-generation text becomes a control token: cut out only with parse_special.
  EXPECT_EQ(t.tok->encode("<end_of_turn>", false, true), (Ids{end_of_turn}));
  const Ids plain = t.tok->encode("<end_of_turn>", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), end_of_turn), 0);
  EXPECT_TRUE(t.tok->is_eog(end_of_turn));
  EXPECT_TRUE(t.tok->is_control(end_of_turn));
  EXPECT_FALSE(t.tok->is_control(user));
  EXPECT_EQ(static_cast<const SpmTokenizer&>(*t.tok).eot(), end_of_turn);
}

TEST(TokenizerSpm, PiecesOfEveryTokenKind) {
  SpmVocab v;
  const int32_t normal = v.add(kSpaceMark + "x" + kSpaceMark, -1), user = v.add("<u>" + kSpaceMark, 0, 4);
  const int32_t unused = v.add("[UNUSED]", 0, 5), undefined = v.add("[UNDEFINED]", 0, 0), odd = v.add("[ODD]", 0, 9);
  TinyTokenizer t(v);
  const Tokenizer& tok = *t.tok;
  EXPECT_EQ(tok.token_to_piece(normal), " x ");
  EXPECT_EQ(tok.token_to_piece(SpmVocab::byte('A')), "A");
  EXPECT_EQ(tok.token_to_piece(SpmVocab::byte(0xFF)), "\xFF");
  EXPECT_EQ(tok.token_to_piece(0), "");  // unknown
  EXPECT_EQ(tok.token_to_piece(0, true), "<unk>");
  EXPECT_EQ(tok.token_to_piece(1), "");  // control
  EXPECT_EQ(tok.token_to_piece(1, true), "<s>");
  EXPECT_EQ(tok.token_to_piece(user), "<u>" + kSpaceMark);  // verbatim, U+2581 included
  EXPECT_EQ(tok.token_to_piece(user, true), "<u>" + kSpaceMark);
  for (int32_t id : {unused, undefined, odd}) {
    EXPECT_EQ(tok.token_to_piece(id), "") << id;
    EXPECT_EQ(tok.token_to_piece(id, true), "") << id;
  }
  EXPECT_EQ(tok.decode({1, normal, 2}, true), "<s> x </s>");
  EXPECT_THROW(tok.token_to_piece(-1), std::out_of_range);
  EXPECT_THROW(tok.token_to_piece(tok.n_vocab()), std::out_of_range);
  EXPECT_EQ(static_cast<const SpmTokenizer&>(tok).token_type(odd), TokenType::Undefined);
}

TEST(TokenizerSpm, DefaultsAndSpecialIds) {
  SpmVocab v;
  const int32_t x = v.add("x", -1);
  TinyTokenizer t(v);
  const auto& tok = static_cast<const SpmTokenizer&>(*t.tok);
  EXPECT_EQ(tok.bos(), 1);  // llama.cpp's SPM defaults
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_EQ(tok.unk(), 0);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_FALSE(tok.add_eos());
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_FALSE(tok.is_eog(1));
  EXPECT_EQ(tok.pre_tokenizer(), "default");
  EXPECT_EQ(tok.score(x), -1.0f);
  EXPECT_EQ(tok.encode("", true, false), (Ids{1}));
  EXPECT_EQ(tok.encode("", false, false), Ids{});

  TinyTokenizer eos(v, {{"tokenizer.ggml.add_eos_token", WValue::boolean(true)},
                        {"tokenizer.ggml.add_bos_token", WValue::boolean(false)},
                        {"tokenizer.ggml.eos_token_id", WValue::u32(static_cast<uint32_t>(x))},
                        {"tokenizer.ggml.add_space_prefix", WValue::boolean(false)}});
  EXPECT_EQ(eos.tok->encode("x", true, false), (Ids{x, x}));
  EXPECT_TRUE(eos.tok->is_eog(x));
  EXPECT_TRUE(eos.tok->is_eog(2));  // "</s>" ends generation by its text, whatever eos_token_id says
}

TEST(TokenizerSpm, BrokenVocabulariesAreRejected) {
  SpmVocab scores;
  scores.scores.pop_back();
  expect_load_error(scores, "scores");
  SpmVocab types;
  types.types.pop_back();
  expect_load_error(types, "token_type");
  SpmVocab v;
  expect_load_error(v, "bos_token_id", {{"tokenizer.ggml.bos_token_id", WValue::u32(100000)}});
  SpmVocab tiny(false);
  tiny.tokens.resize(1), tiny.scores.resize(1), tiny.types.resize(1);  // no id 1 for the default BOS
  expect_load_error(tiny, "add_bos_token");
}

// ---------------------------------------------------------------------------
// Chat templates (expected renderings are llama.cpp's llm_chat_apply_template)

TEST(TokenizerChat, GemmaTurnsFromTheVocabulary) {
  SpmVocab v;
  v.add("<start_of_turn>", 0, 3);
  v.add("<end_of_turn>", 0, 3);
  TinyTokenizer t(v);
  const Tokenizer& tok = *t.tok;
  EXPECT_EQ(tok.apply_chat_template({{"user", "Hi"}}, true),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(tok.apply_chat_template({{"user", "Hi"}}, false), "<start_of_turn>user\nHi<end_of_turn>\n");
  // The system text opens the first user turn; contents are trimmed.
  EXPECT_EQ(tok.apply_chat_template(
                {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "  Bye \n"}}, true),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  // Several system messages join; a model turn does not take them.
  EXPECT_EQ(tok.apply_chat_template({{"system", " A "}, {"system", "B\n"}, {"assistant", "x"}, {"user", "u"}}, false),
            "<start_of_turn>model\nx<end_of_turn>\n<start_of_turn>user\nAB\n\nu<end_of_turn>\n");
  EXPECT_EQ(tok.apply_chat_template({{"system", "only"}}, true), "<start_of_turn>model\n");
  EXPECT_EQ(tok.apply_chat_template({}, false), "");
  EXPECT_THROW(tok.apply_chat_template({{"tool", "x"}}, true), std::invalid_argument);
}

TEST(TokenizerChat, TheTemplateChoosesTheFormat) {
  SpmVocab v;
  v.add("<start_of_turn>", 0, 3), v.add("<end_of_turn>", 0, 3);
  v.add("<|im_start|>", 0, 3), v.add("<|im_end|>", 0, 3);
  v.chat_template = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% endfor %}";
  EXPECT_EQ(TinyTokenizer(v).tok->apply_chat_template({{"assistant", "x"}}, false),
            "<start_of_turn>model\nx<end_of_turn>\n");
  v.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% endfor %}";
  EXPECT_EQ(TinyTokenizer(v).tok->apply_chat_template({{"assistant", "x"}}, false),
            "<|im_start|>assistant\nx<|im_end|>\n");
  // Without a template the vocabulary decides, ChatML first (llama.cpp's order).
  v.chat_template.clear();
  EXPECT_EQ(TinyTokenizer(v).tok->apply_chat_template({{"user", " x"}}, false), "<|im_start|>user\n x<|im_end|>\n");

  v.chat_template = "[INST] {{ messages[0]['content'] }} [/INST]";
  try {
    TinyTokenizer(v).tok->apply_chat_template({{"user", "x"}}, true);
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("neither ChatML nor Gemma"), std::string::npos) << e.what();
  }
  SpmVocab bare;
  bare.chat_template = "<start_of_turn>";
  try {
    TinyTokenizer(bare).tok->apply_chat_template({{"user", "x"}}, true);
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("<start_of_turn>/<end_of_turn>"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// Real vocabularies against llama.cpp

struct KnownAnswer {
  size_t text;         // index into kProbeTexts
  bool parse_special;  // false: the ids hold for both settings unless a `true` entry follows
  Ids ids;
};

// Texts that exercise digits, contractions, whitespace runs, CRLF, scripts,
// emoji, special tokens and malformed UTF-8.
const std::vector<std::string> kProbeTexts = {
    "Hello world! It's 2024, we're testing 12345 tokens.",
    "IT'S WE'RE I'M you'LL they'Ve",
    "  leading spaces\n\n\ttabs\r\nand CRLF   ",
    "caf\xC3\xA9 na\xC3\xAFve \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD "
    "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "x = foo(a, b);  // 0x1F\n\tif (n >= 10) { return -1; }\n",
    "\xFF\xFE" "ab\xC3",
    "\xC2\xA0\xE2\x80\x8B\xE3\x80\x80 \xEF\xBB\xBF",
    // Gemma's turn, control, unused, user-defined ("\n\n\n", space and tab runs, "<s>") and
    // user-defined-turned-control ("</s>") tokens; a literal byte-token text; U+2581 itself.
    "<start_of_turn>user\nHi</s><end_of_turn>\n<unused0>  x\t\ty<s> <0x41>\xE2\x96\x81z\n\n\n",
    // Malformed: a lead byte 0xF8 (SentencePiece takes four bytes as one symbol), a truncated character.
    "x\xF8\x80\xF0\x9Fyz\xE2\x82",
};

Ids parse_ids(const std::string& s) {
  Ids ids;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find_first_of(" \n", pos);
    if (end == std::string::npos) end = s.size();
    if (end > pos) ids.push_back(std::stoi(s.substr(pos, end - pos)));
    pos = end + 1;
  }
  return ids;
}

// Runs the llama.cpp peer on `text`; nullopt (with the peer's errors added to
// the test's failure) if it failed.
std::optional<Ids> peer_tokenize(const std::string& peer, const std::string& model, const std::string& text,
                                 bool add_special, bool parse_special) {
  const test::TempDir dir;
  const fs::path text_path = dir / "text.txt";
  std::ofstream(text_path, std::ios::binary) << text;
  std::string cmd = test::shell_quote(peer) + " tokenize " + test::shell_quote(model) + " " + test::shell_quote(text_path.string());
  if (add_special) cmd += " --add-special";
  if (parse_special) cmd += " --parse-special";
  const test::CommandResult r = test::run_command(cmd, 120);
  if (r.status != 0) {
    ADD_FAILURE() << cmd << " exited with " << r.status << ":\n" << r.errors;
    return std::nullopt;
  }
  return parse_ids(r.output);
}

// Compares with the llama.cpp peer on all probe texts joined into one
// document (one peer run per setting keeps this quick).
void expect_matches_peer(const LoadedVocab& v) {
  const std::string peer = test::peer_tool("skim-peer").string();
  std::string text;
  for (const std::string& t : kProbeTexts) text += t + "\n";
  for (bool add_special : {false, true}) {
    for (bool parse_special : {false, true}) {
      const auto ref = peer_tokenize(peer, v.path, text, add_special, parse_special);
      ASSERT_TRUE(ref.has_value()) << "skim-peer failed";
      EXPECT_EQ(v.tok->encode(text, add_special, parse_special), *ref)
          << "add_special=" << add_special << " parse_special=" << parse_special;
    }
  }
}

const std::vector<KnownAnswer> kSmolLmAnswers = {
    {0, false, {19556, 905, 17, 657, 506, 216, 34, 32, 34, 36, 28, 392, 2316, 3728, 216, 33, 34, 35, 36, 37, 17837, 30}},
    {1, false, {2901, 23, 67, 26587, 23, 3256, 339, 23, 61, 346, 23, 16421, 502, 23, 25917}},
    {2, false, {216, 2899, 5600, 1116, 197, 100, 7366, 201, 198, 397, 340, 9483, 54, 333}},
    {3, false, {83, 1939, 2756, 15486, 46494, 17097, 247, 126, 16736, 122, 40303, 218, 10813, 235, 231, 10813, 233, 138, 36395, 20602, 44626, 31462, 10805}},
    {4, false, {44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 665, 44, 108, 306, 79, 486, 108, 46, 198, 44, 108, 306, 79, 3738, 108, 46, 520, 9531, 198}},
    {4, true, {1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198}},
    {5, false, {104, 446, 29856, 24, 81, 28, 278, 4258, 216, 13241, 216, 32, 104, 33, 54, 198, 197, 342, 365, 94, 10888, 216, 33, 32, 25, 1662, 1003, 731, 33, 43, 4029, 198}},
    {6, false, {24211, 24211, 369, 24211}},
    {7, false, {15442, 321, 229, 12109, 218, 216, 186, 136, 140}},
};

void expect_known_answers(const Tokenizer& tok, const std::vector<KnownAnswer>& answers) {
  for (const KnownAnswer& a : answers) {
    const std::string& text = kProbeTexts.at(a.text);
    EXPECT_EQ(tok.encode(text, false, a.parse_special), a.ids)
        << "probe text " << a.text << " parse_special=" << a.parse_special;
    const bool has_parse_special_entry = std::any_of(answers.begin(), answers.end(), [&](const KnownAnswer& b) {
      return b.text == a.text && b.parse_special;
    });
    if (!a.parse_special && !has_parse_special_entry) {
      EXPECT_EQ(tok.encode(text, false, true), a.ids) << "probe text " << a.text << " parse_special=1";
    }
  }
}

TEST(TokenizerSmolLm, MatchesRecordedLlamaCppIds) {
  const LoadedVocab* v = &vocab(kSmolLm);
  expect_known_answers(*v->tok, kSmolLmAnswers);
  // SmolLM2 adds neither BOS nor EOS, so add_special changes nothing.
  EXPECT_EQ(v->tok->encode(kProbeTexts[0], true, false), kSmolLmAnswers[0].ids);
}

TEST(TokenizerSmolLm, MetadataIsRead) {
  const LoadedVocab* v = &vocab(kSmolLm);
  const auto& tok = static_cast<const BpeTokenizer&>(*v->tok);
  EXPECT_EQ(tok.n_vocab(), 49152);
  EXPECT_EQ(tok.pre_tokenizer(), "smollm");
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_EQ(tok.unusable_merges(), 0u);
  EXPECT_TRUE(tok.is_eog(2));                       // <|im_end|>
  EXPECT_TRUE(tok.is_eog(0));                       // <|endoftext|>
  EXPECT_FALSE(tok.is_eog(1));                      // <|im_start|>
  EXPECT_TRUE(tok.is_control(1));
  EXPECT_EQ(tok.token_id("<|im_start|>"), 1);
  EXPECT_EQ(tok.token_text(2), "<|im_end|>");
}

TEST(TokenizerSmolLm, MatchesLlamaCppLive) {
  const LoadedVocab* v = &vocab(kSmolLm);
  expect_matches_peer(*v);
}

TEST(TokenizerSmolLm, DecodeInvertsEncode) {
  const LoadedVocab* v = &vocab(kSmolLm);
  for (const std::string& text : kProbeTexts) {
    if (unicode::sanitize_utf8(text) != text) continue;  // malformed input is not preserved
    EXPECT_EQ(v->tok->decode(v->tok->encode(text, false, false)), text);
    EXPECT_EQ(v->tok->decode(v->tok->encode(text, false, true), true), text);
  }
}

TEST(TokenizerSmolLm, StreamDecoderNeverSplitsACharacter) {
  const LoadedVocab* v = &vocab(kSmolLm);
  const std::string text =
      "h\xC3\xA9llo \xF0\x9F\xAB\xA0 \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 ok";
  const Ids ids = v->tok->encode(text, false, false);
  StreamDecoder stream(*v->tok);
  std::string joined;
  int held = 0;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    EXPECT_EQ(unicode::sanitize_utf8(piece), piece) << "chunk is not valid UTF-8";
    if (piece.empty()) ++held;
    joined += piece;
  }
  joined += stream.flush();
  EXPECT_EQ(joined, text);
  EXPECT_GT(held, 0) << "expected some tokens to end inside a character";

  // An unfinished character left at the end is flushed as U+FFFD.
  StreamDecoder partial(*v->tok);
  std::string out;
  for (int32_t id : v->tok->encode("\xF0\x9F\xAB\xA0", false, false)) out += partial.push(id);
  EXPECT_EQ(out, "\xF0\x9F\xAB\xA0");
  const Ids emoji = v->tok->encode("\xF0\x9F\xAB\xA0", false, false);
  ASSERT_GT(emoji.size(), 1u);
  StreamDecoder cut(*v->tok);
  EXPECT_EQ(cut.push(emoji[0]), "");
  EXPECT_EQ(cut.flush().substr(0, 3), "\xEF\xBF\xBD");
}

TEST(TokenizerSmolLm, ChatTemplateInsertsTheDefaultSystemMessage) {
  const LoadedVocab* v = &vocab(kSmolLm);
  // Expected renderings of SmolLM2's Jinja template (tokenizer.chat_template).
  EXPECT_EQ(v->tok->apply_chat_template({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(v->tok->apply_chat_template({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n");
  EXPECT_EQ(v->tok->apply_chat_template({}, true), "<|im_start|>assistant\n");
  EXPECT_THROW(v->tok->apply_chat_template({{"tool", "x"}}, true), std::invalid_argument);
  // The rendering tokenizes into the ChatML control tokens.
  const Ids ids = v->tok->encode(v->tok->apply_chat_template({{"user", "Hi"}}, true), false, true);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 3);  // <|im_start|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);  // <|im_end|>
}

// One MiB of mixed text (cold word cache) round-trips; its speed is measured
// by tokenize_driver, not asserted here.
TEST(TokenizerSmolLm, OneMegabyteRoundTrips) {
  const LoadedVocab* v = &vocab(kSmolLm);
  // A fresh tokenizer, so the word cache starts empty.
  const auto tok = Tokenizer::from_gguf(*v->file);
  std::mt19937 rng(7);
  const std::vector<std::string> pieces = {"the ", "model ", "token", "s ", "It's ", "12345", " 3.14 ", "\n", "\t",
                                           "caf\xC3\xA9 ", "\xE4\xB8\x96\xE7\x95\x8C", "\xF0\x9F\x98\x80", "    ",
                                           "x = f(y);", "<|im_start|>", "na\xC3\xAFve "};
  std::string text;
  while (text.size() < (1u << 20)) {
    text += pieces[rng() % pieces.size()];
    if (rng() % 5 == 0) text += std::to_string(rng() % 100000);
    if (rng() % 7 == 0) text += static_cast<char>('a' + rng() % 26);
  }
  const Ids ids = tok->encode(text, false, true);
  EXPECT_GT(ids.size(), text.size() / 8);
  EXPECT_EQ(tok->decode(ids, true), text);
}

// Recorded with `skim-peer tokenize MODEL FILE [--parse-special]` (llama.cpp 0.3.36) on kProbeTexts.
const std::vector<KnownAnswer> kQwenAnswers = {
    {0, false, {9707, 1879, 0, 1084, 594, 220, 17, 15, 17, 19, 11, 582, 2299, 7497, 220, 16, 17, 18, 19, 20, 11211, 13}},
    {1, false, {952, 13272, 19677, 94153, 358, 27603, 498, 6, 4086, 807, 6, 42612}},
    {2, false, {220, 6388, 12621, 271, 3244, 3435, 319, 437, 356, 80658, 262}},
    {3, false, {924, 58858, 94880, 586, 60596, 109, 46553, 90316, 144349, 145375, 23364, 126860, 124671}},
    {4, false, {27, 91, 318, 4906, 91, 29, 872, 198, 13048, 1052, 27, 91, 318, 6213, 91, 397, 27, 91, 318, 4906, 91, 29, 77091, 198}},
    {4, true, {151644, 872, 198, 13048, 1052, 151645, 198, 151644, 77091, 198}},
    {5, false, {87, 284, 15229, 2877, 11, 293, 1215, 220, 442, 220, 15, 87, 16, 37, 198, 743, 320, 77, 2604, 220, 16, 15, 8, 314, 470, 481, 16, 26, 456}},
    {6, false, {9973, 370, 5691}},
    {7, false, {4102, 15692, 22441, 75780}},
};

TEST(TokenizerQwen, MatchesRecordedLlamaCppIds) {
  const LoadedVocab* v = &vocab(kQwen);
  expect_known_answers(*v->tok, kQwenAnswers);
}

TEST(TokenizerQwen, MetadataIsRead) {
  const LoadedVocab* v = &vocab(kQwen);
  const auto& tok = static_cast<const BpeTokenizer&>(*v->tok);
  EXPECT_EQ(tok.pre_tokenizer(), "qwen2");
  EXPECT_EQ(tok.eos(), 151645);
  EXPECT_EQ(tok.bos(), 151643);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_EQ(tok.unusable_merges(), 0u);
  EXPECT_TRUE(tok.is_eog(151645));   // <|im_end|>
  EXPECT_TRUE(tok.is_eog(151643));   // <|endoftext|>
  EXPECT_FALSE(tok.is_eog(151644));  // <|im_start|>
  EXPECT_EQ(tok.token_type(151657), TokenType::UserDefined);  // <tool_call>
}

TEST(TokenizerQwen, MatchesLlamaCppLive) {
  const LoadedVocab* v = &vocab(kQwen);
  expect_matches_peer(*v);
}

TEST(TokenizerQwen, UserDefinedTokensMatchWithoutParseSpecial) {
  const LoadedVocab* v = &vocab(kQwen);
  const Ids ids = v->tok->encode("<tool_call><|im_start|>", false, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 151657);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151644), 0);
}

TEST(TokenizerQwen, ChatTemplateUsesQwensDefaultSystemMessage) {
  const LoadedVocab* v = &vocab(kQwen);
  // Expected rendering of Qwen2.5's Jinja template without tools.
  EXPECT_EQ(v->tok->apply_chat_template({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(v->tok->apply_chat_template({{"system", "S"}, {"user", "U"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
}

// Recorded with `skim-peer tokenize MODEL FILE [--parse-special]` (llama.cpp 0.3.36) on kProbeTexts;
// llama-tokenize gives the same ids.
const std::vector<KnownAnswer> kGemmaAnswers = {
    {0, false, {9259, 1902, 236888, 1030, 236789, 236751, 236743, 236778, 236771, 236778, 236812, 236764, 692, 236789, 500, 7257, 236743, 236770, 236778, 236800, 236812, 236810, 21739, 236761}},
    {1, false, {1768, 236789, 236773, 19716, 236789, 1357, 564, 236789, 236792, 611, 236789, 2182, 901, 236789, 32541}},
    {2, false, {138, 26016, 9952, 108, 255968, 39218, 251, 107, 624, 174055, 236811, 139}},
    {3, false, {123125, 236859, 120362, 86459, 163543, 240493, 242713, 150423}},
    {4, false, {236820, 236909, 548, 236779, 3041, 111038, 2364, 107, 10979, 993, 236820, 236909, 548, 236779, 643, 111038, 107, 236820, 236909, 548, 236779, 3041, 111038, 111457, 107}},
    {5, false, {236781, 578, 46293, 236769, 236746, 236764, 518, 626, 138, 715, 236743, 236771, 236781, 236770, 236811, 107, 255968, 584, 568, 236749, 6867, 236743, 236770, 236771, 236768, 642, 994, 753, 236770, 236793, 682, 107}},
    {6, false, {493, 492, 335, 336, 433}},
    {7, false, {432, 398, 237141, 465, 366, 366, 39131}},
    {8, false, {236820, 3041, 236779, 1340, 236779, 887, 236813, 2364, 107, 10979, 954, 236751, 1798, 643, 236779, 1340, 236779, 887, 236813, 107, 236820, 63634, 236771, 236813, 138, 236781, 255969, 236762, 203, 655, 236771, 236781, 236812, 236770, 236813, 904, 109}},
    {8, true, {105, 2364, 107, 10979, 212, 106, 107, 6, 138, 236781, 255969, 236762, 203, 655, 236771, 236781, 236812, 236770, 236813, 904, 109}},
    {9, false, {236781, 486, 366, 478, 397, 35086, 464, 368}},
};

TEST(TokenizerGemma, MatchesRecordedLlamaCppIds) {
  const LoadedVocab* v = &vocab(kGemma);
  expect_known_answers(*v->tok, kGemmaAnswers);
  // add_special puts BOS first and nothing last.
  Ids with_bos = {2};
  with_bos.insert(with_bos.end(), kGemmaAnswers[0].ids.begin(), kGemmaAnswers[0].ids.end());
  EXPECT_EQ(v->tok->encode(kProbeTexts[0], true, false), with_bos);
}

TEST(TokenizerGemma, MetadataIsRead) {
  const LoadedVocab* v = &vocab(kGemma);
  const auto& tok = static_cast<const SpmTokenizer&>(*v->tok);
  EXPECT_EQ(tok.n_vocab(), 262144);
  EXPECT_EQ(tok.pre_tokenizer(), "default");
  EXPECT_EQ(tok.bos(), 2);
  EXPECT_EQ(tok.eos(), 1);
  EXPECT_EQ(tok.unk(), 3);
  EXPECT_EQ(tok.eot(), 106);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_FALSE(tok.add_eos());
  EXPECT_FALSE(tok.add_space_prefix());
  EXPECT_TRUE(tok.chat_template().empty());
  // End of generation, as llama.cpp lists it: <eos>, <end_of_turn>, and "</s>",
  // a user-defined token that llama.cpp turns into a control token by its text.
  for (int32_t id = 0; id < 1000; ++id) EXPECT_EQ(tok.is_eog(id), id == 1 || id == 106 || id == 212) << id;
  EXPECT_EQ(tok.token_type(212), TokenType::Control);
  EXPECT_EQ(tok.token_type(203), TokenType::UserDefined);  // "<s>"
  EXPECT_EQ(tok.token_type(107), TokenType::UserDefined);  // "\n"
  EXPECT_EQ(tok.token_type(248), TokenType::Byte);         // "<0x0A>"
  EXPECT_TRUE(tok.is_control(105));
  EXPECT_FALSE(tok.is_eog(105));
  EXPECT_EQ(tok.token_id("<start_of_turn>"), 105);
  EXPECT_EQ(tok.token_text(106), "<end_of_turn>");
  EXPECT_EQ(tok.token_to_piece(9259), "Hello");
  EXPECT_EQ(tok.token_to_piece(1902), " world");
  EXPECT_EQ(tok.token_to_piece(106), "");
  EXPECT_EQ(tok.token_to_piece(106, true), "<end_of_turn>");
  EXPECT_EQ(tok.token_to_piece(248), "\n");
}

TEST(TokenizerGemma, MatchesLlamaCppLive) {
  const LoadedVocab* v = &vocab(kGemma);
  expect_matches_peer(*v);
}

TEST(TokenizerGemma, DecodeInvertsEncode) {
  const LoadedVocab* v = &vocab(kGemma);
  // Byte fallback keeps every byte, malformed UTF-8 included; only a U+2581
  // in the input comes back as the space it stands for.
  for (const std::string& text : kProbeTexts) {
    std::string expected = text;
    for (size_t at; (at = expected.find(kSpaceMark)) != std::string::npos;)
      expected.replace(at, kSpaceMark.size(), " ");
    EXPECT_EQ(v->tok->decode(v->tok->encode(text, false, false)), expected);
    EXPECT_EQ(v->tok->decode(v->tok->encode(text, true, false)), expected);
    EXPECT_EQ(v->tok->decode(v->tok->encode(text, false, true), true), expected);
  }
}

TEST(TokenizerGemma, ChatTemplateIsGemmas) {
  const LoadedVocab* v = &vocab(kGemma);
  const std::string chat = v->tok->apply_chat_template(
      {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}}, true);
  EXPECT_EQ(chat,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  // The rendering has no BOS; encode with add_special adds exactly one.
  const Ids ids = v->tok->encode(chat, true, true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], 105);  // <start_of_turn>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 105), 4);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 106), 3);  // <end_of_turn>
  EXPECT_EQ(Ids(ids.end() - 3, ids.end()), (Ids{105, 4368, 107}));  // "model", "\n"
}

// One MiB without newlines or space runs is a single fragment for the merge
// loop; with them, many short ones. Both round-trip (speed: tokenize_driver --time).
TEST(TokenizerGemma, OneMegabyteRoundTrips) {
  const LoadedVocab* v = &vocab(kGemma);
  std::mt19937 rng(11);
  const std::vector<std::string> words = {"the ", "model ", "token", "s ", "It's ", "12345", " 3.14 ", "caf\xC3\xA9 ",
                                          "\xE4\xB8\x96\xE7\x95\x8C", "\xF0\x9F\x98\x80", "x = f(y);", "na\xC3\xAFve "};
  for (const char* extra : {"", "\n", "    ", "<end_of_turn>"}) {
    std::string text;
    while (text.size() < (1u << 20)) {
      text += words[rng() % words.size()];
      if (rng() % 9 == 0) text += extra;
      if (rng() % 5 == 0) text += std::to_string(rng() % 100000);
    }
    const Ids ids = v->tok->encode(text, false, true);
    EXPECT_GT(ids.size(), text.size() / 8);
    EXPECT_EQ(v->tok->decode(ids, true), text) << "extra '" << extra << "'";
  }
}

}  // namespace
}  // namespace skim
