// ServerContext: what a handler knows about the call it serves, and the
// handler's way to the request's bulk payloads.
//
// The RPC runtime creates one per request, fills it (the setters below are for
// the runtime and DirectChannel, not for handlers) and keeps it alive until
// the handler has returned and the response is sent. A handler must not keep
// a pointer to it after returning. IsCancelled()/MarkCancelled() are thread-safe;
// everything else belongs to the handler's coroutine.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/wire.h"

namespace hrpc {

// The seam through which a ServerContext moves bulk payloads: the transport
// implements it (RDMA READ/WRITE, or their TCP emulation); tests fake it.
class BulkTransfer {
 public:
  virtual ~BulkTransfer() = default;
  // READ the remote region into registered memory the implementation
  // allocates (4 KiB-aligned for >= 4 KiB). Must respect `deadline`.
  virtual Result<mempool::IoBuf> Pull(const wire::BulkDescriptor& remote,
                                      std::chrono::steady_clock::time_point deadline) = 0;
  // WRITE `data` into the remote region (data.size() <= remote.len, checked by the caller).
  virtual Status Push(const wire::BulkDescriptor& remote, const mempool::IoBuf& data,
                      std::chrono::steady_clock::time_point deadline) = 0;
};

class ServerContext {
 public:
  using Clock = std::chrono::steady_clock;

  ServerContext() = default;
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  // --- What the handler reads ---------------------------------------------
  // Deadline derived from the client's remaining budget on arrival;
  // Clock::time_point::max() when the client set none.
  Clock::time_point deadline() const noexcept { return deadline_; }
  bool has_deadline() const noexcept { return deadline_ != Clock::time_point::max(); }
  bool DeadlineExpired() const noexcept { return has_deadline() && coro::SteadyNow() >= deadline_; }
  // True once the client cancelled (cancel frame), went away, or the deadline
  // passed. A handler polls it between steps and gives up with CANCELLED or
  // DEADLINE_EXCEEDED; the runtime discards a late response either way.
  bool IsCancelled() const noexcept { return cancelled_.load(std::memory_order_acquire) || DeadlineExpired(); }
  // Peer address as the transport names it ("tcp://10.0.0.2:7000", "direct").
  std::string_view peer() const noexcept { return peer_ ? std::string_view(*peer_) : std::string_view(); }
  // The method being served; nullptr only outside a call.
  const MethodDescriptor* method() const noexcept { return method_; }

  // Inline attachment that came with the request (payloads up to the eager
  // threshold). Larger payloads are advertised as bulk descriptors instead.
  mempool::IoBuf& request_attachment() noexcept { return request_attachment_; }
  // Attachment to send back with the response (inline, or pushed into the
  // client's buffer by the runtime when it is large).
  mempool::IoBuf& response_attachment() noexcept { return response_attachment_; }

  // The pool of the worker serving this call: the runtime pulls bulk request
  // attachments into its slabs (4 KiB-aligned), and a response attachment
  // allocated from it goes out without a copy. Register it with other devices
  // that should DMA those slabs directly — e.g. give it to an nvme::Sink as
  // SinkOptions::pool so pulled payloads go to the disk as WRITE_FIXED. The
  // same pool for every call on that worker; it outlives the handlers (it is
  // the Server's, or the borrowed network group's). nullptr when the call does
  // not come through the RPC runtime (DirectChannel).
  mempool::Pool* pool() const noexcept { return pool_; }

  // Bulk descriptors that came with the request.
  std::span<const wire::BulkDescriptor> bulk() const noexcept { return bulk_; }
  // Fetches the kPull region `index` into registered memory and checks its
  // crc32c. Errors: OUT_OF_RANGE (no such index), FAILED_PRECONDITION (it is
  // a kPush region), CANCELLED / DEADLINE_EXCEEDED, UNIMPLEMENTED (no bulk
  // transport: e.g. DirectChannel), DATA_LOSS (length or crc mismatch), or
  // whatever the transport reports (UNAVAILABLE, PERMISSION_DENIED, ...).
  Result<mempool::IoBuf> PullBulk(size_t index);
  // Writes `data` into the kPush region `index`. Errors as PullBulk, plus
  // OUT_OF_RANGE when data is longer than the region.
  Status PushBulk(size_t index, const mempool::IoBuf& data);

  // --- For the runtime ----------------------------------------------------
  void set_deadline(Clock::time_point tp) noexcept { deadline_ = tp; }
  // From a wire deadline budget (wire::kNoDeadline = none), relative to `now`.
  void set_deadline_budget_us(uint64_t budget_us, Clock::time_point now = coro::SteadyNow()) noexcept;
  void set_peer(std::string peer) { peer_ = std::make_shared<const std::string>(std::move(peer)); }
  // Shares the connection's name (no copy per call).
  void set_peer(std::shared_ptr<const std::string> peer) noexcept { peer_ = std::move(peer); }
  void set_method(const MethodDescriptor* m) noexcept { method_ = m; }
  void set_bulk(std::vector<wire::BulkDescriptor> descriptors, BulkTransfer* transfer) {
    bulk_ = std::move(descriptors);
    bulk_transfer_ = transfer;
  }
  void set_pool(mempool::Pool* pool) noexcept { pool_ = pool; }
  void MarkCancelled() noexcept { cancelled_.store(true, std::memory_order_release); }
  // Pulls every kPull region in order and appends each to
  // request_attachment(). In a coroutine, a region's crc32c check runs while
  // the next region is pulled (on the checksum thread when the region is
  // large). Errors as PullBulk (the first one met); the bytes pulled otherwise.
  Result<size_t> PullAllBulk();

 private:
  Status CheckLive() const;

  Clock::time_point deadline_ = Clock::time_point::max();
  std::atomic<bool> cancelled_{false};
  std::shared_ptr<const std::string> peer_;
  const MethodDescriptor* method_ = nullptr;
  mempool::IoBuf request_attachment_;
  mempool::IoBuf response_attachment_;
  std::vector<wire::BulkDescriptor> bulk_;
  BulkTransfer* bulk_transfer_ = nullptr;
  mempool::Pool* pool_ = nullptr;
};

}  // namespace hrpc
