#include "kvpolicy/policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

#include "kernels/attention_mass.h"
#include "skim/kv.h"

namespace skim::kvpolicy {
namespace {

const std::vector<PolicyDef>& registry() {
  static const std::vector<PolicyDef> defs = {streaming_policy(), snapkv_policy(), tova_policy(), h2o_policy(), keydiff_policy(),
                                              dapq_policy(),      expected_attention_policy(),
                                              pyramid_policy(),   zipvl_policy(),    arkv_policy()};
  return defs;
}

// Keys every policy takes.
const std::vector<AttentionParamInfo>& shared_params() {
  static const std::vector<AttentionParamInfo> p = {
      {"keep", "1", "fraction of a prompt's rows kept after its prefill (1: all)"},
      {"budget", "0", "rows kept at most while decoding: past it by a 64-row page, the cache is cut back (0: none)"},
      {"sink", "4", "the first positions, always kept (attention sinks)"},
      {"window", "32", "the last rows, always kept; their queries are the observation window of scoring policies"},
      {"merge", "none",
       "evicted rows: none (dropped), average (each kept row becomes the mean of itself and the evicted rows whose key "
       "is closest to its in cosine; LOOK-M), pivot (each evicted row first averaged with that row)"},
  };
  return p;
}

}  // namespace

const std::vector<AttentionMethodInfo>& policy_infos() {
  static const std::vector<AttentionMethodInfo> infos = [] {
    std::vector<AttentionMethodInfo> v;
    for (const PolicyDef& d : registry()) {
      AttentionMethodInfo info = d.info;
      info.params.insert(info.params.end(), shared_params().begin(), shared_params().end());
      v.push_back(info);
    }
    return v;
  }();
  return infos;
}

KvPolicy::KvPolicy(const std::string& spec) {
  const attention::MethodSpec s = attention::parse_method_spec(spec);
  const auto& infos = policy_infos();
  const auto it = std::find_if(infos.begin(), infos.end(), [&](const AttentionMethodInfo& i) { return i.name == s.name; });
  if (it == infos.end()) {
    std::string names;
    for (const AttentionMethodInfo& i : infos) names += (names.empty() ? "" : ", ") + i.name;
    throw std::invalid_argument(fmt::format("KV policy '{}': unknown (known: {})", s.name, names));
  }
  name_ = s.name;
  const attention::MethodParams p(&*it, name_, s.values);
  keep_ = p.number("keep", 1e-3, 1.0);
  budget_ = p.integer("budget", 0, int64_t{1} << 30);
  sink_ = static_cast<int32_t>(p.integer("sink", 0, 1 << 20));
  window_ = static_cast<int32_t>(p.integer("window", 1, 1 << 16));
  merge_ = p.text("merge");
  if (merge_ != "none" && merge_ != "average" && merge_ != "pivot")
    throw std::invalid_argument(fmt::format("KV policy {}: merge={} (none, average or pivot)", name_, merge_));
  scorer_ = registry()[static_cast<size_t>(it - infos.begin())].make(p);
  p.reject_unread();
  if (budget_ > 0 && budget_ < sink_ + window_)
    throw std::invalid_argument(fmt::format("KV policy {}: budget={} is below sink + window ({})", name_, budget_, sink_ + window_));
}

KvPolicy::~KvPolicy() = default;

int64_t KvPolicy::target_after_prompt(int64_t n) const {
  int64_t target = keep_ < 1.0 ? static_cast<int64_t>(std::ceil(keep_ * static_cast<double>(n))) : n;
  if (budget_ > 0) target = std::min(target, budget_);
  // Too short to choose from: everything stays (kvpress #134: compressing a
  // prompt that is little more than its window produced garbage).
  return std::max(target, std::min<int64_t>(n, sink_ + window_));
}

std::vector<double> KvPolicy::original_share(const std::vector<double>& preference) {
  double top = 0.0;
  for (const double p : preference)
    if (std::isfinite(p)) top = std::max(top, p);
  std::vector<double> share;
  for (const double p : preference) share.push_back(!std::isfinite(p) ? 1.0 : top > 0.0 ? std::clamp(p / top, 0.0, 1.0) : 1.0);
  return share;
}

std::vector<std::vector<int64_t>> KvPolicy::select(const ScoreRequest& r, int64_t target,
                                                   std::vector<std::vector<int64_t>>* ranked, double* preference) const {
  const int64_t n = r.kv.n_keys, first = r.kv.first_key, held = n - first;
  std::vector<std::vector<int64_t>> kept(static_cast<size_t>(r.n_kv_heads));
  const auto keep_all = [&] {
    for (auto& k : kept) {
      k.resize(static_cast<size_t>(held));
      std::iota(k.begin(), k.end(), first);
    }
    return kept;
  };
  target = std::min(target, held);
  if (ranked) ranked->assign(static_cast<size_t>(r.n_kv_heads), {});
  if (target >= held && !scorer_->adaptive() && !ranked && !preference) return keep_all();
  std::vector<float> scores;
  if (preference) *preference = scorer_->score_and_prefer(r, scores);
  else scorer_->score(r, scores);
  const int64_t reserved = std::min<int64_t>(held, sink_ + window_);
  target = std::clamp(scorer_->layer_target(r, scores, target, sink_, window_), reserved, held);
  if (target >= held && !ranked) return keep_all();
  const int64_t recent = std::min<int64_t>(window_, target);
  for (int32_t g = 0; g < r.n_kv_heads; ++g) {
    std::vector<int64_t>& k = kept[static_cast<size_t>(g)];
    const int64_t sink_end = first + std::min(r.kv.first_slot_at(g, sink_) - first, target - recent);
    const int64_t first_recent = n - recent;
    for (int64_t s = first; s < sink_end; ++s) k.push_back(s);
    // The rest by score among the slots between the sinks and the window.
    std::vector<int64_t> middle(static_cast<size_t>(std::max<int64_t>(0, first_recent - sink_end)));
    std::iota(middle.begin(), middle.end(), sink_end);
    const int64_t take = std::min<int64_t>(target - (sink_end - first) - recent, static_cast<int64_t>(middle.size()));
    const float* sg = scores.data() + static_cast<size_t>(g) * n;
    std::partial_sort(middle.begin(), middle.begin() + take, middle.end(), [&](int64_t a, int64_t b) {
      return sg[a] > sg[b] || (sg[a] == sg[b] && a > b);  // ties: the more recent
    });
    k.insert(k.end(), middle.begin(), middle.begin() + take);
    if (ranked) (*ranked)[static_cast<size_t>(g)].assign(middle.begin(), middle.begin() + take);
    for (int64_t s = first_recent; s < n; ++s) k.push_back(s);
    std::sort(k.begin(), k.end());
  }
  return kept;
}

std::vector<MergedRow> KvPolicy::merge(const ScoreRequest& r, const std::vector<std::vector<int64_t>>& kept) const {
  return merges() ? merge_evicted(r, kept, merge_ == "pivot") : std::vector<MergedRow>{};
}

void window_attention(const ScoreRequest& r, std::vector<float>& probs) {
  const int64_t per_head = static_cast<int64_t>(r.group()) * r.q_rows * r.kv.n_keys;
  probs.resize(static_cast<size_t>(r.n_kv_heads * per_head));
  for (int32_t g = 0; g < r.n_kv_heads; ++g)
    kernels::attention_probabilities(r.q, r.q_row_stride, r.q_rows, r.q_pos0, r.n_q_heads, r.n_kv_heads, r.head_dim,
                                     r.kv, g, r.scale, probs.data() + g * per_head);
}

void window_attention_mass(const ScoreRequest& r, std::vector<float>& mass) {
  std::vector<float> probs;
  window_attention(r, probs);
  const int64_t n = r.kv.n_keys;
  mass.assign(static_cast<size_t>(r.n_kv_heads) * n, 0.0f);
  for (int32_t h = 0; h < r.n_q_heads; ++h) {
    float* out = mass.data() + static_cast<size_t>(h / r.group()) * n;
    for (int32_t i = 0; i < r.q_rows; ++i) {
      const float* p = probs.data() + (static_cast<size_t>(h) * r.q_rows + i) * n;
      for (int64_t s = r.kv.first_key; s < n; ++s) out[s] += p[s];
    }
  }
}

}  // namespace skim::kvpolicy

namespace skim {
const std::vector<AttentionMethodInfo>& kv_policies() { return kvpolicy::policy_infos(); }
void validate_kv_policy_spec(const std::string& spec) { kvpolicy::KvPolicy check(spec); }
}  // namespace skim
