// Scheduler: one per worker thread; runs stackful coroutines (Boost.Context
// fcontext) cooperatively on that thread.
//
// Ownership and threading:
//  - A Scheduler belongs to the thread that calls Run(). Everything except
//    Post(), Stop() and Wake() must be called on that thread (or, before Run()
//    starts, on the thread that created it).
//  - Coroutine stacks are mmap'd, have a PROT_NONE guard page at the low end and
//    are pooled per scheduler (up to max_pooled_stacks), so Spawn + finish does
//    not touch the kernel in steady state. Running into the guard page prints
//    "coroutine stack overflow: <name>" to stderr and aborts.
//  - An exception escaping a coroutine is caught at the coroutine's entry,
//    logged, and swallowed (Async() turns it into its Future's INTERNAL Status);
//    it never unwinds through Boost.Context.
//  - Idle policy: when nothing is ready the scheduler keeps polling its pollers
//    for spin_budget, then blocks in epoll_wait on its eventfd, the pollers' fds
//    and the next timer. Post()/Wake() only write the eventfd when the target is
//    actually asleep.
//  - Destroying a Scheduler with coroutines still suspended frees their stacks
//    without unwinding them (their locals' destructors do not run): stop work
//    before destroying.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "hrpc/base/status.h"

namespace hrpc::coro {

using namespace std::chrono_literals;

struct SchedulerOptions {
  std::string name;                 // used in logs and thread names
  size_t stack_bytes = 64 * 1024;   // usable stack per coroutine (rounded up to pages)
  size_t max_pooled_stacks = 1024;  // finished stacks kept for reuse
  std::chrono::nanoseconds spin_budget = 50us;  // busy-poll this long before sleeping
  // ADDITION to the contract: each guard page is its own kernel VMA and
  // vm.max_map_count (default 65530) caps a process at ~32k guarded stacks.
  // Set false only for very many tiny coroutines (e.g. 100k x 16 KiB).
  bool guard_pages = true;
};

// A transport's hook into the scheduler loop. Poll() is called between
// coroutine runs on the scheduler's thread and must not block; fd() (if >= 0)
// is added to the scheduler's epoll set (level-triggered, EPOLLIN): readable
// means Poll() has work. fd() is read once, in AddPoller().
class Poller {
 public:
  virtual ~Poller() = default;
  virtual int Poll() = 0;      // handle ready work; return #events handled (0 = idle)
  virtual int fd() const = 0;  // fd to block on when idle, or -1
};

class Scheduler final {
 public:
  using TimerId = uint64_t;

  // Fails (INTERNAL/RESOURCE_EXHAUSTED) if the eventfd or epoll fd cannot be created.
  static Result<std::unique_ptr<Scheduler>> Create(SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The scheduler running on this thread, or nullptr.
  static Scheduler* Current() noexcept;

  // Queue a new coroutine (runs after the current one yields). Owning thread only.
  void Spawn(std::function<void()> fn, std::string_view name = {});
  // Any thread: fn runs as a coroutine on this scheduler (lock-free MPSC queue
  // plus an eventfd write when the scheduler sleeps). `name` is an ADDITION.
  void Post(std::function<void()> fn, std::string_view name = {});

  // Runs coroutines, timers and pollers on the calling thread until Stop().
  // Returns once stopped; coroutines still ready are left queued.
  void Run();
  void Stop();  // any thread
  void Wake();  // any thread: interrupt an idle epoll_wait

  // Owning thread. The poller must stay alive until RemovePoller().
  void AddPoller(Poller* poller);
  void RemovePoller(Poller* poller);

  // Owning thread. fn runs as a coroutine on this scheduler at or after `when`.
  // CancelTimer returns true if the timer had not fired yet (fn will not run).
  TimerId AddTimer(std::chrono::steady_clock::time_point when, std::function<void()> fn);
  bool CancelTimer(TimerId id);

  std::string_view name() const noexcept;
  const SchedulerOptions& options() const noexcept;

  // Counters, for tests and monitoring (owning thread).
  struct Stats {
    uint64_t spawned = 0, finished = 0, context_switches = 0;
    uint64_t sleeps = 0, eventfd_writes = 0, stacks_mapped = 0;
    size_t alive = 0, pooled_stacks = 0;
  };
  Stats stats() const noexcept;

  // Load of the worker, readable from ANY thread (relaxed counters: for
  // monitoring, e.g. a metrics scrape). Busy time is the time of loop rounds
  // that found work (coroutines, timers, poller events); idle time is spinning
  // on empty rounds (spin_budget) and sleeping. Costs the loop one CycleClock
  // read per idle period, none per coroutine.
  struct Load {
    std::chrono::nanoseconds busy{0};
    std::chrono::nanoseconds idle{0};
    size_t run_queue = 0;  // coroutines ready to run (not counting Post()s not yet drained)
    size_t alive = 0;      // spawned and not finished
    uint64_t context_switches = 0;
    uint64_t sleeps = 0;   // times the loop blocked in epoll_wait
  };
  Load load() const noexcept;

  class Impl;  // private: defined in coroutine/src

 private:
  explicit Scheduler(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `from + d`, saturated at time_point::max(): a wait "for ever"
// (nanoseconds::max()) must not wrap into the past and end at once.
inline std::chrono::steady_clock::time_point DeadlineAfter(std::chrono::steady_clock::time_point from,
                                                           std::chrono::nanoseconds d) noexcept {
  using TP = std::chrono::steady_clock::time_point;
  if (d.count() > 0 && d > TP::max() - from) return TP::max();
  return from + d;
}

namespace this_coro {
// Inside a coroutine: let the other ready coroutines run. Outside: std::this_thread::yield().
void Yield();
// Inside a coroutine: suspend it; outside: block the thread.
void SleepFor(std::chrono::nanoseconds d);
void SleepUntil(std::chrono::steady_clock::time_point tp);
bool InCoroutine() noexcept;
std::string_view Name() noexcept;  // "" off-coroutine
// Inside a coroutine: fn(arg) runs once, on this coroutine, right before it next suspends
// (waits, sleeps or yields); fn must not suspend. For a coroutine that serves work in place
// and hands its standing duty (reading a connection) to a new coroutine if the work blocks.
// One hook per coroutine, a later call replaces it: hrpc's server arms it on the coroutine
// running a request handler, so handlers must not use it. Outside a coroutine: no-op.
void OnNextSuspend(void (*fn)(void*) noexcept, void* arg) noexcept;
// Disarms the hook; true if it was still armed (the coroutine has not
// suspended since OnNextSuspend).
bool CancelOnNextSuspend() noexcept;
}  // namespace this_coro

}  // namespace hrpc::coro
