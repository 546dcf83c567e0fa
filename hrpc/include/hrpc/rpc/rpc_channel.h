// RpcChannel: a Channel to one remote server, on a Runtime.
//
// URI: "tcp://host:port", "loop://name" (needs the runtime's loopback),
// "rdma://host:port", or a scheme-less "host:port" whose transport is picked by
// the runtime's transport_choice (RuntimeOptions::FromEnv() applies
// HRPC_TRANSPORT; else RDMA when a device exists, else TCP).
//
// Cost. A channel made on a Runtime is a peer address and options: creating
// it starts no thread, maps no memory and does not connect. Its calls run on
// the runtime's workers over their connections to the peer, which every
// channel of the runtime to the same URI shares (connections_per_worker of
// them per worker, made on first use, closed after the runtime's idle_timeout,
// replaced by the next call after one fails: calls in flight on a failed
// connection end with UNAVAILABLE). The one-line Create(uri, options) makes a
// small private runtime from options.runtime (its own worker thread and pool)
// for programs that need nothing more.
//
// Threads. A call made from a coroutine on one of the runtime's workers uses
// that worker's connection and never leaves the thread; a call from anywhere
// else is posted to a worker (round robin).
//
// Attachments. ClientContext::request_attachment() of at most
// `eager_threshold` bytes travels inline in the request frame; a larger one
// follows the frame in the stream on TCP (read into aligned blocks of the
// server's pool: no extra round trip), or is exposed for READ (one bulk
// descriptor per slice, with its CRC32C) and pulled by the server (RDMA,
// loopback). Memory from the pool of the worker that sends the call goes out
// without a copy (a handler's pulled attachment, or pool()); an attachment
// from another pool is first copied when it must be exposed (counted by
// CountedCopy). A response attachment of any size arrives: inline, streamed
// (TCP), written into room the client offered
// (ClientContext::set_response_attachment_capacity), or else READ from the
// server's memory and released. Exposures are revoked before the call completes.
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
  // Only for the one-line Create(uri, options): the private runtime's options.
  RuntimeOptions runtime = RuntimeOptions::FromEnv();
  // Connections per worker to this channel's peer (shared with the other
  // channels of the runtime to the same URI).
  size_t connections_per_worker = 1;
  size_t eager_threshold = kDefaultEagerThreshold;
  // What this channel's streams let the server have in flight to them.
  StreamWindowOptions stream_window;
};

class RpcChannel final : public Channel {
 public:
  // A channel on `runtime` (options.runtime is not used). INVALID_ARGUMENT for
  // a bad URI or options. Does not connect (see Connect()).
  static Result<std::unique_ptr<RpcChannel>> Create(Runtime& runtime, std::string_view uri,
                                                    RpcChannelOptions options = {});
  // A channel with a private runtime made from options.runtime. Also the
  // errors of creating its worker and pool.
  static Result<std::unique_ptr<RpcChannel>> Create(std::string_view uri, RpcChannelOptions options = {});
  // Fails the channel's calls still in flight with CANCELLED (their done
  // callbacks run) and waits for them to end. The shared connections stay.
  // Any thread, including a coroutine on a worker of the runtime.
  ~RpcChannel() override;
  RpcChannel(const RpcChannel&) = delete;
  RpcChannel& operator=(const RpcChannel&) = delete;

  Status CallMethod(const MethodDescriptor& method, ClientContext& ctx, const google::protobuf::MessageLite& request,
                    google::protobuf::MessageLite* response) override;
  void CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                       const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response,
                       DoneCallback done) override;

  // A stream on the caller's worker's connection (round robin off the
  // workers); see hrpc/rpc/stream.h. Opening connects if needed: a stream
  // that cannot open fails its first operation.
  std::unique_ptr<ClientStreamBase> OpenStream(const MethodDescriptor& method, ClientContext& ctx) override;

  // Bytes in, bytes out, by ids: for proxies and tests (e.g. sending a request
  // that does not parse). `name` labels the stats ("" = the ids).
  Status CallRaw(uint32_t service_id, uint32_t method_id, std::string_view name, ClientContext& ctx,
                 std::string_view request, std::string* response);

  // Connects every connection now (otherwise they connect on first use). Any
  // thread may call it; from a coroutine (including one on this channel's own
  // workers) it suspends the coroutine, from a plain thread it blocks. On a
  // worker of the channel's runtime outside a coroutine: FAILED_PRECONDITION.
  Status Connect();

  // The resolved URI ("tcp://127.0.0.1:7000").
  const std::string& uri() const noexcept;
  // Allocate attachments here for the zero-copy path (worker 0's pool; a call
  // from worker w goes out without a copy from worker w's pool).
  mempool::Pool& pool() noexcept;
  // The runtime's workers: run load-generating coroutines there to call
  // without crossing threads.
  size_t num_workers() const noexcept;
  coro::Scheduler& scheduler(size_t worker) noexcept;

  // Per-method client-side stats of the runtime the channel runs on (every
  // channel of it; for a channel with a private runtime, its own calls):
  // latency is end to end; bytes_out = request, bytes_in = response.
  std::vector<MethodStats> Stats() const;

  class Impl;

 private:
  friend class ClusterChannel;
  // A channel on the runtime that `workers` belong to (Create(Runtime&) and
  // the cluster channel, which outlives the Runtime object like any channel).
  static Result<std::unique_ptr<RpcChannel>> CreateOn(std::shared_ptr<internal::WorkerSet> workers,
                                                      std::string_view uri, RpcChannelOptions options);
  explicit RpcChannel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrpc
