// ClusterChannel and naming: list/file/dns sources, the balancers, retries,
// backup requests, ejection, and the server's dedup window. Servers run in
// this process on loop:// (and tcp:// where a real socket matters); the
// failover test with killed server processes is tests/integration.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/rpc/cluster_channel.h"
#include "hrpc/rpc/naming.h"
#include "hrpc/rpc/server.h"
#include "hrpc/transport/loopback.h"
#include "hrpc/transport/resolver.h"
#include "hrpc_test/echo.hrpc.h"
#include "rpc_test.hrpc.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::ClusterChannel;
using hrpc::ClusterChannelOptions;
using hrpc::StatusCode;
using rpctest::Req;
using rpctest::Resp;

// Answers with its name; can be slowed, made to fail, and counts what ran.
class NamedService final : public rpctest::Test::Service {
 public:
  explicit NamedService(std::string name) : name_(std::move(name)) {}
  std::atomic<int> calls{0};
  std::atomic<int> cancelled{0};
  std::atomic<int> delay_ms{0};
  std::atomic<int> fail_code{0};  // answer every call with this code
  std::atomic<int> stall_next_ms{0};  // the next call only: this much more delay
  std::mutex mu;
  std::map<std::string, int> ran;  // request text -> runs

  hrpc::Status Call(hrpc::ServerContext& ctx, const Req& req, Resp* resp) override {
    calls.fetch_add(1);
    {
      std::lock_guard lock(mu);
      ran[req.text()]++;
    }
    // hold_ms: a handler that does not look at IsCancelled().
    if (req.hold_ms() > 0) hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(req.hold_ms()));
    const int delay = delay_ms.load() + static_cast<int>(req.sleep_ms()) + stall_next_ms.exchange(0);
    for (int i = 0; i < delay; ++i) {
      if (ctx.IsCancelled()) {
        cancelled.fetch_add(1);
        return hrpc::CancelledError("cancelled");
      }
      hrpc::coro::this_coro::SleepFor(1ms);
    }
    if (int code = fail_code.load(); code != 0) return hrpc::Status(static_cast<StatusCode>(code), "told to fail");
    if (req.fail_code() != 0) return hrpc::Status(static_cast<StatusCode>(req.fail_code()), req.fail_message());
    resp->set_text(req.text());
    resp->set_peer(name_);
    if (req.response_bytes() > 0) {
      auto b = ctx.pool()->Allocate(req.response_bytes());
      if (b.ok()) ctx.response_attachment().Append(std::move(*b));
    }
    return hrpc::Status::Ok();
  }
  int Runs(const std::string& text) {
    std::lock_guard lock(mu);
    auto it = ran.find(text);
    return it == ran.end() ? 0 : it->second;
  }

 private:
  std::string name_;
};

// N servers on one runtime (loop:// names "<prefix>-<i>"), and the client side.
struct Cluster {
  std::shared_ptr<hrpc::transport::LoopbackNetwork> net = hrpc::transport::LoopbackNetwork::Create();
  std::unique_ptr<hrpc::Runtime> runtime;
  std::vector<std::unique_ptr<NamedService>> services;
  std::vector<std::unique_ptr<hrpc::Server>> servers;
  std::vector<std::string> uris;

  explicit Cluster(int n, const std::string& prefix = "node", hrpc::ServerOptions so = {}) {
    hrpc::RuntimeOptions ro;
    ro.loopback = net;
    ro.workers = 1;
    runtime = std::move(hrpc::Runtime::Create(ro).value());
    for (int i = 0; i < n; ++i) Add(prefix + "-" + std::to_string(i), so);
  }
  void Add(const std::string& name, hrpc::ServerOptions so = {}) {
    services.push_back(std::make_unique<NamedService>(name));
    so.listen = {"loop://" + name};
    auto s = hrpc::Server::Create(*runtime, so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE((*s)->RegisterService(services.back().get()).ok());
    ASSERT_TRUE((*s)->Start().ok());
    servers.push_back(std::move(*s));
    uris.push_back("loop://" + name);
  }
  std::string List() const {
    std::string out = "list://";
    for (size_t i = 0; i < uris.size(); ++i) out += (i ? "," : "") + uris[i];
    return out;
  }
  int IndexOf(const std::string& peer_name) const {
    for (size_t i = 0; i < uris.size(); ++i) {
      if (uris[i] == "loop://" + peer_name) return static_cast<int>(i);
    }
    return -1;
  }
};

hrpc::Result<Resp> Call(hrpc::Channel& ch, ClientContext& ctx, const std::string& text, uint32_t sleep_ms = 0) {
  rpctest::Test::Stub stub(&ch);
  Req req;
  req.set_text(text);
  req.set_sleep_ms(sleep_ms);
  Resp resp;
  HRPC_TRY(stub.Call(ctx, req, &resp));
  return resp;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("hrpc-cluster-" + std::to_string(getpid()) + "-" + name))
      .string();
}

