# Fails unless README.md contains the body of SNIPPET verbatim (between its markers); run
# once per file of KVR_README_SNIPPETS (cpp_tests/CMakeLists.txt).
file(READ "${SNIPPET}" snippet)
string(REGEX MATCH "// BEGIN README\n(.*)// END README" _ "${snippet}")
set(body "${CMAKE_MATCH_1}")
if(body STREQUAL "")
  message(FATAL_ERROR "no // BEGIN README ... // END README block in ${SNIPPET}")
endif()
file(READ "${README}" readme)
string(FIND "${readme}" "${body}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not contain the example from ${SNIPPET}; copy it over")
endif()
