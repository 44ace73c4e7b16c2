#include "skim/tokenizer.h"

#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/unicode.h"

namespace skim {
namespace {

// A chat format as llama.cpp's llm_chat_apply_template writes it: each turn
// is START role\n content END\n, and the generation prompt START assistant\n.
struct ChatFormat {
  std::string_view name;
  std::string_view start, end;      // vocabulary texts that open and close a turn
  std::string_view assistant_role;  // how the "assistant" role is written
  bool merge_system;                // no system turn: its text opens the next user turn
  bool trim;                        // contents lose surrounding whitespace
};
constexpr ChatFormat kChatMl{"ChatML", "<|im_start|>", "<|im_end|>", "assistant", false, false};
constexpr ChatFormat kGemma{"Gemma", "<start_of_turn>", "<end_of_turn>", "model", true, true};
constexpr const ChatFormat* kChatFormats[] = {&kChatMl, &kGemma};  // llama.cpp's detection order

// The format of tokenizer.chat_template (recognised by its turn marker, as
// llm_chat_detect_template does) or, without one, of the vocabulary's turn tokens.
const ChatFormat& chat_format(const Tokenizer& tok) {
  const std::string_view tmpl = tok.chat_template();
  auto has_tokens = [&](const ChatFormat& f) { return tok.token_id(f.start) >= 0 && tok.token_id(f.end) >= 0; };
  for (const ChatFormat* f : kChatFormats) {
    if (tmpl.empty() ? !has_tokens(*f) : tmpl.find(f->start) == std::string_view::npos) continue;
    if (!has_tokens(*f))
      throw std::runtime_error(fmt::format(
          "chat template: the model's template is {} but the vocabulary has no {}/{} tokens", f->name, f->start, f->end));
    return *f;
  }
  if (tmpl.empty())
    throw std::runtime_error(
        "chat template: the model has no tokenizer.chat_template and its vocabulary has no ChatML "
        "(<|im_start|>/<|im_end|>) or Gemma (<start_of_turn>/<end_of_turn>) turn tokens");
  throw std::runtime_error(
      "chat template: the model's tokenizer.chat_template is neither ChatML nor Gemma, the formats skim supports");
}

// llama-chat.cpp's trim: C-locale whitespace off both ends.
std::string_view trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// The default system prompt of a ChatML template: the text of a string
// literal '<|im_start|>system\n...<|im_end|>\n' that the template emits when
// the conversation does not start with a system message (SmolLM2, Qwen2.5).
// A literal interrupted by an expression (messages[0]['content']) is not one.
std::optional<std::string> default_system_prompt(std::string_view tmpl) {
  const std::string marker = std::string(kChatMl.start) + "system";
  for (size_t at = tmpl.find(marker); at != std::string_view::npos; at = tmpl.find(marker, at + 1)) {
    size_t pos = at + marker.size();
    if (tmpl.substr(pos, 1) == "\n") {
      pos += 1;
    } else if (tmpl.substr(pos, 2) == "\\n") {
      pos += 2;
    } else {
      continue;
    }
    const size_t end = tmpl.find(kChatMl.end, pos);
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
  if (model == "llama") return std::make_unique<SpmTokenizer>(file);
  constexpr std::string_view kSupported = "skim supports byte-level BPE ('gpt2') and SentencePiece ('llama')";
  if (model == "t5")
    throw GgufError(fmt::format("{}: Unigram vocabularies (tokenizer.ggml.model = 't5') are not supported yet; {}",
                                file.path(), kSupported));
  if (model == "bert")
    throw GgufError(fmt::format("{}: WordPiece vocabularies (tokenizer.ggml.model = 'bert') are not supported yet; {}",
                                file.path(), kSupported));
  if (model == "no_vocab" || model == "none")
    throw GgufError(fmt::format("{}: the model has no vocabulary (tokenizer.ggml.model = '{}')", file.path(), model));
  throw GgufError(
      fmt::format("{}: unknown tokenizer model '{}' (tokenizer.ggml.model); {}", file.path(), model, kSupported));
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
  std::string text;
  for (int32_t id : ids) text += token_to_piece(id, special);
  return text;
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  const ChatFormat& f = chat_format(*this);
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw std::invalid_argument(fmt::format("chat template: unsupported role '{}' (system, user or assistant)", m.role));
  }

  std::string out;
  auto open_turn = [&](std::string_view role) {
    out += f.start;
    out += role;
    out += '\n';
  };
  auto content = [&](const ChatMessage& m) { return f.trim ? trim(m.content) : std::string_view(m.content); };
  if (&f == &kChatMl && !messages.empty() && messages.front().role != "system") {
    if (const auto system = default_system_prompt(chat_template())) {
      open_turn("system");
      out += *system;
      out += f.end;
      out += '\n';
    }
  }
  std::string system;  // merged system text waiting for its user turn
  for (const ChatMessage& m : messages) {
    if (f.merge_system && m.role == "system") {
      system += content(m);
      continue;
    }
    const std::string_view role = m.role == "assistant" ? f.assistant_role : std::string_view(m.role);
    open_turn(role);
    if (!system.empty() && role != f.assistant_role) {
      out += system;
      out += "\n\n";
      system.clear();
    }
    out += content(m);
    out += f.end;
    out += '\n';
  }
  if (add_generation_prompt) open_turn(f.assistant_role);
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
