// The RPC layer over the RDMA transport (label rdma): runs for real inside the
// Soft-RoCE guest (scripts/rdma-tests.sh); skips with the reason elsewhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "hrpc/mempool/copy.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "pool_level_util.h"
#include "rpc_test_util.h"
#include "shutdown_check.h"
#include "../transport/rdma_test_util.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::StatusCode;
using hrpc::transport::testing::RdmaSkipReason;
using hrpc::transport::testing::RdmaTestAddr;

struct RdmaEnv {
  rpctest::TestService service;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;

  // `scheme_less`: connect by "host:port" and let HRPC_TRANSPORT/auto pick rdma.
  void Start(bool scheme_less = false) {
    hrpc::ServerOptions so;
    so.listen = {"rdma://" + RdmaTestAddr() + ":0"};
    auto s = hrpc::Server::Create(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(*s);
    ASSERT_TRUE(server->RegisterService(&service).ok());
    auto st = server->Start();
    ASSERT_TRUE(st.ok()) << st.ToString();
    const std::string bound = server->listen_uris().at(0);
    const std::string port = bound.substr(bound.rfind(':') + 1);
    const std::string target = scheme_less ? RdmaTestAddr() + ":" + port : "rdma://" + RdmaTestAddr() + ":" + port;
    hrpc::RpcChannelOptions co;
    co.runtime.transport_choice = hrpc::TransportChoice::kAuto;
    auto c = hrpc::RpcChannel::Create(target, co);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channel = std::move(*c);
  }
  ~RdmaEnv() {
    server.reset();
    channel.reset();
  }
};

// The value of the series `series` (name{labels}, exactly as exported) in a
// Prometheus text exposition; -1 when absent.
double SeriesValue(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

class RpcRdmaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = RdmaSkipReason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

TEST_F(RpcRdmaTest, UnaryCallsAndErrors) {
  RdmaEnv env;
  env.Start(/*scheme_less=*/true);  // a device exists: auto picks rdma
  rpctest::Test::Stub stub(env.channel.get());
  for (int i = 0; i < 50; ++i) {
    ClientContext ctx;
    ctx.set_timeout(20s);
    rpctest::Req req;
    req.set_text("over verbs " + std::to_string(i));
    rpctest::Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.text(), req.text());
    EXPECT_EQ(std::string(ctx.peer()).rfind("rdma://", 0), 0u) << ctx.peer();
  }
  ClientContext ctx;
  rpctest::Req req;
  req.set_fail_code(static_cast<int>(StatusCode::kNotFound));
  req.set_fail_message("no such block");
  rpctest::Resp resp;
  auto s = stub.Call(ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no such block");
}

// Request attachments pulled by RDMA READ, responses pushed by RDMA WRITE,
// CRC-checked; page-multiple sizes move without a CPU copy.
TEST_F(RpcRdmaTest, BulkPullAndPush) {
  RdmaEnv env;
  env.Start();
  rpctest::Test::Stub stub(env.channel.get());
  ASSERT_TRUE(env.channel->Connect().ok());
  const std::vector<size_t> sizes = {0, 1, 4096, 64 * 1024, 1 << 20, 4 << 20};
  for (size_t n : sizes) {
    SCOPED_TRACE("size " + std::to_string(n));
    hrpc::mempool::IoBuf payload = rpctest::MakePayload(env.channel->pool(), n, static_cast<uint32_t>(n) + 11);
    ASSERT_EQ(payload.size(), n);
    const uint32_t crc = payload.Crc32c();
    ClientContext ctx;
    ctx.set_timeout(60s);
    ctx.request_attachment() = std::move(payload);
    ctx.set_response_attachment_capacity(n);
    rpctest::Req req;
    req.set_echo_attachment(true);
    rpctest::Resp resp;
    const uint64_t copied0 = hrpc::mempool::CopiedBytesTotal();
    auto s = stub.Call(ctx, req, &resp);
    const uint64_t copied = hrpc::mempool::CopiedBytesTotal() - copied0;
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.attachment_bytes(), n);
    EXPECT_EQ(resp.attachment_crc32c(), crc);
    EXPECT_EQ(ctx.response_attachment().Crc32c(), crc);
    if (n >= 64 * 1024) {
      EXPECT_EQ(copied, 0u) << "payload bytes copied by the CPU";
    }
  }
  // The server's metrics saw it: requests pulled by READ, responses pushed
  // by WRITE (64 KiB, 1 MiB and 4 MiB ones at least), no failed completion.
  const std::string m = env.server->MetricsText();
  EXPECT_GE(SeriesValue(m, R"(hrpc_transport_one_sided_ops_total{transport="rdma",worker="0",op="read"})"), 3) << m;
  EXPECT_GE(SeriesValue(m, R"(hrpc_transport_one_sided_ops_total{transport="rdma",worker="0",op="write"})"), 3);
  EXPECT_GE(SeriesValue(m, R"(hrpc_transport_messages_total{transport="rdma",worker="0",direction="received"})"),
            static_cast<double>(sizes.size()));
  EXPECT_EQ(SeriesValue(m, R"(hrpc_transport_connections_opened_total{transport="rdma",worker="0",direction="in"})"), 1);
  EXPECT_EQ(SeriesValue(m, R"(hrpc_rdma_completion_errors_total{worker="0"})"), 0);
  EXPECT_NE(m.find("hrpc_rdma_hw_counter{device="), std::string::npos) << "no sysfs hw_counters of the device";
}

// Calls of every shape leave no pool block behind on either side: exposures
// revoked, memory windows invalidated, receive slots refilled.
TEST_F(RpcRdmaTest, CallsLeaveNoPoolBlocksBehind) {
  RdmaEnv env;
  env.Start();
  rpctest::Test::Stub stub(env.channel.get());
  rpctest::ExpectCallsLeaveNoPoolBlocks(stub, env.channel->pool(), env.server->pool(), env.service);
}

// A server that goes away and comes back at the same address: calls fail
// with UNAVAILABLE meanwhile and succeed again once it is back, on the same
// channel.
TEST_F(RpcRdmaTest, ServerRestartedAtTheSameAddressIsReachedAgain) {
  RdmaEnv env;
  env.Start();
  rpctest::Test::Stub stub(env.channel.get());
  auto call = [&](const std::string& text) {
    ClientContext ctx;
    ctx.set_timeout(20s);
    rpctest::Req req;
    req.set_text(text);
    rpctest::Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    if (s.ok() && resp.text() != text) return hrpc::Status(StatusCode::kDataLoss, "answered " + resp.text());
    return s;
  };
  ASSERT_TRUE(call("first life").ok());
  const std::string bound = env.server->listen_uris().at(0);
  env.server.reset();
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto s = call("while down");
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s) << "a call to a server that is gone waited";
  }
  hrpc::ServerOptions so;
  so.listen = {bound};
  auto s = rpctest::StartServer(&env.service, so);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  env.server = std::move(*s);
  auto again = call("second life");
  EXPECT_TRUE(again.ok()) << again.ToString();
}

