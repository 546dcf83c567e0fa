// Loopback fault injection per listener name (LoopbackNetwork::SetFaults):
// drop, delay, corrupt one byte, disconnect after N.
#include <chrono>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "hrpc/transport/loopback.h"
#include "transport_harness.h"

namespace hrpc::transport::testing {
namespace {

using namespace std::chrono_literals;
using mempool::IoBuf;

// The loopback kind keeps its network in the Env's shared state; faults are
// set through a network we own, so build the kind around it.
struct LoopEnv {
  std::shared_ptr<LoopbackNetwork> net = LoopbackNetwork::Create();
  TransportKind kind;
  std::unique_ptr<Env> env;
  explicit LoopEnv(const FaultPlan& plan) {
    net->SetFaults("conformance", plan);
    kind = LoopbackKind();
    auto n = net;
    kind.make = [n](coro::Scheduler& s, mempool::Pool& p, const TransportOptions& o, std::shared_ptr<void>&) {
      return CreateLoopbackTransport(n, s, p, o);
    };
    env = std::make_unique<Env>(kind);
    env->ConnectPair();
  }
  Status Send(uint32_t seq, size_t n = 256) {
    return On(env->client_worker(), [&]() {
      mempool::Buffer b = Filled(env->pool(), n, seq);
      std::memcpy(b.data(), &seq, 4);
      return env->client().Send(IoBuf(std::move(b)));
    });
  }
};

uint32_t Seq(const IoBuf& m) {
  uint32_t s = 0;
  m.CopyTo(&s, 0, 4);
  return s;
}

TEST(LoopbackFaults, DropLosesMessagesButNotCredits) {
  FaultPlan plan;
  plan.drop_probability = 1.0;
  LoopEnv le(plan);
  const uint32_t n = 3 * le.env->client().limits().recv_depth;
  for (uint32_t i = 0; i < n; ++i) ASSERT_TRUE(le.Send(i).ok()) << "a dropped message must return its credit";
  EXPECT_EQ(le.net->dropped("conformance"), n);
  auto pending = coro::Async(le.env->server_worker().scheduler(), [&]() { return le.env->server().Recv(); });
  EXPECT_EQ(pending.WaitFor(200ms).status().code(), StatusCode::kDeadlineExceeded);
  le.net->SetFaults("conformance", FaultPlan{});
  ASSERT_TRUE(le.Send(1234).ok());
  auto m = pending.WaitFor(5s);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(Seq(*m), 1234u);
}

TEST(LoopbackFaults, DropIsProbabilistic) {
  FaultPlan plan;
  plan.drop_probability = 0.5;
  plan.seed = 7;
  LoopEnv le(plan);
  constexpr uint32_t kEnd = 1u << 30;
  uint64_t received = 0;
  auto rx = coro::Async(le.env->server_worker().scheduler(), [&]() -> Status {
    uint32_t last = 0;
    for (;;) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, le.env->server().Recv());
      if (Seq(m) == kEnd) return Status::Ok();
      if (received > 0 && Seq(m) <= last) return DataLossError("reordered");
      last = Seq(m);
      ++received;
    }
  });
  for (uint32_t i = 0; i < 200; ++i) ASSERT_TRUE(le.Send(i).ok());
  const uint64_t dropped = le.net->dropped("conformance");
  le.net->SetFaults("conformance", FaultPlan{});
  ASSERT_TRUE(le.Send(kEnd).ok());
  Status s = rx.WaitFor(10s);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_GT(dropped, 50u);
  EXPECT_LT(dropped, 150u);
  EXPECT_EQ(received + dropped, 200u) << "the survivors arrive, in order";
}

