// skim serve's HTTP side: the OpenAI-compatible endpoints, llama-server's
// /health, /metrics, /tokenize and /detokenize, and the chat page, over one
// Scheduler. Handlers only translate: every request becomes a
// CompletionRequest, every answer comes from the scheduler's updates.
#pragma once

#include <memory>
#include <string>

#include "engine/scheduler.h"
#include "skim/model.h"

namespace skim::server {

struct ServerParams {
  std::string host = "127.0.0.1";
  int port = 8080;            // 0: any free port (bind() returns it)
  std::string api_key;        // non-empty: every request but /health, / and /v1/models needs it
  int timeout_s = 600;        // socket read/write timeout
  int n_threads_http = 0;     // connections served at once; 0: enough for every slot's client and more
  std::string model_id;       // the model's name in responses and /v1/models
  std::string kv_types;       // the K/V formats reported with each answer ("f16/f16")
  std::string kv_policy;      // the server's KV policy ("" keeps every row); a request may name its own
  size_t max_body_bytes = 32u << 20;
  std::string slot_save_path;  // directory of POST /slots/ID?action=save|restore files; empty: off
};

class HttpServer {
 public:
  HttpServer(const Model& model, Scheduler& scheduler, ServerParams params);
  ~HttpServer();
  // Binds the listening socket; returns the port. Throws when it cannot bind.
  int bind();
  // Serves until stop() is called (from any thread).
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace skim::server
