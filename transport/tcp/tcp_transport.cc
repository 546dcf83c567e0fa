// TCP transport: RDMA semantics over non-blocking sockets. See tcp.h, frame.h
// and docs/transport.md.
//
// Receive path. Each connection reads with readv into exactly the bytes it
// expects next: the 32-byte header of the next frame, then the frame's body
// straight into its final place (a fresh pool buffer for a message, the exposed
// target range for a WRITE, the requester's destination IoBuf for a READ
// response) plus, in the same readv, the header of the frame after it. The
// socket is never read past the next header, so payload bytes never land in a
// staging buffer and are never copied. A refused WRITE's body is drained into
// a small scratch buffer (that is discarding, not payload delivery). When the
// pool cannot give a receive buffer the connection stops reading its socket
// (backpressure: the peer's sends fill the kernel buffers and then wait) and
// tries again on a timer, backing off from 1 to 32 ms, until memory is back;
// one that waits longer than the dead-peer timeout fails (RESOURCE_EXHAUSTED):
// what it already holds may be what it waits for.
//
// Send path. Frames queue per connection with references to their payload
// buffers and go out in batches with one sendmsg (writev) per call; a full
// socket enables EPOLLOUT and parks callers once the queue passes its high
// water mark.
//
// TLS (ListenTls/ConnectTls): the same paths, with TlsStream::Readv/Writev in
// place of readv/sendmsg (OpenSSL decrypts into, and encrypts from, the same
// iovecs), after a TLS handshake that runs before HELLO (Phase::kTls).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "conn_parts.h"
#include "exposure.h"
#include "faults.h"
#include "frame.h"
#include "hrpc/base/ring_queue.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/transport/resolver.h"
#include "hrpc/transport/tcp.h"
#include "tls_stream.h"

namespace hrpc::transport {
namespace {

using Clock = std::chrono::steady_clock;
using internal::Parked;
using tcp::FrameHeader;
using tcp::FrameType;
using tcp::kHeaderBytes;

constexpr int kMaxIov = 256;
constexpr size_t kScratchBytes = 64 * 1024;
static_assert(kScratchBytes >= tcp::kPayloadPad);
// Zero bytes sent as the padding in front of WRITE / READ_RESP payloads.
alignas(64) const uint8_t kZeros[tcp::kPayloadPad] = {};
constexpr int kReadBudget = 32;    // readv calls per connection per Poll()
constexpr int kAcceptBudget = 64;  // accepts per listener per Poll()
constexpr uint64_t kListenerBit = 1ull << 63;
// Pool blocks a MESSAGE_PAYLOAD's receiver holds ready ahead of the bytes read.
constexpr uint64_t kPayloadAheadBytes = 8u << 20;
// Announced frames (FrameHeader::key of a MESSAGE / MESSAGE_PAYLOAD) the
// receiver gives buffers ahead of their bytes, so one readv takes several of
// them: at most kPlanFrames, each with at most kPlanCtrlBytes of header +
// message + padding and kPlanPayloadBytes of payload, kPlanAheadBytes in all.
constexpr size_t kPlanFrames = 64;
constexpr size_t kPlanCtrlBytes = 64u << 10;
constexpr uint64_t kPlanPayloadBytes = 256u << 10;
constexpr uint64_t kPlanAheadBytes = 1u << 20;
// Retry interval of a connection whose receive buffer the pool refused.
constexpr std::chrono::milliseconds kMemoryRetryFirst{1}, kMemoryRetryMax{32};

// The handshake body in a pool buffer. Control bytes, not payload: a plain
// memcpy, not counted by CountedCopy.
Result<mempool::IoBuf> HelloBody(mempool::Pool& pool, const tcp::Hello& hello) {
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(sizeof hello));
  std::memcpy(b.data(), &hello, sizeof hello);
  return mempool::IoBuf(std::move(b));
}

int64_t Ms(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

std::string SockName(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
    return "tcp://" + std::string(host) + ":" + std::to_string(port);
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
    return "tcp://[" + std::string(host) + "]:" + std::to_string(port);
  }
  return "tcp://?";
}

bool SameHost(const sockaddr_storage& local, const sockaddr_storage& peer) {
  if (peer.ss_family == AF_INET) {
    const auto& p = reinterpret_cast<const sockaddr_in&>(peer).sin_addr;
    if ((ntohl(p.s_addr) >> 24) == 127) return true;
    return local.ss_family == AF_INET &&
           reinterpret_cast<const sockaddr_in&>(local).sin_addr.s_addr == p.s_addr;
  }
  if (peer.ss_family == AF_INET6) {
    const auto& p = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&p)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&p) && p.s6_addr[12] == 127) return true;
    return local.ss_family == AF_INET6 &&
           IN6_ARE_ADDR_EQUAL(&reinterpret_cast<const sockaddr_in6&>(local).sin6_addr, &p);
  }
  return false;
}

// Sets the congestion control the options ask for on a connected (or
// connecting) socket. An algorithm the kernel does not have or does not allow
// leaves the system default, with one warning per transport and algorithm.
void ApplyCongestionControl(int fd, const sockaddr_storage& peer, const TcpOptions& opt,
                            std::vector<std::string>& warned) {
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) return;
  const std::string& algo = SameHost(local, peer) ? opt.loopback_congestion_control : opt.congestion_control;
  if (algo.empty()) return;
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, algo.data(), static_cast<socklen_t>(algo.size())) == 0) {
    return;
  }
  const int err = errno;
  if (std::find(warned.begin(), warned.end(), algo) != warned.end()) return;
  warned.push_back(algo);
  SPDLOG_WARN("hrpc tcp: congestion control '{}' not set ({}); the system default stays "
              "(net.ipv4.tcp_available_congestion_control / tcp_allowed_congestion_control)",
              algo, strerror(err));
}

// The TCP key table: registration only records the arena, so Expose() can
// refuse memory that is not from the transport's pool.
class TcpKeyTable final : public mempool::Registrar {
 public:
  std::string_view name() const override { return "tcp"; }
  Result<mempool::RegionKey> Register(void* base, size_t len, int) override {
    std::lock_guard lk(mu_);
    const uint32_t id = next_++;
    arenas_[id] = {base, len};
    return mempool::RegionKey{id, id, id};
  }
  void Unregister(void*, size_t, const mempool::RegionKey& key) override {
    std::lock_guard lk(mu_);
    arenas_.erase(key.rkey);
  }

 private:
  std::mutex mu_;
  uint32_t next_ = 1;
  std::unordered_map<uint32_t, std::pair<void*, size_t>> arenas_;
};

struct Core;
struct ListenerState;

struct OutFrame {
  FrameHeader h;
  uint8_t hdr[kHeaderBytes];
  bool encoded = false;
  mempool::IoBuf payload;
  size_t off = 0;                     // bytes of header+pad+payload already written
  uint32_t pad = 0;                   // kPayloadPad zero bytes before payload slice `pad_slice`
  size_t pad_slice = 0;               // WRITE / READ_RESP: 0; MESSAGE_PAYLOAD: the message's slice count
  uint32_t expo_index = UINT32_MAX;   // READ response: exposure to End() once written
  bool close_after = false;           // handshake refusal: close once written
  bool answer = false;                // READ_RESP, WRITE_ACK or an op's ERROR: the answer to a peer's op
  size_t total() const { return kHeaderBytes + pad + payload.size(); }
};

struct Op {  // a one-sided op this side requested
  uint64_t id = 0;
  bool is_read = false;
  uint32_t len = 0;
  mempool::IoBuf buf;  // READ: destination; WRITE: unused (the frame holds the source)
  Parked parked;
};

struct SendWaiter : Parked {  // Send() waiting for a credit
  mempool::IoBuf msg;
  mempool::IoBuf payload;  // SendWithPayload
};

// A MESSAGE or MESSAGE_PAYLOAD announced by the frame before it (same type,
// message and payload length), given its buffers before its bytes arrive: its
// header, message and padding land in `ctrl` (parsed like a prefetch, the
// message kept as slices), its payload in `payload` (pool blocks, aligned like
// MorePayloadBlocks').
struct PlannedFrame {
  FrameType type = FrameType::kMessagePayload;
  mempool::Buffer ctrl;
  size_t ctrl_len = 0;  // kHeaderBytes + message (+ kPayloadPad)
  size_t ctrl_got = 0;
  uint32_t msg_len = 0;
  uint64_t payload_len = 0;
  std::vector<iovec> payload_iov;
  mempool::IoBuf payload_hold;
  bool adopted = false;  // StartPayload took the payload blocks
};

enum class Phase : uint8_t { kConnecting, kTls, kHandshake, kOpen, kClosed };
enum class Sink : uint8_t { kMessage, kPayload, kWrite, kDrain, kReadResp, kHello, kErrorText };

struct Conn : std::enable_shared_from_this<Conn> {
  std::shared_ptr<Core> core;
  int fd = -1;
  uint64_t token = 0;
  bool server = false;
  Phase phase = Phase::kConnecting;
  Status status;
  std::string peer;
  Limits limits;
  std::chrono::milliseconds keepalive{1000};
  // When something was last received and sent, to the keepalive timer's
  // resolution: I/O only notes that it happened, the next tick stamps it.
  Clock::time_point last_rx, last_tx, handshake_deadline;
  bool rx_since_tick = false, tx_since_tick = false;
  std::weak_ptr<ListenerState> listener;
  Parked* connect_waiter = nullptr;
  bool peer_closed = false;  // the peer ended the stream between frames (an orderly close)
  bool checked = false;      // both hellos set kHelloChecked: messages carry a sequence number and a CRC32C
  uint64_t tx_seq = 0;       // messages sent (numbered from 1)
  internal::SeqFilter rx_seq;
  std::unique_ptr<tcp::TlsStream> tls;  // null: plain TCP

  // Send side.
  RingQueue<OutFrame> outq;
  size_t queued_bytes = 0;
  uint32_t queued_answers = 0;  // frames in outq with `answer` set
  bool epollout = false;
  bool in_epoll = true;  // the fd is in the epoll set (out of it while paused and not waiting for EPOLLOUT)
  internal::CreditGate<SendWaiter> credits;
  uint32_t credits_to_return = 0;
  uint32_t unreturned = 0;  // messages received whose credit has not been returned
  std::deque<Parked*> drain_waiters;

  // Receive side.
  // The pool refused a receive buffer: the socket is not read until the
  // retry timer (retry_in, doubling) finds memory.
  bool rx_paused = false;
  // Accepted from a listener that holds connections until Admit() (not yet
  // admitted): no payload is read, nor anything while a message waits in the
  // inbox. hold_wait: paused for that (resumed by Admit() or Recv()).
  bool admitted = true;
  bool hold_wait = false;
  // Held, the peer speaking first, and nothing delivered yet: a payload behind
  // this first message tells a peer that skipped authentication (dropped:
  // drop_payload). Cleared by the first delivery and by Admit().
  bool first_payload_refused = false;
  bool drop_payload = false;  // the current frame's payload is drained, its message delivered alone
  std::chrono::milliseconds retry_in = kMemoryRetryFirst;
  Clock::time_point memory_wait_since;  // first refusal of the current wait
  bool read_since_pause = false;        // bytes were read since the last refusal: it ended that wait
  uint8_t hdr_buf[kHeaderBytes];
  size_t hdr_got = 0;
  bool in_body = false;
  FrameHeader cur;
  Sink sink = Sink::kMessage;
  std::vector<iovec> body_iov;
  size_t body_pos = 0;
  uint64_t body_left = 0;
  uint64_t body_total = 0;
  uint32_t pad_left = 0;          // padding still to skip before a WRITE / READ_RESP payload
  mempool::IoBuf msg;             // MESSAGE being assembled (prefetch slices + remainder)
  uint64_t payload_pending = 0;   // MESSAGE_PAYLOAD: payload bytes still to come after the message
  mempool::IoBuf msg_before_payload;  // MESSAGE_PAYLOAD: its message, while the payload arrives
  mempool::IoBuf body_hold;       // keeps the target alive while bytes land in it
  uint32_t body_expo = UINT32_MAX;
  Status refusal;                 // a refused WRITE's answer, sent after the drain
  std::string small_body;         // HELLO / ERROR text
  internal::Inbox<internal::LocalParked> inbox;  // Recv() on the path of every message
  // Frames behind the current one that its header announced (key): the first
  // `plan.size()` have buffers, `run_left` more have none yet. plan_ctrl: the
  // bytes being parsed are plan.front()'s header, message and padding.
  std::deque<PlannedFrame> plan;
  uint32_t run_left = 0;
  bool plan_ctrl = false;

