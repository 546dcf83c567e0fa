// hrpc::transport — the transport-neutral interface, shaped after RDMA.
//
// Two kinds of traffic travel over a Connection:
//  * control messages (two-sided, RDMA SEND/RECV): Send() hands an IoBuf of
//    registered memory to the transport; Recv() hands over a pool buffer that
//    a message landed in. Flow control is by credits: a peer never has more
//    messages in flight than the receiver has receive slots (`recv_depth`).
//  * payloads (one-sided, RDMA READ/WRITE): Read()/Write() move bytes between a
//    local IoBuf and a RemoteDescriptor that the peer created with Expose().
//    The target validates key, bounds and access of every op; a refused op is
//    a Status for the requester and the connection survives.
//
// Threading: a Transport, and every Listener and Connection it creates, belong
// to one worker (coro::Scheduler). All methods must be called from a coroutine
// on that scheduler unless said otherwise; the fast path takes no lock.
// Methods that "suspend" park the calling coroutine, never the thread; many
// coroutines may have operations outstanding on one connection at once and
// each is resumed on the connection's worker when its operation completes.
//
// Memory: every IoBuf/Buffer handed to a Connection must come from the pool the
// transport was created with (registered through the mempool Registrar seam;
// on RDMA the lkey/rkey come from there). The transport keeps references to
// the buffers of an operation for as long as the hardware (or the socket) may
// still touch them, so nothing is freed under it. Send() takes its message:
// do not write into those blocks afterwards (the transport may still be
// reading them when Send() has returned, exactly like a posted RDMA SEND).
// Read()/Write() suspend until the op is complete: after they return the
// buffers are the caller's again.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "hrpc/base/counter.h"
#include "hrpc/base/status.h"
#include "hrpc/mempool/buffer.h"
#include "hrpc/mempool/iobuf.h"

namespace hrpc::transport {

// What a remote peer may do with an exposed range.
enum class Access : uint8_t { kRead = 1, kWrite = 2, kReadWrite = 3 };
constexpr bool Allows(Access granted, Access wanted) {
  return (static_cast<uint8_t>(granted) & static_cast<uint8_t>(wanted)) ==
         static_cast<uint8_t>(wanted);
}
std::string_view AccessName(Access a);

// A range of a peer's memory that the peer exposed: a plain value, copied into
// RPC headers as is. `addr` is the peer's virtual address (as RDMA uses it),
// `key` names the exposure (RDMA: the MR/MW rkey; TCP/loopback: the exposure
// table entry, with a generation so revoked keys are not reused soon).
struct RemoteDescriptor {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint32_t key = 0;

  // The sub-range [offset, offset+n). Not checked here: the target checks.
  RemoteDescriptor Sub(uint64_t offset, uint32_t n) const { return {addr + offset, n, key}; }
  friend bool operator==(const RemoteDescriptor&, const RemoteDescriptor&) = default;
};
static_assert(sizeof(RemoteDescriptor) == 16);

// Limits of one connection, agreed in the handshake (both sides use the
// minimum of what each offered).
struct Limits {
  uint32_t max_message_bytes = 0;  // largest control message either side may Send()
  uint32_t recv_depth = 0;         // receive slots per side = initial send credits
  // Largest payload SendWithPayload() may carry behind a message; 0 when the
  // connection has no in-stream payloads (RDMA, loopback: move payloads with
  // one-sided Read()/Write() instead).
  uint64_t max_payload_bytes = 0;
};

// Faults a transport injects into its own traffic, for testing what each one
// costs (docs/reliability.md, "Fault injection"). Set them at creation
// (TransportOptions::faults) or on a live transport (Transport::SetFaults);
// they apply to every connection of that transport, to what this side sends
// (and, for refused allocations, receives) from then on. The `*_next` counts
// are consumed as faults are injected: "the next N messages". All zero = no
// fault and no cost beyond one relaxed load per message.
//
// What each fault costs (the contract the conformance suite checks, on every
// transport that supports the fault; TransportCapabilities::faults says which):
//  * drop: that message is lost (its credit is not: the sender keeps it); the
//    connection lives on. The RPC call it carried hits its deadline.
//  * duplicate: the message goes twice; the receiver delivers it once (a
//    per-connection message sequence number) and counts the discarded copy.
//  * truncate / corrupt: the receiver's length and CRC32C checks catch it and
//    fail that connection with DATA_LOSS; no other connection notices.
//  * delay: Send() holds each message this long before it goes on the wire
//    (loopback: the simulated wire holds it; Send() returns at once).
//  * refuse_allocations: the next N receive buffers this side allocates from
//    its pool are refused: TransportCapabilities::refused_allocation_keeps_connection
//    says whether that is backpressure (the transport retries) or the end of
//    that connection (RESOURCE_EXHAUSTED).
//  * disconnect_after: the connection breaks (UNAVAILABLE on both sides) when
//    this side sends its (N+1)-th message on it.
//  * qp_error_next (RDMA): the next N connections that send a message move their
//    QP to the error state first; the connection fails with UNAVAILABLE.
struct FaultOptions {
  double drop_probability = 0.0;  // each message independently (seeded below)
  uint32_t drop_next = 0;
  uint32_t duplicate_next = 0;
  uint32_t truncate_next = 0;  // the last byte of each of the next N non-empty messages is cut off
  uint32_t corrupt_next = 0;   // one byte of each of the next N messages is flipped
  std::chrono::microseconds delay{0};
  uint32_t refuse_allocations = 0;
  int64_t disconnect_after = -1;  // messages per connection; -1 = never
  uint32_t qp_error_next = 0;
  uint64_t seed = 1;

