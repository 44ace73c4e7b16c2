#include "eval/tasks.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <numbers>
#include <set>
#include <span>
#include <stdexcept>

#include <fmt/format.h>

#include "eval/rng.h"

namespace skim::eval {
namespace {

// What a task builds around a haystack of `units` (characters, words or
// word occurrences, depending on the task).
struct Draft {
  std::string context, instruction, answer_prefix;
  std::vector<Needle> needles;
  std::vector<std::string> expected;
};
struct Plan {
  std::function<Draft(size_t units)> build;  // deterministic in `units`
  size_t max_units = size_t{1} << 40;  // characters: haystacks wrap around
};
using PlanFn = Plan (*)(const SampleSpec&, const Corpus&, Rng&);

const std::string kNoiseLines = std::string(kNoiseLine) + "\n";  // RULER noise: one filler line per line
const std::string kPasskeyFiller = std::string(kNoiseLine) + " ";

constexpr std::array<std::string_view, 40> kCities = {
    "Lisbon",  "Nairobi", "Oslo",      "Lima",    "Hanoi",   "Dublin",   "Quito",      "Tbilisi", "Accra",  "Perth",
    "Bergen",  "Seville", "Kyoto",     "Tallinn", "Havana",  "Krakow",   "Marrakesh",  "Auckland", "Porto", "Montreal",
    "Bogota",  "Cairo",   "Helsinki",  "Manila",  "Zurich",  "Valparaiso", "Reykjavik", "Dakar",   "Riga",   "Osaka",
    "Glasgow", "Tunis",   "Vancouver", "Lyon",    "Mumbai",  "Santiago", "Salzburg",   "Jakarta", "Toronto", "Naples"};

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? std::string(sep) : "") + items[i];
  return out;
}

// "a", "a and b", "a, b, and c".
std::string join_and(const std::vector<std::string>& items) {
  if (items.size() <= 2) return join(items, " and ");
  std::vector<std::string> head(items.begin(), items.end() - 1);
  return join(head, ", ") + ", and " + items.back();
}

std::string number7(Rng& rng) { return std::to_string(rng.between(1000000, 9999999)); }

std::string uuid4(Rng& rng) {
  const uint64_t hi = rng.next(), lo = rng.next();
  return fmt::format("{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFF,
                     8 | (lo >> 62), (lo >> 48) & 0xFFF, lo & 0xFFFFFFFFFFFFull);
}

// `n` distinct values from `draw`.
std::vector<std::string> distinct(size_t n, const std::function<std::string()>& draw) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  while (out.size() < n)
    if (std::string v = draw(); seen.insert(v).second) out.push_back(v);
  return out;
}

// `n` distinct depths from RULER's 40 evenly spaced percentages, in random order.
std::vector<double> random_depths(Rng& rng, size_t n) {
  std::vector<double> grid;
  for (int i = 0; i < 40; ++i) grid.push_back(std::round(i * 100.0 / 39));
  rng.shuffle(grid);
  grid.resize(n);
  return grid;
}

// Hides each (text, depth %) at the sentence boundary of `hay` nearest to its
// depth, joined by `sep`; with sep '\n' only line starts count, so needles
// become lines of their own. Records the needles in order of position.
std::string insert_needles(const std::string& hay, const std::vector<std::pair<std::string, double>>& items, char sep,
                           std::vector<Needle>& needles) {
  std::vector<size_t> bounds = sentence_boundaries(hay);
  if (sep == '\n')
    std::erase_if(bounds, [&](size_t b) { return b > 0 && b < hay.size() && hay[b - 1] != '\n'; });
  struct Slot {
    size_t at;
    const std::string* text;
  };
  std::vector<Slot> slots;
  for (const auto& [text, depth] : items) {
    const double target = depth / 100.0 * hay.size();
    auto it = std::lower_bound(bounds.begin(), bounds.end(), static_cast<size_t>(std::ceil(target)));
    if (it == bounds.end() || (it != bounds.begin() && target - *(it - 1) <= *it - target)) --it;
    slots.push_back({*it, &text});
  }
  std::stable_sort(slots.begin(), slots.end(), [](const Slot& a, const Slot& b) { return a.at < b.at; });
  std::string out;
  size_t prev = 0;
  needles.clear();
  for (const Slot& s : slots) {
    out.append(hay, prev, s.at - prev);
    if (s.at == hay.size() && !hay.empty()) out += sep;
    needles.push_back({*s.text, out.size(), hay.empty() ? 0.0 : 100.0 * s.at / hay.size()});
    out += *s.text;
    if (s.at < hay.size()) out += sep;
    prev = s.at;
  }
  out.append(hay, prev);
  return out;
}

