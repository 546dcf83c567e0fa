// Tests for coroutine/src/scheduler.cc: ordering, scale, timers, cross-thread
// wake-ups, idle behaviour, exceptions and the stack-overflow guard.
#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/coroutine/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"

namespace hrpc::coro {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Scheduler> MakeScheduler(SchedulerOptions o = {}) {
  if (o.name.empty()) o.name = "test";
  auto s = Scheduler::Create(std::move(o));
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

// Runs `main` as a coroutine on a fresh scheduler on this thread; stops when it returns.
void RunMain(Scheduler& s, std::function<void()> main) {
  s.Spawn([&s, main = std::move(main)] {
    main();
    s.Stop();
  }, "main");
  s.Run();
}

TEST(SchedulerTest, SpawnedCoroutinesRunInOrderAndInterleaveOnYield) {
  auto s = MakeScheduler();
  std::vector<std::string> log;
  int done = 0;
  for (int i = 0; i < 3; ++i) {
    s->Spawn([&log, &done, i] {
      log.push_back("a" + std::to_string(i));
      this_coro::Yield();
      log.push_back("b" + std::to_string(i));
      done++;
    }, "c" + std::to_string(i));
  }
  RunMain(*s, [&] {
    log.push_back("main");
    while (done < 3) this_coro::Yield();
  });
  EXPECT_THAT(log, ::testing::ElementsAre("a0", "a1", "a2", "main", "b0", "b1", "b2"));
}

// The hook runs once, on the coroutine, before anything else runs in its
// place; a coroutine that does not suspend never runs it.
TEST(SchedulerTest, OnNextSuspendRunsOnceJustBeforeTheCoroutineSuspends) {
  auto s = MakeScheduler();
  std::vector<std::string> log;
  struct Hook {
    std::vector<std::string>* log;
    std::string ran_on;
  } hook{&log, {}};
  auto fn = [](void* arg) noexcept {
    auto* h = static_cast<Hook*>(arg);
    h->log->push_back("hook");
    h->ran_on = this_coro::Name();
  };
  bool armed_after_plain_work = false, armed_after_yield = true, armed_after_sleep = true;
  RunMain(*s, [&] {
    s->Spawn([&log] { log.push_back("other"); }, "other");
    this_coro::OnNextSuspend(fn, &hook);
    log.push_back("work");  // no suspension: the hook stays armed
    armed_after_plain_work = this_coro::CancelOnNextSuspend();
    this_coro::Yield();  // disarmed: nothing runs
    this_coro::OnNextSuspend(fn, &hook);
    s->Spawn([&log] { log.push_back("other2"); }, "other2");
    this_coro::Yield();
    armed_after_yield = this_coro::CancelOnNextSuspend();
    this_coro::OnNextSuspend(fn, &hook);
    this_coro::SleepFor(1ms);
    armed_after_sleep = this_coro::CancelOnNextSuspend();
    log.push_back("end");
  });
  EXPECT_TRUE(armed_after_plain_work);
  EXPECT_FALSE(armed_after_yield);
  EXPECT_FALSE(armed_after_sleep);
  EXPECT_EQ(hook.ran_on, "main");
  EXPECT_THAT(log, ::testing::ElementsAre("work", "other", "hook", "other2", "hook", "end"));
  // Off a coroutine both are no-ops.
  this_coro::OnNextSuspend(fn, &hook);
  EXPECT_FALSE(this_coro::CancelOnNextSuspend());
}

TEST(SchedulerTest, StopFromACoroutineReturnsFromRun) {
  auto s = MakeScheduler();
  int after_stop = 0;
  s->Spawn([&] { s->Stop(); });
  s->Spawn([&] { after_stop++; });
  s->Run();
  EXPECT_EQ(after_stop, 0);  // still queued
  RunMain(*s, [] {});        // Run() again drains it
  EXPECT_EQ(after_stop, 1);
}

TEST(SchedulerTest, NameAndInCoroutine) {
  auto s = MakeScheduler();
  EXPECT_FALSE(this_coro::InCoroutine());
  EXPECT_EQ(Scheduler::Current(), nullptr);
  std::string seen;
  Scheduler* cur = nullptr;
  s->Spawn([&] {
    seen = std::string(this_coro::Name());
    cur = Scheduler::Current();
    s->Stop();
  }, "named-one");
  s->Run();
  EXPECT_EQ(seen, "named-one");
  EXPECT_EQ(cur, s.get());
  EXPECT_EQ(Scheduler::Current(), nullptr);
}

TEST(SchedulerTest, HundredThousandCoroutinesAliveAtOnce) {
  // 100k guarded stacks would need 200k VMAs (> vm.max_map_count = 65530), so
  // this test uses small unguarded stacks (SchedulerOptions::guard_pages).
  SchedulerOptions o;
  o.stack_bytes = 16 * 1024;
  o.guard_pages = false;
  o.max_pooled_stacks = 0;
  auto s = MakeScheduler(o);
  constexpr int kN = 100000;
  Event go;
  std::atomic<int> started{0}, finished{0};
  size_t max_alive = 0;
  for (int i = 0; i < kN; ++i) {
    s->Spawn([&] {
      started++;
      EXPECT_TRUE(go.Wait().ok());
      finished++;
    });
  }
  s->Spawn([&] {
    // Everyone ahead of us has run and parked on `go`.
    max_alive = s->stats().alive;
    EXPECT_EQ(started.load(), kN);
    EXPECT_EQ(finished.load(), 0);
    go.Set();
    this_coro::Yield();
    while (finished.load() < kN) this_coro::Yield();
    s->Stop();
  });
  s->Run();
  EXPECT_EQ(max_alive, static_cast<size_t>(kN + 1));
  EXPECT_EQ(finished.load(), kN);
  EXPECT_EQ(s->stats().alive, 0u);
}

TEST(SchedulerTest, StacksArePooledAndReused) {
  SchedulerOptions o;
  o.max_pooled_stacks = 8;
  auto s = MakeScheduler(o);
  RunMain(*s, [&] {
    for (int round = 0; round < 100; ++round) {
      WaitGroup wg;
      for (int i = 0; i < 4; ++i) {
        wg.Add();
        s->Spawn([&wg] { wg.Done(); });
      }
      EXPECT_TRUE(wg.Wait().ok());
    }
  });
  // main + 4 concurrent at most: 5 stacks ever mapped, not 401.
  EXPECT_LE(s->stats().stacks_mapped, 5u);
  EXPECT_EQ(s->stats().spawned, 401u);
}

TEST(SchedulerTest, SleepForAndTimersFireInDeadlineOrder) {
  auto s = MakeScheduler();
  std::vector<int> order;
  RunMain(*s, [&] {
    auto t0 = Clock::now();
    this_coro::SleepFor(20ms);
    auto slept = Clock::now() - t0;
    EXPECT_GE(slept, 20ms);
    EXPECT_LT(slept, 2s);  // coarse: only "it woke up"
    auto now = Clock::now();
    WaitGroup wg;
    wg.Add(3);
    s->AddTimer(now + 30ms, [&] { order.push_back(3); wg.Done(); });
    s->AddTimer(now + 10ms, [&] { order.push_back(1); wg.Done(); });
    s->AddTimer(now + 20ms, [&] { order.push_back(2); wg.Done(); });
    EXPECT_TRUE(wg.WaitFor(5s).ok());
  });
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

// The run loop looks at steady_clock only when the earliest timer may be due
// (by a cheap cycle clock): an earlier timer added later — from a coroutine, or
// from a timer callback — must still fire first, while a busy coroutine keeps
// the loop spinning.
TEST(SchedulerTest, EarlierTimerAddedLaterFiresFirstWhileTheLoopSpins) {
  auto s = MakeScheduler();
  std::vector<int> order;
  RunMain(*s, [&] {
    WaitGroup wg;
    wg.Add(4);
    const auto now = Clock::now();
    s->AddTimer(now + 10s, [&] { order.push_back(9); });
    this_coro::Yield();  // one loop round with only the far timer armed
    s->AddTimer(now + 300ms, [&] {  // far enough that a descheduled thread still runs 1 and 2 first
      order.push_back(3);
      wg.Done();
    });
    s->AddTimer(now + 5ms, [&] {
      order.push_back(1);
      // From inside a timer callback: earlier than the 300 ms one.
      s->AddTimer(Clock::now() + 5ms, [&] {
        order.push_back(2);
        wg.Done();
      });
      wg.Done();
    });
    std::atomic<bool> stop{false};
    s->Spawn([&] {  // keeps the loop busy (never idle) until the timers ran
      while (!stop.load()) this_coro::Yield();
      wg.Done();
    });
    this_coro::SleepFor(350ms);
    stop = true;
    EXPECT_TRUE(wg.WaitFor(5s).ok());
  });
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

// SteadyNow (the TSC since this thread's last steady_clock read) stays within
// a rounding of steady_clock across resyncs and never goes back.
TEST(CycleClockTest, SteadyNowFollowsSteadyClockAndNeverGoesBack) {
  Clock::time_point prev{};
  for (int i = 0; i < 3000; ++i) {
    const auto before = Clock::now();
    const auto fast = SteadyNow();
    const auto after = Clock::now();
    // The rate error over at most one resync period (1 ms) is microseconds;
    // allow for a preempted thread and a rate measured under load.
    EXPECT_GT(fast, before - 200us) << "at " << i;
    EXPECT_LT(fast, after + 200us) << "at " << i;
    EXPECT_GE(fast, prev) << "at " << i;
    prev = fast;
    if (i % 500 == 0) std::this_thread::sleep_for(3ms);  // past a resync
  }
}

// The cycle clock's rate (measured once) converts its ticks back to the time
// steady_clock saw, and a span of TicksFor(d) lasts d of steady_clock time.
TEST(CycleClockTest, TicksAgreeWithSteadyClock) {
  const CycleClock& c = CycleClock::Get();
  EXPECT_GT(c.ticks_per_ns(), 0.0);
  // The thread may be descheduled between a tick read and the steady_clock
  // read next to it, or in the spin: each measurement is taken three times
  // and the one closest to the truth counts.
  double best_ratio = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    const uint64_t k0 = c.Now();
    std::this_thread::sleep_for(30ms);
    const uint64_t k1 = c.Now();
    const double steady_us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    ASSERT_GT(k1, k0);
    const double ratio = c.Micros(k1 - k0) / steady_us;
    if (std::abs(ratio - 1) < std::abs(best_ratio - 1)) best_ratio = ratio;
  }
  EXPECT_GT(best_ratio, 0.8) << "ticks_per_ns " << c.ticks_per_ns();
  EXPECT_LT(best_ratio, 1.2) << "ticks_per_ns " << c.ticks_per_ns();
  // TicksFor against the wall: spinning until the tick count of 5 ms has
  // passed takes 5 ms of steady_clock time (give or take the calibration).
  // Being descheduled only makes a spin longer: the shortest of three counts.
  double spun_us = 1e12;
  for (int i = 0; i < 3; ++i) {
    const auto w0 = Clock::now();
    const uint64_t until = c.Now() + c.TicksFor(std::chrono::milliseconds(5));
    while (c.Now() < until) {
    }
    spun_us = std::min(spun_us, std::chrono::duration<double, std::micro>(Clock::now() - w0).count());
  }
  EXPECT_GT(spun_us, 5000.0 * 0.8);
  EXPECT_LT(spun_us, 5000.0 * 1.2 + 20000.0) << "(+20 ms for a preempted spin)";
}

TEST(SchedulerTest, CancelledTimerDoesNotFire) {
  auto s = MakeScheduler();
  bool fired_cancelled = false, fired_other = false;
  RunMain(*s, [&] {
    auto id = s->AddTimer(Clock::now() + 10ms, [&] { fired_cancelled = true; });
    s->AddTimer(Clock::now() + 30ms, [&] { fired_other = true; });
    EXPECT_TRUE(s->CancelTimer(id));
    EXPECT_FALSE(s->CancelTimer(id));  // twice: already cancelled
    this_coro::SleepFor(60ms);
  });
  EXPECT_FALSE(fired_cancelled);
  EXPECT_TRUE(fired_other);
}

TEST(SchedulerTest, ManyCancelledTimersAreCompacted) {
  auto s = MakeScheduler();
  int fired = 0;
  RunMain(*s, [&] {
    for (int i = 0; i < 10000; ++i) {
      auto id = s->AddTimer(Clock::now() + 1h, [&] { fired++; });
      EXPECT_TRUE(s->CancelTimer(id));
    }
    s->AddTimer(Clock::now() + 1ms, [&] { fired++; });
    this_coro::SleepFor(20ms);
  });
  EXPECT_EQ(fired, 1);
}

TEST(SchedulerTest, PostFromOtherThreadsRunsOnTheWorker) {
  auto w = Worker::Start(WorkerOptions{}).value();
  constexpr int kThreads = 4, kPerThread = 2000;
  std::atomic<int> ran{0};
  std::atomic<bool> wrong_thread{false};
  Scheduler* target = &w->scheduler();
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        w->Post([&] {
          if (Scheduler::Current() != target || !this_coro::InCoroutine()) wrong_thread = true;
          ran++;
        });
      }
    });
  }
  for (auto& t : ts) t.join();
  auto deadline = Clock::now() + 10s;
  while (ran.load() < kThreads * kPerThread && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(ran.load(), kThreads * kPerThread);
  EXPECT_FALSE(wrong_thread.load());
}

