// Private to the RPC runtime: one stream as either side sees it.
//
// A StreamCore is one transaction on one connection carrying messages both
// ways (docs/protocol.md, "Streams"). It belongs to the connection's worker:
// the connection's reader feeds it (OnMessage, OnWindow, OnClose, End, which
// never suspend) and the stream's user, a coroutine on that worker, calls
// Write/Read/SendClose (which may suspend). Held by shared_ptr by the
// connection's stream table and by the user's stream object.
//
// Flow control: received messages wait in a queue until Read() takes them;
// the window this side granted bounds the queue (a peer that sends beyond it
// breaks the protocol: the stream ends with DATA_LOSS). Read() reports what
// it consumed back to the peer in kStreamWindow frames (every quarter
// window). Write() suspends while the peer's window is full.
//
// Attachments take the unary paths (bulk.h): inline, streamed behind the
// frame, or exposed for READ; the reader pulls those in Read(). The writer
// keeps an exposure until the reader's window update says the message was
// consumed (RevokeConsumed, at the next Write and at the end).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <utility>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/transport.h"
#include "bulk.h"
#include "runtime_internal.h"

namespace hrpc::internal {

struct StreamSettings {
  StreamWindowOptions receive_window;  // granted to the peer
  size_t eager_threshold = kDefaultEagerThreshold;
  size_t pull_chunk = kDefaultBulkChunkBytes;
  size_t pull_window = 4;
  // The server's side: a message that does not parse is INVALID_ARGUMENT
  // (the client's request), and the client's close is only a half-close.
  // The client's side: DATA_LOSS, and the server's close ends the stream.
  bool server_side = false;
};

class StreamCore {
 public:
  using Clock = std::chrono::steady_clock;

  StreamCore(transport::Connection& conn, mempool::Pool& pool, uint64_t txn, StreamSettings settings)
      : conn_(conn), pool_(pool), txn_(txn), s_(settings) {}
  StreamCore(const StreamCore&) = delete;
  StreamCore& operator=(const StreamCore&) = delete;

  uint64_t txn() const noexcept { return txn_; }

  // --- the connection's reader (never suspends) -------------------------------
  // A kStreamMessage for this stream: queued. DATA_LOSS when the peer went
  // beyond the window (the caller ends the stream with it).
  Status OnMessage(ReceivedFrame rx);
  // A kStreamWindow from the peer.
  Status OnWindow(std::span<const std::byte> body);
  // The peer's kStreamClose: on the server, the client's half-close; on the
  // client, the server's final status.
  void OnClose(Status final_status);
  // Ends the stream on this side with `why` (the first reason stays): pending
  // and later Read/Write fail with it. Sends nothing.
  void End(Status why);
  // End(why), and the peer will READ nothing more of what this side exposed
  // (it cancelled the stream, or the connection closed): AwaitConsumed returns.
  void OnPeerGone(Status why);

