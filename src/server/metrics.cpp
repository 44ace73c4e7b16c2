#include "server/metrics.h"

#include <fmt/format.h>

namespace skim::server {

std::string prometheus_text(const SchedulerStats& s) {
  std::string out;
  auto metric = [&out](const char* name, const char* type, const char* help, double value) {
    out += fmt::format("# HELP skim_{0} {1}\n# TYPE skim_{0} {2}\nskim_{0} {3}\n", name, help, type, value);
  };
  const double prefill_s = s.prefill_ms / 1000, decode_s = s.decode_ms / 1000;
  metric("requests_total", "counter", "Completion requests accepted.", static_cast<double>(s.requests));
  metric("requests_failed_total", "counter", "Requests that ended with an error.", static_cast<double>(s.requests_failed));
  metric("requests_cancelled_total", "counter", "Requests whose client left before the end.", static_cast<double>(s.requests_cancelled));
  metric("requests_processing", "gauge", "Requests in a slot.", s.slots_busy);
  metric("requests_deferred", "gauge", "Requests waiting for a slot.", s.queued);
  metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", static_cast<double>(s.prompt_tokens));
  metric("prompt_tokens_cached_total", "counter", "Prompt tokens taken from the KV cache instead of prefilled.",
         static_cast<double>(s.cached_tokens));
  metric("cache_hits_total", "counter", "Requests that reused a cached prefix.", static_cast<double>(s.cache_hits));
  metric("cache_disk_hits_total", "counter", "Of them, prefixes loaded from a --kv-dir file.", static_cast<double>(s.disk_hits));
  metric("cache_memory_hits_total", "counter", "Of them, prefixes kept in memory after their slot moved on (--cache-ram).",
         static_cast<double>(s.memory_hits));
  metric("cache_kept_prefixes", "gauge", "Prefixes kept in memory (--cache-ram).", static_cast<double>(s.kept_prefixes));
  metric("cache_kept_tokens", "gauge", "Their tokens.", static_cast<double>(s.kept_tokens));
  metric("tokens_predicted_total", "counter", "Tokens generated.", static_cast<double>(s.generated_tokens));
  metric("prompt_seconds_total", "counter", "Step time spent on prompt rows.", prefill_s);
  metric("tokens_predicted_seconds_total", "counter", "Step time spent on decode rows.", decode_s);
  metric("prompt_tokens_seconds", "gauge", "Prefill rate (tokens/s).", prefill_s > 0 ? s.prompt_tokens / prefill_s : 0);
  metric("predicted_tokens_seconds", "gauge", "Decode rate (tokens/s over all slots).",
         decode_s > 0 ? s.generated_tokens / decode_s : 0);
  metric("steps_total", "counter", "Forward passes (batches) run.", static_cast<double>(s.steps));
  metric("kv_cache_bytes", "gauge", "KV pages held, in bytes.", static_cast<double>(s.kv_held_bytes));
  metric("kv_cache_pages", "gauge", "KV pages held (64 tokens of one layer and KV head each).", static_cast<double>(s.kv_pages));
  metric("kv_cache_usage_ratio", "gauge", "KV pages held over the pool's capacity.",
         s.kv_cap_bytes ? static_cast<double>(s.kv_held_bytes) / static_cast<double>(s.kv_cap_bytes) : 0);
  return out;
}

}  // namespace skim::server
