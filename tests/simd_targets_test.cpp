// Lists every SIMD code path the kernels dispatch to and whether the tests ran
// it on this CPU (scripts/test prints this), so a log shows which vector widths
// were checked and which were compiled but left untested here.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cstdio>

#include "kernels/quant_dot.h"
#include "simd_targets.h"

namespace skim {
namespace {

const char* run_status(bool runs_here) { return runs_here ? "run here" : "NOT run here: this CPU lacks it"; }

TEST(SimdTargets, ListCompiledTargetsAndWhichRunHere) {
  const int64_t supported = hwy::SupportedTargets();
  for (int64_t target : test::compiled_simd_targets())
    std::printf("[ targets  ] Highway %-8s %s\n", hwy::TargetName(target), run_status(supported & target));
  // matmul and quant_dot pick among these themselves (tests/matmul_test.cpp runs each).
  for (int i = 0; i <= static_cast<int>(kernels::KernelIsa::kAvx512Vnni); ++i) {
    const auto isa = static_cast<kernels::KernelIsa>(i);
    std::printf("[ targets  ] matmul  %-12s %s\n", kernels::isa_name(isa),
                run_status(static_cast<int>(isa) <= static_cast<int>(kernels::detected_isa())));
  }
  EXPECT_FALSE(hwy::SupportedAndGeneratedTargets().empty()) << "no compiled Highway target runs on this CPU";
}

}  // namespace
}  // namespace skim
