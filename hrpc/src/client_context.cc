#include "hrpc/rpc/client_context.h"

#include "hrpc/rpc/method.h"
#include "hrpc/rpc/wire.h"

namespace hrpc {

uint64_t ClientContext::DeadlineBudgetMicros(Clock::time_point now) const noexcept {
  if (!has_deadline()) return wire::kNoDeadline;
  if (now >= deadline_) return 0;
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(deadline_ - now).count();
  // A finite deadline never maps to "none".
  return static_cast<uint64_t>(us) >= wire::kNoDeadline ? wire::kNoDeadline - 1 : static_cast<uint64_t>(us);
}

void ClientContext::set_request_key(std::string_view key) noexcept { set_request_key(Fnv1a64(key)); }

void ClientContext::Cancel() {
  cancelled_.store(true, std::memory_order_release);
  // The hook runs under the lock: ClearCancelHook, which takes it, returns
  // only once a hook already running is over (the hook may touch what the
  // caller of ClearCancelHook destroys next, such as a DirectChannel call's
  // server context on its stack).
  std::lock_guard lock(hook_mu_);
  std::function<void()> hook = std::move(cancel_hook_);
  cancel_hook_ = nullptr;
  if (hook) hook();
}

void ClientContext::SetCancelHook(std::function<void()> hook) {
  {
    std::lock_guard lock(hook_mu_);
    if (!IsCancelled()) {
      cancel_hook_ = std::move(hook);
      return;
    }
  }
  if (hook) hook();
}

void ClientContext::ClearCancelHook() {
  std::lock_guard lock(hook_mu_);
  cancel_hook_ = nullptr;
}

}  // namespace hrpc
