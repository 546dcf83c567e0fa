// The RDMA transport: RC QPs over rdmacm, one CQ (+ completion channel) and one
// rdmacm event channel per transport (= per worker), driven by two coro::Pollers.
//
// Wire: a control message is one SEND_WITH_IMM; imm = kind << 24 | credits the
// sender returns. kind kData carries a message (possibly empty); kind kCredit
// carries only credits (zero bytes); kinds kPing and kPong (zero bytes, any
// credits) are the keepalive. Handshake: Hello in the rdmacm private data.
//
// Credits: each side posts recv_depth + kCtrlSlots receive WQEs. A data message
// costs the sender one credit; the receiver returns it once the application has
// taken the message (Recv) AND its receive WQE is posted again, piggybacked on the
// next data message or, once kCreditBatch(recv_depth) = ceil(depth/4) are owed,
// in a credit-only message. A WQE whose buffer went to the application gets a
// fresh buffer at the start of the next poll round (after the woken coroutines
// ran), one whose buffer stayed (empty and credit-only messages) in the same poll.
// Credit-only messages need no credit: each carries >= ceil(depth/4) credits and
// the peer can only have `depth` outstanding, so at most 4 of them are ever
// unprocessed at the peer — kCtrlSlots = 7 receive WQEs cover them (and one PING and one PONG). RNR therefore
// does not happen (rnr_retry stays as a backstop, e.g. for an oversubscribed SRQ);
// when the pool cannot refill a WQE, the refill is retried and its credit waits.
//
// Liveness: one-sided ops are served by the peer's NIC, so only a message from
// the peer's process proves it alive. A connection from which nothing arrived
// for keepalive_interval sends a PING; the peer's poller answers with a PONG.
// Neither needs a credit (they bypass the senders waiting for one, like
// credit-only messages): a side has at most one PING unanswered and answers
// each PING once, so at most one of each is unprocessed at the peer, and two
// more receive WQEs (kLivenessSlots) cover them. A connection from which nothing
// arrived for dead_peer_timeout fails with UNAVAILABLE. All of it runs from one
// timer per transport (armed while connections are open): no polling, no clock
// read per message.
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/transport/rdma.h"
#include "hrpc/transport/resolver.h"
#include "conn_parts.h"
#include "faults.h"
#include "verbs.h"

namespace hrpc::transport {
namespace {

using rdma::CmId;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kHelloMagic = 0x4d445248;  // "HRDM"
constexpr uint16_t kHelloVersion = 1;
constexpr uint32_t kImmKindShift = 24;
constexpr uint32_t kImmCreditMask = (1u << kImmKindShift) - 1;
constexpr uint32_t kKindData = 0;
constexpr uint32_t kKindCredit = 1;
constexpr uint32_t kKindCorrupt = 0x5a;  // sent only by fault injection; the receiver refuses it
constexpr uint32_t kKindPing = 2;
constexpr uint32_t kKindPong = 3;
constexpr uint32_t kCreditDivisor = 4;                 // credit-only msg carries >= ceil(depth/4)
constexpr uint32_t kLivenessSlots = 2;                 // one PING and one PONG from the peer
constexpr uint32_t kCtrlSlots = kCreditDivisor + 1 + kLivenessSlots;  // receive WQEs beyond recv_depth
static_assert(kCtrlSlots > kCreditDivisor, "credit-only messages in flight <= kCreditDivisor");
constexpr uint32_t kMaxRecvDepth = 1u << 16;
constexpr uint32_t kMaxSendSge = 16;  // SGEs of one SEND (PostMessage's array)
static_assert(kMaxRecvDepth <= kImmCreditMask, "returned credits must fit the immediate");

constexpr uint64_t kRecvFlag = 1ull << 63;
constexpr uint64_t kSrqFlag = 1ull << 62;
constexpr uint64_t kDrainFlag = 1ull << 61;
constexpr uint64_t kDrainSqId = kDrainFlag;
constexpr uint64_t kDrainRqId = kRecvFlag | kDrainFlag;
constexpr uint64_t kSlotMask = (1ull << 32) - 1;

constexpr uint32_t CreditBatch(uint32_t depth) { return (depth + kCreditDivisor - 1) / kCreditDivisor; }
static_assert(CreditBatch(1) == 1 && CreditBatch(64) == 16 && 64 / CreditBatch(64) <= kCreditDivisor);

enum HelloKind : uint16_t { kHelloRequest = 0, kHelloAccept = 1, kHelloReject = 2 };
// Fits the 56 bytes of private data an RC connect request carries.
struct Hello {
  uint32_t magic = kHelloMagic;
  uint16_t version = kHelloVersion;
  uint16_t kind = kHelloRequest;
  uint32_t max_message_bytes = 0;
  uint32_t recv_depth = 0;
  char reason[40] = {};
};
static_assert(sizeof(Hello) <= 56);

Status WcStatus(const ibv_wc& wc, std::string_view what) {
  std::string m = std::string(what) + ": " + ibv_wc_status_str(wc.status) + " (vendor_err " +
                  std::to_string(wc.vendor_err) + ")";
  switch (wc.status) {
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_REM_INV_REQ_ERR:
      return PermissionDeniedError(m + ": the target refused the key, range or access (the RC QP is now in error)");
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_LOC_LEN_ERR:
      return InvalidArgumentError(m);
    case IBV_WC_MW_BIND_ERR:
      return InternalError(m);
    default:
      return UnavailableError(m);
  }
}

// Everything of a transport runs on its worker, so its waits park on a
// LocalEvent (no lock, no atomic); this is on the path of every message.
using Parked = internal::LocalParked;

struct CmEv {
  rdma_cm_event_type type;
  int status = 0;
  rdma_cm_id* id = nullptr;
  rdma_cm_id* listen_id = nullptr;
  std::optional<Hello> hello;
};

class CmTarget {
 public:
  virtual void OnCmEvent(const CmEv& ev) = 0;

 protected:
  ~CmTarget() = default;
};

class TransportImpl;
class ListenerImpl;

// The state of one connection. Owned by the transport (not by the user's
// Connection handle) so that it outlives the hardware's use of its buffers:
// it is deleted only once its QP has been drained and the user let go.
class Conn final : public CmTarget {
 public:
  enum class State : uint8_t { kResolving, kConnecting, kAccepting, kEstablished, kFailed };

  Conn(TransportImpl& t, bool active) : t_(t), active_(active) {}
  ~Conn();

  void OnCmEvent(const CmEv& ev) override;
  void OnSendWc(const ibv_wc& wc);
  void OnRecvWc(const ibv_wc& wc, mempool::Buffer buf);  // buf: the slot's buffer (SRQ or own)
  void OnRqWc(const ibv_wc& wc);                         // per-QP receive queue completion

  Status CreateQp();
  Status PostInitialRecvs();
  void SetLimits(uint32_t max_message_bytes, uint32_t recv_depth);
  void Fail(Status s);
  void Release();  // the user's handle is gone
  void MaybeSendCredits();
  // Keepalive (timer of the transport): notes what arrived since the last
  // tick, fails a dead peer, pings an idle one.
  void StartLiveness(Clock::time_point now);
  void LivenessTick(Clock::time_point now);
  bool Reapable() const { return !user_owned_ && !in_listener_ && drained_ && sleeping_sends_ == 0; }
  uint32_t send_credits() const { return credits_.credits(); }
  uint32_t sq_waiting() const { return static_cast<uint32_t>(sq_waiters_.size()); }

  // Connection API
  Status Send(mempool::IoBuf message);
  Result<mempool::IoBuf> Recv();
  Result<RemoteDescriptor> Expose(const mempool::Buffer& buf, Access access);
  Status Revoke(const RemoteDescriptor& desc);
  Status OneSided(bool read, const RemoteDescriptor& rd, const mempool::IoBuf& local);

  TransportImpl& t_;
  bool active_;
  State state_ = State::kResolving;
  Status status_;
  Limits limits_;
  std::string peer_;
  bool user_owned_ = true;
  bool in_listener_ = false;
  bool peer_closed_ = false;  // the peer disconnected (an orderly close)
  uint64_t messages_posted_ = 0;  // for FaultOptions::disconnect_after
  // Send()s asleep in an injected delay: nothing wakes them early, so the
  // connection is not reaped under them.
  uint32_t sleeping_sends_ = 0;
  ListenerImpl* listener_ = nullptr;
  RdmaConnectionStats stats_;

  // Connection setup (active side): the coroutine waiting for the next CM event.
  Parked* cm_waiter_ = nullptr;
  std::optional<CmEv> cm_event_;

 private:
  friend class TransportImpl;
  friend class ListenerImpl;
  struct SendEntry {
    uint64_t seq;
    mempool::IoBuf hold;
    Parked* op;
  };
  struct SqWaiter : Parked {
    uint32_t n = 0;
  };
  // A Send parked for a credit or an SQ slot. The waker posts the message
  // itself (in FIFO order), so messages leave in Send() order.
  struct SendWaiter : Parked {
    mempool::IoBuf msg;
  };
  struct Exposure {
    uint64_t addr;
    uint32_t len;
    uint32_t key;
    Access access;
    mempool::Buffer hold;
    rdma::MwPtr mw;
    uint32_t mw_binds = 0;  // binds of `mw` so far (its rkey's 8-bit key moved on each)
  };
  // A memory window between exposures, and how often it was bound.
  struct FreeMw {
    rdma::MwPtr mw;
    uint32_t binds = 0;
  };
  // A window is bound at most this often: each bind moves the 8-bit key of
  // its rkey on by one, so the 257th would give back the first bind's rkey,
  // and a peer holding that stale descriptor would reach the new exposure.
  static constexpr uint32_t kMaxMwBinds = 256;

  bool CanTake(uint32_t n) const { return sq_used_ + n <= sq_cap_; }
  // Reserves n SQ slots for a one-sided op / bind / invalidate (FIFO among
  // those; control messages wait separately for credits, so a message starved
  // of credits never blocks one-sided ops behind it).
  Status Reserve(uint32_t n);
  void WakeSqWaiters();
  // Posts a message a credit was taken for (and an SQ slot is free for).
  Status PostMessage(mempool::IoBuf message);
  // A PING or PONG when the SQ has room, else left pending for the next send
  // completion.
  void FlushLiveness();
  // Posts wrs[0..n) (slots already reserved). The last WR carries `hold` and
  // `op` and is signaled when op != nullptr.
  Status PostWrs(ibv_send_wr* wrs, uint32_t n, mempool::IoBuf hold, Parked* op);
  void Deliver(mempool::IoBuf msg);
  void Took();
  void SlotReposted();
  void Refill();
  Status PostRecvSlot(uint32_t idx);
  void StartDrain();
  void CheckDrained();

