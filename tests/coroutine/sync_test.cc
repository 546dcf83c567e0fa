// Tests for coroutine/src/sync.cc: Event, Mutex, ConditionVariable, Semaphore,
// WaitGroup, Promise/Future (coroutines and plain threads), timeouts, races.
#include "hrpc/coroutine/sync.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/worker.h"

namespace hrpc::coro {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Worker> StartWorker(std::string name = "w") {
  WorkerOptions o;
  o.sched.name = std::move(name);
  auto w = Worker::Start(std::move(o));
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return std::move(w).value();
}

void RunMain(std::function<void(Scheduler&)> main) {
  auto s = Scheduler::Create(SchedulerOptions{.name = "main"}).value();
  s->Spawn([&] {
    main(*s);
    s->Stop();
  }, "main");
  s->Run();
}

TEST(EventTest, WaitSuspendsCoroutineNotThread) {
  std::vector<int> order;
  RunMain([&](Scheduler& s) {
    Event ev;
    s.Spawn([&] {
      order.push_back(1);
      EXPECT_TRUE(ev.Wait().ok());
      order.push_back(3);
    });
    this_coro::Yield();  // the waiter parks; the thread keeps running us
    order.push_back(2);
    EXPECT_FALSE(ev.IsSet());
    ev.Set();
    this_coro::Yield();
    EXPECT_TRUE(ev.IsSet());
    EXPECT_TRUE(ev.Wait().ok());  // already set: no suspension
    ev.Reset();
    EXPECT_FALSE(ev.IsSet());
  });
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

TEST(EventTest, WaitForTimesOutWithDeadlineExceeded) {
  RunMain([](Scheduler&) {
    Event ev;
    auto t0 = Clock::now();
    Status st = ev.WaitFor(20ms);
    EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st.ToString();
    EXPECT_GE(Clock::now() - t0, 20ms);
  });
  Event ev;  // plain thread
  EXPECT_EQ(ev.WaitFor(10ms).code(), StatusCode::kDeadlineExceeded);
}

// A wait "for ever" (the longest duration there is) waits: the deadline
// saturates instead of wrapping into the past.
TEST(EventTest, WaitForTheLongestDurationWaitsForTheSet) {
  for (const bool in_coroutine : {true, false}) {
    SCOPED_TRACE(in_coroutine ? "coroutine" : "plain thread");
    Event ev;
    std::thread later([&] {
      std::this_thread::sleep_for(50ms);
      ev.Set();
    });
    const auto t0 = Clock::now();
    Status st;
    if (in_coroutine) {
      RunMain([&](Scheduler&) { st = ev.WaitFor(std::chrono::nanoseconds::max()); });
    } else {
      st = ev.WaitFor(std::chrono::nanoseconds::max());
    }
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_GE(Clock::now() - t0, 40ms);
    later.join();
  }
  EXPECT_EQ(DeadlineAfter(Clock::now(), std::chrono::nanoseconds::max()), Clock::time_point::max());
}

TEST(LocalEventTest, WaitParksUntilSetAndSetBeforeWaitDoesNotPark) {
  std::vector<int> order;
  RunMain([&](Scheduler& s) {
    LocalEvent ev;
    s.Spawn([&] {
      order.push_back(1);
      EXPECT_TRUE(ev.Wait().ok());
      order.push_back(3);
    });
    this_coro::Yield();
    order.push_back(2);
    EXPECT_FALSE(ev.IsSet());
    ev.Set();
    this_coro::Yield();
    EXPECT_TRUE(ev.IsSet());
    EXPECT_TRUE(ev.Wait().ok());  // already set
  });
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

TEST(LocalEventTest, WaitUntilTimesOutOrReturnsOkWhenSetFirst) {
  RunMain([](Scheduler& s) {
    LocalEvent never;
    const auto t0 = Clock::now();
    Status st = never.WaitUntil(Clock::now() + 20ms);
    EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st.ToString();
    EXPECT_GE(Clock::now() - t0, 20ms);

    LocalEvent soon;
    s.Spawn([&] {
      this_coro::SleepFor(5ms);
      soon.Set();
    });
    EXPECT_TRUE(soon.WaitUntil(Clock::now() + 10s).ok());
    this_coro::SleepFor(10ms);  // the cancelled timer must not resume us again
  });
}

TEST(LocalEventTest, RefusesAPlainThreadAndASecondWaiter) {
  LocalEvent ev;
  EXPECT_EQ(ev.Wait().code(), StatusCode::kFailedPrecondition);
  RunMain([](Scheduler& s) {
    LocalEvent ev2;
    bool first_done = false;
    s.Spawn([&] {
      EXPECT_TRUE(ev2.Wait().ok());
      first_done = true;
    });
    this_coro::Yield();
    EXPECT_EQ(ev2.Wait().code(), StatusCode::kFailedPrecondition);
    ev2.Set();
    this_coro::Yield();
    EXPECT_TRUE(first_done);
  });
}

TEST(LocalEventTest, WokenWaiterMayDestroyTheEvent) {
  RunMain([](Scheduler& s) {
    auto ev = std::make_unique<LocalEvent>();
    bool done = false;
    s.Spawn([&] {
      EXPECT_TRUE(ev->Wait().ok());
      ev.reset();  // ASan: Set() must not touch the event after queueing us
      done = true;
    });
    this_coro::Yield();
    ev->Set();
    this_coro::Yield();
    EXPECT_TRUE(done);
  });
}

TEST(EventTest, PlainThreadWaitsForCoroutineSet) {
  auto w = StartWorker();
  Event ev;
  w->Post([&] {
    this_coro::SleepFor(10ms);
    ev.Set();
  });
  EXPECT_TRUE(ev.WaitFor(10s).ok());
}

// Timeout and Set race; each waiter must resume exactly once and never touch a
// dead waiter (ASan would flag it). Both outcomes are fine.
TEST(EventTest, TimeoutRacingWithCrossThreadSet) {
  auto waiter = StartWorker("waiter");
  auto setter = StartWorker("setter");
  constexpr int kRounds = 2000;
  std::atomic<int> resumed{0}, timed_out{0};
  WaitGroup all;
  all.Add(kRounds);
  for (int i = 0; i < kRounds; ++i) {
    auto ev = std::make_shared<Event>();
    auto d = std::chrono::microseconds(i % 50);
    waiter->Post([&, ev, d] {
      Status st = ev->WaitFor(d);
      if (!st.ok()) {
        EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
        timed_out++;
      }
      resumed++;
      all.Done();
    });
    setter->Post([ev] { ev->Set(); });
  }
  ASSERT_TRUE(all.WaitFor(30s).ok());
  EXPECT_EQ(resumed.load(), kRounds);
}

// Same race with a plain-thread waiter (mutex/condvar path).
TEST(EventTest, PlainThreadTimeoutRacingWithSet) {
  auto setter = StartWorker("setter");
  constexpr int kRounds = 2000;
  int timed_out = 0;
  for (int i = 0; i < kRounds; ++i) {
    auto ev = std::make_shared<Event>();
    setter->Post([ev] { ev->Set(); });
    Status st = ev->WaitFor(std::chrono::microseconds(i % 50));
    if (!st.ok()) {
      ASSERT_EQ(st.code(), StatusCode::kDeadlineExceeded);
      timed_out++;
    }
  }
  EXPECT_LE(timed_out, kRounds);
}

TEST(FutureTest, GetFromCoroutineAndFromPlainThread) {
  auto w = StartWorker();
  auto f = Async(w->scheduler(), [] {
    this_coro::SleepFor(5ms);
    return 42;
  }, "answer");
  auto r = f.Get();  // plain thread blocks
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 42);
  EXPECT_FALSE(f.valid());
  EXPECT_EQ(f.Get().status().code(), StatusCode::kFailedPrecondition);

  // Coroutine waiting on another worker's result.
  auto other = StartWorker("other");
  auto outer = Async(w->scheduler(), [&]() -> Result<std::string> {
    auto inner = Async(other->scheduler(), [] { return std::string("from other"); });
    return inner.Get();
  });
  auto s = outer.Get();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "from other");
}

TEST(FutureTest, WaitForTimesOutThenStillDelivers) {
  Promise<int> p;
  auto f = p.GetFuture();
  auto r = f.WaitFor(10ms);  // plain thread
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(f.valid());
  RunMain([&](Scheduler&) {
    auto r2 = f.WaitFor(10ms);  // coroutine
    EXPECT_EQ(r2.status().code(), StatusCode::kDeadlineExceeded);
  });
  EXPECT_TRUE(p.SetValue(7));
  EXPECT_FALSE(p.SetValue(8));  // first set wins
  auto r3 = f.Get();
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(*r3, 7);
}

TEST(FutureTest, ExceptionBecomesInternalStatus) {
  auto w = StartWorker();
  auto f = Async(w->scheduler(), []() -> int { throw std::runtime_error("disk on fire"); }, "thrower");
  auto r = f.WaitFor(10s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("disk on fire"));
  // The worker survives and keeps running coroutines.
  auto ok = Async(w->scheduler(), [] {});
  EXPECT_TRUE(ok.WaitFor(10s).ok());
}

TEST(FutureTest, StatusAndResultReturningFunctions) {
  auto w = StartWorker();
  auto f1 = Async(w->scheduler(), [] { return NotFoundError("nope"); });
  static_assert(std::is_same_v<decltype(f1), Future<void>>);
  EXPECT_EQ(f1.Get().code(), StatusCode::kNotFound);
  auto f2 = Async(w->scheduler(), []() -> Result<int> { return 5; });
  static_assert(std::is_same_v<decltype(f2), Future<int>>);
  EXPECT_EQ(*f2.Get(), 5);
}

TEST(FutureTest, DroppedPromiseCancels) {
  Future<int> f;
  {
    Promise<int> p;
    f = p.GetFuture();
  }
  EXPECT_EQ(f.Get().status().code(), StatusCode::kCancelled);
}

TEST(MutexTest, ExcludesAcrossSuspensionsAndHandsOffFifo) {
  std::vector<int> order;
  RunMain([&](Scheduler& s) {
    Mutex m;
    int inside = 0, max_inside = 0;
    WaitGroup wg;
    for (int i = 0; i < 5; ++i) {
      wg.Add();
      s.Spawn([&, i] {
        std::unique_lock lk(m);
        inside++;
        max_inside = std::max(max_inside, inside);
        order.push_back(i);
        this_coro::Yield();  // others try to enter meanwhile
        this_coro::SleepFor(1ms);
        inside--;
        lk.unlock();
        wg.Done();
      });
    }
    EXPECT_TRUE(wg.Wait().ok());
    EXPECT_EQ(max_inside, 1);
    EXPECT_TRUE(m.TryLock());
    EXPECT_FALSE(m.TryLock());
    m.Unlock();
  });
  EXPECT_THAT(order, ::testing::ElementsAre(0, 1, 2, 3, 4));
}

TEST(MutexTest, CountsCorrectlyAcrossWorkersAndThreads) {
  auto a = StartWorker("a");
  auto b = StartWorker("b");
  Mutex m;
  int64_t counter = 0;
  constexpr int kIters = 5000;
  WaitGroup wg;
  wg.Add(3);
  auto body = [&] {
    for (int i = 0; i < kIters; ++i) {
      m.Lock();
      counter++;
      if (i % 100 == 0) this_coro::Yield();
      m.Unlock();
    }
    wg.Done();
  };
  a->Post(body);
  b->Post(body);
  std::thread t(body);  // plain thread contends too
  t.join();
  ASSERT_TRUE(wg.WaitFor(30s).ok());
  EXPECT_EQ(counter, 3 * kIters);
}

TEST(ConditionVariableTest, ProducerConsumer) {
  RunMain([](Scheduler& s) {
    Mutex m;
    ConditionVariable cv;
    std::vector<int> q;
    std::vector<int> got;
    bool done = false;
    WaitGroup wg;
    wg.Add();
    s.Spawn([&] {
      std::unique_lock lk(m);
      while (true) {
        cv.Wait(m, [&] { return !q.empty() || done; });
        if (q.empty() && done) break;
        got.push_back(q.front());
        q.erase(q.begin());
      }
      wg.Done();
    });
    for (int i = 0; i < 10; ++i) {
      {
        std::lock_guard lk(m);
        q.push_back(i);
      }
      cv.NotifyOne();
      this_coro::Yield();
    }
    {
      std::lock_guard lk(m);
      done = true;
    }
    cv.NotifyAll();
    EXPECT_TRUE(wg.Wait().ok());
    EXPECT_THAT(got, ::testing::ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9));
    std::unique_lock lk(m);
    EXPECT_EQ(cv.WaitFor(m, 5ms).code(), StatusCode::kDeadlineExceeded);
    EXPECT_FALSE(m.TryLock());  // re-locked after the timeout
  });
}

