// The RPC runtime end to end in one process: Server + RpcChannel over
// loop:// and tcp://127.0.0.1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/groups/group.h"
#include "hrpc/groups/topology.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/loopback.h"
#include "hrpc/transport/tcp.h"
#include "once_poller.h"
#include "pool_level_util.h"
#include "raw_peer_util.h"
#include "rpc_test_util.h"
#include "shutdown_check.h"
#include "tcp_relay.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::StatusCode;
using rpctest::Req;
using rpctest::Resp;

struct Env {
  std::shared_ptr<hrpc::transport::LoopbackNetwork> net = hrpc::transport::LoopbackNetwork::Create();
  rpctest::TestService service;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;
  std::string uri;

  // kind: "loop" or "tcp".
  // `more` registers further services before the server starts.
  void Start(const std::string& kind, hrpc::ServerOptions so = {}, hrpc::RpcChannelOptions co = {},
             const std::function<void(hrpc::Server&)>& more = {}) {
    static std::atomic<int> seq{0};
    so.listen = {kind == "loop" ? "loop://rpc-test-" + std::to_string(seq.fetch_add(1)) : "tcp://127.0.0.1:0"};
    so.runtime.loopback = net;
    so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
    auto s = hrpc::Server::Create(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(*s);
    ASSERT_TRUE(server->RegisterService(&service).ok());
    if (more) more(*server);
    auto st = server->Start();
    ASSERT_TRUE(st.ok()) << st.ToString();
    uri = server->listen_uris().at(0);
    if (kind == "tcp") uri = "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1);
    co.runtime.loopback = net;
    auto c = hrpc::RpcChannel::Create(uri, co);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channel = std::move(*c);
  }
  ~Env() {
    // Server first: its connections close while the client still listens
    // (the loopback posts into the peer's scheduler; see the report).
    server.reset();
    channel.reset();
  }
};

class RpcTest : public ::testing::TestWithParam<std::string> {};

// A plain call that must come back with its text.
void ExpectEcho(rpctest::Test::Stub& stub, const std::string& text) {
  ClientContext ctx;
  Req req;
  req.set_text(text);
  Resp resp;
  auto s = stub.Call(ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.text(), text);
}

TEST_P(RpcTest, UnaryCall) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  for (int i = 0; i < 20; ++i) {
    ClientContext ctx;
    Req req;
    req.set_text("hello " + std::to_string(i));
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.text(), req.text());
    EXPECT_FALSE(ctx.peer().empty());
  }
  auto stats = env.channel->Stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].method, "rpctest.Test.Call");
  EXPECT_EQ(stats[0].count, 20u);
  EXPECT_EQ(stats[0].errors, 0u);
  EXPECT_GT(stats[0].p50_us, 0.0);
  for (int i = 0; i < 500 && env.server->Stats().at(0).count < 20; ++i) std::this_thread::sleep_for(2ms);
  auto sstats = env.server->Stats();
  ASSERT_EQ(sstats.size(), 1u);
  EXPECT_EQ(sstats[0].count, 20u);
}

TEST_P(RpcTest, AsyncAndFutureForms) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx1, ctx2;
  Req req;
  req.set_text("async");
  Resp resp;
  hrpc::coro::Event done;
  hrpc::Status got;
  stub.CallAsync(ctx1, req, &resp, [&](hrpc::Status s) {
    got = std::move(s);
    done.Set();
  });
  auto fut = stub.CallFuture(ctx2, req);
  ASSERT_TRUE(done.WaitFor(10s).ok());
  EXPECT_TRUE(got.ok()) << got.ToString();
  EXPECT_EQ(resp.text(), "async");
  auto r = fut.Get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text(), "async");
}

TEST_P(RpcTest, HandlerError) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  Req req;
  req.set_fail_code(static_cast<int>(StatusCode::kNotFound));
  req.set_fail_message("no such block 42");
  Resp resp;
  auto s = stub.Call(ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no such block 42");
  EXPECT_EQ(env.channel->Stats().at(0).errors, 1u);
}

// A handler's exception ends its own call with INTERNAL (the generated
// service catches it); the connection, whose reader runs the handler, keeps
// serving.
TEST_P(RpcTest, HandlerExceptionIsInternalAndTheConnectionKeepsServing) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  Req req;
  req.set_throw_message("disk on fire");
  Resp resp;
  auto s = stub.Call(ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
  EXPECT_EQ(s.message(), "handler of rpctest.Test.Call threw: disk on fire");
  for (int i = 0; i < 3; ++i) {
    ExpectEcho(stub, "after " + std::to_string(i));
  }
  EXPECT_EQ(env.server->num_connections(), 1u);
  // The server records a call after sending its response.
  for (int i = 0; i < 500 && env.server->Stats().at(0).count < 4; ++i) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(env.server->Stats().at(0).count, 4u);
  EXPECT_EQ(env.server->Stats().at(0).errors, 1u);
}

// A service written by hand (not generated), whose CallMethod throws.
class ThrowingService final : public hrpc::Service {
 public:
  std::string_view service_name() const noexcept override { return "rpctest.Throwing"; }
  uint32_t service_id() const noexcept override { return hrpc::ServiceIdOf(service_name()); }
  std::span<const hrpc::MethodDescriptor> methods() const noexcept override { return {}; }
  hrpc::Status CallMethod(uint32_t, hrpc::ServerContext&, std::string_view, hrpc::ResponseWriter&) override {
    throw std::runtime_error("raw handler failed");
  }
  hrpc::Status CallStream(uint32_t, hrpc::ServerContext&, hrpc::ServerStreamBase&) override {
    throw std::runtime_error("raw stream handler failed");
  }
};

TEST_P(RpcTest, ExceptionFromAHandWrittenServiceIsInternalAndTheConnectionKeepsServing) {
  Env env;
  ThrowingService throwing;
  env.Start(GetParam(), {}, {}, [&](hrpc::Server& s) { ASSERT_TRUE(s.RegisterService(&throwing).ok()); });
  rpctest::Test::Stub stub(env.channel.get());
  for (int i = 0; i < 2; ++i) {
    ClientContext bad;
    std::string out;
    auto s = env.channel->CallRaw(throwing.service_id(), 7, "rpctest.Throwing.7", bad, "", &out);
    EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
    EXPECT_EQ(s.message(), "handler of rpctest.Throwing threw: raw handler failed");
    ExpectEcho(stub, "after " + std::to_string(i));
  }
  EXPECT_EQ(env.server->num_connections(), 1u);
}

// The same for a stream: the client gets a close with INTERNAL (not its
// deadline), and the stream leaves nothing counted behind (Shutdown does not
// wait for it).
TEST_P(RpcTest, ExceptionFromAHandWrittenStreamHandlerClosesTheStreamWithInternal) {
  Env env;
  ThrowingService throwing;
  env.Start(GetParam(), {}, {}, [&](hrpc::Server& s) { ASSERT_TRUE(s.RegisterService(&throwing).ok()); });
  rpctest::Test::Stub stub(env.channel.get());
  const hrpc::MethodDescriptor method{"rpctest.Throwing", "S", "rpctest.Throwing.S", throwing.service_id(), 9};
  for (int i = 0; i < 2; ++i) {
    ClientContext ctx;
    ctx.set_timeout(20s);
    const auto t0 = std::chrono::steady_clock::now();
    auto stream = env.channel->OpenStream(method, ctx);
    stream->WritesDone();
    const hrpc::Status s = stream->Finish();
    EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
    EXPECT_EQ(s.message(), "handler of rpctest.Throwing threw: raw stream handler failed");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    ExpectEcho(stub, "after " + std::to_string(i));
  }
  const auto t0 = std::chrono::steady_clock::now();
  env.server->Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms) << "Shutdown waited for a stream that had ended";
}

