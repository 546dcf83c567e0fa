#include "faults.h"

#include <algorithm>
#include <string>

#include "hrpc/base/crc32c.h"

namespace hrpc::transport::internal {

void FaultInjector::Set(const FaultOptions& o) {
  std::lock_guard lk(mu_);
  o_ = o;
  rng_.seed(o.seed);
  Rearm();
}

void FaultInjector::Rearm() { armed_.store(o_.any(), std::memory_order_relaxed); }

FaultAction FaultInjector::OnMessage(size_t size, TransportCounters& ctr, bool can_duplicate) {
  FaultAction a;
  if (!armed()) return a;
  std::lock_guard lk(mu_);
  if (o_.drop_next > 0) {
    --o_.drop_next;
    a.drop = true;
  } else if (o_.drop_probability > 0) {
    a.drop = std::uniform_real_distribution<double>(0, 1)(rng_) < o_.drop_probability;
  }
  if (a.drop) {
    ctr.faults_dropped.Add();
    Rearm();
    return a;
  }
  if (o_.duplicate_next > 0 && can_duplicate) {
    --o_.duplicate_next;
    a.duplicate = true;
    ctr.faults_duplicated.Add();
  }
  if (o_.truncate_next > 0 && size > 0) {
    --o_.truncate_next;
    a.truncate = true;
    ctr.faults_truncated.Add();
  }
  if (o_.corrupt_next > 0) {
    --o_.corrupt_next;
    a.corrupt = true;
    ctr.faults_corrupted.Add();
  }
  Rearm();
  return a;
}

std::chrono::microseconds FaultInjector::Delay(TransportCounters& ctr) {
  if (!armed()) return std::chrono::microseconds(0);
  std::lock_guard lk(mu_);
  if (o_.delay.count() > 0) ctr.faults_delayed.Add();
  return o_.delay;
}

std::chrono::microseconds FaultInjector::delay() const {
  if (!armed()) return std::chrono::microseconds(0);
  std::lock_guard lk(mu_);
  return o_.delay;
}

bool FaultInjector::TakeOne(uint32_t FaultOptions::*count, OwnerCounter& counted) {
  if (!armed()) return false;
  std::lock_guard lk(mu_);
  if (o_.*count == 0) return false;
  --(o_.*count);
  counted.Add();
  Rearm();
  return true;
}

bool FaultInjector::RefuseAllocation(TransportCounters& ctr) {
  return TakeOne(&FaultOptions::refuse_allocations, ctr.faults_refused_allocations);
}

bool FaultInjector::TakeQpError(TransportCounters& ctr) {
  return TakeOne(&FaultOptions::qp_error_next, ctr.faults_qp_errors);
}

int64_t FaultInjector::disconnect_after() const {
  if (!armed()) return -1;
  std::lock_guard lk(mu_);
  return o_.disconnect_after;
}

Status CheckFaults(const FaultOptions& o, uint32_t supported, std::string_view scheme) {
  struct Want {
    bool set;
    FaultKind kind;
    const char* name;
  };
  const Want wants[] = {
      {o.drop_probability > 0 || o.drop_next > 0, kFaultDrop, "drop"},
      {o.duplicate_next > 0, kFaultDuplicate, "duplicate"},
      {o.truncate_next > 0, kFaultTruncate, "truncate"},
      {o.corrupt_next > 0, kFaultCorrupt, "corrupt"},
      {o.delay.count() > 0, kFaultDelay, "delay"},
      {o.refuse_allocations > 0, kFaultRefuseAllocation, "refuse_allocations"},
      {o.disconnect_after >= 0, kFaultDisconnect, "disconnect_after"},
      {o.qp_error_next > 0, kFaultQpError, "qp_error_next"},
  };
  for (const Want& w : wants) {
    if (w.set && (supported & w.kind) == 0) {
      return InvalidArgumentError("the " + std::string(scheme) + " transport cannot inject the fault '" + w.name + "'");
    }
  }
  if (o.drop_probability < 0 || o.drop_probability > 1) {
    return InvalidArgumentError("drop_probability must be in [0, 1]");
  }
  return Status::Ok();
}

uint32_t MessageCrc(const mempool::IoBuf& m, size_t n) {
  uint32_t crc = 0;
  for (size_t i = 0; i < m.num_slices() && n > 0; ++i) {
    const mempool::Buffer& b = m.slice(i);
    const size_t k = std::min(n, b.size());
    crc = Crc32c(b.data(), k, crc);
    n -= k;
  }
  return crc;
}

Result<mempool::IoBuf> Damage(mempool::IoBuf msg, const FaultAction& a, mempool::Pool& pool, uint32_t& crc_field) {
  if (a.truncate && !msg.empty()) msg.TrimBack(1);
  if (a.corrupt) {
    if (msg.empty()) {
      crc_field ^= 0x5a;
    } else {
      // A private copy: the caller's blocks may be shared with others.
      HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(msg.size()));
      msg.CopyTo(b.data(), 0, msg.size());
      b.data()[msg.size() / 2] ^= 0x5a;
      msg = mempool::IoBuf(std::move(b));
    }
  }
  return msg;
}

Status CheckMessage(const mempool::IoBuf& m, size_t n, uint32_t want_crc, std::string_view peer) {
  const uint32_t got = MessageCrc(m, n);
  if (got == want_crc) return Status::Ok();
  return DataLossError("message of " + std::to_string(n) + " bytes from " + std::string(peer) +
                       " fails its CRC32C check (corrupted or truncated on the way)");
}

}  // namespace hrpc::transport::internal
