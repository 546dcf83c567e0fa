// A client and a server on two "hosts" (network namespaces joined by a veth
// pair, tests/integration/netns_harness.h), the server a process of its own
// (rpc_test_server), the client this process's runtime with its sockets in
// the client namespace. Faults come from nftables on the server's host:
// random loss, a partition while calls are in flight, and a host that powers
// off and boots again with the same address.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/transport/tcp.h"
#include "netns_harness.h"
#include "rpc_test_util.h"

namespace hrpc::netns {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kPort = 7000;  // the server host's own port space: no collision with anything

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

class Netns : public ::testing::Test {
 protected:
  void SetUp() override {
    auto n = NetnsPair::Create();
    if (!n.ok()) GTEST_SKIP() << n.status().ToString();
    net_ = std::move(*n);
  }

  void StartServer() {
    auto uri = net_->StartServer(RPC_TEST_SERVER, {"--listen=" + NetnsPair::ServerUri(kPort)});
    ASSERT_TRUE(uri.ok()) << uri.status().ToString();
    ASSERT_EQ(*uri, NetnsPair::ServerUri(kPort));
  }

  // The client's runtime (in the client namespace) and a channel to the server.
  void Connect(std::chrono::milliseconds keepalive, std::chrono::milliseconds dead_peer,
               const std::function<void(RuntimeOptions&)>& adjust = {}) {
    auto rt = ClientRuntime(*net_, keepalive, dead_peer, adjust);
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    rt_ = std::move(*rt);
    auto ch = RpcChannel::Create(*rt_, NetnsPair::ServerUri(kPort));
    ASSERT_TRUE(ch.ok()) << ch.status().ToString();
    ch_ = std::move(*ch);
  }

  Tally Echo(int calls, size_t attachment_bytes, int in_flight, std::chrono::milliseconds timeout) {
    return RunEchoCalls(*ch_, rt_->pool(0), calls, attachment_bytes, in_flight, timeout);
  }

  // One call without attachment; its response in *resp.
  Status CallOnce(std::chrono::milliseconds timeout, rpctest::Resp* resp) {
    rpctest::Test::Stub stub(ch_.get());
    ClientContext ctx;
    ctx.set_timeout(timeout);
    rpctest::Req req;
    req.set_text("once");
    return stub.Call(ctx, req, resp);
  }

  // The server sees the client's namespace address: the calls really cross the veth.
  void ExpectPeerIsClientHost() {
    rpctest::Resp resp;
    ASSERT_TRUE(CallOnce(5s, &resp).ok());
    EXPECT_EQ(resp.peer().rfind(std::string("tcp://") + NetnsPair::kClientAddr + ":", 0), 0u) << resp.peer();
  }