TEST(LoopbackFaults, DelayHoldsMessagesAndKeepsOrder) {
  FaultPlan plan;
  plan.delay = 50ms;
  LoopEnv le(plan);
  const auto t0 = std::chrono::steady_clock::now();
  for (uint32_t i = 0; i < 10; ++i) ASSERT_TRUE(le.Send(i).ok());
  Status s = On(le.env->server_worker(), [&]() -> Status {
    for (uint32_t i = 0; i < 10; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, le.env->server().Recv());
      if (Seq(m) != i) return DataLossError("reordered");
    }
    return Status::Ok();
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
}

// The plan for a listener name is the FaultOptions every transport takes: a
// corrupted message is caught by the receiver's CRC check and fails that
// connection with DATA_LOSS (the conformance suite checks the same through
// Transport::SetFaults on every transport).
TEST(LoopbackFaults, CorruptedMessageFailsTheConnectionWithDataLoss) {
  FaultPlan plan;
  plan.corrupt_next = 1;
  LoopEnv le(plan);
  ASSERT_TRUE(le.Send(1, 4096).ok());
  auto a = On(le.env->server_worker(), [&]() { return le.env->server().Recv(); });
  EXPECT_EQ(a.status().code(), StatusCode::kDataLoss) << a.status().ToString();
  EXPECT_EQ(le.net->corrupted("conformance"), 1u);
  EXPECT_EQ(le.env->server_transport().counters()->corrupt_messages.Get(), 1u);
  EXPECT_EQ(le.env->client_transport().counters()->faults_corrupted.Get(), 1u);
}

TEST(LoopbackFaults, DisconnectAfterNMessagesFailsBothSides) {
  FaultPlan plan;
  plan.disconnect_after = 5;
  LoopEnv le(plan);
  mempool::Buffer target = Filled(le.env->pool(), 4096, 1);
  auto d = On(le.env->server_worker(), [&]() { return le.env->server().Expose(target, Access::kReadWrite); });
  ASSERT_TRUE(d.ok());
  for (uint32_t i = 0; i < 5; ++i) ASSERT_TRUE(le.Send(i).ok());
  Status s = le.Send(5);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  // The 5 delivered messages are still readable, then the error.
  Status r = On(le.env->server_worker(), [&]() -> Status {
    for (uint32_t i = 0; i < 5; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, le.env->server().Recv());
      if (Seq(m) != i) return DataLossError("reordered");
    }
    auto last = le.env->server().Recv();
    return last.ok() ? InternalError("sixth message delivered") : last.status();
  });
  EXPECT_EQ(r.code(), StatusCode::kUnavailable) << r.ToString();
  Status w = On(le.env->client_worker(), [&]() {
    return le.env->client().Write(IoBuf(Filled(le.env->pool(), 4096, 2)), *d);
  });
  EXPECT_EQ(w.code(), StatusCode::kUnavailable);
  EXPECT_EQ(le.env->client().status().code(), StatusCode::kUnavailable);
}

// One end keeps sending while the other end's transport, and then its worker,
// go away. What it sends after that transport is gone is dropped and its
// connection fails; nothing is posted to the freed scheduler (AddressSanitizer
// would report it).
TEST(LoopbackTeardown, SendsToAnEndWhoseWorkerIsGoneAreDropped) {
  auto pool = MakeTestPool(64u << 20, 1u << 20);
  auto net = LoopbackNetwork::Create();
  const TransportOptions opt = TestOptions();
  for (int round = 0; round < 300; ++round) {
    auto sw = coro::Worker::Start({}).value();
    auto cw = coro::Worker::Start({}).value();
    auto st = On(*sw, [&] { return CreateLoopbackTransport(net, sw->scheduler(), *pool, opt); });
    auto ct = On(*cw, [&] { return CreateLoopbackTransport(net, cw->scheduler(), *pool, opt); });
    ASSERT_TRUE(st.ok() && ct.ok());
    const std::string uri = "loop://teardown-" + std::to_string(round);
    auto l = On(*sw, [&] { return (*st)->Listen(uri); });
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    auto accepted = coro::Async(sw->scheduler(), [&] { return (*l)->Accept(); });
    auto c = On(*cw, [&] { return (*ct)->Connect(uri); });
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    auto s = accepted.Get();
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    auto sender = coro::Async(sw->scheduler(), [&]() -> Status {
      for (;;) {
        HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool->Allocate(64));
        HRPC_TRY((*s)->Send(IoBuf(std::move(b))));
      }
    });
    On(*cw, [&] {
      EXPECT_TRUE((*c)->Recv().ok());
      c->reset();
      ct->reset();
    });
    cw.reset();
    const Status ended = sender.Get();
    EXPECT_FALSE(ended.ok());
    On(*sw, [&] {
      s->reset();
      l->reset();
      st->reset();
    });
  }
}

