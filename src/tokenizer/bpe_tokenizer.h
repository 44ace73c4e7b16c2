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
#include "tokenizer/vocabulary.h"

namespace skim {

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
  int32_t n_vocab() const override { return vocab_.size(); }
  int32_t bos() const override { return vocab_.bos(); }
  int32_t eos() const override { return vocab_.eos(); }
  bool is_eog(int32_t id) const override { return vocab_.is_eog(id); }
  bool is_control(int32_t id) const override { return vocab_.is_control(id); }
  std::string_view pre_tokenizer() const override { return pre_.name(); }
  int32_t token_id(std::string_view text) const override { return vocab_.find(text); }
  const std::string& token_text(int32_t id) const override;
  std::string_view chat_template() const override { return vocab_.chat_template(); }

  TokenType token_type(int32_t id) const;
  bool add_bos() const override { return vocab_.add_bos(); }
  bool add_eos() const { return vocab_.add_eos(); }
  int32_t eot() const { return vocab_.eot(); }
  int32_t eom() const { return vocab_.eom(); }
  // Merges whose parts or result are not vocabulary entries (none in a
  // well-formed vocabulary; they could never apply).
  size_t unusable_merges() const { return unusable_merges_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  // BPE of one pre-tokenized word (raw bytes), appended to `out`.
  void encode_word(const std::string& word, std::vector<int32_t>& out) const;
  void merge_word(const std::string& word, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;

  PreTokenizer pre_;  // before vocab_: it gives the add_bos default
  Vocabulary vocab_;
  std::vector<std::string> pieces_;  // byte-decoded text of normal tokens
  std::unordered_map<uint64_t, Merge> merges_;
  size_t unusable_merges_ = 0;
  std::array<int32_t, 256> byte_tokens_{};  // token of each single byte, -1 if none
  ByteEncoding bytes_;

  // Word -> tokens cache: text repeats words constantly.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace skim
