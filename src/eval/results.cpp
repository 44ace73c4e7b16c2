#include "eval/results.h"

#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::eval {
namespace {
std::string task_key(const std::string& task, int length, int sample, const std::string& method) {
  return fmt::format("task|{}|{}|{}|{}", task, length, sample, method);
}
std::string ppl_key(int length, int window, const std::string& method) { return fmt::format("ppl|{}|{}|{}", length, window, method); }
}  // namespace

void to_json(nlohmann::json& j, const RunConfig& c) {
  j = {{"model", c.model}, {"seed", c.seed}, {"chat", c.chat}, {"depths", c.depths}, {"haystack", c.haystack}};
  if (!c.positions.empty()) j["positions"] = c.positions;  // absent from files of runs before it existed
}
void from_json(const nlohmann::json& j, RunConfig& c) {
  j.at("model").get_to(c.model);
  j.at("seed").get_to(c.seed);
  j.at("chat").get_to(c.chat);
  j.at("depths").get_to(c.depths);
  j.at("haystack").get_to(c.haystack);
  c.positions = j.value("positions", "");
}

void to_json(nlohmann::json& j, const TaskRecord& r) {
  j = {{"task", r.task},
       {"length", r.length},
       {"sample", r.sample},
       {"depth", r.depth ? nlohmann::json(*r.depth) : nlohmann::json()},
       {"method", r.method},
       {"prompt_tokens", r.prompt_tokens},
       {"prediction", r.prediction},
       {"expected", r.expected},
       {"score", r.score},
       {"correct", r.correct},
       {"prefill_ms", r.prefill_ms},
       {"decode_ms", r.decode_ms},
       {"density", r.density}};
  if (r.kv_share) j["kv_share"] = *r.kv_share;
}
void from_json(const nlohmann::json& j, TaskRecord& r) {
  j.at("task").get_to(r.task);
  j.at("length").get_to(r.length);
  j.at("sample").get_to(r.sample);
  r.depth = j.at("depth").is_null() ? std::nullopt : std::optional<double>(j.at("depth").get<double>());
  j.at("method").get_to(r.method);
  j.at("prompt_tokens").get_to(r.prompt_tokens);
  j.at("prediction").get_to(r.prediction);
  j.at("expected").get_to(r.expected);
  j.at("score").get_to(r.score);
  j.at("correct").get_to(r.correct);
  j.at("prefill_ms").get_to(r.prefill_ms);
  j.at("decode_ms").get_to(r.decode_ms);
  j.at("density").get_to(r.density);
  if (j.contains("kv_share")) r.kv_share = j.at("kv_share").get<double>();
}

void to_json(nlohmann::json& j, const PplRecord& r) {
  j = {{"length", r.length}, {"window", r.window},         {"method", r.method}, {"scored", r.scored},
       {"nll", r.nll},       {"nll_dense", r.nll_dense},   {"top1_agree", r.top1_agree},
       {"kl", r.kl},         {"prefill_ms", r.prefill_ms}, {"density", r.density}};
}
void from_json(const nlohmann::json& j, PplRecord& r) {
  j.at("length").get_to(r.length);
  j.at("window").get_to(r.window);
  j.at("method").get_to(r.method);
  j.at("scored").get_to(r.scored);
  j.at("nll").get_to(r.nll);
  j.at("nll_dense").get_to(r.nll_dense);
  j.at("top1_agree").get_to(r.top1_agree);
  j.at("kl").get_to(r.kl);
  j.at("prefill_ms").get_to(r.prefill_ms);
  j.at("density").get_to(r.density);
}

ResultStore::ResultStore(std::filesystem::path dir, RunConfig config) : path_(dir / "results.json"), config_(std::move(config)) {
  if (!std::filesystem::exists(path_)) return;
  try {
    std::ifstream in(path_);
    const nlohmann::json j = nlohmann::json::parse(in);
    const nlohmann::json before = j.at("config"), now = config_;
    for (const auto& [key, value] : now.items())
      if (before.value(key, nlohmann::json()) != value)
        throw std::runtime_error(fmt::format("it was made with {} {} and this run has {}; use another --out or the same settings", key,
                                             before.at(key).dump(), value.dump()));
    for (const TaskRecord& r : j.at("records").get<std::vector<TaskRecord>>()) add(r);
    for (const PplRecord& r : j.at("ppl").get<std::vector<PplRecord>>()) add(r);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("cannot resume from {}: {}", path_.string(), e.what()));
  }
}

bool ResultStore::has_task(const std::string& task, int length, int sample, const std::string& method) const {
  return keys_.count(task_key(task, length, sample, method)) > 0;
}
bool ResultStore::has_ppl(int length, int window, const std::string& method) const {
  return keys_.count(ppl_key(length, window, method)) > 0;
}

void ResultStore::add(TaskRecord r) {
  if (keys_.insert(task_key(r.task, r.length, r.sample, r.method)).second) tasks_.push_back(std::move(r));
}
void ResultStore::add(PplRecord r) {
  if (keys_.insert(ppl_key(r.length, r.window, r.method)).second) ppl_.push_back(std::move(r));
}

void ResultStore::save() const {
  std::filesystem::create_directories(path_.parent_path());
  const std::filesystem::path partial = path_.string() + ".partial";
  {
    std::ofstream out(partial);
    out << nlohmann::json{{"config", config_}, {"records", tasks_}, {"ppl", ppl_}}.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    if (!out) throw std::runtime_error(fmt::format("cannot write {}", partial.string()));
  }
  std::filesystem::rename(partial, path_);
}

}  // namespace skim::eval
