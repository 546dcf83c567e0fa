// loop://name — the in-process transport. Each endpoint's state is touched
// only on its own worker; everything that crosses to the peer travels as a
// coroutine posted to the peer's scheduler (the simulated wire), so the ends
// may live on different workers. The simulated NIC copies with CountedCopy:
// into a fresh receive buffer from the receiver's pool for a message, between
// the exposed range and the requester's IoBuf for READ/WRITE.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>

#include "conn_parts.h"
#include "exposure.h"
#include "faults.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/transport/loopback.h"

namespace hrpc::transport {
namespace {

using internal::Parked;

// The faults set for one listener name (LoopbackNetwork::SetFaults).
struct FaultState {
  internal::FaultInjector inj;
  std::atomic<uint64_t> dropped{0};
  std::atomic<uint64_t> corrupted{0};
};

// Messages of one transport posted to a receiving worker and not yet placed
// (their bytes are still the sender's pool blocks): the transport waits for
// them before it goes, so its pool, destroyed after it, is never read or
// freed into once gone.
using InFlightCount = std::shared_ptr<std::atomic<int64_t>>;

class InFlight {
 public:
  InFlight() = default;
  explicit InFlight(InFlightCount c) : c_(std::move(c)) {
    if (c_) c_->fetch_add(1, std::memory_order_relaxed);
  }
  InFlight(InFlight&& o) noexcept : c_(std::move(o.c_)) {}
  InFlight& operator=(InFlight&& o) noexcept {
    Drop();
    c_ = std::move(o.c_);
    return *this;
  }
  ~InFlight() { Drop(); }

 private:
  void Drop() {
    if (c_) c_->fetch_sub(1, std::memory_order_release);
    c_.reset();
  }
  InFlightCount c_;
};

// One message on the simulated wire: its bytes as sent (perhaps damaged by a
// fault) and what the sender put in its frame, checked by the receiver.
struct WireMsg {
  InFlight in_flight;  // declared first: released after the bytes
  mempool::IoBuf bytes;
  uint64_t seq = 0;
  size_t len = 0;
  uint32_t crc = 0;
};

// Shared by the two ends of one connection.
struct Link {
  std::shared_ptr<FaultState> faults;
  std::atomic<int64_t> messages{0};
};

struct SendWaiter : Parked {  // Send() waiting for a credit
  mempool::IoBuf msg;
};

struct LoopEnd;

// The scheduler a transport's ends are posted to (arriving messages, credits,
// completions). The transport clears it when it is destroyed, which is before
// its worker is: a peer on another runtime may still post to an end of a
// runtime that is going away, and such a post is dropped. Post() says so
// (false); a caller that would wait for what the post does fails instead.
struct SchedRef {
  std::mutex mu;
  coro::Scheduler* sched = nullptr;

  bool Post(std::function<void()> fn, std::string_view name) {
    {
      std::lock_guard lock(mu);
      if (sched != nullptr) {
        sched->Post(std::move(fn), name);
        return true;
      }
    }
    return false;  // dropped: its captures die here, outside the lock (they may post again)
  }
};

struct Op {
  uint64_t id = 0;
  Parked parked;
};

// A one-sided op's copy on the peer's worker: not started, running, or over
// (done, or never to start).
enum class CopyState : uint8_t { kPending, kCopying, kOver };

struct LoopEnd : std::enable_shared_from_this<LoopEnd> {
  std::shared_ptr<SchedRef> sched;
  mempool::Pool* pool = nullptr;
  std::string peer_name;
  Limits limits;
  std::weak_ptr<LoopEnd> peer;
  std::shared_ptr<Link> link;
  std::shared_ptr<internal::FaultInjector> faults;  // this end's transport's
  uint64_t tx_seq = 0;
  internal::SeqFilter rx_seq;
  // The counters of the transport this end belongs to (its worker's).
  std::shared_ptr<TransportCounters> ctr = std::make_shared<TransportCounters>();
  InFlightCount in_flight;  // that transport's
  bool opened = false;  // handed to its owner (connected / accepted)

  bool closed = false;
  Status status;
  internal::CreditGate<SendWaiter> credits;
  internal::Inbox<Parked> inbox;
  internal::OpTable<Op> ops;
  internal::OpSlots op_slots;
  internal::ExposureTable expo;