// What a post runs may end in the worker's destruction (its answer completes the
// last call of a channel that is then destroyed) before the posting thread has
// returned from Post(). All three threads share one cpu, so the woken worker can
// preempt the poster between its push and the rest of its wake-up; under
// AddressSanitizer a scheduler freed under the poster is reported.
TEST(SchedulerTest, WorkerDestroyedByWhatAPostRanIsNotTouchedByThePoster) {
  cpu_set_t saved;
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof saved, &saved), 0);
  int cpu = 0;
  while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &saved)) ++cpu;
  ASSERT_LT(cpu, CPU_SETSIZE);
  auto pin = [cpu] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
  };
  struct Restore {
    cpu_set_t set;
    ~Restore() { pthread_setaffinity_np(pthread_self(), sizeof set, &set); }
  } restore{saved};
  ASSERT_TRUE(pin());
  constexpr int kRounds = 3000;
  int slept_first = 0;  // rounds whose post found the worker asleep (the eventfd path)
  for (int i = 0; i < kRounds; ++i) {
    WorkerOptions o;
    o.cpu = cpu;
    o.sched.spin_budget = 0ns;  // asleep when the post comes: the poster writes its eventfd
    auto w = Worker::Start(o).value();
    Scheduler* target = &w->scheduler();
    std::atomic<bool> ran{false};
    bool slept = false;
    std::thread poster([&] {
      pin();
      target->Post([&] {
        slept = Scheduler::Current()->stats().sleeps > 0;
        ran.store(true);
        ran.notify_one();
      });
    });
    ran.wait(false);
    w.reset();
    poster.join();
    slept_first += slept ? 1 : 0;
  }
  EXPECT_GT(slept_first, kRounds / 2);
}

