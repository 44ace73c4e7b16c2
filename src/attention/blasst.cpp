// BLASST on its own: the dense plan with the kernel's softmax-threshold tile
// skip (a key tile is skipped when every weight in it is below lambda times
// the running row maximum). The skip itself lives in the kernel and the lambda
// in the shared policy, so any other method composes with it via lambda=...
#include "attention/planner.h"

namespace skim::attention {

MethodDef blasst_method() {
  AttentionMethodInfo info{"blasst",
                           "BLASST: dense plan, in-kernel skip of key tiles below lambda x running max",
                           {{"lambda", "0.001", "skip threshold relative to the running max (0..1)"}}};
  return {info, [](const MethodParams&) -> std::unique_ptr<Planner> { return nullptr; }};
}

}  // namespace skim::attention