  // Own thread only.
  void Fail(Status s) {
    if (closed) return;
    closed = true;
    if (opened) {
      // The loopback cannot tell an orderly close from a fault-injected break:
      // UNAVAILABLE counts as closed by the peer.
      if (s.code() == StatusCode::kCancelled) {
        ctr->closed_local.Add();
      } else if (s.code() == StatusCode::kUnavailable) {
        ctr->closed_by_peer.Add();
      } else {
        ctr->failed.Add();
      }
    }
    status = std::move(s);
    expo.Clear();
    ops.FailAll(status);
    credits.FailAll(status);
    inbox.FailAll(status);
    op_slots.FailAll(status);
  }

  // Any thread: fail the peer on its own worker.
  void FailPeer(Status s) {
    if (auto p = peer.lock()) {
      p->sched->Post([p, s = std::move(s)]() mutable { p->Fail(std::move(s)); }, "loop-fail");
    }
  }

  void GrantCredits(uint32_t n) {
    if (closed) return;
    if (Status s = credits.Grant(n); !s.ok()) {
      Abort(std::move(s));
      return;
    }
    credits.Pump([this](SendWaiter& w) { return Transmit(std::move(w.msg)); });
  }

  // Puts one message on the wire (a credit was taken for it).
  Status Transmit(mempool::IoBuf msg) {
    auto p = peer.lock();
    if (!p) {
      Fail(UnavailableError("loopback peer " + peer_name + " is gone"));
      return status;
    }
    const int64_t n = link->messages.fetch_add(1) + 1;
    ++tx_seq;
    WireMsg w;
    w.seq = tx_seq;
    w.len = msg.size();
    w.crc = internal::MessageCrc(msg, msg.size());
    internal::FaultAction fault;
    std::chrono::microseconds delay{0};
    FaultState& named = *link->faults;
    // The listener name's faults count messages in both directions; the
    // transport's, the messages this end sent.
    for (auto [inj, count] : {std::pair{&named.inj, n}, std::pair{faults.get(), static_cast<int64_t>(tx_seq)}}) {
      if (!inj->armed()) continue;
      if (const int64_t after = inj->disconnect_after(); after >= 0 && count > after) {
        ctr->faults_disconnects.Add();
        Status s = UnavailableError("loopback fault: connection to " + peer_name + " broken after " +
                                    std::to_string(after) + " messages");
        SPDLOG_INFO("hrpc loop: {}", s.message());
        FailPeer(s);
        Fail(s);
        return status;
      }
      const internal::FaultAction a = inj->OnMessage(msg.size(), *ctr);
      if (inj == &named.inj) {
        if (a.drop) named.dropped.fetch_add(1);
        if (a.corrupt || a.truncate) named.corrupted.fetch_add(1);
      }
      fault.drop |= a.drop;
      fault.duplicate |= a.duplicate;
      fault.truncate |= a.truncate;
      fault.corrupt |= a.corrupt;
      delay = std::max(delay, inj->Delay(*ctr));
      if (fault.drop) break;
    }
    if (fault.drop) {
      credits.Refund();  // the receive slot was never used
      return Status::Ok();
    }
    ctr->messages_sent.Add();
    ctr->message_bytes_sent.Add(msg.size());
    if (fault.truncate || fault.corrupt) {
      auto damaged = internal::Damage(std::move(msg), fault, *pool, w.crc);
      if (!damaged.ok()) {
        Fail(damaged.status().WithContext("fault injection"));
        return status;
      }
      msg = std::move(*damaged);
    }
    w.bytes = std::move(msg);
    w.in_flight = InFlight(in_flight);
    auto m = std::make_shared<WireMsg>(std::move(w));
    std::weak_ptr<LoopEnd> self = weak_from_this();
    for (int copies = fault.duplicate ? 2 : 1; copies > 0; --copies) {
      const bool posted = p->sched->Post(
          [p, m, delay, self] {
            if (delay.count() > 0) coro::this_coro::SleepFor(delay);
            p->Arrive(*m, self);
          },
          "loop-msg");
      if (!posted) {
        Fail(UnavailableError("loopback peer " + peer_name + ": its transport was destroyed"));
        return status;
      }
    }
    return Status::Ok();
  }

  // Own thread: the receiving end gives up on the connection (DATA_LOSS,
  // RESOURCE_EXHAUSTED); the sender sees it end.
  void Abort(Status s) {
    SPDLOG_WARN("hrpc loop: closing connection {}: {}", peer_name, s.ToString());
    FailPeer(UnavailableError("peer " + peer_name + " closed the connection: " + std::string(s.message())));
    Fail(std::move(s));
  }