TEST(SchedulerTest, CrossThreadEventWakesCoroutineOnItsOwnScheduler) {
  auto a = Worker::Start(WorkerOptions{}).value();
  auto b = Worker::Start(WorkerOptions{}).value();
  Event ev;
  Promise<Scheduler*> resumed_on;
  auto fut = resumed_on.GetFuture();
  a->Post([&] {
    EXPECT_TRUE(ev.Wait().ok());
    resumed_on.SetValue(Scheduler::Current());
  });
  std::this_thread::sleep_for(10ms);  // let it park (not required for correctness)
  b->Post([&] { ev.Set(); });
  auto r = fut.WaitFor(10s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, &a->scheduler());
}

TEST(SchedulerTest, PostToBusyWorkerDoesNotWriteEventfd) {
  auto w = Worker::Start(WorkerOptions{}).value();
  std::atomic<bool> stop{false};
  Event spinning;
  w->Post([&] {
    spinning.Set();
    while (!stop.load()) this_coro::Yield();  // never idle: never asleep
  });
  ASSERT_TRUE(spinning.WaitFor(10s).ok());
  std::atomic<int> ran{0};
  for (int i = 0; i < 1000; ++i) w->Post([&] { ran++; });
  while (ran.load() < 1000) std::this_thread::sleep_for(1ms);
  Promise<uint64_t> writes;
  auto f = writes.GetFuture();
  w->Post([&] { writes.SetValue(w->scheduler().stats().eventfd_writes); });
  auto n = f.WaitFor(10s);
  stop = true;
  ASSERT_TRUE(n.ok());
  // Only Posts that found it asleep write the eventfd: here at most the first
  // (before `spinning`) and the last one.
  EXPECT_LE(*n, 3u);
}

