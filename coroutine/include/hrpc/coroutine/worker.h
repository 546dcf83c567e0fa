// Worker: one thread running one Scheduler, optionally pinned to a cpu.
//
// The Worker owns its thread and its scheduler; the scheduler is created on the
// worker thread and lives until ~Worker(), which stops it and joins the thread
// (coroutines still suspended at that point are not unwound — see scheduler.h).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"

namespace hrpc::coro {

struct WorkerOptions {
  SchedulerOptions sched;
  int cpu = -1;  // pin the thread to this cpu (pthread_setaffinity_np); -1: no pinning
};

class Worker final {
 public:
  // Errors: the scheduler's Create() error, INVALID_ARGUMENT if `cpu` is not in
  // this process's allowed cpu set, or the pthread error.
  static Result<std::unique_ptr<Worker>> Start(WorkerOptions options);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  Scheduler& scheduler() noexcept;
  // Any thread: runs fn as a coroutine on this worker.
  void Post(std::function<void()> fn, std::string_view name = {});
  int cpu() const noexcept;
  // CPU time consumed by the worker thread so far (CLOCK_THREAD_CPUTIME_ID of
  // that thread). ADDITION to the contract; used to check that idle workers sleep.
  std::chrono::nanoseconds CpuTime() const;

  class Impl;

 private:
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrpc::coro
