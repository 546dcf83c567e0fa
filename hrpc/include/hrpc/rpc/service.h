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
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/server_context.h"

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
};

namespace internal {

Status MalformedRequest(const MethodDescriptor& method);
Status UnknownMethod(std::string_view service_name, uint32_t method_id);
Status HandlerThrew(const MethodDescriptor& method, const char* what);

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
  Status status;
  ctx.set_method(&method);
  try {
    status = (service.*handler)(ctx, request, &response);
  } catch (const std::exception& e) {
    return HandlerThrew(method, e.what());
  } catch (...) {
    return HandlerThrew(method, "unknown exception");
  }
  if (!status.ok()) return status;
  return writer.Write(response);
}

}  // namespace internal
}  // namespace hrpc
