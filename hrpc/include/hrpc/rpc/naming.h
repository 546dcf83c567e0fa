// Naming: where a ClusterChannel learns its set of servers.
//
// A naming URI picks the source:
//   list://host:port,host:port        fixed; parsed once
//   file:///path/to/servers           one server per line ('#' starts a comment),
//                                     reloaded when the file changes (inotify;
//                                     stat every second where it cannot watch)
//   dns://name:port                   every address the name resolves to
//                                     (c-ares, off the workers), re-resolved
//                                     every NamingOptions::dns_refresh
//   etcd://host:port/prefix           the values of every key under /prefix in
//                                     etcd (v3 API through its JSON gateway),
//                                     listed then watched: a server whose lease
//                                     expires or who deregisters leaves the set;
//                                     etcd://h1:p1,h2:p2/prefix names several
//                                     members of one etcd cluster
// A server entry is a channel URI ("tcp://10.0.0.1:7000", "rdma://h:p", or a
// scheme-less "h:p" resolved by the runtime's transport choice), optionally
// followed by whitespace and a tag ("10.0.0.1:7000 rack-a").
//
// A watcher delivers the whole set on every change, from a thread of its own
// (never a worker's). Bad input (a line that does not parse, a missing file, a
// name that does not resolve, etcd down, garbage under the prefix) is
// delivered as an error Status: the channel keeps its last good set and
// counts the error. Entries that do not parse are dropped from a set and
// reported in the same update's `problems`.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"

namespace hrpc {

struct ServerNode {
  std::string uri;  // as written (the channel resolves a scheme-less one)
  std::string tag;
  friend bool operator==(const ServerNode&, const ServerNode&) = default;
  friend auto operator<=>(const ServerNode&, const ServerNode&) = default;
};

// One delivery of a watcher: the current set (sorted, without duplicates), and
// what was wrong with entries it left out.
struct NamingUpdate {
  std::vector<ServerNode> servers;
  std::vector<std::string> problems;
};

struct NamingOptions {
  // dns://: how often the name is resolved again.
  std::chrono::milliseconds dns_refresh{5000};
  // dns://: servers to ask ("127.0.0.1:5353"); empty = the system's (resolv.conf).
  std::vector<std::string> dns_servers;
  // etcd://: timeout of one request to etcd, and the pause before retrying
  // after etcd failed or a watch broke.
  std::chrono::milliseconds etcd_timeout{2000};
  std::chrono::milliseconds etcd_retry{500};
  // file://: false looks at the file every second (stat) instead of watching
  // its directory with inotify: for a file system where inotify misses
  // changes (NFS, changed from another client). The watcher does the same
  // where inotify cannot watch. A change is read once the file looked the
  // same twice in a row (not half-written).
  bool file_inotify = true;
};

class NamingWatcher {
 public:
  // Called with every new set, or with the error that kept the watcher from
  // getting one. Never concurrently with itself.
  using Callback = std::function<void(Result<NamingUpdate>)>;

  virtual ~NamingWatcher() = default;
  // "list", "file", "dns", "etcd".
  virtual std::string_view scheme() const = 0;
  // Delivers the first result (set or error) before it returns, then keeps
  // watching on a thread of its own until Stop(). Returns that first result's
  // status (the watcher keeps trying after an error).
  virtual Status Start(Callback on_update) = 0;
  // Stops watching; no callback runs after it returns. Idempotent; the
  // destructor calls it.
  virtual void Stop() = 0;
};

// A watcher for `uri`. INVALID_ARGUMENT for an unknown scheme or a URI that
// does not parse (list:// with an entry that is not host:port).
Result<std::unique_ptr<NamingWatcher>> MakeNamingWatcher(std::string_view uri, const NamingOptions& options = {});

// Parses one server entry ("[scheme://]host:port [tag]"). INVALID_ARGUMENT
// with the reason when it is not one.
Result<ServerNode> ParseServerNode(std::string_view entry);

// Registers a server under an etcd prefix while it lives: a lease of `ttl`,
// the key "<prefix>/<address>" with the value "<address>", kept alive every
// ttl/3 from a thread of its own; Stop() (and the destructor) revokes the
// lease, so the key disappears at once. A server that dies without Stop()
// disappears when the lease expires.
struct EtcdRegistrationOptions {
  std::string etcd;     // "etcd://host:port/prefix"
  std::string address;  // what clients connect to ("tcp://127.0.0.1:7000")
  std::string tag;      // stored after the address, as in a file:// line
  std::chrono::seconds ttl{5};
  std::chrono::milliseconds timeout{2000};
};
class EtcdRegistration {
 public:
  // Grants the lease and puts the key before it returns. UNAVAILABLE when
  // etcd cannot be reached; INVALID_ARGUMENT for a bad URI or address.
  static Result<std::unique_ptr<EtcdRegistration>> Create(EtcdRegistrationOptions options);
  virtual ~EtcdRegistration() = default;
  virtual void Stop() = 0;
  // The key registered and its lease id.
  virtual const std::string& key() const = 0;
  virtual int64_t lease() const = 0;
};

}  // namespace hrpc