template <class F>
bool WaitFor(F&& cond, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

// --- naming ---------------------------------------------------------------

// What a watcher delivered, in order.
struct Updates {
  std::mutex mu;
  std::vector<hrpc::Result<hrpc::NamingUpdate>> got;
  hrpc::NamingWatcher::Callback Callback() {
    return [this](hrpc::Result<hrpc::NamingUpdate> u) {
      std::lock_guard lock(mu);
      got.push_back(std::move(u));
    };
  }
};

TEST(Naming, ServerEntries) {
  auto n = hrpc::ParseServerNode("  tcp://10.0.0.1:7000   rack-a ");
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(n->uri, "tcp://10.0.0.1:7000");
  EXPECT_EQ(n->tag, "rack-a");
  EXPECT_TRUE(hrpc::ParseServerNode("10.0.0.1:7000").ok());
  EXPECT_TRUE(hrpc::ParseServerNode("loop://a").ok());
  for (const char* bad : {"", "10.0.0.1", "tcp://:7000", "tcp://h:99999", "ftp://h:1", "h:0", "h:port"}) {
    auto r = hrpc::ParseServerNode(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
}

TEST(Naming, BadUrisAreRefused) {
  for (const char* bad : {"list://", "list://a:1,,b", "list://a:1,b", "file://relative", "dns://name",
                          "dns://:80", "dns://name:0", "zk://h:1/x", "no-scheme"}) {
    auto w = hrpc::MakeNamingWatcher(bad);
    EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  Cluster c(1);
  auto ch = ClusterChannel::Create(*c.runtime, "list://h:1,h:", {});
  EXPECT_EQ(ch.status().code(), StatusCode::kInvalidArgument);
  ClusterChannelOptions o;
  o.load_balancer = "random";
  EXPECT_EQ(ClusterChannel::Create(*c.runtime, c.List(), o).status().code(), StatusCode::kInvalidArgument);
}

TEST(Naming, FileIsReloadedAndAMissingFileKeepsTheLastSet) {
  const std::string path = TempPath("servers");
  {
    std::ofstream f(path);
    f << "# the cluster\n127.0.0.1:7001 a\n\n127.0.0.1:7002   # b\nnot-a-server\n";
  }
  auto w = hrpc::MakeNamingWatcher("file://" + path);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  std::mutex& mu = updates.mu;
  auto& got = updates.got;
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_TRUE(got[0].ok());
    ASSERT_EQ(got[0]->servers.size(), 2u);
    EXPECT_EQ(got[0]->servers[0].uri, "127.0.0.1:7001");
    EXPECT_EQ(got[0]->servers[0].tag, "a");
    ASSERT_EQ(got[0]->problems.size(), 1u);
    EXPECT_NE(got[0]->problems[0].find("line 5"), std::string::npos) << got[0]->problems[0];
  }
  // Replaced the way editors do it: a new file renamed over the old one.
  {
    std::ofstream f(path + ".tmp");
    f << "127.0.0.1:7001\n127.0.0.1:7002\n127.0.0.1:7003\n";
  }
  std::filesystem::rename(path + ".tmp", path);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return got.back().ok() && got.back()->servers.size() == 3;
      },
      2s));
  std::filesystem::remove(path);
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return !got.back().ok();
      },
      2s));
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(got.back().status().code(), StatusCode::kNotFound) << got.back().status().ToString();
  }
  (*w)->Stop();
}

// A Kubernetes ConfigMap volume: the file is a symlink through "..data" to a
// timestamped directory, and an update renames a new "..data" into place
// (the file's own name never shows in the directory's events).
TEST(Naming, AConfigMapStyleSwapIsSeen) {
  const std::string dir = TempPath("configmap");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/..2026_11_27_a");
  std::ofstream(dir + "/..2026_11_27_a/servers") << "127.0.0.1:7001\n";
  std::filesystem::create_directory_symlink("..2026_11_27_a", dir + "/..data");
  std::filesystem::create_symlink("..data/servers", dir + "/servers");
  auto w = hrpc::MakeNamingWatcher("file://" + dir + "/servers");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  auto servers = [&] {
    std::lock_guard lock(updates.mu);
    return updates.got.back().ok() ? updates.got.back()->servers.size() : size_t{0};
  };
  ASSERT_EQ(servers(), 1u);
  std::filesystem::create_directories(dir + "/..2026_11_27_b");
  std::ofstream(dir + "/..2026_11_27_b/servers") << "127.0.0.1:7001\n127.0.0.1:7002\n";
  std::filesystem::create_directory_symlink("..2026_11_27_b", dir + "/..data_tmp");
  std::filesystem::rename(dir + "/..data_tmp", dir + "/..data");
  EXPECT_TRUE(WaitFor([&] { return servers() == 2; }, 2s)) << "the swap was not seen";
  (*w)->Stop();
  std::filesystem::remove_all(dir);
}

// The file's directory does not exist at start (a volume not mounted yet), or
// goes away and comes back: the watcher finds it and reads the file.
TEST(Naming, ADirectoryThatAppearsLaterIsWatched) {
  const std::string dir = TempPath("late-dir");
  std::filesystem::remove_all(dir);
  auto w = hrpc::MakeNamingWatcher("file://" + dir + "/servers");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  EXPECT_EQ((*w)->Start(updates.Callback()).code(), StatusCode::kNotFound);
  auto servers = [&] {
    std::lock_guard lock(updates.mu);
    return updates.got.back().ok() ? updates.got.back()->servers.size() : size_t{0};
  };
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/servers") << "127.0.0.1:7001\n";
  EXPECT_TRUE(WaitFor([&] { return servers() == 1; }, 3s)) << "the directory that appeared was not watched";
  std::filesystem::remove_all(dir);
  EXPECT_TRUE(WaitFor(
      [&] {
        std::lock_guard lock(updates.mu);
        return !updates.got.back().ok();
      },
      3s));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/servers") << "127.0.0.1:7001\n127.0.0.1:7002\n";
  EXPECT_TRUE(WaitFor([&] { return servers() == 2; }, 3s)) << "the directory that came back was not watched";
  (*w)->Stop();
  std::filesystem::remove_all(dir);
}

// Without inotify (NamingOptions::file_inotify = false, as where inotify
// cannot watch) the file is looked at every second and read again once a
// change stayed for a look.
TEST(Naming, AFileLookedAtInsteadOfWatchedIsStillReloaded) {
  const std::string path = TempPath("unwatched");
  std::ofstream(path) << "127.0.0.1:7001\n";
  hrpc::NamingOptions no;
  no.file_inotify = false;
  auto w = hrpc::MakeNamingWatcher("file://" + path, no);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  auto servers = [&] {
    std::lock_guard lock(updates.mu);
    return !updates.got.empty() && updates.got.back().ok() ? updates.got.back()->servers.size() : size_t{0};
  };
  EXPECT_EQ(servers(), 1u);
  std::ofstream(path + ".tmp") << "127.0.0.1:7001\n127.0.0.1:7002\n";
  std::filesystem::rename(path + ".tmp", path);
  EXPECT_TRUE(WaitFor([&] { return servers() == 2; }, 6s)) << "the change was not read";
  (*w)->Stop();
  std::filesystem::remove(path);
}

