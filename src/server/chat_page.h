// The chat page served at / (web/chat.html, compiled in at build time).
#pragma once

#include <string_view>

namespace skim::server {

std::string_view chat_page();

}  // namespace skim::server
