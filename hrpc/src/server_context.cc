#include "hrpc/rpc/server_context.h"

#include <memory>
#include <string>
#include <vector>

#include "bulk.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"

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

Result<size_t> ServerContext::PullAllBulk() {
  struct Checks {
    coro::WaitGroup wg;
    std::vector<Status> status;
  };
  std::shared_ptr<Checks> checks;  // made by the first check that runs apart: most calls have none
  coro::Scheduler* sched = coro::Scheduler::Current();
  const bool overlap = sched != nullptr && coro::this_coro::InCoroutine();
  Status failed;
  size_t bytes = 0;
  for (size_t i = 0; i < bulk_.size(); ++i) {
    const wire::BulkDescriptor& d = bulk_[i];
    if (d.direction != wire::BulkDirection::kPull) continue;
    if (failed = CheckLive(); !failed.ok()) break;
    Result<mempool::IoBuf> data = bulk_transfer_->Pull(d, deadline_);
    if (!data.ok()) {
      failed = data.status();
      break;
    }
    bytes += data->size();
    if (overlap) {
      if (!checks) {
        checks = std::make_shared<Checks>();
        checks->status.resize(bulk_.size());
      }
      checks->wg.Add(1);
      sched->Spawn(
          [checks, i, d, region = std::make_shared<mempool::IoBuf>(data->Share())] {
            checks->status[i] = internal::CheckBulkCrcOffWorker(d, *region);
            checks->wg.Done();
          },
          "hrpc-pull-check");
    } else if (failed = internal::CheckBulkCrcOffWorker(d, *data); !failed.ok()) {
      break;
    }
    request_attachment_.Append(std::move(*data));
  }
  if (checks) checks->wg.Wait().IgnoreError();  // the checks hold shares of the regions
  HRPC_TRY(failed);
  if (checks) {
    for (const Status& s : checks->status) HRPC_TRY(s);
  }
  return bytes;
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
