#include "server/openai_api.h"

#include <fmt/format.h>

#include "skim/attention.h"
#include "skim/kv.h"

namespace skim::server {
namespace {

[[noreturn]] void bad(const std::string& message) { throw ApiError(400, message); }

const json* field(const json& body, const char* key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& body, const char* key, double fallback, double lo, double hi) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number()) bad(fmt::format("'{}' must be a number", key));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad(fmt::format("'{}' must be between {} and {}, got {}", key, lo, hi, x));
  return x;
}

int64_t integer(const json& body, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer()) bad(fmt::format("'{}' must be an integer", key));
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi) ? hi + 1 : v->get<int64_t>();
  if (x < lo || x > hi) bad(fmt::format("'{}' must be between {} and {}, got {}", key, lo, hi, v->dump()));
  return x;
}

bool boolean(const json& body, const char* key, bool fallback) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_boolean()) bad(fmt::format("'{}' must be true or false", key));
  return v->get<bool>();
}

constexpr int64_t kMaxTokens = 1 << 24;
constexpr int kMaxTopLogprobs = 20;
constexpr size_t kMaxStopStrings = 16;

std::vector<std::string> stop_strings(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array() || v->size() > kMaxStopStrings)
    bad(fmt::format("'stop' must be a string or an array of at most {} strings", kMaxStopStrings));
  std::vector<std::string> out;
  for (const json& s : *v) {
    if (!s.is_string()) bad("'stop' must be a string or an array of strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::vector<int32_t> token_ids(const json& array, int32_t n_vocab) {
  std::vector<int32_t> ids;
  for (const json& t : array) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= n_vocab)
      bad(fmt::format("token ids must be integers in 0..{}", n_vocab - 1));
    ids.push_back(t.get<int32_t>());
  }
  return ids;
}

std::vector<int32_t> completion_prompt(const json& body, const Tokenizer& tok) {
  const json* p = field(body, "prompt");
  if (!p) bad("'prompt' is required");
  if (p->is_string()) return tok.encode(p->get<std::string>(), true, true);
  if (p->is_array()) {
    if (!p->empty() && p->front().is_number()) return token_ids(*p, tok.n_vocab());
    if (p->size() == 1 && p->front().is_string()) return tok.encode(p->front().get<std::string>(), true, true);
    if (p->size() == 1 && p->front().is_array()) return token_ids(p->front(), tok.n_vocab());
    bad("'prompt' must be one string or one array of token ids: several prompts per request are not supported");
  }
  bad("'prompt' must be a string or an array of token ids");
}

std::string message_text(const json& content) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad("a message's 'content' must be a string or an array of text parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      bad("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<int32_t> chat_prompt(const json& body, const Tokenizer& tok) {
  const json* m = field(body, "messages");
  if (!m || !m->is_array() || m->empty()) bad("'messages' must be a non-empty array");
  std::vector<ChatMessage> messages;
  for (const json& msg : *m) {
    if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string())
      bad("each message must be an object with a string 'role'");
    messages.push_back({msg["role"].get<std::string>(), msg.contains("content") ? message_text(msg["content"]) : ""});
  }
  try {
    return tok.encode(tok.apply_chat_template(messages, true), true, true);
  } catch (const std::exception& e) {
    bad(e.what());
  }
}

json token_json(const Tokenizer& tok, int32_t id, float logprob) {
  const std::string piece = tok.token_to_piece(id);
  json bytes = json::array();
  for (unsigned char c : piece) bytes.push_back(c);
  return {{"id", id}, {"token", piece}, {"logprob", logprob}, {"bytes", bytes}};
}

json logprobs_json(const ResponseContext& rc, const std::vector<GeneratedToken>& tokens) {
  if (rc.endpoint == Endpoint::kChat) {
    json content = json::array();
    for (const GeneratedToken& t : tokens) {
      json entry = token_json(*rc.tok, t.id, t.logprob);
      entry["top_logprobs"] = json::array();
      for (const TokenLogprob& top : t.top) entry["top_logprobs"].push_back(token_json(*rc.tok, top.id, top.logprob));
      content.push_back(std::move(entry));
    }
    return {{"content", content}};
  }
  json pieces = json::array(), logprobs = json::array(), tops = json::array();
  for (const GeneratedToken& t : tokens) {
    pieces.push_back(rc.tok->token_to_piece(t.id));
    logprobs.push_back(t.logprob);
    json top = json::object();
    for (const TokenLogprob& tl : t.top) top[rc.tok->token_to_piece(tl.id)] = tl.logprob;
    tops.push_back(std::move(top));
  }
  return {{"tokens", pieces}, {"token_logprobs", logprobs}, {"top_logprobs", tops}};
}