// A handler runs on its connection's reader; one that blocks hands the
// reading on to a new reader, so the calls behind it on the same connection
// are served while it waits.
TEST_P(RpcTest, BlockedHandlerDoesNotStallItsConnection) {
  Env env;
  hrpc::RpcChannelOptions co;
  co.connections_per_worker = 1;
  env.Start(GetParam(), {}, co);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext slow_ctx;
  Req slow;
  slow.set_wait_for_cancel(true);
  auto slow_fut = stub.CallFuture(slow_ctx, slow);
  for (int i = 0; i < 500 && env.service.running.load() < 1; ++i) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(env.service.running.load(), 1);
  for (int i = 0; i < 20; ++i) {
    ClientContext c;
    c.set_timeout(5s);
    Req quick;
    quick.set_text(std::to_string(i));
    quick.set_sleep_ms(i % 4 == 0 ? 1 : 0);  // some of them block too
    Resp r;
    auto s = stub.Call(c, quick, &r);
    ASSERT_TRUE(s.ok()) << i << ": " << s.ToString();
    EXPECT_EQ(r.text(), quick.text());
    EXPECT_EQ(r.coroutine(), "hrpc-server-rx") << "served in place, on the reader";
  }
  EXPECT_FALSE(slow_fut.IsReady());
  EXPECT_EQ(env.server->num_connections(), 1u);
  slow_ctx.Cancel();
  auto r = slow_fut.WaitFor(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  for (int i = 0; i < 300 && env.service.saw_cancel.load() < 1; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(env.service.saw_cancel.load(), 1);
}

TEST_P(RpcTest, UnknownServiceAndMethod) {
  Env env;
  env.Start(GetParam());
  ClientContext c1, c2;
  std::string out;
  auto s1 = env.channel->CallRaw(12345, 1, "nope.Service.M", c1, "", &out);
  EXPECT_EQ(s1.code(), StatusCode::kUnimplemented) << s1.ToString();
  auto s2 = env.channel->CallRaw(rpctest::Test::kServiceId, 999, "rpctest.Test.999", c2, "", &out);
  EXPECT_EQ(s2.code(), StatusCode::kUnimplemented) << s2.ToString();
}

// Ids a peer makes up do not each get a row in the server's statistics (a
// histogram each, kept for the server's life): they share one.
TEST_P(RpcTest, UnknownMethodsShareOneStatisticsRow) {
  Env env;
  env.Start(GetParam());
  const size_t rows = env.server->Stats().size();
  constexpr int kCalls = 40;
  for (int i = 0; i < kCalls; ++i) {
    ClientContext ctx;
    std::string out;
    auto s = env.channel->CallRaw(50000 + i, 7 + i, "made.Up.Method", ctx, "", &out);
    EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.ToString();
  }
  std::vector<hrpc::MethodStats> st;
  for (int i = 0; i < 500; ++i) {
    st = env.server->Stats();
    auto it = std::find_if(st.begin(), st.end(), [](const hrpc::MethodStats& m) { return m.method == "(unknown method)"; });
    if (it != st.end() && it->count == kCalls) break;
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(st.size(), rows + 1);
  auto it = std::find_if(st.begin(), st.end(), [](const hrpc::MethodStats& m) { return m.method == "(unknown method)"; });
  ASSERT_NE(it, st.end());
  EXPECT_EQ(it->count, static_cast<uint64_t>(kCalls));
  EXPECT_EQ(it->errors, static_cast<uint64_t>(kCalls));
}

TEST_P(RpcTest, MalformedPayloadIsInvalidArgumentAndServerKeepsServing) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  // A slow good call in flight while the bad one is answered.
  ClientContext slow_ctx;
  Req slow;
  slow.set_text("slow");
  slow.set_sleep_ms(100);
  auto slow_fut = stub.CallFuture(slow_ctx, slow);
  ClientContext bad;
  std::string out;
  const std::string garbage("\xff\xff\xff\xff\x0f", 5);  // a truncated varint field
  auto s = env.channel->CallRaw(rpctest::Test::kServiceId, hrpc::MethodIdOf("Call"), "raw", bad, garbage, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  auto r = slow_fut.Get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text(), "slow");
  ClientContext ctx;
  Req req;
  req.set_text("after");
  Resp resp;
  EXPECT_TRUE(stub.Call(ctx, req, &resp).ok());
}

TEST_P(RpcTest, DeadlineOfSlowHandler) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  ctx.set_timeout(100ms);
  Req req;
  req.set_sleep_ms(5000);
  Resp resp;
  const auto t0 = std::chrono::steady_clock::now();
  auto s = stub.Call(ctx, req, &resp);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_LT(took, 3s);
  // The server stops working on it: the handler notices (its deadline passed).
  for (int i = 0; i < 300 && env.service.saw_cancel.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(env.service.saw_cancel.load(), 1);
}

TEST_P(RpcTest, ExpiredDeadlineIsNotRun) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  ctx.set_deadline(std::chrono::steady_clock::now() - 1ms);
  Req req;
  Resp resp;
  EXPECT_EQ(stub.Call(ctx, req, &resp).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(env.service.calls.load(), 0);
}

// Starts a call whose handler runs until it sees a cancel; returns once it runs.
hrpc::coro::Future<Resp> CallThatWaitsForACancel(Env& env, rpctest::Test::Stub& stub, ClientContext& ctx) {
  Req req;
  req.set_wait_for_cancel(true);
  auto fut = stub.CallFuture(ctx, req);
  for (int i = 0; i < 500 && env.service.running.load() == 0; ++i) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(env.service.running.load(), 1);
  return fut;
}

TEST_P(RpcTest, CancelSendsCancelFrame) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  auto fut = CallThatWaitsForACancel(env, stub, ctx);
  ASSERT_EQ(env.service.running.load(), 1);
  const auto t0 = std::chrono::steady_clock::now();
  ctx.Cancel();
  auto r = fut.WaitFor(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  for (int i = 0; i < 300 && env.service.saw_cancel.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(env.service.saw_cancel.load(), 1) << "the server's ServerContext was not marked cancelled";
}

// Shutdown cancels the calls in flight and answers them with what their
// handlers made of it (not a lost connection); while it waits for the
// handlers that do not stop at once, a new call is refused unrun with
// UNAVAILABLE "server shutting down".
TEST_P(RpcTest, ShutdownAnswersTheCallsItCancelsAndRefusesNewOnes) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  auto gives_up = CallThatWaitsForACancel(env, stub, ctx);
  ClientContext hold_ctx;
  Req hold;
  hold.set_hold_ms(1500);
  auto holds = stub.CallFuture(hold_ctx, hold);
  for (int i = 0; i < 500 && env.service.running.load() < 2; ++i) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(env.service.running.load(), 2);
  std::thread shutdown([&] { env.server->Shutdown(); });
  auto r = gives_up.WaitFor(5s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_EQ(r.status().message(), "handler saw the cancel") << r.status().ToString();
  EXPECT_EQ(env.service.saw_cancel.load(), 1);

  const int calls = env.service.calls.load();
  ClientContext late_ctx;
  Resp resp;
  hrpc::Status late = stub.Call(late_ctx, Req(), &resp);
  EXPECT_EQ(late.code(), StatusCode::kUnavailable) << late.ToString();
  EXPECT_EQ(late.message(), "server shutting down") << late.ToString();
  EXPECT_EQ(env.service.calls.load(), calls) << "a call that came during shutdown ran";

  auto held = holds.WaitFor(5s);
  EXPECT_TRUE(held.ok()) << held.status().ToString();
  shutdown.join();
}

TEST_P(RpcTest, ShutdownDeliversAnAnswerTheClientHasNotTakenYet) {
  Env env;
  env.Start(GetParam());
  rpctest::ExpectShutdownDeliversAnAnswerTheClientHasNotTakenYet(*env.server, *env.channel, env.service);
}

// The idle sweep does not close a connection under a call that picked it
// and is still on its way (exposing a large attachment waits for its
// checksum): with an idle_timeout of a few ms, calls that come after idle
// pauses of about that length all succeed.
TEST(RpcIdle, AConnectionIsNotClosedUnderACallOnItsWay) {
  Env env;
  hrpc::RpcChannelOptions co;
  co.runtime.idle_timeout = 4ms;
  env.Start("loop", {}, co);
  rpctest::Test::Stub stub(env.channel.get());
  for (int i = 0; i < 60; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + 250 * (i % 12)));
    ClientContext ctx;
    ctx.set_timeout(10s);
    ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), 1u << 20, i);
    Req req;
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << "call " << i << ": " << s.ToString();
    EXPECT_EQ(resp.attachment_bytes(), 1u << 20);
  }
}

// A response message larger than a control message (max_message_bytes) is
// refused at once with RESOURCE_EXHAUSTED, not lost on the way (the client
// used to wait for its deadline); a retry with the same request id gets the
// same refusal from the dedup window without running the handler again; the
// connection serves on.
TEST_P(RpcTest, AResponseMessageTooLargeToSendIsRefused) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  for (int attempt = 0; attempt < 2; ++attempt) {
    ClientContext ctx;
    ctx.set_timeout(20s);
    ctx.set_request_id(0x5eed0001);
    Req req;
    req.set_response_text_bytes(100 * 1024);
    Resp resp;
    const auto t0 = std::chrono::steady_clock::now();
    auto s = stub.Call(ctx, req, &resp);
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << "attempt " << attempt << ": " << s.ToString();
    EXPECT_NE(s.message().find("does not fit a control message"), std::string::npos) << s.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  }
  EXPECT_EQ(env.service.calls.load(), 1) << "the retry ran the handler again";
  ClientContext ctx;
  Req req;
  req.set_response_text_bytes(1000);
  Resp resp;
  ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
  EXPECT_EQ(resp.text().size(), 1000u);
}