  bool any() const {
    return drop_probability > 0 || drop_next || duplicate_next || truncate_next || corrupt_next || delay.count() > 0 ||
           refuse_allocations || disconnect_after >= 0 || qp_error_next;
  }
};

// Which faults a transport can inject (FaultOptions fields), as a bit set.
enum FaultKind : uint32_t {
  kFaultDrop = 1u << 0,
  kFaultDuplicate = 1u << 1,
  kFaultTruncate = 1u << 2,
  kFaultCorrupt = 1u << 3,
  kFaultDelay = 1u << 4,
  kFaultRefuseAllocation = 1u << 5,
  kFaultDisconnect = 1u << 6,
  kFaultQpError = 1u << 7,
};

// What differs between transports, for the layers above and for tests.
struct TransportCapabilities {
  // A one-sided op the target refuses (key, bounds, access) fails only that
  // op (TCP, loopback: the target answers with an error frame). False on
  // RDMA: the NIC NAKs the op and the RC QP, i.e. the connection, goes to error.
  bool refusal_keeps_connection = true;
  // Exposure is exact: the peer can reach exactly the exposed bytes. False on
  // RDMA when no memory windows are available: the rkey of an arena's MR opens
  // the whole registered arena (the transport still checks nothing remotely).
  bool exact_exposure = true;
  // The transport's own CPU copies one-sided payload bytes (loopback's
  // simulated NIC, through CountedCopy). False for TCP (readv/writev straight
  // into registered buffers) and RDMA (the NIC's DMA).
  bool cpu_copies_payload = false;
  // Control messages carry a CRC32C and a sequence number checked by the
  // receiver (corruption and truncation fail the connection with DATA_LOSS,
  // duplicates are discarded). RDMA relies on RoCE's ICRC and RC's packet
  // sequence numbers below the transport instead.
  bool checks_messages = true;
  // A receive buffer the pool refuses is retried (backpressure on the peer's
  // credits) instead of failing the connection.
  bool refused_allocation_keeps_connection = false;
  // FaultKind bits this transport injects; SetFaults refuses the others.
  uint32_t faults = 0;
};

// Options every transport understands. Defaults work on a laptop.
struct TransportOptions {
  uint32_t max_message_bytes = 64 * 1024;
  uint32_t recv_depth = 64;
  // One-sided ops a connection may have outstanding; more park the caller.
  uint32_t max_outstanding_ops = 1024;
  // Idle connections send a keepalive every `keepalive_interval`; a peer from
  // which nothing arrived for `dead_peer_timeout` is declared dead: the
  // connection fails and every outstanding op completes with UNAVAILABLE.
  std::chrono::milliseconds keepalive_interval{1000};
  std::chrono::milliseconds dead_peer_timeout{5000};
  std::chrono::milliseconds connect_timeout{5000};    // Connect() incl. handshake
  std::chrono::milliseconds handshake_timeout{5000};  // accepted socket -> handshake done
  FaultOptions faults;  // none by default
};

// One connection to a peer. Owned by its creator (unique_ptr); must not
// outlive its Transport. Destroying it closes it; operations still parked on it
// complete with CANCELLED (their state is kept alive by the transport).
//
// Errors: once a connection fails (peer gone, keepalive timeout, protocol
// violation, local Close()) status() is non-OK forever and every outstanding
// and later operation returns that Status: UNAVAILABLE for a peer that went
// away or stopped answering, DATA_LOSS/INVALID_ARGUMENT for a peer that broke
// the protocol, CANCELLED after a local Close(). A refused one-sided op
// (PERMISSION_DENIED, OUT_OF_RANGE, NOT_FOUND) does NOT fail the connection.
class Connection {
 public:
  virtual ~Connection() = default;

