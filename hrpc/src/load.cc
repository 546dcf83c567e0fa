#include "hrpc/rpc/load.h"

#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/stats.h"

namespace hrpc {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t SelfCpuNs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto ns = [](const timeval& tv) { return uint64_t(tv.tv_sec) * 1000000000ull + uint64_t(tv.tv_usec) * 1000ull; };
  return ns(ru.ru_utime) + ns(ru.ru_stime);
}

// Shared with the load coroutines: the last of them may still be inside
// WaitGroup::Done() when Wait() returns.
struct LoadState {
  std::atomic<bool> stop{false}, measuring{false};
  coro::Event stopped;  // set with `stop`: ends the paced coroutines' sleeps
  std::atomic<uint64_t> calls{0}, errors{0}, next_slot{0};
  std::mutex err_mu;
  std::string first_error;
  LatencyHistogram hist;
  coro::WaitGroup wg;
  Clock::time_point start;
  std::chrono::nanoseconds period{0};  // between scheduled calls; 0 = closed loop
};

}  // namespace

namespace {

LoadResult RunLoadOn(size_t workers, const std::function<coro::Scheduler&(size_t)>& scheduler, const LoadOptions& o,
                     const LoadCall& call) {
  LoadResult r;
  if (o.coroutines_per_worker == 0 || o.qps < 0 || o.duration.count() <= 0 || o.warmup.count() < 0) {
    r.errors = 1;
    r.first_error = InvalidArgumentError("RunLoad: needs coroutines_per_worker > 0, qps >= 0, duration > 0 and "
                                         "warmup >= 0").ToString();
    return r;
  }
  auto st = std::make_shared<LoadState>();
  st->start = Clock::now();
  if (o.qps > 0) st->period = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / o.qps));
  st->wg.Add(static_cast<int64_t>(workers * o.coroutines_per_worker));
  for (size_t w = 0; w < workers; ++w) {
    for (size_t k = 0; k < o.coroutines_per_worker; ++k) {
      scheduler(w).Post([st, &call] {
        while (!st->stop.load(std::memory_order_relaxed)) {
          if (st->period.count() > 0) {
            const uint64_t slot = st->next_slot.fetch_add(1, std::memory_order_relaxed);
            const auto due = st->start + st->period * static_cast<int64_t>(slot);
            // A slot may lie up to coroutines/qps ahead: the wait ends with
            // the run's window too.
            if (due > Clock::now()) st->stopped.WaitUntil(due).IgnoreError();
            if (st->stop.load(std::memory_order_relaxed)) break;
          }
          ClientContext ctx;
          const auto t0 = Clock::now();
          Status s = call(ctx);
          const auto dt = Clock::now() - t0;
          if (!st->measuring.load(std::memory_order_relaxed)) continue;
          if (s.ok()) {
            st->calls.fetch_add(1, std::memory_order_relaxed);
            st->hist.Record(std::chrono::duration_cast<std::chrono::nanoseconds>(dt));
          } else if (st->errors.fetch_add(1) == 0) {
            std::lock_guard lock(st->err_mu);
            st->first_error = s.ToString();
          }
        }
        st->wg.Done();
      }, "load");
    }
  }
  std::this_thread::sleep_for(o.warmup);
  if (o.on_window_start) o.on_window_start();
  const uint64_t cpu0 = SelfCpuNs();
  const auto t0 = Clock::now();
  st->measuring.store(true);
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(o.duration);
  uint64_t last_calls = 0;
  auto last = t0;
  while (Clock::now() < end) {
    std::this_thread::sleep_until(std::min(end, last + std::chrono::seconds(1)));
    const auto now = Clock::now();
    if (o.progress) {
      const uint64_t c = st->calls.load();
      const double dt = std::chrono::duration<double>(now - last).count();
      const double rps = dt > 0 ? static_cast<double>(c - last_calls) / dt : 0;
      char mbps[32] = "";
      if (o.bytes_per_call > 0) {
        std::snprintf(mbps, sizeof mbps, "  %9.1f MB/s", rps * static_cast<double>(o.bytes_per_call) / 1e6);
      }
      std::fprintf(stderr, "\r%s %5.1fs  calls %10llu  %10.0f rps%s  p99 %8.1f us  errors %llu   ", o.label.c_str(),
                   std::chrono::duration<double>(now - t0).count(), static_cast<unsigned long long>(c), rps, mbps,
                   static_cast<double>(st->hist.Quantile(0.99)) / 1e3,
                   static_cast<unsigned long long>(st->errors.load()));
      last_calls = c;
    }
    last = now;
  }
  st->measuring.store(false);
  const auto t1 = Clock::now();
  const uint64_t cpu1 = SelfCpuNs();
  if (o.on_window_end) o.on_window_end();
  if (o.progress) std::fprintf(stderr, "\n");
  st->stop.store(true);
  st->stopped.Set();
  st->wg.Wait().IgnoreError();
  {
    std::lock_guard lock(st->err_mu);
    r.first_error = st->first_error;
  }
  r.seconds = std::chrono::duration<double>(t1 - t0).count();
  r.calls = st->calls.load();
  r.errors = st->errors.load();
  r.rps = static_cast<double>(r.calls) / r.seconds;
  r.mbps = r.rps * static_cast<double>(o.bytes_per_call) / 1e6;
  r.p50_us = static_cast<double>(st->hist.Quantile(0.50)) / 1e3;
  r.p90_us = static_cast<double>(st->hist.Quantile(0.90)) / 1e3;
  r.p99_us = static_cast<double>(st->hist.Quantile(0.99)) / 1e3;
  r.p999_us = static_cast<double>(st->hist.Quantile(0.999)) / 1e3;
  r.max_us = static_cast<double>(st->hist.max_ns()) / 1e3;
  r.client_cpu_pct = static_cast<double>(cpu1 - cpu0) / 1e9 / r.seconds * 100;
  return r;
}

}  // namespace

LoadResult RunLoad(RpcChannel& channel, const LoadOptions& o, const LoadCall& call) {
  return RunLoadOn(channel.num_workers(), [&channel](size_t w) -> coro::Scheduler& { return channel.scheduler(w); },
                   o, call);
}

LoadResult RunLoad(Runtime& runtime, const LoadOptions& o, const LoadCall& call) {
  return RunLoadOn(runtime.num_workers(), [&runtime](size_t w) -> coro::Scheduler& { return runtime.scheduler(w); },
                   o, call);
}

}  // namespace hrpc