// A request that waits for its connection's quota (max_requests_per_connection)
// keeps its deadline: one whose deadline passed meanwhile is not run (its
// client gave up on it long ago and its cancel is still unread behind it).
TEST_P(RpcTest, TimeWaitingForTheConnectionsQuotaCountsAgainstTheDeadline) {
  Env env;
  hrpc::ServerOptions so;
  so.max_requests_per_connection = 1;
  hrpc::RpcChannelOptions co;
  co.connections_per_worker = 1;
  env.Start(GetParam(), so, co);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext first_ctx, second_ctx;
  first_ctx.set_timeout(300ms);
  second_ctx.set_timeout(300ms);
  Req req;
  req.set_hold_ms(600);  // holds the quota past both deadlines, the cancel unseen
  auto first = stub.CallFuture(first_ctx, req);
  auto second = stub.CallFuture(second_ctx, req);
  EXPECT_EQ(first.WaitFor(5s).status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(second.WaitFor(5s).status().code(), StatusCode::kDeadlineExceeded);
  std::this_thread::sleep_for(1500ms);  // the second would have run by now
  EXPECT_EQ(env.service.calls.load(), 1) << "a request whose deadline passed while it waited for the quota ran";
}

// A deadline or a cancel reaches its own call when the calls in flight are
// spread over several connections of the (one) worker: a call is found by
// its txn alone.
TEST_P(RpcTest, CancelEndsOnlyItsCallAmongConnections) {
  Env env;
  hrpc::RpcChannelOptions co;
  co.connections_per_worker = 4;
  env.Start(GetParam(), {}, co);
  rpctest::Test::Stub stub(env.channel.get());
  constexpr int kCalls = 3;
  ClientContext ctx[kCalls];
  Req req;
  req.set_wait_for_cancel(true);
  std::vector<decltype(stub.CallFuture(ctx[0], req))> futs;
  for (int i = 0; i < kCalls; ++i) futs.push_back(stub.CallFuture(ctx[i], req));
  for (int i = 0; i < 500 && env.service.running.load() < kCalls; ++i) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(env.service.running.load(), kCalls);
  // A fourth call, on the fourth connection, runs out of time alone.
  ClientContext timed;
  timed.set_timeout(200ms);
  auto late = stub.CallFuture(timed, req);
  auto lr = late.WaitFor(5s);
  ASSERT_FALSE(lr.ok());
  EXPECT_EQ(lr.status().code(), StatusCode::kDeadlineExceeded) << lr.status().ToString();
  for (int i = 0; i < kCalls; ++i) EXPECT_FALSE(futs[i].IsReady()) << "call " << i << " ended with the timed one";
  for (int i = 0; i < 300 && env.service.saw_cancel.load() < 1; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(env.service.saw_cancel.load(), 1);
  for (int c : {1, 2, 0}) {
    ctx[c].Cancel();
    auto r = futs[c].WaitFor(5s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << c << ": " << r.status().ToString();
    for (int i = 0; i < kCalls; ++i) {
      if (!ctx[i].IsCancelled()) {
        EXPECT_FALSE(futs[i].IsReady()) << "call " << i << " ended with call " << c;
      }
    }
  }
  for (int i = 0; i < 300 && env.service.saw_cancel.load() < kCalls + 1; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(env.service.saw_cancel.load(), kCalls + 1);
}

TEST_P(RpcTest, TenThousandConcurrentCalls) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  constexpr int kCalls = 10000;
  struct One {
    ClientContext ctx;
    Req req;
    Resp resp;
  };
  std::vector<std::unique_ptr<One>> calls;
  calls.reserve(kCalls);
  std::atomic<int> ok{0}, done{0};
  std::mutex mu;
  std::string first_error;
  hrpc::coro::Event all;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::make_unique<One>());
    calls.back()->req.set_text(std::to_string(i));
  }
  for (int i = 0; i < kCalls; ++i) {
    One& c = *calls[i];
    stub.CallAsync(c.ctx, c.req, &c.resp, [&, i](hrpc::Status s) {
      if (s.ok() && calls[i]->resp.text() == std::to_string(i)) {
        ok.fetch_add(1);
      } else {
        std::lock_guard lock(mu);
        if (first_error.empty()) first_error = s.ToString();
      }
      if (done.fetch_add(1) + 1 == kCalls) all.Set();
    });
  }
  ASSERT_TRUE(all.WaitFor(60s).ok()) << done.load() << " of " << kCalls << " done";
  EXPECT_EQ(ok.load(), kCalls) << "first error: " << first_error;
  // The server records a call after sending its response.
  for (int i = 0; i < 500 && env.server->Stats().at(0).count < kCalls; ++i) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(env.server->Stats().at(0).count, static_cast<uint64_t>(kCalls));
}

// Pull (request attachment) and push (response attachment) of 0 B .. 64 MiB,
// CRC-checked end to end; over TCP no payload byte is copied by the CPU.
TEST_P(RpcTest, BulkPullAndPush) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  // Connect first: the TCP handshake itself goes through CountedCopy.
  ASSERT_TRUE(env.channel->Connect().ok());
  const std::vector<size_t> sizes = {0, 1, 4095, 4096, 16 * 1024, 16 * 1024 + 1, 64 * 1024, 1 << 20, 16 << 20, 64 << 20};
  for (size_t n : sizes) {
    SCOPED_TRACE("size " + std::to_string(n));
    hrpc::mempool::IoBuf payload = rpctest::MakePayload(env.channel->pool(), n, static_cast<uint32_t>(n));
    ASSERT_EQ(payload.size(), n);
    const uint32_t crc = payload.Crc32c();
    ClientContext ctx;
    ctx.request_attachment() = std::move(payload);
    ctx.set_response_attachment_capacity(n);
    Req req;
    req.set_echo_attachment(true);
    Resp resp;
    const uint64_t copied0 = hrpc::mempool::CopiedBytesTotal();
    auto s = stub.Call(ctx, req, &resp);
    const uint64_t copied = hrpc::mempool::CopiedBytesTotal() - copied0;
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.attachment_bytes(), n);
    EXPECT_EQ(resp.attachment_crc32c(), crc);
    EXPECT_EQ(ctx.response_attachment().size(), n);
    EXPECT_EQ(ctx.response_attachment().Crc32c(), crc);
    if (GetParam() == "tcp") {
      // Streamed both ways: not a byte copied, aligned or not.
      EXPECT_EQ(copied, 0u) << "payload bytes copied by the CPU";
    }
    ctx.response_attachment() = hrpc::mempool::IoBuf();
  }
}

// A handler that pulls lazily (auto_pull = false): the attachment is what
// came inline or streamed (request_attachment()) followed by what it pulls
// through the descriptors (ctx.bulk()); the same handler serves every transport.
class LazyService final : public rpctest::Test::Service {
 public:
  std::atomic<int> pulled_regions{0};
  hrpc::Status Call(hrpc::ServerContext& ctx, const Req& req, Resp* resp) override {
    hrpc::mempool::IoBuf all = std::move(ctx.request_attachment());
    for (size_t i = 0; i < ctx.bulk().size(); ++i) {
      if (ctx.bulk()[i].direction != hrpc::wire::BulkDirection::kPull) continue;
      HRPC_ASSIGN_OR_RETURN(hrpc::mempool::IoBuf part, ctx.PullBulk(i));
      all.Append(std::move(part));
      pulled_regions.fetch_add(1);
    }
    resp->set_text(req.text());
    resp->set_attachment_bytes(all.size());
    resp->set_attachment_crc32c(all.Crc32c());
    return hrpc::Status::Ok();
  }
};

TEST_P(RpcTest, LazyPullHandlerWorks) {
  Env env;  // for its loopback network
  LazyService lazy;
  hrpc::ServerOptions so2;
  so2.auto_pull = false;
  so2.listen = {GetParam() == "loop" ? "loop://lazy-" + GetParam() : "tcp://127.0.0.1:0"};
  so2.runtime.loopback = env.net;
  auto server = hrpc::Server::Create(so2);
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE((*server)->RegisterService(&lazy).ok());
  ASSERT_TRUE((*server)->Start().ok());
  std::string uri = (*server)->listen_uris().at(0);
  if (GetParam() == "tcp") uri = "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1);
  hrpc::RpcChannelOptions co;
  co.runtime.loopback = env.net;
  auto channel = hrpc::RpcChannel::Create(uri, co);
  ASSERT_TRUE(channel.ok());
  rpctest::Test::Stub stub(channel->get());
  for (size_t n : {size_t{100}, size_t{1} << 20}) {
    ClientContext ctx;
    ctx.request_attachment() = rpctest::MakePayload((*channel)->pool(), n, 8);
    const uint32_t crc = ctx.request_attachment().Crc32c();
    Req req;
    req.set_text("lazy");
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.attachment_bytes(), n);
    EXPECT_EQ(resp.attachment_crc32c(), crc);
  }
  // Descriptors only where the payload does not travel in the stream.
  EXPECT_EQ(lazy.pulled_regions.load(), GetParam() == "loop" ? 1 : 0);
  channel->reset();
  server->reset();
}