  // One-sided ops.
  internal::OpTable<Op> ops;
  internal::OpSlots op_slots;
  internal::ExposureTable expo;

  bool dirty = false;  // frames queued since the last Flush (in Core::dirty)

  bool closed() const { return phase == Phase::kClosed; }
};

struct ListenerState {
  int fd = -1;
  uint64_t token = 0;
  std::string uri;
  std::shared_ptr<const TlsContext> tls;  // null: plain TCP
  bool hold_until_admitted = false;       // Listener::HoldUntilAdmitted()
  bool client_speaks_first = false;       // its argument
  internal::AcceptQueue<std::shared_ptr<Conn>, Parked> accepts;
};

struct Core final : coro::Poller, std::enable_shared_from_this<Core> {
  coro::Scheduler* sched = nullptr;
  mempool::Pool* pool = nullptr;
  TcpOptions opt;
  int epfd = -1;
  std::unique_ptr<mempool::Registrar> own_registrar;
  mempool::RegistrarSlot slot = 0;
  bool own_slot = false;
  bool stopped = false;
  // The shortest keepalive a connection agreed (a peer with a short dead-peer
  // timeout asks for one below ours): the timer ticks at least that often.
  std::chrono::milliseconds min_keepalive = std::chrono::milliseconds::max();
  std::chrono::milliseconds tick_period{0};  // of the armed timer
  uint64_t next_token = 1;
  coro::Scheduler::TimerId timer = 0;
  std::unordered_map<uint64_t, std::shared_ptr<Conn>> conns;
  std::unordered_map<uint64_t, std::shared_ptr<ListenerState>> listeners;
  std::vector<char> scratch = std::vector<char>(kScratchBytes);
  // Connections with queued frames: flushed at the end of Poll(), i.e. after
  // the scheduler ran its batch of coroutines, so frames queued by many
  // coroutines leave in one writev.
  std::vector<std::shared_ptr<Conn>> dirty;
  std::vector<std::shared_ptr<Conn>> flushing;  // FlushDirty's batch in progress
  std::weak_ptr<Conn> hot;  // last connection that had input
  // TLS connections whose decrypted bytes OpenSSL holds, beyond what the last
  // OnReadable() asked for: epoll will not report them, Poll() serves them.
  std::vector<std::shared_ptr<Conn>> tls_buffered;
  std::shared_ptr<TransportCounters> counters = std::make_shared<TransportCounters>();
  TransportCounters& ctr() { return *counters; }
  std::vector<std::string> cc_warned;  // congestion controls the kernel refused
  internal::FaultInjector faults;
  // A receive buffer (message body, prefetch, payload block) from the pool,
  // unless fault injection refuses it.
  Result<mempool::Buffer> RxAllocate(size_t n) {
    if (faults.armed() && faults.RefuseAllocation(ctr())) {
      return ResourceExhaustedError("fault injection: receive buffer of " + std::to_string(n) + " bytes refused");
    }
    return pool->Allocate(n);
  }
  // A prefetch buffer a read left empty (most often one that found the
  // socket empty), for the next read: no pool round trip per empty read. Not
  // kept while fault injection may refuse receive buffers.
  mempool::Buffer spare_prefetch;
  void KeepPrefetch(mempool::Buffer pf) {
    if (pf && !faults.armed()) spare_prefetch = std::move(pf);
  }
  int hot_skips = 0;
  static constexpr int kHotSkips = 8;

  ~Core() override = default;
  int fd() const override { return epfd; }
  int Poll() override;

  // --- connection plumbing
  std::shared_ptr<Conn> NewConn(int fd, bool server, std::string peer);
  void Fail(Conn& c, Status s);
  void ProtocolError(Conn& c, std::string reason);
  void SetEpollOut(Conn& c, bool on);
  // The fd's epoll interest: EPOLLIN unless paused, EPOLLOUT while the socket is full.
  void UpdateEvents(Conn& c);
  // A receive buffer the pool refused: stop reading `c` and retry later.
  void PauseForMemory(Conn& c, const Status& why);
  void ResumeReading(const std::weak_ptr<Conn>& weak);
  // A connection not admitted yet stops reading (Listener::HoldUntilAdmitted);
  // ReleaseHold reads it again once it was admitted or its inbox emptied.
  void HoldForAdmission(Conn& c);
  void ReleaseHold(Conn& c);
  void Queue(Conn& c, FrameHeader h, mempool::IoBuf&& payload = mempool::IoBuf(), uint32_t expo_index = UINT32_MAX);
  void QueueError(Conn& c, uint64_t op_id, const Status& s, bool close_after = false);
  // Fails `c` when the answers queued for its peer's one-sided ops reached
  // their bound (a peer that asks without reading); true then.
  bool TooManyAnswersQueued(Conn& c);
  void Flush(Conn& c);
  void WakeDrainWaiters(Conn& c);
  void MarkDirty(Conn& c) {
    if (c.dirty || c.closed()) return;
    c.dirty = true;
    dirty.push_back(c.shared_from_this());
  }
  int FlushDirty();
  bool OnReadable(Conn& c);  // true if any bytes arrived
  // Parses bytes [from, from + len) of `pf`.
  void ConsumePrefetch(Conn& c, const mempool::Buffer& pf, size_t from, size_t len);
  // Gives buffers to the announced frames that fit the limits (kPlan*).
  void ExtendPlan(Conn& c);
  // Bytes read into the current frame's padding and body; false if that closed c.
  bool TakeBody(Conn& c, size_t& got);
  // A control message, or (payload non-empty) a MESSAGE_PAYLOAD frame.
  void QueueMessage(Conn& c, mempool::IoBuf&& message, mempool::IoBuf&& payload);
  bool StartPayload(Conn& c);
  bool MorePayloadBlocks(Conn& c);
  void OnHeader(Conn& c, const FrameHeader& h);
  void OnBodyDone(Conn& c);
  void FinishConnect(Conn& c);
  void SendHello(Conn& c);
  void DriveTls(Conn& c);
  void NoteTlsBuffered(Conn& c) {
    if (c.tls && !c.closed() && c.tls->HasBuffered()) tls_buffered.push_back(c.shared_from_this());
  }
  int ServeTlsBuffered();
  ssize_t ReadSocket(Conn& c, const iovec* iov, int n) {
    if (c.tls) [[unlikely]] return c.tls->Readv(iov, n);
    return readv(c.fd, iov, n);
  }
  ssize_t WriteSocket(Conn& c, const iovec* iov, int n) {
    if (c.tls) [[unlikely]] return c.tls->Writev(iov, n);
    msghdr mh{};
    mh.msg_iov = const_cast<iovec*>(iov);
    mh.msg_iovlen = n;
    return sendmsg(c.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  // The Status of a failed ReadSocket/WriteSocket (errno `err`).
  Status IoError(Conn& c, int err, const char* what) {
    if (c.tls && !c.tls->error().ok()) return c.tls->error();
    return ErrnoStatus(err, std::string(what) + " " + c.peer);
  }
  void OnHello(Conn& c, const tcp::Hello& hello);
  // `payload_bytes`: how many of msg's bytes are an in-stream payload.
  void Deliver(Conn& c, mempool::IoBuf&& msg, uint64_t payload_bytes = 0);
  void ReturnCredit(Conn& c);
  void MaybeSendCredits(Conn& c);
  void GrantCredits(Conn& c, uint32_t n);
  void CompleteOp(Conn& c, uint64_t id, Status s);
  void OnAccept(ListenerState& ls);
  void Tick();
  void ArmTimer();
  void Shutdown();
  tcp::Hello OurHello() const {
    tcp::Hello h;
    h.max_message_bytes = opt.common.max_message_bytes;
    h.recv_depth = opt.common.recv_depth;
    h.keepalive_ms = static_cast<uint32_t>(opt.common.keepalive_interval.count());
    h.dead_peer_ms = static_cast<uint32_t>(opt.common.dead_peer_timeout.count());
    h.flags |= tcp::kHelloChecked;
    const uint64_t pages = std::min<uint64_t>(opt.max_payload_bytes / 4096, UINT32_MAX);
    if (pages > 0) {
      h.flags |= tcp::kHelloPayloads;
      h.max_payload_pages = static_cast<uint32_t>(pages);
    }
    return h;
  }
};

// ------------------------------------------------------------------ plumbing

std::shared_ptr<Conn> Core::NewConn(int fd, bool server, std::string peer) {
  auto c = std::make_shared<Conn>();
  c->core = shared_from_this();
  c->fd = fd;
  c->token = next_token++;
  c->op_slots.set_max(opt.common.max_outstanding_ops);
  c->server = server;
  c->peer = std::move(peer);
  c->last_rx = c->last_tx = Clock::now();
  c->handshake_deadline = c->last_rx + (server ? opt.common.handshake_timeout : opt.common.connect_timeout);
  conns[c->token] = c;
  return c;
}

void Core::Fail(Conn& c, Status s) {
  c.msg_before_payload = mempool::IoBuf();
  c.body_hold = mempool::IoBuf();
  if (c.closed()) return;
  auto keep = c.shared_from_this();
  if (c.phase == Phase::kOpen) {
    if (s.code() == StatusCode::kCancelled) {
      ctr().closed_local.Add();
    } else if (c.peer_closed) {
      ctr().closed_by_peer.Add();
    } else {
      ctr().failed.Add();
    }
  } else if (c.server) {
    ctr().handshake_failures.Add();
  } else {
    ctr().connect_failures.Add();
  }
  c.phase = Phase::kClosed;
  c.status = std::move(s);
  if (c.fd >= 0) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
    c.tls.reset();  // its close_notify goes out before the socket closes
    close(c.fd);
    c.fd = -1;
  }
  conns.erase(c.token);
  c.outq.ForEach([&](OutFrame& f) {
    if (f.expo_index != UINT32_MAX) c.expo.End(f.expo_index);
  });
  c.outq.clear();
  c.queued_bytes = 0;
  c.queued_answers = 0;
  if (c.in_body && c.sink == Sink::kWrite && c.body_expo != UINT32_MAX) c.expo.End(c.body_expo);
  c.in_body = false;
  c.body_hold = mempool::IoBuf();
  c.msg = mempool::IoBuf();
  c.body_iov.clear();
  c.plan.clear();
  c.run_left = 0;
  c.expo.Clear();
  // Move the lists out first: waking may run nothing now (same thread), but keep it simple.
  c.ops.FailAll(c.status);
  c.credits.FailAll(c.status);
  c.inbox.FailAll(c.status);
  for (auto* p : std::exchange(c.drain_waiters, {})) p->Finish(c.status);
  c.op_slots.FailAll(c.status);
  if (c.connect_waiter != nullptr) std::exchange(c.connect_waiter, nullptr)->Finish(c.status);
}

void Core::ProtocolError(Conn& c, std::string reason) {
  SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c.peer, reason);
  Fail(c, DataLossError("protocol violation by " + c.peer + ": " + reason));
}

