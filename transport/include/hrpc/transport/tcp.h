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
#include <string>

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
  // In whole 4 KiB pages (rounded down); under one page disables in-stream
  // payloads. Both sides use the smaller value, none when either has none.
  uint64_t max_payload_bytes = 256u << 20;
  // Registrar slot of a TcpRegistrar already attached to the pool (e.g. once
  // per network group, shared by its workers' transports). When empty the
  // transport attaches its own (a pool takes at most kMaxRegistrars).
  std::optional<mempool::RegistrarSlot> registrar_slot;
  // TCP congestion control (TCP_CONGESTION) of connections between two ends on
  // this host: a loopback peer, or a peer whose address is the socket's own.
  // BBR, a common system default, paces every socket with a high-resolution
  // timer unless the fq qdisc does it; on loopback there is no link to pace
  // for, and in a virtual machine each timer re-arm exits to the hypervisor.
  // Measured on a 2-vCPU VM (docs/transport.md, "Congestion control"), a 64 KiB
  // echo at 32 in flight ran 2.2x faster under cubic than under bbr. Empty:
  // the system default (net.ipv4.tcp_congestion_control).
  std::string loopback_congestion_control = "cubic";
  // The same for every other connection. Empty: the system default.
  std::string congestion_control;
};

// TLS on TCP connections (OpenSSL, TLS 1.2 at least, 1.3 preferred): run on
// the socket before the transport's own handshake, after which every byte of
// the connection (frames, in-stream payloads, one-sided ops) is encrypted.
// Files are read once, by CreateTlsContext(); the context is then used with
// Transport::ListenTls()/ConnectTls() (ServerOptions::tls, RuntimeOptions::tls).
// docs/transport.md, "TLS".
struct TlsOptions {
  // This side's certificate (PEM, leaf first, then any intermediates) and its
  // private key (PEM). Needed to accept; a connecting side sends them when the
  // server asks (mutual TLS).
  std::string cert_file;
  std::string key_file;
  // CA certificates (PEM) that the peer's certificate must chain to. Needed to
  // connect (a server is always verified) and with require_client_cert.
  std::string ca_file;
  // Accepting side: mutual TLS, a client without a certificate that verifies
  // against ca_file is refused.
  bool require_client_cert = false;
  // Connecting side: the name the server's certificate must carry (a DNS name
  // in its subjectAltName, or an IP address in its IP SANs); a DNS name is
  // also sent as SNI. Empty: the host of the URI connected to.
  std::string server_name;
};

// OpenSSL's SSL_CTX with the files of a TlsOptions loaded; immutable, shared by
// every connection and thread that uses it.
class TlsContext;
// INVALID_ARGUMENT with OpenSSL's reason for a file that cannot be read or
// parsed, a key that does not match the certificate, or only one of
// cert_file/key_file.
Result<std::shared_ptr<const TlsContext>> CreateTlsContext(const TlsOptions& options);

// A TCP connection's send side, for tests and monitoring: bytes its send
// queue holds (bounded by send_queue_high_water) and bytes the kernel holds
// that the peer has not acknowledged. Their sum is unsent_bytes().
struct TcpConnectionStats {
  uint64_t queued_bytes = 0;
  uint64_t unacked_bytes = 0;
};
// Stats of `c` when it is a TCP connection (0 once it failed), else nullopt.
std::optional<TcpConnectionStats> TcpStatsOf(const Connection& c);

// The TCP "registration": a key table of arenas. TCP needs no pinning, but
// registering makes the transport's pool the only memory it will expose.
std::unique_ptr<mempool::Registrar> MakeTcpRegistrar();

// Call on `scheduler`'s thread. `pool` and `scheduler` must outlive the transport.
Result<std::unique_ptr<Transport>> CreateTcpTransport(coro::Scheduler& scheduler,
                                                      mempool::Pool& pool,
                                                      TcpOptions options = {});

}  // namespace hrpc::transport