  // --- the stream's user (a coroutine on the connection's worker) ----------
  // Sends one message; suspends while the peer's window is full, until
  // `deadline` (then ends the stream with DEADLINE_EXCEEDED).
  Status Write(const google::protobuf::MessageLite& message, mempool::IoBuf attachment, Clock::time_point deadline);
  // True and the next message; false at the peer's close once the queue is
  // drained; an error when the stream ended. `message` may be null (drop it);
  // with both null the message is dropped without reading its attachment.
  Result<bool> Read(google::protobuf::MessageLite* message, mempool::IoBuf* attachment, Clock::time_point deadline);
  // Frames without a message: kStreamClose with `status` (client: OK), the
  // open frame and the first window grant.
  Status SendClose(const Status& status);
  Status SendOpen(uint32_t service_id, uint32_t method_id, uint64_t deadline_us);
  // The first grant, when this side's window is larger than the initial one.
  Status SendInitialWindow();
  // Waits until the peer has consumed every message whose attachment this
  // side exposed (it READs them in its Read()), the peer is gone (OnPeerGone,
  // the connection failed), or `until`. Not merely until the stream ended
  // here (its deadline, an error): the peer may be READing one of them now.
  void AwaitConsumed(Clock::time_point until);
  // Revokes every exposure this side still holds (at the end of the stream);
  // a Write exposing an attachment meanwhile revokes its own and fails.
  void ReleaseExposures();
  // The same, but handed to the caller instead of revoked (the peer may still
  // be READing them: the client keeps them until the server's close).
  Exposed TakeExposures();
  bool holds_exposures() const noexcept { return !held_.empty(); }
  // A message with pull descriptors arrived (the server then answers a
  // cancel with a close, once its READs are over).
  bool received_pull() const noexcept { return received_pull_; }
  // This side will not consume some message whose attachment the peer
  // exposed (the stream ended here with it queued, or its pull failed): the
  // peer holds that memory until it hears a cancel.
  // True once (then false): the cancel that releases it is sent once.
  bool TakeOwedRelease() noexcept { return std::exchange(owes_release_, false); }
  // Runs `fn` once no Read() is READing the peer's memory: now, or when the
  // READs in flight are over (the client's cancel waits for them: the server
  // revokes what it exposed when the cancel arrives).
  void AfterPulls(std::function<void()> fn);

  bool ended() const noexcept { return !end_.ok(); }
  const Status& end_status() const noexcept { return end_; }
  bool peer_closed() const noexcept { return peer_closed_; }
  const Status& peer_status() const noexcept { return peer_status_; }
  bool local_closed() const noexcept { return local_closed_; }
  uint64_t bytes_in() const noexcept { return consumed_bytes_; }
  uint64_t bytes_out() const noexcept { return sent_bytes_; }
  // Bytes of messages received and not read yet (queued), for tests.
  uint64_t queued_bytes() const noexcept { return received_bytes_ - consumed_bytes_; }

 private:
  struct Queued {
    ReceivedFrame rx;
    uint64_t bytes = 0;  // message + attachment, as the window counts them
  };
  struct Held {
    uint64_t seq = 0;  // the message's number, from 1
    Exposed exposed;
  };
  // Why a Write may not send now (the stream ended, was finished, or the
  // server closed it), else OK.
  Status WriteRefused() const;
  // Parks the caller in `*slot` until woken or `deadline`; false on timeout.
  bool Park(coro::LocalEvent** slot, Clock::time_point deadline);
  static void Wake(coro::LocalEvent** slot) noexcept;
  bool WindowOpen() const noexcept;
  void RevokeConsumed();
  Status SendWindow();
  wire::StreamWindow OurWindow() const noexcept;

  transport::Connection& conn_;
  mempool::Pool& pool_;
  const uint64_t txn_;
  const StreamSettings s_;

  Status end_;
  bool peer_closed_ = false;
  Status peer_status_;
  bool local_closed_ = false;

  // Receiving.
  std::deque<Queued> queue_;
  uint64_t received_messages_ = 0, received_bytes_ = 0;
  uint64_t consumed_messages_ = 0, consumed_bytes_ = 0;
  uint64_t reported_messages_ = 0, reported_bytes_ = 0;
  coro::LocalEvent* read_waiter_ = nullptr;
  bool received_pull_ = false;
  int pulling_ = 0;  // Read()s READing the peer's memory now
  bool owes_release_ = false;
  std::function<void()> after_pulls_;

  // Sending.
  uint64_t sent_messages_ = 0, sent_bytes_ = 0;
  wire::StreamWindow peer_{0, 0, wire::kInitialStreamWindowMessages, wire::kInitialStreamWindowBytes};
  std::deque<Held> held_;
  bool released_ = false;  // ReleaseExposures ran: nothing may be exposed any more
  bool peer_gone_ = false;  // OnPeerGone ran: nothing exposed is READ any more
  coro::LocalEvent* write_waiter_ = nullptr;
};

}  // namespace hrpc::internal
