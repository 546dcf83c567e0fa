// The shared transport conformance suite, instantiated for rdma.
//
// The suite's fixtures live in an anonymous namespace of conformance_test.cc,
// so this file includes that translation unit and adds the rdma instantiation
// next to them; its CMakeLists entry filters the binary to the Rdma/* cases (the
// Software/* ones run in transport_conformance_test already). The shared
// PeerProcess suite is not instantiated for rdma: its premise, "a stopped peer
// answers nothing" (ops parked on it wait until it dies or the dead-peer
// timeout fires), does not hold when the peer's NIC serves one-sided ops;
// rdma_transport_test.cc (RdmaPeerProcess) tests a stopped peer (its ops
// complete until the keepalive's dead-peer timeout fails the connection) and a
// killed peer with verbs semantics.
#include "conformance_test.cc"  // NOLINT(bugprone-suspicious-include)
#include "rdma_test_util.h"

namespace hrpc::transport::testing {
namespace {

[[maybe_unused]] const auto* const kRdmaSkip = ::testing::AddGlobalTestEnvironment(new RdmaSkipEnvironment);

INSTANTIATE_TEST_SUITE_P(Rdma, Conformance, ::testing::Values(RdmaKind()), KindName);

}  // namespace
}  // namespace hrpc::transport::testing
