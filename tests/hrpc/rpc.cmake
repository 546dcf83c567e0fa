# Tests of the RPC runtime (RpcChannel, Server, stats); label hrpc.
# Included (OPTIONAL) from tests/hrpc/CMakeLists.txt.
add_library(hrpc_rpc_test_proto STATIC)
hrpc_protobuf_generate(TARGET hrpc_rpc_test_proto PROTOS ${CMAKE_CURRENT_LIST_DIR}/rpc_test.proto
  OUT_DIR ${CMAKE_CURRENT_BINARY_DIR}/rpc_gen)
target_include_directories(hrpc_rpc_test_proto PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_features(hrpc_rpc_test_proto PUBLIC cxx_std_20)

hrpc_add_test(hrpc_rpc_test LABEL hrpc TIMEOUT 120
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/rpc_test.cc
  DEPS hrpc::hrpc hrpc::transport hrpc_rpc_test_proto)