// Where prose haystacks start: a random sentence start in the essay text.
size_t essay_start(const Corpus& corpus, Rng& rng) {
  const size_t at = next_sentence_start(corpus.essay, rng.below(corpus.essay.size()));
  return at < corpus.essay.size() ? at : 0;
}

Plan passkey(const SampleSpec& spec, const Corpus&, Rng& rng) {
  const std::string key = std::to_string(rng.between(10000, 99999));
  const std::string needle = fmt::format("The pass key is {0}. Keep it in mind: {0} is the pass key.", key);
  return {[=](size_t chars) {
    Draft d;
    d.context = insert_needles(take_text(kPasskeyFiller, 0, chars), {{needle, spec.depth}}, ' ', d.needles);
    d.instruction =
        "Somewhere in the long, irrelevant text below there is one important piece of information. Find it and "
        "remember it: you will be asked about it at the end.\n" + d.context + "\nWhat is the pass key?";
    d.answer_prefix = "The pass key is";
    d.expected = {key};
    return d;
  }};
}

Plan niah(const SampleSpec& spec, const Corpus& corpus, Rng& rng) {
  const std::string city(kCities[rng.below(kCities.size())]);
  const std::string value = number7(rng);
  const size_t start = essay_start(corpus, rng);
  const std::string needle = fmt::format("The special magic number of {} is {}.", city, value);
  return {[=, &corpus](size_t chars) {
    Draft d;
    d.context = insert_needles(take_text(corpus.essay, start, chars), {{needle, spec.depth}}, ' ', d.needles);
    d.instruction = "Below is a long text. Read it carefully.\n\n" + d.context +
                    "\n\nQuestion: According to the text above, what is the special magic number of " + city + "?";
    d.answer_prefix = "The special magic number of " + city + " is";
    d.expected = {value};
    return d;
  }};
}

// RULER's needle family: `keys` needles with distinct keys, each with
// `values` values, of which the first `queries` keys are asked for.
enum class Kind { Word, Number, Uuid };
struct NiahShape {
  bool noise_haystack;
  Kind key, value;
  int keys, values, queries;
};

template <NiahShape S>
Plan ruler_niah(const SampleSpec&, const Corpus& corpus, Rng& rng) {
  auto draw = [&](Kind kind) -> std::function<std::string()> {
    switch (kind) {
      case Kind::Word: return [&] { return rng.pick(corpus.words) + "-" + rng.pick(corpus.words); };
      case Kind::Number: return [&] { return number7(rng); };
      case Kind::Uuid: return [&] { return uuid4(rng); };
    }
    throw std::logic_error("unknown kind");
  };
  const std::vector<std::string> keys = distinct(S.keys, draw(S.key));
  const std::vector<std::string> values = distinct(static_cast<size_t>(S.keys) * S.values, draw(S.value));
  const std::string plural = S.value == Kind::Uuid ? "uuids" : "numbers";
  const std::string singular = plural.substr(0, plural.size() - 1);

  std::vector<std::pair<std::string, double>> items;
  const std::vector<double> depths = random_depths(rng, values.size());
  for (size_t i = 0; i < values.size(); ++i)
    items.push_back({fmt::format("One of the special magic {} for {} is: {}.", plural, keys[i / S.values], values[i]), depths[i]});
  const std::vector<std::string> expected(values.begin(), values.begin() + static_cast<size_t>(S.queries) * S.values);
  const std::string query = join_and({keys.begin(), keys.begin() + S.queries});
  const bool one = expected.size() == 1;
  const std::string intro =
      one ? fmt::format("A special magic {0} is hidden in the text below. Memorize it; I will ask you about the {0} afterwards.\n", singular)
          : fmt::format("Some special magic {0} are hidden in the text below. Memorize them; I will ask you about the {0} afterwards.\n", plural);
  const std::string question = one ? fmt::format("\nWhat is the special magic {} for {} mentioned in the text above?", singular, query)
                                   : fmt::format("\nWhat are all the special magic {} for {} mentioned in the text above?", plural, query);
  const std::string prefix = one ? fmt::format("The special magic {} for {} mentioned in the text above is", singular, query)
                                 : fmt::format("The special magic {} for {} mentioned in the text above are", plural, query);
  const std::string_view source = S.noise_haystack ? std::string_view(kNoiseLines) : std::string_view(corpus.essay);
  const size_t start = S.noise_haystack ? 0 : essay_start(corpus, rng);
  return {[=](size_t chars) {
    Draft d;
    d.context = insert_needles(take_text(source, start, chars), items, S.noise_haystack ? '\n' : ' ', d.needles);
    d.instruction = intro + d.context + question;
    d.answer_prefix = prefix;
    d.expected = expected;
    return d;
  }};
}

