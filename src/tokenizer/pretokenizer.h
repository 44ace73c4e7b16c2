// Pre-tokenizers of byte-level BPE vocabularies: split text into words that
// BPE then encodes independently. Each GGUF `tokenizer.ggml.pre` name maps to
// a chain of splitting passes equivalent to the regexes of the original
// Hugging Face tokenizer, implemented by hand over Unicode classes and
// matching llama.cpp's splitting exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace skim {

class PreTokenizer {
 public:
  enum class Pass : uint8_t {
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    Gpt2,
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    Llama3,
    // As Llama3 with \p{N} instead of \p{N}{1,3}.
    Qwen2,
    IsolateEachNumber,       // \p{N}
    IsolateNumberRuns,       // \p{N}+
    IsolateAsciiDigitTriples,  // [0-9][0-9][0-9]
    IsolatePunctuationRuns,  // [\p{P}\$\+<=>\^~\|]+
  };

  // Throws GgufError for a name skim does not know.
  static PreTokenizer from_name(std::string_view name);

  // Appends the words of `text` (UTF-8; malformed bytes become U+FFFD).
  void split(std::string_view text, std::vector<std::string>& words) const;

  const std::string& name() const { return name_; }
  // Encode a word that is itself a vocabulary entry as that one token (Llama 3).
  bool ignore_merges() const { return ignore_merges_; }
  // BOS default when the GGUF has no tokenizer.ggml.add_bos_token.
  bool default_add_bos() const { return default_add_bos_; }
  const std::vector<Pass>& passes() const { return passes_; }

 private:
  std::string name_;
  std::vector<Pass> passes_;
  bool ignore_merges_ = false;
  bool default_add_bos_ = false;
};

}  // namespace skim
