// Tokenizer built from a GGUF vocabulary: byte-level BPE (tokenizer.ggml.model
// = gpt2) with the pre-tokenizer named by tokenizer.ggml.pre, or SentencePiece
// BPE (= llama: Llama 2, Gemma 3); other vocabulary kinds are rejected with a
// clear error.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "skim/gguf.h"

namespace skim {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class Tokenizer {
 public:
  // Throws GgufError for a vocabulary or pre-tokenizer skim does not support.
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& file);
  virtual ~Tokenizer() = default;

  // add_special: add BOS/EOS as the metadata asks (tokenizer.ggml.add_bos_token ...).
  // parse_special: recognise special/control token texts (e.g. "<|im_start|>") in `text`.
  // Matches llama.cpp's llama_tokenize(vocab, text, add_special, parse_special).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const = 0;

  // The raw bytes a token stands for (byte-level decoded; may be part of a UTF-8 character).
  // Control tokens give their text only when `special` is true.
  virtual std::string token_to_piece(int32_t id, bool special = false) const = 0;
  // The pieces joined, as llama_detokenize (remove_special = false) joins them.
  virtual std::string decode(const std::vector<int32_t>& ids, bool special = false) const;

  virtual int32_t n_vocab() const = 0;
  virtual int32_t bos() const = 0;  // -1 if none
  virtual int32_t eos() const = 0;  // -1 if none
  virtual bool add_bos() const = 0;  // encode(add_special) starts with BOS
  // End of generation: EOS, EOT, <|im_end|> and the like.
  virtual bool is_eog(int32_t id) const = 0;
  virtual bool is_control(int32_t id) const = 0;
  virtual std::string_view pre_tokenizer() const = 0;
  // Id of the token whose vocabulary text is exactly `text`; -1 if none.
  virtual int32_t token_id(std::string_view text) const = 0;
  // Vocabulary text of a token (byte-level encoded for BPE); throws std::out_of_range for a bad id.
  virtual const std::string& token_text(int32_t id) const = 0;
  // tokenizer.chat_template from the GGUF metadata; empty if absent.
  virtual std::string_view chat_template() const = 0;

  // The conversation as llama.cpp's llm_chat_apply_template writes it, without
  // BOS (encode with add_special adds it): ChatML (<|im_start|>role\ncontent<|im_end|>\n)
  // or Gemma (<start_of_turn>user\n...<end_of_turn>\n, "assistant" written as
  // "model"), chosen by tokenizer.chat_template or, without one, by the turn
  // tokens the vocabulary has. Throws std::runtime_error for any other template.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
};

// Turns a token stream into text without ever splitting a UTF-8 character:
// bytes of an incomplete character are held until it completes.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is held (invalid tails become U+FFFD)

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace skim