void Core::SetEpollOut(Conn& c, bool on) {
  if (c.epollout == on || c.fd < 0) return;
  c.epollout = on;
  UpdateEvents(c);
}

void Core::UpdateEvents(Conn& c) {
  if (c.fd < 0) return;
  const uint32_t events = (c.rx_paused ? 0u : static_cast<uint32_t>(EPOLLIN)) |
                          (c.epollout ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  if (events == 0) {
    // Out of the set: a hang-up (always reported) must not spin the poller
    // while the connection is not reading.
    if (c.in_epoll) epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
    c.in_epoll = false;
    return;
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = c.token;
  if (epoll_ctl(epfd, c.in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev) < 0) {
    Fail(c, ErrnoStatus(errno, "epoll_ctl"));
    return;
  }
  c.in_epoll = true;
}

void Core::PauseForMemory(Conn& c, const Status& why) {
  if (c.rx_paused || c.closed()) return;
  const auto now = Clock::now();
  // A new wait: the first, or one after a resume that read bytes (memory that
  // comes back a little at a time is progress, not a dead peer).
  if (c.retry_in == kMemoryRetryFirst || c.read_since_pause) {
    c.memory_wait_since = now;
    c.retry_in = kMemoryRetryFirst;
  }
  c.read_since_pause = false;
  if (now - c.memory_wait_since > opt.common.dead_peer_timeout) {
    const std::string reason = "no receive memory for " + std::to_string(Ms(now - c.memory_wait_since)) + " ms (" +
                               why.ToString() + ")";
    SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c.peer, reason);
    Fail(c, ResourceExhaustedError("connection " + c.peer + ": " + reason));
    return;
  }
  SPDLOG_DEBUG("hrpc tcp: connection {} waits for memory ({}); retry in {} ms", c.peer, why.ToString(),
               c.retry_in.count());
  ctr().receive_memory_stalls.Add();
  c.rx_paused = true;
  UpdateEvents(c);
  sched->AddTimer(now + c.retry_in,
                  [weak = std::weak_ptr<Conn>(c.shared_from_this())] {
                    if (auto conn = weak.lock(); conn && !conn->closed()) conn->core->ResumeReading(weak);
                  });
  c.retry_in = std::min(c.retry_in * 2, kMemoryRetryMax);
}

void Core::HoldForAdmission(Conn& c) {
  if (c.rx_paused || c.closed()) return;
  c.hold_wait = true;
  c.rx_paused = true;
  UpdateEvents(c);
}

void Core::ReleaseHold(Conn& c) {
  if (!c.hold_wait || c.closed()) return;
  c.hold_wait = false;
  // From the scheduler, not from inside Recv() or Admit(): reading delivers.
  sched->Spawn(
      [weak = std::weak_ptr<Conn>(c.shared_from_this())] {
        if (auto conn = weak.lock(); conn && !conn->closed()) conn->core->ResumeReading(weak);
      },
      "hrpc-tcp-admit");
}

void Core::ResumeReading(const std::weak_ptr<Conn>& weak) {
  auto c = weak.lock();
  if (!c || c->closed() || stopped) return;
  c->rx_paused = false;
  c->last_rx = Clock::now();  // silence while paused was ours, not the peer's
  UpdateEvents(*c);
  if (c->closed()) return;
  OnReadable(*c);  // pauses again (with a longer wait) if memory is still short
  if (c->tls) NoteTlsBuffered(*c);
  if (!c->closed() && !c->rx_paused) c->retry_in = kMemoryRetryFirst;
  if (!c->closed() && !c->outq.empty()) MarkDirty(*c);
}

void Core::Queue(Conn& c, FrameHeader h, mempool::IoBuf&& payload, uint32_t expo_index) {
  h.length = static_cast<uint32_t>(payload.size());
  OutFrame& f = c.outq.emplace_back();
  f.h = h;
  f.pad = (h.type == FrameType::kWrite || h.type == FrameType::kReadResp) ? tcp::kPayloadPad : 0;
  f.payload = std::move(payload);
  f.expo_index = expo_index;
  c.queued_bytes += f.total();
  f.answer = h.type == FrameType::kReadResp || h.type == FrameType::kWriteAck ||
             (h.type == FrameType::kError && h.op_id != 0);
  if (f.answer) ++c.queued_answers;
}

bool Core::TooManyAnswersQueued(Conn& c) {
  // A peer's own transport has at most its max_outstanding_ops one-sided ops
  // outstanding, each waiting for its answer. One that keeps asking without
  // reading the answers would make them pile up here (each refusal holds a
  // pool block for its text): past 4 x this side's limit, it loses the connection.
  const uint64_t limit = 4 * uint64_t{std::max<uint32_t>(opt.common.max_outstanding_ops, 1)};
  if (c.queued_answers < limit) return false;
  const std::string reason = std::to_string(c.queued_answers) + " answers to its one-sided ops wait unread (limit " +
                             std::to_string(limit) + ", 4 x max_outstanding_ops)";
  SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c.peer, reason);
  Fail(c, ResourceExhaustedError("peer " + c.peer + ": " + reason));
  return true;
}

void Core::QueueMessage(Conn& c, mempool::IoBuf&& message, mempool::IoBuf&& payload) {
  internal::FaultAction fault;
  if (faults.armed()) {
    if (const int64_t after = faults.disconnect_after(); after >= 0 && static_cast<int64_t>(c.tx_seq) >= after) {
      ctr().faults_disconnects.Add();
      Status s = UnavailableError("fault injection: connection to " + c.peer + " broken after " +
                                  std::to_string(after) + " messages");
      SPDLOG_INFO("hrpc tcp: {}", s.message());
      Fail(c, std::move(s));
      return;
    }
    fault = faults.OnMessage(message.size(), ctr(), /*can_duplicate=*/payload.empty());
    if (fault.drop) {
      ++c.tx_seq;    // the receiver sees a gap, as after a lost frame
      c.credits.Refund();  // the receive slot is never used
      return;
    }
  }
  ctr().messages_sent.Add();
  ctr().message_bytes_sent.Add(message.size());
  if (!payload.empty()) ctr().payload_bytes_sent.Add(payload.size());
  FrameHeader h;
  if (c.checked) {
    h.op_id = ++c.tx_seq;
    h.aux = internal::MessageCrc(message, message.size());
  }
  if (fault.truncate || fault.corrupt) {
    auto damaged = internal::Damage(std::move(message), fault, *pool, h.aux);
    if (!damaged.ok()) {
      Fail(c, damaged.status().WithContext("fault injection"));
      return;
    }
    message = std::move(*damaged);
  }
  if (payload.empty()) {
    h.type = FrameType::kMessage;
    if (fault.duplicate) Queue(c, h, message.Share());
    Queue(c, h, std::move(message));
    return;
  }
  h.type = FrameType::kMessagePayload;
  h.length = static_cast<uint32_t>(message.size());
  h.addr = payload.size();
  OutFrame& f = c.outq.emplace_back();
  f.h = h;
  f.pad = tcp::kPayloadPad;
  f.pad_slice = message.num_slices();
  f.payload = std::move(message);
  f.payload.Append(std::move(payload));
  c.queued_bytes += f.total();
}

void Core::QueueError(Conn& c, uint64_t op_id, const Status& s, bool close_after) {
  std::string_view text = s.message().substr(0, tcp::kMaxErrorText);
  mempool::IoBuf body;
  if (!text.empty()) {
    // Error text is not payload; it still travels in a pool buffer (CopyFrom counts it).
    auto r = mempool::IoBuf::CopyFrom(*pool, text.data(), text.size());
    if (r.ok()) body = std::move(*r);
  }
  FrameHeader h;
  h.type = FrameType::kError;
  h.op_id = op_id;
  h.aux = static_cast<uint32_t>(s.code());
  Queue(c, h, std::move(body));
  c.outq.back().close_after = close_after;
}

// A MESSAGE / MESSAGE_PAYLOAD header announces (key) how many frames right
// behind it have its type, message and payload length, so the receiver reads
// several at once.
static bool SameShape(const OutFrame& a, const OutFrame& b) {
  return (a.h.type == FrameType::kMessagePayload || a.h.type == FrameType::kMessage) && a.h.type == b.h.type &&
         a.h.length == b.h.length && a.h.addr == b.h.addr;
}
constexpr uint32_t kMaxAnnounced = 1024;

void Core::Flush(Conn& c) {
  while (!c.closed() && !c.outq.empty()) {
    iovec iov[kMaxIov];
    int n = 0;
    uint32_t next_announced = UINT32_MAX;  // the key of outq[i], when outq[i - 1]'s announced it
    for (size_t i = 0; i < c.outq.size() && n < kMaxIov; ++i) {
      OutFrame& f = c.outq[i];
      if (!f.encoded) {
        const uint32_t give = std::min<uint32_t>(c.credits_to_return, UINT16_MAX);
        f.h.credits = static_cast<uint16_t>(give);
        c.credits_to_return -= give;
        if (f.h.type == FrameType::kMessagePayload || f.h.type == FrameType::kMessage) {
          uint32_t same = next_announced;
          if (same == UINT32_MAX) {
            same = 0;
            while (same < kMaxAnnounced && i + 1 + same < c.outq.size() && SameShape(f, c.outq[i + 1 + same])) ++same;
          }
          f.h.key = same;
          next_announced = same > 0 ? same - 1 : UINT32_MAX;
        } else {
          next_announced = UINT32_MAX;
        }
        tcp::EncodeHeader(f.h, f.hdr);
        f.encoded = true;
      } else {
        next_announced = UINT32_MAX;
      }
      size_t skip = f.off;
      auto add = [&](const void* base, size_t len) {
        if (skip >= len) {
          skip -= len;
          return;
        }
        if (n < kMaxIov) iov[n++] = {const_cast<char*>(static_cast<const char*>(base)) + skip, len - skip};
        skip = 0;
      };
      add(f.hdr, kHeaderBytes);
      size_t s = 0;
      for (; s < f.payload.num_slices() && n < kMaxIov; ++s) {
        if (f.pad > 0 && s == f.pad_slice) add(kZeros, f.pad);
        const mempool::Buffer& b = f.payload.slice(s);
        add(b.data(), b.size());
      }
      if (f.pad > 0 && f.pad_slice >= f.payload.num_slices() && s == f.payload.num_slices()) add(kZeros, f.pad);
    }
    ssize_t w = WriteSocket(c, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        SetEpollOut(c, true);
        WakeDrainWaiters(c);
        return;
      }
      const int err = errno;
      Status s = IoError(c, err, "send to");
      SPDLOG_INFO("hrpc tcp: send to {} failed: {}", c.peer, s.ToString());
      Fail(c, std::move(s));
      return;
    }
    c.tx_since_tick = true;
    size_t left = static_cast<size_t>(w);
    c.queued_bytes -= left;
    while (left > 0) {
      OutFrame& f = c.outq.front();
      const size_t take = std::min(left, f.total() - f.off);
      f.off += take;
      left -= take;
      if (f.off < f.total()) break;
      const uint32_t expo = f.expo_index;
      const bool close_after = f.close_after;
      if (f.answer) --c.queued_answers;
      c.outq.pop_front();
      if (expo != UINT32_MAX) c.expo.End(expo);
      if (close_after) {
        Fail(c, FailedPreconditionError("handshake refused"));
        return;
      }
    }
  }
  if (c.closed()) return;
  if (c.outq.empty()) SetEpollOut(c, false);
  WakeDrainWaiters(c);
}

