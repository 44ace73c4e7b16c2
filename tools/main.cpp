// skim: long-context LLM inference on ordinary machines.
#include <cstdio>
#include <cstring>
#include <exception>
#include <vector>

#include "common.h"
#include "skim/gemm.h"

namespace {
// llama.cpp spells some options as multi-letter single-dash flags, which
// CLI11 does not parse; they are rewritten to their long names first.
struct Alias {
  const char* from;
  const char* to;
};
constexpr Alias kAliases[] = {{"-ub", "--ubatch-size"}, {"-sys", "--system-prompt"}, {"-npp", "--npp"},
                              {"-ntg", "--ntg"},       {"-npl", "--npl"},           {"-pps", "--pps"},
                              {"-np", "--parallel"},   {"-ctk", "--cache-type-k"},  {"-ctv", "--cache-type-v"},
                              {"-to", "--timeout"}};

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
  // At most one here, and a missing one checked after parsing: with a minimum
  // of one, CLI11 reports "skim nosuch" as a missing subcommand, not naming it.
  app.require_subcommand(0, 1);
  skim::cli::use_one_line_errors(app);
  skim::cli::register_run(app);
  skim::cli::register_info(app);
  skim::cli::register_tokenize(app);
  skim::cli::register_perplexity(app);
  skim::cli::register_bench(app);
  skim::cli::register_eval(app);
  skim::cli::register_calibrate(app);
  skim::cli::register_batched_bench(app);
  skim::cli::register_serve(app);
  try {
    // The tools' default arithmetic for attention (the library's is f32); --attn-math overrides it.
    skim::set_attention_math("auto");
    app.parse(static_cast<int>(args.size()), args.data());
    if (app.get_subcommands().empty()) {
      std::string names;
      for (const CLI::App* cmd : app.get_subcommands([](const CLI::App*) { return true; }))
        names += (names.empty() ? "" : ", ") + cmd->get_name();
      throw CLI::RequiredError("a subcommand (" + names + ")");
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
