// Stop-signal handling shared by the sample servers: SIGINT/SIGTERM are blocked
// before any worker starts (threads inherit the mask) and the main thread waits
// for one with sigwait, then shuts the server down in an orderly way.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <cstdint>
#include <functional>

namespace hrpc::examples {

inline sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// Waits for a signal of `set` and returns it; with every_seconds > 0, calls
// `every` each time that many seconds pass without one (periodic stats).
inline int WaitForStopSignal(const sigset_t& set, uint64_t every_seconds = 0,
                             const std::function<void()>& every = {}) {
  for (;;) {
    if (every_seconds > 0 && every) {
      timespec ts{static_cast<time_t>(every_seconds), 0};
      siginfo_t info;
      const int sig = sigtimedwait(&set, &info, &ts);
      if (sig >= 0) return sig;
      every();  // timed out (or interrupted): report and wait again
      continue;
    }
    int sig = 0;
    if (sigwait(&set, &sig) == 0) return sig;
  }
}

}  // namespace hrpc::examples