TEST(SchedulerTest, IdleWorkerSleepsInsteadOfSpinning) {
  auto w = Worker::Start(WorkerOptions{}).value();
  std::this_thread::sleep_for(20ms);
  auto before = w->CpuTime();
  std::this_thread::sleep_for(200ms);
  auto used = w->CpuTime() - before;
  // A spinning worker would burn ~200 ms; a sleeping one ~0.
  EXPECT_LT(used, 20ms) << "idle worker used " << used.count() << " ns of CPU in 200 ms";
  // And it still wakes up promptly when work arrives.
  Promise<void> p;
  auto f = p.GetFuture();
  w->Post([&] { p.SetValue(); });
  EXPECT_TRUE(f.WaitFor(5s).ok());
}

// Under a seccomp profile that refuses epoll_pwait2 with EPERM (container
// profiles that predate it do), an idle worker still sleeps, in epoll_wait,
// and still wakes for work and for timers. In a child process: the filter
// cannot be removed.
TEST(SchedulerTest, IdleWorkerSleepsWhereEpollPwait2IsRefused) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_epoll_pwait2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      _exit(10);
    }
    auto w = Worker::Start(WorkerOptions{});
    if (!w.ok()) _exit(11);
    std::this_thread::sleep_for(20ms);
    const auto before = (*w)->CpuTime();
    std::this_thread::sleep_for(300ms);
    if ((*w)->CpuTime() - before > 50ms) _exit(12);  // it spun
    Promise<void> p;
    auto done = p.GetFuture();
    (*w)->Post([&] {
      this_coro::SleepFor(20ms);  // a timer wakes it from epoll_wait
      p.SetValue();
    });
    _exit(done.WaitFor(5s).ok() ? 0 : 13);
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0) << "10: no seccomp filter, 12: the idle worker spun, 13: no wake-up";
}

