// Small driver for comparing skim's tokenizer with llama.cpp's.
//
//   tokenize_driver MODEL [--add-special] [--parse-special] FILE
//       prints the ids of FILE's contents, one per line (like `skim-peer tokenize`)
//   tokenize_driver MODEL [--add-special] [--parse-special] --each FILE...
//       prints one line per file: PATH<TAB>ids separated by spaces
//   tokenize_driver MODEL --chat ROLE=CONTENT_FILE... [--generation-prompt]
//       prints the chat-template rendering of the conversation (ChatML or Gemma)
// Add --time to report tokenization throughput on stderr.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "skim/gguf.h"
#include "skim/tokenizer.h"

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int usage() {
  std::cerr << "usage: tokenize_driver MODEL [--add-special] [--parse-special] [--time] (FILE | --each FILE...)\n"
               "       tokenize_driver MODEL --chat ROLE=CONTENT_FILE... [--generation-prompt]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  bool add_special = false, parse_special = false, each = false, timing = false, chat = false, gen_prompt = false;
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--add-special") add_special = true;
    else if (a == "--parse-special") parse_special = true;
    else if (a == "--each") each = true;
    else if (a == "--time") timing = true;
    else if (a == "--chat") chat = true;
    else if (a == "--generation-prompt") gen_prompt = true;
    else if (a.starts_with("--")) return usage();
    else files.push_back(a);
  }
  if (files.empty() || (!each && !chat && files.size() != 1)) return usage();
  try {
    const auto model = skim::GgufFile::open(argv[1]);
    const auto tok = skim::Tokenizer::from_gguf(*model);
    if (chat) {
      std::vector<skim::ChatMessage> messages;
      for (const std::string& f : files) {
        const size_t eq = f.find('=');
        if (eq == std::string::npos) return usage();
        messages.push_back({f.substr(0, eq), read_file(f.substr(eq + 1))});
      }
      std::cout << tok->apply_chat_template(messages, gen_prompt);
      return 0;
    }
    double seconds = 0;
    size_t bytes = 0, tokens = 0;
    std::string out;
    for (const std::string& f : files) {
      const std::string text = read_file(f);
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<int32_t> ids = tok->encode(text, add_special, parse_special);
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      bytes += text.size();
      tokens += ids.size();
      if (each) {
        out += f;
        out += '\t';
        for (size_t i = 0; i < ids.size(); ++i) {
          if (i) out += ' ';
          out += std::to_string(ids[i]);
        }
        out += '\n';
      } else {
        for (int32_t id : ids) {
          out += std::to_string(id);
          out += '\n';
        }
      }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    if (timing)
      std::fprintf(stderr, "%zu bytes -> %zu tokens in %.3f s (%.2f MB/s)\n", bytes, tokens, seconds,
                   bytes / 1e6 / (seconds > 0 ? seconds : 1e-9));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