constexpr int kChainVars = 5;

// Variable tracking: a chain VAR A = 12345, VAR B = VAR A, ... hidden in noise, after a one-shot example.
Plan variable_tracking(const SampleSpec&, const Corpus&, Rng& rng) {
  auto chain = [&rng] {
    std::vector<std::string> names = distinct(kChainVars, [&] {
      std::string s(5, 'A');
      for (char& c : s) c = static_cast<char>('A' + rng.below(26));
      return s;
    });
    return std::pair{names, std::to_string(rng.between(10000, 99999))};
  };
  auto needles_of = [&rng](const std::vector<std::string>& names, const std::string& value) {
    std::vector<double> depths = random_depths(rng, names.size());
    std::sort(depths.begin(), depths.end());
    std::vector<std::pair<std::string, double>> items;
    for (size_t i = 0; i < names.size(); ++i)
      items.push_back({"VAR " + names[i] + " = " + (i ? "VAR " + names[i - 1] : value), depths[i]});
    return items;
  };
  auto instruction = [](const std::string& context, const std::string& value) {
    return "Follow the chain of variable assignments hidden in the text below.\n\n" + context +
           "\nQuestion: Which variables are assigned the value " + value + " in the text above?";
  };
  auto prefix = [](const std::string& value) {
    return fmt::format("Answer: Following the assignments in the text above, {} variables are assigned the value {}. They are:", kChainVars, value);
  };

  const auto [ex_names, ex_value] = chain();
  std::vector<Needle> ignored;
  const std::string ex_context = insert_needles(take_text(kNoiseLines, 0, 3 * kNoiseLines.size()), needles_of(ex_names, ex_value), '\n', ignored);
  const std::string example = instruction(ex_context, ex_value) + "\n" + prefix(ex_value) + " " + join(ex_names, " ") + "\n\n";
  const auto [names, value] = chain();
  const auto items = needles_of(names, value);
  return {[=](size_t chars) {
    Draft d;
    d.context = insert_needles(take_text(kNoiseLines, 0, chars), items, '\n', d.needles);
    d.instruction = example + instruction(d.context, value);
    d.answer_prefix = prefix(value);
    d.expected = names;
    return d;
  }};
}

// Common words extraction: 10 words repeated often among many repeated rarely.
Plan common_words(const SampleSpec& spec, const Corpus& corpus, Rng& rng) {
  constexpr size_t kCommon = 10;
  const bool long_form = spec.length >= 4096;  // RULER's frequencies: 30 vs 3 from 4K, else 6 vs 1
  const int freq_common = long_form ? 30 : 6, freq_rare = long_form ? 3 : 1;
  const size_t ex_rare = long_form ? 30 : 10;
  const int ex_freq_common = long_form ? 10 : 3, ex_freq_rare = long_form ? 3 : 1;

  std::vector<std::string> pool = corpus.words;
  rng.shuffle(pool);
  const uint64_t list_seed = rng.next();
  auto numbered = [list_seed](const std::vector<std::string>& common, int fc, std::span<const std::string> rare, int fr) {
    std::vector<std::string> list;
    for (const std::string& w : common) list.insert(list.end(), fc, w);
    for (const std::string& w : rare) list.insert(list.end(), fr, w);
    Rng shuffle_rng(list_seed);
    shuffle_rng.shuffle(list);
    std::string out;
    for (size_t i = 0; i < list.size(); ++i) out += fmt::format("{}{}. {}", i ? " " : "", i + 1, list[i]);
    return out;
  };
  auto instruction = [](const std::string& list) {
    return "Below is a numbered list of words. Some words occur more often than others; remember the ones that occur "
           "most often.\n" + list + "\nQuestion: Which 10 words occur most often in the list above?";
  };
  const std::string prefix = "Answer: The 10 words that occur most often in the list are:";

  const std::vector<std::string> ex_common(pool.begin(), pool.begin() + kCommon);
  const std::vector<std::string> common(pool.begin() + kCommon, pool.begin() + 2 * kCommon);
  const std::span<const std::string> ex_words(pool.data() + 2 * kCommon, ex_rare);
  const std::string example = instruction(numbered(ex_common, ex_freq_common, ex_words, ex_freq_rare)) + "\n" + prefix + " " +
                              join(ex_common, ", ") + "\n\n";
  const size_t first_rare = 2 * kCommon + ex_rare;
  std::vector<std::string> rare(pool.begin() + first_rare, pool.end());
  const size_t max_rare = rare.size();
  return {[=](size_t n_rare) {
            Draft d;
            d.context = numbered(common, freq_common, std::span(rare).first(n_rare), freq_rare);
            d.instruction = example + instruction(d.context);
            d.answer_prefix = prefix;
            d.expected = common;
            return d;
          },
          max_rare};
}

