# Run by ctest: install BUILD_DIR into PREFIX, build SOURCE against it, run it.
# With HRPC_SOURCE set, BUILD_DIR is first configured from it with RDMA and the
# NVMe sink off (libraries and protoc-gen-hrpc only) and built; the installed
# libraries, their exported link interface and the consumer must then name no
# ibverbs, rdmacm or liburing.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
file(REMOVE_RECURSE ${PREFIX} ${CONSUMER_BUILD})
if(HRPC_SOURCE)
  file(REMOVE_RECURSE ${BUILD_DIR})
  run(${CMAKE_COMMAND} -S ${HRPC_SOURCE} -B ${BUILD_DIR} -G ${GENERATOR}
      -DHRPC_WITH_RDMA=OFF -DHRPC_WITH_NVME=OFF -DHRPC_BUILD_TESTS=OFF -DHRPC_BUILD_BENCH=OFF
      -DHRPC_BUILD_EXAMPLES=OFF -DHRPC_BUILD_TOOLS=OFF -DCMAKE_BUILD_TYPE=)
  run(${CMAKE_COMMAND} --build ${BUILD_DIR} -j 2)
endif()
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

if(HRPC_SOURCE)
  set(forbidden "ibverbs|rdmacm|uring")
  execute_process(COMMAND ldd ${CONSUMER_BUILD}/kv_embed OUTPUT_VARIABLE out)
  if(out MATCHES "lib(${forbidden})")
    message(FATAL_ERROR "kv_embed links ${CMAKE_MATCH_0}:\n${out}")
  endif()
  file(GLOB_RECURSE exports ${PREFIX}/*/cmake/hrpc/hrpcTargets*.cmake)
  foreach(f IN LISTS exports)
    file(STRINGS ${f} hits REGEX "${forbidden}")
    if(hits)
      message(FATAL_ERROR "${f} names ${forbidden}: ${hits}")
    endif()
  endforeach()
  file(GLOB_RECURSE libs ${PREFIX}/*/libhrpc_*.a)
  foreach(lib IN LISTS libs)
    execute_process(COMMAND nm -u ${lib} OUTPUT_VARIABLE out)
    if(out MATCHES "(ibv_|rdma_|io_uring_)[a-z_]+")
      message(FATAL_ERROR "${lib} needs ${CMAKE_MATCH_0}")
    endif()
  endforeach()
  list(LENGTH libs n)
  message(STATUS "TCP-only: ${n} libraries and kv_embed need no ibverbs, rdmacm or liburing")
endif()