  std::unique_ptr<NetnsPair> net_;  // declared first: destroyed after the runtime
  std::unique_ptr<Runtime> rt_;
  std::unique_ptr<RpcChannel> ch_;
};

void ExpectAllAnswered(const Tally& t, const char* what) {
  EXPECT_EQ(t.ok, t.made) << what << ": " << t.failed << " failed (first: " << t.first_error << "), " << t.wrong
                          << " answered with wrong bytes";
  EXPECT_EQ(t.wrong, 0) << what;
}

// 1% of the packets in each direction dropped: TCP retransmits, every call
// completes, and every payload comes back bit for bit.
TEST_F(Netns, OnePercentLossEveryCallCompletesWithItsPayload) {
  ASSERT_TRUE(net_->SetLoss(1).ok());
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(Connect(250ms, 3000ms));
  ASSERT_NO_FATAL_FAILURE(ExpectPeerIsClientHost());

  const Tally small = Echo(3000, 512, 16, 20s);
  ExpectAllAnswered(small, "512 B calls");
  const Tally large = Echo(128, 1u << 20, 4, 30s);
  ExpectAllAnswered(large, "1 MiB calls");
  auto dropped = net_->DroppedPackets();
  ASSERT_TRUE(dropped.ok()) << dropped.status().ToString();
  EXPECT_GT(*dropped, 0u) << "the loss rule dropped nothing: the test did not test loss";
  std::printf("netns case=loss loss_pct=1 calls=%d ok=%d lost=%d wrong=%d dropped_packets=%llu small_s=%.2f "
              "large_s=%.2f\n",
              small.made + large.made, small.ok + large.ok, small.failed + large.failed, small.wrong + large.wrong,
              static_cast<unsigned long long>(*dropped), small.seconds, large.seconds);
}

// Everything between the hosts dropped while calls are in flight: each call
// ends with DEADLINE_EXCEEDED (its own deadline came first) or UNAVAILABLE
// (the dead-peer timeout declared the connection dead) within the dead-peer
// timeout; once the partition heals, new calls on the same channel succeed.
TEST_F(Netns, PartitionMidCallFailsWithinDeadPeerTimeoutThenHeals) {
  constexpr auto kKeepalive = 200ms, kDeadPeer = 1000ms;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(Connect(kKeepalive, kDeadPeer));
  ExpectAllAnswered(Echo(16, 512, 8, 5s), "before the partition");

  struct InFlight {
    ClientContext ctx;
    rpctest::Req req;
    rpctest::Resp resp;
    std::atomic<bool> done{false};
    Status status;
    Clock::time_point ended;
  };
  rpctest::Test::Stub stub(ch_.get());
  std::vector<std::unique_ptr<InFlight>> calls;
  // Should an assertion end the test early, the channel goes first: it ends
  // the calls still in flight (CANCELLED) before their records are freed.
  struct ChannelFirst {
    std::unique_ptr<RpcChannel>& ch;
    ~ChannelFirst() { ch.reset(); }
  } channel_first{ch_};
  auto start = [&](uint32_t sleep_ms, std::chrono::milliseconds deadline, size_t attachment) {
    auto c = std::make_unique<InFlight>();
    c->req.set_sleep_ms(sleep_ms);
    if (deadline.count() > 0) c->ctx.set_timeout(deadline);
    if (attachment > 0) {
      c->ctx.request_attachment() = rpctest::MakePayload(rt_->pool(0), attachment, 1);
      c->req.set_echo_attachment(true);
    }
    InFlight* p = c.get();
    stub.CallAsync(p->ctx, p->req, &p->resp, [p](Status s) {
      p->status = std::move(s);
      p->ended = Clock::now();
      p->done.store(true, std::memory_order_release);
    });
    calls.push_back(std::move(c));
  };
  // At the server when the partition starts: no deadline, and a deadline
  // shorter than the dead-peer timeout.
  for (int i = 0; i < 4; ++i) start(5000, 0ms, 0);
  for (int i = 0; i < 2; ++i) start(5000, 600ms, 0);
  std::this_thread::sleep_for(100ms);  // they reached the server
  ASSERT_TRUE(net_->Partition().ok());
  const auto cut = Clock::now();
  // Sent into the partition: 1 MiB requests that cannot get through.
  for (int i = 0; i < 2; ++i) start(0, 0ms, 1u << 20);

  // The bound: nothing arrives after the cut, so the connection is declared
  // dead at most dead_peer_timeout after it, seen at the next keepalive tick;
  // 300 ms for scheduling under the sanitizers on a loaded machine.
  const auto bound = kDeadPeer + kKeepalive + 300ms;
  double slowest = 0, fastest = 1e9;
  int unavailable = 0, deadline = 0;
  for (auto& c : calls) {
    while (!c->done.load(std::memory_order_acquire) && Clock::now() - cut < 10s) std::this_thread::sleep_for(5ms);
    ASSERT_TRUE(c->done.load(std::memory_order_acquire)) << "a call did not end 10 s into the partition";
    const StatusCode code = c->status.code();
    EXPECT_TRUE(code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded) << c->status.ToString();
    (code == StatusCode::kUnavailable ? unavailable : deadline) += 1;
    const double ms = Ms(c->ended - cut);
    slowest = std::max(slowest, ms);
    fastest = std::min(fastest, ms);
    EXPECT_LE(c->ended - cut, bound) << "ended " << ms << " ms into the partition: " << c->status.ToString();
  }
  EXPECT_EQ(deadline, 2) << "the two calls with a 600 ms deadline end by it";
  EXPECT_EQ(unavailable, 6) << "the others end when the dead-peer timeout fails the connection";

  ASSERT_TRUE(net_->Heal().ok());
  const auto healed = Clock::now();
  const Tally after_small = Echo(32, 512, 8, 5s);
  const double first_ok_ms = Ms(Clock::now() - healed);
  ExpectAllAnswered(after_small, "after healing");
  const Tally after_large = Echo(4, 1u << 20, 2, 10s);
  ExpectAllAnswered(after_large, "1 MiB after healing");
  std::printf("netns case=partition dead_peer_ms=%lld in_flight=%zu unavailable=%d deadline_exceeded=%d "
              "fail_ms_min=%.0f fail_ms_max=%.0f bound_ms=%lld calls_after_heal=%d ok_after_heal=%d "
              "heal_to_32_ok_ms=%.0f\n",
              static_cast<long long>(kDeadPeer.count()), calls.size(), unavailable, deadline, fastest, slowest,
              static_cast<long long>(bound.count()), after_small.made + after_large.made,
              after_small.ok + after_large.ok, first_ok_ms);
}

// The server's host powers off (link cut, server killed, namespace deleted)
// and boots again with the same address; the server starts again on the same
// port. The client's connection saw no FIN and is still open when the host is
// back (the dead-peer timeout is longer than the reboot): the new host's
// kernel answers it with a reset, and the channel reconnects before the
// dead-peer timeout. Calls succeed again without a new channel.
TEST_F(Netns, ServerHostRebootClientReconnects) {
  constexpr auto kKeepalive = 200ms, kDeadPeer = 3000ms;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(Connect(kKeepalive, kDeadPeer));
  ExpectAllAnswered(Echo(16, 4096, 8, 5s), "before the reboot");

  ASSERT_TRUE(net_->PowerOffServerHost().ok());
  const auto off = Clock::now();
  const Tally down = Echo(2, 512, 2, 300ms);
  EXPECT_EQ(down.failed, 2) << "calls to a powered-off host cannot succeed";
  EXPECT_EQ(rt_->stats().client_connections, 1u) << "no FIN or reset reached the client: its connection stays open";

  ASSERT_TRUE(net_->BootServerHost().ok());
  const auto booted = Clock::now();
  const size_t open_at_boot = rt_->stats().client_connections;
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const auto up = Clock::now();
  const double down_ms = Ms(booted - off);
  // Calls as an application would make them, each with a deadline, until
  // one succeeds: the first ones may still meet the old connection (the
  // client's keepalives usually reach the new host first, while the server
  // starts, and its reset ends that connection).
  int attempts = 0;
  Status last;
  for (; Clock::now() - up < 10s; ++attempts) {
    rpctest::Resp resp;
    last = CallOnce(500ms, &resp);
    if (last.ok()) break;
    EXPECT_TRUE(last.code() == StatusCode::kUnavailable || last.code() == StatusCode::kDeadlineExceeded)
        << last.ToString();
  }
  ASSERT_TRUE(last.ok()) << "no call succeeded 10 s after the reboot: " << last.ToString();
  const double reconnect_ms = Ms(Clock::now() - up), boot_to_ok_ms = Ms(Clock::now() - booted);
  EXPECT_LT(Clock::now() - booted, kDeadPeer) << "the reset from the new host should end the old connection";
  const Tally after = Echo(32, 4096, 8, 5s);
  ExpectAllAnswered(after, "after the reboot");
  const Tally after_large = Echo(4, 1u << 20, 2, 10s);
  ExpectAllAnswered(after_large, "1 MiB after the reboot");
  ExpectPeerIsClientHost();
  std::printf("netns case=reboot dead_peer_ms=%lld down_ms=%.0f failed_while_down=%d old_connection_open_at_boot=%zu "
              "failed_attempts_before_ok=%d ready_to_ok_ms=%.0f boot_to_ok_ms=%.0f calls_after=%d ok_after=%d\n",
              static_cast<long long>(kDeadPeer.count()), down_ms, down.failed, open_at_boot, attempts, reconnect_ms,
              boot_to_ok_ms,
              after.made + after_large.made, after.ok + after_large.ok);
}

std::string ReadLine(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

// TCP_CONGESTION of this process's sockets connected to `peer_addr`:`peer_port`.
std::vector<std::string> CongestionOfSocketsTo(const char* peer_addr, uint16_t peer_port) {
  std::vector<std::string> out;
  in_addr want{};
  inet_pton(AF_INET, peer_addr, &want);
  for (int fd = 0; fd < 4096; ++fd) {
    sockaddr_in peer{};
    socklen_t pl = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0 || peer.sin_family != AF_INET) continue;
    if (peer.sin_addr.s_addr != want.s_addr || ntohs(peer.sin_port) != peer_port) continue;
    char name[32] = {};
    socklen_t nl = sizeof name;
    if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &nl) == 0) out.emplace_back(name);
  }
  return out;
}

