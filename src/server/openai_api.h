// The OpenAI-compatible JSON of skim serve: requests to CompletionRequests
// (every field type-checked, one clear message per mistake) and updates to
// response bodies and server-sent-event chunks, for /v1/completions and
// /v1/chat/completions, with llama-server's extensions (n_predict, n_probs,
// timings, cached tokens).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/scheduler.h"
#include "skim/tokenizer.h"

namespace skim::server {

using nlohmann::json;

// A request the server answers with a 4xx and a JSON error.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message) : std::runtime_error(message), status(status) {}
  int status;
};

// {"error": {"code", "message", "type"}} as OpenAI and llama-server send it.
json error_body(int status, const std::string& message);
// A JSON body (an object), or ApiError 400 naming what is wrong.
json parse_body(const std::string& text);
// The body as text; invalid UTF-8 (a token that is part of a character) becomes U+FFFD.
std::string dump(const json& j);

enum class Endpoint { kCompletions, kChat };

struct ParsedRequest {
  CompletionRequest completion;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};
ParsedRequest parse_completion_request(const json& body, Endpoint endpoint, const Tokenizer& tok);

// What every response of one request repeats.
struct ResponseContext {
  Endpoint endpoint;
  std::string id;
  int64_t created;  // unix seconds
  std::string model;
  bool logprobs = false;
  const Tokenizer* tok;
  std::string attention, kv;  // the server's methods, reported in timings
};

json usage_json(const CompletionStats& s);
// llama-server's "timings" object plus skim's methods.
json timings_json(const ResponseContext& rc, const CompletionStats& s);
// The whole answer of a request that did not stream.
json completion_body(const ResponseContext& rc, const std::string& text, const std::vector<GeneratedToken>& tokens,
                     const std::string& finish_reason, const CompletionStats& s);
// One streamed chunk: new text and tokens; finish_reason empty while running.
// The first chat chunk also carries the assistant role.
json stream_chunk(const ResponseContext& rc, const std::string& text, const std::vector<GeneratedToken>& tokens,
                  const std::string& finish_reason, bool first);
// The usage chunk that ends a stream with stream_options.include_usage (no choices).
json usage_chunk(const ResponseContext& rc, const CompletionStats& s);

}  // namespace skim::server
