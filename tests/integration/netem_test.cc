// The client and server hosts of netns_test.cc with netem between them:
// 5 ms each way and 1% loss each way (tc netem on both veth ends). Needs a
// kernel with sch_netem: the Soft-RoCE guest's (scripts/rdma-tests.sh runs
// the label `netem` there); elsewhere the test skips and says so.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "netns_harness.h"
#include "rpc_test_util.h"

namespace hrpc::netns {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST(Netem, DelayAndLossEveryCallCompletesWithItsPayload) {
  auto net = NetnsPair::Create();
  if (!net.ok()) GTEST_SKIP() << net.status().ToString();
  if (auto s = (*net)->SetNetem(5ms, 1); !s.ok()) GTEST_SKIP() << s.ToString();
  const std::string uri = NetnsPair::ServerUri(7000);
  auto started = (*net)->StartServer(RPC_TEST_SERVER, {"--listen=" + uri});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  auto rt = ClientRuntime(**net, 250ms, 3000ms);
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  auto ch = RpcChannel::Create(**rt, uri);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();

  // The delay is there: no round trip is shorter than 2 x 5 ms.
  ASSERT_EQ(RunEchoCalls(**ch, (*rt)->pool(0), 1, 0, 1, 10s).ok, 1);  // connects
  double fastest_ms = 1e9;
  for (int i = 0; i < 10; ++i) {
    const auto t0 = Clock::now();
    const Tally one = RunEchoCalls(**ch, (*rt)->pool(0), 1, 0, 1, 10s);
    ASSERT_EQ(one.ok, 1) << one.first_error;
    fastest_ms = std::min(fastest_ms, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  EXPECT_GE(fastest_ms, 10.0) << "netem's delay is not on the path";

  const Tally small = RunEchoCalls(**ch, (*rt)->pool(0), 300, 512, 16, 30s);
  EXPECT_EQ(small.ok, small.made) << small.failed << " failed (first: " << small.first_error << ")";
  EXPECT_EQ(small.wrong, 0);
  const Tally large = RunEchoCalls(**ch, (*rt)->pool(0), 8, 1u << 20, 4, 60s);
  EXPECT_EQ(large.ok, large.made) << large.failed << " failed (first: " << large.first_error << ")";
  EXPECT_EQ(large.wrong, 0);
  std::printf("netns case=netem delay_ms=5 loss_pct=1 calls=%d ok=%d lost=%d wrong=%d rtt_min_ms=%.1f small_s=%.2f "
              "large_s=%.2f\n",
              small.made + large.made, small.ok + large.ok, small.failed + large.failed, small.wrong + large.wrong,
              fastest_ms, small.seconds, large.seconds);
}

}  // namespace
}  // namespace hrpc::netns
