#include "hrpc/coroutine/cycle_clock.h"

namespace hrpc::coro {

const CycleClock& CycleClock::Get() {
  static const CycleClock c;
  return c;
}

CycleClock::CycleClock() {
#if defined(__x86_64__) || defined(__i386__)
  using Clock = std::chrono::steady_clock;
  // A (tick, time) pair read back to back: the tick is the midpoint of two TSC
  // reads around the clock read, and the tightest of a few tries wins, so an
  // interrupt or a slow clock read (a VM's emulated HPET) does not skew it.
  struct Pair {
    uint64_t tick;
    Clock::time_point t;
  };
  auto sample = [] {
    Pair best{};
    uint64_t best_width = ~uint64_t{0};
    for (int i = 0; i < 5; ++i) {
      const uint64_t a = __builtin_ia32_rdtsc();
      const Clock::time_point t = Clock::now();
      const uint64_t b = __builtin_ia32_rdtsc();
      if (b >= a && b - a < best_width) {
        best_width = b - a;
        best = {a + (b - a) / 2, t};
      }
    }
    return best;
  };
  const Pair p0 = sample();
  while (Clock::now() - p0.t < std::chrono::milliseconds(2)) {
  }
  const Pair p1 = sample();
  const double ns = static_cast<double>((p1.t - p0.t).count());
  const double rate = ns > 0 ? static_cast<double>(p1.tick - p0.tick) / ns : 0.0;
  if (p1.tick > p0.tick && rate > 0.05 && rate < 100.0) {  // 50 MHz .. 100 GHz
    tsc_ = true;
    ticks_per_ns_ = rate;
    ns_per_tick_ = 1.0 / rate;
    resync_ticks_ = TicksFor(kResync);
  }
#endif
}

namespace {
struct SteadyBase {
  uint64_t tick = 0;    // TSC at the last steady_clock read (0: none yet)
  int64_t ns = 0;       // that read
  int64_t last_ns = 0;  // the latest value handed out on this thread
};
thread_local SteadyBase tl_steady;
}  // namespace

std::chrono::steady_clock::time_point CycleClock::SteadyNow() const noexcept {
  using Clock = std::chrono::steady_clock;
  if (!tsc_) return Clock::now();
  SteadyBase& b = tl_steady;
  const uint64_t tick = Now();
  const uint64_t since = tick - b.tick;  // huge when the TSC went backwards
  int64_t ns;
  if (b.tick == 0 || since > resync_ticks_) {
    ns = Clock::now().time_since_epoch().count();
    b.tick = tick;
    b.ns = ns;
  } else {
    ns = b.ns + static_cast<int64_t>(static_cast<double>(since) * ns_per_tick_);
  }
  if (ns < b.last_ns) ns = b.last_ns;
  b.last_ns = ns;
  return Clock::time_point(Clock::duration(ns));
}

std::chrono::steady_clock::time_point SteadyNow() noexcept { return CycleClock::Get().SteadyNow(); }

}  // namespace hrpc::coro
