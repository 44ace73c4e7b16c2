// Stop strings over streamed text: text is released only where no stop string
// can still begin, and generation ends at the first one (which is not released).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace skim {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  // Adds generated text; returns what can be shown now. Once a stop string has
  // appeared, stopped() is true and the text from it on is dropped.
  std::string push(std::string_view text);
  // At the end of generation: the text held back.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace skim
