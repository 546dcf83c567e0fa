// Shared by the RPC runtime tests: checks that calls leave no pool block
// behind, on any transport.
#pragma once

#include <chrono>
#include <cstddef>
#include <thread>
#include <utility>

#include <gtest/gtest.h>

#include "../mempool/pool_test_util.h"
#include "hrpc/mempool/pool.h"
#include "rpc_test_util.h"

namespace rpctest {

// Calls of every shape through `stub` (served by a TestService): attachments
// of 0 B to 1 MiB echoed with their size announced, a 5 MiB response the
// client did not announce, a handler that fails with an attachment sent, and a
// call that times out while its handler runs. A first round warms both sides
// up (the connection, its receive buffers); five more rounds must end with
// both pools where the first left them, once the releases and cancels in
// flight have landed, give or take what a transport keeps for its next reads
// (TCP: one 1 KiB prefetch buffer, kept or not depending on its last read).
// A block left behind by each of the 35 calls would exceed that slack.
inline void ExpectCallsLeaveNoPoolBlocks(Test::Stub& stub, hrpc::mempool::Pool& client, hrpc::mempool::Pool& server,
                                         const TestService& service) {
  using namespace std::chrono_literals;
  auto echo = [&](size_t n, bool announce) {
    hrpc::ClientContext ctx;
    ctx.set_timeout(60s);
    ctx.request_attachment() = MakePayload(client, n, static_cast<uint32_t>(n));
    const uint32_t crc = ctx.request_attachment().Crc32c();
    if (announce) ctx.set_response_attachment_capacity(n);
    Req req;
    req.set_echo_attachment(true);
    Resp resp;
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << n << " bytes: " << s.ToString();
    EXPECT_EQ(ctx.response_attachment().Crc32c(), crc) << n << " bytes";
  };
  const int cancels_before = service.saw_cancel.load();
  auto round = [&] {
    for (size_t n : {size_t{0}, size_t{100}, size_t{64} << 10, size_t{1} << 20}) echo(n, true);
    echo(size_t{5} << 20, false);
    {
      hrpc::ClientContext ctx;
      ctx.set_timeout(60s);
      ctx.request_attachment() = MakePayload(client, 100000, 1);
      Req req;
      req.set_fail_code(static_cast<int>(hrpc::StatusCode::kAborted));
      Resp resp;
      EXPECT_EQ(stub.Call(ctx, req, &resp).code(), hrpc::StatusCode::kAborted);
    }
    {
      hrpc::ClientContext ctx;
      ctx.set_timeout(300ms);
      ctx.request_attachment() = MakePayload(client, 200000, 2);
      Req req;
      req.set_wait_for_cancel(true);
      Resp resp;
      EXPECT_EQ(stub.Call(ctx, req, &resp).code(), hrpc::StatusCode::kDeadlineExceeded);
    }
  };
  // Both levels once they have held still for 300 ms (at most 20 s).
  auto settled = [&] {
    std::pair<size_t, size_t> last{~size_t{0}, ~size_t{0}};
    auto still_since = std::chrono::steady_clock::now();
    const auto deadline = still_since + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::pair<size_t, size_t> now{hrpc::mempool::testing::BytesInUse(client), hrpc::mempool::testing::BytesInUse(server)};
      if (now != last) {
        last = now;
        still_since = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - still_since >= 300ms) {
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    return last;
  };
  round();
  const auto first = settled();
  for (int i = 0; i < 5; ++i) round();
  const auto after = settled();
  constexpr size_t kSlack = 4096;
  EXPECT_LE(after.first, first.first + kSlack) << "client pool bytes in use, " << first.first << " after one round";
  EXPECT_LE(after.second, first.second + kSlack) << "server pool bytes in use, " << first.second << " after one round";
  EXPECT_GE(service.saw_cancel.load() - cancels_before, 6) << "handlers that saw their call's cancel";
}

}  // namespace rpctest