  // Dependency order: memory windows, then the id + QP (destroyed first).
  std::deque<FreeMw> free_mws_;  // oldest first: a key comes back as late as it can
  std::vector<Exposure> exposures_;
  std::vector<mempool::Buffer> rq_slots_;
 public:
  CmId id_;

 private:
  uint32_t sq_cap_ = 0;  // sq_depth - 1: one WQE is kept for the drain sentinel
  uint32_t sq_used_ = 0;
  uint64_t next_seq_ = 1;
  uint64_t completed_seq_ = 0;
  uint64_t last_signaled_seq_ = 0;
  std::deque<SendEntry> inflight_;
  std::deque<SqWaiter*> sq_waiters_;
  internal::CreditGate<SendWaiter> credits_;
  uint32_t owed_credits_ = 0;
  uint32_t credit_batch_ = 1;
  bool credit_pending_ = false;
  // Keepalive: receives counted on the fast path, turned into a time by the tick.
  uint64_t rx_count_ = 0;
  uint64_t rx_seen_ = 0;
  Clock::time_point last_rx_{};
  bool ping_outstanding_ = false;  // sent (or pending), no PONG yet
  bool ping_pending_ = false;
  bool pong_pending_ = false;
  uint32_t inline_threshold_ = 0;
  uint32_t max_send_sge_ = 1;
  uint32_t max_rd_sge_ = 1;
  uint32_t max_wr_bytes_ = 1u << 30;
  uint32_t recv_buf_bytes_ = 0;
  uint32_t posted_recv_slots_ = 0;
  // Credits go back only for messages that were taken AND whose receive slot is
  // posted again (handed-out slots are refilled after the poll round, off the
  // path to the waiting coroutine); these count whichever came first.
  std::vector<uint32_t> refill_;      // handed-out slots waiting for a fresh block
  uint32_t took_uncredited_ = 0;      // taken, slot not reposted yet
  uint32_t reposted_uncredited_ = 0;  // reposted, message not taken yet
  bool in_refill_list_ = false;
  bool refill_starved_ = false;  // warned about a failed refill (once per episode)
 public:
  uint32_t cq_budget_ = 0;  // CQ entries this connection may need

 private:
  internal::Inbox<Parked> inbox_;
  bool connected_ = false;  // rdma_connect/accept completed (disconnect needed)
  bool draining_ = false;
  bool sq_drained_ = false;
  bool rq_drained_ = false;
  bool drained_ = false;
};

class RdmaConnection final : public Connection {
 public:
  explicit RdmaConnection(Conn* c) : c_(c) {}
  ~RdmaConnection() override { c_->Release(); }
  Status Send(mempool::IoBuf message) override { return c_->Send(std::move(message)); }
  Result<mempool::IoBuf> Recv() override { return c_->Recv(); }
  Result<RemoteDescriptor> Expose(const mempool::Buffer& buf, Access access) override {
    return c_->Expose(buf, access);
  }
  Status Revoke(const RemoteDescriptor& desc) override { return c_->Revoke(desc); }
  Status Read(const RemoteDescriptor& src, const mempool::IoBuf& dst) override {
    return c_->OneSided(true, src, dst);
  }
  Status Write(const mempool::IoBuf& src, const RemoteDescriptor& dst) override {
    return c_->OneSided(false, dst, src);
  }
  void Close() override { c_->Fail(CancelledError("connection closed locally")); }
  Status status() const override { return c_->status_; }
  const Limits& limits() const override { return c_->limits_; }
  std::string_view peer() const override { return c_->peer_; }
  const Conn& core() const { return *c_; }

 private:
  Conn* c_;
};

class CqPoller final : public coro::Poller {
 public:
  explicit CqPoller(TransportImpl& t) : t_(t) {}
  int Poll() override;
  int fd() const override;

 private:
  TransportImpl& t_;
};

class CmPoller final : public coro::Poller {
 public:
  explicit CmPoller(TransportImpl& t) : t_(t) {}
  int Poll() override;
  int fd() const override;

  // How often a busy worker looks at the rdmacm channel: by the cycle counter
  // where there is a TSC, else every kCmPollEvery polls.
  static constexpr std::chrono::microseconds kCmPollInterval{200};
  static constexpr uint32_t kCmPollEvery = 64;

 private:
  TransportImpl& t_;
  const coro::CycleClock& clock_ = coro::CycleClock::Get();
  const uint64_t interval_ticks_ = clock_.TicksFor(kCmPollInterval);
  uint64_t last_check_ = 0;
  uint32_t polls_ = 0;
};

class TransportImpl final : public Transport {
 public:
  TransportImpl(coro::Scheduler& sched, mempool::Pool& pool, RdmaOptions o)
      : sched_(sched), pool_(pool), opts_(std::move(o)), cq_poller_(*this), cm_poller_(*this) {}
  ~TransportImpl() override;

  Status Init();
  std::string_view scheme() const override { return "rdma"; }
  static constexpr uint32_t kFaults =
      kFaultDrop | kFaultCorrupt | kFaultDelay | kFaultRefuseAllocation | kFaultDisconnect | kFaultQpError;
  TransportCapabilities capabilities() const override {
    TransportCapabilities c;
    c.refusal_keeps_connection = false;
    // rxe checks a window's range against its MR, not the window (docs/rdma.md).
    c.exact_exposure = domain_ && domain_->memory_windows() && domain_->device().name.rfind("rxe", 0) != 0;
    c.checks_messages = false;
    c.refused_allocation_keeps_connection = true;
    c.faults = kFaults;
    return c;
  }
  Status SetFaults(const FaultOptions& faults) override {
    HRPC_TRY(internal::CheckFaults(faults, kFaults, "rdma"));
    faults_.Set(faults);
    return Status::Ok();
  }
  TransportCounters& ctr() { return *counters_; }
  const std::shared_ptr<TransportCounters>& counters() const noexcept override { return counters_; }
  // A work completion that failed (not a flush of a QP already in error).
  void CountWcError(const ibv_wc& wc) {
    ctr().completion_errors.Add();
    if (wc.status == IBV_WC_RNR_RETRY_EXC_ERR) ctr().rnr_retry_exceeded.Add();
    if (wc.status == IBV_WC_RETRY_EXC_ERR) ctr().retry_exceeded.Add();
  }
  Result<std::unique_ptr<Listener>> Listen(std::string_view uri) override;
  Result<std::unique_ptr<Connection>> Connect(std::string_view uri) override;

  int PollCq();
  int PollCm();
  Conn* NewConn(bool active);
  void Register(Conn* c) {
    by_qpn_[c->id_.qp()->qp_num] = c;
    last_conn_ = nullptr;  // a QP number may be reused once its QP is gone
  }
  void Unregister(uint32_t qpn) {
    by_qpn_.erase(qpn);
    if (last_qpn_ == qpn) last_conn_ = nullptr;
  }
  // The connection of a work completion; a one-entry cache in front of the map,
  // since completions come in runs for one QP.
  Conn* ConnFor(uint32_t qpn) {
    if (last_conn_ != nullptr && last_qpn_ == qpn) return last_conn_;
    auto it = by_qpn_.find(qpn);
    if (it == by_qpn_.end()) return nullptr;
    last_qpn_ = qpn;
    last_conn_ = it->second;
    return last_conn_;
  }
  void ScheduleReap(Conn* c);
  // A timer that wakes the worker within a millisecond, so refills the pool
  // refused are retried even when nothing else happens.
  void ArmRefillRetry() {
    if (refill_retry_armed_) return;
    refill_retry_armed_ = true;
    sched_.AddTimer(Clock::now() + std::chrono::milliseconds(1),
                    [this, alive = std::weak_ptr<bool>(alive_)] {
                      if (!alive.expired()) refill_retry_armed_ = false;
                    });
  }
  // The keepalive timer: armed while a connection is established, every
  // min(keepalive_interval, dead_peer_timeout / 4) (at least 5 ms).
  void ArmLiveness();
  void LivenessTick();
  Status EnsureCqRoom(uint32_t more);
  Result<mempool::Buffer> AllocRecvBuffer() {
    if (faults_.armed() && faults_.RefuseAllocation(ctr())) {
      return ResourceExhaustedError("fault injection: receive buffer refused");
    }
    return pool_.Allocate(opts_.common.max_message_bytes);
  }
  Status PostSrqSlot(uint32_t idx);
  // A fresh block for SRQ slot idx, posted; false (counted) when the pool
  // refused it.
  bool RefillSrqSlot(uint32_t idx);
  void RetryStarvedSrqSlots();

  coro::Scheduler& sched_;
  mempool::Pool& pool_;
  RdmaOptions opts_;
  std::shared_ptr<TransportCounters> counters_ = std::make_shared<TransportCounters>();
  internal::FaultInjector faults_;
  std::shared_ptr<RdmaDomain> domain_;  // context + PD + MRs: destroyed last
  mempool::RegistrarSlot slot_ = 0;
  rdma::EventChannelPtr cm_channel_;
  rdma::CompChannelPtr comp_channel_;
  rdma::CqPtr cq_;
  rdma::SrqPtr srq_;
  std::vector<mempool::Buffer> srq_slots_;
  int poll_fd_ = -1;  // kPolling: an eventfd that stays readable
  uint32_t cq_size_ = 0;
  uint32_t cq_budget_used_ = 0;
  bool cq_armed_ = false;
  uint32_t idle_polls_ = 0;
  uint32_t unacked_cq_events_ = 0;
  // SRQ slots whose refill the pool refused: retried at the start of each
  // poll round (with a timer armed so a sleeping worker comes back), so the
  // shared queue never shrinks for good. While it is short, senders see RNR
  // NAKs and their NICs retry (rnr_retry).
  std::vector<uint32_t> srq_starved_;
  bool srq_starved_warned_ = false;
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;
  std::unordered_map<uint32_t, Conn*> by_qpn_;
  std::vector<Conn*> refill_conns_, refilling_;  // connections with slots to refill
  bool refill_retry_armed_ = false;
  bool liveness_armed_ = false;
  coro::Scheduler::TimerId liveness_timer_ = 0;
  uint32_t last_qpn_ = 0;
  Conn* last_conn_ = nullptr;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  CqPoller cq_poller_;
  CmPoller cm_poller_;
  bool pollers_added_ = false;
};

// ----------------------------------------------------------------- listener

class ListenerImpl final : public Listener, public CmTarget {
 public:
  explicit ListenerImpl(TransportImpl& t) : t_(t) {}
  ~ListenerImpl() override {
    Close();
  }
  Result<std::unique_ptr<Connection>> Accept() override;
  std::string uri() const override { return uri_; }
  void Close() override;
  void OnCmEvent(const CmEv& ev) override;
  void OnRequest(const CmEv& ev);
  void Established(Conn* c);
  void Forget(Conn* c) { std::erase(pending_, c); }

