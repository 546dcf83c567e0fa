// OwnerCounter: a statistics counter that one thread writes and any thread reads.
//
// The data path of hrpc runs on workers that own their state (a transport, a
// scheduler, a connection table), so their counters have exactly one writer.
// Add() is then a relaxed load and a relaxed store: on x86 the same
// instructions as a plain `++x` (no lock prefix, no fence), while a reader on
// another thread (a metrics scrape) still gets a well-defined, recent value.
// Two writers would lose increments: where several threads add, use
// std::atomic::fetch_add instead.
#pragma once

#include <atomic>
#include <cstdint>

namespace hrpc {

class OwnerCounter {
 public:
  constexpr OwnerCounter() noexcept = default;
  OwnerCounter(const OwnerCounter&) = delete;
  OwnerCounter& operator=(const OwnerCounter&) = delete;

  // Owner thread only.
  void Add(uint64_t n = 1) noexcept { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void Sub(uint64_t n = 1) noexcept { v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  void Set(uint64_t n) noexcept { v_.store(n, std::memory_order_relaxed); }
  OwnerCounter& operator++() noexcept {
    Add(1);
    return *this;
  }
  // Any thread.
  uint64_t Get() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

}  // namespace hrpc