// Frequent words extraction: coded words with Zipf(2) counts; the most
// frequent is replaced by dots, and ranks 2-4 are the answer.
Plan frequent_words(const SampleSpec& spec, const Corpus&, Rng& rng) {
  const size_t vocab = std::max(8, spec.length / 50);
  const std::vector<std::string> words = distinct(vocab, [&] {
    std::string s(6, 'a');
    for (char& c : s) c = static_cast<char>('a' + rng.below(26));
    return s;
  });
  const uint64_t shuffle_seed = rng.next();
  return {[=](size_t n) {
            constexpr double kZeta2 = std::numbers::pi * std::numbers::pi / 6;
            std::vector<std::string> text;
            for (size_t k = 1; k <= vocab; ++k) {
              const size_t count = static_cast<size_t>(n / (static_cast<double>(k * k) * kZeta2));
              text.insert(text.end(), count, k == 1 ? std::string("....") : words[k - 1]);
            }
            Rng shuffle_rng(shuffle_seed);
            shuffle_rng.shuffle(text);
            Draft d;
            d.context = join(text, " ");
            d.instruction =
                "Read the coded text below and count how often each coded word appears. Find the three coded words "
                "that appear most often.\n" + d.context +
                "\nQuestion: Give no explanation and ignore the dots '....'. Which three coded words appear most often "
                "in the coded text above?";
            d.answer_prefix = "Answer: In the coded text above, the three coded words that appear most often are:";
            d.expected = {words[1], words[2], words[3]};
            return d;
          },
          static_cast<size_t>(spec.length) * 8};
}

struct TaskDef {
  TaskInfo info;
  PlanFn plan;
};

const std::vector<TaskDef>& registry() {
  static const std::vector<TaskDef> defs = {
      {{"passkey", "5-digit pass key in repeated filler (Landmark/LongLoRA style)", 16, true}, passkey},
      {{"niah", "one needle at the --depths grid in SOTU/Austen prose (MInference style)", 32, true}, niah},
      {{"niah_single_1", "RULER single needle, noise haystack, words -> numbers", 128, false},
       ruler_niah<NiahShape{true, Kind::Word, Kind::Number, 1, 1, 1}>},
      {{"niah_single_2", "RULER single needle, prose haystack, words -> uuids", 128, false},
       ruler_niah<NiahShape{false, Kind::Word, Kind::Uuid, 1, 1, 1}>},
      {{"niah_single_3", "RULER single needle, prose haystack, numbers -> numbers", 128, false},
       ruler_niah<NiahShape{false, Kind::Number, Kind::Number, 1, 1, 1}>},
      {{"niah_multikey", "RULER 4 needles with different keys, one asked", 128, false},
       ruler_niah<NiahShape{false, Kind::Word, Kind::Number, 4, 1, 1}>},
      {{"niah_multivalue", "RULER one key with 4 values, all asked", 128, false},
       ruler_niah<NiahShape{false, Kind::Word, Kind::Number, 1, 4, 1}>},
      {{"niah_multiquery", "RULER 4 needles with different keys, all asked", 128, false},
       ruler_niah<NiahShape{false, Kind::Word, Kind::Number, 4, 1, 4}>},
      {{"vt", "RULER variable tracking: one chain of 4 hops in noise", 30, false}, variable_tracking},
      {{"cwe", "RULER common words extraction: the 10 most repeated words of a list", 120, false}, common_words},
      {{"fwe", "RULER frequent words extraction: ranks 2-4 of Zipf-distributed coded words", 50, false}, frequent_words},
  };
  return defs;
}

