// Runs a kernel test once per Highway target, so a bug in one vector width
// cannot hide behind the target that run-time dispatch happens to pick.
#pragma once

#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace skim::test {

// The targets the kernels are compiled for. HWY_TARGETS here equals the one in
// src/ because the tests build with skimcore's public compile flags.
inline std::vector<int64_t> compiled_simd_targets() {
  std::vector<int64_t> targets;
  for (int64_t rest = HWY_TARGETS; rest != 0; rest &= rest - 1) targets.push_back(rest & -rest);
  return targets;
}

// Calls run() once for each compiled target this CPU supports, with dispatch
// pinned to it and its name on every failure; then restores normal dispatch.
// Prints and records (XML property "simd_targets") the targets that ran.
template <class F>
void for_each_simd_target(const F& run) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty()) << "no compiled SIMD target runs on this CPU";
  struct RestoreDispatch {
    ~RestoreDispatch() { hwy::SetSupportedTargetsForTest(0); }
  } restore;
  std::string names;
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(std::string("SIMD target ") + hwy::TargetName(target));
    run();
    names += (names.empty() ? "" : " ") + std::string(hwy::TargetName(target));
  }
  ::testing::Test::RecordProperty("simd_targets", names);
  const ::testing::TestInfo& test = *::testing::UnitTest::GetInstance()->current_test_info();
  std::printf("[ targets  ] %s.%s ran on: %s\n", test.test_suite_name(), test.name(), names.c_str());
}

}  // namespace skim::test
