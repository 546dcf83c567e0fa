// etcd://host:port/prefix: the watcher (list, then watch from the next
// revision) and a server's registration (a lease kept alive, a key under it).
#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "etcd_client.h"
#include "naming_internal.h"

namespace hrpc {

namespace internal {

namespace {

// The keys of a prefix: "<prefix>/...".
std::string KeyPrefix(const EtcdTarget& t) { return t.prefix + "/"; }

class EtcdWatcher final : public NamingWatcher {
 public:
  EtcdWatcher(std::string uri, EtcdTarget target, const NamingOptions& options)
      : uri_(std::move(uri)),
        target_(std::move(target)),
        options_(options),
        client_(target_.endpoints, options.etcd_timeout) {}
  ~EtcdWatcher() override { Stop(); }

  std::string_view scheme() const override { return "etcd"; }

  Status Start(Callback on_update) override {
    {
      std::lock_guard lock(mu_);
      if (started_) return FailedPreconditionError("etcd watcher: Start called twice");
      started_ = true;
    }
    on_update_ = std::move(on_update);
    Status first = List();
    if (!first.ok()) Deliver(first);
    thread_ = std::thread([this, listed = first.ok()] { Run(listed); });
    return first;
  }

  void Stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    wake_.notify_all();
    client_.Cancel();
    if (thread_.joinable()) thread_.join();
  }

 private:
  bool Stopping() {
    std::lock_guard lock(mu_);
    return stopping_;
  }

  // Sleeps for etcd_retry; false when Stop() came first.
  bool Pause() {
    std::unique_lock lock(mu_);
    return !wake_.wait_for(lock, options_.etcd_retry, [this] { return stopping_; });
  }

  // Reads the prefix, delivers the set (when it changed or after an error).
  Status List() {
    auto range = client_.RangePrefix(KeyPrefix(target_));
    if (!range.ok()) return range.status();
    kvs_.clear();
    for (EtcdKv& kv : range->kvs) kvs_[std::move(kv.key)] = std::move(kv.value);
    revision_ = range->revision;
    DeliverSet();
    return Status::Ok();
  }

  void Run(bool listed) {
    while (!Stopping()) {
      if (!listed) {
        if (!Pause()) return;
        if (Status s = List(); !s.ok()) {
          if (s.code() != StatusCode::kCancelled) Deliver(s);
          continue;
        }
      }
      Status s = client_.Watch(KeyPrefix(target_), revision_ + 1,
                               [this](const std::vector<EtcdEvent>& events, int64_t revision) {
                                 for (const EtcdEvent& e : events) {
                                   if (e.deleted) {
                                     kvs_.erase(e.kv.key);
                                   } else {
                                     kvs_[e.kv.key] = e.kv.value;
                                   }
                                 }
                                 revision_ = std::max(revision_, revision);
                                 DeliverSet();
                                 return true;
                               });
      listed = false;
      if (s.code() == StatusCode::kCancelled) return;
      if (s.code() == StatusCode::kOutOfRange) {
        // The watch started behind a compaction: list again at once.
        if (Status l = List(); l.ok()) {
          listed = true;
        } else if (l.code() != StatusCode::kCancelled) {
          Deliver(l);
        }
        continue;
      }
      SPDLOG_WARN("hrpc naming: {}: {}; listing again in {} ms", uri_, s.ToString(), options_.etcd_retry.count());
      Deliver(s);
    }
  }

  void DeliverSet() {
    NamingUpdate update;
    for (const auto& [key, value] : kvs_) {
      auto node = ParseServerNode(value);
      if (node.ok()) {
        update.servers.push_back(std::move(*node));
      } else {
        update.problems.push_back("etcd key '" + key + "': " + std::string(node.status().message()));
      }
    }
    std::sort(update.servers.begin(), update.servers.end());
    update.servers.erase(std::unique(update.servers.begin(), update.servers.end()), update.servers.end());
    if (last_ && !error_since_last_ && last_->servers == update.servers && last_->problems == update.problems) return;
    last_ = update;
    error_since_last_ = false;
    on_update_(std::move(update));
  }

  void Deliver(const Status& error) {
    error_since_last_ = true;
    on_update_(error.WithContext(uri_));
  }

  const std::string uri_;
  const EtcdTarget target_;
  const NamingOptions options_;
  EtcdClient client_;
  Callback on_update_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool started_ = false;
  bool stopping_ = false;
  // The watcher's thread only (Start()'s before the thread runs).
  std::map<std::string, std::string> kvs_;
  int64_t revision_ = 0;
  std::optional<NamingUpdate> last_;
  bool error_since_last_ = false;
};

}  // namespace

Result<std::unique_ptr<NamingWatcher>> MakeEtcdWatcher(std::string_view uri, const NamingOptions& options) {
  HRPC_ASSIGN_OR_RETURN(EtcdTarget target, ParseEtcdUri(uri));
  if (options.etcd_timeout.count() <= 0 || options.etcd_retry.count() <= 0) {
    return InvalidArgumentError("NamingOptions: etcd_timeout and etcd_retry must be > 0");
  }
  return std::unique_ptr<NamingWatcher>(new EtcdWatcher(std::string(uri), std::move(target), options));
}

}  // namespace internal