  TransportImpl& t_;
  CmId id_;
  std::string uri_;

 private:
  // The user's handle owns `c` from now on.
  static void HandOut(Conn* c);
  std::vector<Conn*> pending_;  // accepted, not established
  internal::AcceptQueue<Conn*, Parked> accepts_;
};

// ----------------------------------------------------------------- Conn

Conn::~Conn() {
  exposures_.clear();
  id_.Reset();       // QP, then the id
  free_mws_.clear();  // after the QP they were bound on
}

void Conn::SetLimits(uint32_t max_message_bytes, uint32_t recv_depth) {
  limits_.max_message_bytes = max_message_bytes;
  limits_.recv_depth = recv_depth;
  credits_.Open(recv_depth);
  credit_batch_ = CreditBatch(recv_depth);
}

Status Conn::CreateQp() {
  const RdmaOptions& o = t_.opts_;
  const RdmaDeviceInfo& dev = t_.domain_->device();
  if (id_->verbs != t_.domain_->context()) {
    return FailedPreconditionError("the route to " + peer_ + " goes through device " +
                                   std::string(ibv_get_device_name(id_->verbs->device)) +
                                   ", this transport uses " + dev.name);
  }
  const uint32_t recv_slots = o.use_srq ? 0 : limits_.recv_depth + kCtrlSlots;
  HRPC_TRY(t_.EnsureCqRoom(o.sq_depth + recv_slots + 2));
  cq_budget_ = o.sq_depth + recv_slots + 2;
  ibv_qp_init_attr a{};
  a.send_cq = t_.cq_.get();
  a.recv_cq = t_.cq_.get();
  a.srq = o.use_srq ? t_.srq_.get() : nullptr;
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;
  a.cap.max_send_wr = o.sq_depth;
  a.cap.max_recv_wr = o.use_srq ? 0 : recv_slots + 1;
  a.cap.max_send_sge = std::min<uint32_t>(dev.max_sge, kMaxSendSge);
  a.cap.max_recv_sge = 1;
  a.cap.max_inline_data = o.max_inline;
  if (rdma_create_qp(id_.get(), t_.domain_->pd(), &a) != 0) {
    // Some devices cap inline data lower: retry without it.
    a.cap.max_inline_data = 0;
    if (rdma_create_qp(id_.get(), t_.domain_->pd(), &a) != 0) return ErrnoStatus(errno, "rdma_create_qp");
  }
  id_.set_has_qp();
  sq_cap_ = o.sq_depth - 1;
  // The device may grant more than asked (rxe sizes SGEs and inline data from
  // one WQE size, so max_inline 512 comes with 32 SGEs): use what was asked.
  max_send_sge_ = std::clamp<uint32_t>(a.cap.max_send_sge, 1, kMaxSendSge);
  max_rd_sge_ = std::max<uint32_t>(1, std::min(max_send_sge_, dev.max_sge_rd));
  max_wr_bytes_ = std::min<uint32_t>(dev.max_msg_bytes, 1u << 30);
  inline_threshold_ = std::min(o.max_inline, a.cap.max_inline_data);
  recv_buf_bytes_ = o.common.max_message_bytes;
  stats_.inline_threshold = inline_threshold_;
  stats_.max_send_sge = max_send_sge_;
  stats_.qp_num = id_.qp()->qp_num;
  t_.Register(this);
  return Status::Ok();
}

Status Conn::PostRecvSlot(uint32_t idx) {
  mempool::Buffer& b = rq_slots_[idx];
  ibv_sge sge{reinterpret_cast<uint64_t>(b.data()), static_cast<uint32_t>(b.size()),
              b.key(t_.slot_).lkey};
  ibv_recv_wr wr{};
  wr.wr_id = kRecvFlag | idx;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  const int rc = ibv_post_recv(id_.qp(), &wr, &bad);
  if (rc != 0) return ErrnoStatus(rc, "ibv_post_recv");
  return Status::Ok();
}

Status Conn::PostInitialRecvs() {
  if (t_.opts_.use_srq) return Status::Ok();
  const uint32_t n = limits_.recv_depth + kCtrlSlots;
  rq_slots_.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    HRPC_ASSIGN_OR_RETURN(rq_slots_[i], t_.AllocRecvBuffer());
    HRPC_TRY(PostRecvSlot(i));
  }
  posted_recv_slots_ = n;
  return Status::Ok();
}

Status Conn::Reserve(uint32_t n) {
  if (!status_.ok()) return status_;
  if (sq_waiters_.empty() && CanTake(n)) {
    sq_used_ += n;
    return Status::Ok();
  }
  t_.ctr().send_queue_stalls.Add();
  SqWaiter w;
  w.n = n;
  sq_waiters_.push_back(&w);
  // The waker took the slots for us; do not touch `this` on error. Handed
  // them just before the connection failed, the caller's PostWrs refuses.
  return w.Wait();
}

void Conn::WakeSqWaiters() {
  // Control messages first (each needs a credit and a slot), then one-sided ops.
  credits_.Pump([this](SendWaiter& w) { return PostMessage(std::move(w.msg)); },
                [this] { return status_.ok() && sq_used_ < sq_cap_; });
  while (status_.ok() && !sq_waiters_.empty()) {
    SqWaiter* w = sq_waiters_.front();
    if (!CanTake(w->n)) break;
    sq_used_ += w->n;
    sq_waiters_.pop_front();
    w->Finish(Status::Ok());
  }
}

Status Conn::PostWrs(ibv_send_wr* wrs, uint32_t n, mempool::IoBuf hold, Parked* op) {
  // A failed QP only flushes: an op posted now (e.g. one handed its slots just
  // before the failure) would sit behind the drain and never be finished.
  if (!status_.ok()) return status_;
  const uint32_t interval = t_.opts_.signal_interval;
  for (uint32_t i = 0; i < n; ++i) {
    ibv_send_wr& wr = wrs[i];
    const uint64_t seq = next_seq_++;
    wr.wr_id = seq;
    wr.next = i + 1 < n ? &wrs[i + 1] : nullptr;
    const bool last = i + 1 == n;
    // Signal the op's last WR, at least every `interval` WRs, and whenever the
    // SQ is full (so a completion is always coming to free it).
    const bool sig = (last && op != nullptr) || seq - last_signaled_seq_ >= interval ||
                     (last && sq_used_ >= sq_cap_) || (wr.send_flags & IBV_SEND_SIGNALED);
    if (sig) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      last_signaled_seq_ = seq;
      ++stats_.signaled_sends;
    }
    if (last && (op != nullptr || !hold.empty())) {
      inflight_.push_back(SendEntry{seq, std::move(hold), op});
    }
  }
  ibv_send_wr* bad = nullptr;
  const int rc = ibv_post_send(id_.qp(), wrs, &bad);
  if (rc != 0) {
    Status s = ErrnoStatus(rc, "ibv_post_send");
    Fail(UnavailableError(s.message()));
    return s;
  }
  return Status::Ok();
}

Status Conn::Send(mempool::IoBuf message) {
  if (!status_.ok()) return status_;
  if (message.size() > limits_.max_message_bytes) {
    return InvalidArgumentError("Send: " + std::to_string(message.size()) + " bytes > max_message_bytes " +
                                std::to_string(limits_.max_message_bytes));
  }
  if (message.num_slices() > max_send_sge_) {
    // More slices than the device gathers in one SEND: coalesce (counted copy).
    HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, t_.pool_.Allocate(message.size()));
    message.CopyTo(b.data(), 0, message.size());
    message = mempool::IoBuf(std::move(b));
    ++stats_.coalesced_sends;
  }
  if (t_.faults_.armed()) {
    if (const auto delay = t_.faults_.Delay(t_.ctr()); delay.count() > 0) {
      ++sleeping_sends_;
      coro::this_coro::SleepFor(delay);
      --sleeping_sends_;
      if (!status_.ok()) {
        // Closed meanwhile: a reap it held off is due now (it runs after
        // this coroutine has returned).
        if (Reapable()) t_.ScheduleReap(this);
        return status_;
      }
    }
  }
  if (sq_used_ < sq_cap_ && credits_.TryTake()) return PostMessage(std::move(message));
  (credits_.credits() == 0 ? t_.ctr().credit_stalls : t_.ctr().send_queue_stalls).Add();
  SendWaiter w;
  w.msg = std::move(message);
  credits_.Park(w);
  return w.Wait();  // posted (or failed) by WakeSqWaiters / Fail
}

Status Conn::PostMessage(mempool::IoBuf message) {
  internal::FaultAction fault;
  if (t_.faults_.armed()) {
    if (const int64_t after = t_.faults_.disconnect_after();
        after >= 0 && messages_posted_ >= static_cast<uint64_t>(after)) {
      t_.ctr().faults_disconnects.Add();
      Fail(UnavailableError("fault injection: connection to " + peer_ + " broken after " + std::to_string(after) +
                            " messages"));
      return status_;
    }
    fault = t_.faults_.OnMessage(message.size(), t_.ctr(), /*can_duplicate=*/false);
    if (fault.drop) {
      credits_.Refund();  // never posted: its credit stays
      return Status::Ok();
    }
    if (t_.faults_.TakeQpError(t_.ctr())) {
      // What a fatal local or remote error does: the QP flushes everything;
      // the flushes tell this side (OnRecvWc/OnSendWc), the disconnect the peer.
      SPDLOG_INFO("rdma {}: fault injection: moving the QP to the error state", peer_);
      ibv_qp_attr attr{};
      attr.qp_state = IBV_QPS_ERR;
      ibv_modify_qp(id_.qp(), &attr, IBV_QP_STATE);
    }
  }
  ++messages_posted_;
  ++sq_used_;
  ibv_sge sges[kMaxSendSge];
  const uint32_t nsge = static_cast<uint32_t>(
      message.FillSges(t_.slot_, std::span<mempool::Sge>(reinterpret_cast<mempool::Sge*>(sges), max_send_sge_)));
  ibv_send_wr wr{};
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.sg_list = nsge ? sges : nullptr;
  wr.num_sge = static_cast<int>(nsge);
  // A corrupted frame: the immediate (the frame's header) names no kind.
  wr.imm_data = htonl((fault.corrupt ? kKindCorrupt : kKindData) << kImmKindShift | owed_credits_);
  stats_.credits_granted += owed_credits_;
  owed_credits_ = 0;
  const bool inl = message.size() > 0 && message.size() <= inline_threshold_;
  TransportCounters& ctr = t_.ctr();
  if (inl) {
    wr.send_flags = IBV_SEND_INLINE;  // the provider copies now: no buffer to hold
    ++stats_.inline_sends;
    ctr.inline_sends.Add();
  }
  ++stats_.sends;
  ctr.messages_sent.Add();
  ctr.message_bytes_sent.Add(message.size());
  return PostWrs(&wr, 1, inl ? mempool::IoBuf() : std::move(message), nullptr);
}