TEST(Naming, ChannelKeepsItsLastGoodSetWhenTheFileGoes) {
  Cluster c(2);
  const std::string path = TempPath("channel-servers");
  {
    std::ofstream f(path);
    f << c.uris[0] << "\n";
  }
  auto ch = ClusterChannel::Create(*c.runtime, "file://" + path);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  ASSERT_EQ((*ch)->servers().size(), 1u);
  {
    std::ofstream f(path + ".tmp");
    f << c.uris[0] << "\n" << c.uris[1] << "\n";
  }
  std::filesystem::rename(path + ".tmp", path);
  ASSERT_TRUE(WaitFor([&] { return (*ch)->servers().size() == 2; }, 2s));
  std::filesystem::remove(path);
  ASSERT_TRUE(WaitFor([&] { return (*ch)->stats().naming_errors >= 1; }, 2s));
  EXPECT_EQ((*ch)->naming_status().code(), StatusCode::kNotFound);
  EXPECT_EQ((*ch)->servers().size(), 2u);
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    auto r = Call(**ch, ctx, "still-served");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
  }
}

TEST(Naming, MissingFileAtStartThenItAppears) {
  Cluster c(1);
  const std::string path = TempPath("late-servers");
  std::filesystem::remove(path);
  auto ch = ClusterChannel::Create(*c.runtime, "file://" + path);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  EXPECT_EQ((*ch)->naming_status().code(), StatusCode::kNotFound);
  ClientContext ctx;
  ctx.set_timeout(2s);
  auto r = Call(**ch, ctx, "nobody");
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  ClusterChannelOptions strict;
  strict.require_servers_at_start = true;
  EXPECT_EQ(ClusterChannel::Create(*c.runtime, "file://" + path, strict).status().code(), StatusCode::kNotFound);
  {
    std::ofstream f(path);
    f << c.uris[0] << "\n";
  }
  ASSERT_TRUE(WaitFor([&] { return (*ch)->servers().size() == 1; }, 2s));
  ClientContext ctx2;
  ctx2.set_timeout(5s);
  EXPECT_TRUE(Call(**ch, ctx2, "found").ok());
  std::filesystem::remove(path);
}

// A DNS server of the test's own (dnsmasq on 127.0.0.1, answering from a
// hosts file the test writes), so dns:// is tested without /etc/hosts.
class LocalDns {
 public:
  static constexpr const char* kBinary = "/usr/sbin/dnsmasq";
  bool Start(const std::string& hosts_text, std::string* why) {
    if (access(kBinary, X_OK) != 0) {
      *why = "dnsmasq is not installed (Debian: dnsmasq-base)";
      return false;
    }
    hosts_ = TempPath("dns-hosts");
    Write(hosts_text);
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = 20000 + static_cast<int>((getpid() * 7 + attempt * 131) % 20000);
      const std::string port_arg = "--port=" + std::to_string(port_);
      const std::string hosts_arg = "--addn-hosts=" + hosts_;
      pid_t pid = fork();
      if (pid == 0) {
        execl(kBinary, kBinary, "--keep-in-foreground", "--no-daemon", port_arg.c_str(), "--listen-address=127.0.0.1",
              "--bind-interfaces", "--no-resolv", "--no-hosts", hosts_arg.c_str(), "--user=root", "--group=root",
              "--pid-file=", "--log-facility=/dev/null", static_cast<char*>(nullptr));
        _exit(127);
      }
      // Up when it answers a query for a name it has.
      auto r = hrpc::transport::Resolver::Create({.servers = {"127.0.0.1:" + std::to_string(port_)},
                                                   .query_timeout = 200ms, .tries = 1});
      for (int i = 0; i < 25 && r.ok(); ++i) {
        int st = 0;
        if (waitpid(pid, &st, WNOHANG) == pid) {
          pid = -1;
          break;
        }
        if ((*r)->Resolve("ready.hrpc.test", 1).ok()) {
          pid_ = pid;
          return true;
        }
      }
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
    *why = "dnsmasq did not start on 127.0.0.1";
    return false;
  }
  void Write(const std::string& hosts_text) {
    std::ofstream f(hosts_);
    f << "127.0.0.1 ready.hrpc.test\n" << hosts_text;
  }
  void Reload() { kill(pid_, SIGHUP); }
  // A stopped server takes queries in (its socket stays) and answers none.
  void Pause() { kill(pid_, SIGSTOP); }
  void Resume() { kill(pid_, SIGCONT); }
  std::string server() const { return "127.0.0.1:" + std::to_string(port_); }
  ~LocalDns() {
    if (pid_ > 0) {
      Resume();
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (!hosts_.empty()) std::filesystem::remove(hosts_);
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string hosts_;
};

TEST(Naming, DnsNameIsResolvedAndRefreshed) {
  LocalDns dns;
  std::string why;
  if (!dns.Start("127.0.0.2 storage.hrpc.test\n", &why)) GTEST_SKIP() << why;
  hrpc::NamingOptions no;
  no.dns_servers = {dns.server()};
  no.dns_refresh = 100ms;
  auto w = hrpc::MakeNamingWatcher("dns://storage.hrpc.test:7000", no);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  std::mutex& mu = updates.mu;
  auto& got = updates.got;
  {
    std::lock_guard lock(mu);
    ASSERT_TRUE(got.at(0).ok()) << got.at(0).status().ToString();
    ASSERT_EQ(got[0]->servers.size(), 1u);
    EXPECT_EQ(got[0]->servers[0].uri, "127.0.0.2:7000");
  }
  dns.Write("127.0.0.2 storage.hrpc.test\n127.0.0.3 storage.hrpc.test\n");
  dns.Reload();
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard lock(mu);
        return got.back().ok() && got.back()->servers.size() == 2;
      },
      3s));
  (*w)->Stop();

  // A name the server does not know: a clear UNAVAILABLE naming it.
  auto missing = hrpc::MakeNamingWatcher("dns://nowhere.hrpc.test:7000", no);
  ASSERT_TRUE(missing.ok());
  hrpc::Status first = (*missing)->Start([](hrpc::Result<hrpc::NamingUpdate>) {});
  EXPECT_EQ(first.code(), StatusCode::kUnavailable);
  EXPECT_NE(first.message().find("nowhere.hrpc.test"), std::string_view::npos) << first.ToString();
}