// ServerContext::pool() is the Server's pool of that worker, and the runtime
// pulled the bulk attachment into it (what a handler registers with a disk
// sink so the pulled slabs go to the disk as registered buffers).
TEST_P(RpcTest, HandlerSeesThePoolThePayloadWasPulledInto) {
  struct NullRegistrar final : hrpc::mempool::Registrar {
    std::string_view name() const override { return "test-null"; }
    hrpc::Result<hrpc::mempool::RegionKey> Register(void*, size_t, int) override {
      return hrpc::mempool::RegionKey{0, 0, 42};
    }
    void Unregister(void*, size_t, const hrpc::mempool::RegionKey&) override {}
  } registrar;  // declared before env: it outlives the server pool, which unregisters from it
  Env env;
  env.Start(GetParam());
  ASSERT_EQ(env.server->num_workers(), 1u);
  hrpc::mempool::Pool& server_pool = env.server->pool(0);
  auto slot = server_pool.AttachRegistrar(&registrar);
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  env.service.check_slot = static_cast<int>(*slot);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), 3 << 20, 11, 1 << 20);
  Req req;
  Resp resp;
  auto s = stub.Call(ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.attachment_bytes(), 3u << 20);
  EXPECT_EQ(env.service.seen_pool.load(), &server_pool);
  EXPECT_GT(env.service.slices_total.load(), 0);
  EXPECT_EQ(env.service.slices_in_pool.load(), env.service.slices_total.load())
      << "a pulled slice is not in the server pool";
  // The client's pool is another one: the check can fail.
  EXPECT_NE(&env.channel->pool(), &server_pool);
}

// A response attachment of a size the client did not announce: streamed
// behind the response on TCP, READ by the client from the server's memory on
// the loopback (and RDMA), and released; no byte copied on the aligned path.
TEST_P(RpcTest, LargeResponseOfUnknownSizeArrives) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  for (size_t n : {size_t{20000}, size_t{1} << 20, size_t{5} << 20}) {
    SCOPED_TRACE("size " + std::to_string(n));
    ClientContext ctx;
    ctx.set_timeout(30s);
    ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), n, 3);
    const uint32_t crc = ctx.request_attachment().Crc32c();
    Req req;
    req.set_echo_attachment(true);
    Resp resp;
    const uint64_t copied0 = hrpc::mempool::CopiedBytesTotal();
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(ctx.response_attachment().size(), n);
    EXPECT_EQ(ctx.response_attachment().Crc32c(), crc);
    if (GetParam() == "tcp") {
      EXPECT_EQ(hrpc::mempool::CopiedBytesTotal() - copied0, 0u);
    }
  }
}

// Calls of every shape leave no pool block behind on either side.
TEST_P(RpcTest, CallsLeaveNoPoolBlocksBehind) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  rpctest::ExpectCallsLeaveNoPoolBlocks(stub, env.channel->pool(), env.server->pool(), env.service);
}

// A server that goes away and comes back at the same address: calls fail
// fast with UNAVAILABLE meanwhile (no wait for their deadline) and succeed
// again once it is back, on the same channel.
TEST_P(RpcTest, ServerRestartedAtTheSameAddressIsReachedAgain) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  ExpectEcho(stub, "first life");
  const std::string bound = env.server->listen_uris().at(0);
  env.server.reset();
  for (int i = 0; i < 3; ++i) {
    ClientContext ctx;
    ctx.set_timeout(20s);
    Req req;
    req.set_text("while down");
    Resp resp;
    const auto t0 = std::chrono::steady_clock::now();
    auto s = stub.Call(ctx, req, &resp);
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "a call to a server that is gone waited";
  }
  hrpc::ServerOptions so;
  so.listen = {bound};
  so.runtime.loopback = env.net;
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto s = rpctest::StartServer(&env.service, so);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  env.server = std::move(*s);
  ExpectEcho(stub, "second life");
}

// The client RELEASEs a response attachment it read from the server's
// memory: the server's call ends then, not after release_timeout.
TEST(RpcRelease, ClientReleasesTheExposedResponse) {
  Env env;
  hrpc::ServerOptions so;
  so.release_timeout = std::chrono::seconds(20);
  env.Start("loop", so);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), 1 << 20, 3);
  Req req;
  req.set_echo_attachment(true);
  Resp resp;
  ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
  EXPECT_EQ(ctx.response_attachment().size(), 1u << 20);
  for (int i = 0; i < 1000 && env.server->Stats().at(0).count == 0; ++i) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(env.server->Stats().at(0).count, 1u);
}

// Pulls and pushes in flight at once in both directions on one connection
// (the server WRITEs responses while it READs the next requests).
TEST_P(RpcTest, ConcurrentBulkEcho) {
  Env env;
  env.Start(GetParam());
  rpctest::Test::Stub stub(env.channel.get());
  constexpr int kInFlight = 8, kRounds = 40;
  constexpr size_t kSize = 32 * 1024;
  struct One {
    ClientContext ctx;
    Req req;
    Resp resp;
    uint32_t crc = 0;
    std::atomic<int> completions{0};
  };
  for (int round = 0; round < kRounds; ++round) {
    // Shared with the callbacks: Event::Set() may still be running on the
    // worker when the waiter wakes up (see the report), so the round's state
    // must not die with the loop iteration.
    struct Round {
      std::vector<std::unique_ptr<One>> calls;
      std::atomic<int> done{0}, ok{0};
      std::mutex mu;
      std::string first_error;
      hrpc::coro::Event all;
    };
    auto r = std::make_shared<Round>();
    for (int i = 0; i < kInFlight; ++i) {
      auto c = std::make_unique<One>();
      c->ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), kSize, round * 100 + i);
      c->crc = c->ctx.request_attachment().Crc32c();
      c->ctx.set_response_attachment_capacity(kSize);
      c->req.set_echo_attachment(true);
      r->calls.push_back(std::move(c));
    }
    for (auto& c : r->calls) {
      One* one = c.get();
      stub.CallAsync(one->ctx, one->req, &one->resp, [r, one](hrpc::Status s) {
        one->completions.fetch_add(1);
        if (s.ok() && one->ctx.response_attachment().Crc32c() == one->crc) {
          r->ok.fetch_add(1);
        } else {
          std::lock_guard lock(r->mu);
          if (r->first_error.empty()) r->first_error = s.ToString();
        }
        one->ctx.response_attachment() = hrpc::mempool::IoBuf();
        if (r->done.fetch_add(1) + 1 == kInFlight) r->all.Set();
      });
    }
    ASSERT_TRUE(r->all.WaitFor(30s).ok());
    std::string per_call;
    for (auto& c : r->calls) per_call += std::to_string(c->completions.load()) + " ";
    ASSERT_EQ(r->ok.load(), kInFlight) << "round " << round << ": " << r->first_error
                                       << " completions per call: " << per_call;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, RpcTest, ::testing::Values("loop", "tcp"),
                         [](const auto& p) { return p.param; });

// A deadline that expires in the middle of the bulk pull: the loopback delays
// every one-sided op; the server gives up between pieces and never runs the handler.
TEST(RpcBulkDeadline, ExpiresDuringPull) {
  Env env;
  hrpc::ServerOptions so;
  so.bulk_chunk_bytes = 1 << 20;
  so.bulk_window = 1;  // one piece at a time: 16 x 20 ms
  env.Start("loop", so);
  hrpc::transport::FaultPlan plan;
  plan.delay = 20ms;
  env.net->SetFaults(env.uri.substr(strlen("loop://")), plan);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), 16 << 20, 5);
  ctx.set_timeout(150ms);
  Req req;
  Resp resp;
  const auto t0 = std::chrono::steady_clock::now();
  auto s = stub.Call(ctx, req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // The server stopped the pull (16 pieces x >= 20 ms would take > 320 ms) without running the handler.
  for (int i = 0; i < 300; ++i) {
    auto st = env.server->Stats();
    if (!st.empty() && st[0].count == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  auto st = env.server->Stats();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].count, 1u);
  EXPECT_EQ(st[0].errors, 1u);
  EXPECT_LT(st[0].bytes_in, 16u << 20) << "the whole attachment was pulled";
  EXPECT_EQ(env.service.calls.load(), 0);
  // Let the delayed frames still in flight land before teardown: a delayed
  // loopback delivery holds the sender's pool buffers (see the report).
  env.net->SetFaults(env.uri.substr(strlen("loop://")), {});
  std::this_thread::sleep_for(200ms);
}

