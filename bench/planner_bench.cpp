// Cost of a planner next to the kernel it feeds: one chunk of random Q/K/V in
// the engine's layout (Q [rows][Hq*d] f32, cache [Hkv][keys][d] f16).
//
//   planner_bench [--spec sale] [--rows 512] [--keys 8192] [--hq 9] [--hkv 3] [--d 64]
//                 [--structure 4] [--threads N] [--reps 3] [--clock wall|cpu]
//
// Prints, best of --reps: planning ms, dense kernel ms, the plan's kernel ms
// and its density. --structure S > 0 makes every 97th key align with every
// query (weight S per dim; queries made positive), so attention has heavy
// columns and a threshold planner has something to drop. For sale it also
// times the full estimate (no early stop per block), its worst case.
#include <omp.h>
#include <time.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "attention/planner.h"
#include "attention/sale.h"
#include "kernels/attention.h"
#include "planner_problem.h"

namespace {

using namespace skim;

double now_ms(bool cpu) {
  if (cpu) {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double best_of(int reps, bool cpu, const std::function<void()>& f) {
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_ms(cpu);
    f();
    best = std::min(best, now_ms(cpu) - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string spec = "sale", clock = "wall";
  int64_t rows = 512, keys = 8192;
  int hq = 9, hkv = 3, d = 64, threads = 0, reps = 3;
  float structure = 4.0f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--spec") spec = next();
    else if (a == "--rows") rows = std::atoll(next().c_str());
    else if (a == "--keys") keys = std::atoll(next().c_str());
    else if (a == "--hq") hq = std::atoi(next().c_str());
    else if (a == "--hkv") hkv = std::atoi(next().c_str());
    else if (a == "--d") d = std::atoi(next().c_str());
    else if (a == "--structure") structure = std::strtof(next().c_str(), nullptr);
    else if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--reps") reps = std::atoi(next().c_str());
    else if (a == "--clock") clock = next();
    else {
      std::fprintf(stderr, "unknown option %s (see the comment at the top of bench/planner_bench.cpp)\n", a.c_str());
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  const bool cpu = clock == "cpu";
  if (keys < rows) keys = rows;
  const int64_t pos0 = keys - rows;

  const testing::PlannerProblem problem(hq, hkv, d, rows, pos0, 1, structure);
  attention::PlanRequest r = problem.request();
  std::vector<float> out(problem.q.size());
  kernels::AttnParams a = problem.params(out.data());
  a.validate_plan = false;  // time the kernel alone

  try {
    const attention::MethodSpec parsed = attention::parse_method_spec(spec);
    const attention::MethodDef* def = nullptr;
    for (const attention::MethodDef& m : attention::sparse_methods())
      if (m.info.name == parsed.name) def = &m;
    if (!def) throw std::invalid_argument("no sparse method " + parsed.name);
    const attention::MethodParams params(&def->info, def->info.name, parsed.values);
    std::unique_ptr<attention::Planner> planner = def->make(params);
    r.group_union = params.text("gqa") == "union";
    std::optional<attention::Plan> plan;
    const double plan_ms = planner ? best_of(reps, cpu, [&] { plan = planner->plan(r); }) : 0.0;
    const double dense_ms = best_of(reps, cpu, [&] { kernels::attention_prefill(a); });
    const double sparse_ms = plan ? best_of(reps, cpu, [&] { kernels::attention_prefill(a, &*plan); }) : dense_ms;
    const double dense_pairs = (static_cast<double>(rows) * pos0 + rows * (rows + 1) / 2.0) * hq;
    const double density = plan ? plan->listed_pairs() / dense_pairs : 1.0;
    std::printf("%s: rows %lld, keys %lld, heads %d/%d, d %d, threads %d, %s clock\n", spec.c_str(),
                static_cast<long long>(rows), static_cast<long long>(keys), hq, hkv, d, omp_get_max_threads(),
                clock.c_str());
    std::printf("  planning %.2f ms | dense kernel %.2f ms | plan kernel %.2f ms at density %.3f | plan / dense %.3f\n",
                plan_ms, dense_ms, sparse_ms, density, plan_ms / dense_ms);
    if (parsed.name == "sale") {
      attention::sale::Estimator est;
      const double full_ms = best_of(reps, cpu, [&] { est.score(r, attention::sale::Shape{}); });
      const float theta = static_cast<float>(params.number("theta", 0.0, 1.0));
      const std::vector<float> floor(static_cast<size_t>(hq), std::log(theta));
      est.score(r, attention::sale::Shape{}, {&floor, true});
      const attention::sale::ScoreCounts& n = est.counts();
      std::printf("  sale blocks: %lld dropped by the upper bound, %lld kept by the lower bound, %lld scanned in int8\n",
                  static_cast<long long>(n.dropped_by_bound), static_cast<long long>(n.kept_by_bound),
                  static_cast<long long>(n.scanned));
      std::printf("  sale full int8 estimate (no bounds, no early stop) %.2f ms = %.3f of dense\n", full_ms,
                  full_ms / dense_ms);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
