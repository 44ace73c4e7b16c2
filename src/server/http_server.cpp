#include "server/http_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <regex>

#include <fmt/format.h>

#include "server/chat_page.h"
#include "server/metrics.h"
#include "server/openai_api.h"

namespace skim::server {
namespace {

constexpr auto kWait = std::chrono::milliseconds(1000);  // between keep-alive comments of a quiet stream

void send_json(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(dump(body), "application/json; charset=utf-8");
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

bool public_path(const std::string& path) {
  return path == "/" || path == "/health" || path == "/v1/health" || path == "/v1/models" || path == "/models";
}

}  // namespace

struct HttpServer::Impl {
  Impl(const Model& m, Scheduler& s, ServerParams p) : model(m), scheduler(s), params(std::move(p)) {}
  const Model& model;
  Scheduler& scheduler;
  ServerParams params;
  httplib::Server http;
  std::atomic<int64_t> next_id{0};
  const int64_t started = static_cast<int64_t>(std::time(nullptr));

  // "f16/f16" or "q8_0/q8_0, snapkv:keep=0.5": formats, then the policy if any.
  // "K/V types[, policy]" of a request: the server's where it names none.
  std::string kv_setting(const std::string& policy, const CompletionRequest* request = nullptr) const {
    std::string types = params.kv_types;
    if (request && (!request->kv_type_k.empty() || !request->kv_type_v.empty())) {
      const size_t slash = types.find('/');
      types = (request->kv_type_k.empty() ? types.substr(0, slash) : request->kv_type_k) + "/" +
              (request->kv_type_v.empty() ? types.substr(slash + 1) : request->kv_type_v);
    }
    return policy.empty() || policy == "none" ? types : types + ", " + policy;
  }

  ResponseContext response_context(Endpoint endpoint, bool logprobs) {
    const int64_t n = next_id++;
    return {endpoint,
            fmt::format("{}-{}", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl", n),
            static_cast<int64_t>(std::time(nullptr)),
            params.model_id,
            logprobs,
            &model.tokenizer(),
            scheduler.attention(),
            kv_setting(params.kv_policy)};
  }

  void completion(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    const ParsedRequest parsed = parse_completion_request(parse_body(req.body), endpoint, model.tokenizer());
    std::shared_ptr<CompletionHandle> handle;
    try {
      handle = scheduler.submit(parsed.completion);
    } catch (const std::invalid_argument& e) {
      throw ApiError(400, e.what());
    } catch (const std::runtime_error& e) {
      throw ApiError(503, e.what());
    }
    ResponseContext rc = response_context(endpoint, parsed.completion.logprobs);
    if (!parsed.completion.attention.empty()) rc.attention = parsed.completion.attention;
    rc.kv = kv_setting(parsed.completion.kv_policy.empty() ? params.kv_policy : parsed.completion.kv_policy, &parsed.completion);
    if (parsed.stream)
      stream(res, std::move(handle), rc, parsed.include_usage);
    else
      answer(res, *handle, rc);
  }

  static void answer(httplib::Response& res, CompletionHandle& handle, const ResponseContext& rc) {
    std::string text;
    std::vector<GeneratedToken> tokens;
    for (;;) {
      CompletionUpdate u = handle.next(kWait);
      text += u.text;
      tokens.insert(tokens.end(), u.tokens.begin(), u.tokens.end());
      if (!u.error.empty()) return send_json(res, error_body(500, u.error), 500);
      if (u.done) return send_json(res, completion_body(rc, text, tokens, u.finish_reason, u.stats));
    }
  }

  // Server-sent events: a chunk per update, a comment line while nothing comes
  // (so a client that left is noticed and its request cancelled), then [DONE].
  static void stream(httplib::Response& res, std::shared_ptr<CompletionHandle> handle, const ResponseContext& rc,
                     bool include_usage) {
    auto first = std::make_shared<bool>(true);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [handle, rc, include_usage, first](size_t, httplib::DataSink& sink) {
          CompletionUpdate u = handle->next(kWait);
          std::string out;
          if (!u.error.empty()) {
            out = sse(error_body(500, u.error));
          } else if (u.done || !u.text.empty() || !u.tokens.empty() || *first) {
            json chunk = stream_chunk(rc, u.text, u.tokens, u.done ? u.finish_reason : "", *first);
            if (u.done) chunk["timings"] = timings_json(rc, u.stats);
            out = sse(chunk);
            if (u.done && include_usage) out += sse(usage_chunk(rc, u.stats));
            *first = false;
          } else {
            out = ": waiting\n\n";
          }
          if (u.done) out += "data: [DONE]\n\n";
          if (!sink.write(out.data(), out.size())) {
            handle->cancel();
            return false;
          }
          if (u.done) sink.done();
          return true;
        },
        [handle](bool success) {
          if (!success) handle->cancel();
        });
  }