// TCP without in-stream payloads moves attachments by one-sided ops, which
// the peer's CPU serves. While the server READs a call's attachment the
// client's worker stalls (it serves nothing for 2 s): the server's pull ends
// at the call's deadline instead of waiting for the READs in flight, and the
// connection serves the next call.
TEST(RpcBulkDeadline, TcpPullInFlightEndsAtTheDeadline) {
  rpctest::PullLaterService svc;
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.auto_pull = false;
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  so.runtime.tcp.max_payload_bytes = 0;  // attachments go by descriptors
  hrpc::RpcChannelOptions co;
  co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  co.runtime.tcp.max_payload_bytes = 0;
  auto served = rpctest::StartServed(&svc, so, co, "tcp://127.0.0.1");
  ASSERT_TRUE(served.ok()) << served.status().ToString();
  auto& [server, channel] = *served;
  rpctest::Test::Stub stub(channel.get());
  auto call = [&](uint32_t seed) {
    ClientContext ctx;
    ctx.set_timeout(10s);
    ctx.request_attachment() = rpctest::MakePayload(channel->pool(), 4 << 20, seed);
    const uint32_t crc = ctx.request_attachment().Crc32c();
    Req req;
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.attachment_crc32c(), crc);
  };
  call(1);
  ASSERT_EQ(svc.pulls.load(), 1) << "the attachment did not go by descriptors";

  struct Done {
    hrpc::coro::Event ev;
    hrpc::Status status;
  };
  auto done = std::make_shared<Done>();
  ClientContext ctx;
  ctx.set_timeout(1s);
  ctx.request_attachment() = rpctest::MakePayload(channel->pool(), 4 << 20, 2);
  Req req;
  Resp resp;
  svc.pulls_allowed.store(false);  // the handler pulls once the client's worker is stalled
  stub.CallAsync(ctx, req, &resp, [done](hrpc::Status s) {
    done->status = std::move(s);
    done->ev.Set();
  });
  for (int i = 0; i < 5000 && svc.started.load() < 2; ++i) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(svc.started.load(), 2);
  auto stalled = std::make_shared<std::atomic<bool>>(false);
  channel->scheduler(0).Post(
      [stalled] {
        stalled->store(true);
        std::this_thread::sleep_for(2500ms);
      },
      "test-stall");
  for (int i = 0; i < 5000 && !stalled->load(); ++i) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(stalled->load());
  svc.pulls_allowed.store(true);
  for (int i = 0; i < 1000 && svc.pulls.load() < 2; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(svc.pulls.load(), 2);
  EXPECT_EQ(svc.last_pull_code.load(), static_cast<int>(StatusCode::kDeadlineExceeded));
  EXPECT_EQ(svc.pulls_cut_short.load(), 1);
  EXPECT_LT(svc.last_pull_ms.load(), 2000) << "the pull waited for the stalled client";
  ASSERT_TRUE(done->ev.WaitFor(10s).ok());
  EXPECT_EQ(done->status.code(), StatusCode::kDeadlineExceeded) << done->status.ToString();
  call(3);
  channel.reset();
  server.reset();
}

// The client's READ of a response attachment left in the server's memory
// (loopback: each message and op delayed 2 s) ends at the call's deadline, not when
// the READs in flight finish; its RELEASE follows them, and the connection
// serves on.
TEST(RpcBulkDeadline, ResponsePullInFlightEndsAtTheDeadline) {
  Env env;
  env.Start("loop");
  env.service.pool = &env.server->pool(0);
  ASSERT_TRUE(env.channel->Connect().ok());
  rpctest::Test::Stub stub(env.channel.get());
  hrpc::transport::FaultPlan plan;
  plan.delay = 2s;  // request at 2 s, response at 4 s, READ done at 6 s
  env.net->SetFaults(env.uri.substr(strlen("loop://")), plan);
  ClientContext ctx;
  ctx.set_timeout(5s);
  Req req;
  req.set_response_bytes(4 << 20);
  Resp resp;
  const auto t0 = std::chrono::steady_clock::now();
  auto s = stub.Call(ctx, req, &resp);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_NE(s.message().find("response attachment"), std::string::npos)
      << "the call did not end while reading the response: " << s.ToString();
  EXPECT_LT(took, 5800ms) << "the call waited for the READs in flight";
  env.net->SetFaults(env.uri.substr(strlen("loop://")), {});
  ClientContext again;
  again.set_timeout(10s);
  Req small;
  small.set_text("after");
  Resp r2;
  auto s2 = stub.Call(again, small, &r2);
  ASSERT_TRUE(s2.ok()) << s2.ToString();
  EXPECT_EQ(r2.text(), "after");
  std::this_thread::sleep_for(2500ms);  // delayed frames still in flight land before teardown
}

// Pieces of one pull overlap (bulk_window): 16 pieces each delayed 100 ms by
// the loopback take far less than the 1.6 s they take one at a time.
TEST(RpcBulkWindow, PiecesOfOnePullOverlap) {
  Env env;
  hrpc::ServerOptions so;
  so.bulk_chunk_bytes = 1 << 20;
  so.bulk_window = 16;
  env.Start("loop", so);
  hrpc::transport::FaultPlan plan;
  plan.delay = 100ms;
  env.net->SetFaults(env.uri.substr(strlen("loop://")), plan);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  ctx.request_attachment() = rpctest::MakePayload(env.channel->pool(), 16 << 20, 5);
  const uint32_t crc = ctx.request_attachment().Crc32c();
  Req req;
  Resp resp;
  const auto t0 = std::chrono::steady_clock::now();
  auto s = stub.Call(ctx, req, &resp);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.attachment_crc32c(), crc);
  EXPECT_LT(took, 1200ms) << "the 16 READs went one after another (>= 1.6 s)";
  env.net->SetFaults(env.uri.substr(strlen("loop://")), {});
  std::this_thread::sleep_for(200ms);
}

