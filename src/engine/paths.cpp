#include "skim/paths.h"

#include <cstdlib>
#include <stdexcept>

#include <fmt/format.h>

namespace skim::paths {
namespace {
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}
}  // namespace

std::filesystem::path cache_dir() {
  if (const char* c = env("SKIM_CACHE")) return c;
  const char* home = env("HOME");
  return std::filesystem::path(home ? home : ".") / ".cache" / "skim";
}

std::filesystem::path model(const std::string& name) {
  const std::filesystem::path dir = cache_dir() / "models" / name;
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".gguf") return e.path();
  throw std::runtime_error(fmt::format("model '{}' is not in {}: run scripts/fetch-model {}", name, dir.string(), name));
}

std::filesystem::path default_model() {
  if (const char* m = env("SKIM_MODEL")) return m;
  return model(kDefaultModel);
}

std::filesystem::path peer_prefix() {
  if (const char* p = env("SKIM_LLAMA_CPP")) return p;
  return cache_dir() / fmt::format("llama.cpp-{}", kPeerVersion);
}

std::filesystem::path ik_peer_prefix() {
  if (const char* p = env("SKIM_IK_LLAMA_CPP")) return p;
  return cache_dir() / fmt::format("ik_llama.cpp-{}", kIkPeerVersion);
}

std::filesystem::path openvino_prefix() {
  if (const char* p = env("SKIM_OPENVINO")) return p;
  return cache_dir() / fmt::format("openvino-{}", kOpenVinoVersion);
}

std::filesystem::path python() {
  if (const char* p = env("SKIM_PYTHON")) return p;
  return cache_dir() / "venv" / "bin" / "python";
}

}  // namespace skim::paths
