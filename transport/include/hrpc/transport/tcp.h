// hrpc::transport over TCP: RDMA semantics emulated on a byte stream.
//
// Non-blocking sockets on the worker's epoll (a coro::Poller), TCP_NODELAY,
// many frames per writev. One-sided ops are frames: the bytes of a WRITE and of
// a READ response are readv'd from the socket straight into the registered
// target buffer after the key, bounds and access were checked against the
// connection's exposure table — no staging copy (CountedCopy stays at 0).
// Wire format and checks: docs/transport.md.
#pragma once

#include <memory>
#include <optional>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/mempool/registrar.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport {

struct TcpOptions {
  TransportOptions common;
  int listen_backlog = 1024;
  bool reuse_port = false;  // several workers listening on one port
  // Unsent bytes per connection above which Send()/Write() park the caller
  // until the kernel drains the socket below half of it.
  size_t send_queue_high_water = 8u << 20;
  // Largest in-stream payload (Connection::SendWithPayload) this side accepts:
  // the receiver allocates pool blocks for it as the bytes arrive (at most
  // 8 MiB ahead), up to this much for one message.
  // 0 disables in-stream payloads (both sides use the smaller value).
  uint64_t max_payload_bytes = 256u << 20;
  // Registrar slot of a TcpRegistrar already attached to the pool (e.g. once
  // per network group, shared by its workers' transports). When empty the
  // transport attaches its own (a pool takes at most kMaxRegistrars).
  std::optional<mempool::RegistrarSlot> registrar_slot;
};

// The TCP "registration": a key table of arenas. TCP needs no pinning, but
// registering makes the transport's pool the only memory it will expose.
std::unique_ptr<mempool::Registrar> MakeTcpRegistrar();

// Call on `scheduler`'s thread. `pool` and `scheduler` must outlive the transport.
Result<std::unique_ptr<Transport>> CreateTcpTransport(coro::Scheduler& scheduler,
                                                      mempool::Pool& pool,
                                                      TcpOptions options = {});

}  // namespace hrpc::transport