void Conn::MaybeSendCredits() {
  if (!status_.ok() || state_ != State::kEstablished) return;
  if (owed_credits_ < credit_batch_) return;
  // Credit-only messages bypass the FIFO of senders (those may be waiting for
  // the very credits the peer is waiting on) and need no credit themselves.
  if (sq_used_ + 1 > sq_cap_) {
    credit_pending_ = true;
    return;
  }
  credit_pending_ = false;
  sq_used_ += 1;
  ibv_send_wr wr{};
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.imm_data = htonl(kKindCredit << kImmKindShift | owed_credits_);
  stats_.credits_granted += owed_credits_;
  wr.send_flags = IBV_SEND_INLINE;
  owed_credits_ = 0;
  ++stats_.credit_messages;
  t_.ctr().credit_messages.Add();
  (void)PostWrs(&wr, 1, mempool::IoBuf(), nullptr);
}

void Conn::FlushLiveness() {
  if (!status_.ok() || state_ != State::kEstablished) return;
  for (const uint32_t kind : {kKindPong, kKindPing}) {
    bool& pending = kind == kKindPong ? pong_pending_ : ping_pending_;
    if (!pending || sq_used_ + 1 > sq_cap_) continue;
    pending = false;
    sq_used_ += 1;
    ibv_send_wr wr{};
    wr.opcode = IBV_WR_SEND_WITH_IMM;
    wr.imm_data = htonl(kind << kImmKindShift | owed_credits_);  // credits owed below a batch go along
    stats_.credits_granted += owed_credits_;
    owed_credits_ = 0;
    wr.send_flags = IBV_SEND_INLINE;
    ++(kind == kKindPong ? stats_.pongs_sent : stats_.pings_sent);
    if (!PostWrs(&wr, 1, mempool::IoBuf(), nullptr).ok()) return;
  }
}

void Conn::StartLiveness(Clock::time_point now) {
  last_rx_ = now;
  rx_seen_ = rx_count_;
  FlushLiveness();  // a PING that arrived before ESTABLISHED was seen is answered now
  t_.ArmLiveness();
}

void Conn::LivenessTick(Clock::time_point now) {
  if (!status_.ok() || state_ != State::kEstablished) return;
  if (rx_count_ != rx_seen_) {
    rx_seen_ = rx_count_;
    last_rx_ = now;
  }
  const TransportOptions& o = t_.opts_.common;
  const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_rx_);
  if (silent >= o.dead_peer_timeout) {
    const std::string reason = "nothing received for " + std::to_string(silent.count()) + " ms (dead-peer timeout " +
                               std::to_string(o.dead_peer_timeout.count()) + " ms)";
    SPDLOG_WARN("rdma: closing connection {}: {}", peer_, reason);
    ++stats_.dead_peer_timeouts;
    Fail(UnavailableError("peer " + peer_ + " is dead: " + reason));
    return;
  }
  if (silent >= o.keepalive_interval && !ping_outstanding_) {
    ping_outstanding_ = true;
    ping_pending_ = true;
  }
  FlushLiveness();  // also what waited for an SQ slot
}

void Conn::Took() {
  if (t_.opts_.use_srq || reposted_uncredited_ > 0) {  // SRQ slots are refilled at once, per transport
    if (!t_.opts_.use_srq) --reposted_uncredited_;
    ++owed_credits_;
    MaybeSendCredits();
    return;
  }
  ++took_uncredited_;
}

void Conn::SlotReposted() {
  if (took_uncredited_ == 0) {
    ++reposted_uncredited_;
    return;
  }
  --took_uncredited_;
  ++owed_credits_;
  MaybeSendCredits();
}

void Conn::Refill() {
  in_refill_list_ = false;
  size_t kept = 0;  // slots the pool could not refill this round: retried later
  for (size_t i = 0; i < refill_.size() && status_.ok(); ++i) {
    const uint32_t idx = refill_[i];
    auto fresh = t_.AllocRecvBuffer();
    if (!fresh.ok()) {
      // The credit waits with the slot (the peer slows down; no RNR).
      t_.ctr().receive_refill_failures.Add();
      if (!refill_starved_) {
        SPDLOG_WARN("rdma {}: cannot refill a receive slot ({}); retrying, its credit waits", peer_,
                    fresh.status().ToString());
        refill_starved_ = true;
      }
      ++stats_.refill_refusals;
      refill_[kept++] = idx;
      continue;
    }
    refill_starved_ = false;
    rq_slots_[idx] = std::move(fresh).value();
    if (Status st = PostRecvSlot(idx); !st.ok()) {
      Fail(UnavailableError(st.message()));
      break;
    }
    ++posted_recv_slots_;
    SlotReposted();
  }
  refill_.resize(status_.ok() ? kept : 0);
  stats_.slots_awaiting_refill = static_cast<uint32_t>(refill_.size());
  if (!refill_.empty()) {
    in_refill_list_ = true;
    t_.refill_conns_.push_back(this);
    t_.ArmRefillRetry();  // a sleeping worker must come back to retry
  }
}

void Conn::Deliver(mempool::IoBuf msg) {
  ++stats_.recvs;
  t_.ctr().messages_received.Add();
  t_.ctr().message_bytes_received.Add(msg.size());
  if (inbox_.Put(std::move(msg))) Took();
}

Result<mempool::IoBuf> Conn::Recv() {
  // Messages that arrived before a failure are still handed out, then the
  // connection's status (as tcp and loopback do).
  if (!inbox_.empty()) {
    mempool::IoBuf m = inbox_.Take();
    if (status_.ok()) Took();
    return m;
  }
  if (!status_.ok()) return status_;
  return inbox_.Wait();
}

void Conn::OnRecvWc(const ibv_wc& wc, mempool::Buffer buf) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status != IBV_WC_WR_FLUSH_ERR) {
      t_.CountWcError(wc);
      Fail(WcStatus(wc, "receive"));
    } else if (status_.ok() && state_ == State::kEstablished) {
      // The QP went to the error state while this side still used it.
      Fail(UnavailableError("RC QP to " + peer_ + " is in the error state (receive flushed)"));
    }
    return;
  }
  if (!status_.ok()) return;
  if ((wc.wc_flags & IBV_WC_WITH_IMM) == 0) {
    Fail(DataLossError("receive without immediate data: not an hrpc peer"));
    return;
  }
  if (wc.opcode != IBV_WC_RECV) {
    // An RDMA WRITE with immediate takes a receive WQE too, but wrote nothing
    // into its buffer: delivering that buffer would hand out stale memory.
    t_.ctr().corrupt_messages.Add();
    Fail(DataLossError("RDMA WRITE with immediate from " + peer_ + ": hrpc messages are SENDs"));
    return;
  }
  const uint32_t imm = ntohl(wc.imm_data);
  const uint32_t kind = imm >> kImmKindShift;
  const uint32_t credits = imm & kImmCreditMask;
  ++rx_count_;  // the peer's process is alive
  if (credits > 0) {
    stats_.credits_received += credits;
    if (Status s = credits_.Grant(credits); !s.ok()) {
      Fail(std::move(s));
      return;
    }
    WakeSqWaiters();
  }
  if (kind == kKindCredit || kind == kKindPing || kind == kKindPong) {
    if (wc.byte_len != 0) {
      Fail(DataLossError(std::string(kind == kKindCredit ? "credit-only" : "keepalive") + " message with " +
                         std::to_string(wc.byte_len) + " bytes"));
      return;
    }
    if (kind == kKindCredit) return;
    if (kind == kKindPong) {
      ping_outstanding_ = false;
    } else {
      pong_pending_ = true;
      FlushLiveness();
    }
    return;
  }
  if (kind != kKindData || wc.byte_len > limits_.max_message_bytes) {
    t_.ctr().corrupt_messages.Add();
    Fail(DataLossError("bad control message (kind " + std::to_string(kind) + ", " + std::to_string(wc.byte_len) +
                       " bytes)"));
    return;
  }
  // The peer holds recv_depth credits plus those given back to it: a data
  // message beyond them ignores flow control (and would hold one more pool
  // block for as long as it pleases).
  if (stats_.recvs >= uint64_t{limits_.recv_depth} + stats_.credits_granted) {
    t_.ctr().corrupt_messages.Add();
    Fail(DataLossError("message without a credit from " + peer_ + " (" + std::to_string(stats_.recvs) +
                       " received, " + std::to_string(limits_.recv_depth) + " + " +
                       std::to_string(stats_.credits_granted) + " credits given)"));
    return;
  }
  mempool::IoBuf msg;
  if (wc.byte_len > 0) {
    msg.Append(std::move(buf).Slice(0, wc.byte_len));
  } else if (!t_.opts_.use_srq) {
    SlotReposted();  // an empty message's slot went straight back
  }
  Deliver(std::move(msg));
}

void Conn::OnRqWc(const ibv_wc& wc) {
  const uint32_t idx = static_cast<uint32_t>(wc.wr_id & kSlotMask);
  if (idx >= rq_slots_.size()) return;
  // Taken out of the slot: the message slice keeps the block alive; a slot whose
  // block is not handed out gets it back below.
  mempool::Buffer b = std::move(rq_slots_[idx]);
  const bool handed_out = wc.status == IBV_WC_SUCCESS && wc.byte_len > 0;
  if (!handed_out) rq_slots_[idx] = b;
  if (wc.status == IBV_WC_SUCCESS && status_.ok()) {
    if (handed_out) {
      // The application keeps this block: the slot gets a fresh one after this
      // poll round (Refill), and the message's credit goes back only then.
      --posted_recv_slots_;
      refill_.push_back(idx);
      stats_.slots_awaiting_refill = static_cast<uint32_t>(refill_.size());
      if (!in_refill_list_) {
        in_refill_list_ = true;
        t_.refill_conns_.push_back(this);
      }
    } else {
      Status s = PostRecvSlot(idx);
      if (!s.ok()) Fail(UnavailableError(s.message()));
    }
  } else {
    --posted_recv_slots_;
  }
  OnRecvWc(wc, std::move(b));
}

