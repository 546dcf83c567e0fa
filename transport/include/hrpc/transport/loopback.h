// hrpc::transport "loop://name": two endpoints in one process with the same
// semantics as the real transports, plus fault injection for the layers above.
//
// A LoopbackNetwork is the wire: it maps names to listeners. Create one (no
// process-wide state) and hand it to each worker's loopback transport; the two
// ends of a connection may live on different workers (delivery crosses with
// Scheduler::Post). The simulated NIC moves bytes with CountedCopy, so unlike
// TCP and RDMA the copy counter counts payload here.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport {

// Faults applied to connections to one listener name, in both directions:
// the same FaultOptions every transport takes (transport.h), with the same
// costs. Besides them, the loopback delays one-sided ops by `delay` too (they
// are never dropped or corrupted: RDMA RC is reliable below the message layer)
// and counts `disconnect_after` over both directions of the connection.
using FaultPlan = FaultOptions;

class LoopbackNetwork {
 public:
  static std::shared_ptr<LoopbackNetwork> Create();
  virtual ~LoopbackNetwork() = default;
  // Faults for connections made to `name` from now on, and for the live ones.
  virtual void SetFaults(std::string_view name, const FaultPlan& plan) = 0;
  // Messages dropped / corrupted (or truncated) so far by the faults set for `name`.
  virtual uint64_t dropped(std::string_view name) const = 0;
  virtual uint64_t corrupted(std::string_view name) const = 0;
};

// Call on `scheduler`'s thread; `scheduler` and `pool` must outlive it.
Result<std::unique_ptr<Transport>> CreateLoopbackTransport(
    std::shared_ptr<LoopbackNetwork> network, coro::Scheduler& scheduler, mempool::Pool& pool,
    TransportOptions options = {});

}  // namespace hrpc::transport
