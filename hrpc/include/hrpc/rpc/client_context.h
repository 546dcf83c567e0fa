// ClientContext: per-call options and side channels of one client call.
//
// Owned by the caller; one call at a time. It must outlive the call: for the
// async and Future forms, until the callback ran / the future is ready.
// Cancel() and IsCancelled() may be called from any thread; the rest belongs
// to the calling coroutine.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/mempool/iobuf.h"

namespace hrpc {

class ClientContext {
 public:
  using Clock = std::chrono::steady_clock;

  ClientContext() = default;
  ClientContext(const ClientContext&) = delete;
  ClientContext& operator=(const ClientContext&) = delete;

  // Deadline: absolute, or relative to now. The remaining budget travels with
  // the request, so the server stops working on it once it expires; the call
  // itself fails with DEADLINE_EXCEEDED. Default: none.
  void set_deadline(Clock::time_point tp) noexcept { deadline_ = tp; }
  void set_timeout(std::chrono::nanoseconds d) noexcept { deadline_ = coro::SteadyNow() + d; }
  Clock::time_point deadline() const noexcept { return deadline_; }
  bool has_deadline() const noexcept { return deadline_ != Clock::time_point::max(); }
  bool DeadlineExpired() const noexcept { return has_deadline() && coro::SteadyNow() >= deadline_; }
  // Remaining budget in microseconds for the wire header (wire::kNoDeadline
  // when there is none, 0 when already expired).
  uint64_t DeadlineBudgetMicros(Clock::time_point now = coro::SteadyNow()) const noexcept;

  // Cancels the call in flight (the channel sends a cancel frame and completes
  // the call with CANCELLED), or the next call if none is in flight. Idempotent.
  void Cancel();
  bool IsCancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }

  // Attachment sent with the request; consumed by the call (empty afterwards).
  mempool::IoBuf& request_attachment() noexcept { return request_attachment_; }
  // Attachment that came back with the response (valid after a successful call).
  mempool::IoBuf& response_attachment() noexcept { return response_attachment_; }

  // Room for a response attachment that is too large to travel inline (above
  // the eager threshold), on connections without in-stream payloads (RDMA,
  // loopback): the channel exposes this many bytes of registered memory for
  // the server to WRITE into (rendezvous push), and response_attachment()
  // then holds slices of it. Optional: without room (or with too little) the
  // server exposes the attachment and the channel READs it, one more round
  // trip. On TCP the attachment follows the response in the stream and the
  // room is not used. Sticky across calls on this context.
  void set_response_attachment_capacity(size_t bytes) noexcept { response_attachment_capacity_ = bytes; }
  size_t response_attachment_capacity() const noexcept { return response_attachment_capacity_; }

  // Peer that served the call, set by the channel.
  std::string_view peer() const noexcept { return peer_ ? std::string_view(*peer_) : std::string_view(); }

  // --- Cluster channels (cluster_channel.h) -------------------------------
  // The key a consistent-hashing balancer routes by. A string is hashed
  // (FNV-1a-64), so every client maps it the same way.
  void set_request_key(uint64_t key) noexcept {
    request_key_ = key;
    has_request_key_ = true;
  }
  void set_request_key(std::string_view key) noexcept;
  bool has_request_key() const noexcept { return has_request_key_; }
  uint64_t request_key() const noexcept { return request_key_; }
  // Overrides the method's idempotency (its proto option) for this call:
  // idempotent calls may be retried on another server and get backup requests.
  void set_idempotent(bool idempotent) noexcept { idempotent_ = idempotent ? 1 : 0; }
  // -1: as the method says; 0 or 1: as set.
  int idempotent_override() const noexcept { return idempotent_; }
  // Attempts in all (first included) for this call; 0: the channel's policy.
  void set_max_attempts(int attempts) noexcept { max_attempts_ = attempts; }
  int max_attempts() const noexcept { return max_attempts_; }
  // Identifies one logical call across its retries; carried in the request
  // header, where a server's dedup window (ServerOptions::dedup_window)
  // recognises a retry. 0: none. A cluster channel gives a call without one
  // a fresh random id for all its attempts (the context keeps 0); set one
  // yourself to retry by hand.
  void set_request_id(uint64_t id) noexcept { request_id_ = id; }
  uint64_t request_id() const noexcept { return request_id_; }
  // After a call through a cluster channel: attempts made (backups included),
  // and whether a backup request was sent.
  int attempts() const noexcept { return attempts_; }
  bool backup_sent() const noexcept { return backup_sent_; }
  void set_attempts(int n, bool backup_sent) noexcept {
    attempts_ = n;
    backup_sent_ = backup_sent;
  }

  // --- For Channel implementations ----------------------------------------
  // Installs the function Cancel() runs (e.g. "send a cancel frame for txn 42").
  // If the context is already cancelled, runs `hook` right away instead.
  void SetCancelHook(std::function<void()> hook);
  void ClearCancelHook();
  void set_peer(std::string peer) { peer_ = std::make_shared<const std::string>(std::move(peer)); }
  // Shares the connection's name (no copy per call).
  void set_peer(std::shared_ptr<const std::string> peer) noexcept { peer_ = std::move(peer); }

 private:
  Clock::time_point deadline_ = Clock::time_point::max();
  std::atomic<bool> cancelled_{false};
  std::mutex hook_mu_;  // Cancel() is rare; a plain mutex keeps the hook race-free
  std::function<void()> cancel_hook_;
  mempool::IoBuf request_attachment_;
  mempool::IoBuf response_attachment_;
  std::shared_ptr<const std::string> peer_;
  size_t response_attachment_capacity_ = 0;
  uint64_t request_key_ = 0;
  uint64_t request_id_ = 0;
  int idempotent_ = -1;
  int max_attempts_ = 0;
  int attempts_ = 0;
  bool has_request_key_ = false;
  bool backup_sent_ = false;
};

}  // namespace hrpc
