# Run by ctest: install BUILD_DIR into PREFIX, build SOURCE against it, run it.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
file(REMOVE_RECURSE ${PREFIX} ${CONSUMER_BUILD})
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX})
run(${CMAKE_COMMAND} -S ${SOURCE} -B ${CONSUMER_BUILD} -G ${GENERATOR}
    -DCMAKE_PREFIX_PATH=${PREFIX} "-DCMAKE_CXX_FLAGS=${FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${FLAGS}")
run(${CMAKE_COMMAND} --build ${CONSUMER_BUILD})
execute_process(COMMAND ${CONSUMER_BUILD}/kv_embed RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message(STATUS "kv_embed: ${out}")
if(NOT rc EQUAL 0 OR NOT out MATCHES "kv_embed: get k1 -> v1 OK")
  message(FATAL_ERROR "kv_embed failed (${rc}): ${out}")
endif()