TEST(SemaphoreTest, LimitsConcurrencyAndTimesOut) {
  RunMain([](Scheduler& s) {
    Semaphore sem(2);
    int inside = 0, max_inside = 0;
    WaitGroup wg;
    for (int i = 0; i < 6; ++i) {
      wg.Add();
      s.Spawn([&] {
        sem.Acquire();
        inside++;
        max_inside = std::max(max_inside, inside);
        this_coro::SleepFor(2ms);
        inside--;
        sem.Release();
        wg.Done();
      });
    }
    EXPECT_TRUE(wg.Wait().ok());
    EXPECT_EQ(max_inside, 2);
    EXPECT_EQ(sem.count(), 2u);
    EXPECT_TRUE(sem.TryAcquire());
    EXPECT_TRUE(sem.TryAcquire());
    EXPECT_FALSE(sem.TryAcquire());
    EXPECT_EQ(sem.AcquireFor(5ms).code(), StatusCode::kDeadlineExceeded);
    sem.Release(2);
    EXPECT_TRUE(sem.AcquireFor(5ms).ok());
  });
}

TEST(WaitGroupTest, WaitsForAllAcrossThreads) {
  auto w = StartWorker();
  WaitGroup wg;
  std::atomic<int> n{0};
  wg.Add(10);
  for (int i = 0; i < 10; ++i) {
    w->Post([&, i] {
      this_coro::SleepFor(std::chrono::milliseconds(i));
      n++;
      wg.Done();
    });
  }
  EXPECT_TRUE(wg.WaitFor(10s).ok());  // plain thread
  EXPECT_EQ(n.load(), 10);
  EXPECT_EQ(wg.count(), 0);
  WaitGroup never;
  never.Add();
  EXPECT_EQ(never.WaitFor(5ms).code(), StatusCode::kDeadlineExceeded);
  never.Done();
  EXPECT_TRUE(never.Wait().ok());
}

