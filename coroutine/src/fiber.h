// Private: the coroutine record, its stack, and the scheduler internals that
// sync.cc needs. Not part of the public API.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <boost/context/detail/fcontext.hpp>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"

#if defined(__SANITIZE_ADDRESS__)
#define HRPC_CORO_ASAN 1
#include <sanitizer/common_interface_defs.h>
#endif

namespace hrpc::coro::detail {

namespace bctx = boost::context::detail;

// One mmap'd stack: [map, map + guard) is PROT_NONE, [lo, lo + usable) is the stack.
struct Stack {
  char* map = nullptr;
  size_t map_len = 0;
  size_t guard = 0;
  char* lo = nullptr;
  size_t usable = 0;
};

// Returns false (errno set) if mmap/mprotect failed.
bool AllocateStack(size_t usable, bool guard, Stack* out) noexcept;
void FreeStack(Stack* s) noexcept;

// Installs the SIGSEGV guard-page handler once per process (chaining to any
// previous handler) and an alternate signal stack on the calling thread if it
// has none big enough.
void InstallOverflowHandler();
void EnsureAltStack();

// Node of the scheduler's MPSC (Treiber) queue: either a fiber to resume or a
// posted function to run as a new coroutine.
struct RemoteNode {
  RemoteNode* next = nullptr;
  Fiber* fiber = nullptr;
  std::function<void()> fn;
  std::string name;
};

enum class FiberState : uint8_t { kReady, kRunning, kSuspended, kDone };

struct Fiber {
  bctx::fcontext_t ctx = nullptr;
  Scheduler::Impl* sched = nullptr;
  std::function<void()> fn;
  std::string name;
  Stack stack;
  Fiber* next = nullptr;  // ready-queue link
  RemoteNode resume_node;  // cross-thread resume (at most one pending per suspension)
  FiberState state = FiberState::kReady;
  size_t all_index = 0;  // position in Impl::all_
  // this_coro::OnNextSuspend: runs on this fiber just before it next switches out.
  void (*on_suspend)(void*) noexcept = nullptr;
  void* on_suspend_arg = nullptr;
#if HRPC_CORO_ASAN
  void* fake_stack = nullptr;
#endif
};

// The fiber running on this thread (nullptr in scheduler context / plain threads).
Fiber* CurrentFiberRaw() noexcept;
// Switches from the running fiber back to its scheduler; returns when resumed.
// The caller sets the fiber's state first (kReady + queued, or kSuspended).
void SuspendCurrent() noexcept;
// Any thread: make a suspended fiber ready on its own scheduler.
void ResumeFiber(Fiber* f) noexcept;
// Owning thread, scheduler context or fiber: arm a timer whose fn runs inline in
// scheduler context (must not block or suspend).
Scheduler::TimerId AddInlineTimer(Scheduler::Impl* s, Clock::time_point when, std::function<void()> fn);
bool CancelInlineTimer(Scheduler::Impl* s, Scheduler::TimerId id);

}  // namespace hrpc::coro::detail
