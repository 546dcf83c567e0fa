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

#include "hrpc/rpc/rpc_channel.h"
#include "rpc_test.hrpc.h"

namespace {

using namespace std::chrono_literals;

struct Child {
  pid_t pid = -1;
  std::string uri;
  FILE* out = nullptr;  // the child's stdout: kept open so its later log lines do not hit SIGPIPE
};

// Starts rpc_test_server and waits for its "READY <uri>" line.
Child StartServer(const std::string& listen) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const std::string arg = "--listen=" + listen;  // no allocation after fork()
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl(RPC_TEST_SERVER, RPC_TEST_SERVER, arg.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  Child c;
  c.pid = pid;
  FILE* f = fdopen(fds[0], "r");
  char line[512];
  while (f != nullptr && fgets(line, sizeof line, f) != nullptr) {  // skips log lines
    std::string s(line);
    if (s.rfind("READY ", 0) == 0) {
      c.uri = s.substr(6, s.find_last_not_of("\r\n") - 5);
      break;
    }
  }
  c.out = f;
  return c;
}

void Kill(Child& c) {
  if (c.pid <= 0) return;
  kill(c.pid, SIGKILL);
  int st = 0;
  waitpid(c.pid, &st, 0);
  c.pid = -1;
  if (c.out != nullptr) fclose(c.out);
  c.out = nullptr;
}

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
  Kill(server);
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
  Kill(server);
}

}  // namespace
