#include "hrpc/rpc/direct_channel.h"

#include <limits>
#include <string>

namespace hrpc {

Status DirectChannel::AddService(Service* service) {
  auto [it, inserted] = services_.emplace(service->service_id(), service);
  if (!inserted) {
    return AlreadyExistsError("service id " + std::to_string(service->service_id()) + " (" +
                              std::string(service->service_name()) + ") already registered as " +
                              std::string(it->second->service_name()));
  }
  return Status::Ok();
}

Status DirectChannel::CallRaw(uint32_t service_id, uint32_t method_id, ClientContext& ctx, std::string_view request,
                              std::string* response) {
  if (ctx.IsCancelled()) return CancelledError("call cancelled before it started");
  if (ctx.DeadlineExpired()) return DeadlineExceededError("deadline expired before the call started");
  auto it = services_.find(service_id);
  if (it == services_.end()) return UnimplementedError("unknown service id " + std::to_string(service_id));
  Service& service = *it->second;

  ServerContext server_ctx;
  server_ctx.set_deadline(ctx.deadline());
  server_ctx.set_peer("direct");
  server_ctx.request_attachment() = std::move(ctx.request_attachment());
  ctx.set_peer("direct");
  // The hook points at this frame: it goes on every way out.
  struct HookScope {
    ClientContext& ctx;
    ~HookScope() { ctx.ClearCancelHook(); }
  } hook{ctx};
  ctx.SetCancelHook([&server_ctx] { server_ctx.MarkCancelled(); });
  // As the server does: a service written by hand is guarded too, and OK
  // needs a response.
  struct Writer final : ResponseWriter {
    StringResponseWriter out;
    bool written = false;
    explicit Writer(std::string* r) : out(r) {}
    Status Write(const google::protobuf::MessageLite& m) override {
      HRPC_TRY(out.Write(m));
      written = true;
      return Status::Ok();
    }
  } writer(response);
  Status status = internal::GuardHandler(service.service_name(),
                                         [&] { return service.CallMethod(method_id, server_ctx, request, writer); });
  ctx.ClearCancelHook();
  if (status.ok() && !writer.written) status = InternalError("handler returned OK without a response");

  if (ctx.IsCancelled()) return CancelledError("call cancelled");
  if (ctx.DeadlineExpired()) return DeadlineExceededError("deadline expired during the call");
  if (status.ok()) ctx.response_attachment() = std::move(server_ctx.response_attachment());
  return status;
}

Status DirectChannel::CallMethod(const MethodDescriptor& method, ClientContext& ctx,
                                 const google::protobuf::MessageLite& request,
                                 google::protobuf::MessageLite* response) {
  std::string request_bytes;
  // Check first: protobuf treats serializing an uninitialized message as a bug.
  if (!request.IsInitialized()) {
    return InvalidArgumentError("request for " + std::string(method.full_name) +
                                " lacks required fields: " + request.InitializationErrorString());
  }
  if (!request.SerializePartialToString(&request_bytes)) {
    return InvalidArgumentError("cannot serialize request for " + std::string(method.full_name) + " (> 2 GiB?)");
  }
  std::string response_bytes;
  HRPC_TRY(CallRaw(method.service_id, method.method_id, ctx, request_bytes, &response_bytes));
  if (response_bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !response->ParseFromArray(response_bytes.data(), static_cast<int>(response_bytes.size()))) {
    return DataLossError("malformed response payload for " + std::string(method.full_name));
  }
  return Status::Ok();
}

void DirectChannel::CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                                    const google::protobuf::MessageLite& request,
                                    google::protobuf::MessageLite* response, DoneCallback done) {
  done(CallMethod(method, ctx, request, response));
}

}  // namespace hrpc
