// What every GGUF vocabulary has, whatever its tokenization algorithm: token
// texts and types, the special ids, the end-of-generation set, and the
// special-token partition that cuts control and user-defined texts out of the
// input before the algorithm sees it. Loaded as llama.cpp's
// llama_vocab::impl::load does, so both tokenizers agree with it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "skim/gguf.h"

namespace skim {

// GGUF tokenizer.ggml.token_type values. llama.cpp keeps attribute bit sets
// and adds the control bit to tokens it recognises by text (a user-defined
// "</s>" becomes user-defined|control); skim makes such a token Control, which
// splits, tokenizes and renders the same way.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

// What the algorithm assumes when the metadata is silent (llama.cpp's
// per-vocabulary-type defaults). A default id outside the vocabulary means none.
struct VocabDefaults {
  int32_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false;
};

class Vocabulary {
 public:
  // A piece of the input: a special token (token >= 0) or text still to tokenize.
  struct Fragment {
    int32_t token;
    size_t offset, length;
  };

  Vocabulary(const GgufFile& file, const VocabDefaults& defaults);

  int32_t size() const { return static_cast<int32_t>(texts_.size()); }
  // Throws std::out_of_range for an id outside the vocabulary.
  void check_id(int32_t id) const;
  // Unchecked accessors: `id` must be valid.
  const std::string& text(int32_t id) const { return texts_[id]; }
  TokenType type(int32_t id) const { return types_[id]; }
  // Id of the token spelled exactly `text`; -1 if none.
  int32_t find(std::string_view text) const;
  size_t max_text_length() const { return max_text_length_; }

  bool is_eog(int32_t id) const { return id >= 0 && id < size() && eog_[id]; }
  bool is_control(int32_t id) const { return id >= 0 && id < size() && types_[id] == TokenType::Control; }

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t eot() const { return eot_; }
  int32_t eom() const { return eom_; }
  int32_t unk() const { return unk_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  const std::string& chat_template() const { return chat_template_; }

  // llama.cpp's tokenizer_st_partition: the special tokens (control, unknown
  // and user-defined; the first two only with parse_special), longest text
  // first, each cut out of the text fragments left by the longer ones at
  // every non-overlapping occurrence from the left.
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;

 private:
  void mark_special_tokens(const GgufFile& file);
  void set_strip_flags(const GgufFile& file);
  void build_special_index();
  // Marks the trie nodes of the special texts that occur anywhere in `text`.
  std::vector<bool> occurring_specials(std::string_view text) const;

  std::vector<std::string> texts_;
  std::vector<TokenType> types_;
  // Text -> id: open addressing over (hash tag << 32 | id + 1), 0 = empty.
  // SentencePiece looks up every candidate pair, so this is the hot path.
  std::vector<uint64_t> slots_;
  size_t max_text_length_ = 0;
  std::vector<bool> eog_;
  std::vector<uint8_t> strip_;  // kLstrip / kRstrip bits per token
  int32_t bos_ = -1, eos_ = -1, eot_ = -1, eom_ = -1, unk_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  std::string chat_template_;

  // Control/unknown/user-defined tokens in partition order, and a byte trie
  // over their texts: the partition only visits the ones the input contains
  // (a vocabulary can have thousands, e.g. Gemma's <unusedN>).
  struct TrieNode {
    bool terminal = false;  // a special's text ends here
    std::vector<std::pair<uint8_t, int32_t>> children;
  };
  std::vector<int32_t> specials_;
  std::vector<int32_t> special_node_;  // trie node of each specials_ entry's text
  std::vector<TrieNode> trie_;         // trie_[0] is the root, whose children are in trie_root_
  std::array<int32_t, 256> trie_root_{};
};

}  // namespace skim
