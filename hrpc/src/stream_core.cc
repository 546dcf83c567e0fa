#include "stream_core.h"

#include <algorithm>
#include <array>
#include <limits>
#include <string>
#include <utility>

namespace hrpc::internal {

namespace {
uint64_t PulledBytes(const wire::Frame& f) {
  uint64_t n = 0;
  for (size_t i = 0; i < f.num_descriptors(); ++i) {
    const wire::BulkDescriptor d = f.descriptor(i);
    if (d.direction == wire::BulkDirection::kPull) n += d.len;
  }
  return n;
}
}  // namespace

bool StreamCore::Park(coro::LocalEvent** slot, Clock::time_point deadline) {
  coro::LocalEvent ev;
  *slot = &ev;
  const Status s = deadline == Clock::time_point::max() ? ev.Wait() : ev.WaitUntil(deadline);
  if (*slot == &ev) *slot = nullptr;
  return s.ok() || ev.IsSet();
}

void StreamCore::Wake(coro::LocalEvent** slot) noexcept {
  if (coro::LocalEvent* ev = *slot) {
    *slot = nullptr;
    ev->Set();
  }
}

void StreamCore::End(Status why) {
  if (!end_.ok()) return;
  if (why.ok()) why = InternalError("stream ended without a reason");
  end_ = std::move(why);
  for (const Queued& q : queue_) {
    if (HasPullRegions(q.rx.frame)) owes_release_ = true;
  }
  queue_.clear();
  Wake(&read_waiter_);
  Wake(&write_waiter_);
}

Status StreamCore::OnMessage(ReceivedFrame rx) {
  if (HasPullRegions(rx.frame)) received_pull_ = true;
  if (!end_.ok()) return Status::Ok();  // ended here: drop what is still in flight
  if (peer_closed_) return DataLossError("hrpc stream: message after the peer's close");
  const wire::Frame& f = rx.frame;
  const uint64_t bytes = f.header().message_len + rx.attachment.size() + PulledBytes(f);
  // The peer may send while its in-flight count (by its view of our
  // consumption, which lags ours) is under the window.
  if (received_messages_ - consumed_messages_ >= s_.receive_window.messages ||
      received_bytes_ - consumed_bytes_ >= s_.receive_window.bytes) {
    return DataLossError("hrpc stream: peer sent beyond the window (" +
                         std::to_string(received_messages_ - consumed_messages_) + " messages, " +
                         std::to_string(received_bytes_ - consumed_bytes_) + " bytes unread)");
  }
  ++received_messages_;
  received_bytes_ += bytes;
  queue_.push_back({std::move(rx), bytes});
  Wake(&read_waiter_);
  return Status::Ok();
}

Status StreamCore::OnWindow(std::span<const std::byte> body) {
  HRPC_ASSIGN_OR_RETURN(wire::StreamWindow w, wire::DecodeStreamWindow(body));
  if (w.consumed_messages > sent_messages_ || w.consumed_bytes > sent_bytes_) {
    return DataLossError("hrpc stream: peer reports more consumed than was sent");
  }
  // Cumulative: an older update never moves the window back.
  peer_.consumed_messages = std::max(peer_.consumed_messages, w.consumed_messages);
  peer_.consumed_bytes = std::max(peer_.consumed_bytes, w.consumed_bytes);
  peer_.window_messages = w.window_messages;
  peer_.window_bytes = w.window_bytes;
  Wake(&write_waiter_);
  return Status::Ok();
}

void StreamCore::OnClose(Status final_status) {
  if (peer_closed_) return;
  peer_closed_ = true;
  peer_status_ = std::move(final_status);
  Wake(&read_waiter_);
  Wake(&write_waiter_);
}

bool StreamCore::WindowOpen() const noexcept {
  return sent_messages_ - peer_.consumed_messages < peer_.window_messages &&
         sent_bytes_ - peer_.consumed_bytes < peer_.window_bytes;
}

void StreamCore::RevokeConsumed() {
  while (!held_.empty() && held_.front().seq <= peer_.consumed_messages) {
    RevokeAll(conn_, held_.front().exposed);
    held_.pop_front();
  }
}

void StreamCore::OnPeerGone(Status why) {
  End(std::move(why));
  peer_gone_ = true;
  Wake(&write_waiter_);
}

void StreamCore::AwaitConsumed(Clock::time_point until) {
  for (;;) {
    RevokeConsumed();
    if (held_.empty() || peer_gone_ || !conn_.status().ok()) return;
    if (!Park(&write_waiter_, until) && Clock::now() >= until) return;
  }
}

void StreamCore::AfterPulls(std::function<void()> fn) {
  if (pulling_ == 0) {
    fn();
    return;
  }
  after_pulls_ = std::move(fn);
}

void StreamCore::ReleaseExposures() {
  released_ = true;
  for (const Held& h : held_) RevokeAll(conn_, h.exposed);
  held_.clear();
}

Exposed StreamCore::TakeExposures() {
  released_ = true;
  Exposed all;
  for (Held& h : held_) {
    for (auto& d : h.exposed.exposed) all.exposed.push_back(d);
    for (auto& b : h.exposed.held) all.held.push_back(std::move(b));
  }
  held_.clear();
  return all;
}

Status StreamCore::WriteRefused() const {
  if (!end_.ok()) return end_;
  if (released_) return CancelledError("hrpc stream: already finished");
  // The client's stream is over once the server sent its status.
  if (peer_closed_ && !s_.server_side) return AbortedError("hrpc stream: the server has finished the stream");
  return Status::Ok();
}

Status StreamCore::Write(const google::protobuf::MessageLite& message, mempool::IoBuf attachment,
                         Clock::time_point deadline) {
  if (local_closed_) return FailedPreconditionError("hrpc stream: Write after the half-close");
  if (end_.ok() && Clock::now() >= deadline) End(DeadlineExceededError("deadline expired before a stream write"));
  RevokeConsumed();
  for (;;) {
    HRPC_TRY(WriteRefused());
    if (WindowOpen()) break;
    if (!Park(&write_waiter_, deadline) && Clock::now() >= deadline) {
      End(DeadlineExceededError("deadline expired while waiting for the stream's window"));
      return end_;
    }
    RevokeConsumed();
  }
  if (!message.IsInitialized()) {
    return InvalidArgumentError("stream message lacks required fields: " + message.InitializationErrorString());
  }
  const size_t att_bytes = attachment.size();
  const size_t planned = PlannedDescriptors(attachment, 0, pool_.options().max_class_bytes);
  HRPC_ASSIGN_OR_RETURN(SerializedMessage m,
                        SerializeWithRoom(pool_, message, wire::PrefixSize(std::min(planned, wire::kMaxDescriptors))));
  const transport::Limits& limits = conn_.limits();
  const AttachmentPath path =
      ChooseAttachmentPath(att_bytes, wire::PrefixSize(0) + m.message_len, s_.eager_threshold, limits);
  Held held;
  if (path == AttachmentPath::kDescriptors) {
    if (Status s = ExposeForRead(conn_, pool_, std::move(attachment), held.exposed); !s.ok()) {
      RevokeAll(conn_, held.exposed);
      return s;
    }
    attachment = mempool::IoBuf();
    // Exposing suspends (a large attachment's CRC runs off the worker): the
    // stream may have ended, or been finished, meanwhile.
    if (Status gone = WriteRefused(); !gone.ok()) {
      RevokeAll(conn_, held.exposed);
      return gone;
    }
  }
  const auto& descs = held.exposed.descriptors;
  const size_t control = wire::PrefixSize(descs.size()) + m.message_len;
  if (descs.size() > wire::kMaxDescriptors || control > limits.max_message_bytes ||
      (path == AttachmentPath::kInline && control + attachment.size() > limits.max_message_bytes)) {
    RevokeAll(conn_, held.exposed);
    return ResourceExhaustedError("stream message of " + std::to_string(m.message_len) +
                                  " bytes does not fit a control message of " +
                                  std::to_string(limits.max_message_bytes) +
                                  " bytes (or its attachment is too fragmented): send bulk data as an attachment");
  }
  wire::FrameHeader h;
  h.kind = wire::FrameKind::kStreamMessage;
  h.txn_id = txn_;
  h.attachment_len = static_cast<uint32_t>(attachment.size());
  auto frame = FinishFrame(m, h, descs);
  if (!frame.ok()) {
    RevokeAll(conn_, held.exposed);
    return frame.status();
  }
  ++sent_messages_;
  sent_bytes_ += m.message_len + att_bytes;
  if (!held.exposed.exposed.empty()) {
    held.seq = sent_messages_;
    held_.push_back(std::move(held));
  }
  Status sent;
  if (path == AttachmentPath::kStream) {
    sent = conn_.SendWithPayload(std::move(*frame), std::move(attachment));
  } else {
    frame->Append(std::move(attachment));
    sent = conn_.Send(std::move(*frame));
  }
  if (!sent.ok()) {
    End(Status(StatusCode::kUnavailable, "stream send: " + sent.ToString()));
    return end_;
  }
  return Status::Ok();
}

Result<bool> StreamCore::Read(google::protobuf::MessageLite* message, mempool::IoBuf* attachment,
                              Clock::time_point deadline) {
  // A stream whose peer has closed and which is drained is over: its status stands.
  if (end_.ok() && !(peer_closed_ && queue_.empty()) && Clock::now() >= deadline) {
    End(DeadlineExceededError("deadline expired before a stream read"));
  }
  for (;;) {
    if (!end_.ok()) return end_;
    if (!queue_.empty()) break;
    if (peer_closed_) return false;
    if (!Park(&read_waiter_, deadline) && Clock::now() >= deadline) {
      End(DeadlineExceededError("deadline expired while reading the stream"));
      return end_;
    }
  }
  Queued q = std::move(queue_.front());
  queue_.pop_front();
  const wire::Frame& f = q.rx.frame;
  mempool::IoBuf got = std::move(q.rx.attachment);
  const bool pulled = HasPullRegions(f);
  // A message dropped unread (Finish() draining the queue) is consumed
  // without READing its attachment: the window update lets the writer go.
  const bool drop = message == nullptr && attachment == nullptr;
  for (size_t i = 0; i < f.num_descriptors() && !drop; ++i) {
    const wire::BulkDescriptor d = f.descriptor(i);
    if (d.direction != wire::BulkDirection::kPull) continue;
    auto live = [&]() -> Status {
      if (!end_.ok()) return end_;
      if (Clock::now() >= deadline) return DeadlineExceededError("deadline expired while pulling a stream message");
      return Status::Ok();
    };
    ++pulling_;
    auto part = PullRegion(conn_, pool_, d, s_.pull_chunk, s_.pull_window, live);
    if (--pulling_ == 0 && after_pulls_) std::exchange(after_pulls_, nullptr)();
    if (!part.ok()) {
      owes_release_ = true;
      End(part.status().WithContext("stream message attachment"));
      return end_;
    }
    got.Append(std::move(*part));
  }
  if (message != nullptr) {
    const auto body = f.message();
    if (body.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
        !message->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
      End(s_.server_side ? InvalidArgumentError("malformed stream message from the client")
                         : DataLossError("malformed stream message from the server"));
      return end_;
    }
  }
  if (attachment != nullptr) *attachment = std::move(got);
  ++consumed_messages_;
  consumed_bytes_ += q.bytes;
  // Report every quarter window, and at once after a pull: the writer holds
  // that memory exposed until it hears.
  if (pulled || consumed_messages_ - reported_messages_ >= std::max<uint32_t>(1, s_.receive_window.messages / 4) ||
      consumed_bytes_ - reported_bytes_ >= s_.receive_window.bytes / 4) {
    // Once the peer has closed, nothing more comes: what is queued is still
    // read when the update cannot go out (its connection closed behind the
    // close, as a server shutting down does).
    if (Status s = SendWindow(); !s.ok() && !peer_closed_) {
      End(Status(StatusCode::kUnavailable, "stream window update: " + s.ToString()));
      return end_;
    }
  }
  return true;
}

wire::StreamWindow StreamCore::OurWindow() const noexcept {
  return {consumed_messages_, consumed_bytes_, s_.receive_window.messages, s_.receive_window.bytes};
}

Status StreamCore::SendWindow() {
  if (!conn_.status().ok()) return conn_.status();
  const wire::StreamWindow w = OurWindow();
  wire::FrameHeader h;
  h.kind = wire::FrameKind::kStreamWindow;
  h.txn_id = txn_;
  std::array<std::byte, wire::kStreamWindowSize> body;
  wire::EncodeStreamWindow(w, body);
  HRPC_ASSIGN_OR_RETURN(SerializedMessage m,
                        RawWithRoom(pool_, std::string_view(reinterpret_cast<const char*>(body.data()), body.size()),
                                    wire::PrefixSize(0)));
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf frame, FinishFrame(m, h, {}));
  reported_messages_ = w.consumed_messages;
  reported_bytes_ = w.consumed_bytes;
  return conn_.Send(std::move(frame));
}

