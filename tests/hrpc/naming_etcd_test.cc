// etcd naming against a real etcd (etcd_harness.h): the watcher (list, watch,
// errors, garbage), EtcdRegistration, and a Server registering itself.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "etcd_client.h"
#include "etcd_harness.h"
#include "hrpc/rpc/cluster_channel.h"
#include "hrpc/rpc/naming.h"
#include "hrpc/rpc/server.h"
#include "naming_internal.h"
#include "rpc_test_util.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using etcdtest::EtcdTest;
using hrpc::NamingUpdate;
using hrpc::ServerNode;

// What a watcher delivered, for a test to wait on.
class Updates {
 public:
  hrpc::NamingWatcher::Callback Callback() {
    return [this](hrpc::Result<NamingUpdate> u) {
      std::lock_guard lock(mu_);
      all_.push_back(std::move(u));
      cv_.notify_all();
    };
  }
  // Waits for a delivery that satisfies `pred`, looking at the one the last
  // wait matched and every later one (none is missed when two arrive at
  // once); false after `timeout`.
  bool WaitFor(const std::function<bool(const hrpc::Result<NamingUpdate>&)>& pred, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (size_t i = cursor_; i < all_.size(); ++i) {
        if (pred(all_[i])) {
          cursor_ = i;
          return true;
        }
      }
      return false;
    });
  }
  bool WaitForServers(const std::vector<std::string>& uris, Clock::duration timeout) {
    return WaitFor([&](const hrpc::Result<NamingUpdate>& u) { return u.ok() && Uris(*u) == uris; }, timeout);
  }
  hrpc::Result<NamingUpdate> Last() {
    std::lock_guard lock(mu_);
    return all_.back();
  }
  size_t Count() {
    std::lock_guard lock(mu_);
    return all_.size();
  }
  static std::vector<std::string> Uris(const NamingUpdate& u) {
    std::vector<std::string> out;
    for (const ServerNode& n : u.servers) out.push_back(n.uri);
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<hrpc::Result<NamingUpdate>> all_;
  size_t cursor_ = 0;
};

hrpc::NamingOptions FastRetry() {
  hrpc::NamingOptions o;
  o.etcd_retry = 100ms;
  o.etcd_timeout = 1000ms;
  return o;
}

std::unique_ptr<hrpc::internal::EtcdClient> ClientOf(const etcdtest::EtcdProcess& etcd) {
  return std::make_unique<hrpc::internal::EtcdClient>(
      std::vector<hrpc::internal::EtcdEndpoint>{{"127.0.0.1", etcd.port()}}, 2000ms);
}

TEST(ServerNodeParse, AcceptsEntriesAndNamesWhatIsWrong) {
  auto a = hrpc::ParseServerNode("tcp://10.0.0.1:7000");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->uri, "tcp://10.0.0.1:7000");
  EXPECT_EQ(a->tag, "");
  auto b = hrpc::ParseServerNode("  10.0.0.1:7000   rack-a ");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->uri, "10.0.0.1:7000");
  EXPECT_EQ(b->tag, "rack-a");
  EXPECT_TRUE(hrpc::ParseServerNode("rdma://[fe80::1]:4791").ok());
  EXPECT_TRUE(hrpc::ParseServerNode("loop://srv").ok());

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "empty"},
      {"   ", "empty"},
      {"10.0.0.1", "missing :port"},
      {"10.0.0.1:0", "port 0"},
      {"10.0.0.1:65536", "bad port"},
      {"10.0.0.1:70x", "bad port"},
      {":7000", "empty host"},
      {"http://h:80", "unknown scheme"},
      {"h:1 rack-a extra", "more than one word"},
  };
  for (const auto& [entry, why] : bad) {
    auto r = hrpc::ParseServerNode(entry);
    ASSERT_FALSE(r.ok()) << entry;
    EXPECT_EQ(r.status().code(), hrpc::StatusCode::kInvalidArgument) << entry;
    EXPECT_NE(r.status().message().find(why), std::string_view::npos) << entry << ": " << r.status().ToString();
  }
}

