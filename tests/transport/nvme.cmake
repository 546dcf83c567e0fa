# hrpc::nvme tests (label nvme). Included by tests/transport/CMakeLists.txt.
# The sink tests write files under the build tree (ext4 on virtio here; /tmp
# may be tmpfs elsewhere, which refuses O_DIRECT); HRPC_NVME_TEST_DIR overrides
# at run time.
if(TARGET hrpc::nvme)
  hrpc_add_test(nvme_alignment_test LABEL nvme
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvme_alignment_test.cc DEPS hrpc::nvme)
  hrpc_add_test(nvme_wal_test LABEL nvme
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvme_wal_test.cc DEPS hrpc::nvme)
  hrpc_add_test(nvme_engine_test LABEL nvme
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvme_engine_test.cc DEPS hrpc::nvme)
  hrpc_add_test(nvme_sink_test LABEL nvme TIMEOUT 600
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/nvme_sink_test.cc DEPS hrpc::nvme)
  foreach(t nvme_engine_test nvme_sink_test)
    target_compile_definitions(${t} PRIVATE HRPC_NVME_TEST_DIR="${CMAKE_CURRENT_BINARY_DIR}")
  endforeach()
endif()
