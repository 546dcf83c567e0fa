#include "hrpc/rpc/service.h"

#include <string>

namespace hrpc {

Status StringResponseWriter::Write(const google::protobuf::MessageLite& response) {
  if (!response.IsInitialized()) {
    return InternalError("handler left required response fields unset: " + response.InitializationErrorString());
  }
  if (!response.SerializePartialToString(out_)) return InternalError("cannot serialize response (> 2 GiB?)");
  return Status::Ok();
}

Status Service::CallStream(uint32_t method_id, ServerContext& ctx, ServerStreamBase& stream) {
  (void)ctx;
  (void)stream;
  return internal::UnknownMethod(service_name(), method_id);
}

namespace internal {

Status MalformedRequest(const MethodDescriptor& method) {
  return InvalidArgumentError("malformed request payload for " + std::string(method.full_name));
}

Status UnknownMethod(std::string_view service_name, uint32_t method_id) {
  return UnimplementedError("unknown method id " + std::to_string(method_id) + " in service " +
                            std::string(service_name));
}

Status HandlerThrew(std::string_view handler, const char* what) {
  return InternalError("handler of " + std::string(handler) + " threw: " + what);
}

Status WrongMethodKind(const MethodDescriptor& method, bool is_streaming) {
  return UnimplementedError(std::string(method.full_name) +
                            (is_streaming ? " is a streaming method, called as a unary one"
                                          : " is a unary method, called as a stream"));
}

}  // namespace internal
}  // namespace hrpc
