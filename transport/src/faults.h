// Fault injection shared by the transports (FaultOptions in transport.h): one
// FaultInjector per transport (the loopback adds one per listener name), asked
// once per outgoing control message and per receive buffer; and the message
// integrity helpers the receivers check (CRC32C, sequence numbers).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <string_view>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport::internal {

// What happens to one outgoing control message.
struct FaultAction {
  bool drop = false;
  bool duplicate = false;
  bool truncate = false;
  bool corrupt = false;
  bool any() const { return drop || duplicate || truncate || corrupt; }
};

// Thread-safe: Set() from any thread, the rest from the transports' workers.
// When nothing is set, armed() is one relaxed load and nothing else runs.
class FaultInjector {
 public:
  explicit FaultInjector(const FaultOptions& o = {}) { Set(o); }
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  void Set(const FaultOptions& o);
  bool armed() const noexcept { return armed_.load(std::memory_order_relaxed); }

  // The fate of the next message of `size` bytes; counts what it injects
  // into `ctr`. Truncation needs a non-empty message (it waits for one);
  // duplication one that `can_duplicate` (TCP: no in-stream payload).
  FaultAction OnMessage(size_t size, TransportCounters& ctr, bool can_duplicate = true);
  // How long to hold the next message (0 when not delayed); counts it.
  std::chrono::microseconds Delay(TransportCounters& ctr);
  // The configured delay, not counted (loopback's one-sided ops).
  std::chrono::microseconds delay() const;
  // True when this receive-buffer allocation is to be refused; counts it.
  bool RefuseAllocation(TransportCounters& ctr);
  // True when the connection that is about to send should error its QP.
  bool TakeQpError(TransportCounters& ctr);
  // FaultOptions::disconnect_after (-1: never).
  int64_t disconnect_after() const;

 private:
  void Rearm();  // mu_ held
  // Uses up one of the `count` faults, counting it; false when none is left.
  bool TakeOne(uint32_t FaultOptions::*count, OwnerCounter& counted);

  mutable std::mutex mu_;
  FaultOptions o_;
  std::mt19937_64 rng_{1};
  std::atomic<bool> armed_{false};
};

// INVALID_ARGUMENT naming the first fault in `o` that is not in `supported`
// (FaultKind bits), for Transport::SetFaults.
Status CheckFaults(const FaultOptions& o, uint32_t supported, std::string_view scheme);

// CRC32C of the first n bytes of m (n <= m.size()).
uint32_t MessageCrc(const mempool::IoBuf& m, size_t n);

// The message as the faults in `a` put it on the wire: truncated (the last
// byte cut off) and/or corrupted (one byte flipped, in a copy: the caller's
// blocks are never written). `crc_field` is the CRC the frame carries; for an
// empty message corruption flips it instead.
Result<mempool::IoBuf> Damage(mempool::IoBuf msg, const FaultAction& a, mempool::Pool& pool, uint32_t& crc_field);

// The receive side's check: OK, or DATA_LOSS saying what is wrong.
Status CheckMessage(const mempool::IoBuf& m, size_t n, uint32_t want_crc, std::string_view peer);

// Sequence numbers of one direction of one connection: the sender numbers its
// messages 1, 2, ...; the receiver delivers a message only if its number is
// above every one delivered before (a gap is a dropped message: allowed), so a
// duplicate is discarded.
struct SeqFilter {
  uint64_t last = 0;
  bool Accept(uint64_t seq) {
    if (seq <= last) return false;
    last = seq;
    return true;
  }
};

}  // namespace hrpc::transport::internal
