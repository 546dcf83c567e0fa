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
#include <utility>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/method.h"

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
  // on error *response is unspecified.
  virtual Status CallMethod(const MethodDescriptor& method, ClientContext& ctx,
                            const google::protobuf::MessageLite& request,
                            google::protobuf::MessageLite* response) = 0;

  // Asynchronous form. `request` is serialized before this returns; `ctx` and
  // `*response` must stay alive until `done` has run.
  virtual void CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                               const google::protobuf::MessageLite& request,
                               google::protobuf::MessageLite* response, DoneCallback done) = 0;
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

}  // namespace internal
}  // namespace hrpc
