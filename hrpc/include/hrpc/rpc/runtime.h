// What the RPC runtime (Server, RpcChannel) runs on: workers, a pool, and a
// transport per worker, chosen from a URI at run time.
//
// Either the runtime starts its own workers (`workers`, optionally pinned to
// `cpus`) with one pool, or it borrows the workers and pools of existing
// network groups (`groups`: one connection / listener per worker of each
// group, each using its group's pool). Borrowed groups must outlive the
// Server/RpcChannel.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport {
class LoopbackNetwork;
}
namespace hrpc::groups {
class NetworkGroups;
}

namespace hrpc {

// Which transport a scheme-less "host:port" uses.
enum class TransportChoice : uint8_t {
  kAuto,  // RDMA when a device exists (RdmaDeviceProbe), else TCP
  kTcp,
  kRdma,
};
std::string_view TransportChoiceName(TransportChoice c) noexcept;

// HRPC_TRANSPORT=tcp|rdma from the environment (kAuto when unset; an unknown
// value is logged and treated as unset). Read by the option defaults below,
// i.e. once when an options struct is created — never on the data path.
TransportChoice TransportChoiceFromEnv();

// Seam for the RDMA transport: true when an RDMA device with an active port
// exists (transport::RdmaDeviceAvailable()).
bool RdmaDeviceProbe();

// "tcp://h:p", "rdma://h:p", "loop://name" stay as they are (validated);
// "h:p" gets the scheme `choice` picks (kAuto: rdma if RdmaDeviceProbe(), else tcp).
// INVALID_ARGUMENT for anything else.
Result<std::string> ResolveUri(std::string_view uri, TransportChoice choice);

struct RuntimeOptions {
  // Own workers (used when `groups` is null).
  size_t workers = 1;
  std::vector<int> cpus;  // cpus[i % cpus.size()] pins worker i; empty: no pinning
  std::string name = "hrpc";
  std::chrono::nanoseconds spin_budget = std::chrono::microseconds(50);
  size_t stack_bytes = 64 * 1024;
  // Pool of the own workers (a pool is per group when `groups` is set). The
  // largest payload one call can move is bounded by what the pool can hold.
  mempool::PoolOptions pool = [] {
    mempool::PoolOptions p;
    p.grow = true;
    p.prefault = false;
    return p;
  }();
  hrpc::groups::NetworkGroups* groups = nullptr;  // not owned
  transport::TransportOptions transport;
  // Needed for loop:// URIs: the in-process "wire" both ends share.
  std::shared_ptr<transport::LoopbackNetwork> loopback;
  // Scheme-less URIs: kAuto unless HRPC_TRANSPORT says otherwise.
  TransportChoice transport_choice = TransportChoiceFromEnv();
};

// Eager vs rendezvous, shared by both sides. An attachment of at most
// `eager_threshold` bytes (and that fits in one control message) travels
// inline; a larger one by bulk descriptor.
inline constexpr size_t kDefaultEagerThreshold = 16 * 1024;
// One-sided transfers are done in pieces of this size so that deadlines and
// cancellation are checked between pieces.
inline constexpr size_t kDefaultBulkChunkBytes = 4u << 20;
static_assert(kDefaultEagerThreshold < 64 * 1024, "eager payloads must fit the default control message");

}  // namespace hrpc
