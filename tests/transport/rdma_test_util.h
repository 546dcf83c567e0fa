// Shared by the rdma tests: the rdma TransportKind for the conformance suite,
// the address to use, and the skip rule (no RDMA device -> GTEST_SKIP with the
// reason; these tests run for real inside the Soft-RoCE guest, see docs/rdma.md).
#pragma once

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "hrpc/transport/rdma.h"
#include "transport_harness.h"

namespace hrpc::transport::testing {

// IPv4 address of an RDMA-capable netdev: RXE_GUEST_ADDR (set by the guest
// script) or HRPC_RDMA_TEST_ADDR. Empty when neither is set.
inline std::string RdmaTestAddr() {
  for (const char* v : {"HRPC_RDMA_TEST_ADDR", "RXE_GUEST_ADDR"}) {
    const char* a = std::getenv(v);
    if (a != nullptr && *a != '\0') return a;
  }
  return "";
}

// Why rdma tests cannot run here, or "" when they can.
inline std::string RdmaSkipReason() {
  if (!RdmaDeviceAvailable()) {
    return "no RDMA device with an active port (run inside ../shared/rxe/run-in-rxe-guest.sh; see docs/rdma.md)";
  }
  if (RdmaTestAddr().empty()) return "RDMA device found but no address: set HRPC_RDMA_TEST_ADDR to its IPv4 address";
  return "";
}

inline TransportKind RdmaKind(RdmaOptions base = {}) {
  TransportKind k;
  k.name = "rdma";
  k.listen_uri = "rdma://" + RdmaTestAddr() + ":0";
  k.make = [base](coro::Scheduler& sched, mempool::Pool& pool, const TransportOptions& opt,
                  std::shared_ptr<void>&) -> Result<std::unique_ptr<Transport>> {
    RdmaOptions o = base;
    o.common = opt;
    return CreateRdmaTransport(sched, pool, o);
  };
  k.multi_process = false;             // see rdma_conformance_test.cc: RdmaPeerProcess instead
  return k;
}

// Skips every test of the binary (with the reason) when there is no device.
class RdmaSkipEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const std::string why = RdmaSkipReason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

}  // namespace hrpc::transport::testing
