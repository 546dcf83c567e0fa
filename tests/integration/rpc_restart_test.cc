// The server process killed -> calls fail with UNAVAILABLE; restarted on the
// same port -> the same RpcChannel works again (it reconnects).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/child_process.h"
#include "hrpc/rpc/rpc_channel.h"
#include "rpc_test.hrpc.h"

namespace {

using namespace std::chrono_literals;

using hrpc::examples::Child;
using hrpc::examples::KillChild;

Child StartServer(const std::string& listen) { return hrpc::examples::StartChild(RPC_TEST_SERVER, {"--listen=" + listen}); }

hrpc::Status Ping(hrpc::RpcChannel& ch, const std::string& text) {
  rpctest::Test::Stub stub(&ch);
  hrpc::ClientContext ctx;
  ctx.set_timeout(5s);
  rpctest::Req req;
  req.set_text(text);
  rpctest::Resp resp;
  HRPC_TRY(stub.Call(ctx, req, &resp));
  if (resp.text() != text) return hrpc::DataLossError("wrong echo");
  return hrpc::Status::Ok();
}

TEST(RpcRestart, ServerKilledThenRestarted) {
  Child server = StartServer("tcp://127.0.0.1:0");  // the port is picked at run time
  ASSERT_GT(server.pid, 0);
  ASSERT_FALSE(server.uri.empty()) << "server did not report READY";
  const std::string port = server.uri.substr(server.uri.rfind(':') + 1);
  const std::string uri = "tcp://127.0.0.1:" + port;
  auto ch = hrpc::RpcChannel::Create(uri);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  auto s = Ping(**ch, "before");
  ASSERT_TRUE(s.ok()) << s.ToString();

  // A call in flight when the server dies, and one made after.
  rpctest::Test::Stub stub(ch->get());
  hrpc::ClientContext slow_ctx;
  rpctest::Req slow;
  slow.set_sleep_ms(5000);
  auto fut = stub.CallFuture(slow_ctx, slow);
  std::this_thread::sleep_for(100ms);
  KillChild(server);
  auto r = fut.WaitFor(10s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), hrpc::StatusCode::kUnavailable) << r.status().ToString();
  s = Ping(**ch, "while dead");
  EXPECT_EQ(s.code(), hrpc::StatusCode::kUnavailable) << s.ToString();

  server = StartServer(uri);
  ASSERT_GT(server.pid, 0);
  ASSERT_FALSE(server.uri.empty()) << "restarted server did not report READY (port " << port << " busy?)";
  s = Ping(**ch, "after restart");
  EXPECT_TRUE(s.ok()) << s.ToString();
  KillChild(server);
}

}  // namespace
