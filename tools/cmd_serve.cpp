// skim serve: an OpenAI-compatible HTTP server with continuous batching and
// prefix reuse over one model (src/server/, src/engine/scheduler.h).
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <future>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "common.h"
#include "engine/scheduler.h"
#include "server/http_server.h"
#include "skim/model.h"

namespace skim::cli {
namespace {

struct ServeOptions : SharedOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 1;
  int n_batch = 512;
  std::string api_key;
  int timeout_s = 600;
  int threads_http = 0;
  std::string alias;
  std::string slot_save_path;
  std::string kv_dir;
  int kv_dir_mib = 0;
  int cache_ram_mib = 1024;
};

// SIGINT/SIGTERM write a byte to this pipe; a thread waiting on it stops the
// server. (Blocking the signals instead would not reach threads OpenBLAS starts
// before main.)
int stop_pipe[2] = {-1, -1};
extern "C" void on_stop_signal(int) {
  const char byte = 1;
  [[maybe_unused]] const ssize_t n = write(stop_pipe[1], &byte, 1);
}

void serve(const ServeOptions& o) {
  const std::string path = resolve_model(o);
  const std::string& attn = o.attn.front();
  validate_attention_spec(attn);
  std::unique_ptr<Model> model = Model::load(path, o.model_options);
  const int total_ctx = o.n_ctx > 0 ? o.n_ctx : model->config().n_ctx_train;
  // -c is the whole context, each of the -np slots gets an equal part (as llama-server).
  const int slot_ctx = total_ctx / o.parallel;
  if (slot_ctx < 1) throw std::runtime_error(fmt::format("-c {} leaves nothing for each of {} slots", total_ctx, o.parallel));
  warn_beyond_training(slot_ctx, model->config(), o.dca_chunk);

  SchedulerParams sp;
  sp.context.n_ctx = slot_ctx;
  sp.context.n_seq_max = o.parallel;
  sp.context.n_threads = resolve_threads(o.threads);
  sp.context.attention = attn;
  apply_kv_options(o, sp.context);
  sp.n_batch = o.n_batch;
  sp.kv_dir = o.kv_dir;
  sp.kv_dir_max_bytes = static_cast<uint64_t>(o.kv_dir_mib) << 20;
  sp.cache_ram_bytes = static_cast<uint64_t>(o.cache_ram_mib) << 20;

  server::ServerParams hp;
  hp.host = o.host;
  hp.port = o.port;
  hp.api_key = o.api_key;
  hp.timeout_s = o.timeout_s;
  hp.n_threads_http = o.threads_http;
  hp.slot_save_path = o.slot_save_path;
  hp.model_id = o.alias.empty() ? std::filesystem::path(path).filename().string() : o.alias;
  hp.kv_types = o.kv_type_k + "/" + o.kv_type_v;
  hp.kv_policy = o.kv_policy;

  Scheduler scheduler(*model, sp);
  server::HttpServer http(*model, scheduler, hp);
  const int port = http.bind();
  if (pipe(stop_pipe) != 0) throw std::runtime_error("cannot create the signal pipe");
  struct sigaction action = {};
  action.sa_handler = on_stop_signal;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that vanished is a failed write
  std::promise<void> served;
  std::thread waiter([&, done = served.get_future()] {
    char byte = 0;
    while (read(stop_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    if (!byte) return;  // the server stopped by itself
    std::fprintf(stderr, "skim serve: stopping\n");
    http.stop();
    // httplib joins its connection threads, and an idle client's connection
    // waits out the read timeout: leave rather than hang.
    if (done.wait_for(std::chrono::seconds(3)) == std::future_status::timeout) std::_Exit(0);
  });
  std::fprintf(stderr, "skim serve: model %s (%s), %d slot(s) of %d tokens, batch %d, attention %s, KV %s\n",
               hp.model_id.c_str(), model->config().arch.c_str(), o.parallel, slot_ctx, o.n_batch, attn.c_str(),
               (hp.kv_types + (hp.kv_policy.empty() ? "" : ", " + hp.kv_policy)).c_str());
  std::fprintf(stderr, "skim serve: listening on http://%s:%d\n", o.host.c_str(), port);
  std::fflush(stderr);
  http.run();
  served.set_value();
  close(stop_pipe[1]);  // wakes the waiter if no signal did
  waiter.join();
}

}  // namespace

void register_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server: continuous batching, prefix reuse, chat page at /");
  add_shared_options_with_kv(*cmd, *o, {{Opt::Model}, {Opt::Threads}, {Opt::Ctx}, {Opt::Attn}, {Opt::Gemm}, {Opt::AttnMath}, {Opt::Rope}});
  cmd->add_option("--host", o->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "port to listen on (0: any free one)")->check(in_range(0, 65535))->capture_default_str();
  cmd->add_option("--parallel", o->parallel, "slots: sequences generated at once (-np); -c is split between them")
      ->check(in_range(1, 256))
      ->capture_default_str();
  cmd->add_option("-b,--batch-size", o->n_batch,
                  "prompt tokens per step, shared by the waiting prompts (chunked prefill; also the micro-batch)")
      ->check(in_range(kMinBatch, kMaxTokens))
      ->capture_default_str();
  cmd->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on every request but /health and /");
  cmd->add_option("--timeout", o->timeout_s, "socket read/write timeout in seconds (-to)")->check(in_range(1, 86400))->capture_default_str();
  cmd->add_option("--threads-http", o->threads_http, "connections served at once (0: enough for every slot's client)")
      ->check(in_range(0, 4096));
  cmd->add_option("-a,--alias", o->alias, "model name in responses (default: the file name)");
  cmd->add_option("--kv-dir", o->kv_dir,
                  "cache files: a slot's prefix is saved here before its slot is reused, loaded on a prefix hit; "
                  "requests with a 'session' id keep their cache here")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--kv-dir-size", o->kv_dir_mib,
                  "MiB the --kv-dir files may take; past it the least recently used go (0: no cap)")
      ->check(in_range(0, 1 << 24));
  cmd->add_option("--cache-ram", o->cache_ram_mib,
                  "MiB of KV memory beyond the slots' contexts for prefixes kept after their slot took another "
                  "prompt; they give it back least recently used first (0: none kept)")
      ->check(in_range(0, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--slot-save-path", o->slot_save_path,
                  "directory of POST /slots/ID?action=save|restore files (a slot's KV cache, safetensors)")
      ->check(CLI::ExistingDirectory);
  cmd->callback([o] { serve(*o); });
}

}  // namespace skim::cli
