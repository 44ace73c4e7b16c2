#include "skim/tokenizer.h"

#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/unicode.h"

namespace skim {
namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";

// The default system prompt of a ChatML template: the text of a string
// literal '<|im_start|>system\n...<|im_end|>\n' that the template emits when
// the conversation does not start with a system message (SmolLM2, Qwen2.5).
// A literal interrupted by an expression (messages[0]['content']) is not one.
std::optional<std::string> default_system_prompt(std::string_view tmpl) {
  const std::string marker = std::string(kImStart) + "system";
  for (size_t at = tmpl.find(marker); at != std::string_view::npos; at = tmpl.find(marker, at + 1)) {
    size_t pos = at + marker.size();
    if (tmpl.substr(pos, 1) == "\n") {
      pos += 1;
    } else if (tmpl.substr(pos, 2) == "\\n") {
      pos += 2;
    } else {
      continue;
    }
    const size_t end = tmpl.find(kImEnd, pos);
    if (end == std::string_view::npos) continue;
    std::string text;
    bool literal = true;
    for (size_t i = pos; i < end && literal; ++i) {
      const char c = tmpl[i];
      if (c == '\\' && i + 1 < end) {
        const char e = tmpl[++i];
        text.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
      } else if (c == '\'' || c == '"' || c == '{' || c == '}') {
        literal = false;  // the literal ends (or a Jinja tag starts) before <|im_end|>
      } else {
        text.push_back(c);
      }
    }
    if (literal) return text;
  }
  return std::nullopt;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
  if (!file.has("tokenizer.ggml.model"))
    throw GgufError(fmt::format("{}: no vocabulary (metadata key 'tokenizer.ggml.model' is missing)", file.path()));
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model == "gpt2") return std::make_unique<BpeTokenizer>(file);
  if (model == "llama")
    throw GgufError(fmt::format("{}: SentencePiece vocabularies (tokenizer.ggml.model = 'llama') are not supported yet; "
                                "skim supports byte-level BPE ('gpt2')",
                                file.path()));
  if (model == "t5")
    throw GgufError(fmt::format("{}: Unigram vocabularies (tokenizer.ggml.model = 't5') are not supported yet; "
                                "skim supports byte-level BPE ('gpt2')",
                                file.path()));
  if (model == "bert")
    throw GgufError(fmt::format("{}: WordPiece vocabularies (tokenizer.ggml.model = 'bert') are not supported yet; "
                                "skim supports byte-level BPE ('gpt2')",
                                file.path()));
  if (model == "no_vocab" || model == "none")
    throw GgufError(fmt::format("{}: the model has no vocabulary (tokenizer.ggml.model = '{}')", file.path(), model));
  throw GgufError(fmt::format("{}: unknown tokenizer model '{}' (tokenizer.ggml.model); skim supports byte-level BPE "
                              "('gpt2')",
                              file.path(), model));
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
  std::string text;
  for (int32_t id : ids) text += token_to_piece(id, special);
  return text;
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  if (token_id(kImStart) < 0 || token_id(kImEnd) < 0)
    throw std::runtime_error("chat template: the vocabulary has no <|im_start|>/<|im_end|> tokens; only ChatML is supported");
  const std::string_view tmpl = chat_template();
  if (!tmpl.empty() && tmpl.find(kImStart) == std::string_view::npos)
    throw std::runtime_error("chat template: the model's tokenizer.chat_template is not ChatML; only ChatML is supported");
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw std::invalid_argument(fmt::format("chat template: unsupported role '{}' (system, user or assistant)", m.role));
  }

  std::string out;
  auto append_turn = [&](std::string_view role, std::string_view content) {
    out += kImStart;
    out += role;
    out += '\n';
    out += content;
    out += kImEnd;
    out += '\n';
  };
  if (!messages.empty() && messages.front().role != "system") {
    if (const auto system = default_system_prompt(tmpl)) append_turn("system", *system);
  }
  for (const ChatMessage& m : messages) append_turn(m.role, m.content);
  if (add_generation_prompt) {
    out += kImStart;
    out += "assistant\n";
  }
  return out;
}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tok_.token_to_piece(id, false);
  const size_t complete = unicode::complete_utf8_prefix(pending_);
  std::string out = unicode::sanitize_utf8(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = unicode::sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace skim