void Core::WakeDrainWaiters(Conn& c) {
  // Senders parked on the high-water mark go on once the kernel has taken
  // the queue below half of it (also while the socket is full again).
  if (!c.drain_waiters.empty() && c.queued_bytes <= opt.send_queue_high_water / 2) {
    for (auto* p : std::exchange(c.drain_waiters, {})) p->Finish(Status::Ok());
  }
}

// ------------------------------------------------------------------ receive

// Advances the body target by n bytes that were read into it.
static void AdvanceBody(Conn& c, size_t n) {
  while (n > 0) {
    iovec& v = c.body_iov[c.body_pos];
    const size_t s = std::min(n, v.iov_len);
    v.iov_base = static_cast<char*>(v.iov_base) + s;
    v.iov_len -= s;
    n -= s;
    if (v.iov_len == 0) ++c.body_pos;
  }
}

// Bytes that landed in the prefetch buffer `pf` (everything read past the
// current frame's target): headers, small bodies, message bodies (kept as
// slices of `pf`: no copy) and padding. Payload of WRITE / READ_RESP /
// MESSAGE_PAYLOAD never lands here because the sender pads it by kPayloadPad
// >= kPrefetchBytes - header.
void Core::ConsumePrefetch(Conn& c, const mempool::Buffer& pf, size_t from, size_t len) {
  size_t pos = from;
  const size_t end = from + len;
  while (pos < end && !c.closed()) {
    const size_t avail = end - pos;
    if (!c.in_body) {
      const size_t take = std::min(avail, kHeaderBytes - c.hdr_got);
      std::memcpy(c.hdr_buf + c.hdr_got, pf.data() + pos, take);  // header bytes, not payload
      c.hdr_got += take;
      pos += take;
      if (c.hdr_got == kHeaderBytes) {
        c.hdr_got = 0;
        OnHeader(c, tcp::DecodeHeader(c.hdr_buf));
      }
      continue;
    }
    if (c.pad_left > 0) {
      const size_t take = std::min<size_t>(avail, c.pad_left);
      c.pad_left -= static_cast<uint32_t>(take);
      pos += take;
    } else {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(avail, c.body_left));
      switch (c.sink) {
        case Sink::kMessage:
          c.msg.Append(pf.Slice(pos, take));
          break;
        case Sink::kHello:
        case Sink::kErrorText:
          std::memcpy(c.body_iov[c.body_pos].iov_base, pf.data() + pos, take);  // not payload
          AdvanceBody(c, take);
          break;
        case Sink::kDrain:
          break;
        case Sink::kWrite:
        case Sink::kReadResp:
        case Sink::kPayload:
          ProtocolError(c, "payload without its padding");
          return;
      }
      c.body_left -= take;
      pos += take;
    }
    if (c.pad_left == 0 && c.body_left == 0) {
      c.in_body = false;
      OnBodyDone(c);
    }
  }
}

bool Core::TakeBody(Conn& c, size_t& got) {
  if (!c.in_body) return true;
  const size_t p = std::min<size_t>(got, c.pad_left);
  c.pad_left -= static_cast<uint32_t>(p);
  got -= p;
  const size_t take = static_cast<size_t>(std::min<uint64_t>(got, c.body_left));
  if (c.sink != Sink::kDrain) AdvanceBody(c, take);
  c.body_left -= take;
  got -= take;
  if (c.pad_left == 0 && c.body_left == 0) {
    c.in_body = false;
    OnBodyDone(c);
  }
  return !c.closed();
}

void Core::ExtendPlan(Conn& c) {
  const FrameHeader& h = c.cur;  // the announcing frame, or the last planned one (same shape)
  if (!c.admitted || c.run_left == 0 || (h.type != FrameType::kMessage && h.type != FrameType::kMessagePayload)) return;
  const bool with_payload = h.type == FrameType::kMessagePayload;
  const size_t ctrl_len = kHeaderBytes + h.length + (with_payload ? tcp::kPayloadPad : 0);
  const uint64_t p = with_payload ? h.addr : 0;
  // Plain messages that a prefetch takes several at a time gain nothing.
  if ((!with_payload && ctrl_len <= tcp::kPrefetchBytes) || ctrl_len > kPlanCtrlBytes || p > kPlanPayloadBytes) return;
  const uint64_t frame = ctrl_len + p;
  size_t k = 0;
  while (k < c.run_left && c.plan.size() + k < kPlanFrames && (c.plan.size() + k + 1) * frame <= kPlanAheadBytes) ++k;
  if (k == 0) return;
  // One buffer for the headers, messages and padding of all k.
  auto ctrl = RxAllocate(k * ctrl_len);
  if (!ctrl.ok()) return;  // read what has buffers; the rest comes the ordinary way
  const size_t block = pool->options().max_class_bytes;
  for (size_t i = 0; i < k; ++i) {
    PlannedFrame f;
    f.type = h.type;
    f.ctrl = ctrl->Slice(i * ctrl_len, ctrl_len);
    f.ctrl_len = ctrl_len;
    f.msg_len = h.length;
    f.payload_len = p;
    for (uint64_t off = 0; off < p;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(block, p - off));
      auto b = RxAllocate(n);
      if (!b.ok()) return;
      f.payload_iov.push_back({b->data(), b->size()});
      f.payload_hold.Append(std::move(*b));
      off += n;
    }
    c.plan.push_back(std::move(f));
    --c.run_left;
  }
}

bool Core::OnReadable(Conn& c) {
  bool any = false;
  for (int round = 0; round < kReadBudget && !c.closed(); ++round) {
    if (!c.admitted && !c.inbox.empty()) {
      HoldForAdmission(c);  // one message at a time until admitted
      return any;
    }
    iovec iov[kMaxIov];
    int n = 0;
    bool covered = true;  // the iovecs cover the whole rest of the current frame (and of the planned ones)
    // The last read ended inside a planned frame's header, message or padding:
    // the current frame's bytes come from plan.front().ctrl.
    const bool in_plan_ctrl = !c.plan.empty() && c.plan.front().ctrl_got > 0;
    const bool body = c.in_body && !in_plan_ctrl;
    if (body) {
      if (c.pad_left > 0) iov[n++] = {scratch.data(), c.pad_left};
      if (c.sink == Sink::kDrain) {
        const size_t d = static_cast<size_t>(std::min<uint64_t>(c.body_left, scratch.size()));
        if (d > 0) iov[n++] = {scratch.data(), d};
        covered = d == c.body_left;
      } else if (c.body_left > 0) {
        if (c.sink == Sink::kPayload && !c.admitted) {
          HoldForAdmission(c);  // no payload until admitted
          return any;
        }
        if (c.sink == Sink::kPayload && c.body_pos == c.body_iov.size() && !MorePayloadBlocks(c)) {
          PauseForMemory(c, ResourceExhaustedError("no pool block for the payload"));
          return any;
        }
        if (c.sink == Sink::kMessage && c.body_iov.empty()) {
          auto buf = RxAllocate(c.body_left);
          if (!buf.ok()) {
            PauseForMemory(c, buf.status());
            return any;
          }
          c.body_iov.push_back({buf->data(), buf->size()});
          c.body_hold = mempool::IoBuf(std::move(*buf));
        }
        size_t want = 0;
        for (size_t i = c.body_pos; i < c.body_iov.size() && n < kMaxIov - 1; ++i) {
          iov[n++] = c.body_iov[i];
          want += c.body_iov[i].iov_len;
        }
        // A MESSAGE_PAYLOAD's message is never read together with what follows it.
        covered = want == c.body_left && c.payload_pending == 0;
      }
    }
    // Announced frames behind the current one: each one's header, message and
    // padding, then its payload, whole frames only (a prefetch behind them
    // starts at a header).
    size_t planned = 0;
    // Only where the stream is at a frame's end: behind the current body,
    // between frames (no header begun), or inside plan.front().
    if (covered && (body || c.hdr_got == 0 || in_plan_ctrl) && c.phase == Phase::kOpen) {
      ExtendPlan(c);
      for (const PlannedFrame& f : c.plan) {
        // A frame whose message has arrived (the last read ended in its
        // padding) gave its payload blocks to the connection (StartPayload):
        // its payload is read into them there.
        const std::span<const iovec> payload =
            f.adopted ? std::span<const iovec>(c.body_iov).subspan(c.body_pos) : std::span<const iovec>(f.payload_iov);
        if (n + 1 + static_cast<int>(payload.size()) > kMaxIov - 1) break;
        iov[n++] = {f.ctrl.data() + f.ctrl_got, f.ctrl_len - f.ctrl_got};
        for (const iovec& v : payload) iov[n++] = v;
        ++planned;
      }
      covered = planned == c.plan.size();
    }
    mempool::Buffer pf;
    if (covered && spare_prefetch) {
      pf = std::move(spare_prefetch);
    } else if (covered) {
      auto b = RxAllocate(tcp::kPrefetchBytes);
      if (b.ok()) {
        pf = std::move(*b);
      } else if (n == 0) {
        PauseForMemory(c, b.status());
        return any;
      } else {
        covered = false;  // read the body's own target now, the rest once memory is back
      }
    }
    if (covered) {
      // The padding guarantee (kHeaderBytes + kPayloadPad >= kPrefetchBytes)
      // holds for a prefetch that starts at the start of a header. When the
      // last prefetch ended inside a header (hdr_got bytes of it are in
      // hdr_buf), this one starts hdr_got bytes later, so it must also end
      // hdr_got bytes earlier: else a WRITE / READ_RESP header split there
      // would let it run hdr_got bytes past the padding into the payload.
      // Behind planned frames it starts at a header.
      const size_t pf_len = tcp::kPrefetchBytes - (c.in_body || planned > 0 ? 0 : c.hdr_got);
      iov[n++] = {pf.data(), pf_len};
    }
    size_t asked = 0;
    for (int i = 0; i < n; ++i) asked += iov[i].iov_len;
    ssize_t r = ReadSocket(c, iov, n);
    if (r < 0) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) {
        KeepPrefetch(std::move(pf));  // nothing landed in it
        if (err == EINTR) continue;
        return any;
      }
      Status s = IoError(c, err, "receive from");
      SPDLOG_INFO("hrpc tcp: connection {} failed: {}", c.peer, s.ToString());
      Fail(c, std::move(s));
      return any;
    }
    if (r == 0) {
      if (c.in_body || c.hdr_got > 0 || in_plan_ctrl) {
        const uint64_t got_body = c.body_total - c.body_left;
        const std::string reason =
            c.in_body ? "truncated frame: peer closed after " + std::to_string(got_body) + " of " +
                            std::to_string(c.body_total) + " body bytes"
                      : "truncated frame: peer closed after " + std::to_string(c.hdr_got) + " of " +
                            std::to_string(kHeaderBytes) + " header bytes";
        SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c.peer, reason);
        Fail(c, UnavailableError("connection " + c.peer + " lost: " + reason));
      } else {
        SPDLOG_INFO("hrpc tcp: peer {} closed the connection", c.peer);
        c.peer_closed = true;
        Fail(c, UnavailableError("peer " + c.peer + " closed the connection"));
      }
      return true;
    }
    any = true;
    c.rx_since_tick = true;
    c.read_since_pause = true;
    size_t got = static_cast<size_t>(r);
    if (body && !TakeBody(c, got)) return true;
    for (size_t i = 0; i < planned && got > 0; ++i) {
      PlannedFrame& f = c.plan.front();
      const size_t k = std::min(got, f.ctrl_len - f.ctrl_got);
      const mempool::Buffer ctrl = f.ctrl;  // Fail() may drop the plan while it is parsed
      c.plan_ctrl = true;
      ConsumePrefetch(c, ctrl, f.ctrl_got, k);
      c.plan_ctrl = false;
      if (c.closed()) return true;
      f.ctrl_got += k;
      got -= k;
      if (f.ctrl_got < f.ctrl_len) break;  // the read ended inside it (got is 0)
      if (f.payload_len > 0 ? !f.adopted : c.in_body) {  // cannot happen: OnHeader checked the frame
        ProtocolError(c, "a planned frame did not end where it was planned to");
        return true;
      }
      c.plan.pop_front();
      if (!TakeBody(c, got)) return true;
    }
    if (got > 0) {
      ConsumePrefetch(c, pf, 0, got);
      if (c.closed()) return true;
    } else {
      KeepPrefetch(std::move(pf));
    }
    if (static_cast<size_t>(r) < asked) return true;  // socket drained
  }
  return any;
}

