// Per-method RPC statistics: calls, errors by status code, calls in flight,
// bytes in/out and a latency histogram with p50/p99/p999. The Prometheus
// metrics and the /status page of the HTTP endpoint read these counters at
// scrape time (docs/observability.md): recording stays what it is here.
//
// A StatsRegistry belongs to one Server or one RpcChannel (no process-wide
// registry). Recording is thread-safe and lock-free after the first call of a
// method (a channel keeps the counters of up to 32 methods at hand; past them
// a call finds its method under the registry's lock, which a scrape does not
// hold while it reads). Counters are relaxed atomics: a snapshot taken while
// calls run is consistent per counter, not across counters. Snapshot() may be
// called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hrpc/base/status.h"

namespace hrpc {

// Log-linear histogram of durations in nanoseconds: 16 linear sub-buckets per
// power of two, so any percentile is within ~6% of the true value. Thread-safe.
class LatencyHistogram {
 public:
  static constexpr int kSubBits = 4;
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kMaxExp = 42;  // ~73 minutes; longer values land in the last bucket
  static constexpr size_t kBuckets = static_cast<size_t>(kMaxExp - kSubBits + 2) * kSub;

  void Record(std::chrono::nanoseconds d) noexcept;
  void Record(uint64_t ns) noexcept;
  // Adds another histogram's counts (for totals over methods or threads).
  void Merge(const LatencyHistogram& other) noexcept;
  void Reset() noexcept;
  uint64_t count() const noexcept;
  // The q-quantile (0 < q <= 1) in nanoseconds (upper edge of its bucket); 0 when empty.
  uint64_t Quantile(double q) const noexcept;
  uint64_t max_ns() const noexcept { return max_.load(std::memory_order_relaxed); }
  uint64_t sum_ns() const noexcept { return sum_.load(std::memory_order_relaxed); }

  static size_t BucketOf(uint64_t ns) noexcept;
  static uint64_t BucketUpperEdge(size_t bucket) noexcept;

  // For exporters with fixed buckets: out[i] = recorded values counted under
  // bound_ns[i] (ascending), where each internal bucket is counted under the
  // first bound at or above its upper edge (so a value may be counted one
  // bound late by at most 1/16 of it, never early). Returns the total count.
  uint64_t CumulativeCounts(std::span<const uint64_t> bound_ns, std::span<uint64_t> out) const noexcept;

 private:
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> sum_{0};
  std::atomic<uint64_t> max_{0};
};

// Live counters of one method. Obtained from a StatsRegistry; stable address
// for the registry's lifetime.
struct MethodCounters {
  std::string name;  // "pkg.Service.Method", or "<service id>/<method id>" when unknown
  std::atomic<uint64_t> count{0};      // completed calls
  std::atomic<uint64_t> errors{0};     // completed with a non-OK status
  std::atomic<uint64_t> ok{0};         // completed OK (its own counter: a reader of count and
                                       // errors may see a call in one and not yet in the other)
  // errors by status code ([0], OK, stays 0)
  std::array<std::atomic<uint64_t>, kStatusCodeCount> errors_by_code{};
  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> bytes_in{0};   // request bytes (server) / response bytes (client), incl. attachments
  std::atomic<uint64_t> bytes_out{0};  // the other direction
  LatencyHistogram latency;

  void Begin() noexcept { in_flight.fetch_add(1, std::memory_order_relaxed); }
  // One finished call: latency, its status code, and its bytes.
  void End(std::chrono::nanoseconds latency_ns, StatusCode code, uint64_t in, uint64_t out) noexcept;
};

// A copyable snapshot of one method's counters.
struct MethodStats {
  std::string method;
  uint64_t count = 0;
  uint64_t errors = 0;
  std::vector<std::pair<StatusCode, uint64_t>> errors_by_code;  // non-zero counts, by code
  int64_t in_flight = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  double mean_us = 0, p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
};

class StatsRegistry {
 public:
  StatsRegistry() = default;
  StatsRegistry(const StatsRegistry&) = delete;
  StatsRegistry& operator=(const StatsRegistry&) = delete;

  // Counters of (service_id, method_id), created on first use with `name`.
  MethodCounters& For(uint32_t service_id, uint32_t method_id, std::string_view name);
  // One entry per method seen so far, sorted by name; methods never called are
  // included when they were registered (count 0).
  std::vector<MethodStats> Snapshot() const;
  // Calls fn on the live counters of every method (any order): for exporters
  // that read histograms without copying them. Neither this nor Snapshot()
  // holds the registry's lock while it reads the counters (a call that meets
  // a method for the first time does not wait for a scrape).
  void ForEach(const std::function<void(const MethodCounters&)>& fn) const;

 private:
  // The counters made so far (they live as long as the registry).
  std::vector<const MethodCounters*> All() const;

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::unique_ptr<MethodCounters>> methods_;
};

// A fixed-width table of snapshots, one line per method, with a header line.
std::string FormatStatsTable(const std::vector<MethodStats>& stats);

}  // namespace hrpc
