# cmake -P script: runs protoc with protoc-gen-hrpc on PROTO and passes only if
# protoc fails AND its stderr contains EXPECT (texts separated by '|': all of them).
# Fresh: what an earlier run (or an older plugin) wrote must not count.
file(REMOVE_RECURSE ${OUT_DIR})
file(MAKE_DIRECTORY ${OUT_DIR})
execute_process(
  COMMAND ${PROTOC} -I${PROTO_DIR} --plugin=protoc-gen-hrpc=${PLUGIN} --hrpc_out=${OUT_DIR} ${PROTO}
  RESULT_VARIABLE rc
  ERROR_VARIABLE err
  OUTPUT_VARIABLE out)
message(STATUS "protoc exit code: ${rc}")
message(STATUS "protoc stderr: ${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "protoc-gen-hrpc accepted ${PROTO}; expected it to fail")
endif()
# EXPECT may hold several texts separated by '|': each must appear.
string(REPLACE "|" ";" expects "${EXPECT}")
foreach(expect IN LISTS expects)
  string(FIND "${err}" "${expect}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "protoc failed, but stderr lacks the expected text: ${expect}")
  endif()
endforeach()
string(REGEX REPLACE "\\.proto$" ".hrpc.h" out_header "${PROTO}")
if(EXISTS ${OUT_DIR}/${out_header})
  message(FATAL_ERROR "protoc-gen-hrpc wrote output despite the error")
endif()