// A watcher whose DNS server stopped answering is inside a resolve that lasts
// seconds (c-ares' timeouts and retries): Stop() cuts it short, and the
// stopped watcher reports nothing.
TEST(Naming, StopDoesNotWaitForADnsServerThatDoesNotAnswer) {
  LocalDns dns;
  std::string why;
  if (!dns.Start("127.0.0.2 storage.hrpc.test\n", &why)) GTEST_SKIP() << why;
  hrpc::NamingOptions no;
  no.dns_servers = {dns.server()};
  no.dns_refresh = 50ms;
  auto w = hrpc::MakeNamingWatcher("dns://storage.hrpc.test:7000", no);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  Updates updates;
  ASSERT_TRUE((*w)->Start(updates.Callback()).ok());
  dns.Pause();
  std::this_thread::sleep_for(300ms);  // a refresh has asked and waits (1 s per try, 2 tries)
  size_t before = 0;
  {
    std::lock_guard lock(updates.mu);
    before = updates.got.size();
    for (const auto& u : updates.got) EXPECT_TRUE(u.ok()) << u.status().ToString();
  }
  const auto t0 = std::chrono::steady_clock::now();
  (*w)->Stop();
  const auto took = std::chrono::steady_clock::now() - t0;
  dns.Resume();
  EXPECT_LT(took, 500ms) << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  std::lock_guard lock(updates.mu);
  EXPECT_EQ(updates.got.size(), before);
}

// The connect path resolves names through c-ares too: a channel to
// tcp://localhost:PORT works (the name comes from /etc/hosts through c-ares).
TEST(Naming, TcpConnectResolvesNamesOffTheWorker) {
  hrpc::RuntimeOptions ro;
  ro.workers = 1;
  auto rt = hrpc::Runtime::Create(ro).value();
  NamedService svc("tcp");
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  auto server = hrpc::Server::Create(*rt, so).value();
  ASSERT_TRUE(server->RegisterService(&svc).ok());
  ASSERT_TRUE(server->Start().ok());
  const std::string bound = server->listen_uris().at(0);
  const std::string port = bound.substr(bound.rfind(':') + 1);
  const uint64_t before = hrpc::transport::Resolver::Default().queries();
  auto ch = hrpc::RpcChannel::Create(*rt, "tcp://localhost:" + port).value();
  ClientContext ctx;
  ctx.set_timeout(5s);
  auto r = Call(*ch, ctx, "by-name");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(hrpc::transport::Resolver::Default().queries(), before);
  auto bad = hrpc::RpcChannel::Create(*rt, "tcp://no-such-host.invalid:" + port).value();
  ClientContext ctx2;
  ctx2.set_timeout(5s);
  auto r2 = Call(*bad, ctx2, "nowhere");
  EXPECT_EQ(r2.status().code(), StatusCode::kUnavailable) << r2.status().ToString();
}

// --- balancers ------------------------------------------------------------

// `n` calls of `text` through `ch`, one after another, each with 5 s to
// answer: every one must succeed.
void CallsSucceed(ClusterChannel& ch, int n, const std::string& text) {
  for (int i = 0; i < n; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    auto r = Call(ch, ctx, text);
    ASSERT_TRUE(r.ok()) << "call " << i << ": " << r.status().ToString();
  }
}

TEST(ClusterChannel, RoundRobinSpreadsCallsEvenly) {
  Cluster c(3);
  auto ch = ClusterChannel::Create(*c.runtime, c.List()).value();
  CallsSucceed(*ch, 30, "rr");
  for (auto& s : c.services) EXPECT_EQ(s->calls.load(), 10);
  auto st = ch->ServerStats();
  ASSERT_EQ(st.size(), 3u);
  for (auto& s : st) {
    EXPECT_EQ(s.calls, 10u);
    EXPECT_EQ(s.errors, 0u);
    EXPECT_FALSE(s.ejected);
    EXPECT_GT(s.latency_us, 0);
  }
}

TEST(ClusterChannel, LeastLoadedAvoidsASlowServer) {
  Cluster c(2);
  c.services[0]->delay_ms = 30;
  ClusterChannelOptions o;
  o.load_balancer = "la";
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  CallsSucceed(*ch, 40, "la");
  // Both get tried; the fast one takes nearly everything after that.
  EXPECT_GE(c.services[0]->calls.load(), 1);
  EXPECT_GE(c.services[1]->calls.load(), 35) << "slow got " << c.services[0]->calls.load();
}

// A server that takes calls and answers none (hung, its connections up)
// stops getting them: a call that runs out of its deadline there counts as
// an answer that took that long.
TEST(ClusterChannel, LeastLoadedAvoidsAServerThatAnswersNothing) {
  Cluster c(3);
  c.services[0]->delay_ms = 2000;
  ClusterChannelOptions o;
  o.load_balancer = "la";
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  int timed_out = 0;
  for (int i = 0; i < 40; ++i) {
    ClientContext ctx;
    ctx.set_timeout(100ms);
    auto r = Call(*ch, ctx, "la");
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
      ++timed_out;
    }
  }
  EXPECT_LE(timed_out, 2) << "the hung server kept getting calls";
  EXPECT_LE(c.services[0]->calls.load(), 2);
}

