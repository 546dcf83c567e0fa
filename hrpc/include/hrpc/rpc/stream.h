// Streaming RPCs: many messages each way in one call, in the shape gRPC users
// know (ClientReader / ClientWriter / ClientReaderWriter on the client,
// ServerReader / ServerWriter / ServerReaderWriter in a handler).
//
// A stream is one transaction on one connection. Each message is a protobuf
// plus an optional attachment (an IoBuf), which travels like a unary call's:
// inline when small, behind the frame on TCP, by one-sided READ from the
// sender's memory on RDMA and the loopback; pool memory goes out without a
// copy and arrives in 4 KiB-aligned pool blocks.
//
// Flow control: the receiver of each direction grants a window of messages
// and bytes (RpcChannelOptions / ServerOptions stream_window_*); a Write()
// beyond it suspends until the reader consumes, so a slow reader costs the
// writer at most the window (plus the message being written) and never
// blocks the connection's other calls and streams.
//
// Half-close and status: WritesDone() tells the server the client sends no
// more (its Read() then returns false); the handler's return is the final
// Status, which the client's Finish() returns after its Read() returned false.
// Cancellation: ClientContext::Cancel() (any thread) ends the stream on both
// sides with CANCELLED; a handler that returns early ends it with its Status
// (the client's Write() then returns false). The ClientContext's deadline
// covers the whole stream: when it passes, both sides end with
// DEADLINE_EXCEEDED. A connection that fails ends its streams with
// UNAVAILABLE.
//
// Threads: a stream object is used by one reader and one writer at a time
// (they may be different coroutines or threads). From a coroutine on the
// stream's worker (RpcChannel::scheduler()) operations run in place; from
// anywhere else they hop to that worker and wait, which costs a wake-up per
// operation. ClientContext and the stream object must outlive the stream's
// last operation; destroying an unfinished client stream cancels it.
#pragma once

#include <memory>
#include <utility>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"

namespace hrpc {

// The untyped client side of a stream, which the typed wrappers below use.
// RpcChannel implements it; tests may implement it to feed a mocked stub.
class ClientStreamBase {
 public:
  virtual ~ClientStreamBase() = default;
  // Sends one message with `attachment` (consumed). Suspends while the
  // server's window is full. False once the stream has ended (Finish() says why).
  virtual bool Write(const google::protobuf::MessageLite& message, mempool::IoBuf attachment) = 0;
  // Half-close: no more Write()s. False when the stream has ended.
  virtual bool WritesDone() = 0;
  // Next message from the server (and its attachment, when `attachment` is
  // not null). False at the end of the stream or on an error.
  virtual bool Read(google::protobuf::MessageLite* message, mempool::IoBuf* attachment) = 0;
  // Waits for the server's final Status (reading and dropping messages not
  // read yet). An unparseable message from the server is DATA_LOSS.
  virtual Status Finish() = 0;
};

// The untyped server side, as a handler's stream objects see it.
class ServerStreamBase {
 public:
  virtual ~ServerStreamBase() = default;
  // False at the client's half-close, or when the stream ended (cancelled,
  // deadline, connection lost, a message that does not parse).
  virtual bool Read(google::protobuf::MessageLite* message, mempool::IoBuf* attachment) = 0;
  // Suspends while the client's window is full. False when the stream ended.
  virtual bool Write(const google::protobuf::MessageLite& message, mempool::IoBuf attachment) = 0;
};

namespace internal {
// A stream that only fails: what a Channel without streams returns.
std::unique_ptr<ClientStreamBase> FailedStream(Status why);
}  // namespace internal

// --- client ---------------------------------------------------------------

// Server streaming: the request went with the call; read the responses.
template <class R>
class ClientReader {
 public:
  explicit ClientReader(std::unique_ptr<ClientStreamBase> stream) : stream_(std::move(stream)) {}
  bool Read(R* message, mempool::IoBuf* attachment = nullptr) { return stream_->Read(message, attachment); }
  Status Finish() { return stream_->Finish(); }

 private:
  std::unique_ptr<ClientStreamBase> stream_;
};

// Client streaming: write requests, then Finish() fills the single response
// (its attachment goes to `*response_attachment` when given).
template <class W, class Resp>
class ClientWriter {
 public:
  ClientWriter(std::unique_ptr<ClientStreamBase> stream, Resp* response, mempool::IoBuf* response_attachment)
      : stream_(std::move(stream)), response_(response), response_attachment_(response_attachment) {}
  bool Write(const W& message, mempool::IoBuf attachment = {}) { return stream_->Write(message, std::move(attachment)); }
  bool WritesDone() {
    done_ = true;
    return stream_->WritesDone();
  }
  // Half-closes if WritesDone() was not called, reads the response, returns
  // the final Status. OK without a response is INTERNAL.
  Status Finish() {
    if (!done_) stream_->WritesDone();
    done_ = true;
    const bool got = stream_->Read(response_, response_attachment_);
    Status s = stream_->Finish();
    if (s.ok() && !got) return InternalError("client-streaming call ended OK without a response");
    return s;
  }

 private:
  std::unique_ptr<ClientStreamBase> stream_;
  Resp* response_;
  mempool::IoBuf* response_attachment_;
  bool done_ = false;
};

// Bidirectional.
template <class W, class R>
class ClientReaderWriter {
 public:
  explicit ClientReaderWriter(std::unique_ptr<ClientStreamBase> stream) : stream_(std::move(stream)) {}
  bool Write(const W& message, mempool::IoBuf attachment = {}) { return stream_->Write(message, std::move(attachment)); }
  bool WritesDone() { return stream_->WritesDone(); }
  bool Read(R* message, mempool::IoBuf* attachment = nullptr) { return stream_->Read(message, attachment); }
  Status Finish() { return stream_->Finish(); }

 private:
  std::unique_ptr<ClientStreamBase> stream_;
};

// --- server ---------------------------------------------------------------

template <class R>
class ServerReader {
 public:
  explicit ServerReader(ServerStreamBase* stream) : stream_(stream) {}
  bool Read(R* message, mempool::IoBuf* attachment = nullptr) { return stream_->Read(message, attachment); }

 private:
  ServerStreamBase* stream_;
};

template <class W>
class ServerWriter {
 public:
  explicit ServerWriter(ServerStreamBase* stream) : stream_(stream) {}
  bool Write(const W& message, mempool::IoBuf attachment = {}) { return stream_->Write(message, std::move(attachment)); }

 private:
  ServerStreamBase* stream_;
};

template <class W, class R>
class ServerReaderWriter {
 public:
  explicit ServerReaderWriter(ServerStreamBase* stream) : stream_(stream) {}
  bool Read(R* message, mempool::IoBuf* attachment = nullptr) { return stream_->Read(message, attachment); }
  bool Write(const W& message, mempool::IoBuf attachment = {}) { return stream_->Write(message, std::move(attachment)); }

 private:
  ServerStreamBase* stream_;
};

}  // namespace hrpc
