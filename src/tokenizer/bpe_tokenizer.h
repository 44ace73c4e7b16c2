// Byte-level BPE tokenizer (GGUF tokenizer.ggml.model = "gpt2"), token for
// token compatible with llama.cpp's llama_tokenize.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "skim/gguf.h"
#include "skim/tokenizer.h"
#include "tokenizer/pretokenizer.h"

namespace skim {

// GGUF tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

// GPT-2's reversible map between bytes and printable code points: every byte
// gets a visible character so that vocabulary entries are plain text.
class ByteEncoding {
 public:
  ByteEncoding();
  uint32_t byte_to_codepoint(uint8_t b) const { return to_cp_[b]; }
  // -1 for code points that stand for no byte.
  int codepoint_to_byte(uint32_t cp) const { return cp < to_byte_.size() ? to_byte_[cp] : -1; }
  std::string encode(std::string_view bytes) const;

 private:
  std::array<uint32_t, 256> to_cp_{};
  std::vector<int16_t> to_byte_;
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const GgufFile& file);

  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const override;
  std::string token_to_piece(int32_t id, bool special = false) const override;
  int32_t n_vocab() const override { return static_cast<int32_t>(texts_.size()); }
  int32_t bos() const override { return bos_; }
  int32_t eos() const override { return eos_; }
  bool is_eog(int32_t id) const override;
  bool is_control(int32_t id) const override;
  std::string_view pre_tokenizer() const override { return pre_.name(); }
  int32_t token_id(std::string_view text) const override;
  const std::string& token_text(int32_t id) const override;
  std::string_view chat_template() const override { return chat_template_; }

  TokenType token_type(int32_t id) const;
  bool add_bos() const override { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  int32_t eot() const { return eot_; }
  int32_t eom() const { return eom_; }
  // Merges whose parts or result are not vocabulary entries (none in a
  // well-formed vocabulary; they could never apply).
  size_t unusable_merges() const { return unusable_merges_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  void check_id(int32_t id) const;
  // BPE of one pre-tokenized word (raw bytes), appended to `out`.
  void encode_word(const std::string& word, std::vector<int32_t>& out) const;
  void merge_word(const std::string& word, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;

  std::vector<std::string> texts_;
  std::vector<TokenType> types_;
  std::vector<std::string> pieces_;  // byte-decoded text of normal tokens
  std::unordered_map<std::string, int32_t> ids_;
  std::unordered_map<uint64_t, Merge> merges_;
  size_t unusable_merges_ = 0;
  std::array<int32_t, 256> byte_tokens_{};  // token of each single byte, -1 if none
  ByteEncoding bytes_;
  PreTokenizer pre_;

  // Control/user-defined/unknown tokens, longest text first: the order in
  // which they are cut out of the text before BPE.
  std::vector<int32_t> specials_;
  std::vector<bool> eog_;

  int32_t bos_ = -1, eos_ = -1, eot_ = -1, eom_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  std::string chat_template_;

  // Word -> tokens cache: text repeats words constantly.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace skim
