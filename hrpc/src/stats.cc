#include "hrpc/rpc/stats.h"

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>

namespace hrpc {

size_t LatencyHistogram::BucketOf(uint64_t ns) noexcept {
  if (ns < static_cast<uint64_t>(kSub)) return static_cast<size_t>(ns);
  const int e = std::bit_width(ns) - 1;  // >= kSubBits
  if (e > kMaxExp) return kBuckets - 1;
  const uint64_t sub = (ns >> (e - kSubBits)) & (kSub - 1);
  return static_cast<size_t>(e - kSubBits + 1) * kSub + static_cast<size_t>(sub);
}

uint64_t LatencyHistogram::BucketUpperEdge(size_t bucket) noexcept {
  if (bucket < static_cast<size_t>(kSub)) return bucket;
  const int e = static_cast<int>(bucket / kSub) - 1 + kSubBits;
  const uint64_t sub = bucket % kSub;
  const uint64_t base = uint64_t{1} << e;
  const uint64_t step = uint64_t{1} << (e - kSubBits);
  return base + (sub + 1) * step - 1;
}

void LatencyHistogram::Record(std::chrono::nanoseconds d) noexcept {
  Record(d.count() < 0 ? 0 : static_cast<uint64_t>(d.count()));
}

void LatencyHistogram::Record(uint64_t ns) noexcept {
  buckets_[BucketOf(ns)].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(ns, std::memory_order_relaxed);
  uint64_t m = max_.load(std::memory_order_relaxed);
  while (ns > m && !max_.compare_exchange_weak(m, ns, std::memory_order_relaxed)) {
  }
}

void LatencyHistogram::Merge(const LatencyHistogram& other) noexcept {
  for (size_t i = 0; i < kBuckets; ++i) {
    if (uint64_t n = other.buckets_[i].load(std::memory_order_relaxed)) {
      buckets_[i].fetch_add(n, std::memory_order_relaxed);
    }
  }
  sum_.fetch_add(other.sum_ns(), std::memory_order_relaxed);
  uint64_t m = max_.load(std::memory_order_relaxed);
  const uint64_t om = other.max_ns();
  while (om > m && !max_.compare_exchange_weak(m, om, std::memory_order_relaxed)) {
  }
}

void LatencyHistogram::Reset() noexcept {
  for (auto& b : buckets_) b.store(0, std::memory_order_relaxed);
  sum_.store(0, std::memory_order_relaxed);
  max_.store(0, std::memory_order_relaxed);
}

uint64_t LatencyHistogram::count() const noexcept {
  uint64_t n = 0;
  for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
  return n;
}

uint64_t LatencyHistogram::Quantile(double q) const noexcept {
  std::array<uint64_t, kBuckets> snap;
  uint64_t total = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    snap[i] = buckets_[i].load(std::memory_order_relaxed);
    total += snap[i];
  }
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(total) + 0.999999);
  rank = std::clamp<uint64_t>(rank, 1, total);
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += snap[i];
    if (seen >= rank) return std::min(BucketUpperEdge(i), std::max<uint64_t>(max_ns(), 1));
  }
  return max_ns();
}

uint64_t LatencyHistogram::CumulativeCounts(std::span<const uint64_t> bound_ns, std::span<uint64_t> out) const noexcept {
  for (uint64_t& o : out) o = 0;
  uint64_t total = 0;
  size_t b = 0;  // the first bound at or above the current bucket's upper edge
  const size_t nb = std::min(bound_ns.size(), out.size());
  for (size_t i = 0; i < kBuckets; ++i) {
    const uint64_t n = buckets_[i].load(std::memory_order_relaxed);
    if (n == 0) continue;
    total += n;
    const uint64_t edge = i + 1 == kBuckets ? UINT64_MAX : BucketUpperEdge(i);
    while (b < nb && bound_ns[b] < edge) ++b;
    if (b < nb) out[b] += n;
  }
  for (size_t i = 1; i < nb; ++i) out[i] += out[i - 1];
  return total;
}