  // Queue a control message (1 .. limits().max_message_bytes bytes; 0 is
  // allowed and delivers an empty message). Suspends while the peer has no
  // receive slot for it (credits) or while too many bytes are queued for a
  // socket the kernel does not drain (backpressure). Returns once the message
  // is handed to the transport; messages are delivered in Send() order.
  // INVALID_ARGUMENT: too large. Connection errors as above.
  virtual Status Send(mempool::IoBuf message) = 0;

  // Send() followed, in the same stream, by `payload` (1 ..
  // limits().max_payload_bytes bytes, any memory), which the receiver reads
  // straight into 4 KiB-aligned blocks of its pool: its Recv() returns the
  // message's slices followed by those blocks, as one message (one credit).
  // For byte-stream transports, where a payload costs no extra round trip
  // this way. UNIMPLEMENTED where max_payload_bytes is 0; INVALID_ARGUMENT
  // when too large. The payload's blocks are held until written.
  virtual Status SendWithPayload(mempool::IoBuf message, mempool::IoBuf payload) {
    (void)message;
    (void)payload;
    return UnimplementedError("this transport has no in-stream payloads");
  }

  // Next control message, in order, in a buffer from the transport's pool that
  // now belongs to the caller. Suspends until one arrives. Taking a message
  // frees its receive slot (returns a credit to the peer). Several coroutines
  // may wait; each message goes to exactly one of them, in FIFO order.
  virtual Result<mempool::IoBuf> Recv() = 0;

  // Expose a contiguous registered buffer to the peer. Valid until Revoke()
  // or until the connection ends; the transport holds a reference to `buf`
  // meanwhile. INVALID_ARGUMENT for an empty buffer or > 4 GiB;
  // FAILED_PRECONDITION if `buf` is not from the transport's pool.
  virtual Result<RemoteDescriptor> Expose(const mempool::Buffer& buf, Access access) = 0;

  // End an exposure. Suspends until one-sided ops the target already accepted
  // on it have finished, so that afterwards the peer can no longer touch the
  // memory. Later ops on the key are refused with PERMISSION_DENIED.
  // NOT_FOUND for a descriptor that is not (or no longer) exposed here.
  virtual Status Revoke(const RemoteDescriptor& desc) = 0;

  // One-sided READ: copy src.len bytes of the peer's exposed memory into
  // `dst` (dst.size() must equal src.len). Suspends until the bytes are in
  // `dst`. PERMISSION_DENIED (wrong/revoked key, no read access) or
  // OUT_OF_RANGE (outside the exposed range) when the target refuses. Once
  // it has returned, with any status (CANCELLED by a Close() included), the
  // transport no longer writes into `dst`.
  virtual Status Read(const RemoteDescriptor& src, const mempool::IoBuf& dst) = 0;

  // One-sided WRITE: place `src` (src.size() == dst.len) into the peer's
  // exposed memory. Suspends until the target has placed the bytes.
  // Refusals as for Read() (write access needed).
  virtual Status Write(const mempool::IoBuf& src, const RemoteDescriptor& dst) = 0;

  // Tear down: outstanding ops complete with CANCELLED; the peer sees the
  // connection end (UNAVAILABLE). Idempotent; does not suspend.
  virtual void Close() = 0;

  // The peer passed authentication: lifts what Listener::HoldUntilAdmitted()
  // held back on this connection, and it is read as fast as any other. No
  // effect on a connection accepted without that, or on a transport that holds
  // nothing back. Does not suspend.
  virtual void Admit() {}

  // Bytes of messages and payloads that Send()/SendWithPayload() queued and
  // that have not reached the peer yet: TCP's send queue and what the kernel
  // holds unacknowledged, which Close() may drop (a close with unread input
  // ends in a reset). A graceful close waits for 0 before Close(). 0 once the
  // connection failed, and where the
  // transport keeps no queue of its own: loopback (a message is in the
  // peer's inbox, or on its simulated wire, when Send() returns) and RDMA,
  // where a message is posted to the NIC (a Close() right after a post moves
  // the QP to error, which flushes a SEND the NIC has not sent yet, e.g. one
  // queued behind a large WRITE: not counted here). Does not suspend.
  virtual uint64_t unsent_bytes() const { return 0; }