// One answer of the fast server that took ten times the slow server's time
// (a stall) does not send every later call to the slow one.
TEST(ClusterChannel, LeastLoadedComesBackToAFastServerAfterOneStalledAnswer) {
  Cluster c(2);
  c.services[0]->delay_ms = 30;
  ClusterChannelOptions o;
  o.load_balancer = "la";
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  CallsSucceed(*ch, 10, "la");
  const int fast_before = c.services[1]->calls.load();
  ASSERT_GE(fast_before, 5);
  c.services[1]->stall_next_ms = 300;
  CallsSucceed(*ch, 20, "la");
  EXPECT_EQ(c.services[1]->stall_next_ms.load(), 0) << "the fast server never got the stalled call";
  EXPECT_GE(c.services[1]->calls.load() - fast_before, 15)
      << "after one stalled answer the slow server got " << c.services[0]->calls.load() << " calls";
}

// Keys -> servers for `keys` keys through a c_hash channel over `list`.
std::vector<int> MapKeys(Cluster& c, const std::string& list, int keys) {
  ClusterChannelOptions o;
  o.load_balancer = "c_hash";
  auto ch = ClusterChannel::Create(*c.runtime, list, o).value();
  std::vector<int> out(keys, -1);
  // Calls from a coroutine on the runtime's worker, 64 in flight.
  std::atomic<int> next{0};
  hrpc::coro::WaitGroup wg;
  auto& sched = c.runtime->scheduler(0);
  const int fibers = 64;
  wg.Add(fibers);
  for (int f = 0; f < fibers; ++f) {
    sched.Post([&] {
      for (int k = next.fetch_add(1); k < keys; k = next.fetch_add(1)) {
        ClientContext ctx;
        ctx.set_timeout(10s);
        ctx.set_request_key("chunk-" + std::to_string(k));
        auto r = Call(*ch, ctx, "k");
        if (r.ok()) out[k] = c.IndexOf(r->peer());
      }
      wg.Done();
    });
  }
  wg.Wait().IgnoreError();
  return out;
}

TEST(ClusterChannel, ConsistentHashKeepsKeysAndMovesAboutOneInNWhenAServerJoins) {
  Cluster c(5, "ring");
  const int kKeys = 10000;
  const std::vector<int> before = MapKeys(c, c.List(), kKeys);
  const std::vector<int> again = MapKeys(c, c.List(), kKeys);
  for (int k = 0; k < kKeys; ++k) ASSERT_GE(before[k], 0) << "key " << k << " failed";
  EXPECT_EQ(before, again) << "the same key must reach the same server";
  std::vector<int> per(5, 0);
  for (int s : before) per[s]++;
  for (int n : per) EXPECT_GT(n, kKeys / 5 / 2) << "a server got too few keys";
  c.Add("ring-5");
  const std::vector<int> after = MapKeys(c, c.List(), kKeys);
  int moved = 0;
  for (int k = 0; k < kKeys; ++k) {
    ASSERT_GE(after[k], 0);
    if (after[k] != before[k]) {
      ++moved;
      EXPECT_EQ(after[k], 5) << "a key moved between two old servers";
    }
  }
  EXPECT_GE(moved, kKeys * 10 / 100) << moved;
  EXPECT_LE(moved, kKeys * 25 / 100) << moved;
}

// --- retries, backups, ejection -----------------------------------------

TEST(ClusterChannel, IdempotentCallIsRetriedOnAnotherServer) {
  Cluster c(2);
  c.services[0]->fail_code = static_cast<int>(StatusCode::kUnavailable);
  ClusterChannelOptions o;
  o.eject_after_failures = 1000;  // the failing server stays in the rotation
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  for (int i = 0; i < 6; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ctx.set_idempotent(true);
    auto r = Call(*ch, ctx, "idem-" + std::to_string(i));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->peer(), "node-1");
  }
  EXPECT_GE(ch->stats().retries, 1u);
  // Not idempotent: never sent to a second server; fails cleanly.
  int failed = 0;
  for (int i = 0; i < 6; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    auto r = Call(*ch, ctx, "write-" + std::to_string(i));
    if (!r.ok()) {
      ++failed;
      EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
      EXPECT_EQ(c.services[1]->Runs("write-" + std::to_string(i)), 0);
    }
  }
  EXPECT_GE(failed, 1);
  // A code that is not retryable comes back at once.
  c.services[0]->fail_code = 0;
  ClientContext ctx;
  ctx.set_timeout(5s);
  ctx.set_idempotent(true);
  rpctest::Test::Stub stub(ch.get());
  Req req;
  req.set_fail_code(static_cast<int>(StatusCode::kNotFound));
  Resp resp;
  EXPECT_EQ(stub.Call(ctx, req, &resp).code(), StatusCode::kNotFound);
  EXPECT_EQ(ctx.attempts(), 1);
}

// Echo.Ping carries `option idempotency_level = NO_SIDE_EFFECTS;` and Echo.Echo
// nothing: the generated MethodDescriptor tells the channel which it may retry.
class FlakyEcho final : public hrpc_test::echo::Echo::Service {
 public:
  explicit FlakyEcho(bool down) : down_(down) {}
  std::atomic<int> runs{0};
  hrpc::Status Echo(hrpc::ServerContext&, const hrpc_test::echo::EchoRequest& req,
                    hrpc_test::echo::EchoResponse* resp) override {
    runs++;
    if (down_) return hrpc::UnavailableError("down");
    resp->set_text(req.text());
    return hrpc::Status::Ok();
  }
  hrpc::Status Ping(hrpc::ServerContext&, const hrpc_test::echo::Empty&, hrpc_test::echo::Empty*) override {
    runs++;
    return down_ ? hrpc::UnavailableError("down") : hrpc::Status::Ok();
  }

 private:
  bool down_;
};

