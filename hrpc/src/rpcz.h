// Private to the RPC runtime: the recent slowest and failed calls of a server
// (the /rpcz page of the HTTP endpoint, docs/observability.md).
//
// One RpczRing per worker, written only by that worker, at the end of a call:
// no lock, no allocation. A call is kept when it failed (a ring of the last
// kFailed) or when it is among the kSlowPerWindow slowest of the current
// window of kWindow; kWindows windows are kept, so /rpcz shows the slowest
// calls of each 10 s over the last minute. The test that decides is one
// comparison of the call's latency (in CycleClock ticks) with the slowest-set's
// minimum, so the calls that are not kept cost nothing more.
//
// Readers (the endpoint's thread) copy slots under a per-slot sequence lock:
// every field is a relaxed atomic, a slot written while it was read is
// skipped.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/rpc/stats.h"

namespace hrpc::internal {

// Where a served call spent its time, in order: waiting for its coroutine to
// run (queue), pulling the request's bulk attachment (pull), in the handler
// (handler), placing the response attachment — WRITE into the client's push
// regions or exposing it (push) — and sending the response until it is out
// and, for a response the client READs, released (reply).
enum RpczPhase : uint8_t { kQueue, kPull, kHandler, kPush, kReply, kNumPhases };
const char* RpczPhaseName(size_t phase) noexcept;

// The CycleClock ticks at the phase boundaries of one call (0: not reached).
struct RpczTicks {
  uint64_t arrival = 0;  // the request frame was read
  uint64_t start = 0;    // its coroutine started
  uint64_t pulled = 0;   // bulk attachment pulled
  uint64_t handled = 0;  // handler returned
  uint64_t pushed = 0;   // response attachment placed
};

// One recorded call, as the endpoint shows it.
struct RpczRecord {
  std::string method;
  std::string peer;
  StatusCode code = StatusCode::kOk;
  std::chrono::system_clock::time_point start;  // arrival, wall clock
  uint64_t total_ns = 0;
  std::array<uint64_t, kNumPhases> phase_ns{};
  uint64_t bytes_in = 0, bytes_out = 0;
  uint64_t txn = 0;
  size_t worker = 0;
};

class RpczRing {
 public:
  static constexpr size_t kSlowPerWindow = 8;
  static constexpr size_t kWindows = 6;
  static constexpr std::chrono::seconds kWindow{10};
  static constexpr size_t kFailed = 32;
  static constexpr size_t kPeerBytes = 48;

  explicit RpczRing(size_t worker);
  RpczRing(const RpczRing&) = delete;
  RpczRing& operator=(const RpczRing&) = delete;

  // The worker, at the end of a call: keeps it when it failed or is slow
  // enough. `end` is the CycleClock tick of the call's end.
  void Finish(const MethodCounters* method, std::string_view peer, StatusCode code, const RpczTicks& t, uint64_t end,
              uint64_t bytes_in, uint64_t bytes_out, uint64_t txn) noexcept {
    if (end - window_start_ > window_ticks_) Rotate(end);
    const uint64_t total = end > t.arrival ? end - t.arrival : 0;
    if (code != StatusCode::kOk) Keep(failed_[failed_next_++ % kFailed], method, peer, code, t, end, bytes_in, bytes_out, txn);
    if (total > slow_floor_) KeepSlow(total, method, peer, code, t, end, bytes_in, bytes_out, txn);
  }

  // Any thread: copies of the kept calls.
  void Read(std::vector<RpczRecord>* slow, std::vector<RpczRecord>* failed) const;

 private:
  struct Slot {
    std::atomic<uint32_t> seq{0};  // odd while written
    std::atomic<const MethodCounters*> method{nullptr};  // nullptr: empty
    std::atomic<uint64_t> wall_ns{0};
    std::atomic<uint64_t> total_ns{0};
    std::array<std::atomic<uint64_t>, kNumPhases> phase_ns{};
    std::atomic<uint64_t> bytes_in{0}, bytes_out{0}, txn{0};
    std::atomic<uint8_t> code{0};
    std::array<std::atomic<uint64_t>, kPeerBytes / 8> peer{};
  };

  void Rotate(uint64_t now) noexcept;
  void KeepSlow(uint64_t total, const MethodCounters* method, std::string_view peer, StatusCode code,
                const RpczTicks& t, uint64_t end, uint64_t bytes_in, uint64_t bytes_out, uint64_t txn) noexcept;
  void Keep(Slot& s, const MethodCounters* method, std::string_view peer, StatusCode code, const RpczTicks& t,
            uint64_t end, uint64_t bytes_in, uint64_t bytes_out, uint64_t txn) noexcept;
  static void Clear(Slot& s) noexcept;
  bool Copy(const Slot& s, RpczRecord* out) const;

  const size_t worker_;
  const coro::CycleClock& clock_;
  const uint64_t window_ticks_;
  // Wall clock and CycleClock read together once, to date the records.
  const int64_t wall0_ns_;
  const uint64_t tick0_;
  // Writer-only state.
  uint64_t window_start_ = 0;
  size_t window_ = 0;                 // current window
  size_t slow_count_ = 0;             // filled slots of the current window
  uint64_t slow_floor_ = 0;           // the smallest kept latency once the window is full (ticks), else 0
  std::array<uint64_t, kSlowPerWindow> slow_ticks_{};  // latencies of the current window's slots
  uint64_t failed_next_ = 0;
  std::array<std::array<Slot, kSlowPerWindow>, kWindows> slow_;
  std::array<Slot, kFailed> failed_;
};

}  // namespace hrpc::internal
