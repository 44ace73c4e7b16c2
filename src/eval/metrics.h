// Scoring and statistics for skim eval: RULER's string_match_all, Wilson
// intervals for accuracies, Newcombe's interval for the paired difference
// between a method and dense on the same samples, and distribution summaries.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace skim::eval {

// RULER's post-processing of a prediction: trimmed, ASCII control characters turned into newlines.
std::string clean_prediction(std::string_view text);
// Fraction of `expected` strings found in `prediction`, case-insensitively (RULER string_match_all).
double string_match_all(std::string_view prediction, const std::vector<std::string>& expected);

struct Interval {
  double lo = 0, hi = 0;
};

// 95% Wilson score interval of a proportion (without continuity correction).
Interval wilson(int64_t successes, int64_t n, double z = 1.959963984540054);

// Paired 2x2 table of (method, dense) outcomes on the same samples.
struct PairedCounts {
  int64_t both = 0;         // both correct
  int64_t only_method = 0;  // method correct, dense wrong
  int64_t only_dense = 0;   // dense correct, method wrong
  int64_t neither = 0;
  int64_t n() const { return both + only_method + only_dense + neither; }
  double difference() const { return n() ? static_cast<double>(only_method - only_dense) / n() : 0.0; }
};

// 95% interval of accuracy(method) - accuracy(dense): Newcombe's (1998)
// method 10, square-and-add of the two marginal Wilson intervals with the
// continuity-corrected phi correlation of the pairs.
Interval newcombe_paired(const PairedCounts& c, double z = 1.959963984540054);

// p-th percentile (0..100) with linear interpolation; NaN for no values.
double percentile(std::vector<double> values, double p);

}  // namespace skim::eval