TEST(ClusterChannel, TheProtoOptionMarksWhatIsRetried) {
  Cluster c(0);
  FlakyEcho down(true), up(false);
  std::vector<std::unique_ptr<hrpc::Server>> servers;
  for (auto* svc : {&down, &up}) {
    hrpc::ServerOptions so;
    so.listen = {"loop://echo-" + std::to_string(servers.size())};
    servers.push_back(hrpc::Server::Create(*c.runtime, so).value());
    ASSERT_TRUE(servers.back()->RegisterService(svc).ok());
    ASSERT_TRUE(servers.back()->Start().ok());
  }
  auto ch = ClusterChannel::Create(*c.runtime, "list://loop://echo-0,loop://echo-1").value();
  hrpc_test::echo::Echo::Stub stub(ch.get());
  int echo_failed = 0;
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    hrpc_test::echo::Empty e, out;
    EXPECT_TRUE(stub.Ping(ctx, e, &out).ok()) << "Ping is idempotent by its option";
    ClientContext ctx2;
    ctx2.set_timeout(5s);
    hrpc_test::echo::EchoRequest req;
    hrpc_test::echo::EchoResponse resp;
    if (!stub.Echo(ctx2, req, &resp).ok()) ++echo_failed;
  }
  EXPECT_GE(echo_failed, 1) << "Echo has no option: not retried on another server";
  EXPECT_EQ(up.runs.load() + echo_failed, 8);
}

TEST(ClusterChannel, BackupRequestToAnotherServerWinsAndTheSlowOneIsCancelled) {
  Cluster c(2);
  c.services[0]->delay_ms = 2000;
  ClusterChannelOptions o;
  o.backup_request_delay = 20ms;
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  int backups = 0;
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ctx.set_idempotent(true);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = Call(*ch, ctx, "b" + std::to_string(i));
    const auto took = std::chrono::steady_clock::now() - t0;
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->peer(), "node-1");
    EXPECT_LT(took, 1500ms);
    if (ctx.backup_sent()) {
      ++backups;
      EXPECT_EQ(ctx.attempts(), 2);
    }
  }
  EXPECT_GE(backups, 1);
  EXPECT_EQ(ch->stats().backup_wins, static_cast<uint64_t>(backups));
  ASSERT_TRUE(WaitFor([&] { return c.services[0]->cancelled.load() == backups; }, 3s))
      << "the slow server saw " << c.services[0]->cancelled.load() << " cancels";
  // Not idempotent: no backup request.
  c.services[0]->delay_ms = 100;
  ClientContext ctx;
  ctx.set_timeout(5s);
  for (int i = 0; i < 2; ++i) {
    auto r = Call(*ch, ctx, "no-backup");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(ctx.backup_sent());
    EXPECT_EQ(ctx.attempts(), 1);
  }
  // Idempotent but max_attempts 1: a backup would be a second attempt.
  int slow_answers = 0;
  for (int i = 0; i < 4; ++i) {
    ClientContext one;
    one.set_timeout(5s);
    one.set_idempotent(true);
    one.set_max_attempts(1);
    auto r = Call(*ch, one, "one-attempt");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    if (r->peer() == "node-0") ++slow_answers;
    EXPECT_FALSE(one.backup_sent());
    EXPECT_EQ(one.attempts(), 1);
  }
  EXPECT_GE(slow_answers, 1) << "no call went to the slow server first: the check proves nothing";
}

// A new node-0 at the address of the one shut down.
void BringBackFirstServer(Cluster& c) {
  c.servers[0].reset();
  c.services[0] = std::make_unique<NamedService>("node-0");
  hrpc::ServerOptions so;
  so.listen = {c.uris[0]};
  c.servers[0] = hrpc::Server::Create(*c.runtime, so).value();
  ASSERT_TRUE(c.servers[0]->RegisterService(c.services[0].get()).ok());
  ASSERT_TRUE(c.servers[0]->Start().ok());
}

TEST(ClusterChannel, FailingServerIsEjectedAndTakenBackWhenItReturns) {
  Cluster c(2);
  ClusterChannelOptions o;
  o.eject_after_failures = 2;
  o.health_check_interval = 50ms;
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  c.servers[0]->Shutdown();
  int ok = 0;
  for (int i = 0; i < 10; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ctx.set_idempotent(true);
    if (Call(*ch, ctx, "e").ok()) ++ok;
  }
  EXPECT_EQ(ok, 10);
  auto st = ch->ServerStats();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_TRUE(st[0].ejected);
  EXPECT_EQ(st[0].ejections, 1u);
  EXPECT_LE(st[0].calls, 3u) << "an ejected server got calls";
  // Back on the same name: the health check takes it back.
  ASSERT_NO_FATAL_FAILURE(BringBackFirstServer(c));
  ASSERT_TRUE(WaitFor([&] { return !ch->ServerStats()[0].ejected; }, 3s));
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ASSERT_TRUE(Call(*ch, ctx, "back").ok());
  }
  EXPECT_GE(c.services[0]->calls.load(), 1);
}

// Under `la`, a server that was ejected and came back gets its share again:
// the failures that ejected it do not keep its mean latency high.
TEST(ClusterChannel, LeastLoadedTakesAnEjectedServerBackIntoUse) {
  Cluster c(2);
  ClusterChannelOptions o;
  o.load_balancer = "la";
  o.eject_after_failures = 1;  // `la` sends a failing server few calls
  o.health_check_interval = 50ms;
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  c.servers[0]->Shutdown();
  for (int i = 0; i < 20 && !ch->ServerStats()[0].ejected; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ctx.set_idempotent(true);
    EXPECT_TRUE(Call(*ch, ctx, "e").ok());
  }
  ASSERT_TRUE(ch->ServerStats()[0].ejected);
  ASSERT_NO_FATAL_FAILURE(BringBackFirstServer(c));
  ASSERT_TRUE(WaitFor([&] { return !ch->ServerStats()[0].ejected; }, 3s));
  const int before = c.services[0]->calls.load();
  for (int i = 0; i < 100; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ASSERT_TRUE(Call(*ch, ctx, "back").ok());
  }
  EXPECT_GE(c.services[0]->calls.load() - before, 1) << "the server that came back is not used";
}

