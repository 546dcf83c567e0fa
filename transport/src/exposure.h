// Private helpers shared by the software transports (tcp, loopback): the
// exposure table that stands in for RDMA memory windows, and a FIFO of parked
// coroutines; and the parked coroutine of every transport. Single-threaded:
// used only on the owning worker.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <utility>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/buffer.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport::internal {

// A coroutine parked until someone hands it a Status (and maybe a value).
// Parked (on an Event) for the software transports' waits; LocalParked (on a
// LocalEvent: no lock, no atomic) for the waits on the path of every message,
// since a connection's every method runs on its worker: rdma parks all its
// waits on it, tcp its receivers.
template <class Ev>
struct ParkedOn {
  Ev ev;
  Status status;
  bool done = false;
  void Finish(Status s) {
    if (done) return;
    done = true;
    status = std::move(s);
    ev.Set();
  }
  Status Wait() {
    // Event::Wait without a deadline cannot fail; LocalEvent::Wait fails off
    // the transport's worker coroutines, where the waiter is already linked
    // into the connection's lists: there is no clean way back.
    if (Status s = ev.Wait(); !s.ok()) {
      SPDLOG_CRITICAL("hrpc transport: a connection method was called outside a coroutine of its worker: {}",
                      s.ToString());
      std::abort();
    }
    return status;
  }
  // DEADLINE_EXCEEDED if nobody finished it in time; the caller must then
  // unhook it from wherever it was parked.
  Status WaitUntil(std::chrono::steady_clock::time_point tp) {
    Status s = ev.WaitUntil(tp);
    if (!s.ok() && !done) return s;
    return status;
  }
};
using Parked = ParkedOn<coro::Event>;
using LocalParked = ParkedOn<coro::LocalEvent>;

// What one connection has exposed to its peer. Keys are (generation << 18 |
// index + 1): never 0, and a revoked slot's next key differs for 2^14 reuses.
class ExposureTable {
 public:
  static constexpr uint32_t kIndexBits = 18;
  static constexpr uint32_t kIndexMask = (1u << kIndexBits) - 1;
  static constexpr uint32_t kMaxEntries = kIndexMask - 1;
  static constexpr uint32_t kGenMask = (1u << (32 - kIndexBits)) - 1;

  struct Hit {
    uint32_t index;
    char* ptr;             // first byte of the op in local memory
    mempool::Buffer hold;  // slice covering exactly the op's bytes
  };

  Result<RemoteDescriptor> Add(const mempool::Buffer& buf, Access access) {
    if (buf.empty()) return InvalidArgumentError("Expose: empty buffer");
    if (buf.size() > UINT32_MAX) return InvalidArgumentError("Expose: buffer larger than 4 GiB");
    uint32_t index;
    if (!free_.empty()) {
      index = free_.back();
      free_.pop_back();
    } else {
      if (entries_.size() >= kMaxEntries) return ResourceExhaustedError("Expose: exposure table full");
      index = static_cast<uint32_t>(entries_.size());
      entries_.emplace_back();
    }
    Entry& e = entries_[index];
    e.buf = buf;
    e.access = access;
    e.live = true;
    e.inflight = 0;
    e.gen = (e.gen + 1) & kGenMask;
    ++live_;
    return RemoteDescriptor{reinterpret_cast<uint64_t>(buf.data()), static_cast<uint32_t>(buf.size()),
                            (e.gen << kIndexBits) | (index + 1)};
  }

  // Validates an op of n bytes at (key, addr) wanting `want`. The Status says
  // why a refusal happened: PERMISSION_DENIED (unknown/revoked key, access) or
  // OUT_OF_RANGE (bounds).
  Result<Hit> Check(uint64_t addr, uint64_t n, uint32_t key, Access want) const {
    const Entry* e = Find(key);
    if (e == nullptr || !e->live) {
      return PermissionDeniedError("key " + Hex(key) + " is not exposed (wrong or revoked key)");
    }
    if (!Allows(e->access, want)) {
      return PermissionDeniedError("key " + Hex(key) + " is exposed for " +
                                   std::string(AccessName(e->access)) + ", not " +
                                   std::string(AccessName(want)));
    }
    const uint64_t base = reinterpret_cast<uint64_t>(e->buf.data());
    if (addr < base || n > e->buf.size() || addr - base > e->buf.size() - n) {
      return OutOfRangeError("[" + Hex(addr) + ", +" + std::to_string(n) + ") is outside key " + Hex(key) +
                             " = [" + Hex(base) + ", +" + std::to_string(e->buf.size()) + ")");
    }
    const uint32_t index = (key & kIndexMask) - 1;
    const size_t off = addr - base;
    return Hit{index, e->buf.data() + off, e->buf.Slice(off, n)};
  }

  // An accepted op starts / ends touching entry `index` (Revoke waits for them).
  void Begin(uint32_t index) { ++entries_[index].inflight; }
  void End(uint32_t index) {
    Entry& e = entries_[index];
    if (--e.inflight == 0 && !e.live && e.revoker != nullptr) {
      Parked* p = e.revoker;
      e.revoker = nullptr;
      p->Finish(Status::Ok());
    }
  }

  // Suspends while accepted ops still touch the entry.
  Status Revoke(const RemoteDescriptor& d) {
    Entry* e = Find(d.key);
    if (e == nullptr || !e->live) return NotFoundError("Revoke: key " + Hex(d.key) + " is not exposed");
    if (reinterpret_cast<uint64_t>(e->buf.data()) != d.addr || e->buf.size() != d.len) {
      return NotFoundError("Revoke: descriptor does not match the exposure of key " + Hex(d.key));
    }
    const uint32_t index = (d.key & kIndexMask) - 1;
    e->live = false;
    --live_;
    if (e->inflight > 0) {
      Parked p;
      e->revoker = &p;
      (void)p.Wait();
      e = &entries_[index];  // entries_ may have grown meanwhile
    }
    e->buf.Reset();
    free_.push_back(index);
    return Status::Ok();
  }

  // The connection ended: drop every exposure; wake revokers.
  void Clear() {
    for (Entry& e : entries_) {
      if (e.revoker != nullptr) {
        Parked* p = e.revoker;
        e.revoker = nullptr;
        p->Finish(Status::Ok());
      }
      if (e.live) {
        e.live = false;
        e.buf.Reset();
      }
    }
    live_ = 0;
  }

  size_t live() const { return live_; }

  static std::string Hex(uint64_t v) {
    char b[24];
    snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
  }

 private:
  struct Entry {
    mempool::Buffer buf;
    Access access = Access::kRead;
    uint32_t gen = 0;
    uint32_t inflight = 0;
    bool live = false;
    Parked* revoker = nullptr;
  };
  const Entry* Find(uint32_t key) const {
    const uint32_t i = key & kIndexMask;
    if (i == 0 || i > entries_.size()) return nullptr;
    const Entry& e = entries_[i - 1];
    return e.gen == (key >> kIndexBits) ? &e : nullptr;
  }
  Entry* Find(uint32_t key) { return const_cast<Entry*>(std::as_const(*this).Find(key)); }

  std::vector<Entry> entries_;
  std::vector<uint32_t> free_;
  size_t live_ = 0;
};

}  // namespace hrpc::transport::internal