void Conn::OnSendWc(const ibv_wc& wc) {
  const uint64_t seq = wc.wr_id;
  if (seq == kDrainSqId) {
    sq_drained_ = true;
    CheckDrained();
    return;
  }
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status != IBV_WC_WR_FLUSH_ERR) {
      t_.CountWcError(wc);
      // The op owning this WR gets the precise error; everything else the connection's.
      Status precise = WcStatus(wc, wc.opcode == IBV_WC_RDMA_READ ? "RDMA READ" : "send queue");
      for (SendEntry& e : inflight_) {
        if (e.seq >= seq && e.op != nullptr) {
          e.op->Finish(precise);
          break;
        }
      }
      Fail(UnavailableError("RC QP failed: " + std::string(precise.message())));
    } else if (status_.ok() && state_ == State::kEstablished) {
      Fail(UnavailableError("RC QP to " + peer_ + " is in the error state (send flushed)"));
    }
    return;
  }
  if (seq > completed_seq_) {
    sq_used_ -= static_cast<uint32_t>(seq - completed_seq_);
    completed_seq_ = seq;
  }
  while (!inflight_.empty() && inflight_.front().seq <= seq) {
    SendEntry e = std::move(inflight_.front());
    inflight_.pop_front();
    if (e.op != nullptr) e.op->Finish(Status::Ok());
  }
  if (credit_pending_) MaybeSendCredits();
  if (ping_pending_ || pong_pending_) FlushLiveness();
  WakeSqWaiters();
}

Result<RemoteDescriptor> Conn::Expose(const mempool::Buffer& buf, Access access) {
  if (buf.empty()) return InvalidArgumentError("Expose: empty buffer");
  if (buf.size() > UINT32_MAX) return InvalidArgumentError("Expose: buffer larger than 4 GiB");
  const mempool::RegionKey key = buf.key(t_.slot_);
  if (key.handle == 0) return FailedPreconditionError("Expose: buffer is not from the transport's pool");
  if (!status_.ok()) return status_;
  const uint64_t addr = reinterpret_cast<uint64_t>(buf.data());
  const uint32_t len = static_cast<uint32_t>(buf.size());
  if (!t_.domain_->memory_windows()) {
    // The arena MR's rkey: the peer can reach the whole arena (documented).
    exposures_.push_back(Exposure{addr, len, key.rkey, access, buf, nullptr});
    return RemoteDescriptor{addr, len, key.rkey};
  }
  rdma::MwPtr mw;
  uint32_t binds = 0;
  if (!free_mws_.empty()) {
    mw = std::move(free_mws_.front().mw);
    binds = free_mws_.front().binds;
    free_mws_.pop_front();
  } else {
    mw.reset(ibv_alloc_mw(t_.domain_->pd(), IBV_MW_TYPE_2));
    if (!mw) return ErrnoStatus(errno, "ibv_alloc_mw(type 2)");
  }
  HRPC_TRY(Reserve(1));
  const uint32_t rkey = ibv_inc_rkey(mw->rkey);
  ibv_send_wr wr{};
  wr.opcode = IBV_WR_BIND_MW;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.bind_mw.mw = mw.get();
  wr.bind_mw.rkey = rkey;
  wr.bind_mw.bind_info.mr = reinterpret_cast<ibv_mr*>(key.handle);
  wr.bind_mw.bind_info.addr = addr;
  wr.bind_mw.bind_info.length = len;
  wr.bind_mw.bind_info.mw_access_flags = (Allows(access, Access::kRead) ? IBV_ACCESS_REMOTE_READ : 0) |
                                         (Allows(access, Access::kWrite) ? IBV_ACCESS_REMOTE_WRITE : 0);
  Parked op;
  Status s = PostWrs(&wr, 1, mempool::IoBuf(), &op);
  if (!s.ok()) return s;
  s = op.Wait();
  if (!s.ok()) return s;  // mw (unique_ptr) is deallocated; `this` may be failed
  mw->rkey = rkey;
  ++stats_.mw_binds;
  t_.ctr().mw_binds.Add();
  exposures_.push_back(Exposure{addr, len, rkey, access, buf, std::move(mw), binds + 1});
  return RemoteDescriptor{addr, len, rkey};
}

Status Conn::Revoke(const RemoteDescriptor& d) {
  auto it = std::find_if(exposures_.begin(), exposures_.end(),
                         [&](const Exposure& e) { return e.key == d.key && e.addr == d.addr && e.len == d.len; });
  if (it == exposures_.end()) {
    return NotFoundError("Revoke: descriptor (key " + std::to_string(d.key) + ") is not exposed here");
  }
  if (!it->mw) {
    exposures_.erase(it);  // MR mode: nothing to invalidate in hardware
    return Status::Ok();
  }
  const uint32_t rkey = it->key;
  // Hide the exposure now: a concurrent Revoke of the same key finds nothing.
  Exposure e = std::move(*it);
  exposures_.erase(it);
  HRPC_TRY(Reserve(1));
  ibv_send_wr wr{};
  wr.opcode = IBV_WR_LOCAL_INV;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.invalidate_rkey = rkey;
  Parked op;
  Status s = PostWrs(&wr, 1, mempool::IoBuf(), &op);
  if (!s.ok()) return s;
  s = op.Wait();
  if (!s.ok()) {
    // The connection failed: its QP is in error, the peer can no longer reach the memory.
    return Status::Ok();
  }
  ++stats_.mw_invalidates;
  // Worn out (its next bind would repeat an rkey it had): deallocated; the
  // next exposure allocates a window with an index of its own.
  if (e.mw_binds < kMaxMwBinds) free_mws_.push_back(FreeMw{std::move(e.mw), e.mw_binds});
  return Status::Ok();
}

Status Conn::OneSided(bool read, const RemoteDescriptor& rd, const mempool::IoBuf& local) {
  if (local.size() != rd.len) {
    return InvalidArgumentError(std::string(read ? "Read" : "Write") + ": local buffer has " +
                                std::to_string(local.size()) + " bytes, descriptor " + std::to_string(rd.len));
  }
  if (!status_.ok()) return status_;
  if (rd.len == 0) return Status::Ok();
  // Split into WRs of at most max_sge SGEs and max_wr_bytes bytes each.
  const uint32_t max_sge = read ? max_rd_sge_ : max_send_sge_;
  struct WrPlan {
    uint64_t remote;
    uint32_t first_sge;
    uint32_t nsge;
  };
  std::vector<ibv_sge> sges;
  std::vector<WrPlan> plan;
  sges.reserve(local.num_slices() + rd.len / max_wr_bytes_ + 1);
  uint64_t off = 0;
  uint32_t wr_bytes = 0;
  for (size_t i = 0; i < local.num_slices(); ++i) {
    const mempool::Buffer& s = local.slice(i);
    const mempool::RegionKey k = s.key(t_.slot_);
    if (k.handle == 0) return FailedPreconditionError("local buffer is not from the transport's pool");
    size_t done = 0;
    while (done < s.size()) {
      if (plan.empty() || plan.back().nsge == max_sge || wr_bytes == max_wr_bytes_) {
        plan.push_back(WrPlan{rd.addr + off, static_cast<uint32_t>(sges.size()), 0});
        wr_bytes = 0;
      }
      const uint32_t take = static_cast<uint32_t>(std::min<size_t>(s.size() - done, max_wr_bytes_ - wr_bytes));
      sges.push_back(ibv_sge{reinterpret_cast<uint64_t>(s.data() + done), take, k.lkey});
      plan.back().nsge++;
      wr_bytes += take;
      done += take;
      off += take;
    }
  }
  ++stats_.one_sided_ops;
  stats_.one_sided_wrs += plan.size();
  TransportCounters& ctr = t_.ctr();
  ctr.CountOp(read, rd.len);
  Parked op;
  const uint32_t batch_max = std::max<uint32_t>(1, sq_cap_ / 2);
  size_t next = 0;
  std::vector<ibv_send_wr> wrs;
  while (next < plan.size()) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(plan.size() - next, batch_max));
    Status s = Reserve(n);
    if (!s.ok()) {
      // WRs of this op already posted still reference `local`: their entries hold it.
      return s;
    }
    wrs.assign(n, ibv_send_wr{});
    for (uint32_t i = 0; i < n; ++i) {
      const WrPlan& p = plan[next + i];
      ibv_send_wr& wr = wrs[i];
      wr.opcode = read ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
      wr.sg_list = &sges[p.first_sge];
      wr.num_sge = static_cast<int>(p.nsge);
      wr.wr.rdma.remote_addr = p.remote;
      wr.wr.rdma.rkey = rd.key;
    }
    next += n;
    const bool last = next == plan.size();
    // Every batch holds the local buffers until its WRs complete.
    s = PostWrs(wrs.data(), n, local.Share(), last ? &op : nullptr);
    if (!s.ok()) return s;
  }
  Status done = op.Wait();
  if (IsRefusal(done.code())) ctr.refused_by_peer.Add();
  return done;
}

void Conn::Fail(Status s) {
  if (state_ == State::kFailed) return;
  const bool was_established = state_ == State::kEstablished;
  state_ = State::kFailed;
  if (was_established) {
    TransportCounters& ctr = t_.ctr();
    if (s.code() == StatusCode::kCancelled) {
      ctr.closed_local.Add();
    } else if (peer_closed_) {
      ctr.closed_by_peer.Add();
    } else {
      ctr.failed.Add();
    }
  } else if (!active_) {
    t_.ctr().handshake_failures.Add();
  }
  status_ = std::move(s);
  SPDLOG_DEBUG("rdma {}: connection failed: {}", peer_, status_.ToString());
  if (cm_waiter_ != nullptr) {
    cm_waiter_->Finish(status_);
    cm_waiter_ = nullptr;
  }
  for (SqWaiter* w : sq_waiters_) w->Finish(status_);
  sq_waiters_.clear();
  credits_.FailAll(status_);
  inbox_.FailAll(status_);
  for (SendEntry& e : inflight_) {
    if (e.op != nullptr) e.op->Finish(status_);
    e.op = nullptr;  // the entry keeps holding buffers until the QP is drained
  }
  if (listener_ != nullptr && !was_established) {
    // Failed in its handshake (the client gave up or vanished after the
    // accept): no acceptor will see it, so it is freed once drained.
    listener_->Forget(this);
    listener_ = nullptr;
    in_listener_ = false;
  }
  StartDrain();
}