// What Shutdown() owes a client whose worker has not taken its answer yet,
// over verbs.
TEST_F(RpcRdmaTest, ShutdownDeliversAnAnswerTheClientHasNotTakenYet) {
  RdmaEnv env;
  env.Start();
  rpctest::ExpectShutdownDeliversAnAnswerTheClientHasNotTakenYet(*env.server, *env.channel, env.service);
}

TEST_F(RpcRdmaTest, ManyConcurrentCalls) {
  RdmaEnv env;
  env.Start();
  rpctest::Test::Stub stub(env.channel.get());
  constexpr int kCalls = 200;
  struct Call {
    ClientContext ctx;
    rpctest::Req req;
    rpctest::Resp resp;
  };
  std::vector<std::unique_ptr<Call>> calls;
  hrpc::coro::WaitGroup wg;
  std::atomic<int> ok{0};
  wg.Add(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    auto c = std::make_unique<Call>();
    c->ctx.set_timeout(60s);
    c->req.set_text(std::to_string(i));
    Call* raw = c.get();
    calls.push_back(std::move(c));
    stub.CallAsync(raw->ctx, raw->req, &raw->resp, [&, raw, i](hrpc::Status s) {
      if (s.ok() && raw->resp.text() == std::to_string(i)) ok.fetch_add(1);
      wg.Done();
    });
  }
  ASSERT_TRUE(wg.WaitFor(120s).ok());
  EXPECT_EQ(ok.load(), kCalls);
}