// A server new to the set is not flooded by `la` before it has answered.
TEST(ClusterChannel, LeastLoadedDoesNotFloodANewServer) {
  Cluster c(3);
  const std::string path = TempPath("la-servers");
  {
    std::ofstream f(path);
    f << c.uris[0] << "\n" << c.uris[1] << "\n";
  }
  ClusterChannelOptions o;
  o.load_balancer = "la";
  auto ch = ClusterChannel::Create(*c.runtime, "file://" + path, o).value();
  for (int i = 0; i < 20; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ASSERT_TRUE(Call(*ch, ctx, "warm").ok());
  }
  {
    std::ofstream f(path + ".tmp");
    f << c.uris[0] << "\n" << c.uris[1] << "\n" << c.uris[2] << "\n";
  }
  std::filesystem::rename(path + ".tmp", path);
  ASSERT_TRUE(WaitFor([&] { return ch->servers().size() == 3; }, 2s));
  for (int i = 0; i < 30; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ASSERT_TRUE(Call(*ch, ctx, "spread").ok());
  }
  EXPECT_GE(c.services[2]->calls.load(), 1);
  EXPECT_LT(c.services[2]->calls.load(), 25) << "the new server took nearly every call";
  std::filesystem::remove(path);
}

// Destroyed from a coroutine on the runtime's own worker while its health
// thread probes an ejected server through that worker: no deadlock.
TEST(ClusterChannel, DestroyedOnItsOwnWorkerWhileProbing) {
  Cluster c(2);
  ClusterChannelOptions o;
  o.eject_after_failures = 1;
  o.health_check_interval = 1ms;
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  c.servers[0]->Shutdown();
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    ctx.set_timeout(5s);
    ctx.set_idempotent(true);
    ASSERT_TRUE(Call(*ch, ctx, "x").ok());
  }
  ASSERT_TRUE(ch->ServerStats()[0].ejected);
  hrpc::coro::Event done;
  c.runtime->scheduler(0).Post([&] {
    ch.reset();
    done.Set();
  });
  EXPECT_TRUE(done.WaitFor(10s).ok());
}

TEST(ClusterChannel, CancelEndsTheCallAndItsAttempts) {
  Cluster c(1);
  c.services[0]->delay_ms = 5000;
  auto ch = ClusterChannel::Create(*c.runtime, c.List()).value();
  ClientContext ctx;
  ctx.set_timeout(10s);
  std::thread canceller([&] {
    std::this_thread::sleep_for(50ms);
    ctx.Cancel();
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto r = Call(*ch, ctx, "cancel-me");
  canceller.join();
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  ASSERT_TRUE(WaitFor([&] { return c.services[0]->cancelled.load() == 1; }, 3s));
}

TEST(ClusterChannel, DeadlineCoversTheRetries) {
  Cluster c(2);
  for (auto& s : c.services) s->fail_code = static_cast<int>(StatusCode::kUnavailable);
  ClusterChannelOptions o;
  o.retry.max_attempts = 1000;
  o.retry.backoff = 20ms;
  o.eject_after_failures = 1000;
  auto ch = ClusterChannel::Create(*c.runtime, c.List(), o).value();
  ClientContext ctx;
  ctx.set_timeout(1s);
  ctx.set_idempotent(true);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = Call(*ch, ctx, "doomed");
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(r.status().code() == StatusCode::kUnavailable || r.status().code() == StatusCode::kDeadlineExceeded)
      << r.status().ToString();
  EXPECT_LT(took, 2s);
  EXPECT_GT(ctx.attempts(), 2);
}

// --- the server's dedup window ------------------------------------------

struct DedupEnv {
  Cluster c{1, "dedup"};
  std::unique_ptr<hrpc::RpcChannel> ch = hrpc::RpcChannel::Create(*c.runtime, c.uris[0]).value();
};

// One call of `req` carrying request id `id` (what a retry sends again).
hrpc::Result<Resp> CallWithId(hrpc::Channel& ch, uint64_t id, const Req& req) {
  ClientContext ctx;
  ctx.set_timeout(5s);
  ctx.set_request_id(id);
  Resp resp;
  HRPC_TRY(rpctest::Test::Stub(&ch).Call(ctx, req, &resp));
  return resp;
}
hrpc::Result<Resp> CallWithId(hrpc::Channel& ch, uint64_t id, const std::string& text, uint32_t sleep_ms = 0) {
  Req req;
  req.set_text(text);
  req.set_sleep_ms(sleep_ms);
  return CallWithId(ch, id, req);
}

TEST(Dedup, ARetryWithTheSameRequestIdGetsTheFirstAnswer) {
  DedupEnv e;
  for (int round = 0; round < 2; ++round) {
    auto r = CallWithId(*e.ch, 0xfeed, "append-once");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->text(), "append-once");
  }
  EXPECT_EQ(e.c.services[0]->Runs("append-once"), 1);
  EXPECT_EQ(e.c.servers[0]->deduplicated_requests(), 1u);
  // Another id runs.
  ASSERT_TRUE(CallWithId(*e.ch, 0xbeef, "append-once").ok());
  EXPECT_EQ(e.c.services[0]->Runs("append-once"), 2);
}

TEST(Dedup, ARetryWhileTheFirstRunsWaitsForItsAnswer) {
  DedupEnv e;
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&] {
      auto r = CallWithId(*e.ch, 77, "slow-append", 100);
      if (r.ok() && r->text() == "slow-append") ok.fetch_add(1);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok.load(), 3);
  EXPECT_EQ(e.c.services[0]->Runs("slow-append"), 1);
  EXPECT_EQ(e.c.servers[0]->deduplicated_requests(), 2u);
}

