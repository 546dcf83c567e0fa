# The RPC layer over RDMA (label rdma: run in the Soft-RoCE guest by scripts/rdma-tests.sh).
# Included (OPTIONAL) from tests/hrpc/CMakeLists.txt after rpc.cmake.
if(TARGET hrpc::transport_rdma AND TARGET hrpc_rpc_test_proto)
  hrpc_add_test(hrpc_rpc_rdma_test LABEL rdma TIMEOUT 300
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_rdma_test.cc
    DEPS hrpc::hrpc hrpc::transport hrpc::transport_rdma hrpc_rpc_test_proto)
  target_include_directories(hrpc_rpc_rdma_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/transport)
endif()
