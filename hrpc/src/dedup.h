// The server's dedup window: remembers the answers of recent requests that
// carried a request id, so that a client's retry of a call that already ran
// (its response lost with its connection) gets the first answer instead of
// running the call a second time.
//
// Bounded: at most max_entries ids and max_bytes of kept responses, each for
// `window` after it finished (oldest first out). Only the response message is
// kept: a retry of a call whose response had an attachment (or did not fit)
// gets ABORTED. An id evicted before its retry arrives is not recognised and
// the retry runs again: size the window for the clients' retry horizon.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/sync.h"

namespace hrpc::internal {

struct DedupEntry {
  uint32_t service_id = 0;
  uint32_t method_id = 0;
  uint32_t request_crc = 0;  // the request's fingerprint (server.cc): a reused id with other bytes is another call
  coro::Event done;  // set once the first request finished (or gave up)
  // Valid once done is set:
  bool ran = false;             // false: the first request ended before its handler ran
  Status status;                // the handler's status
  std::string response;         // the serialized response message (status OK and kept)
  bool kept = false;            // response holds the whole answer
  bool had_attachment = false;  // the response carried an attachment (not kept)
};

class DedupWindow {
 public:
  using Clock = std::chrono::steady_clock;
  DedupWindow(std::chrono::milliseconds window, size_t max_entries, size_t max_bytes)
      : window_(window), max_entries_(max_entries), max_bytes_(max_bytes) {}

  // The entry for `id`, and whether this request is its first (then it must
  // end with Finish or Abandon). A retry gets the first's entry (wait for
  // done). An id seen with another method or other request bytes is not a
  // retry and is not deduplicated: nullptr.
  std::pair<std::shared_ptr<DedupEntry>, bool> Begin(uint64_t id, uint32_t service_id, uint32_t method_id,
                                                      uint32_t request_crc);
  // A handler's UNAVAILABLE or RESOURCE_EXHAUSTED is not remembered (the id
  // is forgotten, as by Abandon): a retry may succeed, so it runs again.
  void Finish(uint64_t id, const std::shared_ptr<DedupEntry>& e, Status status, std::string&& response,
              bool had_attachment);
  // The first request ended without running its handler: forget the id (a
  // retry runs), and wake the retries waiting on it.
  void Abandon(uint64_t id, const std::shared_ptr<DedupEntry>& e);

  uint64_t hits() const noexcept { return hits_.load(std::memory_order_relaxed); }
  size_t size() const;

 private:
  void Evict(Clock::time_point now);  // mu_ held

  const std::chrono::milliseconds window_;
  const size_t max_entries_;
  const size_t max_bytes_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<DedupEntry>> by_id_;
  std::deque<std::pair<uint64_t, Clock::time_point>> finished_;  // in finishing order
  size_t bytes_ = 0;
  std::atomic<uint64_t> hits_{0};
};

}  // namespace hrpc::internal
