// Runtime: the process-wide machinery every Server and RpcChannel runs on.
//
// What it owns. Either its own workers (`workers`, optionally pinned to
// `cpus`) sharing one pool, or the workers and pools of borrowed network
// groups (`groups`: each worker uses its group's pool, so an accepted or an
// outgoing connection and everything its calls allocate stay on one NUMA
// node). Per pool, exactly one registration per transport kind: one TCP key
// table, one RdmaDomain (device context, protection domain, one ibv_reg_mr per
// arena). Per worker, one transport instance per scheme (made on first use,
// configured once here: TcpOptions, RdmaOptions incl. SRQ, completion mode and
// queue depths) and one table of outgoing connections keyed by peer, shared by
// every channel of the runtime: a channel is a peer address plus options, and
// creating one starts no thread and maps no memory.
//
// Who may share it: create one per process (it is not a global; pass it by
// reference) and build every Server and RpcChannel on it. A handler running on
// worker w that calls another server through a channel of the same runtime
// uses worker w's connection to it and never leaves the thread; the payload it
// pulled is already in worker w's registered pool and goes out again without
// a copy.
//
// Lifetime. Servers and channels keep the runtime's workers alive: destroying
// the Runtime object before them is safe — the workers stop when the last of
// them is gone. When that last one is destroyed on one of the runtime's own
// workers (in a handler), the workers are stopped from a thread of its own,
// since a thread cannot join itself.
//
// Idle connections. An outgoing connection with no call in flight for
// `idle_timeout` is closed; a connection that failed is replaced by the next
// call that needs it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/stats.h"
#include "hrpc/transport/auth.h"
#include "hrpc/transport/rdma.h"
#include "hrpc/transport/tcp.h"
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
  hrpc::groups::NetworkGroups* groups = nullptr;  // borrowed; must outlive the runtime
  // Common to every transport (message size, credits, keepalive, timeouts).
  transport::TransportOptions transport;
  // Per-scheme knobs; their `common`, registrar and domain fields are set by
  // the runtime (from `transport` and its own registrations).
  transport::TcpOptions tcp;
  transport::RdmaOptions rdma = [] {
    transport::RdmaOptions r;
    r.use_srq = true;  // one receive queue per worker, however many peers
    return r;
  }();
  // Needed for loop:// URIs: the in-process "wire" both ends share.
  std::shared_ptr<transport::LoopbackNetwork> loopback;
  // Scheme-less URIs. kAuto here; FromEnv() applies HRPC_TRANSPORT.
  TransportChoice transport_choice = TransportChoice::kAuto;
  // Outgoing connections with nothing in flight this long are closed (0: never).
  std::chrono::milliseconds idle_timeout{60'000};
  // Runs on every outgoing connection (of every channel of the runtime)
  // before its first call, within transport.connect_timeout: the server's
  // ServerOptions::authenticator must be the same kind with the same secret.
  // A failure fails the calls waiting for that connection with UNAUTHENTICATED
  // (and counts in hrpc_client_auth_failures_total). Null: none.
  std::shared_ptr<const transport::Authenticator> authenticator;
  // TLS on every outgoing tcp:// connection (transport::CreateTlsContext();
  // its ca_file verifies the server, its cert_file is sent for mutual TLS),
  // below the authenticator if both are set. A refused certificate fails the
  // calls waiting for that connection with UNAUTHENTICATED, a server that does
  // not speak TLS with UNAVAILABLE. Other schemes have no TLS: an rdma:// or
  // loop:// connection fails with UNIMPLEMENTED while this is set. Null: plain TCP.
  std::shared_ptr<const transport::TlsContext> tls;

  // The defaults, with transport_choice from HRPC_TRANSPORT=tcp|rdma|auto: the
  // one place hrpc reads its environment. An unknown value is logged and
  // treated as auto.
  static RuntimeOptions FromEnv();
};

// Counts for tests and monitoring (a snapshot; any thread).
struct RuntimeStats {
  size_t workers = 0;
  size_t threads_started = 0;     // by the runtime itself (0 with borrowed groups)
  size_t pools = 0;
  size_t tcp_registrations = 0;   // TCP key tables attached (at most one per pool)
  size_t rdma_domains = 0;        // RdmaDomains opened (at most one per pool)
  size_t transports = 0;          // transport instances (one per worker and scheme in use)
  size_t client_connections = 0;  // outgoing connections open
  std::vector<size_t> client_connections_per_worker;
  size_t servers = 0;
  size_t channels = 0;
};

namespace internal {
class WorkerSet;
}

class Runtime final {
 public:
  // Starts the workers (or adopts the groups') and creates the pool.
  // INVALID_ARGUMENT for bad options; the pool's and the workers' errors.
  static Result<std::unique_ptr<Runtime>> Create(RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const RuntimeOptions& options() const noexcept;
  size_t num_workers() const noexcept;
  coro::Scheduler& scheduler(size_t worker);
  // The pool worker `worker` allocates from (its group's).
  mempool::Pool& pool(size_t worker);
  // Network groups: one when the runtime runs its own workers.
  size_t num_groups() const noexcept;
  size_t group_of(size_t worker) const;
  std::vector<size_t> workers_of_group(size_t group) const;
  // Gives `instances` business instances their group, as evenly as possible
  // (groups::SpreadInstances): result[i] is instance i's group.
  std::vector<int> SpreadInstances(size_t instances) const;
  // Index of the runtime's worker running the calling thread, or -1.
  int CurrentWorker() const noexcept;

  RuntimeStats stats() const;
  // Client-side per-method stats of every channel on this runtime: latency is
  // end to end; bytes_out = request (message + attachment), bytes_in = response.
  std::vector<MethodStats> ClientStats() const;
  // The runtime's Prometheus metrics (text format 0.0.4): client calls,
  // connections, transports, pools, workers (docs/observability.md). Any
  // thread. A Server's MetricsText() adds its own calls.
  std::string MetricsText() const;

  // What Server and RpcChannel hold on to.
  const std::shared_ptr<internal::WorkerSet>& core() const noexcept { return core_; }

 private:
  explicit Runtime(std::shared_ptr<internal::WorkerSet> core) : core_(std::move(core)) {}
  std::shared_ptr<internal::WorkerSet> core_;
};

// Eager vs rendezvous, shared by both sides. An attachment of at most
// `eager_threshold` bytes (and that fits in one control message) travels
// inline; a larger one by bulk descriptor.
inline constexpr size_t kDefaultEagerThreshold = 16 * 1024;
// One-sided transfers are done in pieces of this size so that deadlines and
// cancellation are checked between pieces.
inline constexpr size_t kDefaultBulkChunkBytes = 4u << 20;
static_assert(kDefaultEagerThreshold < 64 * 1024, "eager payloads must fit the default control message");

// Flow control of what one side of a stream receives: the messages and bytes
// (message + attachment) it lets the peer have in flight beyond what it has
// read (docs/rpc.md, "Streams"). A writer past the window suspends. At least
// wire::kInitialStreamWindowMessages / kInitialStreamWindowBytes (16, 256 KiB).
struct StreamWindowOptions {
  uint32_t messages = 64;
  uint32_t bytes = 8u << 20;
};

}  // namespace hrpc
