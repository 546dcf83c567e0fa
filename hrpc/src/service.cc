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

namespace internal {

Status MalformedRequest(const MethodDescriptor& method) {
  return InvalidArgumentError("malformed request payload for " + std::string(method.full_name));
}

Status UnknownMethod(std::string_view service_name, uint32_t method_id) {
  return UnimplementedError("unknown method id " + std::to_string(method_id) + " in service " +
                            std::string(service_name));
}

Status HandlerThrew(const MethodDescriptor& method, const char* what) {
  return InternalError("handler of " + std::string(method.full_name) + " threw: " + what);
}

}  // namespace internal
}  // namespace hrpc
