# The RPC runtime over the transports: RpcChannel, Server, per-method stats.
# Included (OPTIONAL) from hrpc/CMakeLists.txt; owned by the runtime engineer.
target_sources(hrpc_hrpc PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/src/runtime.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/stats.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/rpc_channel.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/server.cc)
target_link_libraries(hrpc_hrpc PUBLIC hrpc::transport hrpc::groups PRIVATE hrpc::transport_rdma spdlog::spdlog)
