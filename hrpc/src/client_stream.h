// Private to the RPC runtime: RpcChannel's side of a stream.
#pragma once

#include <cstddef>
#include <memory>

#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/method.h"
#include "hrpc/rpc/stream.h"
#include "peer_table.h"
#include "runtime_internal.h"

namespace hrpc::internal {

// Opens a stream of `method` on worker `worker`'s connection to the channel's
// peer. The stream's operations run on that worker (in place from a coroutine
// there, else by hopping to it). An open that fails gives a stream whose
// operations fail and whose Finish() returns why.
std::unique_ptr<ClientStreamBase> OpenClientStream(const std::shared_ptr<WorkerSet>& workers,
                                                   const std::shared_ptr<ChannelState>& channel, size_t worker,
                                                   const MethodDescriptor& method, ClientContext& ctx);

}  // namespace hrpc::internal