// A peer that sends a valid transport message holding garbage instead of an
// hrpc frame loses its connection; other clients are not affected.
TEST(RpcMalformedFrame, OnlyThatConnectionIsClosed) {
  Env env;
  env.Start("tcp");
  rpctest::Test::Stub stub(env.channel.get());
  {
    ClientContext ctx;
    Req req;
    Resp resp;
    ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
  }
  const size_t before = env.server->num_connections();
  // A second client made from the raw transport.
  auto pool = hrpc::mempool::Pool::Create({.arena_bytes = 4 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  ASSERT_TRUE(pool.ok());
  // Runs on the channel's worker (a transport of its own there).
  hrpc::coro::Scheduler& sched = env.channel->scheduler(0);
  auto result = hrpc::coro::Async(sched, [&]() -> hrpc::Status {
    HRPC_ASSIGN_OR_RETURN(auto t, hrpc::transport::CreateTcpTransport(sched, **pool));
    HRPC_ASSIGN_OR_RETURN(auto conn, t->Connect(env.uri));
    auto b = (*pool)->Allocate(100);
    std::memset(b->data(), 0x5a, 100);
    HRPC_TRY(conn->Send(hrpc::mempool::IoBuf(std::move(*b))));
    auto r = conn->Recv();  // the server closes the connection
    hrpc::Status out = r.ok() ? hrpc::InternalError("server answered garbage") : hrpc::Status::Ok();
    conn.reset();
    t.reset();
    return out;
  }).Get();
  EXPECT_TRUE(result.ok()) << result.ToString();
  for (int i = 0; i < 200 && env.server->num_connections() > before; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(env.server->num_connections(), before);
  ClientContext ctx;
  Req req;
  req.set_text("still here");
  Resp resp;
  ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
  EXPECT_EQ(resp.text(), "still here");
}

// Fault injection under the RPC layer (TCP, transport FaultOptions): a client
// whose transport drops, duplicates or corrupts its messages loses at most its
// own call or connection; another client of the same server never notices.
class RpcFaults : public ::testing::Test {
 protected:
  void SetUp() override { env.Start("tcp"); }
  // A second client of env's server whose transports inject `faults`.
  std::unique_ptr<hrpc::RpcChannel> FaultyClient(const hrpc::transport::FaultOptions& faults) {
    hrpc::RpcChannelOptions co;
    co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
    co.runtime.transport.faults = faults;
    auto c = hrpc::RpcChannel::Create(env.uri, co);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }
  static hrpc::Status Call(hrpc::RpcChannel* ch, const std::string& text, std::chrono::milliseconds timeout = 5s) {
    rpctest::Test::Stub stub(ch);
    ClientContext ctx;
    ctx.set_timeout(timeout);
    Req req;
    req.set_text(text);
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    if (s.ok() && resp.text() != text) return hrpc::DataLossError("answer '" + resp.text() + "' to '" + text + "'");
    return s;
  }
  Env env;
};

TEST_F(RpcFaults, DroppedRequestTimesOutAndTheConnectionServesTheNextCall) {
  auto faulty = FaultyClient({.drop_next = 1});
  ASSERT_TRUE(faulty);
  ASSERT_TRUE(Call(env.channel.get(), "before").ok());
  auto s = Call(faulty.get(), "lost", 300ms);
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_TRUE(Call(faulty.get(), "next").ok());
  EXPECT_TRUE(Call(env.channel.get(), "other client").ok());
  EXPECT_EQ(env.service.calls.load(), 3) << "the dropped request never reached the handler";
  EXPECT_EQ(env.server->num_connections(), 2u) << "a drop costs no connection";
}

TEST_F(RpcFaults, DuplicatedRequestRunsTheHandlerOnce) {
  auto faulty = FaultyClient({.duplicate_next = 2});
  ASSERT_TRUE(faulty);
  ASSERT_TRUE(Call(faulty.get(), "twice on the wire").ok());
  ASSERT_TRUE(Call(faulty.get(), "and again").ok());
  EXPECT_TRUE(Call(env.channel.get(), "other client").ok());
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(env.service.calls.load(), 3);
  auto st = env.channel->Stats();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].count, 1u);
  auto fst = faulty->Stats();
  ASSERT_EQ(fst.size(), 1u);
  EXPECT_EQ(fst[0].count, 2u) << "each call completed once";
  EXPECT_EQ(fst[0].errors, 0u);
}

TEST_F(RpcFaults, CorruptedRequestCostsItsConnectionOnly) {
  auto faulty = FaultyClient({.corrupt_next = 1});
  ASSERT_TRUE(faulty);
  ASSERT_TRUE(Call(env.channel.get(), "before").ok());
  auto s = Call(faulty.get(), "damaged");
  EXPECT_FALSE(s.ok()) << "a corrupted request was answered";
  EXPECT_NE(s.code(), StatusCode::kDeadlineExceeded) << "the damage must be detected, not timed out: " << s.ToString();
  EXPECT_EQ(env.service.calls.load(), 1) << "the damaged request reached the handler";
  EXPECT_TRUE(Call(env.channel.get(), "other client").ok());
  EXPECT_TRUE(Call(faulty.get(), "reconnected").ok());
}

TEST_F(RpcFaults, TruncatedRequestCostsItsConnectionOnly) {
  auto faulty = FaultyClient({.truncate_next = 1});
  ASSERT_TRUE(faulty);
  auto s = Call(faulty.get(), "cut short");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_EQ(env.service.calls.load(), 0);
  EXPECT_TRUE(Call(env.channel.get(), "other client").ok());
  EXPECT_TRUE(Call(faulty.get(), "reconnected").ok());
}

using rpctest::ControlFrame;
using rpctest::RecvHeader;

// The server answers a ping with a pong of the same transaction and does not
// answer a pong (a pong answered by anything would make two peers that ping
// each other loop forever).
// A second request with the txn_id of one still in flight breaks the
// protocol: the server closes that connection and does not run it. In flight
// means while its handler runs and also while its response waits to be sent
// (here for the client's only credit, which a client that does not read never
// gives back).
TEST(RpcDuplicateTxn, DuplicateOfARequestInFlightClosesTheConnection) {
  Env env;
  env.Start("tcp");
  Req slow, fast;
  slow.set_sleep_ms(1500);  // the duplicate surely comes while it runs
  const std::string slow_body = slow.SerializeAsString(), fast_body = fast.SerializeAsString();
  const uint32_t service = rpctest::Test::kServiceId, method = rpctest::Test::kMethods[0].method_id;
  auto wait_for = [](auto pred) {
    for (int i = 0; i < 1000 && !pred(); ++i) std::this_thread::sleep_for(5ms);
    return pred();
  };
  struct Case {
    const char* what;
    bool handler_running;
  };
  for (const Case& c : {Case{"while its handler runs", true}, Case{"while its response waits for a credit", false}}) {
    SCOPED_TRACE(c.what);
    const size_t before = env.server->num_connections();
    const int calls_before = env.service.calls.load();
    rpctest::RawTcpPeer peer;
    hrpc::transport::TcpOptions to;
    to.common.recv_depth = 1;  // one response, then the server waits for a credit
    ASSERT_TRUE(peer.Connect(env.channel->scheduler(0), env.uri, to).ok());
    ASSERT_TRUE(wait_for([&] { return env.server->num_connections() == before + 1; }));
    uint64_t dup = 1;
    if (c.handler_running) {
      ASSERT_TRUE(peer.Send(rpctest::RequestFrame(*peer.pool, 1, service, method, slow_body)).ok());
    } else {
      ASSERT_TRUE(peer.Send(rpctest::RequestFrame(*peer.pool, 1, service, method, fast_body)).ok());
      ASSERT_TRUE(peer.Send(rpctest::RequestFrame(*peer.pool, 2, service, method, fast_body)).ok());
      dup = 2;
    }
    ASSERT_TRUE(wait_for([&] { return env.service.calls.load() == calls_before + static_cast<int>(dup); }));
    std::this_thread::sleep_for(20ms);  // the last response is now waiting for its credit
    ASSERT_TRUE(peer.Send(rpctest::RequestFrame(*peer.pool, dup, service, method, fast_body)).ok());
    EXPECT_TRUE(wait_for([&] { return env.server->num_connections() == before; }))
        << "the server kept a connection that reused txn " << dup;
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(env.service.calls.load(), calls_before + static_cast<int>(dup)) << "the duplicate ran";
  }
  ClientContext ctx;
  Req req;
  req.set_text("still here");
  Resp resp;
  ASSERT_TRUE(rpctest::Test::Stub(env.channel.get()).Call(ctx, req, &resp).ok());
  EXPECT_EQ(resp.text(), "still here");
}

TEST(RpcPing, ServerAnswersPingWithPongAndPongWithNothing) {
  Env env;
  env.Start("tcp");
  auto pool = hrpc::mempool::Pool::Create({.arena_bytes = 4 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  ASSERT_TRUE(pool.ok());
  hrpc::coro::Scheduler& sched = env.channel->scheduler(0);
  auto result = hrpc::coro::Async(sched, [&]() -> hrpc::Status {
    using hrpc::wire::FrameKind;
    HRPC_ASSIGN_OR_RETURN(auto t, hrpc::transport::CreateTcpTransport(sched, **pool));
    HRPC_ASSIGN_OR_RETURN(auto conn, t->Connect(env.uri));
    HRPC_ASSIGN_OR_RETURN(auto ping, ControlFrame(**pool, FrameKind::kPing, 77));
    HRPC_TRY(conn->Send(std::move(ping)));
    HRPC_ASSIGN_OR_RETURN(auto first, RecvHeader(*conn));
    if (first.kind != FrameKind::kPong || first.txn_id != 77) {
      return hrpc::InternalError("want pong 77, got " + std::string(FrameKindName(first.kind)) + " " +
                                 std::to_string(first.txn_id));
    }
    HRPC_ASSIGN_OR_RETURN(auto pong, ControlFrame(**pool, FrameKind::kPong, 78));
    HRPC_TRY(conn->Send(std::move(pong)));
    HRPC_ASSIGN_OR_RETURN(auto ping2, ControlFrame(**pool, FrameKind::kPing, 79));
    HRPC_TRY(conn->Send(std::move(ping2)));
    HRPC_ASSIGN_OR_RETURN(auto second, RecvHeader(*conn));
    hrpc::Status out = hrpc::Status::Ok();
    if (second.kind != FrameKind::kPong || second.txn_id != 79) {
      out = hrpc::InternalError("the pong was answered: got " + std::string(FrameKindName(second.kind)) + " " +
                                std::to_string(second.txn_id));
    }
    conn.reset();
    t.reset();
    return out;
  }).Get();
  EXPECT_TRUE(result.ok()) << result.ToString();
}

// A server driven by hand: a TCP transport and listener on a worker and a
// pool of their own; the test speaks the wire format through what it accepts.
struct FakeServer {
  hrpc::Result<std::unique_ptr<hrpc::mempool::Pool>> pool =
      hrpc::mempool::Pool::Create({.arena_bytes = 4 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  std::unique_ptr<hrpc::coro::Worker> worker;
  std::unique_ptr<hrpc::transport::Transport> transport;
  std::unique_ptr<hrpc::transport::Listener> listener;

  hrpc::Status Start() {
    HRPC_TRY(pool.status());
    HRPC_ASSIGN_OR_RETURN(worker, hrpc::coro::Worker::Start({.sched = {.name = "fake-server"}}));
    return hrpc::coro::Async(worker->scheduler(), [&]() -> hrpc::Status {
             HRPC_ASSIGN_OR_RETURN(transport, hrpc::transport::CreateTcpTransport(worker->scheduler(), **pool));
             HRPC_ASSIGN_OR_RETURN(listener, transport->Listen("tcp://127.0.0.1:0"));
             return hrpc::Status::Ok();
           }).Get();
  }
  // `fn` as a coroutine on the server's worker, speaking the wire through
  // what listener->Accept() gives.
  template <class F>
  auto Serve(F&& fn) {
    return hrpc::coro::Async(worker->scheduler(), std::forward<F>(fn));
  }
  // The listener and the transport go, on their worker.
  hrpc::Status Stop() {
    return hrpc::coro::Async(worker->scheduler(), [&] {
             listener.reset();
             transport.reset();
           }).Get();
  }
};

// Two calls of one channel are on a connection the server drops: the first
// one's done callback destroys the channel (the usual "drop the channel on
// UNAVAILABLE"), which must not wait for the second call, still to be
// completed by the same loop.
TEST(RpcConnectionLost, ADoneCallbackThatDestroysItsChannelDoesNotWaitForTheNextCall) {
  hrpc::RuntimeOptions ro;
  ro.workers = 1;
  auto runtime = hrpc::Runtime::Create(ro);
  ASSERT_TRUE(runtime.ok()) << runtime.status().ToString();
  FakeServer fs;
  ASSERT_TRUE(fs.Start().ok());
  auto fake = fs.Serve([&]() -> hrpc::Status {
    HRPC_ASSIGN_OR_RETURN(auto conn, fs.listener->Accept());
    HRPC_TRY(RecvHeader(*conn).status());
    HRPC_TRY(RecvHeader(*conn).status());
    conn.reset();  // both calls are in flight: the connection goes
    return hrpc::Status::Ok();
  });
  auto channel = hrpc::RpcChannel::Create(**runtime, fs.listener->uri());
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  std::atomic<hrpc::RpcChannel*> holder{channel->release()};
  struct OneCall {
    ClientContext ctx;
    Req req;
    Resp resp;
    hrpc::Status status;
  };
  OneCall calls[2];
  std::atomic<int> done{0};
  rpctest::Test::Stub stub(holder.load());
  const auto t0 = std::chrono::steady_clock::now();
  for (OneCall& c : calls) {
    c.ctx.set_timeout(30s);
    stub.CallAsync(c.ctx, c.req, &c.resp, [&holder, &done, &c](hrpc::Status s) {
      c.status = s;
      if (hrpc::RpcChannel* ch = holder.exchange(nullptr)) delete ch;
      done.fetch_add(1);
    });
  }
  while (done.load() < 2 && std::chrono::steady_clock::now() - t0 < 20s) std::this_thread::sleep_for(1ms);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(done.load(), 2);
  EXPECT_LT(took, 3s) << "the channel's destruction waited for the other call";
  for (const OneCall& c : calls) EXPECT_FALSE(c.status.ok());
  EXPECT_TRUE(fake.Get().ok());
  EXPECT_TRUE(fs.Stop().ok());
}

// The same for a call whose request cannot go out at all (larger than a frame
// may be): its callback runs at once, on the caller's thread, and may destroy
// the channel without waiting for the call it is the callback of.
TEST(RpcConnectionLost, ADoneCallbackThatDestroysItsChannelAfterAnUnsendableRequestReturnsAtOnce) {
  Env env;
  env.Start("loop");
  std::atomic<hrpc::RpcChannel*> holder{env.channel.release()};
  rpctest::Test::Stub stub(holder.load());
  ClientContext ctx;
  Req req;
  req.set_text(std::string((16u << 20) + 1, 'x'));
  Resp resp;
  hrpc::Status status;
  std::atomic<bool> done{false};
  const auto t0 = std::chrono::steady_clock::now();
  stub.CallAsync(ctx, req, &resp, [&](hrpc::Status s) {
    status = s;
    delete holder.exchange(nullptr);
    done.store(true);
  });
  while (!done.load() && std::chrono::steady_clock::now() - t0 < 20s) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(done.load());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s) << "the channel's destruction waited for its own call";
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status.ToString();
  EXPECT_EQ(env.service.calls.load(), 0);
}

// The client side of the same rule, against a hand-driven server: while a call
// waits, the server's ping is answered with a pong, its pong with nothing, and
// the call then completes with the status the server sends.
TEST(RpcPing, ClientAnswersPingWithPongAndPongWithNothing) {
  auto runtime = hrpc::Runtime::Create({});
  ASSERT_TRUE(runtime.ok()) << runtime.status().ToString();
  FakeServer fs;
  ASSERT_TRUE(fs.Start().ok());
  auto fake = fs.Serve([&]() -> hrpc::Status {
    using hrpc::wire::FrameKind;
    HRPC_ASSIGN_OR_RETURN(auto conn, fs.listener->Accept());
    HRPC_ASSIGN_OR_RETURN(auto req, RecvHeader(*conn));
    if (req.kind != FrameKind::kRequest) return hrpc::InternalError("want the request first");
    HRPC_ASSIGN_OR_RETURN(auto ping, ControlFrame(**fs.pool, FrameKind::kPing, 5));
    HRPC_TRY(conn->Send(std::move(ping)));
    HRPC_ASSIGN_OR_RETURN(auto a, RecvHeader(*conn));
    if (a.kind != FrameKind::kPong || a.txn_id != 5) return hrpc::InternalError("want pong 5");
    HRPC_ASSIGN_OR_RETURN(auto pong, ControlFrame(**fs.pool, FrameKind::kPong, 6));
    HRPC_TRY(conn->Send(std::move(pong)));
    HRPC_ASSIGN_OR_RETURN(auto ping2, ControlFrame(**fs.pool, FrameKind::kPing, 7));
    HRPC_TRY(conn->Send(std::move(ping2)));
    HRPC_ASSIGN_OR_RETURN(auto b, RecvHeader(*conn));
    if (b.kind != FrameKind::kPong || b.txn_id != 7) {
      return hrpc::InternalError("the pong was answered: got " + std::string(FrameKindName(b.kind)) + " " +
                                 std::to_string(b.txn_id));
    }
    HRPC_ASSIGN_OR_RETURN(auto resp, ControlFrame(**fs.pool, FrameKind::kResponse, req.txn_id,
                                                  StatusCode::kFailedPrecondition));
    HRPC_TRY(conn->Send(std::move(resp)));
    (void)conn->Recv();  // until the client goes
    return hrpc::Status::Ok();
  });
  {
    auto channel = hrpc::RpcChannel::Create(**runtime, fs.listener->uri());
    ASSERT_TRUE(channel.ok()) << channel.status().ToString();
    rpctest::Test::Stub stub(channel->get());
    ClientContext ctx;
    ctx.set_timeout(10s);
    Req req;
    Resp resp;
    EXPECT_EQ(stub.Call(ctx, req, &resp).code(), StatusCode::kFailedPrecondition);
  }
  runtime->reset();
  hrpc::Status st = fake.WaitFor(10s);
  EXPECT_TRUE(st.ok()) << st.ToString();
  hrpc::Status gone = fs.Stop();
  EXPECT_TRUE(gone.ok()) << gone.ToString();
}

// Bytes that are not even the transport's handshake: only that socket goes.
TEST(RpcMalformedFrame, RawSocketGarbage) {
  Env env;
  env.Start("tcp");
  const int port = std::stoi(env.uri.substr(env.uri.rfind(':') + 1));
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::string junk(4096, '\x7f');
  ASSERT_GT(::write(fd, junk.data(), junk.size()), 0);
  // The server closes it: read returns 0 (EOF) or an error, not a hang.
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[256];
  ssize_t n;
  do {
    n = ::read(fd, buf, sizeof buf);
  } while (n > 0);
  EXPECT_TRUE(n == 0 || errno == ECONNRESET) << "read returned " << n << " errno " << errno;
  ::close(fd);
  rpctest::Test::Stub stub(env.channel.get());
  ClientContext ctx;
  Req req;
  req.set_text("ok");
  Resp resp;
  ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
}

// Server and channel on borrowed network groups (workers + pool per group).
TEST(RpcNetworkGroups, ServerAndChannelOnGroups) {
  auto topo = hrpc::groups::Topology::FromMachine();
  ASSERT_TRUE(topo.ok()) << topo.status().ToString();
  hrpc::groups::GroupOptions go;
  go.pool.prefault = false;
  go.pool.grow = true;
  auto server_groups = hrpc::groups::NetworkGroups::Create(*topo, go);
  ASSERT_TRUE(server_groups.ok()) << server_groups.status().ToString();
  auto client_groups = hrpc::groups::NetworkGroups::Create(*topo, go);
  ASSERT_TRUE(client_groups.ok()) << client_groups.status().ToString();
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.runtime.groups = server_groups->get();
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  const std::string bound = (*server)->listen_uris().at(0);
  hrpc::RpcChannelOptions co;
  co.runtime.groups = client_groups->get();
  auto channel = hrpc::RpcChannel::Create("tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1), co);
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  rpctest::Test::Stub stub(channel->get());
  for (int i = 0; i < 10; ++i) {
    ClientContext ctx;
    ctx.request_attachment() = rpctest::MakePayload((*channel)->pool(), 64 * 1024, i);
    Req req;
    req.set_text("grouped");
    Resp resp;
    auto st = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(resp.attachment_bytes(), 64u * 1024);
  }
  channel->reset();
  server->reset();  // before the groups (their workers and pools)
}

TEST(RpcChannelOptions, SchemeLessUriPicksTransport) {
  auto a = hrpc::ResolveUri("127.0.0.1:7000", hrpc::TransportChoice::kTcp);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, "tcp://127.0.0.1:7000");
  auto b = hrpc::ResolveUri("127.0.0.1:7000", hrpc::TransportChoice::kAuto);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, hrpc::RdmaDeviceProbe() ? "rdma://127.0.0.1:7000" : "tcp://127.0.0.1:7000");
  EXPECT_FALSE(hrpc::ResolveUri("nope://x", hrpc::TransportChoice::kAuto).ok());
  EXPECT_FALSE(hrpc::ResolveUri("127.0.0.1", hrpc::TransportChoice::kTcp).ok());
}

TEST(RpcChannelOptions, UnreachableServerIsUnavailable) {
  // A port nobody listens on (bound then closed).
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  auto ch = hrpc::RpcChannel::Create("tcp://127.0.0.1:" + std::to_string(ntohs(a.sin_port)));
  ASSERT_TRUE(ch.ok());
  rpctest::Test::Stub stub(ch->get());
  ClientContext ctx;
  Req req;
  Resp resp;
  EXPECT_EQ(stub.Call(ctx, req, &resp).code(), StatusCode::kUnavailable);
}

TEST(RpcStats, HistogramQuantiles) {
  hrpc::LatencyHistogram h;
  for (int i = 1; i <= 1000; ++i) h.Record(static_cast<uint64_t>(i) * 1000);  // 1..1000 us
  EXPECT_EQ(h.count(), 1000u);
  const double p50 = static_cast<double>(h.Quantile(0.5)) / 1000;
  const double p99 = static_cast<double>(h.Quantile(0.99)) / 1000;
  EXPECT_NEAR(p50, 500, 500 * 0.07);
  EXPECT_NEAR(p99, 990, 990 * 0.07);
  EXPECT_LE(h.Quantile(1.0), h.max_ns());
  for (uint64_t v : {0ull, 1ull, 15ull, 16ull, 17ull, 1000ull, 123456789ull}) {
    EXPECT_GE(hrpc::LatencyHistogram::BucketUpperEdge(hrpc::LatencyHistogram::BucketOf(v)), v);
  }
}

// A scrape reads every method's counters (ForEach, Snapshot) for as long as
// it likes: a call meanwhile that meets a method for the first time (For)
// does not wait for it.
TEST(RpcStats, AScrapeDoesNotHoldUpACallOfANewMethod) {
  hrpc::StatsRegistry reg;
  reg.For(1, 1, "svc.First");
  std::atomic<bool> in_scrape{false};
  std::thread scrape([&] {
    reg.ForEach([&](const hrpc::MethodCounters&) {
      in_scrape.store(true);
      std::this_thread::sleep_for(300ms);
    });
  });
  while (!in_scrape.load()) std::this_thread::yield();
  const auto t0 = std::chrono::steady_clock::now();
  reg.For(1, 2, "svc.Second").Begin();
  const auto took = std::chrono::steady_clock::now() - t0;
  scrape.join();
  EXPECT_LT(took, 100ms) << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  EXPECT_EQ(reg.Snapshot().size(), 2u);
}

}  // namespace

// A peer whose kernel accepts the TCP connection but that never answers the
// transport's handshake: each call ends at its own deadline, not at the
// connect timeout, and is never sent; the connect goes on for later
// calls, and the runtime still stops.
TEST(RpcConnect, ACallWaitingForAConnectEndsAtItsDeadline) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 8), 0);  // never accepted, never answered
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  hrpc::RuntimeOptions ro;
  ro.name = "silent-peer";
  ro.transport_choice = hrpc::TransportChoice::kTcp;
  ro.transport.connect_timeout = 1500ms;  // what stopping the runtime waits for at most
  auto rt = hrpc::Runtime::Create(ro);
  ASSERT_TRUE(rt.ok());
  auto ch = hrpc::RpcChannel::Create(**rt, "tcp://127.0.0.1:" + std::to_string(ntohs(a.sin_port)));
  ASSERT_TRUE(ch.ok());
  rpctest::Test::Stub stub(ch->get());
  for (int i = 0; i < 2; ++i) {  // the first starts the connect, the second waits for it
    ClientContext ctx;
    ctx.set_timeout(200ms);
    Req req;
    Resp resp;
    const auto t0 = std::chrono::steady_clock::now();
    const hrpc::Status s = stub.Call(ctx, req, &resp);
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << i << ": " << s.ToString();
    EXPECT_LT(took, 1500ms) << i << ": the call waited for the connect timeout";
  }
  const auto t0 = std::chrono::steady_clock::now();
  ch->reset();
  rt->reset();
  std::printf("channel and runtime stopped in %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - t0).count()));
  close(fd);
}

// Calls that gave up while their connection was being made (one at its
// deadline, one cancelled) were never sent; the connect they started goes on
// and completes, and the next call uses that connection.
TEST(RpcConnect, CallsThatGaveUpOnAConnectLeaveItToLaterCalls) {
  Env env;
  env.Start("tcp");
  const std::string& uri = env.uri;
  hrpc::testing::TcpRelay relay(static_cast<uint16_t>(std::stoi(uri.substr(uri.rfind(':') + 1))), {.hold = 600ms});
  hrpc::RpcChannelOptions co;
  co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  co.runtime.transport.connect_timeout = 10s;
  auto ch = hrpc::RpcChannel::Create("tcp://127.0.0.1:" + std::to_string(relay.port()), co);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  rpctest::Test::Stub stub(ch->get());
  Req req;
  req.set_text("after the connect");
  Resp resp;
  {
    ClientContext ctx;
    ctx.set_timeout(50ms);
    EXPECT_EQ(stub.Call(ctx, req, &resp).code(), StatusCode::kDeadlineExceeded);
  }
  {
    ClientContext ctx;
    std::thread canceller([&] {
      std::this_thread::sleep_for(50ms);
      ctx.Cancel();
    });
    EXPECT_EQ(stub.Call(ctx, req, &resp).code(), StatusCode::kCancelled);
    canceller.join();
  }
  EXPECT_EQ(env.service.calls.load(), 0);
  ClientContext ctx;
  ctx.set_timeout(20s);
  const hrpc::Status s = stub.Call(ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.text(), "after the connect");
  EXPECT_EQ(env.service.calls.load(), 1);
  EXPECT_EQ(relay.accepted(), 1) << "the connect the first call started was not the one used";
  ch->reset();
}

// Connect() and a call made from a coroutine on the channel's own worker
// suspend that coroutine instead of blocking the worker's thread.
TEST(RpcChannelWorker, ConnectAndCallFromOwnWorker) {
  Env env;
  env.Start("tcp");
  auto fut = hrpc::coro::Async(env.channel->scheduler(0), [&]() -> hrpc::Status {
    HRPC_TRY(env.channel->Connect());
    rpctest::Test::Stub stub(env.channel.get());
    ClientContext ctx;
    ctx.set_timeout(5s);
    Req req;
    req.set_text("from the channel's worker");
    Resp resp;
    HRPC_TRY(stub.Call(ctx, req, &resp));
    if (resp.text() != req.text()) return hrpc::InternalError("wrong echo: " + resp.text());
    return hrpc::Status::Ok();
  });
  hrpc::Status s = fut.WaitFor(20s);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

// A poller (or an I/O completion callback) runs on a worker outside any
// coroutine: a synchronous call there would block the worker that has to
// finish it. It is refused at once; the async form works from there.
TEST(RpcChannelWorker, ASynchronousCallInAPollerOfItsWorkerIsRefused) {
  Env env;
  env.Start("tcp");
  struct Outcome {
    hrpc::Status sync, connect;
    std::atomic<int> async_code{-1};
    std::atomic<bool> polled{false};
    std::string async_text;
    Req req;
    Resp resp;
    ClientContext sync_ctx, async_ctx;
  } out;
  rpctest::Test::Stub stub(env.channel.get());
  rpctest::OncePoller poller;
  poller.once = [&] {
    Resp resp;
    out.req.set_text("from a poller");
    out.sync_ctx.set_timeout(5s);
    out.sync = stub.Call(out.sync_ctx, out.req, &resp);
    out.connect = env.channel->Connect();
    out.async_ctx.set_timeout(5s);
    stub.CallAsync(out.async_ctx, out.req, &out.resp, [&](hrpc::Status s) {
      out.async_text = out.resp.text();
      out.async_code.store(static_cast<int>(s.code()));
    });
    out.polled.store(true);
  };
  hrpc::coro::Scheduler& sched = env.channel->scheduler(0);
  sched.Post([&] { hrpc::coro::Scheduler::Current()->AddPoller(&poller); });
  for (int i = 0; i < 2500 && out.async_code.load() < 0; ++i) std::this_thread::sleep_for(2ms);
  auto removed = hrpc::coro::Async(sched, [&] { hrpc::coro::Scheduler::Current()->RemovePoller(&poller); });
  ASSERT_TRUE(removed.WaitFor(5s).ok());
  ASSERT_TRUE(out.polled.load());
  EXPECT_EQ(out.sync.code(), StatusCode::kFailedPrecondition) << out.sync.ToString();
  EXPECT_NE(out.sync.message().find("async form"), std::string::npos) << out.sync.ToString();
  EXPECT_EQ(out.connect.code(), StatusCode::kFailedPrecondition) << out.connect.ToString();
  ASSERT_EQ(out.async_code.load(), static_cast<int>(StatusCode::kOk));
  EXPECT_EQ(out.async_text, "from a poller");
  // The worker was never blocked: a call from a coroutine of it works too.
  ExpectEcho(stub, "after the poller");
}