void Conn::StartDrain() {
  if (draining_) return;
  draining_ = true;
  if (!id_ || id_.qp() == nullptr) {
    if (connected_ && id_) rdma_disconnect(id_.get());
    sq_drained_ = rq_drained_ = true;
    CheckDrained();
    return;
  }
  // Sentinels: flushed after everything posted before them. The receive
  // queue's goes in before the moves to the error state below: rxe (Linux
  // 6.1) flushes the receives a queue holds when its QP is moved to error, and
  // one posted to a QP already in error waits for a later flush pass, which
  // comes only when more packets arrive. (A QP in error already, after a fatal
  // error, is moved again below, which flushes it.) On a working QP it is the
  // last slot of the queue, behind every slot the peer holds a credit for, so
  // no message of the peer's lands in it.
  if (t_.opts_.use_srq) {
    rq_drained_ = true;
  } else {
    ibv_recv_wr rwr{};
    rwr.wr_id = kDrainRqId;
    ibv_recv_wr* rbad = nullptr;
    if (ibv_post_recv(id_.qp(), &rwr, &rbad) != 0) rq_drained_ = true;
  }
  if (connected_) rdma_disconnect(id_.get());  // moves the QP to error too
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_ERR;
  ibv_modify_qp(id_.qp(), &attr, IBV_QP_STATE);
  // The peer cannot touch exposed memory any more: drop the exposures.
  exposures_.clear();
  ibv_send_wr swr{};
  swr.wr_id = kDrainSqId;
  swr.opcode = IBV_WR_SEND;
  swr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* sbad = nullptr;
  if (ibv_post_send(id_.qp(), &swr, &sbad) != 0) sq_drained_ = true;
  CheckDrained();
}

void Conn::CheckDrained() {
  if (drained_ || !sq_drained_ || !rq_drained_) return;
  drained_ = true;
  inflight_.clear();  // the hardware is done with every buffer
  rq_slots_.clear();
  if (Reapable()) t_.ScheduleReap(this);
}

void Conn::Release() {
  user_owned_ = false;
  Fail(CancelledError("connection closed locally"));
  (void)inbox_.TakeAll();  // nobody will take them: their buffers go back now
  if (Reapable()) t_.ScheduleReap(this);
}

void Conn::OnCmEvent(const CmEv& ev) {
  if (cm_waiter_ != nullptr) {  // active setup in progress
    cm_event_ = ev;
    Parked* w = cm_waiter_;
    cm_waiter_ = nullptr;
    w->Finish(Status::Ok());
    return;
  }
  switch (ev.type) {
    case RDMA_CM_EVENT_ESTABLISHED:
      if (state_ == State::kAccepting) {
        state_ = State::kEstablished;
        connected_ = true;
        StartLiveness(Clock::now());
        if (listener_ != nullptr) {
          listener_->Established(this);
        } else {
          Fail(CancelledError("listener closed"));
        }
      }
      break;
    case RDMA_CM_EVENT_DISCONNECTED:
      peer_closed_ = true;
      Fail(UnavailableError("peer " + peer_ + " disconnected"));
      break;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      Fail(UnavailableError("RDMA device removed"));
      break;
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_REJECTED:
      Fail(UnavailableError(std::string("connection to ") + peer_ + " failed: " + rdma_event_str(ev.type)));
      break;
    default:
      break;
  }
}

// ----------------------------------------------------------------- listener

void ListenerImpl::OnCmEvent(const CmEv& ev) {
  if (ev.type == RDMA_CM_EVENT_DEVICE_REMOVAL) Close();
}

void ListenerImpl::OnRequest(const CmEv& ev) {
  CmId id(ev.id);
  auto reject = [&](const std::string& why) {
    SPDLOG_WARN("rdma listener {}: rejecting a connection: {}", uri_, why);
    t_.ctr().handshake_failures.Add();
    Hello h;
    h.kind = kHelloReject;
    snprintf(h.reason, sizeof h.reason, "%s", why.c_str());
    rdma_reject(id.get(), &h, sizeof h);
  };
  if (accepts_.closed()) {
    reject("listener closed");
    return;
  }
  if (!ev.hello || ev.hello->kind != kHelloRequest) {
    reject("no hrpc hello in the connect request");
    return;
  }
  if (ev.hello->version != kHelloVersion) {
    reject("version " + std::to_string(ev.hello->version) + " unsupported (want " +
           std::to_string(kHelloVersion) + ")");
    return;
  }
  const RdmaOptions& o = t_.opts_;
  const uint32_t mmb = std::min(o.common.max_message_bytes, ev.hello->max_message_bytes);
  const uint32_t depth = std::min(o.common.recv_depth, ev.hello->recv_depth);
  if (mmb == 0 || depth == 0) {
    reject("zero max_message_bytes or recv_depth");
    return;
  }
  Conn* c = t_.NewConn(false);
  c->id_ = std::move(id);
  c->id_->context = static_cast<CmTarget*>(c);
  char host[64] = "?";
  sockaddr* pa = rdma_get_peer_addr(c->id_.get());
  if (pa != nullptr && pa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(pa)->sin_addr, host, sizeof host);
  }
  c->peer_ = "rdma://" + std::string(host) + ":" + std::to_string(ntohs(rdma_get_dst_port(c->id_.get())));
  c->SetLimits(mmb, depth);
  c->state_ = Conn::State::kAccepting;
  Status s = c->CreateQp();
  if (s.ok()) s = c->PostInitialRecvs();
  Hello h;
  h.kind = kHelloAccept;
  h.max_message_bytes = mmb;
  h.recv_depth = depth;
  rdma_conn_param p{};
  p.private_data = &h;
  p.private_data_len = sizeof h;
  const uint32_t rd = std::min<uint32_t>(o.max_rd_atomic, t_.domain_->device().max_qp_rd_atom);
  p.responder_resources = static_cast<uint8_t>(std::min<uint32_t>(rd, 255));
  p.initiator_depth = p.responder_resources;
  p.retry_count = o.retry_count;
  p.rnr_retry_count = o.rnr_retry;
  if (s.ok() && rdma_accept(c->id_.get(), &p) != 0) s = ErrnoStatus(errno, "rdma_accept");
  if (!s.ok()) {
    SPDLOG_WARN("rdma listener {}: accepting {} failed: {}", uri_, c->peer_, s.ToString());
    Hello r;
    r.kind = kHelloReject;
    snprintf(r.reason, sizeof r.reason, "%s", std::string(s.message()).c_str());
    rdma_reject(c->id_.get(), &r, sizeof r);
    c->user_owned_ = false;
    c->Fail(s);
    return;
  }
  c->connected_ = true;     // from now on a failure disconnects (DREQ/REJ to the peer)
  c->user_owned_ = false;  // until Accept() hands it out
  c->in_listener_ = true;
  c->listener_ = this;
  pending_.push_back(c);
}

void ListenerImpl::HandOut(Conn* c) {
  c->in_listener_ = false;
  c->listener_ = nullptr;
  c->user_owned_ = true;
}

void ListenerImpl::Established(Conn* c) {
  Forget(c);
  t_.ctr().accepted.Add();
  // Handed to a parked acceptor: the user owns it from now, before that
  // coroutine runs.
  if (accepts_.Push(c)) HandOut(c);
}

Result<std::unique_ptr<Connection>> ListenerImpl::Accept() {
  if (accepts_.closed()) return CancelledError("listener closed");
  HRPC_ASSIGN_OR_RETURN(Conn* c, accepts_.Pop());
  HandOut(c);  // already done when Established() handed it over
  return std::unique_ptr<Connection>(std::make_unique<RdmaConnection>(c));
}

void ListenerImpl::Close() {
  if (accepts_.closed()) return;
  std::deque<Conn*> ready = accepts_.Close(CancelledError("listener closed"));
  std::vector<Conn*> drop(pending_.begin(), pending_.end());
  drop.insert(drop.end(), ready.begin(), ready.end());
  pending_.clear();
  for (Conn* c : drop) {
    c->listener_ = nullptr;
    c->in_listener_ = false;
    c->user_owned_ = false;
    c->Fail(CancelledError("listener closed"));
    if (c->Reapable()) t_.ScheduleReap(c);
  }
  id_.Reset();  // also drops connect requests still queued for it
}

// ----------------------------------------------------------------- pollers

int CqPoller::Poll() { return t_.PollCq(); }
int CqPoller::fd() const {
  return t_.opts_.completion == CompletionMode::kPolling ? t_.poll_fd_ : t_.comp_channel_->fd;
}
int CmPoller::Poll() {
  // rdmacm events are rare (connect, disconnect) and each look is a system
  // call (a non-blocking read of the event channel): a busy worker looks once
  // per kCmPollInterval, so the look does not depend on how fast its loop
  // spins. Under TCG a round trip took ~50 polls, so a look every 64 polls
  // was nearly one system call per call. Without a TSC a clock read may itself
  // be a system call: count polls instead.
  if (clock_.tsc()) {
    const uint64_t now = clock_.Now();
    // now < last_check_: the TSC went back (another CPU's, a resumed VM): look.
    if (now >= last_check_ && now - last_check_ < interval_ticks_) return 0;
    last_check_ = now;
  } else if (++polls_ % kCmPollEvery != 0) {
    return 0;
  }
  return t_.PollCm();
}
int CmPoller::fd() const { return t_.cm_channel_->fd; }

