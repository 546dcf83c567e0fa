#include "hrpc/rpc/server_context.h"

#include <string>

#include "bulk.h"

namespace hrpc {

void ServerContext::set_deadline_budget_us(uint64_t budget_us, Clock::time_point now) noexcept {
  if (budget_us == wire::kNoDeadline) {
    deadline_ = Clock::time_point::max();
    return;
  }
  // Clamp so that now + budget cannot overflow the clock's representation.
  // Compare as unsigned first: budget_us may not fit the clock's signed rep.
  const auto max_budget = std::chrono::duration_cast<std::chrono::microseconds>(Clock::time_point::max() - now);
  if (max_budget.count() <= 0 || budget_us >= static_cast<uint64_t>(max_budget.count())) {
    deadline_ = Clock::time_point::max() - std::chrono::microseconds(1);  // finite, but far away
    return;
  }
  deadline_ = now + std::chrono::microseconds(static_cast<int64_t>(budget_us));
}

Status ServerContext::CheckLive() const {
  if (cancelled_.load(std::memory_order_acquire)) return CancelledError("call cancelled by the client");
  if (DeadlineExpired()) return DeadlineExceededError("deadline expired before the bulk transfer");
  if (bulk_transfer_ == nullptr) return UnimplementedError("no bulk transport on this call");
  return Status::Ok();
}

Result<mempool::IoBuf> ServerContext::PullBulk(size_t index) {
  if (index >= bulk_.size()) {
    return OutOfRangeError("bulk descriptor " + std::to_string(index) + " of " + std::to_string(bulk_.size()));
  }
  const wire::BulkDescriptor& d = bulk_[index];
  if (d.direction != wire::BulkDirection::kPull) {
    return FailedPreconditionError("bulk descriptor " + std::to_string(index) + " is a push region");
  }
  HRPC_TRY(CheckLive());
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf data, bulk_transfer_->Pull(d, deadline_));
  HRPC_TRY(internal::CheckBulkCrcOffWorker(d, data));
  return data;
}

Status ServerContext::PushBulk(size_t index, const mempool::IoBuf& data) {
  if (index >= bulk_.size()) {
    return OutOfRangeError("bulk descriptor " + std::to_string(index) + " of " + std::to_string(bulk_.size()));
  }
  const wire::BulkDescriptor& d = bulk_[index];
  if (d.direction != wire::BulkDirection::kPush) {
    return FailedPreconditionError("bulk descriptor " + std::to_string(index) + " is a pull region");
  }
  if (data.size() > d.len) {
    return OutOfRangeError("bulk push of " + std::to_string(data.size()) + " bytes into a region of " +
                           std::to_string(d.len));
  }
  HRPC_TRY(CheckLive());
  return bulk_transfer_->Push(d, data, deadline_);
}

}  // namespace hrpc
