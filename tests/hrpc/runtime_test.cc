// The process-wide Runtime: many servers and channels on one set of workers,
// pools and registrations; shared connections; calls from handlers; lifetime.
#include <dirent.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/groups/group.h"
#include "hrpc/groups/topology.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "rpc_test_util.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::StatusCode;
using rpctest::Req;
using rpctest::Resp;

size_t ThreadsInProcess() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.' ? 1 : 0;
  closedir(d);
  return n;
}

// The count once it is `n` or fewer, waiting up to 2 s for it: a thread that
// was joined may still be listed for a moment.
size_t ThreadsInProcessOnceAtMost(size_t n) {
  for (int i = 0; i < 200 && ThreadsInProcess() > n; ++i) std::this_thread::sleep_for(10ms);
  return ThreadsInProcess();
}

// One call of `text` through `channel`; OK only when the echo came back.
hrpc::Status Ping(hrpc::Channel* channel, const std::string& text) {
  rpctest::Test::Stub stub(channel);
  ClientContext ctx;
  ctx.set_timeout(10s);
  Req req;
  req.set_text(text);
  Resp resp;
  HRPC_TRY(stub.Call(ctx, req, &resp));
  if (resp.text() != text) return hrpc::DataLossError("echo of '" + text + "' came back as '" + resp.text() + "'");
  return hrpc::Status::Ok();
}

std::unique_ptr<hrpc::Runtime> MakeRuntime(size_t workers, std::chrono::milliseconds idle = 60s) {
  hrpc::RuntimeOptions o;
  o.workers = workers;
  o.transport_choice = hrpc::TransportChoice::kTcp;
  o.idle_timeout = idle;
  auto rt = hrpc::Runtime::Create(o);
  EXPECT_TRUE(rt.ok()) << rt.status().ToString();
  return rt.ok() ? std::move(*rt) : nullptr;
}

std::unique_ptr<hrpc::Server> StartServer(hrpc::Runtime& rt, hrpc::Service* service, std::string* uri) {
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  auto s = hrpc::Server::Create(rt, so);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok()) return nullptr;
  EXPECT_TRUE((*s)->RegisterService(service).ok());
  auto st = (*s)->Start();
  EXPECT_TRUE(st.ok()) << st.ToString();
  const std::string bound = (*s)->listen_uris().at(0);
  *uri = "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1);
  return std::move(*s);
}

// A runtime with one TestService server on it.
struct Served {
  std::unique_ptr<hrpc::Runtime> rt;
  rpctest::TestService service;
  std::string uri;
  std::unique_ptr<hrpc::Server> server;
  explicit Served(size_t workers, std::chrono::milliseconds idle = 60s) : rt(MakeRuntime(workers, idle)) {
    if (rt) server = StartServer(*rt, &service, &uri);
  }
  bool ok() const { return rt != nullptr && server != nullptr; }
};