// A waiter may destroy the primitive as soon as it is woken (`wg.Wait(); return;`):
// the waker must not touch it after resuming the waiter. Heap-allocated so that
// ASan reports any touch after the free as heap-use-after-free.
TEST(SyncLifetimeTest, WaiterMayDestroyPrimitiveRightAfterWake) {
  for (int round = 0; round < 300; ++round) {
    auto wg = std::make_unique<WaitGroup>();
    wg->Add(1);
    WaitGroup* raw_wg = wg.get();
    std::thread t1([raw_wg] { raw_wg->Done(); });
    ASSERT_TRUE(wg->Wait().ok());
    wg.reset();
    t1.join();

    auto ev = std::make_unique<Event>();
    Event* raw_ev = ev.get();
    std::thread t2([raw_ev] { raw_ev->Set(); });
    ASSERT_TRUE(ev->Wait().ok());
    ev.reset();
    t2.join();
  }
}

TEST(SyncLifetimeTest, CoroutineWaiterMayDestroyEventRightAfterWake) {
  auto w = Worker::Start({});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  for (int round = 0; round < 300; ++round) {
    auto ev = std::make_unique<Event>();
    Event* raw = ev.get();
    Event done;
    (*w)->Post([&ev, &done] {
      ASSERT_TRUE(ev->Wait().ok());
      ev.reset();  // on the worker, while the setter may still be in Set()
      done.Set();
    });
    std::this_thread::yield();
    raw->Set();
    ASSERT_TRUE(done.WaitFor(std::chrono::seconds(10)).ok());
  }
}

}  // namespace
}  // namespace hrpc::coro
