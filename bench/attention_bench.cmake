# attention_bench: skim's attention kernel, next to llama.cpp's CPU flash
# attention when the peer build (scripts/build-llama-cpp) is installed under
# ${SKIM_CACHE:-$HOME/.cache/skim}/llama.cpp-0.3.36. Without it the bench
# still builds and prints skim's numbers only.
#
# Use from the top-level CMakeLists.txt (after skimcore is defined):
#   include(${CMAKE_SOURCE_DIR}/bench/attention_bench.cmake)

set(_skim_repo ${CMAKE_CURRENT_LIST_DIR}/..)
add_executable(attention_bench ${_skim_repo}/bench/attention_bench.cpp)
target_include_directories(attention_bench PRIVATE ${_skim_repo}/src)
target_link_libraries(attention_bench PRIVATE skimcore)

# The peer build where paths::peer_prefix() finds it: $SKIM_LLAMA_CPP, else
# the cache's llama.cpp-VERSION with the version from include/skim/paths.h.
if(DEFINED ENV{SKIM_LLAMA_CPP})
  set(_skim_peer $ENV{SKIM_LLAMA_CPP})
else()
  if(DEFINED ENV{SKIM_CACHE})
    set(_skim_cache $ENV{SKIM_CACHE})
  else()
    set(_skim_cache $ENV{HOME}/.cache/skim)
  endif()
  file(STRINGS ${_skim_repo}/include/skim/paths.h _skim_peer_line REGEX "kPeerVersion = ")
  string(REGEX MATCH "\"([^\"]+)\"" _ "${_skim_peer_line}")
  set(_skim_peer ${_skim_cache}/llama.cpp-${CMAKE_MATCH_1})
endif()
set(SKIM_LLAMA_CPP_PREFIX ${_skim_peer} CACHE PATH "Install prefix of the peer llama.cpp build")

find_path(SKIM_GGML_INCLUDE_DIR ggml.h PATHS ${SKIM_LLAMA_CPP_PREFIX}/include NO_DEFAULT_PATH)
find_library(SKIM_GGML_LIB ggml PATHS ${SKIM_LLAMA_CPP_PREFIX}/lib NO_DEFAULT_PATH)
find_library(SKIM_GGML_CPU_LIB ggml-cpu PATHS ${SKIM_LLAMA_CPP_PREFIX}/lib NO_DEFAULT_PATH)
find_library(SKIM_GGML_BASE_LIB ggml-base PATHS ${SKIM_LLAMA_CPP_PREFIX}/lib NO_DEFAULT_PATH)

if(SKIM_GGML_INCLUDE_DIR AND SKIM_GGML_LIB AND SKIM_GGML_CPU_LIB AND SKIM_GGML_BASE_LIB)
  message(STATUS "attention_bench: comparing against ggml in ${SKIM_LLAMA_CPP_PREFIX}")
  find_package(Threads REQUIRED)
  target_compile_definitions(attention_bench PRIVATE SKIM_HAVE_GGML=1)
  target_include_directories(attention_bench SYSTEM PRIVATE ${SKIM_GGML_INCLUDE_DIR})
  # Static archives: ggml -> ggml-cpu -> ggml-base; ggml-cpu uses OpenMP (linked by skimcore).
  target_link_libraries(attention_bench PRIVATE ${SKIM_GGML_LIB} ${SKIM_GGML_CPU_LIB} ${SKIM_GGML_BASE_LIB}
                        Threads::Threads ${CMAKE_DL_LIBS})
else()
  message(STATUS "attention_bench: no peer ggml under ${SKIM_LLAMA_CPP_PREFIX}; building without the comparison")
endif()
