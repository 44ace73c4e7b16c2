// Runs one generated sample through one attention method: greedy generation
// within the task's answer budget, scored as RULER does.
#pragma once

#include <string>

#include "eval/results.h"
#include "eval/tasks.h"
#include "skim/context.h"

namespace skim::eval {

// Clears `ctx` (whose ContextParams::attention is `method`), prefills the
// sample and decodes greedily. `prefill_report` receives the attention report
// as it stood at the end of the prefill. The record's sample index is left 0.
TaskRecord run_sample(Context& ctx, const std::string& method, const Sample& sample, AttentionReport& prefill_report);

}  // namespace skim::eval