void Core::GrantCredits(Conn& c, uint32_t n) {
  if (Status s = c.credits.Grant(n); !s.ok()) {
    ProtocolError(c, std::string(s.message()));
    return;
  }
  c.credits.Pump([&](SendWaiter& w) {
    QueueMessage(c, std::move(w.msg), std::move(w.payload));
    return Status::Ok();  // a failure reaches the sender through the connection's status
  });
}

void Core::OnHeader(Conn& c, const FrameHeader& h) {
  if (h.magic != tcp::kFrameMagic) {
    ProtocolError(c, "bad frame magic " + internal::ExposureTable::Hex(h.magic) + " (garbage on the stream?)");
    return;
  }
  const uint8_t type = static_cast<uint8_t>(h.type);
  if (type == 0 || type > tcp::kMaxFrameType) {
    ProtocolError(c, "unknown frame type " + std::to_string(type));
    return;
  }
  if (c.plan_ctrl) {
    // A frame its predecessor announced, read into buffers planned for it.
    const PlannedFrame& f = c.plan.front();
    if (h.type != f.type || h.length != f.msg_len || h.addr != f.payload_len || h.key < c.plan.size() - 1) {
      ProtocolError(c, "frame (type " + std::to_string(type) + ", " + std::to_string(h.length) + " + " +
                           std::to_string(h.addr) + " bytes, " + std::to_string(h.key) +
                           " more announced) is not the one its predecessor announced (type " +
                           std::to_string(static_cast<int>(f.type)) + ", " + std::to_string(f.msg_len) + " + " +
                           std::to_string(f.payload_len) + " bytes, " + std::to_string(c.plan.size() - 1) +
                           " more planned)");
      return;
    }
    c.run_left = static_cast<uint32_t>(h.key - (c.plan.size() - 1));
  } else {
    c.run_left = h.type == FrameType::kMessagePayload || h.type == FrameType::kMessage ? h.key : 0;
  }
  c.cur = h;
  c.body_total = c.body_left = h.length;
  c.body_iov.clear();
  c.body_pos = 0;
  c.body_expo = UINT32_MAX;
  c.pad_left = 0;
  c.payload_pending = 0;
  auto small = [&](Sink s) {
    c.small_body.assign(h.length, '\0');
    c.sink = s;
    c.body_iov.push_back({c.small_body.data(), c.small_body.size()});
  };
  if (c.phase != Phase::kOpen) {
    const bool ok = c.server ? h.type == FrameType::kHello
                             : (h.type == FrameType::kHelloAck || h.type == FrameType::kError);
    if (!ok) {
      ProtocolError(c, "handshake: unexpected frame type " + std::to_string(type));
      return;
    }
  } else if (h.credits > 0) {
    GrantCredits(c, h.credits);
    if (c.closed()) return;
  }
  switch (h.type) {
    case FrameType::kHello:
    case FrameType::kHelloAck:
      if (c.phase == Phase::kOpen) {
        ProtocolError(c, "HELLO after the handshake");
        return;
      }
      if (h.length != sizeof(tcp::Hello)) {
        ProtocolError(c, "handshake: HELLO of " + std::to_string(h.length) + " bytes (want " +
                             std::to_string(sizeof(tcp::Hello)) + ")");
        return;
      }
      small(Sink::kHello);
      break;
    case FrameType::kMessage:
    case FrameType::kMessagePayload: {
      if (h.type == FrameType::kMessagePayload) {
        if (h.addr == 0 || h.addr > c.limits.max_payload_bytes) {
          ProtocolError(c, "message payload of " + std::to_string(h.addr) + " bytes (this connection takes 1 to " +
                               std::to_string(c.limits.max_payload_bytes) + ")");
          return;
        }
        c.payload_pending = h.addr;
      } else if (h.addr != 0) {
        ProtocolError(c, "MESSAGE frame with a payload length");
        return;
      }
      if (h.length > c.limits.max_message_bytes) {
        ProtocolError(c, "message of " + std::to_string(h.length) + " bytes exceeds the limit of " +
                             std::to_string(c.limits.max_message_bytes));
        return;
      }
      if (h.type == FrameType::kMessagePayload && c.first_payload_refused) {
        // The exchange starts with a message of the peer's that carries no
        // payload: this peer skipped authentication. Its payload is read into
        // the scratch buffer and dropped, its message delivered alone, for
        // the authenticator to refuse in its own terms.
        SPDLOG_DEBUG("hrpc tcp: {} sent a payload of {} bytes before authenticating: dropped", c.peer, h.addr);
        c.drop_payload = true;
      }
      if (c.checked && !c.rx_seq.Accept(h.op_id)) {
        // A copy of a message already delivered: it used no receive slot.
        if (h.type == FrameType::kMessagePayload) {
          ProtocolError(c, "MESSAGE_PAYLOAD with an old sequence number " + std::to_string(h.op_id));
          return;
        }
        ctr().duplicates_discarded.Add();
        c.sink = Sink::kDrain;
        break;
      }
      if (c.unreturned >= c.limits.recv_depth) {
        ProtocolError(c, "message without a credit (" + std::to_string(c.unreturned) + " receive slots in use)");
        return;
      }
      if (h.length == 0 && c.payload_pending == 0) {
        if (c.checked && h.aux != 0) {
          ctr().corrupt_messages.Add();
          ProtocolError(c, "empty message with CRC32C " + internal::ExposureTable::Hex(h.aux));
          return;
        }
        Deliver(c, mempool::IoBuf());
        return;
      }
      // The body lands in prefetch slices and/or a buffer allocated for the
      // rest when the socket is read next (OnReadable).
      c.sink = Sink::kMessage;
      c.msg = mempool::IoBuf();
      break;
    }
    case FrameType::kWrite: {
      if (TooManyAnswersQueued(c)) return;
      c.pad_left = tcp::kPayloadPad;
      auto hit = c.expo.Check(h.addr, h.length, h.key, Access::kWrite);
      if (!hit.ok()) {
        SPDLOG_DEBUG("hrpc tcp: refused WRITE from {}: {}", c.peer, hit.status().ToString());
        ctr().refused_here.Add();
        c.refusal = hit.status();
        c.sink = Sink::kDrain;
      } else {
        ctr().writes_served.Add();
        c.expo.Begin(hit->index);
        c.body_expo = hit->index;
        c.sink = Sink::kWrite;
        if (h.length > 0) c.body_iov.push_back({hit->ptr, h.length});
        c.body_hold = mempool::IoBuf(std::move(hit->hold));
      }
      break;
    }
    case FrameType::kReadReq: {
      if (h.length != 0) {
        ProtocolError(c, "READ request with a body");
        return;
      }
      if (TooManyAnswersQueued(c)) return;
      auto hit = c.expo.Check(h.addr, h.aux, h.key, Access::kRead);
      if (!hit.ok()) {
        SPDLOG_DEBUG("hrpc tcp: refused READ from {}: {}", c.peer, hit.status().ToString());
        ctr().refused_here.Add();
        QueueError(c, h.op_id, hit.status());
        return;
      }
      ctr().reads_served.Add();
      c.expo.Begin(hit->index);
      FrameHeader r;
      r.type = FrameType::kReadResp;
      r.op_id = h.op_id;
      Queue(c, r, mempool::IoBuf(std::move(hit->hold)), hit->index);
      return;
    }
    case FrameType::kReadResp: {
      Op* op = c.ops.Find(h.op_id);
      if (op == nullptr || !op->is_read || op->len != h.length) {
        ProtocolError(c, "READ response for unknown op " + std::to_string(h.op_id) + " or of the wrong length");
        return;
      }
      c.sink = Sink::kReadResp;
      c.pad_left = tcp::kPayloadPad;
      c.body_iov = op->buf.Iovecs();
      c.body_hold = op->buf.Share();
      break;
    }
    case FrameType::kWriteAck: {
      if (h.length != 0) {
        ProtocolError(c, "WRITE ack with a body");
        return;
      }
      Op* op = c.ops.Find(h.op_id);
      if (op == nullptr || op->is_read) {
        ProtocolError(c, "WRITE ack for unknown op " + std::to_string(h.op_id));
        return;
      }
      CompleteOp(c, h.op_id, Status::Ok());
      return;
    }
    case FrameType::kError:
      if (h.length > tcp::kMaxErrorText) {
        ProtocolError(c, "ERROR frame with " + std::to_string(h.length) + " bytes of text");
        return;
      }
      if (h.aux == 0 || h.aux >= static_cast<uint32_t>(kStatusCodeCount)) {
        ProtocolError(c, "ERROR frame with status code " + std::to_string(h.aux));
        return;
      }
      if (h.op_id != 0 && c.ops.Find(h.op_id) == nullptr) {
        ProtocolError(c, "ERROR frame for unknown op " + std::to_string(h.op_id));
        return;
      }
      small(Sink::kErrorText);
      break;
    case FrameType::kCredit:
    case FrameType::kPing:
      if (h.length != 0) {
        ProtocolError(c, "CREDIT/PING frame with a body");
        return;
      }
      return;
  }
  if (c.body_left == 0 && c.pad_left == 0) {
    OnBodyDone(c);
  } else {
    c.in_body = true;
  }
}

