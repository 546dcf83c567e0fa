// Per-connection quotas of the server (ServerOptions::max_requests_per_connection
// and max_request_bytes_per_connection) over loop:// and tcp://127.0.0.1: a
// greedy client with many large concurrent calls waits for its connection's
// quota, a polite client on another connection is served meanwhile, the
// server's pool never runs dry, and every call completes intact.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "hrpc/transport/loopback.h"
#include "rpc_test_util.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using rpctest::Req;
using rpctest::Resp;

constexpr size_t kMiB = 1u << 20;

size_t PoolFailures(hrpc::mempool::Pool& pool) {
  size_t n = 0;
  for (const auto& c : pool.Stats()) n += c.failures;
  return n;
}

struct Client {
  std::unique_ptr<hrpc::Runtime> runtime;
  std::unique_ptr<hrpc::RpcChannel> channel;
};

Client Connect(const std::string& uri, const std::shared_ptr<hrpc::transport::LoopbackNetwork>& net) {
  Client c;
  hrpc::RuntimeOptions ro;
  ro.loopback = net;
  auto rt = hrpc::Runtime::Create(ro);
  EXPECT_TRUE(rt.ok()) << rt.status().ToString();
  c.runtime = std::move(*rt);
  auto ch = hrpc::RpcChannel::Create(*c.runtime, uri);
  EXPECT_TRUE(ch.ok()) << ch.status().ToString();
  c.channel = std::move(*ch);
  return c;
}

class RpcQuota : public ::testing::TestWithParam<std::string> {};

TEST_P(RpcQuota, GreedyConnectionWaitsPoliteOneIsServedPoolNeverRunsDry) {
  const std::string kind = GetParam();
  constexpr int kGreedyCalls = 48;
  constexpr size_t kAttachment = 1 * kMiB;
  constexpr uint32_t kHandlerMs = 100;
  constexpr size_t kMaxBytes = 4 * kMiB;  // 4 greedy calls at a time
  auto net = hrpc::transport::LoopbackNetwork::Create();
  hrpc::RuntimeOptions sro;
  sro.loopback = net;
  // A pool of 32 MiB: the greedy client's 48 MiB in flight would not fit.
  sro.pool.arena_bytes = 32 * kMiB;
  sro.pool.max_class_bytes = 1 * kMiB;
  sro.pool.max_arenas = 1;
  sro.pool.grow = false;
  sro.transport.recv_depth = 8;  // what TCP receives ahead of the read loop (credits)
  auto srt = hrpc::Runtime::Create(sro);
  ASSERT_TRUE(srt.ok()) << srt.status().ToString();
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {kind == "loop" ? "loop://quota-test" : "tcp://127.0.0.1:0"};
  so.max_requests_per_connection = 16;
  so.max_request_bytes_per_connection = kMaxBytes;
  so.bulk_chunk_bytes = 256 * 1024;
  auto server = hrpc::Server::Create(**srt, so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  std::string uri = (*server)->listen_uris().at(0);
  if (kind == "tcp") uri = "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1);
  Client greedy = Connect(uri, net), polite = Connect(uri, net);
  ASSERT_TRUE(greedy.channel && polite.channel);
  hrpc::mempool::Pool& server_pool = (*srt)->pool(0);
  const size_t failures_before = PoolFailures(server_pool);

  // Greedy: every call at once, each with a 1 MiB attachment.
  rpctest::Test::Stub greedy_stub(greedy.channel.get());
  std::vector<ClientContext> gctx(kGreedyCalls);
  std::vector<Resp> gresp(kGreedyCalls);
  std::vector<hrpc::Status> gstatus(kGreedyCalls);
  std::vector<uint32_t> gcrc(kGreedyCalls);
  std::atomic<int> greedy_done{0};
  hrpc::coro::Event all_greedy_done;
  Req greq;
  greq.set_sleep_ms(kHandlerMs);
  const auto greedy_start = std::chrono::steady_clock::now();
  for (int i = 0; i < kGreedyCalls; ++i) {
    gctx[i].set_timeout(30s);
    gctx[i].request_attachment() = rpctest::MakePayload(greedy.runtime->pool(0), kAttachment, 1000 + i);
    ASSERT_EQ(gctx[i].request_attachment().size(), kAttachment);
    gcrc[i] = gctx[i].request_attachment().Crc32c();
    greedy_stub.CallAsync(gctx[i], greq, &gresp[i], [&, i](hrpc::Status s) {
      gstatus[i] = std::move(s);
      if (greedy_done.fetch_add(1) + 1 == kGreedyCalls) all_greedy_done.Set();
    });
  }
  // Polite: one small call at a time while the greedy client waits for its quota.
  rpctest::Test::Stub polite_stub(polite.channel.get());
  std::vector<std::chrono::microseconds> latencies;
  int polite_ok = 0;
  while (greedy_done.load() < kGreedyCalls / 2 && latencies.size() < 200) {
    ClientContext ctx;
    ctx.set_timeout(10s);
    Req req;
    req.set_text("polite " + std::to_string(latencies.size()));
    Resp resp;
    const auto t0 = std::chrono::steady_clock::now();
    const hrpc::Status s = polite_stub.Call(ctx, req, &resp);
    latencies.push_back(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0));
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (s.ok() && resp.text() == req.text()) ++polite_ok;
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(all_greedy_done.WaitFor(60s).ok()) << greedy_done.load() << " of " << kGreedyCalls << " greedy calls done";
  const auto greedy_took = std::chrono::steady_clock::now() - greedy_start;

  // Nothing lost: every greedy call succeeded and the handler saw its bytes.
  for (int i = 0; i < kGreedyCalls; ++i) {
    EXPECT_TRUE(gstatus[i].ok()) << "greedy call " << i << ": " << gstatus[i].ToString();
    EXPECT_EQ(gresp[i].attachment_bytes(), kAttachment) << "greedy call " << i;
    EXPECT_EQ(gresp[i].attachment_crc32c(), gcrc[i]) << "greedy call " << i;
  }
  // The quota held: at most 4 greedy handlers (4 MiB) plus the polite one at once,
  // so the greedy calls took at least 48 / 4 rounds of the handler's time.
  EXPECT_LE(service.max_running.load(), static_cast<int>(kMaxBytes / kAttachment) + 1);
  EXPECT_GE(greedy_took, std::chrono::milliseconds(kGreedyCalls / (kMaxBytes / kAttachment) * kHandlerMs));
  // The server's pool never refused a block.
  EXPECT_EQ(PoolFailures(server_pool), failures_before);
  // The polite client was served throughout, each call well within one
  // greedy round trip of the whole batch.
  ASSERT_FALSE(latencies.empty());
  EXPECT_EQ(polite_ok, static_cast<int>(latencies.size()));
  const auto worst = *std::max_element(latencies.begin(), latencies.end());
  std::printf("%s: greedy %d x %zu KiB took %lld ms; polite %zu calls, worst %lld us\n", kind.c_str(), kGreedyCalls,
              kAttachment / 1024, static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(greedy_took).count()),
              latencies.size(), static_cast<long long>(worst.count()));
  EXPECT_LT(worst, std::chrono::microseconds(greedy_took / 2 / 1us)) << "a polite call waited behind the greedy ones";

  polite.channel.reset();
  greedy.channel.reset();
  (*server)->Shutdown();
  server->reset();
}