// 10,000 channels to 200 servers in one process: no thread per channel or
// server, one registration per arena, every channel makes a call.
TEST(Runtime, TenThousandChannelsToTwoHundredServers) {
  constexpr size_t kServers = 200;
  constexpr size_t kChannels = 10'000;
  auto rt = MakeRuntime(2);
  ASSERT_NE(rt, nullptr);
  const size_t threads_at_start = ThreadsInProcess();
  rpctest::TestService service;
  std::vector<std::unique_ptr<hrpc::Server>> servers;
  std::vector<std::string> uris(kServers);
  for (size_t i = 0; i < kServers; ++i) {
    servers.push_back(StartServer(*rt, &service, &uris[i]));
    ASSERT_NE(servers.back(), nullptr);
  }
  std::vector<std::unique_ptr<hrpc::RpcChannel>> channels;
  channels.reserve(kChannels);
  for (size_t i = 0; i < kChannels; ++i) {
    auto c = hrpc::RpcChannel::Create(*rt, uris[i % kServers]);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channels.push_back(std::move(*c));
  }
  EXPECT_EQ(ThreadsInProcess(), threads_at_start) << "servers and channels must start no thread";
  EXPECT_EQ(rt->stats().client_connections, 0u) << "creating a channel must not connect";

  // Every channel makes one call, 256 in flight at a time.
  struct One {
    ClientContext ctx;
    Req req;
    Resp resp;
  };
  std::vector<std::unique_ptr<One>> calls(kChannels);
  std::atomic<size_t> ok{0}, failed{0};
  hrpc::coro::Semaphore window(256);
  hrpc::coro::WaitGroup wg;
  for (size_t i = 0; i < kChannels; ++i) {
    window.Acquire();
    calls[i] = std::make_unique<One>();
    calls[i]->req.set_text(std::to_string(i));
    wg.Add(1);
    rpctest::Test::Stub stub(channels[i].get());
    One* one = calls[i].get();
    stub.CallAsync(one->ctx, one->req, &one->resp, [&, one](hrpc::Status s) {
      (s.ok() && one->resp.text() == one->req.text() ? ok : failed).fetch_add(1);
      window.Release();
      wg.Done();
    });
  }
  ASSERT_TRUE(wg.WaitFor(120s).ok());
  EXPECT_EQ(ok.load(), kChannels);
  EXPECT_EQ(failed.load(), 0u);
  EXPECT_EQ(service.calls.load(), static_cast<int>(kChannels));

  const hrpc::RuntimeStats st = rt->stats();
  EXPECT_EQ(st.threads_started, 2u);
  EXPECT_EQ(ThreadsInProcess(), threads_at_start);
  EXPECT_EQ(st.servers, kServers);
  EXPECT_EQ(st.channels, kChannels);
  EXPECT_EQ(st.pools, 1u);
  EXPECT_EQ(st.tcp_registrations, 1u);
  EXPECT_EQ(rt->pool(0).num_registrars(), 1u) << "each arena registered once, whatever the channel count";
  EXPECT_EQ(st.transports, 2u) << "one tcp transport per worker";
  // Channels to one server share each worker's connection to it.
  EXPECT_LE(st.client_connections, kServers * 2);
  EXPECT_GE(st.client_connections, kServers);
  std::printf("runtime_test servers=%zu channels=%zu threads=%zu workers=%zu client_connections=%zu "
              "registrars_per_arena=%zu tcp_registrations=%zu\n",
              kServers, kChannels, ThreadsInProcess(), st.workers, st.client_connections,
              rt->pool(0).num_registrars(), st.tcp_registrations);
  channels.clear();
  servers.clear();
}

// Two channels to one peer share the worker's connection.
TEST(Runtime, ChannelsToOnePeerShareTheConnection) {
  Served env(1);
  ASSERT_TRUE(env.ok());
  auto a = hrpc::RpcChannel::Create(*env.rt, env.uri);
  auto b = hrpc::RpcChannel::Create(*env.rt, env.uri);
  ASSERT_TRUE(a.ok() && b.ok());
  for (auto* ch : {a->get(), b->get(), a->get()}) ASSERT_TRUE(Ping(ch, "x").ok());
  EXPECT_EQ(env.rt->stats().client_connections, 1u);
  EXPECT_EQ(env.server->num_connections(), 1u);
  // Client stats are the runtime's: both channels' calls.
  EXPECT_EQ((*a)->Stats().at(0).count, 3u);
}

// A handler that calls a second server through a channel of the same runtime
// stays on its worker's thread, and forwards the attachment it pulled without
// copying a byte.
TEST(Runtime, HandlerCallsAnotherServerOnItsOwnThreadAndForwardsWithoutCopy) {
  auto rt = MakeRuntime(2);
  ASSERT_NE(rt, nullptr);
  rpctest::TestService backend_service;
  std::string backend_uri, front_uri;
  auto backend = StartServer(*rt, &backend_service, &backend_uri);
  ASSERT_NE(backend, nullptr);
  auto to_backend = hrpc::RpcChannel::Create(*rt, backend_uri);
  ASSERT_TRUE(to_backend.ok());
  rpctest::ForwardService front_service;
  front_service.backend = to_backend->get();
  front_service.runtime = rt.get();
  auto front = StartServer(*rt, &front_service, &front_uri);
  ASSERT_NE(front, nullptr);

  // The client: a standalone channel (its own small runtime).
  auto client = hrpc::RpcChannel::Create(front_uri);
  ASSERT_TRUE(client.ok());
  rpctest::Test::Stub stub(client->get());
  constexpr size_t kPayload = 1u << 20;
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    ctx.request_attachment() = rpctest::MakePayload((*client)->pool(), kPayload, 40 + i);
    const uint32_t crc = ctx.request_attachment().Crc32c();
    Req req;
    req.set_text("r" + std::to_string(i));
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.text(), "fwd:r" + std::to_string(i));
    EXPECT_EQ(resp.attachment_bytes(), kPayload);
    EXPECT_EQ(resp.attachment_crc32c(), crc);
    EXPECT_EQ(front_service.copied.load(), 0u) << "a pulled payload goes out again without a copy";
  }
  EXPECT_EQ(front_service.same_thread.load(), 4);
  EXPECT_EQ(front_service.other_thread.load(), 0);
  // The client's one connection landed on one worker; every forward left
  // from that worker, over its own connection to the backend, and no other
  // worker connected to the backend.
  const int w = front_service.worker.load();
  ASSERT_GE(w, 0);
  const hrpc::RuntimeStats st = rt->stats();
  ASSERT_EQ(st.client_connections_per_worker.size(), 2u);
  EXPECT_EQ(st.client_connections_per_worker[static_cast<size_t>(w)], 1u);
  EXPECT_EQ(st.client_connections_per_worker[1 - static_cast<size_t>(w)], 0u);
  EXPECT_EQ(backend_service.calls.load(), 4);
  EXPECT_EQ(rt->pool(0).num_registrars(), 1u);
}

