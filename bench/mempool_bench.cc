// mempool micro-benchmarks: pool alloc+free pairs against malloc and
// posix_memalign(4096), and the cross-thread case (one thread allocates,
// another frees) through a single-producer/single-consumer ring.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "benchmark_main.h"
#include "hrpc/mempool/pool.h"

namespace {

using hrpc::mempool::Buffer;
using hrpc::mempool::Pool;
using hrpc::mempool::PoolOptions;

std::unique_ptr<Pool> MakePool() {
  PoolOptions o;
  o.arena_bytes = 64 * hrpc::mempool::kMiB;
  o.max_class_bytes = 1 * hrpc::mempool::kMiB;
  auto r = Pool::Create(o);
  if (!r.ok()) {
    std::fprintf(stderr, "Pool::Create: %s\n", r.status().ToString().c_str());
    std::abort();
  }
  return std::move(r).value();
}

void BM_PoolAllocFree(benchmark::State& state) {
  auto pool = MakePool();
  const auto bytes = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    auto r = pool->Allocate(bytes);
    benchmark::DoNotOptimize(r.value().data());
  }
  state.SetLabel(std::string(hrpc::mempool::PageModeName(pool->page_mode())));
}

void BM_Malloc(benchmark::State& state) {
  const auto bytes = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void BM_PosixMemalign(benchmark::State& state) {
  const auto bytes = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, bytes) != 0) state.SkipWithError("posix_memalign failed");
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

// SPSC ring of Buffers: the benchmark thread allocates and pushes, a consumer
// thread pops and drops (frees). Time is per allocate/free pair.
class SpscRing {
 public:
  explicit SpscRing(size_t capacity) : slots_(capacity) {}
  bool Push(Buffer& b) {
    const size_t h = head_.load(std::memory_order_relaxed);
    if (h - tail_cache_ == slots_.size()) {
      tail_cache_ = tail_.load(std::memory_order_acquire);
      if (h - tail_cache_ == slots_.size()) return false;
    }
    slots_[h % slots_.size()] = std::move(b);
    head_.store(h + 1, std::memory_order_release);
    return true;
  }
  bool Pop() {
    const size_t t = tail_.load(std::memory_order_relaxed);
    if (t == head_cache_) {
      head_cache_ = head_.load(std::memory_order_acquire);
      if (t == head_cache_) return false;
    }
    slots_[t % slots_.size()].Reset();
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }

 private:
  std::vector<Buffer> slots_;
  alignas(64) std::atomic<size_t> head_{0};
  size_t tail_cache_ = 0;
  alignas(64) std::atomic<size_t> tail_{0};
  size_t head_cache_ = 0;
};

void BM_PoolCrossThreadFree(benchmark::State& state) {
  auto pool = MakePool();
  const auto bytes = static_cast<size_t>(state.range(0));
  // Keep the blocks in flight well inside the 64 MiB pool: 32 MiB worth, 8..256 slots.
  const size_t ring_slots = std::clamp<size_t>(32 * hrpc::mempool::kMiB / bytes, 8, 256);
  SpscRing ring(ring_slots);
  std::atomic<bool> stop{false};
  std::thread consumer([&] {
    for (;;) {
      if (!ring.Pop()) {
        if (stop.load(std::memory_order_acquire)) {
          while (ring.Pop()) {}
          return;
        }
        std::this_thread::yield();
      }
    }
  });
  size_t exhausted = 0;
  for (auto _ : state) {
    auto r = pool->Allocate(bytes);
    if (!r.ok()) {  // blocks parked in the consumer's cache: let it flush
      ++exhausted;
      continue;
    }
    Buffer b = std::move(r).value();
    while (!ring.Push(b)) std::this_thread::yield();
  }
  stop.store(true, std::memory_order_release);
  consumer.join();
  state.counters["exhausted"] = static_cast<double>(exhausted);
}

#define HRPC_SIZES Arg(64)->Arg(4096)->Arg(65536)->Arg(1048576)
BENCHMARK(BM_PoolAllocFree)->HRPC_SIZES;
BENCHMARK(BM_PoolCrossThreadFree)->HRPC_SIZES->UseRealTime();
BENCHMARK(BM_Malloc)->HRPC_SIZES;
BENCHMARK(BM_PosixMemalign)->HRPC_SIZES;

}  // namespace

int main(int argc, char** argv) { return hrpc::bench::BenchmarkMain(argc, argv); }