int TransportImpl::PollCq() {
  if (!refill_conns_.empty()) {
    // Slots handed out in the previous round: refilled now, after the woken
    // coroutines ran (their replies are already posted).
    refilling_.swap(refill_conns_);
    for (Conn* c : refilling_) c->Refill();
    refilling_.clear();
  }
  if (!srq_starved_.empty()) RetryStarvedSrqSlots();
  int total = 0;
  const bool blocking = opts_.completion == CompletionMode::kBlocking;
  ibv_wc wcs[32];
  for (int round = 0; round < 2; ++round) {
    for (int iter = 0; iter < 8; ++iter) {
      const int n = ibv_poll_cq(cq_.get(), 32, wcs);
      if (n <= 0) break;
      total += n;
      for (int i = 0; i < n; ++i) {
        const ibv_wc& wc = wcs[i];
        if (wc.wr_id & kRecvFlag) {
          if (wc.wr_id == kDrainRqId) {
            if (Conn* c = ConnFor(wc.qp_num)) {
              c->rq_drained_ = true;
              c->CheckDrained();
            }
            continue;
          }
          if (wc.wr_id & kSrqFlag) {
            const uint32_t idx = static_cast<uint32_t>(wc.wr_id & kSlotMask);
            mempool::Buffer b = std::move(srq_slots_[idx]);
            const bool handed_out = wc.status == IBV_WC_SUCCESS && wc.byte_len > 0;
            if (handed_out) {
              if (!RefillSrqSlot(idx)) {
                srq_starved_.push_back(idx);
                ArmRefillRetry();  // a sleeping worker must come back to retry
              }
            } else {
              srq_slots_[idx] = b;
              Status s = PostSrqSlot(idx);
              if (!s.ok()) SPDLOG_WARN("rdma: SRQ repost failed: {}", s.ToString());
            }
            if (Conn* c = ConnFor(wc.qp_num)) c->OnRecvWc(wc, std::move(b));
            continue;
          }
          if (Conn* c = ConnFor(wc.qp_num)) c->OnRqWc(wc);
          continue;
        }
        if (Conn* c = ConnFor(wc.qp_num)) c->OnSendWc(wc);
      }
      if (n < 32) break;
    }
    if (blocking && cq_armed_ && (total > 0 || (++idle_polls_ & 63) == 0)) {
      // The armed CQ fired (or may have): consume the event so the
      // level-triggered channel fd does not stay readable. When it has not
      // arrived yet, a later idle poll picks it up.
      ibv_cq* ev_cq = nullptr;
      void* ev_ctx = nullptr;
      if (ibv_get_cq_event(comp_channel_.get(), &ev_cq, &ev_ctx) == 0) {
        ++unacked_cq_events_;
        cq_armed_ = false;
      }
    }
    if (!blocking || total > 0 || cq_armed_) break;
    // Empty: arm, then poll once more — a completion that arrived between the
    // poll and the arming raises no event.
    ibv_req_notify_cq(cq_.get(), 0);
    cq_armed_ = true;
    idle_polls_ = 0;
  }
  if (unacked_cq_events_ >= 64) {
    ibv_ack_cq_events(cq_.get(), unacked_cq_events_);
    unacked_cq_events_ = 0;
  }
  return total;
}

int TransportImpl::PollCm() {
  int handled = 0;
  for (;;) {
    rdma_cm_event* e = nullptr;
    if (rdma_get_cm_event(cm_channel_.get(), &e) != 0) break;
    CmEv ev;
    ev.type = e->event;
    ev.status = e->status;
    ev.id = e->id;
    ev.listen_id = e->listen_id;
    const void* pd = e->param.conn.private_data;
    if (pd != nullptr && e->param.conn.private_data_len >= sizeof(Hello)) {
      Hello h;
      std::memcpy(&h, pd, sizeof h);
      if (h.magic == kHelloMagic) {
        h.reason[sizeof h.reason - 1] = '\0';
        ev.hello = h;
      }
    }
    rdma_ack_cm_event(e);  // before any handler may destroy the id
    ++handled;
    if (ev.type == RDMA_CM_EVENT_CONNECT_REQUEST) {
      auto* l = static_cast<ListenerImpl*>(static_cast<CmTarget*>(ev.listen_id->context));
      l->OnRequest(ev);
    } else if (ev.id != nullptr && ev.id->context != nullptr) {
      static_cast<CmTarget*>(ev.id->context)->OnCmEvent(ev);
    }
  }
  return handled;
}

Conn* TransportImpl::NewConn(bool active) {
  auto c = std::make_unique<Conn>(*this, active);
  Conn* p = c.get();
  conns_.emplace(p, std::move(c));
  return p;
}

void TransportImpl::ScheduleReap(Conn* c) {
  // Deferred to a coroutine queued after every waiter this connection woke, so
  // none of them can resume into a deleted Conn.
  sched_.Spawn(
      [this, c, alive = std::weak_ptr<bool>(alive_)] {
        if (alive.expired()) return;
        auto it = conns_.find(c);
        if (it == conns_.end() || !c->Reapable()) return;
        if (c->id_ && c->id_.qp() != nullptr) Unregister(c->id_.qp()->qp_num);
        if (c->in_refill_list_) std::erase(refill_conns_, c);
        cq_budget_used_ -= std::min(cq_budget_used_, c->cq_budget_);
        conns_.erase(it);
      },
      "rdma-reap");
}

void TransportImpl::ArmLiveness() {
  if (liveness_armed_) return;
  liveness_armed_ = true;
  const TransportOptions& o = opts_.common;
  const auto tick = std::max(std::chrono::milliseconds(5), std::min(o.keepalive_interval, o.dead_peer_timeout / 4));
  liveness_timer_ = sched_.AddTimer(Clock::now() + tick, [this, alive = std::weak_ptr<bool>(alive_)] {
    if (alive.expired()) return;
    liveness_armed_ = false;
    LivenessTick();
  });
}

void TransportImpl::LivenessTick() {
  const Clock::time_point now = Clock::now();
  std::vector<Conn*> open;
  for (auto& [p, c] : conns_) {
    if (c->state_ == Conn::State::kEstablished && c->status_.ok()) open.push_back(p);
  }
  for (Conn* c : open) c->LivenessTick(now);  // may fail some: they stay in conns_ until reaped
  for (Conn* c : open) {
    if (c->status_.ok()) {
      ArmLiveness();  // idle transports (no open connection) need no timer
      break;
    }
  }
}

Status TransportImpl::EnsureCqRoom(uint32_t more) {
  const uint32_t need = cq_budget_used_ + more;
  if (need > cq_size_) {
    const uint32_t max = domain_->device().max_cqe;
    uint32_t want = std::max(need, std::min(cq_size_ * 2, max));
    if (want > max) return ResourceExhaustedError("CQ would need " + std::to_string(need) + " entries (max " +
                                                  std::to_string(max) + "): too many connections on one worker");
    const int rc = ibv_resize_cq(cq_.get(), static_cast<int>(want));
    if (rc != 0) return ErrnoStatus(rc, "ibv_resize_cq");
    cq_size_ = static_cast<uint32_t>(cq_->cqe);
  }
  cq_budget_used_ += more;
  return Status::Ok();
}

Status TransportImpl::PostSrqSlot(uint32_t idx) {
  mempool::Buffer& b = srq_slots_[idx];
  ibv_sge sge{reinterpret_cast<uint64_t>(b.data()), static_cast<uint32_t>(b.size()), b.key(slot_).lkey};
  ibv_recv_wr wr{};
  wr.wr_id = kRecvFlag | kSrqFlag | idx;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  const int rc = ibv_post_srq_recv(srq_.get(), &wr, &bad);
  if (rc != 0) return ErrnoStatus(rc, "ibv_post_srq_recv");
  return Status::Ok();
}

bool TransportImpl::RefillSrqSlot(uint32_t idx) {
  auto fresh = AllocRecvBuffer();
  if (!fresh.ok()) {
    ctr().receive_refill_failures.Add();
    if (!srq_starved_warned_) {
      SPDLOG_WARN("rdma: cannot refill an SRQ slot ({}); retrying, senders may see RNR meanwhile",
                  fresh.status().ToString());
      srq_starved_warned_ = true;
    }
    return false;
  }
  srq_starved_warned_ = false;
  srq_slots_[idx] = std::move(fresh).value();
  Status s = PostSrqSlot(idx);
  if (!s.ok()) SPDLOG_WARN("rdma: SRQ repost failed: {}", s.ToString());
  return true;
}

void TransportImpl::RetryStarvedSrqSlots() {
  size_t kept = 0;
  for (size_t i = 0; i < srq_starved_.size(); ++i) {
    if (!RefillSrqSlot(srq_starved_[i])) srq_starved_[kept++] = srq_starved_[i];
  }
  srq_starved_.resize(kept);
  if (!srq_starved_.empty()) ArmRefillRetry();
}

Status TransportImpl::Init() {
  const auto& c = opts_.common;
  HRPC_TRY(internal::CheckFaults(c.faults, kFaults, "rdma"));
  faults_.Set(c.faults);
  if (c.max_message_bytes == 0 || c.recv_depth == 0 || c.recv_depth > kMaxRecvDepth) {
    return InvalidArgumentError("RdmaOptions: max_message_bytes must be > 0 and recv_depth in [1, 65536]");
  }
  if (c.keepalive_interval.count() <= 0 || c.dead_peer_timeout <= c.keepalive_interval) {
    return InvalidArgumentError("RdmaOptions: need 0 < keepalive_interval < dead_peer_timeout");
  }
  if (opts_.signal_interval == 0 || opts_.sq_depth < 2 * opts_.signal_interval + 1) {
    return InvalidArgumentError("RdmaOptions: need sq_depth >= 2 * signal_interval + 1 (unsignaled WQEs hold "
                                "SQ slots until a later signaled one completes)");
  }
  if (opts_.domain) {
    if (&opts_.domain->pool() != &pool_) return FailedPreconditionError("RdmaOptions.domain belongs to another pool");
    domain_ = opts_.domain;
  } else {
    HRPC_ASSIGN_OR_RETURN(domain_, RdmaDomain::Open(pool_, opts_.domain_options));
  }
  slot_ = domain_->registrar_slot();
  const RdmaDeviceInfo& dev = domain_->device();
  cm_channel_.reset(rdma_create_event_channel());
  if (!cm_channel_) return ErrnoStatus(errno, "rdma_create_event_channel");
  fcntl(cm_channel_->fd, F_SETFL, fcntl(cm_channel_->fd, F_GETFL) | O_NONBLOCK);
  comp_channel_.reset(ibv_create_comp_channel(domain_->context()));
  if (!comp_channel_) return ErrnoStatus(errno, "ibv_create_comp_channel");
  fcntl(comp_channel_->fd, F_SETFL, fcntl(comp_channel_->fd, F_GETFL) | O_NONBLOCK);
  const int cqe = static_cast<int>(std::min(opts_.cq_depth, dev.max_cqe));
  cq_.reset(ibv_create_cq(domain_->context(), cqe, nullptr, comp_channel_.get(), 0));
  if (!cq_) return ErrnoStatus(errno, "ibv_create_cq");
  cq_size_ = static_cast<uint32_t>(cq_->cqe);
  if (opts_.use_srq) {
    ibv_srq_init_attr sa{};
    sa.attr.max_wr = std::min(opts_.srq_depth, dev.max_srq_wr);
    sa.attr.max_sge = 1;
    srq_.reset(ibv_create_srq(domain_->pd(), &sa));
    if (!srq_) return ErrnoStatus(errno, "ibv_create_srq");
    HRPC_TRY(EnsureCqRoom(sa.attr.max_wr));
    srq_slots_.resize(sa.attr.max_wr);
    for (uint32_t i = 0; i < sa.attr.max_wr; ++i) {
      HRPC_ASSIGN_OR_RETURN(srq_slots_[i], AllocRecvBuffer());
      HRPC_TRY(PostSrqSlot(i));
    }
  }
  if (opts_.completion == CompletionMode::kPolling) {
    poll_fd_ = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);  // never read: stays readable
    if (poll_fd_ < 0) return ErrnoStatus(errno, "eventfd");
  }
  sched_.AddPoller(&cq_poller_);
  sched_.AddPoller(&cm_poller_);
  pollers_added_ = true;
  return Status::Ok();
}

