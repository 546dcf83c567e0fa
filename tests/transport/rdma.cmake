# rdma tests (ctest label `rdma`): they need an RDMA device and skip without one;
# scripts/rdma-tests.sh runs this label inside the Soft-RoCE guest.
if(TARGET hrpc::transport_rdma)
  # The shared conformance suite, instantiated for rdma (Rdma/* cases only; the
  # Software/* ones of the included TU run in transport_conformance_test).
  add_executable(transport_rdma_conformance_test rdma_conformance_test.cc)
  target_link_libraries(transport_rdma_conformance_test PRIVATE
    hrpc_transport_test_harness hrpc::transport_rdma GTest::gtest GTest::gmock GTest::gtest_main)
  hrpc_target_defaults(transport_rdma_conformance_test)
  gtest_discover_tests(transport_rdma_conformance_test DISCOVERY_MODE PRE_TEST
    TEST_FILTER "Rdma/*"
    PROPERTIES LABELS rdma TIMEOUT 300)

  hrpc_add_test(transport_rdma_test LABEL rdma TIMEOUT 300
    SOURCES rdma_transport_test.cc
    DEPS hrpc_transport_test_harness hrpc::transport_rdma)
endif()