// Destroying a channel with calls in flight ends them with CANCELLED; the
// runtime and its other channels keep working.
TEST(Runtime, DestroyingAChannelWithCallsInFlight) {
  Served env(2);
  ASSERT_TRUE(env.ok());
  auto doomed = hrpc::RpcChannel::Create(*env.rt, env.uri);
  auto other = hrpc::RpcChannel::Create(*env.rt, env.uri);
  ASSERT_TRUE(doomed.ok() && other.ok());
  constexpr int kCalls = 16;
  struct One {
    ClientContext ctx;
    Req req;
    Resp resp;
    hrpc::Status status;
  };
  std::vector<One> calls(kCalls);
  std::atomic<int> done{0};
  rpctest::Test::Stub stub(doomed->get());
  for (auto& c : calls) {
    c.req.set_sleep_ms(2000);
    stub.CallAsync(c.ctx, c.req, &c.resp, [&c, &done](hrpc::Status s) {
      c.status = std::move(s);
      done.fetch_add(1);
    });
  }
  for (int i = 0; i < 2000 && env.service.running.load() < kCalls; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(env.service.running.load(), kCalls);
  const auto t0 = std::chrono::steady_clock::now();
  doomed->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s) << "destruction must not wait for the handlers";
  EXPECT_EQ(done.load(), kCalls);
  for (auto& c : calls) EXPECT_EQ(c.status.code(), StatusCode::kCancelled) << c.status.ToString();

  auto s = Ping(other->get(), "still here");
  EXPECT_TRUE(s.ok()) << s.ToString();
}

// The Runtime object may go before its servers and channels: they keep its
// workers alive, and the last of them stops them.
TEST(Runtime, RuntimeDestroyedBeforeItsServerAndChannels) {
  Served env(2);
  ASSERT_TRUE(env.ok());
  auto channel = hrpc::RpcChannel::Create(*env.rt, env.uri);
  ASSERT_TRUE(channel.ok());
  const size_t threads_with_runtime = ThreadsInProcess();
  env.rt.reset();
  auto s = Ping(channel->get(), "after");
  ASSERT_TRUE(s.ok()) << s.ToString();
  env.server.reset();
  EXPECT_EQ(ThreadsInProcess(), threads_with_runtime);
  channel->reset();  // the last user: stops the two workers
  EXPECT_EQ(ThreadsInProcessOnceAtMost(threads_with_runtime - 2), threads_with_runtime - 2);
}

void FailExitIfThreadsRemain() {
  const size_t threads = ThreadsInProcessOnceAtMost(1);
  if (threads != 1) {
    std::fprintf(stderr, "%zu threads still run at exit\n", threads);
    std::_Exit(3);
  }
}

// The last reference to a runtime dropped on one of its own workers (a stream
// ending after its channel): another thread stops it, and exit() waits for
// that, so no worker still runs while static objects are destroyed.
TEST(RuntimeDeathTest, RuntimeReleasedOnItsOwnWorkerIsStoppedBeforeExit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::atexit(&FailExitIfThreadsRemain);  // runs after the handlers registered later
        std::unique_ptr<hrpc::Runtime> rt = MakeRuntime(2);
        if (rt == nullptr) std::_Exit(4);
        std::atomic<bool> released{false};
        rt->scheduler(0).Post([&] {
          rt.reset();
          released.store(true);
        });
        while (!released.load()) std::this_thread::sleep_for(1ms);
        std::exit(0);
      },
      testing::ExitedWithCode(0), "");
}

