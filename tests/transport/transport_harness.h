// Test harness shared by the transport tests: which transports exist, and an
// environment of one pool + a server and a client worker each with its own
// transport instance.
//
// Adding a transport to the conformance suite: provide a TransportKind (a
// factory plus what the transport can do) and instantiate the suite with it,
// e.g. in rdma_conformance.cc:
//   INSTANTIATE_TEST_SUITE_P(Rdma, Conformance, ::testing::Values(RdmaKind()), KindName);
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include <sys/types.h>

#include <gtest/gtest.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport::testing {

template <class T>
struct IsResult : std::false_type {};
template <class T>
struct IsResult<Result<T>> : std::true_type {};

struct TransportKind {
  std::string name;        // gtest parameter name: "loopback", "tcp"
  std::string listen_uri;  // where a test server listens ("tcp://127.0.0.1:0")
  // Makes one transport on `sched` (called on that worker's thread). `shared`
  // is per-environment state the kind may keep (the loopback network).
  std::function<Result<std::unique_ptr<Transport>>(coro::Scheduler& sched, mempool::Pool& pool,
                                                   const TransportOptions& opt, std::shared_ptr<void>& shared)>
      make;
  // The peer can be a forked+exec'd child process. What the transport itself
  // does differently (refusals, copies, faults) comes from
  // Transport::capabilities(), not from here.
  bool multi_process = false;
};

// gtest prints a parameter with this (ctest names show "GetParam() = tcp", not a byte dump).
inline void PrintTo(const TransportKind& k, std::ostream* os) { *os << k.name; }

TransportKind LoopbackKind();
TransportKind TcpKind();
// Every kind linked into this binary (for the child-process mode of the
// PeerProcess suite): loopback and tcp, plus any added with RegisterKind()
// (call it during static initialization, e.g.
//   [[maybe_unused]] static const bool kReg = (RegisterKind(RdmaKind()), true);
// then one INSTANTIATE_TEST_SUITE_P(Rdma, PeerProcess, ...) line).
const TransportKind* FindKind(const std::string& name);
void RegisterKind(const TransportKind& kind);
std::string KindName(const ::testing::TestParamInfo<TransportKind>& info);

// A pool big enough for two 64 MiB blocks; no prefault (fast under ASan).
std::unique_ptr<mempool::Pool> MakeTestPool(size_t arena_bytes = 256u << 20, size_t max_class = 64u << 20);

// Short timeouts so failure tests finish quickly.
TransportOptions TestOptions();
// TestOptions() with a 1 s dead-peer timeout, for the tests that wait for it.
TransportOptions FastDeadPeerOptions();

// Runs fn as a coroutine on `w` and blocks the calling (test) thread for its result.
// void -> void (a coroutine failure is a test failure); a plain T -> T;
// Status / Result<T> -> as returned.
template <class F>
auto On(coro::Worker& w, F&& fn) {
  using R = std::invoke_result_t<std::decay_t<F>&>;
  auto got = coro::Async(w.scheduler(), std::forward<F>(fn)).Get();
  if constexpr (std::is_void_v<R>) {
    EXPECT_TRUE(got.ok()) << got.ToString();
  } else if constexpr (std::is_same_v<R, Status> || IsResult<R>::value) {
    return got;
  } else {
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    return std::move(got).value();
  }
}

class Env {
 public:
  Env(const TransportKind& kind, TransportOptions opt = TestOptions());
  ~Env();

  // Listens on the server, connects from the client, accepts. Fatal on error.
  void ConnectPair();
  mempool::Pool& pool() { return *pool_; }
  coro::Worker& server_worker() { return *server_w_; }
  coro::Worker& client_worker() { return *client_w_; }
  Transport& server_transport() { return *server_t_; }
  Transport& client_transport() { return *client_t_; }
  Listener& listener() { return *listener_; }
  Connection& server() { return *server_c_; }
  Connection& client() { return *client_c_; }
  // Connection objects must be destroyed on their worker.
  void DropConnections();
  void Listen();
  Result<std::unique_ptr<Connection>> ConnectClient();

  const TransportKind kind;

 private:
  std::unique_ptr<mempool::Pool> pool_;
  std::unique_ptr<coro::Worker> server_w_, client_w_;
  std::shared_ptr<void> shared_;
  std::unique_ptr<Transport> server_t_, client_t_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<Connection> server_c_, client_c_;
};

// Forks and execs a fresh copy of this test binary running only `gtest_filter`,
// with `env_name=env_value` added to the environment (a peer process for the
// tests that kill or stop their peer). The child dies with its parent.
pid_t SpawnTestChild(const std::string& env_name, const std::string& env_value, const std::string& gtest_filter);
// Kills and reaps a child from SpawnTestChild. A child that had already
// exited with a non-zero code (its own test failed: the reason is in its
// output) fails the calling test.
void ReapTestChild(pid_t pid);
// How a peer process ends: exit code 1 when its test body failed, else 0
// (skipping gtest's teardown), so ReapTestChild can report it.
[[noreturn]] void ExitTestChild();

// A buffer of n bytes filled with a pattern derived from seed.
mempool::Buffer Filled(mempool::Pool& pool, size_t n, uint32_t seed);

}  // namespace hrpc::transport::testing
