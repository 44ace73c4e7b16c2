// skim: long-context LLM inference on ordinary machines.
#include <cstdio>
#include <cstring>
#include <exception>
#include <vector>

#include "common.h"
#include "skim/gguf.h"

namespace {
// llama.cpp spells some options as multi-letter single-dash flags, which
// CLI11 does not parse; they are rewritten to their long names first.
struct Alias {
  const char* from;
  const char* to;
};
constexpr Alias kAliases[] = {{"-ub", "--ubatch-size"}, {"-sys", "--system-prompt"}};

std::vector<char*> rewrite_aliases(int argc, char** argv) {
  std::vector<char*> out(argv, argv + argc);
  for (char*& arg : out)
    for (const Alias& a : kAliases)
      if (std::strcmp(arg, a.from) == 0) arg = const_cast<char*>(a.to);
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args = rewrite_aliases(argc, argv);
  CLI::App app{"skim: long-context LLM inference engine (GGUF models, dense and sparse attention)"};
  app.require_subcommand(1);
  skim::cli::register_run(app);
  skim::cli::register_info(app);
  skim::cli::register_tokenize(app);
  skim::cli::register_perplexity(app);
  skim::cli::register_bench(app);
  skim::cli::register_eval(app);
  skim::cli::register_calibrate(app);
  try {
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const skim::GgufError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