TransportImpl::~TransportImpl() {
  if (liveness_armed_) sched_.CancelTimer(liveness_timer_);
  *alive_ = false;
  alive_.reset();
  // Fail every connection still alive (the user's handles must be gone by now),
  // then drain their QPs before freeing anything the hardware might touch.
  for (auto& [p, c] : conns_) {
    c->user_owned_ = false;
    c->in_listener_ = false;
    c->Fail(CancelledError("transport destroyed"));
  }
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(2);
  auto all_drained = [&] {
    for (auto& [p, c] : conns_) {
      if (!c->drained_) return false;
    }
    return true;
  };
  while (!all_drained() && Clock::now() < deadline) {
    cq_armed_ = true;  // do not re-arm while tearing down
    PollCq();
    PollCm();
  }
  if (pollers_added_) {
    sched_.RemovePoller(&cq_poller_);
    sched_.RemovePoller(&cm_poller_);
  }
  refill_conns_.clear();
  conns_.clear();
  by_qpn_.clear();
  last_conn_ = nullptr;
  srq_.reset();
  srq_slots_.clear();
  if (cq_ && unacked_cq_events_ > 0) ibv_ack_cq_events(cq_.get(), unacked_cq_events_);
  // Consume a last event if one is pending, so the count acked matches.
  if (cq_ && comp_channel_) {
    ibv_cq* ev_cq = nullptr;
    void* ev_ctx = nullptr;
    while (ibv_get_cq_event(comp_channel_.get(), &ev_cq, &ev_ctx) == 0) ibv_ack_cq_events(cq_.get(), 1);
  }
  cq_.reset();
  comp_channel_.reset();
  cm_channel_.reset();
  if (poll_fd_ >= 0) close(poll_fd_);
}

Result<std::unique_ptr<Listener>> TransportImpl::Listen(std::string_view uri) {
  HRPC_ASSIGN_OR_RETURN(Uri u, ParseUri(uri));
  if (u.scheme != "rdma") return InvalidArgumentError("rdma transport: URI '" + std::string(uri) + "' is not rdma://");
  auto addrs = Resolver::Default().Resolve(u.host, u.port, AF_INET, Clock::now() + opts_.common.connect_timeout);
  if (!addrs.ok()) return Status(StatusCode::kInvalidArgument, addrs.status().WithContext("rdma Listen").message());
  const std::string port = std::to_string(u.port);
  auto l = std::make_unique<ListenerImpl>(*this);
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(cm_channel_.get(), &id, static_cast<CmTarget*>(l.get()), RDMA_PS_TCP) != 0) {
    return ErrnoStatus(errno, "rdma_create_id");
  }
  l->id_ = CmId(id);
  const int rc = rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&addrs->front().addr));
  const int err = errno;
  if (rc != 0) return ErrnoStatus(err, "rdma_bind_addr(" + u.host + ":" + port + ")");
  if (id->verbs != nullptr && id->verbs != domain_->context()) {
    return FailedPreconditionError(u.host + " is on device " + std::string(ibv_get_device_name(id->verbs->device)) +
                                   ", this transport uses " + domain_->device().name);
  }
  if (rdma_listen(id, 1024) != 0) return ErrnoStatus(errno, "rdma_listen");
  u.port = ntohs(rdma_get_src_port(id));
  l->uri_ = u.ToString();
  return std::unique_ptr<Listener>(std::move(l));
}

Result<std::unique_ptr<Connection>> TransportImpl::Connect(std::string_view uri) {
  HRPC_ASSIGN_OR_RETURN(Uri u, ParseUri(uri));
  if (u.scheme != "rdma") return InvalidArgumentError("rdma transport: URI '" + std::string(uri) + "' is not rdma://");
  const Clock::time_point deadline = Clock::now() + opts_.common.connect_timeout;
  auto addrs = Resolver::Default().Resolve(u.host, u.port, AF_INET, deadline);
  if (!addrs.ok()) return addrs.status().WithContext("rdma Connect");
  sockaddr_storage dst = addrs->front().addr;

  Conn* c = NewConn(true);
  c->peer_ = u.ToString();
  // A transport destroyed while this coroutine waits frees `c` and itself:
  // after each wait, nothing of either is touched once `alive` has expired.
  const std::weak_ptr<bool> alive = alive_;
  const std::string peer = c->peer_;
  // On any failure below, hand the core to the reaper.
  auto fail = [&](Status s) -> Status {
    if (alive.expired()) return s;
    ctr().connect_failures.Add();
    c->user_owned_ = false;
    c->Fail(s);
    if (c->Reapable()) ScheduleReap(c);
    return s;
  };
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(cm_channel_.get(), &id, static_cast<CmTarget*>(c), RDMA_PS_TCP) != 0) {
    return fail(ErrnoStatus(errno, "rdma_create_id"));
  }
  c->id_ = CmId(id);
  auto wait_event = [&](rdma_cm_event_type want, std::string_view step) -> Status {
    Parked p;
    c->cm_waiter_ = &p;
    c->cm_event_.reset();
    Status s = p.WaitUntil(deadline);
    if (alive.expired()) return CancelledError("rdma Connect to " + peer + ": transport destroyed");
    if (!p.done) {
      c->cm_waiter_ = nullptr;
      return DeadlineExceededError("rdma Connect to " + c->peer_ + ": timed out in " + std::string(step));
    }
    if (!s.ok()) return s;
    const CmEv& ev = *c->cm_event_;
    if (ev.type == want) return Status::Ok();
    if (ev.type == RDMA_CM_EVENT_REJECTED) {
      if (ev.hello && ev.hello->kind == kHelloReject) {
        return FailedPreconditionError("rdma Connect to " + c->peer_ + ": rejected by the peer: " + ev.hello->reason);
      }
      return UnavailableError("rdma Connect to " + c->peer_ + ": rejected (nobody listens?) status " +
                              std::to_string(ev.status));
    }
    return UnavailableError("rdma Connect to " + c->peer_ + ": " + std::string(step) + " failed: " +
                            rdma_event_str(ev.type) + " status " + std::to_string(ev.status));
  };
  const int timeout_ms =
      static_cast<int>(std::clamp<int64_t>(opts_.common.connect_timeout.count(), 100, 5000));
  if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(&dst), timeout_ms) != 0) {
    return fail(UnavailableError(ErrnoStatus(errno, "rdma_resolve_addr").message()));
  }
  if (Status s = wait_event(RDMA_CM_EVENT_ADDR_RESOLVED, "address resolution"); !s.ok()) return fail(s);
  if (rdma_resolve_route(id, timeout_ms) != 0) {
    return fail(UnavailableError(ErrnoStatus(errno, "rdma_resolve_route").message()));
  }
  if (Status s = wait_event(RDMA_CM_EVENT_ROUTE_RESOLVED, "route resolution"); !s.ok()) return fail(s);
  c->SetLimits(opts_.common.max_message_bytes, opts_.common.recv_depth);
  c->state_ = Conn::State::kConnecting;
  if (Status s = c->CreateQp(); !s.ok()) return fail(s);
  if (Status s = c->PostInitialRecvs(); !s.ok()) return fail(s);
  Hello h;
  h.kind = kHelloRequest;
  h.max_message_bytes = opts_.common.max_message_bytes;
  h.recv_depth = opts_.common.recv_depth;
  rdma_conn_param p{};
  p.private_data = &h;
  p.private_data_len = sizeof h;
  const uint32_t rd = std::min<uint32_t>(opts_.max_rd_atomic, domain_->device().max_qp_rd_atom);
  p.responder_resources = static_cast<uint8_t>(std::min<uint32_t>(rd, 255));
  p.initiator_depth = p.responder_resources;
  p.retry_count = opts_.retry_count;
  p.rnr_retry_count = opts_.rnr_retry;
  if (rdma_connect(id, &p) != 0) return fail(UnavailableError(ErrnoStatus(errno, "rdma_connect").message()));
  c->connected_ = true;
  if (Status s = wait_event(RDMA_CM_EVENT_ESTABLISHED, "connect"); !s.ok()) {
    return fail(s);
  }
  const CmEv& ev = *c->cm_event_;
  if (!ev.hello || ev.hello->kind != kHelloAccept || ev.hello->version != kHelloVersion ||
      ev.hello->max_message_bytes == 0 || ev.hello->recv_depth == 0 ||
      ev.hello->max_message_bytes > opts_.common.max_message_bytes ||
      ev.hello->recv_depth > opts_.common.recv_depth) {
    return fail(FailedPreconditionError("rdma Connect to " + c->peer_ + ": bad hello in the accept"));
  }
  c->SetLimits(ev.hello->max_message_bytes, ev.hello->recv_depth);
  c->state_ = Conn::State::kEstablished;
  c->StartLiveness(Clock::now());
  ctr().connected.Add();
  c->MaybeSendCredits();  // messages may have been taken before ESTABLISHED was seen
  return std::unique_ptr<Connection>(std::make_unique<RdmaConnection>(c));
}

}  // namespace

std::optional<RdmaConnectionStats> RdmaStatsOf(const Connection& c) {
  const auto* r = dynamic_cast<const RdmaConnection*>(&c);
  if (r == nullptr) return std::nullopt;
  RdmaConnectionStats s = r->core().stats_;
  s.send_credits = r->core().send_credits();
  s.sq_waiters = r->core().sq_waiting();
  return s;
}

std::optional<RdmaTransportStats> RdmaTransportStatsOf(const Transport& t) {
  const auto* r = dynamic_cast<const TransportImpl*>(&t);
  if (r == nullptr) return std::nullopt;
  RdmaTransportStats s;
  s.connections = static_cast<uint32_t>(r->conns_.size());
  s.cq_entries_reserved = r->cq_budget_used_;
  s.cq_entries = r->cq_size_;
  return s;
}

std::shared_ptr<RdmaDomain> RdmaDomainOf(const Transport& t) {
  const auto* r = dynamic_cast<const TransportImpl*>(&t);
  return r != nullptr ? r->domain_ : nullptr;
}

Result<std::unique_ptr<Transport>> CreateRdmaTransport(coro::Scheduler& scheduler, mempool::Pool& pool,
                                                       RdmaOptions options) {
  auto t = std::make_unique<TransportImpl>(scheduler, pool, std::move(options));
  HRPC_TRY(t->Init());
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace hrpc::transport
