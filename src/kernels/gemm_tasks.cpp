#include "kernels/gemm_tasks.h"

#include <algorithm>

namespace skim::kernels {

int64_t plan_gemm_tasks(std::span<GemmJob> jobs, int64_t m, int threads, int64_t panel_rows, int64_t mr,
                        int64_t nr) {
  int64_t tasks = 0;
  for (GemmJob& j : jobs) {
    const int64_t rows = j.n_end - j.n_begin;
    int64_t panels = (rows + panel_rows - 1) / panel_rows;
    // While panels are few, a multiple of the thread count, so no thread idles at the end.
    if (panels < 4 * threads) panels = (panels + threads - 1) / threads * threads;
    j.panel_rows = ((rows + panels - 1) / panels + nr - 1) / nr * nr;
    panels = (rows + j.panel_rows - 1) / j.panel_rows;
    // Too few panels to go around: split the activation rows too, in whole micro-panels.
    j.m_chunks = panels < threads ? std::min<int64_t>(threads, std::max<int64_t>(1, m / 32)) : 1;
    j.m_chunk_rows = ((m + j.m_chunks - 1) / j.m_chunks + mr - 1) / mr * mr;
    j.first_task = tasks;
    tasks += panels * j.m_chunks;
  }
  return tasks;
}

GemmTask gemm_task(std::span<const GemmJob> jobs, int64_t t, int64_t m) {
  const GemmJob& j = *(std::upper_bound(jobs.begin(), jobs.end(), t,
                                        [](int64_t task, const GemmJob& g) { return task < g.first_task; }) -
                       1);
  const int64_t local = t - j.first_task;
  const int64_t p = local / j.m_chunks, chunk = local % j.m_chunks;
  const int64_t n0 = j.n_begin + p * j.panel_rows;
  const int64_t m0 = chunk * j.m_chunk_rows;
  return {&j, p, n0, std::min(j.panel_rows, j.n_end - n0), m0, std::min(m, m0 + j.m_chunk_rows)};
}

}  // namespace skim::kernels