Status StreamCore::SendInitialWindow() {
  if (s_.receive_window.messages == wire::kInitialStreamWindowMessages &&
      s_.receive_window.bytes == wire::kInitialStreamWindowBytes) {
    return Status::Ok();
  }
  return SendWindow();
}

Status StreamCore::SendOpen(uint32_t service_id, uint32_t method_id, uint64_t deadline_us) {
  wire::FrameHeader h;
  h.kind = wire::FrameKind::kStreamOpen;
  h.txn_id = txn_;
  h.service_id = service_id;
  h.method_id = method_id;
  h.deadline_us = deadline_us;
  std::array<std::byte, wire::kStreamWindowSize> body;
  wire::EncodeStreamWindow(OurWindow(), body);
  HRPC_ASSIGN_OR_RETURN(SerializedMessage m,
                        RawWithRoom(pool_, std::string_view(reinterpret_cast<const char*>(body.data()), body.size()),
                                    wire::PrefixSize(0)));
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf frame, FinishFrame(m, h, {}));
  return conn_.Send(std::move(frame));
}

Status StreamCore::SendClose(const Status& status) {
  local_closed_ = true;
  if (!conn_.status().ok()) return conn_.status();
  wire::FrameHeader h;
  h.kind = wire::FrameKind::kStreamClose;
  h.txn_id = txn_;
  h.status = status.code();
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf frame, SmallFrame(pool_, h, status.ok() ? std::string_view() : status.message()));
  return conn_.Send(std::move(frame));
}

}  // namespace hrpc::internal