namespace {

class EtcdRegistrationImpl final : public EtcdRegistration {
 public:
  EtcdRegistrationImpl(internal::EtcdTarget target, EtcdRegistrationOptions options)
      : target_(std::move(target)),
        options_(std::move(options)),
        key_(target_.prefix + "/" + options_.address),
        value_(options_.tag.empty() ? options_.address : options_.address + " " + options_.tag),
        client_(target_.endpoints, options_.timeout),
        keepalive_client_(target_.endpoints, options_.timeout) {}
  ~EtcdRegistrationImpl() override { Stop(); }

  // Grants the lease and puts the key.
  Status Register() {
    HRPC_ASSIGN_OR_RETURN(internal::EtcdLease lease, client_.GrantLease(options_.ttl));
    if (Status s = client_.Put(key_, value_, lease.id); !s.ok()) {
      client_.Revoke(lease.id).IgnoreError();
      return s;
    }
    std::lock_guard lock(mu_);
    lease_ = lease;
    return Status::Ok();
  }

  void StartKeepAlive() {
    thread_ = std::thread([this] { KeepAliveLoop(); });
  }

  void Stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    wake_.notify_all();
    keepalive_client_.Cancel();
    if (thread_.joinable()) thread_.join();
    if (lease_.id == 0) return;  // never registered
    if (Status s = client_.Revoke(lease_.id); !s.ok()) {
      SPDLOG_WARN("hrpc: deregistering {} from etcd: {} (the key goes when its lease expires)", key_, s.ToString());
    }
  }

  const std::string& key() const override { return key_; }
  int64_t lease() const override {
    std::lock_guard lock(mu_);
    return lease_.id;
  }

 private:
  void KeepAliveLoop() {
    std::unique_lock lock(mu_);
    for (;;) {
      const auto period = std::max<std::chrono::milliseconds>(
          std::chrono::duration_cast<std::chrono::milliseconds>(lease_.ttl) / 3, std::chrono::milliseconds(100));
      if (wake_.wait_for(lock, period, [this] { return stopping_; })) return;
      const int64_t id = lease_.id;
      lock.unlock();
      Status s = keepalive_client_.KeepAlive(id);
      if (s.ok()) s = KeepKey(id);
      if (s.code() == StatusCode::kNotFound) {
        // Expired while etcd was out of reach: register again.
        SPDLOG_WARN("hrpc: etcd lease of {} expired; registering again", key_);
        s = RegisterAgain();
      }
      if (!s.ok() && s.code() != StatusCode::kCancelled) {
        SPDLOG_WARN("hrpc: keeping {} registered in etcd: {}", key_, s.ToString());
      }
      lock.lock();
    }
  }

  // The key may be gone while its lease lives (deleted by hand, or revoked
  // with the lease of a second instance with the same address that had put
  // it last): put it again under this lease. A key there under another
  // lease (that second instance, alive) is left alone.
  Status KeepKey(int64_t id) {
    HRPC_ASSIGN_OR_RETURN(std::optional<internal::EtcdKv> kv, keepalive_client_.Get(key_));
    if (kv) return Status::Ok();
    SPDLOG_WARN("hrpc: etcd key {} is gone while its lease lives; putting it again", key_);
    return keepalive_client_.Put(key_, value_, id);
  }

  Status RegisterAgain() {
    HRPC_ASSIGN_OR_RETURN(internal::EtcdLease lease, keepalive_client_.GrantLease(options_.ttl));
    HRPC_TRY(keepalive_client_.Put(key_, value_, lease.id));
    std::lock_guard lock(mu_);
    lease_ = lease;
    return Status::Ok();
  }

  const internal::EtcdTarget target_;
  const EtcdRegistrationOptions options_;
  const std::string key_;
  const std::string value_;
  internal::EtcdClient client_;            // register, revoke
  internal::EtcdClient keepalive_client_;  // the keepalive thread (cancelled by Stop())
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  internal::EtcdLease lease_;
};

}  // namespace

Result<std::unique_ptr<EtcdRegistration>> EtcdRegistration::Create(EtcdRegistrationOptions options) {
  HRPC_ASSIGN_OR_RETURN(internal::EtcdTarget target, internal::ParseEtcdUri(options.etcd));
  HRPC_ASSIGN_OR_RETURN(ServerNode node, ParseServerNode(options.address));
  if (!node.tag.empty()) {
    return InvalidArgumentError("EtcdRegistrationOptions.address '" + options.address +
                                "': one address, the tag goes in .tag");
  }
  if (options.tag.find_first_of(" \t\r\n") != std::string::npos) {
    return InvalidArgumentError("EtcdRegistrationOptions.tag '" + options.tag + "': one word");
  }
  if (options.ttl.count() < 1) return InvalidArgumentError("EtcdRegistrationOptions.ttl must be >= 1 s");
  if (options.timeout.count() <= 0) return InvalidArgumentError("EtcdRegistrationOptions.timeout must be > 0");
  auto reg = std::make_unique<EtcdRegistrationImpl>(std::move(target), std::move(options));
  HRPC_TRY(reg->Register());
  reg->StartKeepAlive();
  return std::unique_ptr<EtcdRegistration>(std::move(reg));
}

}  // namespace hrpc