  void tokenize(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req.body);
    if (!body.contains("content") || !body["content"].is_string()) throw ApiError(400, "'content' must be a string");
    auto flag = [&](const char* key, bool fallback) {
      if (!body.contains(key)) return fallback;
      if (!body[key].is_boolean()) throw ApiError(400, fmt::format("'{}' must be true or false", key));
      return body[key].get<bool>();
    };
    const Tokenizer& tok = model.tokenizer();
    const std::vector<int32_t> ids =
        tok.encode(body["content"].get<std::string>(), flag("add_special", false), flag("parse_special", true));
    json tokens = json::array();
    const bool pieces = flag("with_pieces", false);
    for (int32_t id : ids)
      tokens.push_back(pieces ? json{{"id", id}, {"piece", tok.token_to_piece(id, true)}} : json(id));
    send_json(res, {{"tokens", tokens}});
  }

  void detokenize(const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req.body);
    const Tokenizer& tok = model.tokenizer();
    if (!body.contains("tokens") || !body["tokens"].is_array()) throw ApiError(400, "'tokens' must be an array of token ids");
    std::vector<int32_t> ids;
    for (const json& t : body["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok.n_vocab())
        throw ApiError(400, fmt::format("token ids must be integers in 0..{}", tok.n_vocab() - 1));
      ids.push_back(t.get<int32_t>());
    }
    send_json(res, {{"content", tok.decode(ids)}});
  }

  // llama-server's slot files: {"filename": NAME} in --slot-save-path, NAME a
  // plain file name (no directories: nothing outside that folder is reachable).
  void slot_file(const httplib::Request& req, httplib::Response& res) {
    if (params.slot_save_path.empty()) throw ApiError(501, "slot save and restore need --slot-save-path DIR");
    const std::string action = req.get_param_value("action");
    if (action != "save" && action != "restore") throw ApiError(400, "'action' must be save or restore");
    const json body = parse_body(req.body);
    if (!body.contains("filename") || !body["filename"].is_string()) throw ApiError(400, "'filename' must be a string");
    const std::string name = body["filename"].get<std::string>();
    static const std::regex kPlainName("[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}");
    if (!std::regex_match(name, kPlainName))
      throw ApiError(400, "'filename' must be a plain file name: letters, digits, '.', '_', '-', not starting with '.'");
    const int slot = std::stoi(req.matches[1]);
    const std::string path = (std::filesystem::path(params.slot_save_path) / name).string();
    if (action == "restore" && !std::filesystem::exists(path)) throw ApiError(404, "no slot file " + name);
    Scheduler::SlotFile done;
    try {
      done = action == "save" ? scheduler.save_slot(slot, path) : scheduler.restore_slot(slot, path);
    } catch (const std::invalid_argument& e) {
      throw ApiError(400, e.what());
    } catch (const std::runtime_error& e) {
      throw ApiError(action == "save" ? 500 : 400, e.what());
    }
    const bool save = action == "save";
    send_json(res, {{"id_slot", slot},
                    {"filename", name},
                    {save ? "n_saved" : "n_restored", done.tokens},
                    {save ? "n_written" : "n_read", done.bytes},
                    {"timings", {{save ? "save_ms" : "restore_ms", done.ms}}}});
  }

