#include "transport_harness.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "hrpc/transport/loopback.h"
#include "hrpc/transport/tcp.h"

extern char** environ;

namespace hrpc::transport::testing {

TransportKind LoopbackKind() {
  TransportKind k;
  k.name = "loopback";
  k.listen_uri = "loop://conformance";
  k.make = [](coro::Scheduler& sched, mempool::Pool& pool, const TransportOptions& opt,
              std::shared_ptr<void>& shared) -> Result<std::unique_ptr<Transport>> {
    if (!shared) shared = LoopbackNetwork::Create();
    return CreateLoopbackTransport(std::static_pointer_cast<LoopbackNetwork>(shared), sched, pool, opt);
  };
  return k;
}

TransportKind TcpKind() {
  TransportKind k;
  k.name = "tcp";
  k.listen_uri = "tcp://127.0.0.1:0";
  k.make = [](coro::Scheduler& sched, mempool::Pool& pool, const TransportOptions& opt,
              std::shared_ptr<void>&) -> Result<std::unique_ptr<Transport>> {
    TcpOptions o;
    o.common = opt;
    return CreateTcpTransport(sched, pool, o);
  };
  k.multi_process = true;
  return k;
}

namespace {
std::vector<TransportKind>& Kinds() {
  static std::vector<TransportKind> kinds = {LoopbackKind(), TcpKind()};
  return kinds;
}
}  // namespace

const TransportKind* FindKind(const std::string& name) {
  for (const auto& k : Kinds()) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

void RegisterKind(const TransportKind& kind) {
  for (auto& k : Kinds()) {
    if (k.name == kind.name) {
      k = kind;
      return;
    }
  }
  Kinds().push_back(kind);
}

std::string KindName(const ::testing::TestParamInfo<TransportKind>& info) { return info.param.name; }

pid_t SpawnTestChild(const std::string& env_name, const std::string& env_value, const std::string& gtest_filter) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back(env_name + "=" + env_value);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=" + gtest_filter;
  char* argv[] = {self.data(), filter.data(), nullptr};
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(3);
    execve(self.c_str(), argv, envp.data());
    _exit(4);
  }
  return pid;
}

void ReapTestChild(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return;
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "peer process " << pid << " failed on its own (exit code " << WEXITSTATUS(status)
                  << "; its output above says why)";
  }
}

void ExitTestChild() {
  std::fflush(nullptr);
  _exit(::testing::Test::HasFailure() ? 1 : 0);
}

std::unique_ptr<mempool::Pool> MakeTestPool(size_t arena_bytes, size_t max_class) {
  mempool::PoolOptions o;
  o.arena_bytes = arena_bytes;
  o.max_class_bytes = max_class;
  o.best_page_mode = mempool::PageMode::kTransparentHuge;
  o.prefault = false;
  o.max_arenas = 2;
  auto p = mempool::Pool::Create(o);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(*p) : nullptr;
}

TransportOptions TestOptions() {
  TransportOptions o;
  o.recv_depth = 16;
  o.max_message_bytes = 64 * 1024;
  o.keepalive_interval = std::chrono::milliseconds(100);
  // Generous: ASan on a loaded 2-core box can starve a worker for a while.
  // The dead-peer tests use FastDeadPeerOptions().
  o.dead_peer_timeout = std::chrono::milliseconds(5000);
  o.connect_timeout = std::chrono::milliseconds(3000);
  o.handshake_timeout = std::chrono::milliseconds(1000);
  return o;
}

TransportOptions FastDeadPeerOptions() {
  TransportOptions o = TestOptions();
  o.dead_peer_timeout = std::chrono::milliseconds(1000);
  return o;
}

Env::Env(const TransportKind& k, TransportOptions opt) : kind(k) {
  pool_ = MakeTestPool();
  auto sw = coro::Worker::Start({.sched = {.name = "server"}});
  auto cw = coro::Worker::Start({.sched = {.name = "client"}});
  EXPECT_TRUE(sw.ok() && cw.ok());
  server_w_ = std::move(*sw);
  client_w_ = std::move(*cw);
  auto st = On(*server_w_, [&]() { return kind.make(server_w_->scheduler(), *pool_, opt, shared_); });
  EXPECT_TRUE(st.ok()) << st.status().ToString();
  server_t_ = std::move(*st);
  auto ct = On(*client_w_, [&]() { return kind.make(client_w_->scheduler(), *pool_, opt, shared_); });
  EXPECT_TRUE(ct.ok()) << ct.status().ToString();
  client_t_ = std::move(*ct);
}

void Env::Listen() {
  auto l = On(*server_w_, [&]() { return server_t_->Listen(kind.listen_uri); });
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  listener_ = std::move(*l);
}

Result<std::unique_ptr<Connection>> Env::ConnectClient() {
  const std::string uri = listener_->uri();
  return On(*client_w_, [&]() { return client_t_->Connect(uri); });
}

void Env::ConnectPair() {
  if (!listener_) Listen();
  ASSERT_TRUE(listener_);
  auto accepted = coro::Async(server_w_->scheduler(), [&]() { return listener_->Accept(); });
  auto c = ConnectClient();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  client_c_ = std::move(*c);
  auto s = accepted.WaitFor(std::chrono::seconds(10));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  server_c_ = std::move(*s);
}

void Env::DropConnections() {
  if (client_c_) On(*client_w_, [&]() { client_c_.reset(); });
  if (server_c_) On(*server_w_, [&]() { server_c_.reset(); });
}

Env::~Env() {
  DropConnections();
  if (listener_) On(*server_w_, [&]() { listener_.reset(); });
  if (client_t_) On(*client_w_, [&]() { client_t_.reset(); });
  if (server_t_) On(*server_w_, [&]() { server_t_.reset(); });
  // Let posted wire coroutines (loopback) run out before the workers stop.
  On(*client_w_, [] { coro::this_coro::SleepFor(std::chrono::milliseconds(5)); });
  On(*server_w_, [] { coro::this_coro::SleepFor(std::chrono::milliseconds(5)); });
  client_w_.reset();
  server_w_.reset();
  shared_.reset();
  pool_.reset();
}

mempool::Buffer Filled(mempool::Pool& pool, size_t n, uint32_t seed) {
  auto b = pool.Allocate(n);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (!b.ok()) return {};
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  char* p = b->data();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<char>(seed + i);
  return std::move(*b);
}

}  // namespace hrpc::transport::testing