// An idle connection is closed after idle_timeout; the next call reconnects.
TEST(Runtime, IdleConnectionsAreClosedAndReplaced) {
  Served env(1, 100ms);
  ASSERT_TRUE(env.ok());
  auto channel = hrpc::RpcChannel::Create(*env.rt, env.uri);
  ASSERT_TRUE(channel.ok());
  auto call = [&] { return Ping(channel->get(), "ping"); };
  // Connections made so far (the connection itself may already be closed
  // again when a descheduled test thread looks).
  auto connects = [&] {
    const std::string text = env.rt->MetricsText();
    double sum = 0;
    for (size_t at = text.find("\nhrpc_client_connects_total{"); at != std::string::npos;
         at = text.find("\nhrpc_client_connects_total{", at + 1)) {
      sum += std::stod(text.substr(text.find("} ", at) + 2));
    }
    return sum;
  };
  ASSERT_TRUE(call().ok());
  EXPECT_EQ(connects(), 1);
  for (int i = 0; i < 400 && env.rt->stats().client_connections > 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(env.rt->stats().client_connections, 0u) << "idle connection not closed";
  for (int i = 0; i < 400 && env.server->num_connections() > 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(env.server->num_connections(), 0u);
  ASSERT_TRUE(call().ok());
  EXPECT_EQ(connects(), 2) << "the second call did not make a new connection";
  EXPECT_EQ(env.service.calls.load(), 2);
}

// A connection that failed (server gone) is replaced by the next call once a
// server listens again.
TEST(Runtime, DeadConnectionIsReplacedOnTheNextCall) {
  Served env(1);
  ASSERT_TRUE(env.ok());
  auto channel = hrpc::RpcChannel::Create(*env.rt, env.uri);
  ASSERT_TRUE(channel.ok());
  auto call = [&] { return Ping(channel->get(), "ping"); };
  ASSERT_TRUE(call().ok());
  const std::string port = env.uri.substr(env.uri.rfind(':') + 1);
  env.server.reset();
  for (int i = 0; i < 200 && env.rt->stats().client_connections > 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(env.rt->stats().client_connections, 0u);
  EXPECT_EQ(call().code(), StatusCode::kUnavailable);
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:" + port};
  auto again = hrpc::Server::Create(*env.rt, so);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->RegisterService(&env.service).ok());
  auto st = (*again)->Start();
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto s = call();
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// NUMA placement on a synthetic two-node topology (node0 = cpu 0, node1 =
// cpu 1): the runtime spreads business instances over the groups, a server
// listens on every group, and what a call allocates comes from the pool of the
// group whose worker serves it.
TEST(Runtime, PlacementOnTwoNumaNodes) {
  auto topo = hrpc::groups::Topology::FromXml(HRPC_TEST_TWO_NODE_XML);
  ASSERT_TRUE(topo.ok()) << topo.status().ToString();
  hrpc::groups::GroupOptions go;
  go.workers_per_group = 1;
  go.pool.grow = true;
  go.pool.prefault = false;
  auto groups = hrpc::groups::NetworkGroups::Create(*topo, go);
  if (!groups.ok()) GTEST_SKIP() << "cannot pin workers to cpus 0 and 1: " << groups.status().ToString();
  ASSERT_EQ((*groups)->size(), 2u);
  {
    hrpc::RuntimeOptions o;
    o.groups = groups->get();
    o.transport_choice = hrpc::TransportChoice::kTcp;
    auto rt = hrpc::Runtime::Create(o);
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    hrpc::Runtime& r = **rt;
    ASSERT_EQ(r.num_groups(), 2u);
    EXPECT_EQ(r.SpreadInstances(5), (std::vector<int>{0, 1, 0, 1, 0}));
    EXPECT_EQ(r.workers_of_group(1), (std::vector<size_t>{1}));
    EXPECT_NE(&r.pool(0), &r.pool(1));
    EXPECT_EQ(r.stats().threads_started, 0u) << "the groups' workers are borrowed";

    // The server's pools per worker, as handlers see them.
    rpctest::TestService service;
    std::string uri;
    auto server = StartServer(r, &service, &uri);
    ASSERT_NE(server, nullptr);
    EXPECT_EQ(&server->pool(0), &r.pool(0));
    EXPECT_EQ(&server->pool(1), &r.pool(1));

    // One channel per instance, each called from a coroutine on a worker of
    // the instance's group: the request attachment is allocated from that
    // group's pool and goes out uncopied; the server's handler pulls it into
    // the pool of the group whose worker accepted the connection.
    auto channel = hrpc::RpcChannel::Create(r, uri);
    ASSERT_TRUE(channel.ok());
    service.check_slot = 0;  // the runtime's tcp key table is each pool's first registrar
    const std::vector<int> placement = r.SpreadInstances(2);
    for (size_t inst = 0; inst < placement.size(); ++inst) {
      const size_t w = r.workers_of_group(static_cast<size_t>(placement[inst])).at(0);
      auto fut = hrpc::coro::Async(r.scheduler(w), [&, w]() -> hrpc::Status {
        EXPECT_EQ(r.CurrentWorker(), static_cast<int>(w));
        const uint64_t copied_before = hrpc::mempool::CopiedBytesTotal();
        rpctest::Test::Stub stub(channel->get());
        for (int i = 0; i < 3; ++i) {
          ClientContext ctx;
          ctx.request_attachment() = rpctest::MakePayload(r.pool(w), 256 * 1024, 9);
          Req req;
          req.set_text("inst");
          Resp resp;
          HRPC_TRY(stub.Call(ctx, req, &resp));
          EXPECT_EQ(resp.attachment_bytes(), 256u * 1024);
        }
        EXPECT_EQ(hrpc::mempool::CopiedBytesTotal() - copied_before, 0u) << "no cross-group copy on worker " << w;
        EXPECT_EQ(r.CurrentWorker(), static_cast<int>(w));
        return hrpc::Status::Ok();
      });
      auto s = fut.Get();
      ASSERT_TRUE(s.ok()) << s.ToString();
      hrpc::mempool::Pool* seen = service.seen_pool.load();
      EXPECT_TRUE(seen == &r.pool(0) || seen == &r.pool(1));
    }
    EXPECT_EQ(service.slices_in_pool.load(), service.slices_total.load())
        << "every pulled slice lies in the serving worker's pool";
    EXPECT_GT(service.slices_total.load(), 0);
    // Each group's pool holds exactly one TCP registration.
    EXPECT_EQ(r.pool(0).num_registrars(), 1u);
    EXPECT_EQ(r.pool(1).num_registrars(), 1u);
    EXPECT_EQ(r.stats().tcp_registrations, 2u);
    channel->reset();
    server.reset();
  }
}

// A worker that cannot start (its cpu is out of range) fails Create with that
// error; the workers already started are stopped without touching the
// client tables they were never given.
TEST(Runtime, AWorkerThatCannotStartFailsCreate) {
  hrpc::RuntimeOptions o;
  o.name = "badcpu";
  o.workers = 2;
  o.cpus = {-1, 1 << 20};
  auto rt = hrpc::Runtime::Create(o);
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().code(), hrpc::StatusCode::kInvalidArgument) << rt.status().ToString();
}

// A one-line channel and server still work and bring their own small runtime.
TEST(Runtime, StandaloneServerAndChannel) {
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  const size_t before = ThreadsInProcess();
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok());
  rpctest::TestService service;
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  const std::string bound = (*server)->listen_uris().at(0);
  auto channel = hrpc::RpcChannel::Create("tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1));
  ASSERT_TRUE(channel.ok());
  EXPECT_EQ(ThreadsInProcess(), before + 2);
  EXPECT_TRUE(Ping(channel->get(), "one line").ok());
}

TEST(Runtime, TransportChoiceFromTheEnvironmentOnly) {
  ::setenv("HRPC_TRANSPORT", "tcp", 1);
  EXPECT_EQ(hrpc::RuntimeOptions::FromEnv().transport_choice, hrpc::TransportChoice::kTcp);
  EXPECT_EQ(hrpc::RuntimeOptions{}.transport_choice, hrpc::TransportChoice::kAuto);
  ::setenv("HRPC_TRANSPORT", "bogus", 1);
  EXPECT_EQ(hrpc::RuntimeOptions::FromEnv().transport_choice, hrpc::TransportChoice::kAuto);
  ::unsetenv("HRPC_TRANSPORT");
  EXPECT_EQ(hrpc::RuntimeOptions::FromEnv().transport_choice, hrpc::TransportChoice::kAuto);
}

}  // namespace