  void models(httplib::Response& res) {
    const ModelConfig& c = model.config();
    send_json(res, {{"object", "list"},
                    {"data", json::array({{{"id", params.model_id},
                                           {"object", "model"},
                                           {"created", started},
                                           {"owned_by", "skim"},
                                           {"meta",
                                            {{"arch", c.arch},
                                             {"n_ctx_train", c.n_ctx_train},
                                             {"n_vocab", c.n_vocab},
                                             {"n_ctx_slot", scheduler.slot_context()},
                                             {"slots", scheduler.n_slots()},
                                             {"attention", scheduler.attention()},
                                             {"kv", kv_setting(params.kv_policy)}}}}})}});
  }

  void routes() {
    // Every handler's ApiError and exception become one JSON error; a status
    // without a body (404, 413 from httplib) gets one too.
    auto guarded = [](auto fn) {
      return [fn](const httplib::Request& req, httplib::Response& res) {
        try {
          fn(req, res);
        } catch (const ApiError& e) {
          send_json(res, error_body(e.status, e.what()), e.status);
        }
      };
    };
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_json(res, error_body(500, what), 500);
    });
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      const std::string message = res.status == 404   ? fmt::format("no endpoint {} {}", req.method, req.path)
                                  : res.status == 413 ? fmt::format("the request body is over {} bytes", params.max_body_bytes)
                                                      : fmt::format("HTTP {}", res.status);
      send_json(res, error_body(res.status, message), res.status);
    });
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (params.api_key.empty() || public_path(req.path)) return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      if (auth == "Bearer " + params.api_key || req.get_header_value("X-Api-Key") == params.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_json(res, error_body(401, "invalid or missing API key"), 401);
      return httplib::Server::HandlerResponse::Handled;
    });

    auto health = [](const httplib::Request&, httplib::Response& res) { send_json(res, {{"status", "ok"}}); };
    http.Get("/health", health);
    http.Get("/v1/health", health);
    auto models_handler = [this](const httplib::Request&, httplib::Response& res) { models(res); };
    http.Get("/v1/models", models_handler);
    http.Get("/models", models_handler);
    auto chat = guarded([this](const httplib::Request& req, httplib::Response& res) { completion(req, res, Endpoint::kChat); });
    auto complete =
        guarded([this](const httplib::Request& req, httplib::Response& res) { completion(req, res, Endpoint::kCompletions); });
    http.Post("/v1/chat/completions", chat);
    http.Post("/chat/completions", chat);
    http.Post("/v1/completions", complete);
    http.Post("/completions", complete);
    http.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); }));
    http.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); }));
    http.Post(R"(/slots/(\d+))", guarded([this](const httplib::Request& req, httplib::Response& res) { slot_file(req, res); }));
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(prometheus_text(scheduler.stats()), "text/plain; version=0.0.4");
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(chat_page()), "text/html; charset=utf-8");
    });
  }
};

HttpServer::HttpServer(const Model& model, Scheduler& scheduler, ServerParams params)
    : impl_(std::make_unique<Impl>(model, scheduler, std::move(params))) {
  Impl& s = *impl_;
  // Each streaming client holds a connection thread while it waits for tokens.
  const int threads = s.params.n_threads_http > 0 ? s.params.n_threads_http : std::max(64, 4 * scheduler.n_slots() + 8);
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  // SO_REUSEADDR alone (restart over TIME_WAIT): httplib's SO_REUSEPORT would
  // let a second server share a port in use instead of failing.
  s.http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  s.http.set_payload_max_length(s.params.max_body_bytes);
  s.http.set_read_timeout(s.params.timeout_s, 0);
  s.http.set_write_timeout(s.params.timeout_s, 0);
  s.routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  Impl& s = *impl_;
  const int port = s.params.port == 0 ? s.http.bind_to_any_port(s.params.host)
                                      : (s.http.bind_to_port(s.params.host, s.params.port) ? s.params.port : -1);
  if (port < 0) throw std::runtime_error(fmt::format("cannot listen on {}:{} (in use, or not an address of this machine)", s.params.host, s.params.port));
  return port;
}

void HttpServer::run() { impl_->http.listen_after_bind(); }
void HttpServer::stop() { impl_->http.stop(); }

}  // namespace skim::server
