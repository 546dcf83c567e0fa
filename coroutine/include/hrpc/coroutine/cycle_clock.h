// CycleClock: cheap monotonic ticks for spinning and fine-grained timing.
//
// steady_clock is not cheap everywhere: in a VM whose clocksource is the HPET
// (the Soft-RoCE guest of the rdma tests) a read is a system call plus an
// emulated device access, ~3 us, so a poll loop that reads it every iteration
// notices completions microseconds late. The x86 time-stamp counter costs tens
// of cycles everywhere; its rate is measured once (2 ms against steady_clock, at
// the first Get()). Where there is no TSC, or the measurement is implausible,
// ticks are steady_clock nanoseconds. Ticks of different CPUs may disagree a
// little (or a lot after a VM resumes): use them for short intervals and be
// ready for an interval that looks negative (it wraps to a huge unsigned value).
#pragma once

#include <chrono>
#include <cstdint>
#include <type_traits>

namespace hrpc::coro {

class CycleClock {
 public:
  static const CycleClock& Get();

  uint64_t Now() const noexcept {
#if defined(__x86_64__) || defined(__i386__)
    if (tsc_) return __builtin_ia32_rdtsc();
#endif
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  }
  uint64_t TicksFor(std::chrono::nanoseconds d) const noexcept {
    return static_cast<uint64_t>(static_cast<double>(d.count()) * ticks_per_ns_);
  }
  double Micros(uint64_t ticks) const noexcept { return static_cast<double>(ticks) / ticks_per_ns_ / 1000.0; }
  double ticks_per_ns() const noexcept { return ticks_per_ns_; }
  bool tsc() const noexcept { return tsc_; }

  // steady_clock::now() for hot paths (call start and end, deadlines, timers):
  // the time of this thread's last steady_clock read plus the TSC ticks since,
  // re-read from steady_clock once a tick span of kResync has passed (or the TSC
  // went backwards). It differs from steady_clock::now() by the rate error over
  // at most kResync (microseconds), and never goes back on one thread. Without a
  // TSC it is steady_clock::now().
  static constexpr std::chrono::milliseconds kResync{1};
  std::chrono::steady_clock::time_point SteadyNow() const noexcept;

 private:
  CycleClock();
  bool tsc_ = false;
  double ticks_per_ns_ = 1.0;
  double ns_per_tick_ = 1.0;
  uint64_t resync_ticks_ = 0;
};

// CycleClock::Get().SteadyNow().
std::chrono::steady_clock::time_point SteadyNow() noexcept;
static_assert(std::is_same_v<std::chrono::steady_clock::duration, std::chrono::nanoseconds>);

}  // namespace hrpc::coro