// A worker stopped while a coroutine waits on a Future whose Promise is held
// by another coroutine, or by a timer: releasing that Promise at the stop
// wakes the waiter, whose stack must still be there. In a child process that
// ends with _exit: the waiter's own locals are never destroyed (see
// ~Scheduler), which the leak checker would report at a normal exit.
TEST(SchedulerTest, StoppingWhileACoroutineWaitsOnAFutureHeldElsewhere) {
  for (bool by_timer : {false, true}) {
    SCOPED_TRACE(by_timer ? "the promise is a timer's" : "the promise is another coroutine's");
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto w = Worker::Start(WorkerOptions{});
      if (!w.ok()) _exit(10);
      std::atomic<bool> waiting{false};
      (*w)->Post([&waiting, by_timer] {
        Scheduler* s = Scheduler::Current();
        if (by_timer) {
          auto p = std::make_shared<Promise<void>>();
          Future<void> f = p->GetFuture();
          s->AddTimer(Clock::now() + 1h, [p] { p->SetValue(); });
          p.reset();
          waiting = true;
          (void)f.Get();
        } else {
          Future<void> f = Async(*s, [] { this_coro::SleepFor(1h); });
          waiting = true;
          (void)f.Get();
        }
      }, "waiter");
      for (int i = 0; i < 500 && !waiting; ++i) std::this_thread::sleep_for(1ms);
      if (!waiting) _exit(11);
      std::this_thread::sleep_for(20ms);
      w->reset();  // crashed here when the stacks went before what the coroutines held
      _exit(0);
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st)) << "the child died of signal " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    EXPECT_EQ(WEXITSTATUS(st), 0);
  }
}