TEST(EtcdNamingUri, BadUrisAreInvalidArgument) {
  for (const char* uri : {"etcd://127.0.0.1:2379", "etcd://127.0.0.1:2379/", "etcd://127.0.0.1/p",
                          "etcd://127.0.0.1:0/p", "etcd://:2379/p", "http://127.0.0.1:2379/p",
                          "etcd://127.0.0.1:2379,/p", "etcd://127.0.0.1:2379,h:x/p"}) {
    auto w = hrpc::internal::MakeEtcdWatcher(uri, {});
    ASSERT_FALSE(w.ok()) << uri;
    EXPECT_EQ(w.status().code(), hrpc::StatusCode::kInvalidArgument) << uri;
  }
}

TEST_F(EtcdTest, ListsThenWatchesThePrefix) {
  auto client = ClientOf(*etcd_);
  ASSERT_TRUE(client->Put("/svc/a", "tcp://127.0.0.1:7001").ok());
  ASSERT_TRUE(client->Put("/svc/b", "tcp://127.0.0.1:7002 rack-b").ok());
  ASSERT_TRUE(client->Put("/svcx/c", "tcp://127.0.0.1:7009").ok());  // another prefix
  ASSERT_TRUE(client->Put("/other/d", "tcp://127.0.0.1:7008").ok());

  auto w = hrpc::internal::MakeEtcdWatcher(etcd_->Uri("/svc"), FastRetry());
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  // The first set is delivered before Start() returns.
  ASSERT_EQ(updates.Count(), 1u);
  auto first = updates.Last();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(Updates::Uris(*first), (std::vector<std::string>{"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"}));
  EXPECT_EQ(first->servers[1].tag, "rack-b");
  EXPECT_TRUE(first->problems.empty());

  ASSERT_TRUE(client->Put("/svc/c", "tcp://127.0.0.1:7003").ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003"}, 5s));
  ASSERT_TRUE(client->Delete("/svc/a").ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003"}, 5s));
  // Two keys with one address: one server.
  ASSERT_TRUE(client->Put("/svc/c2", "tcp://127.0.0.1:7003").ok());
  ASSERT_TRUE(client->Put("/svc/e", "tcp://127.0.0.1:7005").ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003", "tcp://127.0.0.1:7005"}, 5s));
  // Keys elsewhere never showed up.
  const auto start = Clock::now();
  (*w)->Stop();
  EXPECT_LT(Clock::now() - start, 2s) << "Stop() while the watch is blocked";
  const size_t after_stop = updates.Count();
  ASSERT_TRUE(client->Put("/svc/f", "tcp://127.0.0.1:7006").ok());
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(updates.Count(), after_stop) << "a callback after Stop()";
}

TEST_F(EtcdTest, GarbageValuesAreProblemsAndGoodEntriesStay) {
  auto client = ClientOf(*etcd_);
  ASSERT_TRUE(client->Put("/g/good", "tcp://127.0.0.1:7001").ok());
  ASSERT_TRUE(client->Put("/g/junk", "not an address at all").ok());
  ASSERT_TRUE(client->Put("/g/port0", "tcp://127.0.0.1:0").ok());
  ASSERT_TRUE(client->Put("/g/binary", std::string("\xff\x00\x01", 3)).ok());

  auto w = hrpc::internal::MakeEtcdWatcher(etcd_->Uri("/g"), FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  auto u = updates.Last();
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(Updates::Uris(*u), std::vector<std::string>{"tcp://127.0.0.1:7001"});
  ASSERT_EQ(u->problems.size(), 3u);
  std::string all;
  for (const std::string& p : u->problems) all += p + "\n";
  EXPECT_NE(all.find("'/g/junk'"), std::string::npos) << all;
  EXPECT_NE(all.find("'/g/port0'"), std::string::npos) << all;
  EXPECT_NE(all.find("'/g/binary'"), std::string::npos) << all;

  // Garbage arriving through the watch: named, the good set kept.
  ASSERT_TRUE(client->Put("/g/late", "tcp://:1").ok());
  EXPECT_TRUE(updates.WaitFor(
      [](const hrpc::Result<NamingUpdate>& x) {
        return x.ok() && x->problems.size() == 4 && Updates::Uris(*x) == std::vector<std::string>{"tcp://127.0.0.1:7001"};
      },
      5s));
  // A fixed value leaves the problems.
  ASSERT_TRUE(client->Put("/g/junk", "tcp://127.0.0.1:7002").ok());
  EXPECT_TRUE(updates.WaitFor(
      [](const hrpc::Result<NamingUpdate>& x) { return x.ok() && x->problems.size() == 3 && x->servers.size() == 2; },
      5s));
}

TEST(EtcdNaming, EtcdDownAtStartIsUnavailableThenTheSetArrives) {
  if (etcdtest::FindEtcd().empty()) GTEST_SKIP() << "etcd is not installed (Debian: etcd-server)";
  const uint16_t port = etcdtest::FreePort();
  const std::string uri = "etcd://127.0.0.1:" + std::to_string(port) + "/late";
  auto w = hrpc::internal::MakeEtcdWatcher(uri, FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  hrpc::Status s = (*w)->Start(updates.Callback());
  EXPECT_EQ(s.code(), hrpc::StatusCode::kUnavailable) << s.ToString();
  ASSERT_EQ(updates.Count(), 1u);
  EXPECT_EQ(updates.Last().status().code(), hrpc::StatusCode::kUnavailable);
  EXPECT_NE(updates.Last().status().message().find(uri), std::string_view::npos) << updates.Last().status().ToString();

  auto etcd = etcdtest::EtcdProcess::Start(port);
  if (!etcd.ok()) GTEST_SKIP() << "etcd did not start on port " << port << ": " << etcd.status().ToString();
  ASSERT_TRUE(ClientOf(**etcd)->Put("/late/a", "tcp://127.0.0.1:7001").ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001"}, 3s));
  // And it watches from there on.
  ASSERT_TRUE(ClientOf(**etcd)->Put("/late/b", "tcp://127.0.0.1:7002").ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"}, 5s));
}

TEST_F(EtcdTest, BrokenWatchIsAnErrorThenTheSetComesBack) {
  auto client = ClientOf(*etcd_);
  ASSERT_TRUE(client->Put("/r/a", "tcp://127.0.0.1:7001").ok());
  auto w = hrpc::internal::MakeEtcdWatcher(etcd_->Uri("/r"), FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  etcd_->Kill();
  EXPECT_TRUE(updates.WaitFor(
      [](const hrpc::Result<NamingUpdate>& x) { return x.status().code() == hrpc::StatusCode::kUnavailable; }, 2s));
  ASSERT_TRUE(etcd_->Restart().ok());
  // The same set again after the error (the channel learns etcd is back).
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001"}, 3s));
  ASSERT_TRUE(client->Put("/r/b", "tcp://127.0.0.1:7002").ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"}, 5s));
}

TEST_F(EtcdTest, RegistrationPutsTheKeyUnderALeaseAndStopRemovesIt) {
  hrpc::EtcdRegistrationOptions o;
  o.etcd = etcd_->Uri("/reg");
  o.address = "tcp://127.0.0.1:7100";
  o.tag = "rack-a";
  o.ttl = 2s;
  auto reg = hrpc::EtcdRegistration::Create(o);
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  EXPECT_EQ((*reg)->key(), "/reg/tcp://127.0.0.1:7100");
  EXPECT_NE((*reg)->lease(), 0);

  auto client = ClientOf(*etcd_);
  auto range = client->RangePrefix("/reg/");
  ASSERT_TRUE(range.ok());
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "tcp://127.0.0.1:7100 rack-a");
  (*reg)->Stop();
  range = client->RangePrefix("/reg/");
  ASSERT_TRUE(range.ok());
  EXPECT_TRUE(range->kvs.empty()) << "the key outlived Stop()";
  // The lease is gone too.
  EXPECT_EQ(client->KeepAlive((*reg)->lease()).code(), hrpc::StatusCode::kNotFound);
}

TEST_F(EtcdTest, RegistrationComesBackAfterItsLeaseIsGone) {
  // A lease that expired (etcd out of reach longer than the TTL) or was
  // revoked behind the server's back: the next keepalive registers again.
  hrpc::EtcdRegistrationOptions o;
  o.etcd = etcd_->Uri("/again");
  o.address = "tcp://127.0.0.1:7200";
  o.ttl = 3s;
  auto reg = hrpc::EtcdRegistration::Create(o);
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  auto w = hrpc::internal::MakeEtcdWatcher(etcd_->Uri("/again"), FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  ASSERT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7200"}, 0s));
  const int64_t first_lease = (*reg)->lease();
  ASSERT_TRUE(ClientOf(*etcd_)->Revoke(first_lease).ok());
  EXPECT_TRUE(updates.WaitForServers({}, 3s));
  // The next keepalive (every ttl/3 = 1 s) finds the lease gone and registers again.
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7200"}, 6s)) << "not registered again within 6 s";
  // lease() follows right after the new key is put.
  const auto until = Clock::now() + 1s;
  while ((*reg)->lease() == first_lease && Clock::now() < until) std::this_thread::sleep_for(10ms);
  EXPECT_NE((*reg)->lease(), first_lease);
}

// The key deleted while its lease lives (by hand, or by a second instance
// with the same address that put it under its own lease and then left): the
// registration puts it back.
TEST_F(EtcdTest, ADeletedKeyIsPutBackWhileItsLeaseLives) {
  hrpc::EtcdRegistrationOptions o;
  o.etcd = etcd_->Uri("/gone");
  o.address = "tcp://127.0.0.1:7300";
  o.ttl = 3s;
  auto reg = hrpc::EtcdRegistration::Create(o);
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  auto client = ClientOf(*etcd_);
  ASSERT_TRUE(client->Delete((*reg)->key()).ok());
  ASSERT_TRUE(client->RangePrefix("/gone/")->kvs.empty());
  // The next keepalive (every ttl/3 = 1 s) puts it back, under the same lease.
  const auto until = Clock::now() + 5s;
  size_t found = 0;
  while (found == 0 && Clock::now() < until) {
    std::this_thread::sleep_for(50ms);
    found = client->RangePrefix("/gone/")->kvs.size();
  }
  ASSERT_EQ(found, 1u) << "the key did not come back within 5 s";
  auto kv = client->Get((*reg)->key());
  ASSERT_TRUE(kv.ok() && kv->has_value());
  EXPECT_EQ((*kv)->value, "tcp://127.0.0.1:7300");
  EXPECT_EQ((*kv)->lease, (*reg)->lease()) << "put back under another lease";
}

TEST(EtcdRegistrationOptions, BadOptionsAndEtcdDown) {
  hrpc::EtcdRegistrationOptions o;
  o.etcd = "etcd://127.0.0.1:" + std::to_string(etcdtest::FreePort()) + "/p";
  o.address = "tcp://127.0.0.1:7100";
  auto down = hrpc::EtcdRegistration::Create(o);
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), hrpc::StatusCode::kUnavailable) << down.status().ToString();

  auto bad_address = o;
  bad_address.address = "tcp://127.0.0.1";
  EXPECT_EQ(hrpc::EtcdRegistration::Create(bad_address).status().code(), hrpc::StatusCode::kInvalidArgument);
  auto bad_tag = o;
  bad_tag.tag = "two words";
  EXPECT_EQ(hrpc::EtcdRegistration::Create(bad_tag).status().code(), hrpc::StatusCode::kInvalidArgument);
  auto bad_uri = o;
  bad_uri.etcd = "etcd://127.0.0.1:2379";
  EXPECT_EQ(hrpc::EtcdRegistration::Create(bad_uri).status().code(), hrpc::StatusCode::kInvalidArgument);
}

TEST(EtcdCluster, WatcherAndRegistrationPassOverAMemberThatDied) {
  auto cluster = etcdtest::EtcdProcess::StartCluster(3);
  if (!cluster.ok()) GTEST_SKIP() << "no etcd cluster: " << cluster.status().ToString();
  auto& members = *cluster;
  const std::string uri = "etcd://" + members[0]->Address() + "," + members[1]->Address() + "," +
                          members[2]->Address() + "/c";

  hrpc::EtcdRegistrationOptions o;
  o.etcd = uri;
  o.address = "tcp://127.0.0.1:7300";
  o.ttl = 2s;
  auto reg = hrpc::EtcdRegistration::Create(o);
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  auto w = hrpc::internal::MakeEtcdWatcher(uri, FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  ASSERT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7300"}, 0s));

  // Both talk to the first member; it dies.
  members[0]->Kill();
  EXPECT_TRUE(updates.WaitFor(
      [](const hrpc::Result<NamingUpdate>& x) { return x.status().code() == hrpc::StatusCode::kUnavailable; }, 2s));
  // The watcher lists and watches on another member...
  auto other = std::make_unique<hrpc::internal::EtcdClient>(
      std::vector<hrpc::internal::EtcdEndpoint>{{"127.0.0.1", members[1]->port()}}, 2000ms);
  // (Writes fail while the two left elect a leader, if the dead one led.)
  hrpc::Status put = other->Put("/c/x", "tcp://127.0.0.1:7301");
  for (const auto until = Clock::now() + 5s; !put.ok() && Clock::now() < until;) {
    std::this_thread::sleep_for(100ms);
    put = other->Put("/c/x", "tcp://127.0.0.1:7301");
  }
  ASSERT_TRUE(put.ok()) << put.ToString();
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7300", "tcp://127.0.0.1:7301"}, 3s));
  // ...and the registration stays alive through another member, well past its TTL.
  std::this_thread::sleep_for(3s);
  ASSERT_TRUE(updates.Last().ok()) << updates.Last().status().ToString();
  EXPECT_EQ(Updates::Uris(*updates.Last()), (std::vector<std::string>{"tcp://127.0.0.1:7300", "tcp://127.0.0.1:7301"}));
  (*reg)->Stop();
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7301"}, 5s));
}

// A stand-in for etcd's JSON gateway that answers what a test tells it to, for
// answers a real etcd would not give.
class FakeEtcd {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  explicit FakeEtcd(const std::map<std::string, Handler>& routes) {
    for (const auto& [path, handler] : routes) server_.Post(path, handler);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) std::this_thread::sleep_for(1ms);
  }
  ~FakeEtcd() {
    server_.stop();
    thread_.join();
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  // The range answer of a prefix holding /f/a = tcp://127.0.0.1:7001, revision 5.
  static void RangeWithOneServer(const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"header":{"revision":"5"},"kvs":[{"key":"L2YvYQ==","value":"dGNwOi8vMTI3LjAuMC4xOjcwMDE="}]})",
                    "application/json");
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

// Watch messages of the wrong shape (valid JSON, not what etcd sends) end that
// watch with an error at worst, and the watcher lists again: the process goes
// on.
TEST(EtcdFake, WatchMessagesOfTheWrongShapeDoNotStopTheWatcher) {
  const std::vector<std::string> bad = {R"({"result":[]})", R"({"result":{"canceled":"yes"}})",
                                        R"({"result":{"events":[1]}})", R"({"result":{"events":[{"kv":[]}]}})"};
  std::atomic<size_t> watches{0};
  FakeEtcd etcd({{"/v3/kv/range", &FakeEtcd::RangeWithOneServer},
                 {"/v3/watch", [&](const httplib::Request&, httplib::Response& res) {
                    const std::string line = bad[watches.fetch_add(1) % bad.size()] + "\n";
                    res.set_content(R"({"result":{"header":{"revision":"5"},"created":true}})" "\n" + line,
                                    "application/json");
                  }}});
  auto w = hrpc::internal::MakeEtcdWatcher("etcd://" + etcd.Address() + "/f", FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001"}, 0s));
  for (size_t round = 0; round < bad.size(); ++round) {
    EXPECT_TRUE(updates.WaitFor([](const hrpc::Result<NamingUpdate>& x) { return !x.ok(); }, 3s)) << bad[round];
    EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001"}, 3s)) << "listed again after " << bad[round];
  }
  EXPECT_GE(watches.load(), bad.size());
  (*w)->Stop();
}

// A member that answers but cannot serve (cut off from the quorum: HTTP 503,
// "no leader") is passed over like one that does not answer.
TEST(EtcdFake, AMemberWithoutALeaderIsPassedOver) {
  std::atomic<int> asked_leaderless{0};
  FakeEtcd leaderless({{"/v3/kv/range", [&](const httplib::Request&, httplib::Response& res) {
                          asked_leaderless.fetch_add(1);
                          res.status = 503;
                          res.set_content(R"({"error":"etcdserver: no leader","code":14,"message":"etcdserver: no leader"})",
                                          "application/json");
                        }}});
  FakeEtcd good({{"/v3/kv/range", &FakeEtcd::RangeWithOneServer},
                 {"/v3/watch", [](const httplib::Request&, httplib::Response& res) {
                    res.set_content(R"({"result":{"header":{"revision":"5"},"created":true}})" "\n", "application/json");
                  }}});
  auto w = hrpc::internal::MakeEtcdWatcher("etcd://" + leaderless.Address() + "," + good.Address() + "/f", FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  const hrpc::Status s = (*w)->Start(updates.Callback());
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001"}, 0s));
  EXPECT_GE(asked_leaderless.load(), 1) << "the leaderless member was not asked first: the test proves nothing";
  (*w)->Stop();
}

// The watch asks for a leader (etcd's "hasleader" metadata, which its JSON
// gateway takes as the Grpc-Metadata-Hasleader header): a member partitioned
// from the quorum ends such a watch rather than keep it open and silent.
TEST(EtcdFake, TheWatchRequiresALeader) {
  std::atomic<int> watches{0}, with_leader{0};
  FakeEtcd etcd({{"/v3/kv/range", &FakeEtcd::RangeWithOneServer},
                 {"/v3/watch", [&](const httplib::Request& req, httplib::Response& res) {
                    watches.fetch_add(1);
                    if (req.get_header_value("Grpc-Metadata-Hasleader") == "true") with_leader.fetch_add(1);
                    res.set_content(R"({"result":{"header":{"revision":"5"},"created":true}})" "\n", "application/json");
                  }}});
  auto w = hrpc::internal::MakeEtcdWatcher("etcd://" + etcd.Address() + "/f", FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  EXPECT_TRUE(updates.WaitForServers({"tcp://127.0.0.1:7001"}, 0s));
  for (int i = 0; i < 300 && watches.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_GE(watches.load(), 1);
  EXPECT_EQ(with_leader.load(), watches.load());
  (*w)->Stop();
}

// A server with ServerOptions::etcd_register on its own runtime.
struct RegisteredServer {
  std::unique_ptr<hrpc::Runtime> runtime;
  std::unique_ptr<hrpc::Server> server;
  rpctest::TestService service;

  hrpc::Status Start(const std::string& etcd, std::chrono::seconds ttl = std::chrono::seconds(5),
                     const std::string& listen = "tcp://127.0.0.1:0") {
    hrpc::RuntimeOptions ro;
    ro.transport_choice = hrpc::TransportChoice::kTcp;
    HRPC_ASSIGN_OR_RETURN(runtime, hrpc::Runtime::Create(ro));
    hrpc::ServerOptions so;
    so.listen = {listen};
    so.etcd_register = etcd;
    so.etcd_ttl = ttl;
    HRPC_ASSIGN_OR_RETURN(server, hrpc::Server::Create(*runtime, so));
    HRPC_TRY(server->RegisterService(&service));
    return server->Start();
  }
};

// A ClusterChannel on etcd://: it calls the one registered server, then uses
// a second one within a second of its registering, and stops calling the
// first the moment it deregisters.
TEST_F(EtcdTest, AClusterChannelFollowsTheRegisteredServers) {
  RegisteredServer a;
  ASSERT_TRUE(a.Start(etcd_->Uri("/kv")).ok());
  hrpc::RuntimeOptions ro;
  ro.workers = 1;
  ro.transport_choice = hrpc::TransportChoice::kTcp;
  auto rt = hrpc::Runtime::Create(ro).value();
  hrpc::ClusterChannelOptions co;
  co.naming = FastRetry();
  auto ch = hrpc::ClusterChannel::Create(*rt, etcd_->Uri("/kv"), co);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  ASSERT_EQ((*ch)->servers().size(), 1u);
  rpctest::Test::Stub stub(ch->get());
  auto call = [&] {
    hrpc::ClientContext ctx;
    ctx.set_timeout(5s);
    rpctest::Req req;
    req.set_text("kv");
    rpctest::Resp resp;
    return stub.Call(ctx, req, &resp);
  };
  ASSERT_TRUE(call().ok());
  EXPECT_EQ(a.service.calls.load(), 1);

  RegisteredServer b;
  ASSERT_TRUE(b.Start(etcd_->Uri("/kv")).ok());
  const auto registered = Clock::now();
  while (b.service.calls.load() == 0 && Clock::now() - registered < 5s) ASSERT_TRUE(call().ok());
  EXPECT_GE(b.service.calls.load(), 1) << "the new server got no call within 5 s of registering";
  EXPECT_EQ((*ch)->servers().size(), 2u);

  a.server->Shutdown();
  const auto gone = Clock::now();
  while ((*ch)->servers().size() != 1 && Clock::now() - gone < 5s) std::this_thread::sleep_for(5ms);
  ASSERT_EQ((*ch)->servers().size(), 1u);
  const int a_calls = a.service.calls.load();
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(call().ok());
  EXPECT_EQ(a.service.calls.load(), a_calls);
}

TEST_F(EtcdTest, ARegisteredServerIsSeenCalledAndLeavesOnShutdown) {
  auto w = hrpc::internal::MakeEtcdWatcher(etcd_->Uri("/echo"), FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  EXPECT_TRUE(updates.WaitForServers({}, 5s));

  RegisteredServer s;
  ASSERT_TRUE(s.Start(etcd_->Uri("/echo")).ok());
  const auto registered = Clock::now();
  const std::string uri = s.server->listen_uris().at(0);
  ASSERT_TRUE(updates.WaitForServers({uri}, 5s)) << "a new server seen within 5 s of registering";
  const auto seen_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - registered).count();

  // Callable through a channel made from what the watcher delivered.
  const std::string watched = updates.Last()->servers.at(0).uri;
  hrpc::RuntimeOptions ro;
  ro.transport_choice = hrpc::TransportChoice::kTcp;
  auto client_runtime = hrpc::Runtime::Create(ro);
  ASSERT_TRUE(client_runtime.ok());
  {
    auto channel = hrpc::RpcChannel::Create(**client_runtime, watched);
    ASSERT_TRUE(channel.ok()) << channel.status().ToString();
    rpctest::Test::Stub stub(channel->get());
    hrpc::ClientContext ctx;
    rpctest::Req req;
    req.set_text("hello");
    rpctest::Resp resp;
    ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
    EXPECT_EQ(resp.text(), "hello");
    EXPECT_EQ(s.service.calls.load(), 1);
  }

  const auto start = Clock::now();
  s.server->Shutdown();
  EXPECT_TRUE(updates.WaitForServers({}, 5s)) << "the server left at Shutdown()";
  const auto gone_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  std::printf("registered server seen by the watcher %lld us after Start() returned; gone %lld us after Shutdown() began\n",
              static_cast<long long>(seen_us), static_cast<long long>(gone_us));
}

TEST_F(EtcdTest, ServerStartFailsWhenItCannotRegister) {
  RegisteredServer wildcard;
  hrpc::Status s = wildcard.Start(etcd_->Uri("/w"), 5s, "tcp://0.0.0.0:0");
  EXPECT_EQ(s.code(), hrpc::StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("advertise"), std::string_view::npos) << s.ToString();

  RegisteredServer down;
  s = down.Start("etcd://127.0.0.1:" + std::to_string(etcdtest::FreePort()) + "/w");
  EXPECT_EQ(s.code(), hrpc::StatusCode::kUnavailable) << s.ToString();
}

TEST_F(EtcdTest, AKilledServerLeavesWithinItsLeaseTtl) {
  // The server lives in a child process, SIGKILLed: nothing deregisters it.
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const std::string etcd_uri = etcd_->Uri("/killed");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    RegisteredServer s;
    hrpc::Status st = s.Start(etcd_uri, std::chrono::seconds(3));
    const std::string line = st.ok() ? s.server->listen_uris().at(0) + "\n" : "error " + st.ToString() + "\n";
    (void)!::write(ready[1], line.data(), line.size());
    for (;;) ::pause();
  }
  ::close(ready[1]);
  std::string line;
  char c;
  while (::read(ready[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(ready[0]);
  ASSERT_TRUE(line.starts_with("tcp://")) << line;

  auto w = hrpc::internal::MakeEtcdWatcher(etcd_uri, FastRetry());
  ASSERT_TRUE(w.ok());
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  ASSERT_TRUE(updates.WaitForServers({line}, 5s));
  // Outlives its TTL while alive (kept alive every ttl/3).
  std::this_thread::sleep_for(4000ms);
  ASSERT_TRUE(updates.Last().ok());
  ASSERT_EQ(Updates::Uris(*updates.Last()), std::vector<std::string>{line});

  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  const auto killed = Clock::now();
  // Only the lease can take it out: any bound proves that; this one leaves
  // room for etcd's expiry check and a loaded machine.
  ASSERT_TRUE(updates.WaitForServers({}, 10s)) << "still registered 10 s after SIGKILL with a 3 s lease";
  const auto gone_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed).count();
  std::printf("killed server left the set after %lld ms (lease ttl 3000 ms)\n", static_cast<long long>(gone_ms));
}

}  // namespace
