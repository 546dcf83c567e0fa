// Channel: the client side of hrpc, as generated stubs see it.
//
// A Channel carries unary calls to one peer (or, for DirectChannel, to
// in-process services). Implementations are thread-safe: many coroutines on
// many threads may call through one Channel at once. Stubs hold a Channel* and
// do not own it; the Channel must outlive every stub and every call in flight.
//
// Status codes a call can end with: OK; whatever the handler returned;
// UNIMPLEMENTED (unknown service or method); INVALID_ARGUMENT (the server could
// not parse the request); DEADLINE_EXCEEDED; CANCELLED (ClientContext::Cancel);
// UNAVAILABLE (peer unreachable or gone: retry may succeed); RESOURCE_EXHAUSTED
// (no credits/buffers: retry later); DATA_LOSS (corrupted frame, crc mismatch,
// unparseable response); INTERNAL.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/stream.h"

namespace hrpc {

// Completion of an async call: runs exactly once, on whichever thread finished
// the call (possibly inside CallMethodAsync itself). Keep it short: hand work
// off rather than block.
using DoneCallback = std::function<void(Status)>;

class Channel {
 public:
  virtual ~Channel() = default;

  // Synchronous form. Inside an hrpc coroutine it suspends only the calling
  // coroutine; on a plain thread it blocks the thread. Fills *response on OK;
  // on error *response is unspecified. On a worker thread of the channel's
  // runtime outside a coroutine (a poller, an I/O completion callback) it
  // fails at once with FAILED_PRECONDITION: blocking there would stop the very
  // worker that finishes the call. Use the async form there.
  virtual Status CallMethod(const MethodDescriptor& method, ClientContext& ctx,
                            const google::protobuf::MessageLite& request,
                            google::protobuf::MessageLite* response) = 0;

  // Asynchronous form. `request` is serialized before this returns; `ctx` and
  // `*response` must stay alive until `done` has run.
  virtual void CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                               const google::protobuf::MessageLite& request,
                               google::protobuf::MessageLite* response, DoneCallback done) = 0;

  // Opens a stream (hrpc/rpc/stream.h). `ctx` must outlive it. A channel
  // without streams returns one whose operations fail with UNIMPLEMENTED.
  virtual std::unique_ptr<ClientStreamBase> OpenStream(const MethodDescriptor& method, ClientContext& ctx) {
    (void)ctx;
    return internal::FailedStream(UnimplementedError("this channel has no streams: " + std::string(method.full_name)));
  }
};

namespace internal {

// The Future form of a call, built on CallMethodAsync; used by generated stubs.
// The response lives in the shared state until the future hands it out.
template <class Response>
coro::Future<Response> CallFuture(Channel& channel, const MethodDescriptor& method, ClientContext& ctx,
                                  const google::protobuf::MessageLite& request) {
  struct State {
    coro::Promise<Response> promise;
    Response response;
  };
  auto state = std::make_shared<State>();
  coro::Future<Response> future = state->promise.GetFuture();
  channel.CallMethodAsync(method, ctx, request, &state->response, [state](Status s) {
    if (s.ok()) {
      state->promise.SetValue(std::move(state->response));
    } else {
      state->promise.SetError(std::move(s));
    }
  });
  return future;
}

// The client sides of streams, for generated stubs. Server streaming sends
// the request (with ctx.request_attachment()) and half-closes; client
// streaming's Finish() reads the response, its attachment into
// ctx.response_attachment().
template <class Request, class Response>
std::unique_ptr<ClientReader<Response>> StartServerStreaming(Channel& channel, const MethodDescriptor& method,
                                                             ClientContext& ctx, const Request& request) {
  std::unique_ptr<ClientStreamBase> stream = channel.OpenStream(method, ctx);
  mempool::IoBuf attachment = std::move(ctx.request_attachment());
  ctx.request_attachment() = mempool::IoBuf();
  if (stream->Write(request, std::move(attachment))) stream->WritesDone();
  return std::make_unique<ClientReader<Response>>(std::move(stream));
}

template <class Request, class Response>
std::unique_ptr<ClientWriter<Request, Response>> StartClientStreaming(Channel& channel, const MethodDescriptor& method,
                                                                      ClientContext& ctx, Response* response) {
  return std::make_unique<ClientWriter<Request, Response>>(channel.OpenStream(method, ctx), response,
                                                           &ctx.response_attachment());
}

template <class Request, class Response>
std::unique_ptr<ClientReaderWriter<Request, Response>> StartBidiStreaming(Channel& channel,
                                                                          const MethodDescriptor& method,
                                                                          ClientContext& ctx) {
  return std::make_unique<ClientReaderWriter<Request, Response>>(channel.OpenStream(method, ctx));
}

}  // namespace internal
}  // namespace hrpc
