// Squeezed Attention (docs/methods.md#squeezed-attention): the keys of a fixed
// context are clustered once; queries then pick clusters by their centroids.
//  - Clustering, per (layer, sequence), kept in the planner: the keys before
//    a chunk that are not clustered yet are clustered per KV head by k-means
//    on L2-normalised keys (k-means++ init, fixed seed, at most `iterations`
//    rounds) into `clusters` percent as many clusters; a cluster keeps the
//    mean of its raw member keys and its size. Later chunks add clusters for
//    their new keys only. A sequence with fewer keys, or whose stored rows
//    changed (a fingerprint of sampled rows), is clustered afresh.
//  - Online, per q head and 64-row query block: each row's estimated mass per
//    cluster p_c = n_c exp(scale q.mu_c) / sum over clusters, averaged over
//    the block; the most probable clusters covering `target` of it give their
//    member keys.
//  - Plus the chunk's own keys (dense causal: the paper attends the input
//    densely), the sink and the `local` keys before each block.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include "attention/estimate.h"
#include "attention/selection.h"
#include "kernels/kv_codec.h"

namespace skim::attention {
namespace {

struct SqueezedParams {
  double percent = 0, target = 0;
  int64_t iterations = 0, sink = 0, local = 0;
};

// One KV head's clusters over the clustered keys.
struct Clusters {
  std::vector<float> centroids;       // [c][d]: mean of the raw member keys
  std::vector<float> log_size;        // [c]: ln n_c
  std::vector<int32_t> member_begin{0};  // [c + 1] into members
  std::vector<int32_t> members;       // slots, ascending within a cluster
  int64_t count() const { return static_cast<int64_t>(log_size.size()); }
};

struct SequenceClusters {
  int64_t n_clustered = 0;  // slots [0, n_clustered) are clustered
  uint64_t fingerprint = 0;
  std::vector<Clusters> heads;
};

void normalise(float* x, int64_t d) {
  double s = 0;
  for (int64_t k = 0; k < d; ++k) s += static_cast<double>(x[k]) * x[k];
  const float inv = s > 0 ? static_cast<float>(1.0 / std::sqrt(s)) : 0.0f;
  for (int64_t k = 0; k < d; ++k) x[k] *= inv;
}

// Spherical k-means of the m raw keys `raw` [m][d] (slots slot0 ..), appended to `out`.
void cluster_keys(const std::vector<float>& raw, int64_t m, int64_t d, int64_t slot0, const SqueezedParams& p,
                  uint32_t seed, Clusters& out) {
  std::vector<float> x(raw.begin(), raw.begin() + m * d);
  for (int64_t i = 0; i < m; ++i) normalise(x.data() + i * d, d);
  const int64_t want = std::clamp<int64_t>(std::llround(static_cast<double>(m) * p.percent / 100.0), 1, m);
  // k-means++: each next centre drawn with probability ~ squared distance
  // (2 - 2 cos on unit vectors) to the nearest centre so far.
  std::mt19937 rng(seed);
  std::vector<float> centres, cos(static_cast<size_t>(m));
  std::vector<double> dist(static_cast<size_t>(m), 4.0);
  int64_t pick = std::uniform_int_distribution<int64_t>(0, m - 1)(rng);
  while (true) {
    centres.insert(centres.end(), x.begin() + pick * d, x.begin() + (pick + 1) * d);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(m), static_cast<int>(d), 1.0f, x.data(),
                static_cast<int>(d), x.data() + pick * d, 1, 0.0f, cos.data(), 1);
    double total = 0;
    for (int64_t i = 0; i < m; ++i) {
      dist[i] = std::min(dist[i], std::max(0.0, 2.0 - 2.0 * cos[i]));
      total += dist[i];
    }
    if (static_cast<int64_t>(centres.size()) / d == want || total <= 0) break;  // all keys coincide with a centre
    double u = std::uniform_real_distribution<double>(0.0, total)(rng);
    for (pick = 0; pick < m - 1 && (u -= dist[pick]) > 0;) ++pick;
  }
  const int64_t c = static_cast<int64_t>(centres.size()) / d;
  std::vector<int32_t> assign(static_cast<size_t>(m), -1);
  std::vector<float> sim(static_cast<size_t>(m * c));
  for (int64_t it = 0; it < p.iterations; ++it) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(c),
                static_cast<int>(d), 1.0f, x.data(), static_cast<int>(d), centres.data(), static_cast<int>(d), 0.0f,
                sim.data(), static_cast<int>(c));
    bool changed = false;
    for (int64_t i = 0; i < m; ++i) {
      const float* s = sim.data() + i * c;
      const int32_t best = static_cast<int32_t>(std::max_element(s, s + c) - s);
      changed |= best != assign[i];
      assign[i] = best;
    }
    if (!changed) break;
    std::vector<float> sums(static_cast<size_t>(c * d), 0.0f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t k = 0; k < d; ++k) sums[assign[i] * d + k] += x[i * d + k];
    for (int64_t j = 0; j < c; ++j) {
      normalise(sums.data() + j * d, d);
      if (std::any_of(sums.begin() + j * d, sums.begin() + (j + 1) * d, [](float v) { return v != 0.0f; }))
        std::copy(sums.begin() + j * d, sums.begin() + (j + 1) * d, centres.begin() + j * d);  // else: empty, kept
    }
  }
  // Non-empty clusters: raw-mean centroid, size, members.
  for (int64_t j = 0; j < c; ++j) {
    std::vector<float> mean(static_cast<size_t>(d), 0.0f);
    const size_t first = out.members.size();
    for (int64_t i = 0; i < m; ++i) {
      if (assign[i] != j) continue;
      out.members.push_back(static_cast<int32_t>(slot0 + i));
      for (int64_t k = 0; k < d; ++k) mean[k] += raw[i * d + k];
    }
    const int64_t size = static_cast<int64_t>(out.members.size() - first);
    if (size == 0) continue;
    for (float& v : mean) v /= static_cast<float>(size);
    out.centroids.insert(out.centroids.end(), mean.begin(), mean.end());
    out.log_size.push_back(std::log(static_cast<float>(size)));
    out.member_begin.push_back(static_cast<int32_t>(out.members.size()));
  }
}

