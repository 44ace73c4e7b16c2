// SentencePiece BPE tokenizer (GGUF tokenizer.ggml.model = "llama": Llama 2,
// Gemma 3, ...), token for token compatible with llama.cpp's llm_tokenizer_spm
// and the SPM paths of llama_tokenize and llama_detokenize.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "skim/gguf.h"
#include "skim/tokenizer.h"
#include "tokenizer/vocabulary.h"

namespace skim {

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const GgufFile& file);

  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const override;
  std::string token_to_piece(int32_t id, bool special = false) const override;
  // With add_space_prefix, the first token's leading space is dropped (the
  // space that encode added), as llama_detokenize does.
  std::string decode(const std::vector<int32_t>& ids, bool special = false) const override;
  int32_t n_vocab() const override { return vocab_.size(); }
  int32_t bos() const override { return vocab_.bos(); }
  int32_t eos() const override { return vocab_.eos(); }
  bool add_bos() const override { return vocab_.add_bos(); }
  bool is_eog(int32_t id) const override { return vocab_.is_eog(id); }
  bool is_control(int32_t id) const override { return vocab_.is_control(id); }
  // SentencePiece has no pre-tokenizer; this is the metadata's name for it.
  std::string_view pre_tokenizer() const override { return pre_; }
  int32_t token_id(std::string_view text) const override { return vocab_.find(text); }
  const std::string& token_text(int32_t id) const override;
  std::string_view chat_template() const override { return vocab_.chat_template(); }

  TokenType token_type(int32_t id) const;
  float score(int32_t id) const;
  bool add_eos() const { return vocab_.add_eos(); }
  bool add_space_prefix() const { return add_space_prefix_; }
  int32_t eot() const { return vocab_.eot(); }
  int32_t unk() const { return vocab_.unk(); }

 private:
  // One text fragment (between special tokens) through the SentencePiece
  // merges, appended to `out`.
  void encode_fragment(std::string_view raw, bool space_prefix, std::vector<int32_t>& out) const;
  void append_bytes(std::string_view symbol, std::vector<int32_t>& out) const;

  Vocabulary vocab_;
  std::vector<float> scores_;
  std::vector<std::string> pieces_;  // token_to_piece(id, special = true)
  std::array<int32_t, 256> byte_tokens_{};  // "<0xXX>" (else the one-byte text) of each byte; -1 if none
  std::array<bool, 256> joins_space_{};     // some token has this byte right before a U+2581
  std::string pre_;
  bool add_space_prefix_ = true;
};

}  // namespace skim