TEST(SchedulerTest, ExceptionInSpawnedCoroutineIsContained) {
  auto s = MakeScheduler();
  bool after = false;
  s->Spawn([] { throw std::runtime_error("boom"); }, "thrower");
  RunMain(*s, [&] { after = true; });
  EXPECT_TRUE(after);
  EXPECT_EQ(s->stats().alive, 0u);
}

class CountingPoller final : public Poller {
 public:
  CountingPoller() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~CountingPoller() override { ::close(fd_); }
  int Poll() override {
    uint64_t v = 0;
    if (::read(fd_, &v, sizeof v) == sizeof v) {
      events += static_cast<int>(v);
      if (on_event) on_event();
      return static_cast<int>(v);
    }
    return 0;
  }
  int fd() const override { return fd_; }
  void Signal() {
    uint64_t one = 1;
    EXPECT_EQ(::write(fd_, &one, sizeof one), 8);
  }
  std::atomic<int> events{0};
  std::function<void()> on_event;

 private:
  int fd_;
};

TEST(SchedulerTest, PollerFdWakesASleepingWorker) {
  auto w = Worker::Start(WorkerOptions{}).value();
  CountingPoller poller;
  Promise<void> added;
  auto added_f = added.GetFuture();
  Event got;
  poller.on_event = [&] { got.Set(); };
  w->Post([&] {
    w->scheduler().AddPoller(&poller);
    added.SetValue();
  });
  ASSERT_TRUE(added_f.WaitFor(5s).ok());
  std::this_thread::sleep_for(20ms);  // worker is asleep in epoll_wait now
  poller.Signal();                    // no Post: only the poller fd can wake it
  EXPECT_TRUE(got.WaitFor(5s).ok());
  EXPECT_EQ(poller.events.load(), 1);
  Promise<void> removed;
  auto removed_f = removed.GetFuture();
  w->Post([&] {
    w->scheduler().RemovePoller(&poller);
    removed.SetValue();
  });
  EXPECT_TRUE(removed_f.WaitFor(5s).ok());
}

int Recurse(int depth) {
  volatile char frame[512];
  frame[0] = static_cast<char>(depth);
  if (depth > 100000000) return frame[0];
  return Recurse(depth + 1) + frame[0];
}

TEST(SchedulerDeathTest, StackOverflowNamesTheCoroutine) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        SchedulerOptions o;
        o.stack_bytes = 32 * 1024;
        auto s = Scheduler::Create(o).value();
        s->Spawn([] { Recurse(0); }, "deep-recursion");
        s->Run();
      },
      // Our handler runs first; should ASan still claim the fault, accept its report.
      "coroutine stack overflow: coroutine 'deep-recursion'|stack-overflow|SEGV");
}

volatile uintptr_t g_bad_address = 16;  // unmapped; volatile hides it from the optimizer

TEST(SchedulerDeathTest, OtherSegfaultsAreNotReportedAsOverflow) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto s = Scheduler::Create(SchedulerOptions{}).value();  // handler installed
  EXPECT_DEATH(
      {
        *reinterpret_cast<volatile int*>(g_bad_address) = 1;
      },
      "");
  // The overflow text must not appear for a plain null dereference.
  EXPECT_EXIT(
      {
        auto s2 = Scheduler::Create(SchedulerOptions{}).value();
        s2->Spawn([] {
          *reinterpret_cast<volatile int*>(g_bad_address) = 1;
        }, "null-deref");
        s2->Run();
      },
      [](int status) { return !WIFEXITED(status) || WEXITSTATUS(status) != 0; },
      ::testing::Not(::testing::ContainsRegex("coroutine stack overflow")));
}

}  // namespace
}  // namespace hrpc::coro