void Core::OnBodyDone(Conn& c) {
  const FrameHeader& h = c.cur;
  switch (c.sink) {
    case Sink::kMessage: {
      mempool::IoBuf m = std::move(c.msg);  // leaves c.msg empty
      m.Append(std::move(c.body_hold));     // and c.body_hold
      c.body_iov.clear();
      if (c.checked) {
        if (Status ok = internal::CheckMessage(m, m.size(), h.aux, c.peer); !ok.ok()) {
          ctr().corrupt_messages.Add();
          SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c.peer, ok.message());
          Fail(c, std::move(ok));
          return;
        }
      }
      if (c.payload_pending > 0) {
        c.msg_before_payload = std::move(m);
        StartPayload(c);
        break;
      }
      Deliver(c, std::move(m));
      break;
    }
    case Sink::kPayload: {
      mempool::IoBuf m = std::move(c.msg_before_payload);
      m.Append(std::move(c.body_hold));
      c.body_iov.clear();
      Deliver(c, std::move(m), h.addr);
      break;
    }
    case Sink::kWrite: {
      c.body_hold = mempool::IoBuf();
      c.expo.End(c.body_expo);
      c.body_expo = UINT32_MAX;
      FrameHeader a;
      a.type = FrameType::kWriteAck;
      a.op_id = h.op_id;
      Queue(c, a);
      break;
    }
    case Sink::kDrain:
      if (c.drop_payload) {
        c.drop_payload = false;
        Deliver(c, std::move(c.msg_before_payload));
        break;
      }
      if (h.type != FrameType::kWrite) break;  // a duplicate message, discarded
      QueueError(c, h.op_id, c.refusal);
      c.refusal = Status::Ok();
      break;
    case Sink::kReadResp:
      c.body_hold = mempool::IoBuf();
      CompleteOp(c, h.op_id, Status::Ok());
      break;
    case Sink::kHello: {
      tcp::Hello hello;
      std::memcpy(&hello, c.small_body.data(), sizeof hello);
      OnHello(c, hello);
      break;
    }
    case Sink::kErrorText: {
      Status s(static_cast<StatusCode>(h.aux), c.small_body);
      if (h.op_id == 0) {
        SPDLOG_WARN("hrpc tcp: peer {} closed the connection with an error: {}", c.peer, s.ToString());
        if (c.phase == Phase::kOpen) {
          // Whatever the peer's reason, this side's calls lost their connection.
          Fail(c, UnavailableError("peer " + c.peer + " closed the connection: " + s.ToString()));
        } else {
          Fail(c, s.WithContext("peer " + c.peer + " refused the connection"));
        }
      } else {
        CompleteOp(c, h.op_id, s.WithContext("refused by " + c.peer));
      }
      break;
    }
  }
}

// The payload of a MESSAGE_PAYLOAD whose message has arrived: pool blocks (4
// KiB-aligned from 4 KiB up) that the socket is read into, after the padding.
// Blocks are added as the bytes come (MorePayloadBlocks), at most
// kPayloadAheadBytes ahead of them; a connection not admitted yet gets none
// (OnReadable holds it first).
bool Core::StartPayload(Conn& c) {
  const uint64_t n = c.payload_pending;
  c.payload_pending = 0;
  c.sink = Sink::kPayload;
  c.body_iov.clear();
  c.body_hold = mempool::IoBuf();
  c.body_pos = 0;
  c.body_total = c.body_left = n;
  c.pad_left = tcp::kPayloadPad;
  c.in_body = true;
  if (c.drop_payload) {
    c.sink = Sink::kDrain;
    return true;
  }
  if (c.plan_ctrl) {  // its blocks were given when it was planned
    PlannedFrame& f = c.plan.front();
    c.body_iov = std::move(f.payload_iov);
    c.body_hold = std::move(f.payload_hold);
    f.adopted = true;
    return true;
  }
  return !c.admitted || MorePayloadBlocks(c);
}

bool Core::MorePayloadBlocks(Conn& c) {
  uint64_t mapped = 0;
  for (size_t i = c.body_pos; i < c.body_iov.size(); ++i) mapped += c.body_iov[i].iov_len;
  const size_t block = pool->options().max_class_bytes;
  const uint64_t received = c.body_total - c.body_left;
  uint64_t off = received + mapped;  // payload offset of the next block
  while (off < c.body_total && mapped < kPayloadAheadBytes) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(block, c.body_total - off));
    auto b = RxAllocate(k);
    if (!b.ok()) break;  // read into what is mapped; the caller waits for memory when nothing is
    c.body_iov.push_back({b->data(), b->size()});
    c.body_hold.Append(std::move(*b));
    off += k;
    mapped += k;
  }
  return mapped > 0 || off >= c.body_total;  // false: the pool gave nothing to read into
}

void Core::OnHello(Conn& c, const tcp::Hello& hello) {
  Status bad;
  if (hello.magic != tcp::kHelloMagic) {
    bad = DataLossError("not an hrpc tcp peer (bad hello magic " + internal::ExposureTable::Hex(hello.magic) + ")");
  } else if (hello.version != tcp::kProtocolVersion) {
    bad = FailedPreconditionError("protocol version " + std::to_string(hello.version) +
                                  " not supported (this side speaks " + std::to_string(tcp::kProtocolVersion) + ")");
  } else if (hello.max_message_bytes == 0 || hello.recv_depth == 0 || hello.recv_depth > tcp::kMaxRecvDepth ||
             hello.dead_peer_ms == 0) {
    bad = InvalidArgumentError("bad limits in hello: max_message_bytes=" + std::to_string(hello.max_message_bytes) +
                               " recv_depth=" + std::to_string(hello.recv_depth) +
                               " dead_peer_ms=" + std::to_string(hello.dead_peer_ms));
  }
  if (!bad.ok()) {
    SPDLOG_WARN("hrpc tcp: handshake with {} failed: {}", c.peer, bad.ToString());
    if (c.server) {
      QueueError(c, 0, bad, /*close_after=*/true);
      Flush(c);  // closes once the error frame is out
    } else {
      Fail(c, bad.WithContext("handshake with " + c.peer));
    }
    return;
  }
  c.limits.max_message_bytes = std::min(opt.common.max_message_bytes, hello.max_message_bytes);
  c.limits.recv_depth = std::min(opt.common.recv_depth, hello.recv_depth);
  c.checked = (hello.flags & tcp::kHelloChecked) != 0;
  // In whole pages, as both hellos offer it: both sides agree on the limit
  // (none unless both offered payloads).
  const uint64_t our_pages = std::min<uint64_t>(opt.max_payload_bytes / 4096, UINT32_MAX);
  c.limits.max_payload_bytes = (hello.flags & tcp::kHelloPayloads) != 0 && our_pages > 0
                                   ? std::min<uint64_t>(our_pages, hello.max_payload_pages) * 4096
                                   : 0;
  c.credits.Open(c.limits.recv_depth);
  // Ping often enough for the peer's dead-peer timeout too.
  c.keepalive = std::min(opt.common.keepalive_interval, std::chrono::milliseconds(hello.dead_peer_ms / 3 + 1));
  if (c.keepalive < min_keepalive) {
    min_keepalive = c.keepalive;
    if (min_keepalive < tick_period && !stopped) {  // the next check would come too late
      sched->CancelTimer(timer);
      ArmTimer();
    }
  }
  if (c.server) {
    FrameHeader a;
    a.type = FrameType::kHelloAck;
    const tcp::Hello ours = OurHello();
    auto body = HelloBody(*pool, ours);
    if (!body.ok()) {
      Fail(c, body.status());
      return;
    }
    Queue(c, a, std::move(*body));
    c.phase = Phase::kOpen;
    ctr().accepted.Add();
    auto ls = c.listener.lock();
    if (!ls || ls->accepts.closed()) {
      Fail(c, CancelledError("listener closed"));
      return;
    }
    ls->accepts.Push(c.shared_from_this());
  } else {
    c.phase = Phase::kOpen;
    ctr().connected.Add();
    if (c.connect_waiter != nullptr) std::exchange(c.connect_waiter, nullptr)->Finish(Status::Ok());
  }
}

void Core::Deliver(Conn& c, mempool::IoBuf&& msg, uint64_t payload_bytes) {
  ctr().messages_received.Add();
  ctr().message_bytes_received.Add(msg.size() - payload_bytes);
  if (payload_bytes > 0) ctr().payload_bytes_received.Add(payload_bytes);
  ++c.unreturned;
  c.first_payload_refused = false;
  if (c.inbox.Put(std::move(msg))) ReturnCredit(c);
}

void Core::ReturnCredit(Conn& c) {
  --c.unreturned;
  ++c.credits_to_return;
  MaybeSendCredits(c);
}

// Credits go back in batches of recv_depth / 4, riding on outgoing frames or
// in a CREDIT frame. When this side's own messages wait for credits, nothing
// else would carry them: they go at once, or both sides could wait for each
// other forever (each holding fewer than a batch).
void Core::MaybeSendCredits(Conn& c) {
  if (c.credits_to_return == 0) return;
  const uint32_t threshold = std::max<uint32_t>(1, c.limits.recv_depth / 4);
  if ((c.credits_to_return >= threshold || c.credits.has_waiters()) && (c.outq.empty() || c.outq.back().encoded)) {
    FrameHeader h;
    h.type = FrameType::kCredit;
    Queue(c, h);
  }
}

void Core::CompleteOp(Conn& c, uint64_t id, Status s) { c.ops.Complete(id, std::move(s)); }

// ------------------------------------------------------------------ connect / accept

void Core::FinishConnect(Conn& c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err != 0) {
    Fail(c, ErrnoStatus(err, "connect to " + c.peer));
    return;
  }
  if (c.tls) {
    c.phase = Phase::kTls;
    DriveTls(c);
    return;
  }
  SendHello(c);
}

void Core::SendHello(Conn& c) {
  c.phase = Phase::kHandshake;
  FrameHeader h;
  h.type = FrameType::kHello;
  const tcp::Hello ours = OurHello();
  auto body = HelloBody(*pool, ours);
  if (!body.ok()) {
    Fail(c, body.status());
    return;
  }
  Queue(c, h, std::move(*body));
  Flush(c);
}

void Core::OnAccept(ListenerState& ls) {
  for (int i = 0; i < kAcceptBudget && !ls.accepts.closed(); ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = accept4(ls.fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        SPDLOG_WARN("hrpc tcp: accept on {} failed: {}", ls.uri, strerror(errno));
      }
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ApplyCongestionControl(fd, ss, opt, cc_warned);
    auto c = NewConn(fd, /*server=*/true, SockName(ss));
    c->phase = Phase::kHandshake;
    for (auto& [tok, l] : listeners) {
      if (l.get() == &ls) c->listener = l;
    }
    c->admitted = !ls.hold_until_admitted;
    c->first_payload_refused = ls.hold_until_admitted && ls.client_speaks_first;
    if (ls.tls) {
      auto tls = tcp::TlsStream::Create(*ls.tls, fd, /*server=*/true, {}, c->peer);
      if (!tls.ok()) {
        Fail(*c, tls.status());
        continue;
      }
      c->tls = std::move(*tls);
      c->phase = Phase::kTls;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = c->token;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
      Fail(*c, ErrnoStatus(errno, "epoll_ctl"));
    }
  }
}

// The TLS handshake, before HELLO; driven by the socket's events.
void Core::DriveTls(Conn& c) {
  auto step = c.tls->Handshake();
  if (!step.ok()) {
    SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c.peer, step.status().ToString());
    Fail(c, step.status());
    return;
  }
  if (*step != tcp::TlsStream::Step::kDone) {
    SetEpollOut(c, *step == tcp::TlsStream::Step::kWantWrite);
    return;
  }
  SetEpollOut(c, false);
  if (c.server) {
    c.phase = Phase::kHandshake;
    NoteTlsBuffered(c);
  } else {
    SPDLOG_INFO("hrpc tcp: {} with {}", c.tls->Describe(), c.peer);
    SendHello(c);
  }
}

int Core::ServeTlsBuffered() {
  int served = 0;
  for (auto& c : std::exchange(tls_buffered, {})) {
    if (c->closed() || c->rx_paused) continue;  // a paused one is read again by ResumeReading
    ++served;
    OnReadable(*c);
    NoteTlsBuffered(*c);
    if (!c->closed() && !c->outq.empty()) MarkDirty(*c);
  }
  return served;
}

// ------------------------------------------------------------------ poll / timers