// A deadline or a cancel that comes while the server READs a call's
// attachment ends that call only. The client keeps the memory exposed until
// the server answers (the server answers once its READs are over), so no READ
// meets a revoked memory window, which would NAK, fail the RC QP and with it
// every call on the connection. The calls in flight beside the doomed one on
// the same connection all succeed, and no completion fails.
TEST_F(RpcRdmaTest, DeadlineOrCancelDuringPullEndsOnlyThatCall) {
  rpctest::PullLaterService svc;
  hrpc::ServerOptions so;
  so.listen = {"rdma://" + RdmaTestAddr() + ":0"};
  so.auto_pull = false;
  so.bulk_chunk_bytes = 64 * 1024;  // many READs, one at a time: the pull takes a while
  so.bulk_window = 1;
  auto served = rpctest::StartServed(&svc, so, {}, "rdma://" + RdmaTestAddr());
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  auto& [server, channel] = *served;
  rpctest::Test::Stub stub(channel.get());
  hrpc::mempool::Pool& pool = channel->pool();
  constexpr size_t kDoomedBytes = 16u << 20;

  struct One {
    ClientContext ctx;
    rpctest::Req req;
    rpctest::Resp resp;
    uint32_t crc = 0;
    hrpc::Status status;
    hrpc::coro::Event done;
    std::chrono::steady_clock::duration took{};
  };
  auto start = [&](One& one, std::chrono::milliseconds timeout) {
    if (one.crc == 0) one.crc = one.ctx.request_attachment().Crc32c();
    one.ctx.set_timeout(timeout);  // after the CRC, which takes a while here
    const auto t0 = std::chrono::steady_clock::now();
    stub.CallAsync(one.ctx, one.req, &one.resp, [&one, t0](hrpc::Status s) {
      one.took = std::chrono::steady_clock::now() - t0;
      one.status = std::move(s);
      one.done.Set();
    });
  };
  auto wait_for = [](const std::atomic<int>& n, int want) {
    for (int i = 0; i < 20000 && n.load() < want; ++i) std::this_thread::sleep_for(1ms);
    return n.load() >= want;
  };

  // One doomed call alone: how long its pull (T) and the whole call (C) take
  // here, the shorter of two (the first also faults the pools' pages in).
  int64_t pull_ms = INT64_MAX, call_ms = INT64_MAX;  // T, C
  for (int round = 0; round < 2; ++round) {
    One one;
    one.ctx.request_attachment() = rpctest::MakePayload(pool, kDoomedBytes, 1);
    start(one, 60s);
    ASSERT_TRUE(one.done.WaitFor(60s).ok());
    ASSERT_TRUE(one.status.ok()) << one.status.ToString();
    ASSERT_EQ(one.resp.attachment_crc32c(), one.crc);
    pull_ms = std::min<int64_t>(pull_ms, std::max<int64_t>(svc.last_pull_ms.load(), 10));
    call_ms = std::min<int64_t>(call_ms, std::chrono::duration_cast<std::chrono::milliseconds>(one.took).count());
  }
  std::printf("one call with an %zu MiB attachment: %lld ms, of which the server's pull %lld ms\n", kDoomedBytes >> 20,
              static_cast<long long>(call_ms), static_cast<long long>(pull_ms));

  int cut_short = 0;
  for (const bool by_cancel : {true, false}) {
    SCOPED_TRACE(by_cancel ? "cancel" : "deadline");
    One doomed;
    doomed.ctx.request_attachment() = rpctest::MakePayload(pool, kDoomedBytes, 2);
    // Calls in flight beside it on the same connection: delayed handlers that
    // then pull attachments of their own (made now, started once the doomed
    // call's pull runs).
    constexpr int kBeside = 24;
    std::vector<std::unique_ptr<One>> beside;
    for (int i = 0; i < kBeside; ++i) {
      auto c = std::make_unique<One>();
      c->req.set_text(std::to_string(i));
      c->req.set_sleep_ms(static_cast<uint32_t>(pull_ms) * (1 + i % 4) / 4);
      c->ctx.request_attachment() = rpctest::MakePayload(pool, 128 * 1024, 100 + i);
      c->crc = c->ctx.request_attachment().Crc32c();
      beside.push_back(std::move(c));
    }
    const int cut0 = svc.pulls_cut_short.load();
    const int pulls0 = svc.pulls_started.load();
    // The deadline: the handler waits kDelay before it pulls; the deadline
    // passes T/2 after that, less what the request spent on its way.
    constexpr uint32_t kDelayMs = 300;
    doomed.req.set_sleep_ms(by_cancel ? 0 : kDelayMs);
    start(doomed, by_cancel ? 60s : std::chrono::milliseconds(kDelayMs + pull_ms / 2));
    ASSERT_TRUE(wait_for(svc.pulls_started, pulls0 + 1)) << "the doomed call's pull did not start";
    for (auto& c : beside) start(*c, 120s);
    if (by_cancel) {
      std::this_thread::sleep_for(std::chrono::milliseconds(pull_ms / 4));
      doomed.ctx.Cancel();
    }
    ASSERT_TRUE(doomed.done.WaitFor(60s).ok());
    EXPECT_EQ(doomed.status.code(), by_cancel ? StatusCode::kCancelled : StatusCode::kDeadlineExceeded)
        << doomed.status.ToString();
    for (auto& c : beside) {
      ASSERT_TRUE(c->done.WaitFor(120s).ok());
      EXPECT_TRUE(c->status.ok()) << "call " << c->req.text() << " beside the doomed one: " << c->status.ToString();
      EXPECT_EQ(c->resp.text(), c->req.text());
      EXPECT_EQ(c->resp.attachment_crc32c(), c->crc);
    }
    ASSERT_TRUE(wait_for(svc.pulls, pulls0 + 1 + kBeside));
    cut_short += svc.pulls_cut_short.load() - cut0;
    {
      std::lock_guard lock(svc.mu);
      for (const auto& f : svc.failures) std::printf("  server: %s\n", f.c_str());
      svc.failures.clear();
    }
    std::printf("  client: %s after %lld ms\n", doomed.status.ToString().c_str(),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(doomed.took).count()));
  }
  // The cancel lands inside the pull by construction; the deadline by aim.
  EXPECT_GE(cut_short, 1) << "no doomed pull was cut short with READs in flight: the test missed its case";
  // The same connection serves on.
  for (int i = 0; i < 5; ++i) {
    One one;
    one.ctx.request_attachment() = rpctest::MakePayload(pool, 1 << 20, 300 + i);
    start(one, 60s);
    ASSERT_TRUE(one.done.WaitFor(60s).ok());
    ASSERT_TRUE(one.status.ok()) << one.status.ToString();
    EXPECT_EQ(one.resp.attachment_crc32c(), one.crc);
  }
  const std::string m = server->MetricsText();
  EXPECT_EQ(SeriesValue(m, R"(hrpc_rdma_completion_errors_total{worker="0"})"), 0) << m;
  EXPECT_EQ(SeriesValue(m, R"(hrpc_transport_connections_opened_total{transport="rdma",worker="0",direction="in"})"), 1)
      << "the client reconnected: its connection failed";
  channel.reset();
  server.reset();
}

