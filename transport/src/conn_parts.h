// Per-connection building blocks shared by the three transports (tcp,
// loopback, rdma): send credits with their parked senders, the inbox of
// received messages with its parked receivers, a listener's accept queue, and
// (tcp, loopback) the table of one-sided ops in flight with the bounded set of
// op slots callers park on. Each block finishes everything parked on it with
// the connection's Status in FailAll(). Single-threaded: used only on the
// connection's worker.
//
// The blocks that park are templates over the parked coroutine's type P (or a
// waiter W deriving from it): it has `void Finish(Status)` and `Status Wait()`.
// tcp and loopback use internal::Parked (exposure.h); rdma its own, built on a
// LocalEvent (no atomics on the path of every message).
//
// RDMA keeps its one-sided ops out of OpTable/OpSlots: each op is a chain of
// work requests whose completion is found by the work-request sequence
// number in wr_id (signaled completions retire every earlier request too, in
// send-queue order), not by an op id on the wire; and what bounds them is
// the room in the send queue, which they share with messages, memory-window
// binds and invalidations (Conn::Reserve), not a count of ops.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <utility>

#include "exposure.h"
#include "hrpc/base/counter.h"
#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"

namespace hrpc::transport::internal {

// One-sided ops this side requested and not yet completed, by id. OpT has
// `uint64_t id` and `Parked parked`; the table does not own it (it lives in
// the requesting coroutine's frame until completed).
template <class OpT>
class OpTable {
 public:
  // Numbers `op` (ids start at 1: 0 means "the connection" on the wire) and
  // files it.
  uint64_t Add(OpT* op) {
    op->id = next_++;
    ops_[op->id] = op;
    return op->id;
  }
  OpT* Find(uint64_t id) const {
    auto it = ops_.find(id);
    return it == ops_.end() ? nullptr : it->second;
  }
  // Finishes and forgets op `id`; false when it is not (or no longer) here.
  bool Complete(uint64_t id, Status s) {
    auto it = ops_.find(id);
    if (it == ops_.end()) return false;
    OpT* op = it->second;
    ops_.erase(it);
    op->parked.Finish(std::move(s));
    return true;
  }
  // The connection failed: every op completes with `s`.
  void FailAll(const Status& s) {
    auto ops = std::exchange(ops_, {});
    for (auto& [id, op] : ops) op->parked.Finish(s);
  }

 private:
  uint64_t next_ = 1;
  std::unordered_map<uint64_t, OpT*> ops_;
};

// TransportOptions::max_outstanding_ops: how many one-sided ops a connection
// may have outstanding; more callers park here in FIFO order.
class OpSlots {
 public:
  explicit OpSlots(uint32_t max = 1) : max_(max) {}
  void set_max(uint32_t max) { max_ = max; }
  // OK once the caller holds a slot (counts a stall in `stalls` if it had to
  // wait); the connection's error once FailAll() ran (before the call, while
  // it waited, or after a Release() woke it and before it ran).
  Status Acquire(OwnerCounter& stalls);
  // Gives a slot back, or hands it to the oldest waiter (a caller that comes
  // later does not take it first).
  void Release();
  // The connection failed: every waiter gets `s`.
  void FailAll(const Status& s);
  uint32_t outstanding() const { return used_; }

