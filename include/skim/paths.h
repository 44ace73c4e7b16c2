// Where skim keeps what it fetches and builds outside the repository:
// ${SKIM_CACHE:-$HOME/.cache/skim}/{models/NAME, llama.cpp-VERSION, venv}.
#pragma once

#include <filesystem>
#include <string>

namespace skim::paths {

inline constexpr const char* kDefaultModel = "smollm2-135m";
inline constexpr const char* kPeerVersion = "0.3.36";  // llama-cpp-python sdist (scripts/build-llama-cpp)
inline constexpr const char* kIkPeerVersion = "0.1.5";  // ik-llama-cpp-python sdist (scripts/build-ik-llama-cpp)
inline constexpr const char* kOpenVinoVersion = "2026.4.1";  // openvino-genai on PyPI (scripts/setup-openvino)

std::filesystem::path cache_dir();
// The .gguf fetched by `scripts/fetch-model NAME`; throws with the command to run when missing.
std::filesystem::path model(const std::string& name);
// $SKIM_MODEL when set, else the default model.
std::filesystem::path default_model();
// Install prefix of the llama.cpp peer build (bin/llama-bench, bin/skim-peer, ...).
std::filesystem::path peer_prefix();
// Install prefix of the ik_llama.cpp peer build (bin/llama-bench).
std::filesystem::path ik_peer_prefix();
// The OpenVINO GenAI peer's venv (bin/python, openvino_bench.py).
std::filesystem::path openvino_prefix();
// $SKIM_PYTHON when set, else the project venv's python.
std::filesystem::path python();

}  // namespace skim::paths
