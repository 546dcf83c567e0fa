#include "rpcz.h"

#include <algorithm>
#include <cstring>

namespace hrpc::internal {

const char* RpczPhaseName(size_t phase) noexcept {
  static constexpr const char* kNames[kNumPhases] = {"queue", "pull", "handler", "push", "reply"};
  return phase < kNumPhases ? kNames[phase] : "?";
}

namespace {
int64_t WallNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

RpczRing::RpczRing(size_t worker)
    : worker_(worker),
      clock_(coro::CycleClock::Get()),
      window_ticks_(clock_.TicksFor(kWindow)),
      wall0_ns_(WallNs()),
      tick0_(clock_.Now()) {}

void RpczRing::Rotate(uint64_t now) noexcept {
  window_start_ = now;
  window_ = (window_ + 1) % kWindows;
  for (Slot& s : slow_[window_]) Clear(s);
  slow_count_ = 0;
  slow_floor_ = 0;
}

void RpczRing::Clear(Slot& s) noexcept {
  if (s.method.load(std::memory_order_relaxed) == nullptr) return;
  const uint32_t seq = s.seq.load(std::memory_order_relaxed);
  s.seq.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.method.store(nullptr, std::memory_order_relaxed);
  s.seq.store(seq + 2, std::memory_order_release);
}

void RpczRing::KeepSlow(uint64_t total, const MethodCounters* method, std::string_view peer, StatusCode code,
                        const RpczTicks& t, uint64_t end, uint64_t bytes_in, uint64_t bytes_out,
                        uint64_t txn) noexcept {
  size_t i = slow_count_;
  if (i < kSlowPerWindow) {
    ++slow_count_;
  } else {
    i = static_cast<size_t>(std::min_element(slow_ticks_.begin(), slow_ticks_.end()) - slow_ticks_.begin());
  }
  slow_ticks_[i] = total;
  Keep(slow_[window_][i], method, peer, code, t, end, bytes_in, bytes_out, txn);
  if (slow_count_ == kSlowPerWindow) slow_floor_ = *std::min_element(slow_ticks_.begin(), slow_ticks_.end());
}

void RpczRing::Keep(Slot& s, const MethodCounters* method, std::string_view peer, StatusCode code,
                    const RpczTicks& t, uint64_t end, uint64_t bytes_in, uint64_t bytes_out, uint64_t txn) noexcept {
  const double per_ns = clock_.ticks_per_ns();
  auto ns = [per_ns](uint64_t from, uint64_t to) -> uint64_t {
    return to > from ? static_cast<uint64_t>(static_cast<double>(to - from) / per_ns) : 0;
  };
  // Phase boundaries; one not reached ends where the previous one did.
  uint64_t marks[kNumPhases + 1] = {t.arrival, t.start, t.pulled, t.handled, t.pushed, end};
  for (size_t i = 1; i < kNumPhases; ++i) {
    if (marks[i] == 0) marks[i] = marks[i - 1];
  }
  const int64_t wall = wall0_ns_ + (t.arrival >= tick0_ ? static_cast<int64_t>(ns(tick0_, t.arrival))
                                                         : -static_cast<int64_t>(ns(t.arrival, tick0_)));
  char peer_buf[kPeerBytes] = {};
  std::memcpy(peer_buf, peer.data(), std::min(peer.size(), kPeerBytes - 1));

  const uint32_t seq = s.seq.load(std::memory_order_relaxed);
  s.seq.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.method.store(method, std::memory_order_relaxed);
  s.wall_ns.store(static_cast<uint64_t>(wall), std::memory_order_relaxed);
  s.total_ns.store(ns(t.arrival, end), std::memory_order_relaxed);
  for (size_t i = 0; i < kNumPhases; ++i) s.phase_ns[i].store(ns(marks[i], marks[i + 1]), std::memory_order_relaxed);
  s.bytes_in.store(bytes_in, std::memory_order_relaxed);
  s.bytes_out.store(bytes_out, std::memory_order_relaxed);
  s.txn.store(txn, std::memory_order_relaxed);
  s.code.store(static_cast<uint8_t>(code), std::memory_order_relaxed);
  for (size_t i = 0; i < s.peer.size(); ++i) {
    uint64_t w;
    std::memcpy(&w, peer_buf + i * 8, 8);
    s.peer[i].store(w, std::memory_order_relaxed);
  }
  s.seq.store(seq + 2, std::memory_order_release);
}

bool RpczRing::Copy(const Slot& s, RpczRecord* out) const {
  for (int attempt = 0; attempt < 4; ++attempt) {
    const uint32_t seq = s.seq.load(std::memory_order_acquire);
    if (seq & 1) continue;
    const MethodCounters* m = s.method.load(std::memory_order_relaxed);
    if (m == nullptr) return false;
    RpczRecord r;
    const uint64_t wall = s.wall_ns.load(std::memory_order_relaxed);
    r.total_ns = s.total_ns.load(std::memory_order_relaxed);
    for (size_t i = 0; i < kNumPhases; ++i) r.phase_ns[i] = s.phase_ns[i].load(std::memory_order_relaxed);
    r.bytes_in = s.bytes_in.load(std::memory_order_relaxed);
    r.bytes_out = s.bytes_out.load(std::memory_order_relaxed);
    r.txn = s.txn.load(std::memory_order_relaxed);
    r.code = static_cast<StatusCode>(s.code.load(std::memory_order_relaxed));
    char peer_buf[kPeerBytes];
    for (size_t i = 0; i < s.peer.size(); ++i) {
      const uint64_t w = s.peer[i].load(std::memory_order_relaxed);
      std::memcpy(peer_buf + i * 8, &w, 8);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (s.seq.load(std::memory_order_relaxed) != seq) continue;
    peer_buf[kPeerBytes - 1] = '\0';
    r.peer = peer_buf;
    r.method = m->name;  // counters live as long as the server's registry
    r.start = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(wall)));
    r.worker = worker_;
    *out = std::move(r);
    return true;
  }
  return false;
}

void RpczRing::Read(std::vector<RpczRecord>* slow, std::vector<RpczRecord>* failed) const {
  RpczRecord r;
  if (slow != nullptr) {
    for (const auto& window : slow_) {
      for (const Slot& s : window) {
        if (Copy(s, &r)) slow->push_back(std::move(r));
      }
    }
  }
  if (failed != nullptr) {
    for (const Slot& s : failed_) {
      if (Copy(s, &r)) failed->push_back(std::move(r));
    }
  }
}

}  // namespace hrpc::internal