  // Own thread: the simulated NIC places a message into a receive buffer.
  void Arrive(const WireMsg& wire, const std::weak_ptr<LoopEnd>& sender) {
    if (closed) return;
    if (!rx_seq.Accept(wire.seq)) {
      ctr->duplicates_discarded.Add();  // a copy of a delivered message: no slot, no credit
      return;
    }
    if (wire.bytes.size() != wire.len) {
      ctr->corrupt_messages.Add();
      Abort(DataLossError("message from " + peer_name + " truncated to " + std::to_string(wire.bytes.size()) +
                          " of " + std::to_string(wire.len) + " bytes"));
      return;
    }
    if (Status ok = internal::CheckMessage(wire.bytes, wire.len, wire.crc, peer_name); !ok.ok()) {
      ctr->corrupt_messages.Add();
      Abort(std::move(ok));
      return;
    }
    ctr->messages_received.Add();
    ctr->message_bytes_received.Add(wire.len);
    mempool::IoBuf msg;
    if (!wire.bytes.empty()) {
      Result<mempool::Buffer> buf = ResourceExhaustedError("fault injection: receive buffer refused");
      if (!faults->RefuseAllocation(*ctr) && !link->faults->inj.RefuseAllocation(*ctr)) {
        buf = pool->Allocate(wire.len);
      }
      if (!buf.ok()) {
        Abort(buf.status().WithContext("loopback receive buffer"));
        return;
      }
      wire.bytes.CopyTo(buf->data(), 0, wire.len);
      msg = mempool::IoBuf(std::move(*buf));
    }
    if (inbox.Put(std::move(msg))) ReturnCredit(sender);
  }

  void ReturnCredit(const std::weak_ptr<LoopEnd>& sender) {
    if (auto s = sender.lock()) {
      s->sched->Post([s] { s->GrantCredits(1); }, "loop-credit");
    }
  }

  void CompleteOp(uint64_t id, Status s) { ops.Complete(id, std::move(s)); }

  std::chrono::microseconds Delay() const { return std::max(link->faults->inj.delay(), faults->delay()); }
};

struct LoopListenerState {
  std::shared_ptr<TransportCounters> ctr;  // the listening transport's
  InFlightCount in_flight;                  // the listening transport's
  std::shared_ptr<internal::FaultInjector> faults;  // the listening transport's
  std::shared_ptr<SchedRef> sched;
  mempool::Pool* pool = nullptr;
  TransportOptions opt;
  std::string name;
  internal::AcceptQueue<std::shared_ptr<LoopEnd>, Parked> accepts;  // own thread
};

class Net final : public LoopbackNetwork {
 public:
  void SetFaults(std::string_view name, const FaultPlan& plan) override {
    Faults(name)->inj.Set(plan);
  }
  uint64_t dropped(std::string_view name) const override { return Faults(name)->dropped.load(); }
  uint64_t corrupted(std::string_view name) const override { return Faults(name)->corrupted.load(); }

  std::shared_ptr<FaultState> Faults(std::string_view name) const {
    std::lock_guard lk(mu_);
    auto& f = faults_[std::string(name)];
    if (!f) f = std::make_shared<FaultState>();
    return f;
  }
  Status Bind(const std::string& name, const std::shared_ptr<LoopListenerState>& ls) {
    std::lock_guard lk(mu_);
    auto& slot = listeners_[name];
    if (slot.lock()) return AlreadyExistsError("loop://" + name + " is already listening");
    slot = ls;
    return Status::Ok();
  }
  void Unbind(const std::string& name, const LoopListenerState* ls) {
    std::lock_guard lk(mu_);
    auto it = listeners_.find(name);
    if (it != listeners_.end() && (it->second.expired() || it->second.lock().get() == ls)) listeners_.erase(it);
  }
  std::shared_ptr<LoopListenerState> Find(const std::string& name) {
    std::lock_guard lk(mu_);
    auto it = listeners_.find(name);
    return it == listeners_.end() ? nullptr : it->second.lock();
  }

 private:
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, std::shared_ptr<FaultState>> faults_;
  std::unordered_map<std::string, std::weak_ptr<LoopListenerState>> listeners_;
};

class LoopConnection final : public Connection {
 public:
  explicit LoopConnection(std::shared_ptr<LoopEnd> e) : e_(std::move(e)) {}
  ~LoopConnection() override { Close(); }