int Core::Poll() {
  if (stopped) return 0;
  // Frames queued by the coroutines that just ran go out before we look for
  // input: one syscall earlier on the latency path.
  int flushed = FlushDirty();
  if (!tls_buffered.empty()) [[unlikely]] flushed += ServeTlsBuffered();
  // Busy connection fast path: try the connection that last had input with a
  // plain readv before asking epoll (saves the epoll_wait on a ping-pong).
  // Level-triggered epoll keeps everyone else's events; it is consulted at
  // least every kHotSkips polls.
  if (auto h = hot.lock(); h && h->phase == Phase::kOpen && !h->rx_paused && hot_skips < kHotSkips) {
    if (OnReadable(*h)) {
      ++hot_skips;
      NoteTlsBuffered(*h);
      if (!h->closed() && !h->outq.empty()) MarkDirty(*h);
      return 1 + flushed + FlushDirty();
    }
  }
  hot_skips = 0;
  epoll_event evs[64];
  const int n = epoll_wait(epfd, evs, 64, 0);
  for (int i = 0; i < n; ++i) {
    const uint64_t token = evs[i].data.u64;
    if (token & kListenerBit) {
      auto it = listeners.find(token);
      if (it != listeners.end()) {
        auto ls = it->second;
        OnAccept(*ls);
      }
      continue;
    }
    auto it = conns.find(token);
    if (it == conns.end()) continue;
    std::shared_ptr<Conn> c = it->second;
    const uint32_t e = evs[i].events;
    if (c->phase == Phase::kConnecting) {
      if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) FinishConnect(*c);
      if (c->closed() || c->phase == Phase::kTls) continue;
      SetEpollOut(*c, !c->outq.empty());
      continue;
    }
    if (c->phase == Phase::kTls) {
      DriveTls(*c);
      continue;
    }
    if (e & EPOLLOUT) Flush(*c);
    if ((e & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !c->rx_paused && OnReadable(*c) && !c->closed()) hot = c;
    if (c->tls) NoteTlsBuffered(*c);
    if (!c->closed() && !c->outq.empty()) MarkDirty(*c);
  }
  return (n > 0 ? n : 0) + flushed + FlushDirty();
}

int Core::FlushDirty() {
  int flushed = 0;
  while (!dirty.empty()) {
    flushing.swap(dirty);  // both keep their capacity: no allocation per round
    for (auto& c : flushing) {
      c->dirty = false;
      if (!c->closed() && !c->outq.empty()) {
        Flush(*c);
        ++flushed;
      }
    }
    flushing.clear();
  }
  return flushed;
}

void Core::Tick() {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Conn>> all;
  all.reserve(conns.size());
  for (auto& [t, c] : conns) all.push_back(c);
  for (auto& c : all) {
    if (c->closed()) continue;
    if (std::exchange(c->rx_since_tick, false)) c->last_rx = now;
    if (std::exchange(c->tx_since_tick, false)) c->last_tx = now;
    if (c->phase != Phase::kOpen) {
      if (now > c->handshake_deadline) {
        const std::string reason = "handshake not completed within " +
                                   std::to_string(Ms(c->server ? opt.common.handshake_timeout
                                                               : opt.common.connect_timeout)) + " ms";
        SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c->peer, reason);
        Fail(*c, DeadlineExceededError("connection " + c->peer + ": " + reason));
      }
      continue;
    }
    if (!c->rx_paused && now - c->last_rx > opt.common.dead_peer_timeout) {
      const std::string reason = "nothing received for " + std::to_string(Ms(now - c->last_rx)) +
                                 " ms (dead-peer timeout " + std::to_string(opt.common.dead_peer_timeout.count()) +
                                 " ms)";
      SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c->peer, reason);
      Fail(*c, UnavailableError("peer " + c->peer + " is dead: " + reason));
      continue;
    }
    if (!c->outq.empty() && now - c->last_tx > opt.common.dead_peer_timeout) {
      // Frames wait and the socket took nothing: a peer that is alive (it
      // sends) but does not read. Answers to its READs would wait for it
      // forever, and so would a Revoke of the memory they read.
      const std::string reason = "nothing could be sent for " + std::to_string(Ms(now - c->last_tx)) +
                                 " ms with frames waiting (the peer does not read; dead-peer timeout " +
                                 std::to_string(opt.common.dead_peer_timeout.count()) + " ms)";
      SPDLOG_WARN("hrpc tcp: closing connection {}: {}", c->peer, reason);
      Fail(*c, UnavailableError("peer " + c->peer + " is not reading: " + reason));
      continue;
    }
    if (now - c->last_tx >= c->keepalive && c->outq.empty()) {
      FrameHeader h;
      h.type = FrameType::kPing;
      Queue(*c, h);
      Flush(*c);
      // Sent now, not at the next tick: stamped here, or an idle connection
      // would ping only every other tick.
      c->last_tx = now;
      c->tx_since_tick = false;
    }
  }
}

void Core::ArmTimer() {
  using std::chrono::milliseconds;
  // The pace the connections alive now ask for (their hellos set it): one
  // whose peer wanted frequent pings and that has gone no longer sets it.
  min_keepalive = milliseconds::max();
  for (auto& [t, c] : conns) {
    if (!c->closed()) min_keepalive = std::min(min_keepalive, c->keepalive);
  }
  milliseconds tick = std::min({opt.common.keepalive_interval, min_keepalive, opt.common.dead_peer_timeout / 4,
                                opt.common.handshake_timeout / 4, opt.common.connect_timeout / 4});
  tick = std::max(tick, milliseconds(5));
  tick_period = tick;
  std::weak_ptr<Core> weak = weak_from_this();
  timer = sched->AddTimer(Clock::now() + tick, [weak] {
    auto core = weak.lock();
    if (!core || core->stopped) return;
    core->Tick();
    if (!core->stopped) core->ArmTimer();
  });
}

void Core::Shutdown() {
  if (stopped) return;
  spare_prefetch = mempool::Buffer();  // back to the pool, which may go before this Core
  std::vector<std::shared_ptr<Conn>> all;
  for (auto& [t, c] : conns) all.push_back(c);
  for (auto& c : all) Fail(*c, CancelledError("transport destroyed"));
  std::vector<std::shared_ptr<ListenerState>> ls;
  for (auto& [t, l] : listeners) ls.push_back(l);
  for (auto& l : ls) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, l->fd, nullptr);
    close(l->fd);
    l->accepts.Close(CancelledError("transport destroyed"));  // the queued ones failed above
  }
  listeners.clear();
  stopped = true;
  // No Poll() will flush or serve these any more, and each holds its Conn,
  // which holds this Core: a cycle that would keep both (and what the Conn
  // still holds of the pool) for good.
  dirty.clear();
  flushing.clear();
  tls_buffered.clear();
  hot.reset();
  sched->CancelTimer(timer);
  sched->RemovePoller(this);
  close(epfd);
  epfd = -1;
  if (own_slot) pool->DetachRegistrar(slot);
}

// ------------------------------------------------------------------ public objects

class TcpConnection final : public Connection {
 public:
  explicit TcpConnection(std::shared_ptr<Conn> c) : c_(std::move(c)) {}
  ~TcpConnection() override { Close(); }

  Status Send(mempool::IoBuf message) override { return SendWithPayload(std::move(message), mempool::IoBuf()); }

  Status SendWithPayload(mempool::IoBuf message, mempool::IoBuf payload) override {
    auto c = c_;
    if (c->closed()) return c->status;
    if (message.size() > c->limits.max_message_bytes) {
      return InvalidArgumentError("Send: message of " + std::to_string(message.size()) +
                                  " bytes exceeds the limit of " + std::to_string(c->limits.max_message_bytes));
    }
    if (payload.size() > c->limits.max_payload_bytes) {
      if (c->limits.max_payload_bytes == 0) return UnimplementedError("the peer takes no in-stream payloads");
      return InvalidArgumentError("SendWithPayload: payload of " + std::to_string(payload.size()) +
                                  " bytes exceeds the limit of " + std::to_string(c->limits.max_payload_bytes));
    }
    Core& core = *c->core;
    if (core.faults.armed()) {
      if (const auto delay = core.faults.Delay(core.ctr()); delay.count() > 0) {
        coro::this_coro::SleepFor(delay);
        if (c->closed()) return c->status;
      }
    }
    if (c->credits.TryTake()) {
      core.QueueMessage(*c, std::move(message), std::move(payload));
    } else {
      core.ctr().credit_stalls.Add();
      SendWaiter w;
      w.msg = std::move(message);
      w.payload = std::move(payload);
      c->credits.Park(w);
      core.MaybeSendCredits(*c);
      core.MarkDirty(*c);
      HRPC_TRY(w.Wait());
    }
    core.MarkDirty(*c);
    return WaitDrained(*c);
  }

  Result<mempool::IoBuf> Recv() override {
    auto c = c_;
    if (!c->inbox.empty()) {
      mempool::IoBuf m = c->inbox.Take();
      if (!c->closed()) {
        c->core->ReturnCredit(*c);
        if (!c->outq.empty()) c->core->MarkDirty(*c);
        if (c->hold_wait && c->inbox.empty()) c->core->ReleaseHold(*c);
      }
      return m;
    }
    if (c->closed()) return c->status;
    return c->inbox.Wait();
  }

  void Admit() override {
    if (c_->admitted) return;
    c_->admitted = true;
    c_->first_payload_refused = false;
    c_->core->ReleaseHold(*c_);
  }

  Result<RemoteDescriptor> Expose(const mempool::Buffer& buf, Access access) override {
    auto c = c_;
    if (c->closed()) return c->status;
    if (!buf) return InvalidArgumentError("Expose: empty buffer");
    auto key = c->core->pool->KeyFor(c->core->slot, buf.data());
    if (!key.ok()) {
      return FailedPreconditionError("Expose: buffer is not from the transport's registered pool (" +
                                     key.status().ToString() + ")");
    }
    return c->expo.Add(buf, access);
  }

  Status Revoke(const RemoteDescriptor& desc) override {
    auto c = c_;
    return c->expo.Revoke(desc);
  }

  Status Read(const RemoteDescriptor& src, const mempool::IoBuf& dst) override {
    if (dst.size() != src.len) {
      return InvalidArgumentError("Read: destination of " + std::to_string(dst.size()) +
                                  " bytes for a descriptor of " + std::to_string(src.len));
    }
    return OneSided(/*is_read=*/true, src, dst);
  }

  Status Write(const mempool::IoBuf& src, const RemoteDescriptor& dst) override {
    if (src.size() != dst.len) {
      return InvalidArgumentError("Write: source of " + std::to_string(src.size()) +
                                  " bytes for a descriptor of " + std::to_string(dst.len));
    }
    return OneSided(/*is_read=*/false, dst, src);
  }

  void Close() override {
    if (c_ && !c_->closed()) c_->core->Fail(*c_, CancelledError("connection closed locally"));
  }
  uint64_t unsent_bytes() const override {
    const TcpConnectionStats st = Stats();
    return st.queued_bytes + st.unacked_bytes;
  }
  TcpConnectionStats Stats() const {
    TcpConnectionStats st;
    if (c_->closed()) return st;
    st.queued_bytes = c_->queued_bytes;
    // What the kernel holds that the peer has not acknowledged: a close with
    // unread input ends in a reset, which drops that too.
    int unacked = 0;
    if (c_->fd >= 0 && ioctl(c_->fd, SIOCOUTQ, &unacked) == 0 && unacked > 0) st.unacked_bytes = unacked;
    return st;
  }
  Status status() const override { return c_->closed() ? c_->status : Status::Ok(); }
  const Limits& limits() const override { return c_->limits; }
  std::string_view peer() const override { return c_->peer; }

