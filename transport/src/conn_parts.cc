#include "conn_parts.h"

namespace hrpc::transport::internal {

Status OpSlots::Acquire(OwnerCounter& stalls) {
  if (!failed_.ok()) return failed_;
  if (used_ >= max_) stalls.Add();
  while (used_ >= max_) {
    Parked w;
    waiters_.push_back(&w);
    HRPC_TRY(w.Wait());
    // Woken by a Release, but the connection may have failed before this
    // coroutine ran: its op would wait for an answer that never comes.
    if (!failed_.ok()) return failed_;
  }
  ++used_;
  return Status::Ok();
}

void OpSlots::Release() {
  --used_;
  if (waiters_.empty()) return;
  Parked* w = waiters_.front();
  waiters_.pop_front();
  w->Finish(Status::Ok());
}

void OpSlots::FailAll(const Status& s) {
  failed_ = s;
  for (Parked* w : std::exchange(waiters_, {})) w->Finish(s);
}

}  // namespace hrpc::transport::internal