const TaskDef& find_def(const std::string& name) {
  for (const TaskDef& d : registry())
    if (d.info.name == name) return d;
  std::vector<std::string> names;
  for (const TaskDef& d : registry()) names.push_back(d.info.name);
  throw std::invalid_argument(fmt::format("unknown task '{}' (known: {}, ppl)", name, join(names, ", ")));
}

// Largest units <= max_units whose prompt has at most `limit` tokens, stopping
// once within limit/400 tokens of it. count() need only be roughly increasing
// (shuffled lists are not strictly so). Secant steps inside a bracket that
// shrinks by at least 1/8 per step.
size_t fit_units(size_t limit, size_t max_units, const std::function<size_t(size_t)>& count) {
  const size_t tolerance = std::max<size_t>(1, limit / 400);
  const size_t c0 = count(0);
  if (c0 > limit) throw std::invalid_argument(fmt::format("its fixed text alone takes {} of its {} prompt tokens", c0, limit));
  size_t lo = 0, c_lo = c0;                  // fits
  size_t hi = max_units + 1, c_hi = 0;       // too long (c_hi = 0: not measured)
  size_t guess = std::min(max_units, (limit - c0) * 4);  // ~4 characters per token
  while (hi - lo > 1 && limit - c_lo > tolerance) {
    const size_t c = count(guess);
    if (c <= limit) lo = guess, c_lo = c;
    else hi = guess, c_hi = c;
    const double aim = limit - tolerance / 2.0;
    double next;
    if (c_hi == 0) {  // extrapolate from the tokens each unit has cost so far
      next = lo + (aim - c_lo) * lo / std::max<double>(1, c_lo - c0);
    } else {
      const double step = (hi - lo) / 8.0;
      next = std::clamp(lo + (aim - c_lo) / std::max<double>(1, c_hi - c_lo) * (hi - lo), lo + step, hi - step);
    }
    guess = std::clamp<size_t>(static_cast<size_t>(next), lo + 1, std::min(max_units, hi - 1));
  }
  return lo;
}

}  // namespace

const std::vector<TaskInfo>& tasks() {
  static const std::vector<TaskInfo> infos = [] {
    std::vector<TaskInfo> v;
    for (const TaskDef& d : registry()) v.push_back(d.info);
    return v;
  }();
  return infos;
}

const TaskInfo& find_task(const std::string& name) { return find_def(name).info; }

std::string PromptFormat::render(const std::string& instruction, const std::string& answer_prefix) const {
  if (!chat_) return instruction + "\n" + answer_prefix;
  return tok_.apply_chat_template({{"user", instruction}}, true) + answer_prefix;
}

std::vector<int32_t> PromptFormat::encode(const std::string& instruction, const std::string& answer_prefix) const {
  return tok_.encode(render(instruction, answer_prefix), true, chat_);
}

uint64_t sample_seed(uint64_t run_seed, const std::string& task, int length, int index) {
  return derive_seed(run_seed, task, static_cast<uint64_t>(length), static_cast<uint64_t>(index));
}

Sample make_sample(const SampleSpec& spec, const Corpus& corpus, const PromptFormat& format) {
  const TaskDef& def = find_def(spec.task);
  if (spec.depth < 0 || spec.depth > 100) throw std::invalid_argument(fmt::format("depth {} is outside 0..100", spec.depth));
  Rng rng(spec.seed);
  const Plan plan = def.plan(spec, corpus, rng);
  const int limit = spec.length - def.info.answer_tokens;
  size_t units;
  try {
    if (limit <= 0) throw std::invalid_argument(fmt::format("its answer budget alone is {} tokens", def.info.answer_tokens));
    units = fit_units(static_cast<size_t>(limit), plan.max_units, [&](size_t n) {
      const Draft d = plan.build(n);
      return format.encode(d.instruction, d.answer_prefix).size();
    });
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("length {} is too short for task {}: {}", spec.length, spec.task, e.what()));
  }
  Draft d = plan.build(units);
  Sample s;
  s.spec = spec;
  s.tokens = format.encode(d.instruction, d.answer_prefix);
  s.context = std::move(d.context);
  s.instruction = std::move(d.instruction);
  s.answer_prefix = std::move(d.answer_prefix);
  s.needles = std::move(d.needles);
  s.expected = std::move(d.expected);
  s.answer_tokens = def.info.answer_tokens;
  return s;
}

}  // namespace skim::eval
