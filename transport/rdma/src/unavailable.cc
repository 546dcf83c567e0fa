// hrpc::transport_rdma in a build without RDMA (HRPC_WITH_RDMA=OFF): the same
// public API, linking no verbs library. There are no devices, so the RPC layer
// picks tcp for bare addresses, and an explicit rdma:// address gets a Status
// that says why.
#include "hrpc/transport/rdma.h"

namespace hrpc::transport {

namespace {
constexpr std::string_view kNoRdma = "hrpc was built without RDMA (HRPC_WITH_RDMA=OFF)";
}  // namespace

std::vector<RdmaDeviceInfo> ListRdmaDevices() { return {}; }

bool RdmaDeviceAvailable() { return false; }

Result<std::shared_ptr<RdmaDomain>> RdmaDomain::Open(mempool::Pool&, RdmaDomainOptions) {
  return UnimplementedError(kNoRdma);
}

std::optional<RdmaConnectionStats> RdmaStatsOf(const Connection&) { return std::nullopt; }

std::optional<RdmaTransportStats> RdmaTransportStatsOf(const Transport&) { return std::nullopt; }

std::shared_ptr<RdmaDomain> RdmaDomainOf(const Transport&) { return nullptr; }

Result<std::unique_ptr<Transport>> CreateRdmaTransport(coro::Scheduler&, mempool::Pool&, RdmaOptions) {
  return UnimplementedError(kNoRdma);
}

}  // namespace hrpc::transport