// A request larger than the byte quota is not refused: it runs alone.
TEST_P(RpcQuota, RequestLargerThanTheByteQuotaRunsAlone) {
  const std::string kind = GetParam();
  auto net = hrpc::transport::LoopbackNetwork::Create();
  hrpc::RuntimeOptions sro;
  sro.loopback = net;
  auto srt = hrpc::Runtime::Create(sro);
  ASSERT_TRUE(srt.ok());
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {kind == "loop" ? "loop://quota-test-large" : "tcp://127.0.0.1:0"};
  so.max_request_bytes_per_connection = 1 * kMiB;
  so.max_requests_per_connection = 2;
  auto server = hrpc::Server::Create(**srt, so);
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  std::string uri = (*server)->listen_uris().at(0);
  if (kind == "tcp") uri = "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1);
  Client c = Connect(uri, net);
  ASSERT_TRUE(c.channel);
  rpctest::Test::Stub stub(c.channel.get());
  constexpr int kCalls = 6;
  std::vector<hrpc::coro::Future<Resp>> futures;
  std::vector<ClientContext> ctxs(kCalls);
  std::vector<uint32_t> crcs;
  Req req;
  req.set_sleep_ms(20);
  for (int i = 0; i < kCalls; ++i) {
    ClientContext& ctx = ctxs[i];
    ctx.set_timeout(20s);
    ctx.request_attachment() = rpctest::MakePayload(c.runtime->pool(0), 3 * kMiB, 50 + i);
    crcs.push_back(ctx.request_attachment().Crc32c());
    futures.push_back(stub.CallFuture(ctx, req));
  }
  for (int i = 0; i < kCalls; ++i) {
    auto r = futures[i].Get();
    ASSERT_TRUE(r.ok()) << "call " << i << ": " << r.status().ToString();
    EXPECT_EQ(r->attachment_bytes(), 3 * kMiB);
    EXPECT_EQ(r->attachment_crc32c(), crcs[i]);
  }
  EXPECT_EQ(service.max_running.load(), 1) << "3 MiB requests over a 1 MiB quota run one at a time";
  c.channel.reset();
  (*server)->Shutdown();
  server->reset();
}

INSTANTIATE_TEST_SUITE_P(Transports, RpcQuota, ::testing::Values("loop", "tcp"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
