// A small etcd v3 client over etcd's JSON gateway (POST /v3/..., keys and
// values base64 in JSON, int64 as strings), through cpp-httplib and
// nlohmann::json. Just what naming needs: range over a prefix, put, delete,
// leases (grant, keep alive, revoke) and a watch stream.
//
// Every call opens its own HTTP connection, so calls from several threads do
// not share a socket. Calls go to one member of the cluster; a member that
// cannot be reached is passed over for the next one (in the order given), and
// the one that answered is asked first from then on. Cancel() (any thread) fails every running call and
// every later one with CANCELLED; it returns once no call is inside the
// client any more, so a thread blocked in Watch() is free by then.
//
// Errors: UNAVAILABLE when etcd cannot be reached, does not answer within
// `timeout` or a connection breaks (also a watch stream that ends); the code
// etcd answered with (NOT_FOUND for an unknown lease, ...); INTERNAL for an
// answer that is not the JSON expected.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"

namespace httplib {
class Client;
}

namespace hrpc::internal {

struct EtcdEndpoint {
  std::string host;
  uint16_t port = 0;
  std::string ToString() const;  // "host:port"
};

// "etcd://host:port[,host:port...]/prefix": the members of one etcd cluster
// and a prefix, which keeps its leading '/', loses trailing ones, and must
// not be empty.
struct EtcdTarget {
  std::vector<EtcdEndpoint> endpoints;
  std::string prefix;
};
Result<EtcdTarget> ParseEtcdUri(std::string_view uri);

struct EtcdKv {
  std::string key;
  std::string value;
  int64_t lease = 0;  // the lease the key is attached to (0: none)
};

struct EtcdRange {
  std::vector<EtcdKv> kvs;
  int64_t revision = 0;  // of the store when the range was read
};

struct EtcdLease {
  int64_t id = 0;
  std::chrono::seconds ttl{0};  // as granted (etcd raises a TTL below its minimum)
};

struct EtcdEvent {
  bool deleted = false;
  EtcdKv kv;  // value empty for a delete
};

class EtcdClient {
 public:
  EtcdClient(std::vector<EtcdEndpoint> endpoints, std::chrono::milliseconds timeout);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // Every key that starts with `prefix`.
  Result<EtcdRange> RangePrefix(std::string_view prefix);
  // `key` itself; nullopt when it does not exist.
  Result<std::optional<EtcdKv>> Get(std::string_view key);
  Status Put(std::string_view key, std::string_view value, int64_t lease = 0);
  Status Delete(std::string_view key);
  Result<EtcdLease> GrantLease(std::chrono::seconds ttl);
  // Refreshes the lease; NOT_FOUND once it has expired or was revoked.
  Status KeepAlive(int64_t lease);
  Status Revoke(int64_t lease);

  // Watches every key starting with `prefix` from `start_revision` (on the
  // member that answered last) and calls
  // on_events with each batch of events and the store revision after it.
  // Blocks until the stream breaks (UNAVAILABLE), etcd cancels the watch
  // (ABORTED; OUT_OF_RANGE when start_revision was compacted away), Cancel(),
  // or on_events returns false (OK). A stream that stays silent is kept: etcd
  // is asked for a progress notification every few minutes, and a stream
  // silent for much longer than that is taken as broken.
  using EventsFn = std::function<bool(const std::vector<EtcdEvent>& events, int64_t revision)>;
  Status Watch(std::string_view prefix, int64_t start_revision, const EventsFn& on_events);

  void Cancel();

 private:
  Result<std::string> Post(std::string_view path, const std::string& body);
  EtcdEndpoint Current();
  bool Cancelled();
  Status Begin(httplib::Client* client);
  void End(httplib::Client* client);

  const std::vector<EtcdEndpoint> endpoints_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable idle_;
  bool cancelled_ = false;
  size_t current_ = 0;  // the member asked first
  std::set<httplib::Client*> calls_;  // running calls (Cancel() stops their sockets)
};

}  // namespace hrpc::internal
