// Long-context task generators (tier T3 of the eval protocol): passkey, a
// needle depth x length grid, and RULER-style synthetic tasks. Each sample is
// a pure function of (task, length, depth, seed, corpus, tokenizer), fitted so
// that its prompt plus its answer budget is within ~0.5% below the target
// length in the model's own tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/corpus.h"
#include "skim/tokenizer.h"

namespace skim::eval {

struct TaskInfo {
  std::string name;
  std::string summary;
  int answer_tokens;  // generation budget, counted in the target length
  bool depth_grid;    // one needle placed at the --depths grid (passkey, niah)
};

// Every generated task, in report order. ("ppl" is not a generated task: see eval/logit_compare.h.)
const std::vector<TaskInfo>& tasks();
// Throws std::invalid_argument naming the known tasks.
const TaskInfo& find_task(const std::string& name);

// How a task's text becomes model input: the chat template around the
// instruction (as a user turn) when `chat`, then the answer prefix the model continues.
class PromptFormat {
 public:
  PromptFormat(const Tokenizer& tok, bool chat) : tok_(tok), chat_(chat) {}
  std::string render(const std::string& instruction, const std::string& answer_prefix) const;
  std::vector<int32_t> encode(const std::string& instruction, const std::string& answer_prefix) const;

 private:
  const Tokenizer& tok_;
  bool chat_;
};

struct Needle {
  std::string text;
  size_t offset = 0;   // into Sample::context
  double depth = 0;    // 100 * insertion point / haystack size (before insertion), in %
};

struct SampleSpec {
  std::string task;
  int length = 0;      // target tokens: prompt + answer budget
  double depth = 50;   // % (depth-grid tasks only)
  uint64_t seed = 0;   // the sample's own seed (see sample_seed)
};

struct Sample {
  SampleSpec spec;
  std::string context;                // haystack with needles, verbatim inside `instruction`
  std::string instruction;            // the user message
  std::string answer_prefix;          // appended after the (templated) instruction
  std::vector<Needle> needles;        // what was hidden in `context`, in order of position
  std::vector<std::string> expected;  // references for string_match_all
  std::vector<int32_t> tokens;        // model input
  int answer_tokens = 0;
};

// Seed of sample `index` of (task, length) under the run seed; the same for every method.
uint64_t sample_seed(uint64_t run_seed, const std::string& task, int length, int index);

// Throws std::invalid_argument when the length cannot hold the task's fixed text.
Sample make_sample(const SampleSpec& spec, const Corpus& corpus, const PromptFormat& format);

}  // namespace skim::eval