 private:
  uint32_t max_;
  uint32_t used_ = 0;
  std::deque<Parked*> waiters_;
  Status failed_;  // FailAll's, for good
};

// Send credits: how many messages the peer can still take (its free receive
// slots), and the senders parked for one. Parked senders are served oldest
// first and a new sender never overtakes them, so messages leave in Send()
// order. W derives from the parked type and carries the message: whoever hands
// a parked sender its credit also sends its message (Pump).
template <class W>
class CreditGate {
 public:
  // The connection is open: the peer has `depth` receive slots, all free.
  void Open(uint32_t depth) { depth_ = credits_ = depth; }
  uint32_t credits() const { return credits_; }
  bool has_waiters() const { return !waiters_.empty(); }
  // Takes a credit for a sender when one is free and nobody is parked ahead.
  bool TryTake() {
    if (credits_ == 0 || !waiters_.empty()) return false;
    --credits_;
    return true;
  }
  // A credit taken for a message that never reached the peer (a frame dropped
  // by fault injection): its receive slot is still free. Wakes nobody; a Pump
  // in progress goes on with it.
  void Refund() { ++credits_; }
  // Queues `w` behind the other parked senders; the caller then waits on `w`
  // (Pump finishes it with its send's Status, FailAll with the connection's).
  void Park(W& w) { waiters_.push_back(&w); }
  // The peer returned `n` credits. DATA_LOSS when it now claims more free
  // slots than it has: a protocol violation the connection must die of (the
  // count is then left as it was).
  Status Grant(uint32_t n) {
    const uint64_t total = uint64_t{credits_} + n;
    if (total > depth_) {
      return DataLossError("peer returned more credits than it has receive slots (" + std::to_string(total) +
                           " > " + std::to_string(depth_) + ")");
    }
    credits_ = static_cast<uint32_t>(total);
    return Status::Ok();
  }
  // Serves parked senders, oldest first, while a credit is free and `more()`
  // holds (e.g. the send queue has room): each takes a credit, `send(W&)` sends
  // its message, and the sender wakes with send's Status. A send that fails
  // the connection empties the queue through FailAll, which ends the loop.
  template <class Send, class More>
  void Pump(Send&& send, More&& more) {
    while (credits_ > 0 && !waiters_.empty() && more()) {
      W* w = waiters_.front();
      waiters_.pop_front();
      --credits_;
      w->Finish(send(*w));
    }
  }
  template <class Send>
  void Pump(Send&& send) {
    Pump(std::forward<Send>(send), [] { return true; });
  }
  // The connection failed: every parked sender gets `s`, its message unsent.
  void FailAll(const Status& s) {
    for (W* w : std::exchange(waiters_, {})) w->Finish(s);
  }

 private:
  uint32_t depth_ = 0;
  uint32_t credits_ = 0;
  std::deque<W*> waiters_;
};

// Items handed from the connection to coroutines parked for them: an item
// goes to the oldest parked taker, else it waits in the queue for the next
// one. The inbox and the accept queue are made of it.
template <class T, class P>
class Handoff {
 public:
  // True when the oldest parked taker got `item`, false when it was queued.
  bool Put(T item) {
    if (waiters_.empty()) {
      queue_.push_back(std::move(item));
      return false;
    }
    Waiter* w = waiters_.front();
    waiters_.pop_front();
    w->item = std::move(item);
    w->Finish(Status::Ok());
    return true;
  }
  bool empty() const { return queue_.empty(); }
  // The oldest queued item; only when !empty().
  T Take() {
    T item = std::move(queue_.front());
    queue_.pop_front();
    return item;
  }
  // Parks until Put() hands this taker an item or FailAll() ends the wait.
  Result<T> Wait() {
    Waiter w;
    waiters_.push_back(&w);
    HRPC_TRY(w.Wait());
    return std::move(w.item);
  }
  // Every parked taker gets `s`. Queued items stay.
  void FailAll(const Status& s) {
    for (Waiter* w : std::exchange(waiters_, {})) w->Finish(s);
  }
  // Empties the queue, handing its items back.
  std::deque<T> TakeAll() { return std::exchange(queue_, {}); }

 private:
  struct Waiter : P {
    T item{};
  };
  std::deque<T> queue_;
  std::deque<Waiter*> waiters_;
};

// Received messages not yet taken by Recv(), and the receivers parked for
// one. Put() says whether a parked receiver took the message (its credit may
// go back); a failed connection's FailAll() leaves the queued messages, which
// Recv() still hands out before the connection's status.
template <class P>
using Inbox = Handoff<mempool::IoBuf, P>;

// A listener's connections that finished their handshake and wait for
// Accept(), and the acceptors parked for one. T is the transport's handle on
// a connection (a shared_ptr, or a pointer to one it owns elsewhere).
template <class T, class P>
class AcceptQueue {
 public:
  bool closed() const { return closed_; }
  // A connection is ready. True when the oldest parked acceptor got it, false
  // when it was queued.
  bool Push(T conn) { return q_.Put(std::move(conn)); }
  // The oldest ready connection, at once when one is queued; else parks until
  // Push() hands one over or Close() ends the wait with its Status. The caller
  // checks closed() first (each listener words its own refusal).
  Result<T> Pop() {
    if (!q_.empty()) return q_.Take();
    return q_.Wait();
  }
  // The listener closed: every parked acceptor gets `s`; the queued
  // connections are handed back for the caller to close. Idempotent.
  std::deque<T> Close(const Status& s) {
    closed_ = true;
    q_.FailAll(s);
    return q_.TakeAll();
  }

 private:
  bool closed_ = false;
  Handoff<T, P> q_;
};

}  // namespace hrpc::transport::internal