  // OK while usable; the first error otherwise.
  virtual Status status() const = 0;
  virtual const Limits& limits() const = 0;
  // "tcp://127.0.0.1:4711", "loop://name#3": for logs.
  virtual std::string_view peer() const = 0;
};

// A bound endpoint accepting connections. Connections it returns belong to the
// same worker as the listener.
class Listener {
 public:
  virtual ~Listener() = default;
  // Next connection whose handshake has completed. Suspends. CANCELLED after
  // Close(). Failed handshakes are logged and never returned.
  virtual Result<std::unique_ptr<Connection>> Accept() = 0;
  // The URI actually bound ("tcp://0.0.0.0:0" -> "tcp://0.0.0.0:41234").
  virtual std::string uri() const = 0;
  // Stop accepting; parked Accept() calls return CANCELLED. Idempotent.
  virtual void Close() = 0;
  // Connections accepted from now on are held back until Connection::Admit(),
  // so that a peer that has not authenticated yet can make this side hold
  // little memory (ServerOptions::authenticator sets it). On TCP such a
  // connection reads no in-stream payload (it stops reading at one until
  // admitted) and reads nothing more while a message it received waits to be
  // taken (Recv): at most one message of max_message_bytes at a time. With
  // `client_speaks_first` (the exchange starts with a message of the peer's
  // that carries no payload: Authenticator::ClientSpeaksFirst), the payload
  // of a first message that has one, from a peer that skipped
  // authentication, is read into nothing and dropped and its message
  // delivered alone, for the authenticator to refuse. RDMA and loopback have
  // nothing to hold back: an RDMA peer's messages land in receive slots
  // bounded by its credits (recv_depth messages of max_message_bytes), a
  // loopback peer's in memory of its own. Call it on the listener's worker
  // right after Listen(), before anything there suspends: a connection
  // accepted before it is not held.
  virtual void HoldUntilAdmitted(bool client_speaks_first) { (void)client_speaks_first; }
};

// Counters of one transport instance (one worker, one scheme), for monitoring
// (docs/observability.md). Written only on the transport's worker, read from
// any thread; held by shared_ptr so that a reader may keep them past the
// transport's end. Counters a transport cannot know stay 0 (e.g. the ops an
// RDMA NIC serves without the CPU).
struct TransportCounters {
  // Connections that completed the handshake, by who started them.
  OwnerCounter accepted, connected;
  // Open connections that ended: closed on this side (CANCELLED), closed by
  // the peer (orderly), or failed (reset, dead peer, protocol violation,
  // failed RDMA completion, ...).
  OwnerCounter closed_local, closed_by_peer, failed;
  // Attempts that never opened: outgoing (refused, unreachable, timed out,
  // handshake rejected) and incoming (handshake refused or timed out).
  OwnerCounter connect_failures, handshake_failures;
  // Control messages (two-sided) and their bytes; bytes of in-stream
  // payloads (TCP SendWithPayload), counted apart from the messages.
  OwnerCounter messages_sent, messages_received, message_bytes_sent, message_bytes_received;
  OwnerCounter payload_bytes_sent, payload_bytes_received;
  // One-sided ops this side requested, and their bytes.
  OwnerCounter reads, writes, read_bytes, write_bytes;
  // The peer's one-sided ops this side's CPU served (TCP, loopback).
  OwnerCounter reads_served, writes_served;
  // Refused one-sided ops: this side's, refused by the peer (PERMISSION_DENIED,
  // OUT_OF_RANGE, NOT_FOUND); the peer's, refused here (TCP, loopback).
  OwnerCounter refused_by_peer, refused_here;
  // Callers parked: a Send() without a credit (the peer's receive slots are
  // full); a Send()/Write() behind a full send queue (TCP: unsent bytes above
  // send_queue_high_water; RDMA: no send WQE free); a one-sided op at
  // max_outstanding_ops. A connection that stopped reading because the pool
  // refused a receive buffer (TCP: it reads again once memory is back).
  OwnerCounter credit_stalls, send_queue_stalls, op_slot_stalls, receive_memory_stalls;
  // RDMA: work completions that failed (flushes of a dead QP not counted),
  // of them the RNR retries and the transport retries that ran out; receive
  // slots the pool could not refill at once (the peer's credit waits; with
  // an SRQ the peer may meet RNR); inline sends, credit-only messages and
  // memory-window binds.
  OwnerCounter completion_errors, rnr_retry_exceeded, retry_exceeded, receive_refill_failures;
  OwnerCounter inline_sends, credit_messages, mw_binds;
  // Faults injected by this side (FaultOptions), and what the receive side's
  // checks caught: duplicates discarded, messages that failed the length or
  // CRC check (each failed its connection with DATA_LOSS).
  OwnerCounter faults_dropped, faults_duplicated, faults_truncated, faults_corrupted, faults_delayed;
  OwnerCounter faults_refused_allocations, faults_disconnects, faults_qp_errors;
  OwnerCounter duplicates_discarded, corrupt_messages;

