// Server: serves registered Services on one or more listen URIs.
//
// Threads. The server runs on a Runtime's workers (its network groups). On
// TCP every worker listens on each URI (SO_REUSEPORT: the kernel spreads the
// connections); rdma:// and loop:// have no port sharing, so worker 0 alone
// listens and serves their connections. An accepted connection belongs to the
// worker that accepted it, and each request on it runs on that worker, with
// that worker's (group's) pool: in place, on the coroutine that read it from
// the connection, which hands the reading on to a new coroutine if the handler
// suspends. So a handler may suspend (bulk pull, disk, another RPC) without
// blocking the worker or its connection; a call it makes
// through a channel of the same runtime stays on its worker. The one-line
// Create(options) makes a private runtime from options.runtime.
//
// What the runtime does for a request, in order:
//  * unknown service / method → UNIMPLEMENTED;
//  * deadline already expired on arrival → DEADLINE_EXCEEDED, handler not run;
//  * more than max_concurrent_requests running → RESOURCE_EXHAUSTED;
//  * request attachment: inline bytes are ServerContext::request_attachment();
//    with auto_pull (default) bulk (pull) descriptors are READ into 4 KiB-aligned
//    pool slabs and appended to it before the handler runs (in pieces of
//    bulk_chunk_bytes, bulk_window of them in flight, checking deadline and
//    cancel between groups of pieces and while waiting for them: a deadline
//    that expires during the pull ends the call with DEADLINE_EXCEEDED at
//    once, unrun; READs still in flight finish before the server answers);
//    without auto_pull the handler calls ServerContext::PullBulk(i);
//  * malformed request message → INVALID_ARGUMENT (the generated dispatch);
//  * the response attachment goes inline when it is at most eager_threshold
//    bytes; else on TCP it follows the response frame in the stream (read
//    into aligned blocks on the client); else it is WRITTEN into the client's
//    push regions when the client offered room enough (the response then
//    carries those descriptors with the lengths written and CRC32C); else it
//    is exposed for the client to READ and held until the client releases it
//    (release_timeout);
//  * a cancel frame marks the ServerContext cancelled (no response is sent,
//    unless the request carried regions of the client's memory: then a
//    CANCELLED response tells the client it may free them);
//  * a frame that does not decode closes that connection (logged with the
//    reason); other connections are not affected.
//
// Observability (docs/observability.md). Calls, connections, transports,
// pools and workers are counted on the data path without a lock or an
// allocation. With ServerOptions::http_listen set, Start() also opens a small
// HTTP server on threads of its own (never on a worker): /metrics (the
// Prometheus text format, through prometheus-cpp), /status (services,
// methods, connections, transports, pools, workers; text, or HTML for a
// browser), /rpcz (the slowest and the failed recent calls with their time per
// phase) and /health. Off by default: then no port and no thread.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/service.h"
#include "hrpc/rpc/stats.h"
#include "hrpc/transport/auth.h"

namespace prometheus {
class Collectable;
}