// Authentication runs over RDMA too (its first messages, after the rdmacm
// connection): the right secret is served, a wrong one gets UNAUTHENTICATED
// and is counted, and the server keeps serving.
TEST_F(RpcRdmaTest, SharedSecretAuthenticationOverRdma) {
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {"rdma://" + RdmaTestAddr() + ":0"};
  so.authenticator = hrpc::transport::MakeSharedSecretAuthenticator("rdma secret").value();
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  const std::string bound = (*server)->listen_uris().at(0);
  const std::string target = "rdma://" + RdmaTestAddr() + ":" + bound.substr(bound.rfind(':') + 1);
  auto call = [&](const std::string& secret) {
    hrpc::RpcChannelOptions co;
    co.runtime.authenticator = hrpc::transport::MakeSharedSecretAuthenticator(secret).value();
    auto ch = hrpc::RpcChannel::Create(target, co);
    if (!ch.ok()) return ch.status();
    rpctest::Test::Stub stub(ch->get());
    ClientContext ctx;
    ctx.set_timeout(20s);
    rpctest::Req req;
    req.set_text("authenticated");
    rpctest::Resp resp;
    return stub.Call(ctx, req, &resp);
  };
  const hrpc::Status wrong = call("not the secret");
  EXPECT_EQ(wrong.code(), StatusCode::kUnauthenticated) << wrong.ToString();
  EXPECT_EQ(service.calls.load(), 0);
  const hrpc::Status right = call("rdma secret");
  EXPECT_TRUE(right.ok()) << right.ToString();
  EXPECT_EQ(service.calls.load(), 1);
  const std::string m = (*server)->MetricsText();
  EXPECT_EQ(SeriesValue(m, "hrpc_server_auth_failures_total{authenticator=\"hmac-sha256\"}"), 1) << m;
  EXPECT_EQ(SeriesValue(m, "hrpc_server_authenticated_total{authenticator=\"hmac-sha256\"}"), 1);
}

}  // namespace

std::unique_ptr<hrpc::Runtime> RdmaRuntime(size_t workers) {
  hrpc::RuntimeOptions ro;
  ro.workers = workers;
  ro.transport_choice = hrpc::TransportChoice::kRdma;
  auto rt = hrpc::Runtime::Create(ro);
  EXPECT_TRUE(rt.ok()) << rt.status().ToString();
  return rt.ok() ? std::move(*rt) : nullptr;
}

