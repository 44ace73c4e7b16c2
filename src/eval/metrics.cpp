#include "eval/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

namespace skim::eval {
namespace {
std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}
}  // namespace

std::string clean_prediction(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20) c = '\n';
  const size_t b = out.find_first_not_of(" \n");
  const size_t e = out.find_last_not_of(" \n");
  return b == std::string::npos ? "" : out.substr(b, e - b + 1);
}

double string_match_all(std::string_view prediction, const std::vector<std::string>& expected) {
  if (expected.empty()) return 0;
  const std::string p = lower(prediction);
  const auto found = std::count_if(expected.begin(), expected.end(), [&](const std::string& r) { return p.find(lower(r)) != std::string::npos; });
  return static_cast<double>(found) / expected.size();
}

Interval wilson(int64_t successes, int64_t n, double z) {
  if (n <= 0) return {0, 1};
  const double p = static_cast<double>(successes) / n, z2 = z * z;
  const double center = (p + z2 / (2.0 * n)) / (1 + z2 / n);
  const double half = z * std::sqrt(p * (1 - p) / n + z2 / (4.0 * n * n)) / (1 + z2 / n);
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

Interval newcombe_paired(const PairedCounts& c, double z) {
  const int64_t n = c.n();
  if (n == 0) return {-1, 1};
  const int64_t method_ok = c.both + c.only_method, dense_ok = c.both + c.only_dense;
  const double p1 = static_cast<double>(method_ok) / n, p2 = static_cast<double>(dense_ok) / n;
  const Interval w1 = wilson(method_ok, n, z), w2 = wilson(dense_ok, n, z);
  // phi of the 2x2 table, with ad - bc shrunk towards zero by n/2 when positive.
  double phi = 0;
  const double margins = static_cast<double>(method_ok) * (n - method_ok) * dense_ok * (n - dense_ok);
  if (margins > 0) {
    const double cross = static_cast<double>(c.both) * c.neither - static_cast<double>(c.only_method) * c.only_dense;
    const double adjusted = cross > n / 2.0 ? cross - n / 2.0 : (cross < 0 ? cross : 0.0);
    phi = adjusted / std::sqrt(margins);
  }
  const double d = p1 - p2;
  const double a1 = p1 - w1.lo, b1 = w1.hi - p1, a2 = p2 - w2.lo, b2 = w2.hi - p2;
  return {d - std::sqrt(std::max(0.0, a1 * a1 - 2 * phi * a1 * b2 + b2 * b2)),
          d + std::sqrt(std::max(0.0, b1 * b1 - 2 * phi * b1 * a2 + a2 * a2))};
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(p, 0.0, 100.0) / 100.0 * (values.size() - 1);
  const size_t i = static_cast<size_t>(pos);
  const double frac = pos - i;
  return i + 1 < values.size() ? values[i] * (1 - frac) + values[i + 1] * frac : values[i];
}

}  // namespace skim::eval
