// How the prefill GEMMs (f32 and int8) share one thread team among the weights
// of one call: each weight's output rows are cut into panels, each panel
// (and, when panels are too few to go around, each chunk of activation rows)
// is one task, and the team takes tasks dynamically. Internal to the kernels.
#pragma once

#include <cstdint>
#include <span>

#include "skim/gguf.h"

namespace skim::kernels {

// One weight's share of a GEMM: output rows [n_begin, n_end) of w into y (row
// stride ldy). plan_gemm_tasks fills the rest.
struct GemmJob {
  const TensorInfo* w;
  float* y;
  int64_t ldy, n_begin, n_end;
  int64_t panel_rows = 0, m_chunks = 0, m_chunk_rows = 0, first_task = 0;
};

// A task: weight rows [n0, n0 + np) of one job, activation rows [m0, m1).
// `panel` numbers the job's panels, so a thread can keep a packed panel.
struct GemmTask {
  const GemmJob* job;
  int64_t panel, n0, np, m0, m1;
};

// Plans the jobs for m activation rows and `threads` threads: panels of about
// `panel_rows` weight rows, a multiple of nr; activation chunks a multiple of
// mr. Returns the number of tasks.
int64_t plan_gemm_tasks(std::span<GemmJob> jobs, int64_t m, int threads, int64_t panel_rows, int64_t mr,
                        int64_t nr);

// Task t of planned jobs (m0 >= m1 when the task is empty).
GemmTask gemm_task(std::span<const GemmJob> jobs, int64_t t, int64_t m);

// This thread's share of the tasks, taken dynamically (call it inside an omp
// parallel region): pack(task) whenever the task's weight panel is not the one
// this thread packed last, then multiply(task).
template <class Pack, class Multiply>
void run_gemm_tasks(std::span<const GemmJob> jobs, int64_t tasks, int64_t m, const Pack& pack,
                    const Multiply& multiply) {
  const GemmJob* packed_job = nullptr;
  int64_t packed_panel = -1;
#pragma omp for schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const GemmTask task = gemm_task(jobs, t, m);
    if (task.m0 >= task.m1) continue;
    if (packed_job != task.job || packed_panel != task.panel) {
      pack(task);
      packed_job = task.job;
      packed_panel = task.panel;
    }
    multiply(task);
  }
}

}  // namespace skim::kernels
