// /metrics: the scheduler's totals in Prometheus text format.
#pragma once

#include <string>

#include "engine/scheduler.h"

namespace skim::server {

std::string prometheus_text(const SchedulerStats& s);

}  // namespace skim::server