// FNV-1a over up to 17 evenly spaced stored rows of [0, n) (every KV head) and their positions.
uint64_t fingerprint(const PlanRequest& r, int64_t n) {
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&hash](const void* data, size_t bytes) {
    const auto* b = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i) hash = (hash ^ b[i]) * 1099511628211ull;
  };
  std::vector<float> row(static_cast<size_t>(r.head_dim));
  for (int32_t h = 0; h < r.n_kv_heads; ++h) {
    for (int64_t s = 0; s <= 16 && n > 0; ++s) {
      const int64_t slot = s * (n - 1) / 16;
      kernels::read_k_rows(r.kv, h, slot, 1, r.head_dim, row.data());
      const int32_t pos = r.kv.position(h, slot);
      mix(row.data(), row.size() * sizeof(float));
      mix(&pos, sizeof(pos));
    }
  }
  return hash;
}

class SqueezedPlanner : public Planner {
 public:
  explicit SqueezedPlanner(const SqueezedParams& p) : p_(p) {}

  std::optional<Plan> plan(const PlanRequest& r) override {
    if (r.n_rows == 0 || r.q_slot0() == 0) return std::nullopt;  // no context to select from
    single_threaded_blas();
    const SequenceClusters& state = clusters_for(r);
    KeySelection sel(r);
    const int64_t d = r.head_dim;
#pragma omp parallel if (worth_threads(double(r.n_q_heads) * r.n_rows * state.heads[0].count() * d))
    {
      std::vector<float> logits, block_mass;
      std::vector<int32_t> order, keys;
#pragma omp for schedule(dynamic, 1)
      for (int32_t h = 0; h < r.n_q_heads; ++h) {
        const Clusters& cl = state.heads[static_cast<size_t>(h / r.group())];
        const int64_t c = cl.count();
        logits.resize(static_cast<size_t>(r.n_rows * c));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(r.n_rows), static_cast<int>(c),
                    static_cast<int>(d), r.scale, r.q_row(h, 0), static_cast<int>(r.q_row_stride),
                    cl.centroids.data(), static_cast<int>(d), 0.0f, logits.data(), static_cast<int>(c));
        block_mass.resize(static_cast<size_t>(c));
        for (int64_t qb = 0; qb < sel.n_blocks(); ++qb) {
          std::fill(block_mass.begin(), block_mass.end(), 0.0f);
          for (int64_t i = qb * KeySelection::kBlock; i < std::min(r.n_rows, (qb + 1) * KeySelection::kBlock); ++i) {
            float* row = logits.data() + i * c;
            for (int64_t j = 0; j < c; ++j) row[j] += cl.log_size[j];
            softmax_inplace(row, c);
            for (int64_t j = 0; j < c; ++j) block_mass[j] += row[j];
          }
          covering_keys(cl, block_mass, order, keys);
          sel.add_keys(h, qb, keys);
          sel.add_positions(h, qb, 0, p_.sink);
          sel.add_positions(h, qb, sel.block_first_pos(qb) - p_.local, sel.block_last_pos(qb) + 1);
          sel.add_range(h, qb, r.q_slot0(), sel.block_last(qb) + 1);
        }
      }
    }
    return sel.build();
  }

 private:
  // This request's sequence's clusters, extended to every slot before the chunk.
  const SequenceClusters& clusters_for(const PlanRequest& r) {
    SequenceClusters& s = state_[{r.layer, r.sequence}];
    const int64_t end = r.q_slot0();
    if (end < s.n_clustered || static_cast<int32_t>(s.heads.size()) != r.n_kv_heads ||
        fingerprint(r, s.n_clustered) != s.fingerprint)
      s = SequenceClusters{};
    if (s.heads.empty()) s.heads.resize(static_cast<size_t>(r.n_kv_heads));
    if (end > s.n_clustered) {
      const int64_t m = end - s.n_clustered, d = r.head_dim;
#pragma omp parallel for schedule(dynamic, 1) if (worth_threads(double(r.n_kv_heads) * m * d * 16))
      for (int32_t h = 0; h < r.n_kv_heads; ++h) {
        std::vector<float> raw(static_cast<size_t>(m * d));
        kernels::read_k_rows(r.kv, h, s.n_clustered, m, r.head_dim, raw.data());
        cluster_keys(raw, m, d, s.n_clustered, p_, 0x5eed0000u + static_cast<uint32_t>(h), s.heads[h]);
      }
      s.n_clustered = end;
      s.fingerprint = fingerprint(r, end);
    }
    return s;
  }

  // The members (ascending) of the most probable clusters covering target of the mass.
  void covering_keys(const Clusters& cl, const std::vector<float>& mass, std::vector<int32_t>& order,
                     std::vector<int32_t>& keys) const {
    order.resize(mass.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&mass](int32_t a, int32_t b) { return mass[a] > mass[b] || (mass[a] == mass[b] && a < b); });
    const double need = p_.target * std::accumulate(mass.begin(), mass.end(), 0.0);
    double covered = 0;
    keys.clear();
    for (int32_t j : order) {
      if (p_.target < 1.0 && covered >= need) break;
      covered += mass[j];
      keys.insert(keys.end(), cl.members.begin() + cl.member_begin[j], cl.members.begin() + cl.member_begin[j + 1]);
    }
    std::sort(keys.begin(), keys.end());
  }

  SqueezedParams p_;
  std::map<std::pair<int32_t, int32_t>, SequenceClusters> state_;  // by (layer, sequence)
};

}  // namespace

