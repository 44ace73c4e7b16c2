#include "server/chat_page.h"

namespace skim::server {

// chat_page_data.inc is web/chat.html as a raw string literal, written by CMake.
std::string_view chat_page() {
  static constexpr std::string_view page =
#include "chat_page_data.inc"
      ;
  return page;
}

}  // namespace skim::server
