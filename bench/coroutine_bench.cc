// Coroutine micro-benchmarks: yield, spawn+finish (pooled stacks), Event
// ping-pong on one worker and across two, and the two-thread condvar baseline.
//
// Pinning: the benchmark thread pins itself to cpu 0; the peer thread (worker or
// plain thread) of the cross-thread cases is pinned to cpu 1 when it exists.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <benchmark/benchmark.h>

#include "benchmark_main.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"

namespace hrpc::coro {
namespace {

int PeerCpu() { return std::thread::hardware_concurrency() > 1 ? 1 : -1; }

void PinSelf(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// Runs body() as the only initial coroutine of a scheduler on this thread.
template <class F>
void OnScheduler(benchmark::State& state, F body) {
  PinSelf(0);
  auto s = Scheduler::Create(SchedulerOptions{.name = "bench"});
  if (!s.ok()) {
    state.SkipWithError(s.status().ToString().c_str());
    return;
  }
  Scheduler& sched = **s;
  sched.Spawn([&] {
    body(sched);
    sched.Stop();
  }, "bench-main");
  sched.Run();
}

void BM_Yield(benchmark::State& state) {
  OnScheduler(state, [&](Scheduler&) {
    for (auto _ : state) this_coro::Yield();
  });
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Yield);

void BM_SpawnJoin(benchmark::State& state) {
  OnScheduler(state, [&](Scheduler& s) {
    uint64_t done = 0;
    for (int i = 0; i < 16; ++i) s.Spawn([&done] { done++; });  // warm the stack pool
    this_coro::Yield();
    for (auto _ : state) {
      s.Spawn([&done] { done++; });
      this_coro::Yield();  // FIFO: the child has run to completion when we resume
    }
    if (done != static_cast<uint64_t>(state.iterations()) + 16) state.SkipWithError("child did not finish");
  });
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SpawnJoin);

void BM_EventPingPongSameWorker(benchmark::State& state) {
  OnScheduler(state, [&](Scheduler& s) {
    Event ping, pong;
    bool done = false;
    WaitGroup wg;
    wg.Add();
    s.Spawn([&] {
      while (true) {
        (void)ping.Wait();
        ping.Reset();
        if (done) break;
        pong.Set();
      }
      wg.Done();
    }, "ponger");
    for (auto _ : state) {
      ping.Set();
      (void)pong.Wait();
      pong.Reset();
    }
    done = true;
    ping.Set();
    (void)wg.Wait();
  });
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventPingPongSameWorker);

void BM_EventPingPongCrossWorker(benchmark::State& state) {
  auto peer = Worker::Start(WorkerOptions{.sched = {.name = "bench-peer"}, .cpu = PeerCpu()});
  if (!peer.ok()) {
    state.SkipWithError(peer.status().ToString().c_str());
    return;
  }
  OnScheduler(state, [&](Scheduler&) {
    Event ping, pong;
    std::atomic<bool> done{false};
    WaitGroup wg;
    wg.Add();
    (*peer)->Post([&] {
      while (true) {
        (void)ping.Wait();
        ping.Reset();
        if (done.load()) break;
        pong.Set();
      }
      wg.Done();
    }, "ponger");
    for (auto _ : state) {
      ping.Set();
      (void)pong.Wait();
      pong.Reset();
    }
    done = true;
    ping.Set();
    (void)wg.Wait();
  });
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventPingPongCrossWorker)->UseRealTime();

void BM_ThreadCondvarPingPong(benchmark::State& state) {
  PinSelf(0);
  std::mutex m;
  std::condition_variable cv;
  int turn = 0;  // 0: main's turn to ping, 1: peer's turn to pong
  bool done = false;
  std::thread peer([&] {
    PinSelf(PeerCpu());
    std::unique_lock lk(m);
    while (true) {
      cv.wait(lk, [&] { return turn == 1 || done; });
      if (done) break;
      turn = 0;
      cv.notify_all();
    }
  });
  {
    std::unique_lock lk(m);
    for (auto _ : state) {
      turn = 1;
      cv.notify_all();
      cv.wait(lk, [&] { return turn == 0; });
    }
    done = true;
    cv.notify_all();
  }
  peer.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ThreadCondvarPingPong)->UseRealTime();

}  // namespace
}  // namespace hrpc::coro

int main(int argc, char** argv) { return hrpc::bench::BenchmarkMain(argc, argv); }