// A server for `svc` on `rt`, listening on the device's address; *uri is where to call it.
std::unique_ptr<hrpc::Server> StartRdmaServer(hrpc::Runtime& rt, hrpc::Service* svc, std::string* uri) {
  hrpc::ServerOptions so;
  so.listen = {"rdma://" + RdmaTestAddr() + ":0"};
  auto s = hrpc::Server::Create(rt, so);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  if (!s.ok() || !(*s)->RegisterService(svc).ok()) return nullptr;
  auto st = (*s)->Start();
  EXPECT_TRUE(st.ok()) << st.ToString();
  const std::string bound = (*s)->listen_uris().at(0);
  *uri = "rdma://" + RdmaTestAddr() + ":" + bound.substr(bound.rfind(':') + 1);
  return std::move(*s);
}

// Many channels on one runtime over RDMA: one RdmaDomain and one ibv_reg_mr
// per arena however many channels; connections shared per worker and peer.
TEST_F(RpcRdmaTest, RuntimeManyChannelsOneDomainOneRegistrationPerArena) {
  auto rt = RdmaRuntime(2);
  ASSERT_NE(rt, nullptr);
  constexpr size_t kServers = 4, kChannels = 200;
  rpctest::TestService service;
  std::vector<std::unique_ptr<hrpc::Server>> servers;
  std::vector<std::string> uris(kServers);
  for (size_t i = 0; i < kServers; ++i) {
    servers.push_back(StartRdmaServer(*rt, &service, &uris[i]));
    ASSERT_NE(servers.back(), nullptr);
  }
  std::vector<std::unique_ptr<hrpc::RpcChannel>> channels;
  for (size_t i = 0; i < kChannels; ++i) {
    auto c = hrpc::RpcChannel::Create(*rt, uris[i % kServers]);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channels.push_back(std::move(*c));
  }
  for (size_t i = 0; i < kChannels; ++i) {
    rpctest::Test::Stub stub(channels[i].get());
    ClientContext ctx;
    ctx.set_timeout(30s);
    rpctest::Req req;
    req.set_text(std::to_string(i));
    rpctest::Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.text(), req.text());
  }
  const hrpc::RuntimeStats st = rt->stats();
  EXPECT_EQ(st.rdma_domains, 1u);
  EXPECT_EQ(st.tcp_registrations, 0u);
  EXPECT_EQ(rt->pool(0).num_registrars(), 1u) << "one ibv_reg_mr per arena";
  EXPECT_EQ(st.threads_started, 2u);
  EXPECT_EQ(st.transports, 2u);
  EXPECT_LE(st.client_connections, kServers * 2);
  std::printf("rpc_rdma_test channels=%zu servers=%zu client_connections=%zu rdma_domains=%zu registrars_per_arena=%zu\n",
              kChannels, kServers, st.client_connections, st.rdma_domains, rt->pool(0).num_registrars());
  channels.clear();
  servers.clear();
}

// A handler forwards the 1 MiB it pulled by RDMA READ to a second server from
// its own worker: the backend pulls it straight from the same slabs.
TEST_F(RpcRdmaTest, RuntimeHandlerForwardsPulledPayloadWithoutCopy) {
  auto rt = RdmaRuntime(1);
  ASSERT_NE(rt, nullptr);
  rpctest::TestService backend_service;
  std::string backend_uri, front_uri;
  auto backend = StartRdmaServer(*rt, &backend_service, &backend_uri);
  ASSERT_NE(backend, nullptr);
  auto to_backend = hrpc::RpcChannel::Create(*rt, backend_uri);
  ASSERT_TRUE(to_backend.ok());
  rpctest::ForwardService front_service;
  front_service.backend = to_backend->get();
  front_service.runtime = rt.get();
  auto front = StartRdmaServer(*rt, &front_service, &front_uri);
  ASSERT_NE(front, nullptr);
  auto client = hrpc::RpcChannel::Create(*rt, front_uri);
  ASSERT_TRUE(client.ok());
  rpctest::Test::Stub stub(client->get());
  ClientContext ctx;
  ctx.set_timeout(60s);
  ctx.request_attachment() = rpctest::MakePayload(rt->pool(0), 1u << 20, 5);
  const uint32_t crc = ctx.request_attachment().Crc32c();
  rpctest::Req req;
  req.set_text("r");
  rpctest::Resp resp;
  auto s = stub.Call(ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.attachment_bytes(), 1u << 20);
  EXPECT_EQ(resp.attachment_crc32c(), crc);
  EXPECT_EQ(front_service.copied.load(), 0u);
  EXPECT_EQ(front_service.same_thread.load(), 1);
  EXPECT_EQ(rt->stats().rdma_domains, 1u);
  client->reset();
  to_backend->reset();
  front.reset();
  backend.reset();
}
