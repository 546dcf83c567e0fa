// A poller that runs a function once, on the worker it was added to, outside
// any coroutine: what a user's poller or an I/O completion callback is.
#pragma once

#include <functional>

#include "hrpc/coroutine/scheduler.h"

namespace rpctest {

struct OncePoller final : hrpc::coro::Poller {
  std::function<void()> once;
  int Poll() override {
    if (!once) return 0;
    auto f = std::move(once);
    once = nullptr;
    f();
    return 1;
  }
  int fd() const override { return -1; }
};

}  // namespace rpctest