namespace hrpc {

struct ServerOptions {
  // "tcp://0.0.0.0:7000", "0.0.0.0:0" (transport by runtime.transport_choice),
  // "loop://name". Port 0 picks one; listen_uris() tells which.
  std::vector<std::string> listen;
  // Only for the one-line Create(options): the private runtime's options.
  RuntimeOptions runtime = RuntimeOptions::FromEnv();
  size_t eager_threshold = kDefaultEagerThreshold;
  size_t bulk_chunk_bytes = kDefaultBulkChunkBytes;
  // Pieces of one bulk READ in flight at once (one large call reaches the
  // link's bandwidth instead of waiting out a round trip per piece).
  size_t bulk_window = 4;
  // Requests and streams running at once.
  size_t max_concurrent_requests = 65536;
  // Per-connection quotas (docs/rpc.md, "Per-connection quotas"): unary
  // requests one connection may have running at once, and the bytes of their
  // request attachments (streamed or inline bytes received, plus the bulk
  // regions to pull). A connection at either limit is not read until one of
  // its requests finishes: its further requests wait in the transport, whose
  // credits then hold the client's sends back (backpressure, as HTTP/2's
  // stream limit does; nothing is refused). A single request larger than the
  // byte limit runs, alone. Streams count only against
  // max_concurrent_requests. 0: no limit.
  size_t max_requests_per_connection = 256;
  size_t max_request_bytes_per_connection = 64u << 20;
  // What each stream lets its client have in flight to the handler.
  StreamWindowOptions stream_window;
  bool auto_pull = true;
  // How long Shutdown() lets running handlers finish (they see IsCancelled()
  // and their answers are sent; a stream gets a close saying UNAVAILABLE
  // "server shutting down", and so does a call or stream that arrives
  // meanwhile, without running) and clients take what was sent to them
  // (READ exposed attachments, drain what TCP still queues) before the
  // connections close.
  std::chrono::milliseconds shutdown_grace{2000};
  // A response attachment exposed for the client to READ (RDMA, loopback:
  // the client offered too little room) stays exposed until the client
  // releases it (also after the call's deadline: the client releases once its
  // READs in flight are done), or this long. So do the attachments of stream
  // messages the client has not read when the handler returns (docs/protocol.md,
  // "Streams").
  std::chrono::milliseconds release_timeout{30'000};
  // The HTTP endpoint: "host:port" ("127.0.0.1:9100"; port 0 picks one,
  // http_address() tells which). Empty (the default): no endpoint. It shows
  // everything it counts to whoever reaches the port: bind it to a private
  // or loopback address.
  std::string http_listen;
  // The dedup window (requests that carry a request id: calls through a
  // ClusterChannel, or ClientContext::set_request_id): a retry of a request
  // this server ran within `dedup_window` gets the first answer instead of a
  // second run (a retry that arrives while the first still runs waits for
  // it). At most dedup_max_entries ids and dedup_max_bytes of kept response
  // messages; a response with an attachment is not kept (its retry gets
  // ABORTED). 0: off.
  std::chrono::milliseconds dedup_window{10'000};
  size_t dedup_max_entries = 65536;
  size_t dedup_max_bytes = 16u << 20;
  // Registration in etcd (docs/cluster.md, "Naming: etcd"): with
  // etcd_register = "etcd://host:port/prefix", Start() registers the server
  // under the prefix once it listens (an EtcdRegistration: a lease of
  // etcd_ttl kept alive by a thread of its own) and fails with that Status
  // when it cannot; Shutdown() deregisters it first (revokes the lease,
  // waiting at most the request timeout, 2 s, per etcd member), before it
  // closes anything, so clients stop picking it at once. Empty (the
  // default): none. "etcd://h1:p1,h2:p2/prefix" names several members.
  std::string etcd_register;
  // The address registered: what clients connect to ("tcp://10.0.0.5:7000").
  // Empty: the first listen URI as bound (its port filled in), which must
  // then name a host clients can reach: a wildcard host (0.0.0.0, ::) fails
  // Start() with INVALID_ARGUMENT, since no address of this machine is right
  // for every client.
  std::string advertise;
  // Stored after the address ("rack-a"), as in a file:// line; one word.
  std::string etcd_tag;
  std::chrono::seconds etcd_ttl{5};
  // Authenticates every accepted connection before it is served
  // (transport/auth.h; e.g. transport::MakeSharedSecretAuthenticator(secret)).
  // A peer that fails gets UNAUTHENTICATED (an RPC request it sent first is
  // answered with it) and its connection is closed, counted in
  // hrpc_server_auth_failures_total; no request of it is dispatched. The
  // exchange must finish within runtime transport.handshake_timeout. Null
  // (the default): every peer that reaches the port is served.
  std::shared_ptr<const transport::Authenticator> authenticator;
  // TLS on the tcp:// listeners (transport::CreateTlsContext() with cert_file
  // and key_file; with require_client_cert, mutual TLS against its ca_file):
  // a peer whose TLS handshake fails is closed before the transport's own
  // handshake, logged and counted in the transport's handshake_failures.
  // Start() fails with UNIMPLEMENTED for an rdma:// or loop:// listen URI
  // while this is set. Null: plain TCP.
  std::shared_ptr<const transport::TlsContext> tls;
};

class Server final {
 public:
  // A server on `runtime` (options.runtime is not used); not listening yet.
  // INVALID_ARGUMENT for bad options.
  static Result<std::unique_ptr<Server>> Create(Runtime& runtime, ServerOptions options);
  // A server with a private runtime made from options.runtime. Also the errors
  // of creating its workers and pool.
  static Result<std::unique_ptr<Server>> Create(ServerOptions options);
  ~Server();  // Shutdown()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Before Start(). Not owned; must outlive the server. ALREADY_EXISTS for a
  // second service with the same id (every server already serves
  // hrpc.Reflection: its services, methods, .proto files and stats, for the
  // `hrpc` tool); FAILED_PRECONDITION after Start().
  Status RegisterService(Service* service);

  // Binds every listen URI on every worker and starts accepting.
  Status Start();
  // Stops accepting, cancels running handlers, waits up to shutdown_grace for
  // them and for their answers to reach the clients, closes connections.
  // Idempotent.
  void Shutdown();

  // The bound URIs, one per configured URI ("tcp://0.0.0.0:41234").
  std::vector<std::string> listen_uris() const;
  // Per-method server-side stats: latency from arrival to response sent;
  // bytes_in = request (message + attachment), bytes_out = response. Calls to
  // hrpc.Reflection are not included.
  std::vector<MethodStats> Stats() const;
  // Connections currently open (for tests and monitoring).
  size_t num_connections() const;
  // Retries answered from the dedup window instead of running again.
  uint64_t deduplicated_requests() const;

  // The HTTP endpoint's bound address ("127.0.0.1:41234") once started; ""
  // when ServerOptions::http_listen is empty.
  std::string http_address() const;
  // What /metrics serves (Prometheus text format 0.0.4): this server's calls,
  // and the runtime's client calls, connections, transports, pools and
  // workers. Any thread; for programs that export metrics their own way.
  std::string MetricsText() const;
  // Adds the families of `collectable` (e.g. a prometheus::Registry with the
  // application's own metrics) to /metrics and MetricsText() while it lives.
  // Any thread.
  void AddCollectable(std::weak_ptr<prometheus::Collectable> collectable);

  // The runtime's workers and their pools. Worker i's pool is where the
  // runtime pulls the bulk request attachments of the calls it serves
  // (ServerContext::pool() inside a handler); own workers share one pool,
  // network groups bring one each. Valid until the Server is destroyed: open
  // devices that must DMA pulled payloads (an nvme::Sink) on it, and destroy
  // them before the Server.
  size_t num_workers() const noexcept;
  mempool::Pool& pool(size_t worker = 0);

  class Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl);
  // Shared with the server's coroutines, which may outlive a Shutdown() that
  // gave up waiting for them (they then finish on the runtime's workers).
  std::shared_ptr<Impl> impl_;
};

}  // namespace hrpc
