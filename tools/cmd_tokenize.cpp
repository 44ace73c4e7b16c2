// skim tokenize: print the token ids of a text (like llama-tokenize --ids, one per line).
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "common.h"
#include "skim/gguf.h"
#include "skim/tokenizer.h"

namespace skim::cli {
namespace {

struct TokenizeOptions : SharedOptions {
  std::string prompt, file;
  bool add_special = false;
  bool parse_special = false;
  bool show_pieces = false;
};

void tokenize(const TokenizeOptions& o) {
  if (o.prompt.empty() == o.file.empty()) throw std::runtime_error("give exactly one of -p TEXT or -f FILE");
  // Only the vocabulary is needed: no weights are touched.
  std::unique_ptr<GgufFile> f = GgufFile::open(resolve_model(o));
  std::unique_ptr<Tokenizer> tok = Tokenizer::from_gguf(*f);
  const std::string text = o.file.empty() ? o.prompt : read_file(o.file);
  std::vector<int32_t> ids = tok->encode(text, o.add_special, o.parse_special);
  std::string out;
  for (int32_t id : ids) {
    if (o.show_pieces)
      out += fmt::format("{:6} -> '{}'\n", id, tok->token_to_piece(id, true));
    else
      out += fmt::format("{}\n", id);
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "print the token ids of a text, one per line");
  add_shared_options(*cmd, *o, {{Opt::Model}, {Opt::Threads}});
  cmd->add_option("-p,--prompt", o->prompt, "text");
  cmd->add_option("-f,--file", o->file, "read the text from a file")->check(CLI::ExistingFile);
  cmd->add_flag("--add-special", o->add_special, "add BOS/EOS as the vocabulary asks");
  cmd->add_flag("--parse-special", o->parse_special, "recognise special token texts such as <|im_start|>");
  cmd->add_flag("--show-pieces", o->show_pieces, "print each id with its text");
  cmd->callback([o] { tokenize(*o); });
}

}  // namespace skim::cli