  Status Send(mempool::IoBuf message) override {
    auto e = e_;
    if (e->closed) return e->status;
    if (message.size() > e->limits.max_message_bytes) {
      return InvalidArgumentError("Send: message of " + std::to_string(message.size()) +
                                  " bytes exceeds the limit of " + std::to_string(e->limits.max_message_bytes));
    }
    if (e->credits.TryTake()) return e->Transmit(std::move(message));
    e->ctr->credit_stalls.Add();
    SendWaiter w;
    w.msg = std::move(message);
    e->credits.Park(w);
    return w.Wait();
  }

  Result<mempool::IoBuf> Recv() override {
    auto e = e_;
    if (!e->inbox.empty()) {
      mempool::IoBuf m = e->inbox.Take();
      if (!e->closed) e->ReturnCredit(e->peer);
      return m;
    }
    if (e->closed) return e->status;
    return e->inbox.Wait();
  }

  Result<RemoteDescriptor> Expose(const mempool::Buffer& buf, Access access) override {
    if (e_->closed) return e_->status;
    return e_->expo.Add(buf, access);
  }
  Status Revoke(const RemoteDescriptor& desc) override { return e_->expo.Revoke(desc); }

  Status Read(const RemoteDescriptor& src, const mempool::IoBuf& dst) override {
    if (dst.size() != src.len) {
      return InvalidArgumentError("Read: destination of " + std::to_string(dst.size()) +
                                  " bytes for a descriptor of " + std::to_string(src.len));
    }
    return OneSided(true, src, dst);
  }
  Status Write(const mempool::IoBuf& src, const RemoteDescriptor& dst) override {
    if (src.size() != dst.len) {
      return InvalidArgumentError("Write: source of " + std::to_string(src.size()) +
                                  " bytes for a descriptor of " + std::to_string(dst.len));
    }
    return OneSided(false, dst, src);
  }

  void Close() override {
    if (!e_ || e_->closed) return;
    e_->FailPeer(UnavailableError("peer " + e_->peer_name + " closed the connection"));
    e_->Fail(CancelledError("connection closed locally"));
  }
  Status status() const override { return e_->closed ? e_->status : Status::Ok(); }
  const Limits& limits() const override { return e_->limits; }
  std::string_view peer() const override { return e_->peer_name; }

 private:
  Status OneSided(bool is_read, const RemoteDescriptor& remote, const mempool::IoBuf& local) {
    auto e = e_;
    if (e->closed) return e->status;
    if (remote.len == 0) return Status::Ok();
    auto p = e->peer.lock();
    if (!p) return UnavailableError("loopback peer is gone");
    TransportCounters& ctr = *e->ctr;
    ctr.CountOp(is_read, remote.len);
    HRPC_TRY(e->op_slots.Acquire(ctr.op_slot_stalls));
    Op op;
    e->ops.Add(&op);
    auto buf = std::make_shared<mempool::IoBuf>(local.Share());
    // The copy runs on the peer's worker. An op that ends without it (its
    // connection closed here) returns only once the copy is over or can no
    // longer start: its caller may reuse the buffer at once, as after a
    // flushed RDMA work request.
    auto copy = std::make_shared<std::atomic<CopyState>>(CopyState::kPending);
    const auto delay = e->Delay();
    std::weak_ptr<LoopEnd> req = e;
    const uint64_t id = op.id;
    const bool posted = p->sched->Post(
        [p, req, buf, copy, remote, is_read, delay, id] {
          if (delay.count() > 0) coro::this_coro::SleepFor(delay);
          CopyState pending = CopyState::kPending;
          if (!copy->compare_exchange_strong(pending, CopyState::kCopying, std::memory_order_acq_rel)) return;
          Status s;
          if (p->closed) {
            s = p->status;
          } else {
            auto hit = p->expo.Check(remote.addr, remote.len, remote.key, is_read ? Access::kRead : Access::kWrite);
            if (!hit.ok()) {
              p->ctr->refused_here.Add();
              s = hit.status().WithContext("refused by " + p->peer_name);
            } else if (is_read) {
              p->ctr->reads_served.Add();
              // Target -> requester: scatter the exposed range into the IoBuf.
              size_t off = 0;
              for (size_t i = 0; i < buf->num_slices(); ++i) {
                const mempool::Buffer& b = buf->slice(i);
                mempool::CountedCopy(b.data(), hit->ptr + off, b.size());
                off += b.size();
              }
            } else {
              p->ctr->writes_served.Add();
              buf->CopyTo(hit->ptr, 0, buf->size());
            }
          }
          copy->store(CopyState::kOver, std::memory_order_release);
          if (auto r = req.lock()) {
            r->sched->Post([r, id, s = std::move(s)]() mutable { r->CompleteOp(id, std::move(s)); }, "loop-op-done");
          }
        },
        is_read ? "loop-read" : "loop-write");
    if (!posted) e->CompleteOp(id, UnavailableError("loopback peer " + e->peer_name + ": its transport was destroyed"));
    Status done = op.parked.Wait();
    if (CopyState pending = CopyState::kPending;
        !copy->compare_exchange_strong(pending, CopyState::kOver, std::memory_order_acq_rel)) {
      while (copy->load(std::memory_order_acquire) == CopyState::kCopying) {
        coro::this_coro::SleepFor(std::chrono::microseconds(50));
      }
    }
    if (IsRefusal(done.code())) ctr.refused_by_peer.Add();
    e->op_slots.Release();
    return done;
  }

