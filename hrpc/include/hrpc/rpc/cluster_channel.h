// ClusterChannel: a Channel to a set of servers that a naming source keeps
// current, with load balancing, retries, backup requests and ejection of
// failing servers. Generated stubs take it like any Channel.
//
//   auto ch = ClusterChannel::Create(runtime, "etcd://127.0.0.1:2379/kv", {.load_balancer = "c_hash"});
//   kv::Kv::Stub stub(ch->get());
//   ClientContext ctx;
//   ctx.set_request_key("volume-7/chunk-42");   // c_hash: same key, same server
//   stub.Get(ctx, req, &resp);
//
// Servers. The naming URI (naming.h: list://, file://, dns://, etcd://) gives
// the set; each server is an RpcChannel on the runtime (so calls share the
// runtime's connections). A server that leaves the set gets no new calls; its
// calls in flight finish. When naming fails (a file that vanished, etcd
// down), the channel keeps its last good set; Create() fails only when the
// URI does not parse, or the first read failed with no set at all when
// ClusterChannelOptions::require_servers_at_start is set.
//
// Load balancers (ClusterChannelOptions::load_balancer):
//   "rr"      round robin over the servers not ejected;
//   "la"      least loaded: the lowest (calls in flight + 1) x recent latency
//             (an exponentially weighted mean), so a slow server gets fewer calls;
//   "c_hash"  consistent hashing (a ketama ring, `hash_points` per server) on
//             ClientContext::request_key(): a key goes to the same server while
//             the set is unchanged, and adding one of N servers moves about
//             1/(N+1) of the keys. Calls without a key go round robin.
//
// Retries. A call is idempotent when its method says so (protobuf's method
// option `option idempotency_level = IDEMPOTENT;` or NO_SIDE_EFFECTS,
// MethodDescriptor::idempotent) or its
// ClientContext does (set_idempotent). An idempotent call that fails with a
// retryable code (RetryPolicy::retry_on: UNAVAILABLE and RESOURCE_EXHAUSTED
// by default) is sent again to another server, up to max_attempts in all,
// after a backoff, while its deadline allows. A non-idempotent call is never
// sent to a second server: it is resent only to the same server, with the
// same request id (ClientContext::request_id(), or a random one the channel
// picks for the call), which a server with a dedup window (ServerOptions::dedup_window)
// answers with the first answer instead of running it twice.
//
// Backup requests. With a backup_request_delay, an idempotent call that has
// no answer after that delay is sent a second time to another server; the
// first answer wins, the other call is cancelled (ClientContext::backup_sent()
// tells whether it happened).
//
// Ejection. A server whose calls fail with UNAVAILABLE `eject_after_failures`
// times in a row gets no calls; a thread of the channel's tries to connect to
// it every health_check_interval (the first try one interval after the
// ejection) and takes it back once that succeeds.
// When every server is ejected, calls still go to them (better than failing
// without trying).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/rpc/channel.h"
#include "hrpc/rpc/naming.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"

namespace hrpc {

struct RetryPolicy {
  int max_attempts = 3;  // including the first; 1 = no retry
  std::vector<StatusCode> retry_on = {StatusCode::kUnavailable, StatusCode::kResourceExhausted};
  // Pause before retry k (k = 1, 2, ...): backoff * 2^(k-1), at most
  // max_backoff, with up to 50% random jitter taken off.
  std::chrono::milliseconds backoff{5};
  std::chrono::milliseconds max_backoff{100};
};

struct ClusterChannelOptions {
  std::string load_balancer = "rr";  // rr | la | c_hash
  size_t hash_points = 160;          // c_hash: points per server on the ring
  RpcChannelOptions channel;         // for every server's channel
  NamingOptions naming;
  RetryPolicy retry;
  // 0: no backup requests.
  std::chrono::milliseconds backup_request_delay{0};
  int eject_after_failures = 3;
  std::chrono::milliseconds health_check_interval{200};
  // Create() fails when the first naming read gives no server.
  bool require_servers_at_start = false;
};

// One server as the channel sees it (ServerStats()).
struct ClusterServerStats {
  std::string uri;
  std::string tag;
  uint64_t calls = 0;     // attempts sent to it (retries and backups included)
  uint64_t errors = 0;    // attempts that ended with an error
  int64_t in_flight = 0;
  double latency_us = 0;  // recent mean of successful attempts (EWMA)
  bool ejected = false;
  uint64_t ejections = 0;
};

// The channel's own counts (stats()).
struct ClusterStats {
  uint64_t calls = 0;
  uint64_t failed_calls = 0;
  uint64_t retries = 0;           // attempts after the first (backups not included)
  uint64_t backup_requests = 0;
  uint64_t backup_wins = 0;       // calls answered by their backup request
  uint64_t naming_updates = 0;    // sets applied
  uint64_t naming_errors = 0;     // failed naming reads (the last good set was kept)
};

class ClusterChannel final : public Channel {
 public:
  // INVALID_ARGUMENT for a bad naming URI, load balancer or option. Reads the
  // naming source once before it returns.
  static Result<std::unique_ptr<ClusterChannel>> Create(Runtime& runtime, std::string_view naming_uri,
                                                        ClusterChannelOptions options = {});
  // Stops the naming watcher and the health checks, then ends the calls still
  // in flight like RpcChannel's destructor does.
  ~ClusterChannel() override;
  ClusterChannel(const ClusterChannel&) = delete;
  ClusterChannel& operator=(const ClusterChannel&) = delete;

  Status CallMethod(const MethodDescriptor& method, ClientContext& ctx, const google::protobuf::MessageLite& request,
                    google::protobuf::MessageLite* response) override;
  void CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                       const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response,
                       DoneCallback done) override;

  // The current set, as naming gave it.
  std::vector<ServerNode> servers() const;
  std::vector<ClusterServerStats> ServerStats() const;
  ClusterStats stats() const;
  // The last naming read's result (OK once a set was read and applied).
  Status naming_status() const;

  class Impl;

 private:
  explicit ClusterChannel(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace hrpc
