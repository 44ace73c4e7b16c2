# cli: tests/cli_test.py runs the built skim as a user would, on the cached
# smollm2-135m (scripts/fetch-model smollm2-135m; missing, the test fails with
# that command). It needs the project venv's python for the `gguf` package.
#
# Use from the top-level CMakeLists.txt, inside if(SKIM_BUILD_TESTS):
#   include(${CMAKE_SOURCE_DIR}/tests/cli.cmake)

set(_cli_cache "$ENV{SKIM_CACHE}")
if(NOT _cli_cache)
  set(_cli_cache "$ENV{HOME}/.cache/skim")
endif()
set(SKIM_PYTHON ${_cli_cache}/venv/bin/python CACHE FILEPATH "Python with the gguf package (scripts/setup)")

add_test(NAME cli COMMAND ${SKIM_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/cli_test.py $<TARGET_FILE:skim>)
set_tests_properties(cli PROPERTIES LABELS model TIMEOUT 600)