  std::shared_ptr<LoopEnd> e_;
};

class LoopListener final : public Listener {
 public:
  LoopListener(std::shared_ptr<Net> net, std::shared_ptr<LoopListenerState> ls)
      : net_(std::move(net)), ls_(std::move(ls)) {}
  ~LoopListener() override { Close(); }

  Result<std::unique_ptr<Connection>> Accept() override {
    auto ls = ls_;
    if (ls->accepts.closed()) return CancelledError("listener loop://" + ls->name + " closed");
    HRPC_ASSIGN_OR_RETURN(std::shared_ptr<LoopEnd> e, ls->accepts.Pop());
    return std::unique_ptr<Connection>(new LoopConnection(std::move(e)));
  }
  std::string uri() const override { return "loop://" + ls_->name; }
  void Close() override {
    if (ls_->accepts.closed()) return;
    net_->Unbind(ls_->name, ls_.get());
    for (auto& e : ls_->accepts.Close(CancelledError("listener closed"))) {
      e->FailPeer(UnavailableError("listener closed"));
      e->Fail(CancelledError("listener closed"));
    }
  }

 private:
  std::shared_ptr<Net> net_;
  std::shared_ptr<LoopListenerState> ls_;
};

class LoopTransport final : public Transport {
 public:
  LoopTransport(std::shared_ptr<Net> net, coro::Scheduler& sched, mempool::Pool& pool, TransportOptions opt)
      : net_(std::move(net)), sched_(std::make_shared<SchedRef>()), pool_(&pool), opt_(opt),
        faults_(std::make_shared<internal::FaultInjector>(opt.faults)) {
    sched_->sched = &sched;
  }
  TransportCounters& ctr() { return *counters_; }
  const std::shared_ptr<TransportCounters>& counters() const noexcept override { return counters_; }

  std::string_view scheme() const override { return "loop"; }
  TransportCapabilities capabilities() const override { return Capabilities(); }
  static TransportCapabilities Capabilities() {
    TransportCapabilities c;
    c.cpu_copies_payload = true;
    c.faults = kFaultDrop | kFaultDuplicate | kFaultTruncate | kFaultCorrupt | kFaultDelay | kFaultRefuseAllocation |
               kFaultDisconnect;
    return c;
  }
  Status SetFaults(const FaultOptions& faults) override {
    HRPC_TRY(internal::CheckFaults(faults, Capabilities().faults, "loopback"));
    faults_->Set(faults);
    return Status::Ok();
  }

  Result<std::unique_ptr<Listener>> Listen(std::string_view uri) override {
    HRPC_ASSIGN_OR_RETURN(Uri u, ParseUri(uri));
    if (u.scheme != "loop") return InvalidArgumentError("loopback transport cannot listen on '" + std::string(uri) + "'");
    auto ls = std::make_shared<LoopListenerState>();
    ls->ctr = counters_;
    ls->in_flight = in_flight_;
    ls->faults = faults_;
    ls->sched = sched_;
    ls->pool = pool_;
    ls->opt = opt_;
    ls->name = u.host;
    HRPC_TRY(net_->Bind(u.host, ls));
    return std::unique_ptr<Listener>(new LoopListener(net_, std::move(ls)));
  }