 private:
  Status WaitDrained(Conn& c) {
    if (c.closed()) return c.status;
    if (c.queued_bytes <= c.core->opt.send_queue_high_water) return Status::Ok();
    c.core->Flush(c);
    if (c.closed()) return c.status;
    if (c.queued_bytes <= c.core->opt.send_queue_high_water) return Status::Ok();
    c.core->ctr().send_queue_stalls.Add();
    Parked p;
    c.drain_waiters.push_back(&p);
    return p.Wait();
  }

  Status OneSided(bool is_read, const RemoteDescriptor& remote, const mempool::IoBuf& local) {
    auto c = c_;
    if (c->closed()) return c->status;
    if (remote.len == 0) return Status::Ok();
    Core& core = *c->core;
    TransportCounters& ctr = core.ctr();
    ctr.CountOp(is_read, remote.len);
    HRPC_TRY(c->op_slots.Acquire(ctr.op_slot_stalls));
    Op op;
    c->ops.Add(&op);
    op.is_read = is_read;
    op.len = remote.len;
    FrameHeader h;
    h.op_id = op.id;
    h.addr = remote.addr;
    h.key = remote.key;
    if (is_read) {
      op.buf = local.Share();
      h.type = FrameType::kReadReq;
      h.aux = remote.len;
      core.Queue(*c, h);
    } else {
      h.type = FrameType::kWrite;
      core.Queue(*c, h, local.Share());
    }
    core.MarkDirty(*c);
    Status s = WaitDrained(*c);
    Status done = op.parked.Wait();
    c->op_slots.Release();
    (void)s;  // a connection failure also completes the op with that Status
    if (IsRefusal(done.code())) ctr.refused_by_peer.Add();
    return done;
  }

  std::shared_ptr<Conn> c_;
};

class TcpListener final : public Listener {
 public:
  TcpListener(std::shared_ptr<Core> core, std::shared_ptr<ListenerState> ls)
      : core_(std::move(core)), ls_(std::move(ls)) {}
  ~TcpListener() override { Close(); }

  Result<std::unique_ptr<Connection>> Accept() override {
    auto ls = ls_;
    while (true) {
      if (ls->accepts.closed()) return CancelledError("listener " + ls->uri + " closed");
      HRPC_ASSIGN_OR_RETURN(std::shared_ptr<Conn> c, ls->accepts.Pop());
      if (c->closed()) continue;  // died between handshake and Accept()
      return std::unique_ptr<Connection>(new TcpConnection(std::move(c)));
    }
  }

  std::string uri() const override { return ls_->uri; }

  void HoldUntilAdmitted(bool client_speaks_first) override {
    ls_->hold_until_admitted = true;
    ls_->client_speaks_first = client_speaks_first;
  }

  void Close() override {
    if (ls_->accepts.closed()) return;
    if (!core_->stopped) {
      epoll_ctl(core_->epfd, EPOLL_CTL_DEL, ls_->fd, nullptr);
      close(ls_->fd);
      core_->listeners.erase(ls_->token);
    }
    for (auto& c : ls_->accepts.Close(CancelledError("listener closed"))) core_->Fail(*c, CancelledError("listener closed"));
  }

 private:
  std::shared_ptr<Core> core_;
  std::shared_ptr<ListenerState> ls_;
};

// Names go through the process's c-ares resolver: a connecting coroutine
// suspends, its worker keeps running.
Result<std::pair<sockaddr_storage, socklen_t>> Resolve(const Uri& u, Clock::time_point deadline) {
  HRPC_ASSIGN_OR_RETURN(auto addrs, Resolver::Default().Resolve(u.host, u.port, AF_UNSPEC, deadline));
  return std::pair<sockaddr_storage, socklen_t>{addrs.front().addr, addrs.front().len};
}

class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(std::shared_ptr<Core> core) : core_(std::move(core)), counters_(core_->counters) {}
  const std::shared_ptr<TransportCounters>& counters() const noexcept override { return counters_; }
  ~TcpTransport() override { core_->Shutdown(); }

  std::string_view scheme() const override { return "tcp"; }
  TransportCapabilities capabilities() const override { return Capabilities(); }
  static TransportCapabilities Capabilities() {
    TransportCapabilities c;
    c.faults = kFaultDrop | kFaultDuplicate | kFaultTruncate | kFaultCorrupt | kFaultDelay | kFaultRefuseAllocation |
               kFaultDisconnect;
    c.refused_allocation_keeps_connection = true;  // PauseForMemory: the socket is read again once memory is back
    return c;
  }
  Status SetFaults(const FaultOptions& faults) override {
    HRPC_TRY(internal::CheckFaults(faults, Capabilities().faults, "tcp"));
    core_->faults.Set(faults);
    return Status::Ok();
  }

  Result<std::unique_ptr<Listener>> Listen(std::string_view uri) override { return DoListen(uri, nullptr); }
  Result<std::unique_ptr<Connection>> Connect(std::string_view uri) override { return DoConnect(uri, nullptr); }

  Result<std::unique_ptr<Listener>> ListenTls(std::string_view uri, std::shared_ptr<const TlsContext> tls) override {
    if (!tls || tls->options().cert_file.empty()) {
      return InvalidArgumentError("tcp: a TLS listener needs a context with cert_file and key_file");
    }
    return DoListen(uri, std::move(tls));
  }
  Result<std::unique_ptr<Connection>> ConnectTls(std::string_view uri,
                                                 std::shared_ptr<const TlsContext> tls) override {
    if (!tls || tls->options().ca_file.empty()) {
      return InvalidArgumentError("tcp: a TLS connection needs a context with ca_file (to verify the server)");
    }
    return DoConnect(uri, std::move(tls));
  }

 private:
  Result<std::unique_ptr<Listener>> DoListen(std::string_view uri, std::shared_ptr<const TlsContext> tls) {
    HRPC_ASSIGN_OR_RETURN(Uri u, ParseUri(uri));
    if (u.scheme != "tcp") return InvalidArgumentError("tcp transport cannot listen on '" + std::string(uri) + "'");
    HRPC_ASSIGN_OR_RETURN(auto addr, Resolve(u, Clock::now() + core_->opt.common.connect_timeout));
    int fd = socket(addr.first.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return ErrnoStatus(errno, "socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (core_->opt.reuse_port) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr.first), addr.second) < 0 ||
        listen(fd, core_->opt.listen_backlog) < 0) {
      const int err = errno;
      close(fd);
      return ErrnoStatus(err, "listen on " + std::string(uri));
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
    auto ls = std::make_shared<ListenerState>();
    ls->fd = fd;
    ls->token = kListenerBit | core_->next_token++;
    ls->uri = SockName(bound);
    ls->tls = std::move(tls);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ls->token;
    if (epoll_ctl(core_->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
      const int err = errno;
      close(fd);
      return ErrnoStatus(err, "epoll_ctl");
    }
    core_->listeners[ls->token] = ls;
    SPDLOG_INFO("hrpc tcp: listening on {}{}", ls->uri, ls->tls ? " (TLS)" : "");
    return std::unique_ptr<Listener>(new TcpListener(core_, std::move(ls)));
  }

  Result<std::unique_ptr<Connection>> DoConnect(std::string_view uri, std::shared_ptr<const TlsContext> tls) {
    HRPC_ASSIGN_OR_RETURN(Uri u, ParseUri(uri));
    if (u.scheme != "tcp") return InvalidArgumentError("tcp transport cannot connect to '" + std::string(uri) + "'");
    HRPC_ASSIGN_OR_RETURN(auto addr, Resolve(u, Clock::now() + core_->opt.common.connect_timeout));
    int fd = socket(addr.first.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return ErrnoStatus(errno, "socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = core_->NewConn(fd, /*server=*/false, u.ToString());
    if (tls) {
      auto stream = tcp::TlsStream::Create(*tls, fd, /*server=*/false, u.host, c->peer);
      if (!stream.ok()) {
        core_->Fail(*c, stream.status());
        return c->status;
      }
      c->tls = std::move(*stream);
    }
    int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr.first), addr.second);
    if (rc < 0 && errno != EINPROGRESS) {
      const int err = errno;
      core_->Fail(*c, ErrnoStatus(err, "connect to " + c->peer));
      return c->status;
    }
    ApplyCongestionControl(fd, addr.first, core_->opt, core_->cc_warned);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u64 = c->token;
    c->epollout = true;
    if (epoll_ctl(core_->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
      core_->Fail(*c, ErrnoStatus(errno, "epoll_ctl"));
      return c->status;
    }
    Parked p;
    c->connect_waiter = &p;
    Status s = p.WaitUntil(c->handshake_deadline);
    if (s.code() == StatusCode::kDeadlineExceeded && c->connect_waiter == &p) {
      c->connect_waiter = nullptr;
      core_->Fail(*c, DeadlineExceededError("connect to " + c->peer + ": no handshake within " +
                                            std::to_string(core_->opt.common.connect_timeout.count()) + " ms"));
      return c->status;
    }
    if (!s.ok()) return s;
    return std::unique_ptr<Connection>(new TcpConnection(std::move(c)));
  }

  std::shared_ptr<Core> core_;
  std::shared_ptr<TransportCounters> counters_;
};

}  // namespace

std::optional<TcpConnectionStats> TcpStatsOf(const Connection& c) {
  const auto* t = dynamic_cast<const TcpConnection*>(&c);
  if (t == nullptr) return std::nullopt;
  return t->Stats();
}

std::unique_ptr<mempool::Registrar> MakeTcpRegistrar() { return std::make_unique<TcpKeyTable>(); }

Result<std::unique_ptr<Transport>> CreateTcpTransport(coro::Scheduler& scheduler, mempool::Pool& pool,
                                                      TcpOptions options) {
  const TransportOptions& o = options.common;
  if (o.recv_depth == 0 || o.recv_depth > tcp::kMaxRecvDepth) {
    return InvalidArgumentError("tcp: recv_depth must be in [1, 65535]");
  }
  if (o.max_message_bytes == 0) return InvalidArgumentError("tcp: max_message_bytes must be > 0");
  if (o.max_outstanding_ops == 0) return InvalidArgumentError("tcp: max_outstanding_ops must be > 0");
  if (o.keepalive_interval.count() <= 0 || o.dead_peer_timeout <= o.keepalive_interval) {
    return InvalidArgumentError("tcp: need 0 < keepalive_interval < dead_peer_timeout");
  }
  if (o.connect_timeout.count() <= 0 || o.handshake_timeout.count() <= 0) {
    return InvalidArgumentError("tcp: connect/handshake timeouts must be > 0");
  }
  HRPC_TRY(internal::CheckFaults(o.faults, TcpTransport::Capabilities().faults, "tcp"));
  auto core = std::make_shared<Core>();
  core->faults.Set(o.faults);
  core->sched = &scheduler;
  core->pool = &pool;
  core->opt = options;
  if (options.registrar_slot) {
    core->slot = *options.registrar_slot;
  } else {
    core->own_registrar = MakeTcpRegistrar();
    HRPC_ASSIGN_OR_RETURN(core->slot, pool.AttachRegistrar(core->own_registrar.get()));
    core->own_slot = true;
  }
  core->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (core->epfd < 0) {
    const int err = errno;
    if (core->own_slot) pool.DetachRegistrar(core->slot);
    return ErrnoStatus(err, "epoll_create1");
  }
  scheduler.AddPoller(core.get());
  core->ArmTimer();
  return std::unique_ptr<Transport>(new TcpTransport(std::move(core)));
}

}  // namespace hrpc::transport
