// DIR/results.json of skim eval: one record per (sample, method) and per
// (perplexity window, method), rewritten after every sample so that an
// interrupted run resumes where it stopped.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace skim::eval {

// What makes two runs' samples identical; a resumed run must match it.
struct RunConfig {
  std::string model;            // file name of the GGUF
  uint64_t seed = 42;
  bool chat = true;             // chat template applied
  std::vector<double> depths;   // the depth grid of passkey/niah
  std::string haystack;         // "cache" or "builtin"
  std::string positions;        // RoPE scaling and dual chunk attention ("": neither)
};

struct TaskRecord {
  std::string task;
  int length = 0;                // target tokens
  int sample = 0;                // index within (task, length)
  std::optional<double> depth;   // % (depth-grid tasks)
  std::string method;            // attention spec
  int prompt_tokens = 0;
  std::string prediction;
  std::vector<std::string> expected;
  double score = 0;              // string_match_all
  bool correct = false;          // score == 1
  double prefill_ms = 0, decode_ms = 0;
  double density = 1;            // attention pairs computed / dense pairs, over the prefill
  // KV bytes held once the prompt is in, over the full f16 cache's (pages,
  // measured); absent in records written before it was kept.
  std::optional<double> kv_share;
};

// One perplexity window through one method (tier T2). Dense records carry only nll.
struct PplRecord {
  int length = 0;
  int window = 0;
  std::string method;
  int64_t scored = 0;            // positions scored (second half of the window)
  double nll = 0;                // summed negative log-likelihood of the method
  double nll_dense = 0;          // the same for dense, computed in the same run
  int64_t top1_agree = 0;        // positions where the method's argmax equals dense's
  std::vector<float> kl;         // KL(dense || method) per scored position, nats
  double prefill_ms = 0;
  double density = 1;
};

class ResultStore {
 public:
  // Loads dir/results.json if present. Throws std::runtime_error if it was
  // written with a different configuration or cannot be parsed.
  ResultStore(std::filesystem::path dir, RunConfig config);

  bool has_task(const std::string& task, int length, int sample, const std::string& method) const;
  bool has_ppl(int length, int window, const std::string& method) const;
  void add(TaskRecord r);
  void add(PplRecord r);
  void save() const;  // atomically (write, then rename)

  const RunConfig& config() const { return config_; }
  const std::vector<TaskRecord>& tasks() const { return tasks_; }
  const std::vector<PplRecord>& ppl() const { return ppl_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  RunConfig config_;
  std::vector<TaskRecord> tasks_;
  std::vector<PplRecord> ppl_;
  std::set<std::string> keys_;
};

void to_json(nlohmann::json& j, const RunConfig& c);
void from_json(const nlohmann::json& j, RunConfig& c);
void to_json(nlohmann::json& j, const TaskRecord& r);
void from_json(const nlohmann::json& j, TaskRecord& r);
void to_json(nlohmann::json& j, const PplRecord& r);
void from_json(const nlohmann::json& j, PplRecord& r);

}  // namespace skim::eval
