// Per-connection building blocks shared by the software transports (tcp,
// loopback): the table of one-sided ops a connection has in flight and the
// bounded set of op slots callers park on. Single-threaded: used only on the
// connection's worker. (The RDMA transport bounds its ops by send-queue slots
// and finds them by work-request sequence; it keeps its own.)
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <utility>

#include "exposure.h"
#include "hrpc/base/counter.h"
#include "hrpc/base/status.h"

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
  // wait); the connection's error when FailAll() ran meanwhile.
  Status Acquire(OwnerCounter& stalls);
  // Gives a slot back and wakes the next waiter.
  void Release();
  // The connection failed: every waiter gets `s`.
  void FailAll(const Status& s);
  uint32_t outstanding() const { return used_; }

 private:
  uint32_t max_;
  uint32_t used_ = 0;
  std::deque<Parked*> waiters_;
};

}  // namespace hrpc::transport::internal