MethodDef squeezed_method() {
  AttentionMethodInfo info{
      "squeezed",
      "Squeezed Attention: the context's keys k-means clustered once per sequence; each query block keeps the "
      "clusters covering `target` of its centroid-estimated mass + its own chunk (dense) + sink + local window",
      {{"clusters", "5", "clusters, in percent of the keys clustered (0, 100]"},
       {"target", "0.55", "share of the estimated mass the kept clusters must cover, (0, 1]"},
       {"iterations", "8", "k-means rounds at most"},
       {"sink", "64", "first keys every query attends to"},
       {"local", "256", "keys before each query block it attends to"},
       crossover_param("2048")}};
  return {info, [](const MethodParams& p) -> std::unique_ptr<Planner> {
            SqueezedParams s;
            s.percent = p.number("clusters", 0.0, 100.0);
            if (s.percent <= 0.0) throw std::invalid_argument("squeezed: clusters must be > 0 percent");
            s.target = p.number("target", 0.0, 1.0);
            if (s.target <= 0.0) throw std::invalid_argument("squeezed: target must be > 0");
            s.iterations = p.integer("iterations", 1, 1000);
            s.sink = p.integer("sink", 0, int64_t{1} << 30);
            s.local = p.integer("local", 0, int64_t{1} << 30);
            return std::make_unique<SqueezedPlanner>(s);
          }};
}

}  // namespace skim::attention
