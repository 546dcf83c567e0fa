// Service: the server side of hrpc, as the runtime sees a generated service.
//
// protoc-gen-hrpc emits, per .proto service, a class deriving from Service
// whose CallMethod switches on the method id, parses the request, calls the
// user's virtual handler and hands the response to a ResponseWriter. Users
// derive from that generated class and implement the handlers. A Service
// object is registered by pointer (not owned) and must outlive the server or
// channel it is registered with; handlers run concurrently on many workers, so
// a service's own state needs its own synchronization.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/server_context.h"
#include "hrpc/rpc/stream.h"

namespace hrpc {

// Where a successful handler's response goes: the runtime serializes it
// straight into the frame buffer it is about to send. INTERNAL if the
// response lacks proto2 required fields (a handler bug) or cannot be serialized.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  virtual Status Write(const google::protobuf::MessageLite& response) = 0;
};

// A ResponseWriter that serializes into a std::string (DirectChannel, tests).
class StringResponseWriter final : public ResponseWriter {
 public:
  explicit StringResponseWriter(std::string* out) : out_(out) {}
  Status Write(const google::protobuf::MessageLite& response) override;

 private:
  std::string* out_;
};

class Service {
 public:
  virtual ~Service() = default;

  virtual std::string_view service_name() const noexcept = 0;  // "pkg.Service"
  virtual uint32_t service_id() const noexcept = 0;            // ServiceIdOf(service_name())
  virtual std::span<const MethodDescriptor> methods() const noexcept = 0;

  // Runs method `method_id` on the serialized `request`. Returns the handler's
  // Status; on OK the response was given to `response`. UNIMPLEMENTED for an
  // unknown method id, INVALID_ARGUMENT for a request that does not parse (or
  // lacks proto2 required fields), INTERNAL when a handler throws.
  virtual Status CallMethod(uint32_t method_id, ServerContext& ctx, std::string_view request,
                            ResponseWriter& response) = 0;

  // Runs streaming method `method_id` over `stream` and returns its final
  // Status. UNIMPLEMENTED for an unknown method id or a unary one (and, by
  // default, for every id: services without streaming methods).
  virtual Status CallStream(uint32_t method_id, ServerContext& ctx, ServerStreamBase& stream);
};

namespace internal {

Status MalformedRequest(const MethodDescriptor& method);
Status UnknownMethod(std::string_view service_name, uint32_t method_id);
// INTERNAL "handler of HANDLER threw: WHAT" (HANDLER: a method's full name, or
// a hand-written service's name).
Status HandlerThrew(std::string_view handler, const char* what);
// A unary method called as a stream, or a streaming one called as a unary call.
Status WrongMethodKind(const MethodDescriptor& method, bool is_streaming);

// Runs a handler, turning an exception into INTERNAL (HandlerThrew).
template <class Fn>
Status GuardHandler(std::string_view handler, Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return HandlerThrew(handler, e.what());
  } catch (...) {
    return HandlerThrew(handler, "unknown exception");
  }
}

// The bodies of the generated switch cases of CallStream.
template <class Svc, class Request, class Response>
Status DispatchClientStreaming(Svc& service,
                               Status (Svc::*handler)(ServerContext&, ServerReader<Request>*, Response*),
                               const MethodDescriptor& method, ServerContext& ctx, ServerStreamBase& stream) {
  ctx.set_method(&method);
  ServerReader<Request> reader(&stream);
  Response response;
  HRPC_TRY(GuardHandler(method.full_name, [&] { return (service.*handler)(ctx, &reader, &response); }));
  if (!response.IsInitialized()) {
    return InternalError("response lacks required fields: " + response.InitializationErrorString());
  }
  if (!stream.Write(response, std::move(ctx.response_attachment()))) {
    return UnavailableError("the response of " + std::string(method.full_name) + " could not be sent");
  }
  return Status::Ok();
}

template <class Svc, class Request, class Response>
Status DispatchServerStreaming(Svc& service,
                               Status (Svc::*handler)(ServerContext&, const Request&, ServerWriter<Response>*),
                               const MethodDescriptor& method, ServerContext& ctx, ServerStreamBase& stream) {
  ctx.set_method(&method);
  Request request;
  if (!stream.Read(&request, &ctx.request_attachment())) {
    return InvalidArgumentError("server-streaming call " + std::string(method.full_name) + " without a request");
  }
  ServerWriter<Response> writer(&stream);
  return GuardHandler(method.full_name, [&] { return (service.*handler)(ctx, request, &writer); });
}

template <class Svc, class Request, class Response>
Status DispatchBidiStreaming(Svc& service,
                             Status (Svc::*handler)(ServerContext&, ServerReaderWriter<Response, Request>*),
                             const MethodDescriptor& method, ServerContext& ctx, ServerStreamBase& stream) {
  ctx.set_method(&method);
  ServerReaderWriter<Response, Request> rw(&stream);
  return GuardHandler(method.full_name, [&] { return (service.*handler)(ctx, &rw); });
}


// The body of every generated switch case.
template <class Svc, class Request, class Response>
Status DispatchUnary(Svc& service, Status (Svc::*handler)(ServerContext&, const Request&, Response*),
                     const MethodDescriptor& method, ServerContext& ctx, std::string_view request_bytes,
                     ResponseWriter& writer) {
  Request request;
  if (request_bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !request.ParseFromArray(request_bytes.data(), static_cast<int>(request_bytes.size()))) {
    return MalformedRequest(method);
  }
  Response response;
  ctx.set_method(&method);
  HRPC_TRY(GuardHandler(method.full_name, [&] { return (service.*handler)(ctx, request, &response); }));
  return writer.Write(response);
}

}  // namespace internal
}  // namespace hrpc