  Result<std::unique_ptr<Connection>> Connect(std::string_view uri) override {
    HRPC_ASSIGN_OR_RETURN(Uri u, ParseUri(uri));
    if (u.scheme != "loop") return InvalidArgumentError("loopback transport cannot connect to '" + std::string(uri) + "'");
    auto ls = net_->Find(u.host);
    if (!ls) {
      ctr().connect_failures.Add();
      return UnavailableError("nobody listens on loop://" + u.host);
    }
    Limits lim{std::min(opt_.max_message_bytes, ls->opt.max_message_bytes),
               std::min(opt_.recv_depth, ls->opt.recv_depth)};
    auto link = std::make_shared<Link>();
    link->faults = net_->Faults(u.host);
    const uint64_t n = ++counter_;
    auto client = std::make_shared<LoopEnd>();
    client->ctr = counters_;
    client->in_flight = in_flight_;
    client->faults = faults_;
    client->opened = true;
    client->sched = sched_;
    client->pool = pool_;
    client->peer_name = "loop://" + u.host;
    client->op_slots.set_max(opt_.max_outstanding_ops);
    auto server = std::make_shared<LoopEnd>();
    server->ctr = ls->ctr;
    server->in_flight = ls->in_flight;
    server->faults = ls->faults;
    server->sched = ls->sched;
    server->pool = ls->pool;
    server->peer_name = "loop://" + u.host + "#client" + std::to_string(n);
    server->op_slots.set_max(ls->opt.max_outstanding_ops);
    for (auto* e : {client.get(), server.get()}) {
      e->limits = lim;
      e->credits.Open(lim.recv_depth);
      e->link = link;
    }
    client->peer = server;
    server->peer = client;
    std::weak_ptr<LoopListenerState> weak_ls = ls;
    const bool posted = ls->sched->Post(
        [weak_ls, server] {
          auto l = weak_ls.lock();
          if (!l || l->accepts.closed()) {
            server->FailPeer(UnavailableError("listener closed before accepting"));
            server->Fail(CancelledError("listener closed"));
            return;
          }
          if (!server->closed) {
            server->opened = true;
            l->ctr->accepted.Add();
          }
          l->accepts.Push(server);
        },
        "loop-accept");
    if (!posted) {
      ctr().connect_failures.Add();
      return UnavailableError("loop://" + u.host + ": the listening transport was destroyed");
    }
    ctr().connected.Add();
    ends_.push_back(client);
    return std::unique_ptr<Connection>(new LoopConnection(std::move(client)));
  }

  ~LoopTransport() override {
    for (auto& w : ends_) {
      if (auto e = w.lock(); e && !e->closed) {
        e->FailPeer(UnavailableError("peer transport destroyed"));
        e->Fail(CancelledError("transport destroyed"));
      }
    }
    // Messages still on their way hold blocks of this transport's pool, which
    // goes after it: wait for their receivers to place them (or to drop them).
    // In a coroutine the wait lets this worker place its own.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (in_flight_->load(std::memory_order_acquire) > 0 && std::chrono::steady_clock::now() < until) {
      coro::this_coro::SleepFor(std::chrono::milliseconds(1));
    }
    if (const int64_t left = in_flight_->load(); left > 0) {
      SPDLOG_WARN("hrpc loop: transport destroyed with {} messages still on their way", left);
    }
    std::lock_guard lock(sched_->mu);
    sched_->sched = nullptr;
  }

 private:
  std::shared_ptr<Net> net_;
  std::shared_ptr<SchedRef> sched_;
  mempool::Pool* pool_;
  TransportOptions opt_;
  std::shared_ptr<TransportCounters> counters_ = std::make_shared<TransportCounters>();
  InFlightCount in_flight_ = std::make_shared<std::atomic<int64_t>>(0);
  std::shared_ptr<internal::FaultInjector> faults_;
  uint64_t counter_ = 0;
  std::vector<std::weak_ptr<LoopEnd>> ends_;
};

}  // namespace

std::shared_ptr<LoopbackNetwork> LoopbackNetwork::Create() { return std::make_shared<Net>(); }

Result<std::unique_ptr<Transport>> CreateLoopbackTransport(std::shared_ptr<LoopbackNetwork> network,
                                                           coro::Scheduler& scheduler, mempool::Pool& pool,
                                                           TransportOptions options) {
  auto net = std::dynamic_pointer_cast<Net>(network);
  if (!net) return InvalidArgumentError("loopback: network was not made by LoopbackNetwork::Create()");
  if (options.recv_depth == 0 || options.max_message_bytes == 0 || options.max_outstanding_ops == 0) {
    return InvalidArgumentError("loopback: recv_depth, max_message_bytes and max_outstanding_ops must be > 0");
  }
  HRPC_TRY(internal::CheckFaults(options.faults, LoopTransport::Capabilities().faults, "loopback"));
  return std::unique_ptr<Transport>(new LoopTransport(std::move(net), scheduler, pool, options));
}

}  // namespace hrpc::transport