// What `ss` reports for the established TCP sockets of the server's host.
std::string ServerHostSockets(const NetnsPair& net) {
  const std::string cmd = FindTool("ip") + " netns exec " + net.server_ns() + " " + FindTool("ss") +
                          " -tinH state established 2>&1";
  std::string out;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[512];
    while (fgets(buf, sizeof buf, f)) out += buf;
    pclose(f);
  }
  return out;
}

// A connection to another host gets TcpOptions::congestion_control, not the
// loopback choice; a side that leaves it empty keeps the system default.
TEST_F(Netns, ConnectionToAnotherHostGetsItsOwnCongestionControl) {
  if (FindTool("ss").empty()) GTEST_SKIP() << "no ss (iproute2)";
  const std::string system = ReadLine("/proc/sys/net/ipv4/tcp_congestion_control");
  ASSERT_FALSE(system.empty());
  // Different from the system default and from the loopback choice, so the
  // check sees which of the three the socket got.
  const std::string loopback = transport::TcpOptions{}.loopback_congestion_control;
  std::string want;
  for (const char* c : {"reno", "cubic", "bbr"}) {
    if (c != system && c != loopback) {
      want = c;
      break;
    }
  }
  if (ReadLine("/proc/sys/net/ipv4/tcp_available_congestion_control").find(want) == std::string::npos) {
    GTEST_SKIP() << "kernel without " << want;
  }
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(Connect(250ms, 3000ms, [&](RuntimeOptions& o) { o.tcp.congestion_control = want; }));
  ASSERT_NO_FATAL_FAILURE(ExpectPeerIsClientHost());
  const auto client = CongestionOfSocketsTo(NetnsPair::kServerAddr, kPort);
  ASSERT_EQ(client.size(), 1u);
  EXPECT_EQ(client[0], want);
  // The server (default options) sees a peer on another host: the system default.
  const std::string ss = ServerHostSockets(*net_);
  EXPECT_NE(ss.find(" " + system + " "), std::string::npos) << ss;
  EXPECT_EQ(ss.find(" " + want + " "), std::string::npos) << ss;
}

}  // namespace
}  // namespace hrpc::netns