void MethodCounters::End(std::chrono::nanoseconds latency_ns, StatusCode code, uint64_t in, uint64_t out) noexcept {
  in_flight.fetch_sub(1, std::memory_order_relaxed);
  count.fetch_add(1, std::memory_order_relaxed);
  if (code == StatusCode::kOk) {
    ok.fetch_add(1, std::memory_order_relaxed);
  } else {
    errors.fetch_add(1, std::memory_order_relaxed);
    const auto c = static_cast<size_t>(code);
    if (c < errors_by_code.size()) errors_by_code[c].fetch_add(1, std::memory_order_relaxed);
  }
  if (in) bytes_in.fetch_add(in, std::memory_order_relaxed);
  if (out) bytes_out.fetch_add(out, std::memory_order_relaxed);
  latency.Record(latency_ns);
}

MethodCounters& StatsRegistry::For(uint32_t service_id, uint32_t method_id, std::string_view name) {
  const uint64_t key = (uint64_t{service_id} << 32) | method_id;
  std::lock_guard lock(mu_);
  auto& slot = methods_[key];
  if (!slot) {
    slot = std::make_unique<MethodCounters>();
    if (name.empty()) {
      slot->name = std::to_string(service_id) + "/" + std::to_string(method_id);
    } else {
      slot->name = std::string(name);
    }
  }
  return *slot;
}

std::vector<const MethodCounters*> StatsRegistry::All() const {
  std::vector<const MethodCounters*> all;
  std::lock_guard lock(mu_);
  all.reserve(methods_.size());
  for (const auto& [key, m] : methods_) all.push_back(m.get());
  return all;
}

std::vector<MethodStats> StatsRegistry::Snapshot() const {
  std::vector<MethodStats> out;
  const std::vector<const MethodCounters*> all = All();
  out.reserve(all.size());
  for (const MethodCounters* m : all) {
    MethodStats s;
    s.method = m->name;
    s.count = m->count.load(std::memory_order_relaxed);
    s.errors = m->errors.load(std::memory_order_relaxed);
    for (size_t c = 1; c < m->errors_by_code.size(); ++c) {
      if (uint64_t n = m->errors_by_code[c].load(std::memory_order_relaxed)) {
        s.errors_by_code.emplace_back(static_cast<StatusCode>(c), n);
      }
    }
    s.in_flight = m->in_flight.load(std::memory_order_relaxed);
    s.bytes_in = m->bytes_in.load(std::memory_order_relaxed);
    s.bytes_out = m->bytes_out.load(std::memory_order_relaxed);
    const uint64_t n = m->latency.count();
    s.mean_us = n ? static_cast<double>(m->latency.sum_ns()) / static_cast<double>(n) / 1e3 : 0.0;
    s.p50_us = static_cast<double>(m->latency.Quantile(0.50)) / 1e3;
    s.p99_us = static_cast<double>(m->latency.Quantile(0.99)) / 1e3;
    s.p999_us = static_cast<double>(m->latency.Quantile(0.999)) / 1e3;
    s.max_us = static_cast<double>(m->latency.max_ns()) / 1e3;
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const MethodStats& a, const MethodStats& b) { return a.method < b.method; });
  return out;
}

void StatsRegistry::ForEach(const std::function<void(const MethodCounters&)>& fn) const {
  for (const MethodCounters* m : All()) fn(*m);
}

std::string FormatStatsTable(const std::vector<MethodStats>& stats) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-36s %10s %8s %8s %12s %12s %10s %10s %10s\n", "method", "calls", "errors",
                "inflight", "bytes_in", "bytes_out", "p50_us", "p99_us", "p999_us");
  out += line;
  for (const MethodStats& s : stats) {
    std::snprintf(line, sizeof line, "%-36s %10" PRIu64 " %8" PRIu64 " %8" PRId64 " %12" PRIu64 " %12" PRIu64
                  " %10.1f %10.1f %10.1f\n",
                  s.method.c_str(), s.count, s.errors, s.in_flight, s.bytes_in, s.bytes_out, s.p50_us, s.p99_us,
                  s.p999_us);
    out += line;
  }
  return out;
}

}  // namespace hrpc