  uint64_t faults_injected() const noexcept {
    return faults_dropped.Get() + faults_duplicated.Get() + faults_truncated.Get() + faults_corrupted.Get() +
           faults_delayed.Get() + faults_refused_allocations.Get() + faults_disconnects.Get() +
           faults_qp_errors.Get();
  }

  // One one-sided op this side requested (owner thread only).
  void CountOp(bool is_read, uint64_t bytes) noexcept {
    (is_read ? reads : writes).Add();
    (is_read ? read_bytes : write_bytes).Add(bytes);
  }

  uint64_t open() const noexcept {
    const uint64_t opened = accepted.Get() + connected.Get();
    const uint64_t ended = closed_local.Get() + closed_by_peer.Get() + failed.Get();
    return opened > ended ? opened - ended : 0;
  }
};

class TlsContext;  // tcp.h: CreateTlsContext()

// True for the statuses of a one-sided op the target refused (the connection lives on).
constexpr bool IsRefusal(StatusCode c) {
  return c == StatusCode::kPermissionDenied || c == StatusCode::kOutOfRange || c == StatusCode::kNotFound;
}

// A transport instance: one per worker (per scheme). Creates listeners and
// connections on that worker. Must outlive everything it created.
class Transport {
 public:
  virtual ~Transport() = default;
  // This instance's counters (any thread may read them).
  virtual const std::shared_ptr<TransportCounters>& counters() const noexcept = 0;
  virtual std::string_view scheme() const = 0;  // "tcp", "loop", "rdma"
  // What this transport does differently from the others (see the struct).
  virtual TransportCapabilities capabilities() const = 0;
  // Replaces the faults this transport injects (any thread; takes effect for
  // the next message of each connection). INVALID_ARGUMENT for a fault this
  // transport cannot inject (capabilities().faults).
  virtual Status SetFaults(const FaultOptions& faults) = 0;
  virtual Result<std::unique_ptr<Listener>> Listen(std::string_view uri) = 0;
  // Connects and completes the handshake. Suspends. UNAVAILABLE when nobody
  // listens, DEADLINE_EXCEEDED after connect_timeout, FAILED_PRECONDITION
  // when the peer rejects the handshake (version, limits), with its reason.
  virtual Result<std::unique_ptr<Connection>> Connect(std::string_view uri) = 0;

  // Listen()/Connect() with TLS under the transport's handshake (TCP only;
  // the others return UNIMPLEMENTED). A TLS handshake that fails closes that
  // connection: ConnectTls() returns UNAUTHENTICATED when a certificate was
  // refused (by either side: unknown CA, expired, wrong name, none given)
  // and UNAVAILABLE for anything else (a peer that does not speak TLS,
  // garbage), with OpenSSL's reason; a listener logs it, counts it in
  // handshake_failures and keeps accepting. Both run within the same
  // connect_timeout / handshake_timeout as the plain handshake.
  // INVALID_ARGUMENT: a context without cert_file (listen) or ca_file (connect).
  virtual Result<std::unique_ptr<Listener>> ListenTls(std::string_view uri, std::shared_ptr<const TlsContext> tls) {
    (void)uri;
    (void)tls;
    return UnimplementedError(std::string(scheme()) + ": no TLS on this transport");
  }
  virtual Result<std::unique_ptr<Connection>> ConnectTls(std::string_view uri,
                                                         std::shared_ptr<const TlsContext> tls) {
    (void)uri;
    (void)tls;
    return UnimplementedError(std::string(scheme()) + ": no TLS on this transport");
  }
};

// "tcp://host:port", "rdma://host:port", "loop://name".
struct Uri {
  std::string scheme;
  std::string host;   // or the loopback name
  uint16_t port = 0;  // 0 for loop://
  std::string ToString() const;
};
// INVALID_ARGUMENT with the reason for anything else (a missing port, a port
// out of range, an unknown scheme, an empty host, a host with a byte that is
// not a letter, digit, '.', '-', '_', ':' or '%').
Result<Uri> ParseUri(std::string_view uri);

}  // namespace hrpc::transport
