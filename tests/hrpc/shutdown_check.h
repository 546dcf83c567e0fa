// Shared by the RPC tests of every transport: what Shutdown() owes a client.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <thread>

#include <gtest/gtest.h>

#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"
#include "rpc_test_util.h"

namespace rpctest {

// An answer the client has not taken yet when Shutdown() comes still reaches
// it, within the grace: on TCP what is queued on the socket goes out before
// the close; on the loopback and RDMA the response held for the client's
// READs stays exposed until it has read it. `service` serves `server`,
// `channel` is a channel to it with a private runtime.
inline void ExpectShutdownDeliversAnAnswerTheClientHasNotTakenYet(hrpc::Server& server, hrpc::RpcChannel& channel,
                                                                  TestService& service) {
  using namespace std::chrono_literals;
  service.pool = &server.pool(0);
  Test::Stub stub(&channel);
  // Within TCP's send_queue_high_water: the handler's answer is queued, not
  // waited for.
  constexpr size_t kBytes = 8u << 20;
  hrpc::ClientContext ctx;
  ctx.set_timeout(30s);
  Req req;
  req.set_hold_ms(300);
  req.set_response_bytes(kBytes);
  auto fut = stub.CallFuture(ctx, req);
  for (int i = 0; i < 1000 && service.calls.load() == 0; ++i) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(service.calls.load(), 1);
  // The client's worker stops taking anything in until released.
  std::atomic<bool> blocked{false}, release{false};
  channel.scheduler(0).Post([&] {
    blocked.store(true);
    while (!release.load()) std::this_thread::sleep_for(1ms);
  });
  for (int i = 0; i < 500 && !blocked.load(); ++i) std::this_thread::sleep_for(2ms);
  ASSERT_TRUE(blocked.load());
  for (int i = 0; i < 1000 && service.running.load() > 0; ++i) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(service.running.load(), 0);
  std::this_thread::sleep_for(50ms);  // the answer is sent (queued, or exposed and announced)
  std::thread shutdown([&] { server.Shutdown(); });
  std::this_thread::sleep_for(300ms);
  release.store(true);
  auto r = fut.WaitFor(20s);
  shutdown.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(ctx.response_attachment().size(), kBytes);
  EXPECT_EQ(ctx.response_attachment().Crc32c(), MakePayload(channel.pool(), kBytes, 7).Crc32c());
}

}  // namespace rpctest
