// A small seeded random generator whose streams are the same on every
// platform and standard library (std distributions and std::shuffle are not),
// so a (seed, task, length, index) names one sample everywhere.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace skim::eval {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // SplitMix64.
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); the modulo bias is below 2^-40 for the n used here.
  uint64_t below(uint64_t n) { return next() % n; }
  // Uniform in [lo, hi].
  int64_t between(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo + 1))); }
  template <class T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  uint64_t state_;
};

// Seed of one sample: FNV-1a of the label mixed with the numbers.
inline uint64_t derive_seed(uint64_t seed, std::string_view label, uint64_t a = 0, uint64_t b = 0) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : label) h = (h ^ c) * 0x100000001B3ull;
  Rng mix(seed ^ h);
  mix.next();
  Rng mix2(mix.next() ^ (a * 0x9E3779B97F4A7C15ull) ^ (b + 0x632BE59BD9B4E019ull));
  return mix2.next();
}

}  // namespace skim::eval
