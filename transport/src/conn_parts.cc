#include "conn_parts.h"

namespace hrpc::transport::internal {

Status OpSlots::Acquire(OwnerCounter& stalls) {
  if (!failed_.ok()) return failed_;
  // A free slot goes to the oldest waiter (Release hands it over): a caller
  // that comes later never takes it first.
  if (used_ < max_ && waiters_.empty()) {
    ++used_;
    return Status::Ok();
  }
  stalls.Add();
  Parked w;
  waiters_.push_back(&w);
  HRPC_TRY(w.Wait());
  // Handed a slot, but the connection may have failed before this coroutine
  // ran: its op would wait for an answer that never comes.
  if (!failed_.ok()) {
    --used_;
    return failed_;
  }
  return Status::Ok();
}

void OpSlots::Release() {
  if (waiters_.empty()) {
    --used_;
    return;
  }
  // Handed over: the slot stays used, by the oldest waiter.
  Parked* w = waiters_.front();
  waiters_.pop_front();
  w->Finish(Status::Ok());
}

void OpSlots::FailAll(const Status& s) {
  failed_ = s;
  for (Parked* w : std::exchange(waiters_, {})) w->Finish(s);
}

}  // namespace hrpc::transport::internal