TEST(Dedup, AnErrorIsRememberedAndAnAttachmentIsNotKept) {
  DedupEnv e;
  for (int round = 0; round < 2; ++round) {
    Req req;
    req.set_text("fails");
    req.set_fail_code(static_cast<int>(StatusCode::kFailedPrecondition));
    EXPECT_EQ(CallWithId(*e.ch, 5, req).status().code(), StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(e.c.services[0]->Runs("fails"), 1);
  for (int round = 0; round < 2; ++round) {
    Req req;
    req.set_text("with-attachment");
    req.set_response_bytes(4096);
    const hrpc::Status s = CallWithId(*e.ch, 6, req).status();
    EXPECT_EQ(s.code(), round == 0 ? StatusCode::kOk : StatusCode::kAborted) << s.ToString();
  }
  EXPECT_EQ(e.c.services[0]->Runs("with-attachment"), 1);
}

TEST(Dedup, AReusedIdWithOtherBytesIsAnotherCallAndRetryableErrorsAreNotKept) {
  DedupEnv e;
  for (const char* text : {"first", "second"}) {
    auto r = CallWithId(*e.ch, 42, text);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->text(), text) << "another request under the same id got the first one's answer";
  }
  EXPECT_EQ(e.c.servers[0]->deduplicated_requests(), 0u);
  // A handler's UNAVAILABLE is not remembered: the retry runs (and succeeds).
  e.c.services[0]->fail_code = static_cast<int>(StatusCode::kUnavailable);
  EXPECT_EQ(CallWithId(*e.ch, 43, "flaky").status().code(), StatusCode::kUnavailable);
  e.c.services[0]->fail_code = 0;
  EXPECT_TRUE(CallWithId(*e.ch, 43, "flaky").ok());
  EXPECT_EQ(e.c.services[0]->Runs("flaky"), 2);
}

// A first run that stopped at its deadline (the handler saw IsCancelled()
// and answered CANCELLED) did not happen: the retry, with a deadline of its
// own, runs. One that finished after its caller gave up did happen: the
// retry gets its answer, not the first caller's DEADLINE_EXCEEDED.
TEST(Dedup, ARunCutShortIsRunAgainAndALateAnswerIsKept) {
  DedupEnv e;
  {
    ClientContext ctx;
    ctx.set_timeout(100ms);
    ctx.set_request_id(91);
    Req req;
    req.set_text("cut-short");
    req.set_sleep_ms(1000);
    Resp resp;
    EXPECT_EQ(rpctest::Test::Stub(e.ch.get()).Call(ctx, req, &resp).code(), StatusCode::kDeadlineExceeded);
    ASSERT_TRUE(WaitFor([&] { return e.c.services[0]->cancelled.load() == 1; }, 3s));
  }
  auto again = CallWithId(*e.ch, 91, "cut-short", 1000);  // the same request
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(e.c.services[0]->Runs("cut-short"), 2);

  // A handler that does not look at IsCancelled() and answers OK late.
  {
    ClientContext ctx;
    ctx.set_timeout(100ms);
    ctx.set_request_id(92);
    Req req;
    req.set_text("late");
    req.set_hold_ms(300);
    Resp resp;
    EXPECT_EQ(rpctest::Test::Stub(e.ch.get()).Call(ctx, req, &resp).code(), StatusCode::kDeadlineExceeded);
  }
  std::this_thread::sleep_for(400ms);  // the first run has answered (too late)
  Req req;
  req.set_text("late");
  req.set_hold_ms(300);
  auto late = CallWithId(*e.ch, 92, req);
  ASSERT_TRUE(late.ok()) << late.status().ToString();
  EXPECT_EQ(late->text(), "late");
  EXPECT_EQ(e.c.services[0]->Runs("late"), 1);
}

// The attachment is part of what a retry repeats: the same id and message with
// another attachment (1 KiB inline; 1 MiB pulled from the client's memory,
// its descriptor's CRC) is another call and runs; the first one's again is a
// retry of it.
TEST(Dedup, AReusedIdWithAnotherAttachmentIsAnotherCall) {
  DedupEnv e;
  uint64_t id = 70;
  for (size_t size : {size_t{1024}, size_t{1} << 20}) {
    auto call = [&](char fill) -> hrpc::Status {
      ClientContext ctx;
      ctx.set_timeout(5s);
      ctx.set_request_id(id);
      const std::string bytes(size, fill);
      auto att = hrpc::mempool::IoBuf::CopyFrom(e.ch->pool(), bytes.data(), bytes.size());
      if (!att.ok()) return att.status();
      ctx.request_attachment() = std::move(*att);
      Req req;
      req.set_text("put-" + std::to_string(size));
      Resp resp;
      return rpctest::Test::Stub(e.ch.get()).Call(ctx, req, &resp);
    };
    ASSERT_TRUE(call('a').ok());
    ASSERT_TRUE(call('b').ok());
    EXPECT_EQ(e.c.services[0]->Runs("put-" + std::to_string(size)), 2) << size << " B: another attachment is another call";
    ASSERT_TRUE(call('a').ok());
    EXPECT_EQ(e.c.services[0]->Runs("put-" + std::to_string(size)), 2) << size << " B: the first one again is a retry";
    ++id;
  }
}

TEST(Dedup, TheWindowIsBounded) {
  hrpc::ServerOptions so;
  so.dedup_max_entries = 4;
  Cluster c(1, "bounded", so);
  auto ch = hrpc::RpcChannel::Create(*c.runtime, c.uris[0]).value();
  for (uint64_t id = 1; id <= 20; ++id) {
    ASSERT_TRUE(CallWithId(*ch, id, "x").ok());
  }
  // Id 1 fell out of the window: its retry runs again.
  ASSERT_TRUE(CallWithId(*ch, 1, "x").ok());
  EXPECT_EQ(c.services[0]->Runs("x"), 21);
  EXPECT_EQ(c.servers[0]->deduplicated_requests(), 0u);
}

}  // namespace