const char* object_name(const ResponseContext& rc, bool chunk) {
  if (rc.endpoint == Endpoint::kCompletions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json envelope(const ResponseContext& rc, bool chunk) {
  return {{"id", rc.id}, {"object", object_name(rc, chunk)}, {"created", rc.created}, {"model", rc.model}};
}

}  // namespace

json error_body(int status, const std::string& message) {
  const char* type = status == 401 ? "authentication_error"
                     : status == 404 ? "not_found_error"
                     : status == 503 ? "unavailable_error"
                     : status == 501 ? "not_supported_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  return {{"error", {{"code", status}, {"message", message}, {"type", type}}}};
}

json parse_body(const std::string& text) {
  json body = json::parse(text, nullptr, false);
  if (body.is_discarded()) bad("the request body is not valid JSON");
  if (!body.is_object()) bad("the request body must be a JSON object");
  return body;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

ParsedRequest parse_completion_request(const json& body, Endpoint endpoint, const Tokenizer& tok) {
  ParsedRequest r;
  CompletionRequest& c = r.completion;
  c.prompt = endpoint == Endpoint::kChat ? chat_prompt(body, tok) : completion_prompt(body, tok);
  // llama-server's defaults, and its names next to OpenAI's.
  c.max_tokens = static_cast<int>(integer(body, "max_tokens", -1, -1, kMaxTokens));
  c.max_tokens = static_cast<int>(integer(body, "max_completion_tokens", c.max_tokens, -1, kMaxTokens));
  c.max_tokens = static_cast<int>(integer(body, "n_predict", c.max_tokens, -1, kMaxTokens));
  SamplingParams& s = c.sampling;
  s.temp = static_cast<float>(number(body, "temperature", s.temp, 0, 100));
  s.top_p = static_cast<float>(number(body, "top_p", s.top_p, 0, 1));
  s.top_k = static_cast<int>(integer(body, "top_k", s.top_k, 0, 1 << 30));
  s.min_p = static_cast<float>(number(body, "min_p", s.min_p, 0, 1));
  s.repeat_penalty = static_cast<float>(number(body, "repeat_penalty", s.repeat_penalty, 0, 100));
  s.repeat_last_n = static_cast<int>(integer(body, "repeat_last_n", s.repeat_last_n, -1, 1 << 30));
  const int64_t seed = integer(body, "seed", -1, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  if (seed >= 0) s.seed = static_cast<uint64_t>(seed) == 0xFFFFFFFF ? 0xFFFFFFFE : static_cast<uint64_t>(seed);
  for (const char* unsupported : {"presence_penalty", "frequency_penalty"})
    if (number(body, unsupported, 0, -2, 2) != 0) bad(fmt::format("'{}' is not supported (use repeat_penalty)", unsupported));
  if (integer(body, "n", 1, 1, 1) != 1) bad("'n' must be 1");
  c.stop = stop_strings(body);
  c.ignore_eog = boolean(body, "ignore_eos", false);
  if (const json* attn = field(body, "attn")) {
    if (!attn->is_string()) bad("'attn' must be a method spec string, e.g. \"xattention:tau=0.9\" (skim info --attn)");
    c.attention = attn->get<std::string>();
    try {
      validate_attention_spec(c.attention);
    } catch (const std::exception& e) {
      bad(e.what());
    }
  }
  if (const json* kv = field(body, "kv")) {
    if (!kv->is_string()) bad("'kv' must be a KV policy spec string, e.g. \"snapkv:keep=0.5\", or \"none\" (skim info --kv)");
    c.kv_policy = kv->get<std::string>();
    try {
      if (c.kv_policy != "none") validate_kv_policy_spec(c.kv_policy);
    } catch (const std::exception& e) {
      bad(e.what());
    }
  }
  for (auto [name, type] : {std::pair{"cache_type_k", &c.kv_type_k}, std::pair{"cache_type_v", &c.kv_type_v}})
    if (const json* t = field(body, name)) {
      if (!t->is_string()) bad(fmt::format("'{}' must be a KV type name, e.g. \"q8_0\" (skim info --kv)", name));
      *type = t->get<std::string>();
    }
  if (const json* id = field(body, "session")) {
    if (!id->is_string() || !valid_session_id(id->get<std::string>()))
      bad("'session' must be 1 to 128 letters, digits, '_' or '-'");
    c.session_id = id->get<std::string>();
  }

  if (endpoint == Endpoint::kChat) {
    c.logprobs = boolean(body, "logprobs", false);
    c.top_logprobs = static_cast<int>(integer(body, "top_logprobs", 0, 0, kMaxTopLogprobs));
    if (c.top_logprobs > 0 && !c.logprobs) bad("'top_logprobs' needs 'logprobs': true");
  } else if (const json* lp = field(body, "logprobs"); lp && lp->is_boolean()) {
    c.logprobs = lp->get<bool>();
  } else {
    const int64_t n = integer(body, "logprobs", -1, 0, kMaxTopLogprobs);
    c.logprobs = n >= 0;
    c.top_logprobs = static_cast<int>(std::max<int64_t>(n, 0));
  }
  if (const int64_t n = integer(body, "n_probs", 0, 0, kMaxTopLogprobs); n > 0) {
    c.logprobs = true;
    c.top_logprobs = static_cast<int>(n);
  }

  r.stream = boolean(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("'stream_options' must be an object");
    r.include_usage = boolean(*so, "include_usage", false);
  }
  return r;
}

json usage_json(const CompletionStats& s) {
  return {{"prompt_tokens", s.n_prompt},
          {"completion_tokens", s.n_gen},
          {"total_tokens", s.n_prompt + s.n_gen},
          {"prompt_tokens_details", {{"cached_tokens", s.n_cached}}}};
}

json timings_json(const ResponseContext& rc, const CompletionStats& s) {
  const int prefilled = s.n_prompt - s.n_cached;
  auto rate = [](int n, double ms) { return ms > 0 ? 1000.0 * n / ms : 0.0; };
  return {{"cache_n", s.n_cached},
          {"prompt_n", prefilled},
          {"prompt_ms", s.prompt_ms},
          {"prompt_per_second", rate(prefilled, s.prompt_ms)},
          {"predicted_n", s.n_gen},
          {"predicted_ms", s.gen_ms},
          {"predicted_per_second", rate(s.n_decoded, s.gen_ms)},
          {"queue_ms", s.queue_ms},
          {"ttft_ms", s.ttft_ms},
          {"kv_rows", s.kv_rows},
          {"attention", rc.attention},
          {"kv", rc.kv}};
}

json completion_body(const ResponseContext& rc, const std::string& text, const std::vector<GeneratedToken>& tokens,
                     const std::string& finish_reason, const CompletionStats& s) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason}};
  if (rc.endpoint == Endpoint::kChat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  choice["logprobs"] = rc.logprobs ? logprobs_json(rc, tokens) : json(nullptr);
  json body = envelope(rc, false);
  body["choices"] = json::array({choice});
  body["usage"] = usage_json(s);
  body["timings"] = timings_json(rc, s);
  return body;
}

json stream_chunk(const ResponseContext& rc, const std::string& text, const std::vector<GeneratedToken>& tokens,
                  const std::string& finish_reason, bool first) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
  if (rc.endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = rc.logprobs && !tokens.empty() ? logprobs_json(rc, tokens) : json(nullptr);
  json chunk = envelope(rc, true);
  chunk["choices"] = json::array({choice});
  return chunk;
}

json usage_chunk(const ResponseContext& rc, const CompletionStats& s) {
  json chunk = envelope(rc, true);
  chunk["choices"] = json::array();
  chunk["usage"] = usage_json(s);
  return chunk;
}

}  // namespace skim::server
