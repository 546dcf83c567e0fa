// RpcChannel: a Channel to one remote server over a transport.
//
// URI: "tcp://host:port", "loop://name" (needs options.runtime.loopback),
// "rdma://host:port", or a scheme-less "host:port" whose transport is picked by
// options.runtime.transport_choice (default: HRPC_TRANSPORT, read once when
// the options are created; else RDMA when a device exists, else TCP).
//
// Threads and connections. The channel runs its own workers (or borrows the
// workers of network groups, see RuntimeOptions) and keeps
// `connections_per_worker` connections on each; a connection and everything
// about its calls (transaction table, timers, exposures) belongs to its
// worker. A call made from a coroutine on one of those workers uses that
// worker's connection and never leaves the thread; a call from anywhere else
// is posted to a worker (round robin). Connections are made on first use;
// after one fails (server gone: calls in flight end with UNAVAILABLE) the next
// call on it reconnects.
//
// Attachments. ClientContext::request_attachment() of at most
// `eager_threshold` bytes travels inline in the request frame; a larger one is
// exposed for READ (one bulk descriptor per slice, with its CRC32C) and pulled
// by the server. Memory from pool() goes out without a copy; an attachment from
// another pool is first copied into pool() (counted by CountedCopy). A response
// attachment larger than the threshold needs
// ClientContext::set_response_attachment_capacity(n): the channel exposes n
// bytes of pool() for WRITE, the server pushes into them, and
// response_attachment() then holds slices of that memory. Exposures are
// revoked before the call completes. Attachments handed back by the channel
// are pool() memory: drop them before destroying the channel.
//
// Deadlines and cancellation: the remaining budget travels in the request;
// the call fails locally with DEADLINE_EXCEEDED when it runs out, and
// ClientContext::Cancel() sends a cancel frame and completes the call with
// CANCELLED at once. Late responses are dropped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/stats.h"

namespace hrpc {

struct RpcChannelOptions {
  RuntimeOptions runtime;
  size_t connections_per_worker = 1;
  size_t eager_threshold = kDefaultEagerThreshold;
};

class RpcChannel final : public Channel {
 public:
  // INVALID_ARGUMENT for a bad URI or options; errors of creating workers and
  // the pool. Does not connect (see Connect()).
  static Result<std::unique_ptr<RpcChannel>> Create(std::string_view uri, RpcChannelOptions options = {});
  // Fails the calls still in flight with CANCELLED, closes the connections and
  // stops the workers. No call may be running on the channel's workers.
  ~RpcChannel() override;
  RpcChannel(const RpcChannel&) = delete;
  RpcChannel& operator=(const RpcChannel&) = delete;

  Status CallMethod(const MethodDescriptor& method, ClientContext& ctx, const google::protobuf::MessageLite& request,
                    google::protobuf::MessageLite* response) override;
  void CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                       const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response,
                       DoneCallback done) override;

  // Bytes in, bytes out, by ids: for proxies and tests (e.g. sending a request
  // that does not parse). `name` labels the stats ("" = the ids).
  Status CallRaw(uint32_t service_id, uint32_t method_id, std::string_view name, ClientContext& ctx,
                 std::string_view request, std::string* response);

  // Connects every connection now (otherwise they connect on first use). Any
  // thread may call it; from a coroutine (including one on this channel's own
  // workers) it suspends the coroutine, from a plain thread it blocks.
  Status Connect();

  // The resolved URI ("tcp://127.0.0.1:7000").
  const std::string& uri() const noexcept;
  // Allocate attachments here for the zero-copy path (worker 0's pool).
  mempool::Pool& pool() noexcept;
  // The channel's workers: run load-generating coroutines there to call
  // without crossing threads.
  size_t num_workers() const noexcept;
  coro::Scheduler& scheduler(size_t worker) noexcept;

  // Per-method client-side stats: latency is end to end; bytes_out = request
  // (message + attachment), bytes_in = response.
  std::vector<MethodStats> Stats() const;

  class Impl;

 private:
  explicit RpcChannel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrpc
