// hrpc::RunLoad against a real server over TCP: closed loop, a qps-paced run,
// failing calls counted with the first error, and options it refuses.
#include "hrpc/rpc/load.h"

#include <chrono>
#include <memory>

#include <gtest/gtest.h>

#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "rpc_test_util.h"

namespace {

struct Env {
  std::unique_ptr<hrpc::Runtime> server_runtime, client_runtime;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;
  rpctest::TestService service;

  Env() {
    hrpc::RuntimeOptions ro;
    ro.transport_choice = hrpc::TransportChoice::kTcp;
    server_runtime = std::move(hrpc::Runtime::Create(ro).value());
    client_runtime = std::move(hrpc::Runtime::Create(ro).value());
    hrpc::ServerOptions so;
    so.listen = {"tcp://127.0.0.1:0"};
    server = std::move(hrpc::Server::Create(*server_runtime, so).value());
    EXPECT_TRUE(server->RegisterService(&service).ok());
    EXPECT_TRUE(server->Start().ok());
    channel = std::move(hrpc::RpcChannel::Create(*client_runtime, server->listen_uris().at(0)).value());
    EXPECT_TRUE(channel->Connect().ok());
  }
};

hrpc::LoadCall CallWith(hrpc::RpcChannel& channel, rpctest::Req req) {
  return [&channel, req](hrpc::ClientContext& ctx) {
    rpctest::Test::Stub stub(&channel);
    rpctest::Resp resp;
    return stub.Call(ctx, req, &resp);
  };
}

TEST(RunLoad, ClosedLoopMeasuresOnlyTheWindow) {
  Env env;
  hrpc::LoadOptions o;
  o.coroutines_per_worker = 4;
  o.warmup = std::chrono::milliseconds(200);
  o.duration = std::chrono::milliseconds(500);
  o.bytes_per_call = 1000;
  int window_edges = 0;
  o.on_window_start = [&] { ++window_edges; };
  o.on_window_end = [&] { ++window_edges; };
  const hrpc::LoadResult r = hrpc::RunLoad(*env.channel, o, CallWith(*env.channel, {}));
  EXPECT_EQ(window_edges, 2);
  EXPECT_EQ(r.errors, 0u) << r.first_error;
  EXPECT_GT(r.calls, 0u);
  // The server saw the warm-up calls too; the result counts the window only.
  EXPECT_GT(static_cast<uint64_t>(env.service.calls.load()), r.calls);
  EXPECT_GE(r.seconds, 0.5);
  EXPECT_LT(r.seconds, 1.5);
  EXPECT_NEAR(r.rps, static_cast<double>(r.calls) / r.seconds, 1e-6);
  EXPECT_NEAR(r.mbps, r.rps * 1000 / 1e6, 1e-6);
  EXPECT_GT(r.p50_us, 0);
  EXPECT_LE(r.p50_us, r.p90_us);
  EXPECT_LE(r.p99_us, r.p999_us);
  EXPECT_LE(r.p999_us, r.max_us);
}

TEST(RunLoad, QpsPacesTheCalls) {
  Env env;
  hrpc::LoadOptions o;
  o.coroutines_per_worker = 8;
  o.qps = 100;
  o.warmup = std::chrono::milliseconds(0);
  o.duration = std::chrono::seconds(1);
  const hrpc::LoadResult r = hrpc::RunLoad(*env.channel, o, CallWith(*env.channel, {}));
  EXPECT_EQ(r.errors, 0u) << r.first_error;
  // Unpaced, 8 coroutines make thousands of calls a second.
  EXPECT_GE(r.calls, 50u);
  EXPECT_LE(r.calls, 105u);
}

// Paced slowly with many coroutines, the slots they claim lie far ahead of
// the clock (32 coroutines at 2 qps: 16 s): the run still ends with its window.
TEST(RunLoad, APacedRunEndsWithItsWindow) {
  Env env;
  hrpc::LoadOptions o;
  o.coroutines_per_worker = 32;
  o.qps = 2;
  o.warmup = std::chrono::milliseconds(0);
  o.duration = std::chrono::seconds(1);
  const auto t0 = std::chrono::steady_clock::now();
  const hrpc::LoadResult r = hrpc::RunLoad(*env.channel, o, CallWith(*env.channel, {}));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.errors, 0u) << r.first_error;
  EXPECT_GE(r.calls, 1u);
  EXPECT_LE(r.calls, 4u);
  EXPECT_LT(took, std::chrono::milliseconds(1800))
      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
}

TEST(RunLoad, FailedCallsAreCountedWithTheFirstError) {
  Env env;
  rpctest::Req req;
  req.set_fail_code(static_cast<int32_t>(hrpc::StatusCode::kPermissionDenied));
  req.set_fail_message("no entry");
  hrpc::LoadOptions o;
  o.coroutines_per_worker = 2;
  o.warmup = std::chrono::milliseconds(0);
  o.duration = std::chrono::milliseconds(200);
  const hrpc::LoadResult r = hrpc::RunLoad(*env.channel, o, CallWith(*env.channel, req));
  EXPECT_EQ(r.calls, 0u);
  EXPECT_GT(r.errors, 0u);
  EXPECT_NE(r.first_error.find("no entry"), std::string::npos) << r.first_error;
}

TEST(RunLoad, RefusesBadOptions) {
  Env env;
  hrpc::LoadOptions o;
  o.coroutines_per_worker = 0;
  hrpc::LoadResult r = hrpc::RunLoad(*env.channel, o, CallWith(*env.channel, {}));
  EXPECT_EQ(r.errors, 1u);
  EXPECT_NE(r.first_error.find("INVALID_ARGUMENT"), std::string::npos) << r.first_error;
  o.coroutines_per_worker = 1;
  o.qps = -1;
  r = hrpc::RunLoad(*env.channel, o, CallWith(*env.channel, {}));
  EXPECT_EQ(r.errors, 1u);
  EXPECT_EQ(env.service.calls.load(), 0);
}

}  // namespace