// A listener that outlives its transport still names a live address, but
// nothing can accept on it: a connect fails at once instead of handing out a
// connection whose messages would be dropped, and the connecting transport
// keeps working.
TEST(LoopbackTeardown, ConnectToAListenerWhoseTransportIsGoneFails) {
  auto pool = MakeTestPool(64u << 20, 1u << 20);
  auto net = LoopbackNetwork::Create();
  const TransportOptions opt = TestOptions();
  auto sw = coro::Worker::Start({}).value();
  auto cw = coro::Worker::Start({}).value();
  auto st = On(*sw, [&] { return CreateLoopbackTransport(net, sw->scheduler(), *pool, opt); });
  auto ct = On(*cw, [&] { return CreateLoopbackTransport(net, cw->scheduler(), *pool, opt); });
  ASSERT_TRUE(st.ok() && ct.ok());
  auto l = On(*sw, [&] { return (*st)->Listen("loop://orphan"); });
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  On(*sw, [&] { st->reset(); });

  auto c = On(*cw, [&] { return (*ct)->Connect("loop://orphan"); });
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(c.status().message().find("listening transport was destroyed"), std::string::npos)
      << c.status().ToString();
  EXPECT_EQ((*ct)->counters()->connect_failures.Get(), 1u);
  EXPECT_EQ((*ct)->counters()->connected.Get(), 0u);

  // The connecting side still reaches a listener that is whole.
  auto st2 = On(*sw, [&] { return CreateLoopbackTransport(net, sw->scheduler(), *pool, opt); });
  ASSERT_TRUE(st2.ok());
  auto l2 = On(*sw, [&] { return (*st2)->Listen("loop://whole"); });
  ASSERT_TRUE(l2.ok()) << l2.status().ToString();
  auto accepted = coro::Async(sw->scheduler(), [&] { return (*l2)->Accept(); });
  auto c2 = On(*cw, [&] { return (*ct)->Connect("loop://whole"); });
  ASSERT_TRUE(c2.ok()) << c2.status().ToString();
  auto s2 = accepted.Get();
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  On(*cw, [&] {
    auto b = pool->Allocate(64);
    ASSERT_TRUE(b.ok());
    EXPECT_TRUE((*c2)->Send(IoBuf(std::move(*b))).ok());
  });
  auto got = On(*sw, [&] { return (*s2)->Recv(); });
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->size(), 64u);
  On(*cw, [&] {
    c2->reset();
    ct->reset();
  });
  On(*sw, [&] {
    s2->reset();
    l2->reset();
    st2->reset();
    l->reset();
  });
}

TEST(Uri, ParsesAndRejects) {
  auto u = ParseUri("tcp://127.0.0.1:4711");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 4711);
  EXPECT_EQ(u->ToString(), "tcp://127.0.0.1:4711");
  auto v6 = ParseUri("rdma://[::1]:18515");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->ToString(), "rdma://[::1]:18515");
  auto l = ParseUri("loop://a-name");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->host, "a-name");
  for (const char* bad : {"tcp://host", "tcp://:80", "tcp://h:99999", "tcp://h:x", "udp://h:1", "h:1", "loop://"}) {
    EXPECT_EQ(ParseUri(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

// Found by fuzzing (tests/fuzz/corpus/uri/crash-host-with-bracket-and-nul): a
// host with ']' and ':' parsed, but printed to a URI that did not parse back;
// one with a NUL would have named another host to the resolver.
TEST(Uri, HostBytesThatAreNoPartOfANameAreRefused) {
  using namespace std::string_literals;
  for (const std::string& bad : {"tcp://a]:b:1"s, "tcp://evil\0.example:80"s, "tcp://a/b:1"s, "tcp://a b:1"s,
                                "tcp://[[::1]:1"s, "tcp://h\x01:1"s}) {
    auto u = ParseUri(bad);
    EXPECT_EQ(u.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(u.status().message().find("in the host"), std::string_view::npos) << u.status().ToString();
  }
  for (const char* good : {"tcp://node-1.rack_2.example:7000", "rdma://[fe80::1%eth0]:4791", "tcp://::1:80"}) {
    auto u = ParseUri(good);
    ASSERT_TRUE(u.ok()) << good << ": " << u.status().ToString();
    auto again = ParseUri(u->ToString());
    ASSERT_TRUE(again.ok()) << u->ToString();
    EXPECT_EQ(again->host, u->host);
    EXPECT_EQ(again->port, u->port);
  }
}

}  // namespace
}  // namespace hrpc::transport::testing
