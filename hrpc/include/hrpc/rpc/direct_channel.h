// DirectChannel: an in-process Channel that calls registered Service objects
// directly, on the calling thread, through the same serialize / dispatch /
// parse path a remote call takes (so malformed payloads, unknown methods and
// handler errors behave as they will over a transport). For tests and for
// embedding a service in the process that uses it.
//
// Attachments move: the request attachment goes to the handler's
// ServerContext, the handler's response attachment comes back in the
// ClientContext. There is no bulk transport: ServerContext::PullBulk/PushBulk
// return UNIMPLEMENTED. The async form completes before it returns. No
// streams: OpenStream gives one whose operations fail with UNIMPLEMENTED.
// AddService is not thread-safe with calls; register everything first.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "hrpc/rpc/channel.h"
#include "hrpc/rpc/service.h"

namespace hrpc {

class DirectChannel final : public Channel {
 public:
  DirectChannel() = default;

  // `service` is not owned. ALREADY_EXISTS if a service with its id is registered.
  Status AddService(Service* service);

  Status CallMethod(const MethodDescriptor& method, ClientContext& ctx, const google::protobuf::MessageLite& request,
                    google::protobuf::MessageLite* response) override;
  void CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                       const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response,
                       DoneCallback done) override;

  // Bytes in, bytes out: what a server does with a request frame's message.
  // UNIMPLEMENTED for an unknown service id.
  Status CallRaw(uint32_t service_id, uint32_t method_id, ClientContext& ctx, std::string_view request,
                 std::string* response);

 private:
  std::unordered_map<uint32_t, Service*> services_;
};

}  // namespace hrpc
