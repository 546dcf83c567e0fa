#include "conn_parts.h"

namespace hrpc::transport::internal {

Status OpSlots::Acquire(OwnerCounter& stalls) {
  if (used_ >= max_) stalls.Add();
  while (used_ >= max_) {
    Parked w;
    waiters_.push_back(&w);
    HRPC_TRY(w.Wait());
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
  for (Parked* w : std::exchange(waiters_, {})) w->Finish(s);
}

}  // namespace hrpc::transport::internal
