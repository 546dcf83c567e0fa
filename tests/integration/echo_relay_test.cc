// The echo sample's relay mode (echo_server --forward): a call passed on to
// the next server keeps its caller's deadline, so a backend that does not
// answer does not keep the relay's handler (its concurrency slot, its pulled
// attachment) past the time its caller gave up.
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "common/echo_service.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"

namespace {

using namespace std::chrono_literals;

// Answers each Echo after 3 s (or once cancelled: Shutdown() ends it).
class SlowEcho final : public hrpc_examples::Echo::Service {
 public:
  hrpc::Status Echo(hrpc::ServerContext& ctx, const hrpc_examples::EchoRequest& req,
                    hrpc_examples::EchoResponse* resp) override {
    for (int i = 0; i < 300 && !ctx.IsCancelled(); ++i) hrpc::coro::this_coro::SleepFor(10ms);
    resp->set_text(req.text());
    return hrpc::Status::Ok();
  }
  hrpc::Status ServerStats(hrpc::ServerContext&, const hrpc_examples::StatsRequest&,
                           hrpc_examples::StatsResponse*) override {
    return hrpc::UnimplementedError("no stats");
  }
  hrpc::Status Chat(hrpc::ServerContext&,
                    hrpc::ServerReaderWriter<hrpc_examples::EchoResponse, hrpc_examples::EchoRequest>*) override {
    return hrpc::UnimplementedError("no chat");
  }
};

std::unique_ptr<hrpc::Server> Serve(hrpc::Runtime& rt, hrpc::Service* svc) {
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  auto s = hrpc::Server::Create(rt, so);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE((*s)->RegisterService(svc).ok());
  EXPECT_TRUE((*s)->Start().ok());
  return std::move(*s);
}

std::string TcpUri(const hrpc::Server& s) {
  const std::string bound = s.listen_uris().at(0);
  return "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1);
}

TEST(EchoRelay, AForwardedCallEndsWithItsCallersDeadline) {
  auto rt = hrpc::Runtime::Create(hrpc::RuntimeOptions{}).value();
  SlowEcho slow;
  auto backend = Serve(*rt, &slow);
  auto next = hrpc::RpcChannel::Create(*rt, TcpUri(*backend)).value();
  hrpc::examples::EchoServiceImpl relay_service;
  relay_service.set_forward(next.get());
  auto relay = Serve(*rt, &relay_service);
  auto channel = hrpc::RpcChannel::Create(*rt, TcpUri(*relay)).value();

  hrpc::ClientContext ctx;
  ctx.set_timeout(200ms);
  hrpc_examples::EchoRequest req;
  req.set_text("through the relay");
  hrpc_examples::EchoResponse resp;
  const auto t0 = std::chrono::steady_clock::now();
  hrpc::Status s = hrpc_examples::Echo::Stub(channel.get()).Echo(ctx, req, &resp);
  EXPECT_EQ(s.code(), hrpc::StatusCode::kDeadlineExceeded) << s.ToString();
  // The relay's handler ends at that deadline too (its call is recorded
  // once answered), long before the backend would have answered.
  auto finished = [&] {
    for (const auto& m : relay->Stats()) {
      if (m.method == "hrpc_examples.Echo.Echo" && m.count > 0) return true;
    }
    return false;
  };
  while (!finished() && std::chrono::steady_clock::now() - t0 < 2500ms) std::this_thread::sleep_for(5ms);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(finished());
  EXPECT_LT(took, 1500ms) << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                          << " ms: the relay waited for the backend";
  channel.reset();
  relay->Shutdown();
  next.reset();
  backend->Shutdown();
}

}  // namespace
