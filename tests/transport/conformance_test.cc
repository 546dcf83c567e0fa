// The transport conformance suite: every transport must pass it unchanged.
// Parameterized by TransportKind (transport_harness.h); loopback and tcp are
// instantiated at the bottom, rdma adds one INSTANTIATE line in its own file.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "../mempool/pool_test_util.h"
#include "transport_harness.h"


namespace hrpc::transport::testing {
namespace {

using namespace std::chrono_literals;
using mempool::Buffer;
using mempool::IoBuf;

class Conformance : public ::testing::TestWithParam<TransportKind> {};

IoBuf SeqMessage(mempool::Pool& pool, uint32_t seq, size_t n) {
  Buffer b = Filled(pool, std::max<size_t>(n, 4), seq);
  std::memcpy(b.data(), &seq, 4);
  return IoBuf(std::move(b));
}

// The first 4 bytes of m, which may span slices (a message that starts at the
// end of one receive buffer and goes on in the next). Read here by hand: the
// counted copy helper would count these test reads as payload copies.
uint32_t SeqOf(const IoBuf& m) {
  uint32_t seq = 0;
  if (m.size() < 4) return seq;
  auto* out = reinterpret_cast<char*>(&seq);
  size_t got = 0;
  for (size_t i = 0; i < m.num_slices() && got < 4; ++i) {
    const auto& s = m.slice(i);
    const size_t take = std::min<size_t>(4 - got, s.size());
    std::memcpy(out + got, s.data(), take);
    got += take;
  }
  return seq;
}

void ResetCopies(Env& env) {
  On(env.server_worker(), [] { mempool::ResetCopiedBytesThisThread(); });
  On(env.client_worker(), [] { mempool::ResetCopiedBytesThisThread(); });
}
uint64_t Copies(Env& env) {
  return On(env.server_worker(), [] { return mempool::CopiedBytesThisThread(); }) +
         On(env.client_worker(), [] { return mempool::CopiedBytesThisThread(); });
}

// Exposes `b` on the server side of env; returns the descriptor.
RemoteDescriptor ExposeOnServer(Env& env, const Buffer& b, Access a) {
  auto d = On(env.server_worker(), [&]() { return env.server().Expose(b, a); });
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? *d : RemoteDescriptor{};
}

TEST_P(Conformance, MessagesArriveInOrderBothWays) {
  Env env(GetParam());
  env.ConnectPair();
  ResetCopies(env);
  constexpr uint32_t kCount = 600;
  auto size_of = [](uint32_t i) { return static_cast<size_t>((i * 977u) % 3000u + 4u); };
  // Server echoes every message back; the client checks order and bytes both ways.
  auto echo = coro::Async(env.server_worker().scheduler(), [&]() -> Status {
    for (uint32_t i = 0; i < kCount; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.server().Recv());
      if (SeqOf(m) != i || m.size() != size_of(i)) return DataLossError("server got seq " + std::to_string(SeqOf(m)));
      HRPC_TRY(env.server().Send(std::move(m)));
    }
    return Status::Ok();
  });
  auto recv = coro::Async(env.client_worker().scheduler(), [&]() -> Status {
    for (uint32_t i = 0; i < kCount; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.client().Recv());
      IoBuf want = SeqMessage(env.pool(), i, size_of(i));
      if (SeqOf(m) != i) return DataLossError("client got seq " + std::to_string(SeqOf(m)) + " want " + std::to_string(i));
      if (m.Crc32c() != want.Crc32c()) return DataLossError("bad bytes in message " + std::to_string(i));
    }
    return Status::Ok();
  });
  Status sent = On(env.client_worker(), [&]() -> Status {
    for (uint32_t i = 0; i < kCount; ++i) HRPC_TRY(env.client().Send(SeqMessage(env.pool(), i, size_of(i))));
    return Status::Ok();
  });
  EXPECT_TRUE(sent.ok()) << sent.ToString();
  Status e = echo.Get();
  EXPECT_TRUE(e.ok()) << e.ToString();
  Status r = recv.Get();
  EXPECT_TRUE(r.ok()) << r.ToString();
  if (!env.client_transport().capabilities().cpu_copies_payload) {
    EXPECT_EQ(Copies(env), 0u) << "messages must land in pool buffers uncopied";
  }
  EXPECT_TRUE(env.client().status().ok());
}

TEST_P(Conformance, CreditsBoundUnconsumedMessages) {
  Env env(GetParam());
  env.ConnectPair();
  const uint32_t depth = env.client().limits().recv_depth;
  ASSERT_EQ(depth, TestOptions().recv_depth);
  std::atomic<uint32_t> sent{0};
  const uint32_t total = depth + 8;
  auto sender = coro::Async(env.client_worker().scheduler(), [&]() -> Status {
    for (uint32_t i = 0; i < total; ++i) {
      HRPC_TRY(env.client().Send(SeqMessage(env.pool(), i, 64)));
      sent.fetch_add(1);
    }
    return Status::Ok();
  });
  // Nobody consumes anything: exactly `depth` messages may go. Waited for
  // (a slow machine may take a while to send them), then 300 ms more in
  // which no further one may go.
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (sent.load() < depth && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(sent.load(), depth) << "a sender must park when the receiver has no free receive slot";
  Status got = On(env.server_worker(), [&]() -> Status {
    for (uint32_t i = 0; i < total; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.server().Recv());
      if (SeqOf(m) != i) return DataLossError("out of order");
    }
    return Status::Ok();
  });
  EXPECT_TRUE(got.ok()) << got.ToString();
  Status s = sender.WaitFor(10s);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(sent.load(), total);
}

TEST_P(Conformance, OversizedMessageIsRefusedLocally) {
  Env env(GetParam());
  env.ConnectPair();
  const size_t too_big = env.client().limits().max_message_bytes + 1;
  Status s = On(env.client_worker(), [&]() { return env.client().Send(IoBuf(Filled(env.pool(), too_big, 1))); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(env.client().status().ok());
}

// Write src into the server's exposed buffer, read it back into a fresh
// buffer, compare CRCs on both sides.
void RoundTrip(Env& env, size_t n, uint32_t seed) {
  SCOPED_TRACE("size " + std::to_string(n));
  Buffer target = Filled(env.pool(), n, seed + 1000);
  const RemoteDescriptor d = ExposeOnServer(env, target, Access::kReadWrite);
  ASSERT_EQ(d.len, n);
  IoBuf src(Filled(env.pool(), n, seed));
  const uint32_t want = src.Crc32c();
  auto dst = env.pool().Allocate(n);
  ASSERT_TRUE(dst.ok());
  IoBuf dstbuf(*dst);
  Status w = On(env.client_worker(), [&]() { return env.client().Write(src, d); });
  ASSERT_TRUE(w.ok()) << w.ToString();
  EXPECT_EQ(Crc32c(target.data(), n), want) << "WRITE did not place the bytes";
  Status r = On(env.client_worker(), [&]() { return env.client().Read(d, dstbuf); });
  ASSERT_TRUE(r.ok()) << r.ToString();
  EXPECT_EQ(dstbuf.Crc32c(), want) << "READ returned other bytes";
  Status rv = On(env.server_worker(), [&]() { return env.server().Revoke(d); });
  EXPECT_TRUE(rv.ok()) << rv.ToString();
}

TEST_P(Conformance, ReadWriteSizesWithCrc) {
  Env env(GetParam());
  env.ConnectPair();
  ResetCopies(env);
  size_t total = 0;
  for (size_t n : {size_t{1}, size_t{3}, size_t{64}, size_t{4095}, size_t{4096}, size_t{65537}, size_t{1} << 20,
                   (size_t{4} << 20) + 3}) {
    RoundTrip(env, n, static_cast<uint32_t>(n));
    total += n;
  }
  const uint64_t copied = Copies(env);
  if (env.client_transport().capabilities().cpu_copies_payload) {  // NOLINT
    EXPECT_GE(copied, 2 * total);
  } else {
    EXPECT_EQ(copied, 0u) << "one-sided payload must go socket <-> registered memory directly";
  }
}

TEST_P(Conformance, ReadWrite64MiB) {
  Env env(GetParam());
  env.ConnectPair();
  ResetCopies(env);
  RoundTrip(env, size_t{64} << 20, 64);
  if (!env.client_transport().capabilities().cpu_copies_payload) {
    EXPECT_EQ(Copies(env), 0u);
  }
}

TEST_P(Conformance, ScatteredLocalBuffers) {
  // The local side of READ/WRITE may be a chain of slices.
  Env env(GetParam());
  env.ConnectPair();
  constexpr size_t kN = 3 * 4096 + 100;
  Buffer target = Filled(env.pool(), kN, 5);
  const RemoteDescriptor d = ExposeOnServer(env, target, Access::kReadWrite);
  IoBuf src;
  src.Append(Filled(env.pool(), 4096, 1));
  src.Append(Filled(env.pool(), 100, 2));
  src.Append(Filled(env.pool(), 2 * 4096, 3));
  const uint32_t want = src.Crc32c();
  IoBuf dst;
  for (size_t part : {size_t{7}, size_t{4096}, kN - 4096 - 7}) dst.Append(*env.pool().Allocate(part));
  ASSERT_TRUE(On(env.client_worker(), [&]() { return env.client().Write(src, d); }).ok());
  ASSERT_TRUE(On(env.client_worker(), [&]() { return env.client().Read(d, dst); }).ok());
  EXPECT_EQ(dst.Crc32c(), want);
}

TEST_P(Conformance, ManyOutstandingOps) {
  Env env(GetParam());
  env.ConnectPair();
  constexpr size_t kOps = 256, kChunk = 16 * 1024;
  Buffer target = Filled(env.pool(), kOps * kChunk, 9);
  const RemoteDescriptor d = ExposeOnServer(env, target, Access::kReadWrite);
  std::vector<uint32_t> want(kOps);
  std::atomic<int> failures{0};
  auto msgs = coro::Async(env.server_worker().scheduler(), [&]() -> Status {
    for (uint32_t i = 0; i < 64; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.server().Recv());
      if (SeqOf(m) != i) return DataLossError("order");
    }
    return Status::Ok();
  });
  Status all = On(env.client_worker(), [&]() -> Status {
    coro::WaitGroup wg;
    wg.Add(kOps);
    for (size_t i = 0; i < kOps; ++i) {
      coro::Scheduler::Current()->Spawn([&, i] {
        IoBuf src(Filled(env.pool(), kChunk, static_cast<uint32_t>(i)));
        want[i] = src.Crc32c();
        const RemoteDescriptor sub = d.Sub(i * kChunk, kChunk);
        IoBuf back(*env.pool().Allocate(kChunk));
        if (!env.client().Write(src, sub).ok() || !env.client().Read(sub, back).ok() || back.Crc32c() != want[i]) {
          failures.fetch_add(1);
        }
        wg.Done();
      });
    }
    // Control messages interleave with the one-sided ops (more than the
    // receive depth, so credits flow back meanwhile).
    for (uint32_t i = 0; i < 64; ++i) HRPC_TRY(env.client().Send(SeqMessage(env.pool(), i, 128)));
    return wg.Wait();
  });
  ASSERT_TRUE(all.ok()) << all.ToString();
  EXPECT_EQ(failures.load(), 0);
  for (size_t i = 0; i < kOps; ++i) EXPECT_EQ(Crc32c(target.data() + i * kChunk, kChunk), want[i]) << i;
  Status m = msgs.WaitFor(10s);
  EXPECT_TRUE(m.ok()) << m.ToString();
}

TEST_P(Conformance, RefusedOpsKeepTheConnection) {
  Env env(GetParam());
  if (!env.server_transport().capabilities().refusal_keeps_connection) {
    GTEST_SKIP() << GetParam().name << ": a refused op errors the connection (capabilities())";
  }
  env.ConnectPair();
  constexpr size_t kN = 64 * 1024;
  Buffer rw = Filled(env.pool(), kN, 1);
  Buffer ro = Filled(env.pool(), kN, 2);
  Buffer wo = Filled(env.pool(), kN, 3);
  const RemoteDescriptor d = ExposeOnServer(env, rw, Access::kReadWrite);
  const RemoteDescriptor dro = ExposeOnServer(env, ro, Access::kRead);
  const RemoteDescriptor dwo = ExposeOnServer(env, wo, Access::kWrite);
  const uint32_t rw_crc = Crc32c(rw.data(), kN);

  struct Case {
    std::string what;
    RemoteDescriptor desc;
    bool write;
    StatusCode want;
  };
  std::vector<Case> cases = {
      {"write one byte past the end", d.Sub(1, kN), true, StatusCode::kOutOfRange},
      {"read one byte before the start", RemoteDescriptor{d.addr - 1, 16, d.key}, false, StatusCode::kOutOfRange},
      {"read longer than exposed", RemoteDescriptor{d.addr, kN + 1, d.key}, false, StatusCode::kOutOfRange},
      {"write with a wrong key", RemoteDescriptor{d.addr, kN, d.key ^ 0x00040000u}, true, StatusCode::kPermissionDenied},
      {"read with key 0", RemoteDescriptor{d.addr, 16, 0}, false, StatusCode::kPermissionDenied},
      {"write into a read-only exposure", dro, true, StatusCode::kPermissionDenied},
      {"read from a write-only exposure", dwo, false, StatusCode::kPermissionDenied},
      {"another exposure's key for this range", RemoteDescriptor{d.addr, 16, dro.key}, false,
       StatusCode::kOutOfRange},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Status s = On(env.client_worker(), [&]() {
      IoBuf local(Filled(env.pool(), c.desc.len, 77));
      return c.write ? env.client().Write(local, c.desc) : env.client().Read(c.desc, local);
    });
    EXPECT_EQ(s.code(), c.want) << s.ToString();
    EXPECT_TRUE(env.client().status().ok()) << env.client().status().ToString();
    // The connection still works.
    IoBuf back(*env.pool().Allocate(kN));
    ASSERT_TRUE(On(env.client_worker(), [&]() { return env.client().Read(d, back); }).ok());
    EXPECT_EQ(back.Crc32c(), rw_crc);
  }
  EXPECT_EQ(Crc32c(ro.data(), kN), Crc32c(Filled(env.pool(), kN, 2).data(), kN)) << "refused write changed memory";

  // Revoked: refused afterwards, twice revoked is NOT_FOUND.
  ASSERT_TRUE(On(env.server_worker(), [&]() { return env.server().Revoke(d); }).ok());
  Status s = On(env.client_worker(), [&]() { return env.client().Write(IoBuf(Filled(env.pool(), 16, 1)), d.Sub(0, 16)); });
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  EXPECT_EQ(On(env.server_worker(), [&]() { return env.server().Revoke(d); }).code(), StatusCode::kNotFound);
  // Messages still flow after all that.
  ASSERT_TRUE(On(env.client_worker(), [&]() { return env.client().Send(SeqMessage(env.pool(), 42, 64)); }).ok());
  auto m = On(env.server_worker(), [&]() { return env.server().Recv(); });
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(SeqOf(*m), 42u);
}

TEST_P(Conformance, LocalMisuseIsInvalidArgument) {
  Env env(GetParam());
  env.ConnectPair();
  Buffer b = Filled(env.pool(), 4096, 1);
  const RemoteDescriptor d = ExposeOnServer(env, b, Access::kReadWrite);
  Status s = On(env.client_worker(), [&]() { return env.client().Write(IoBuf(Filled(env.pool(), 100, 1)), d); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  auto e = On(env.server_worker(), [&]() { return env.server().Expose(Buffer(), Access::kRead); });
  EXPECT_FALSE(e.ok());
}

// Messages that reached the server before its peer went away are still
// received, in order, and only then does Recv() report the failure.
TEST_P(Conformance, MessagesThatArrivedBeforeThePeerLeftAreStillReceived) {
  Env env(GetParam());
  env.ConnectPair();
  constexpr uint32_t kCount = 5;
  Buffer b = Filled(env.pool(), 64, 1);
  const RemoteDescriptor d = ExposeOnServer(env, b, Access::kRead);
  Status sent = On(env.client_worker(), [&]() -> Status {
    for (uint32_t i = 0; i < kCount; ++i) HRPC_TRY(env.client().Send(SeqMessage(env.pool(), i, 64)));
    // A READ after the sends completes once the server has taken them in
    // (one ordered stream, or one RC queue pair).
    return env.client().Read(d, IoBuf(Filled(env.pool(), 64, 2)));
  });
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  On(env.client_worker(), [&]() { env.client().Close(); });
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (On(env.server_worker(), [&]() { return env.server().status(); }).ok() &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(5ms);
  }
  Status failed = On(env.server_worker(), [&]() { return env.server().status(); });
  ASSERT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();
  Status got = On(env.server_worker(), [&]() -> Status {
    for (uint32_t i = 0; i < kCount; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.server().Recv());
      if (SeqOf(m) != i) return DataLossError("got seq " + std::to_string(SeqOf(m)) + ", want " + std::to_string(i));
    }
    return Status::Ok();
  });
  EXPECT_TRUE(got.ok()) << got.ToString();
  auto after = On(env.server_worker(), [&]() { return env.server().Recv(); });
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable) << after.status().ToString();
}

TEST_P(Conformance, CloseFailsEverythingOnBothSides) {
  Env env(GetParam());
  env.ConnectPair();
  Buffer b = Filled(env.pool(), 4096, 1);
  const RemoteDescriptor d = ExposeOnServer(env, b, Access::kReadWrite);
  auto pending_recv = coro::Async(env.client_worker().scheduler(), [&]() { return env.client().Recv(); });
  std::this_thread::sleep_for(20ms);
  On(env.server_worker(), [&]() { env.server().Close(); });
  auto r = pending_recv.WaitFor(5s);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  Status w = On(env.client_worker(), [&]() { return env.client().Write(IoBuf(Filled(env.pool(), 4096, 1)), d); });
  EXPECT_EQ(w.code(), StatusCode::kUnavailable) << w.ToString();
  EXPECT_EQ(env.server().status().code(), StatusCode::kCancelled);
  // The listener still accepts.
  auto again = env.ConnectClient();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  On(env.client_worker(), [&]() { again->reset(); });
}

// A READ that a local Close() ends has stopped writing into its buffer when it
// returns: the caller may reuse the memory at once (as after a flushed RDMA
// work request). The local side is many slices, so a copying transport is
// still at it when the close comes.
TEST_P(Conformance, AReadEndedByCloseNoLongerWritesItsBuffer) {
  Env env(GetParam());
  env.ConnectPair();
  constexpr size_t kSlice = 64u << 10, kSlices = 1024;
  Buffer target = Filled(env.pool(), kSlice * kSlices, 5);
  const RemoteDescriptor d = ExposeOnServer(env, target, Access::kRead);
  IoBuf local;
  std::vector<Buffer> slices;
  for (size_t i = 0; i < kSlices; ++i) {
    auto b = env.pool().Allocate(kSlice);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    std::memset(b->data(), 0, kSlice);
    slices.push_back(*b);
    local.Append(std::move(*b));
  }
  const uint64_t copied0 = mempool::CopiedBytesTotal();
  auto read = coro::Async(env.client_worker().scheduler(), [&]() { return env.client().Read(d, local); });
  // A copying transport has started; the others have had a moment.
  const auto until = std::chrono::steady_clock::now() + 2ms;
  while (mempool::CopiedBytesTotal() == copied0 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  On(env.client_worker(), [&]() { env.client().Close(); });
  Status r = read.WaitFor(10s);
  ASSERT_NE(r.code(), StatusCode::kDeadlineExceeded) << "the READ never returned";
  EXPECT_TRUE(r.ok() || r.code() == StatusCode::kCancelled) << r.ToString();
  const uint64_t copied = mempool::CopiedBytesTotal();
  for (Buffer& b : slices) std::memset(b.data(), 0xEE, kSlice);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(mempool::CopiedBytesTotal(), copied) << "bytes copied after the READ returned";
  size_t changed = 0;
  for (const Buffer& b : slices) {
    const auto* p = reinterpret_cast<const unsigned char*>(b.data());
    for (size_t i = 0; i < kSlice; ++i) changed += p[i] != 0xEE;
  }
  EXPECT_EQ(changed, 0u) << "bytes of the buffer written after the READ returned";
  On(env.client_worker(), [&]() { local = IoBuf(); });
}

// An op waiting for one of the connection's op slots (max_outstanding_ops)
// ends when the connection closes, also when the slot was handed to it just
// before the close and it had not run yet.
TEST_P(Conformance, AnOpWaitingForItsSlotEndsWhenTheConnectionCloses) {
  TransportOptions o = TestOptions();
  o.max_outstanding_ops = 1;
  Env env(GetParam(), o);
  env.ConnectPair();
  Buffer target = Filled(env.pool(), 4096, 1);
  const RemoteDescriptor d = ExposeOnServer(env, target, Access::kReadWrite);
  IoBuf s1(Filled(env.pool(), 4096, 2)), s2(Filled(env.pool(), 4096, 3));
  std::atomic<bool> first{true};
  auto writer = [&](IoBuf& src) {
    return [&]() -> Status {
      Status s = env.client().Write(src, d);
      // The first to finish closes: the other was just handed the slot.
      if (first.exchange(false)) env.client().Close();
      return s;
    };
  };
  auto w1 = coro::Async(env.client_worker().scheduler(), writer(s1));
  auto w2 = coro::Async(env.client_worker().scheduler(), writer(s2));
  Status r1 = w1.WaitFor(10s), r2 = w2.WaitFor(10s);
  ASSERT_NE(r1.code(), StatusCode::kDeadlineExceeded) << "the first Write never returned";
  ASSERT_NE(r2.code(), StatusCode::kDeadlineExceeded) << "the second Write never returned after Close()";
  EXPECT_TRUE(r1.ok()) << r1.ToString();
  EXPECT_TRUE(r2.ok() || r2.code() == StatusCode::kCancelled || r2.code() == StatusCode::kUnavailable)
      << r2.ToString();
}

// Op slots go to the callers in the order they asked: a caller that loops
// over ops on a connection with one slot does not keep it from a caller that
// asked meanwhile.
TEST_P(Conformance, OpSlotsGoToCallersInTheOrderTheyAsked) {
  TransportOptions o = TestOptions();
  o.max_outstanding_ops = 1;
  Env env(GetParam(), o);
  env.ConnectPair();
  Buffer target = Filled(env.pool(), 4096, 1);
  const RemoteDescriptor d = ExposeOnServer(env, target, Access::kRead);
  constexpr int kLoops = 100;
  std::atomic<int> looped{0}, other_done_at{-1};
  auto fut = coro::Async(env.client_worker().scheduler(), [&]() -> Status {
    IoBuf dst(env.pool().Allocate(4096).value());
    IoBuf other_dst(env.pool().Allocate(4096).value());
    coro::LocalEvent other_done;
    for (int i = 0; i < kLoops; ++i) {
      HRPC_TRY(env.client().Read(d, dst));
      looped.fetch_add(1);
      if (i == 0) {
        coro::Scheduler::Current()->Spawn([&] {
          Status s = env.client().Read(d, other_dst);
          other_done_at.store(s.ok() ? looped.load() : -2);
          other_done.Set();
        });
      }
    }
    return other_done.Wait();
  });
  ASSERT_TRUE(fut.WaitFor(30s).ok());
  EXPECT_EQ(looped.load(), kLoops);
  EXPECT_GE(other_done_at.load(), 1) << "the other caller's Read failed";
  EXPECT_LE(other_done_at.load(), 3) << "the looping caller kept the slot";
}

// ---------------------------------------------------------------- fault injection
//
// FaultOptions (transport.h): each fault costs what the contract says (one
// message, or one connection) on every transport that can inject it; the
// others say so in capabilities().faults and refuse it in SetFaults.

bool Supports(Env& env, uint32_t kind) { return (env.client_transport().capabilities().faults & kind) != 0; }

// A second connection between the env's transports, destroyed on its workers.
struct ExtraPair {
  Env& env;
  std::unique_ptr<Connection> client, server;
  explicit ExtraPair(Env& e) : env(e) {
    auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
    auto c = env.ConnectClient();
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (c.ok()) client = std::move(*c);
    auto s = accepted.WaitFor(10s);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (s.ok()) server = std::move(*s);
  }
  ~ExtraPair() {
    On(env.client_worker(), [&]() { client.reset(); });
    On(env.server_worker(), [&]() { server.reset(); });
  }
};

Status SendSeq(Env& env, Connection& c, uint32_t seq, size_t n = 256) {
  return On(env.client_worker(), [&]() { return c.Send(SeqMessage(env.pool(), seq, n)); });
}
// The next message on the server side of `c` (sequence number), within 10 s.
Result<uint32_t> RecvSeq(Env& env, Connection& c) {
  auto m = coro::Async(env.server_worker().scheduler(), [&c]() { return c.Recv(); }).WaitFor(10s);
  if (!m.ok()) return m.status();
  return SeqOf(*m);
}
// Messages both ways on a pair whose connections must be untouched.
void ExpectHealthy(Env& env, Connection& client, Connection& server, uint32_t seq) {
  ASSERT_TRUE(SendSeq(env, client, seq).ok());
  auto got = RecvSeq(env, server);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, seq);
  Status back = On(env.server_worker(), [&]() { return server.Send(SeqMessage(env.pool(), seq + 1, 64)); });
  ASSERT_TRUE(back.ok()) << back.ToString();
  auto m = coro::Async(env.client_worker().scheduler(), [&client]() { return client.Recv(); }).WaitFor(10s);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(SeqOf(*m), seq + 1);
  EXPECT_TRUE(client.status().ok() && server.status().ok());
}
// `n` messages from first_seq on, received in order while they are sent.
void ExpectStream(Env& env, Connection& client, Connection& server, uint32_t first_seq, uint32_t n) {
  auto rx = coro::Async(env.server_worker().scheduler(), [&server, first_seq, n]() -> Status {
    for (uint32_t i = 0; i < n; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, server.Recv());
      if (SeqOf(m) != first_seq + i) {
        return DataLossError("got message " + std::to_string(SeqOf(m)) + ", want " + std::to_string(first_seq + i));
      }
    }
    return Status::Ok();
  });
  auto tx = coro::Async(env.client_worker().scheduler(), [&]() -> Status {
    for (uint32_t i = 0; i < n; ++i) HRPC_TRY(client.Send(SeqMessage(env.pool(), first_seq + i, 128)));
    return Status::Ok();
  });
  Status sent = tx.WaitFor(20s);
  EXPECT_TRUE(sent.ok()) << sent.ToString();
  Status got = rx.WaitFor(20s);
  EXPECT_TRUE(got.ok()) << got.ToString();
}

TEST_P(Conformance, FaultsTheTransportCannotInjectAreRefused) {
  Env env(GetParam());
  const uint32_t caps = env.client_transport().capabilities().faults;
  const std::pair<uint32_t, FaultOptions> all[] = {
      {kFaultDrop, {.drop_next = 1}},          {kFaultDuplicate, {.duplicate_next = 1}},
      {kFaultTruncate, {.truncate_next = 1}},  {kFaultCorrupt, {.corrupt_next = 1}},
      {kFaultDelay, {.delay = 1ms}},           {kFaultRefuseAllocation, {.refuse_allocations = 1}},
      {kFaultDisconnect, {.disconnect_after = 1}}, {kFaultQpError, {.qp_error_next = 1}},
  };
  for (const auto& [kind, opts] : all) {
    Status s = env.client_transport().SetFaults(opts);
    if ((caps & kind) != 0) {
      EXPECT_TRUE(s.ok()) << s.ToString();
    } else {
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << "fault bit " << kind << ": " << s.ToString();
    }
  }
  EXPECT_TRUE(env.client_transport().SetFaults({}).ok());
  EXPECT_NE(caps & kFaultDrop, 0u) << "every transport drops, delays and refuses allocations";
  EXPECT_NE(caps & kFaultDelay, 0u);
  EXPECT_NE(caps & kFaultRefuseAllocation, 0u);
}

// Drops cost no credit: three windows' worth of dropped messages go out
// without the receiver taking anything (a credit lost per drop would park the
// sender after one window), then the next message arrives.
TEST_P(Conformance, FaultDropLosesThatMessageButNotItsCredit) {
  Env env(GetParam());
  env.ConnectPair();
  const uint32_t dropped = 3 * env.client().limits().recv_depth;
  ASSERT_TRUE(env.client_transport().SetFaults({.drop_next = dropped}).ok());
  auto tx = coro::Async(env.client_worker().scheduler(), [&]() -> Status {
    for (uint32_t i = 1; i <= dropped; ++i) HRPC_TRY(env.client().Send(SeqMessage(env.pool(), i, 128)));
    return Status::Ok();
  });
  Status sent = tx.WaitFor(10s);
  ASSERT_TRUE(sent.ok()) << "dropped messages used up credits: " << sent.ToString();
  ASSERT_TRUE(SendSeq(env, env.client(), dropped + 1).ok());
  auto got = RecvSeq(env, env.server());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, dropped + 1) << "the dropped messages were delivered";
  EXPECT_EQ(env.client_transport().counters()->faults_dropped.Get(), dropped);
  ExpectStream(env, env.client(), env.server(), 1000, 3 * env.client().limits().recv_depth);
  ExpectHealthy(env, env.client(), env.server(), 5000);
}

TEST_P(Conformance, FaultDuplicateIsDeliveredOnce) {
  Env env(GetParam());
  if (!Supports(env, kFaultDuplicate)) GTEST_SKIP() << GetParam().name << " cannot duplicate a message";
  env.ConnectPair();
  ASSERT_TRUE(env.client_transport().SetFaults({.duplicate_next = 1}).ok());
  for (uint32_t i = 1; i <= 3; ++i) ASSERT_TRUE(SendSeq(env, env.client(), i).ok());
  for (uint32_t i = 1; i <= 3; ++i) {
    auto got = RecvSeq(env, env.server());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, i) << "the copy of message 1 must not be delivered";
  }
  EXPECT_EQ(env.client_transport().counters()->faults_duplicated.Get(), 1u);
  for (int i = 0; i < 500 && env.server_transport().counters()->duplicates_discarded.Get() == 0; ++i) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(env.server_transport().counters()->duplicates_discarded.Get(), 1u);
  ExpectStream(env, env.client(), env.server(), 4, 3 * env.client().limits().recv_depth);
  ExpectHealthy(env, env.client(), env.server(), 100);
}

// A damaged message fails its own connection with DATA_LOSS (the receiver's
// checks) and nothing else: the other connection of the same transports works.
void ExpectDataLossOnThatConnectionOnly(Env& env, const FaultOptions& fault) {
  env.ConnectPair();
  ExtraPair other(env);
  ASSERT_TRUE(other.client && other.server);
  ASSERT_TRUE(env.client_transport().SetFaults(fault).ok());
  ASSERT_TRUE(SendSeq(env, env.client(), 1, 4096).ok());
  auto got = RecvSeq(env, env.server());
  EXPECT_EQ(got.status().code(), StatusCode::kDataLoss) << got.status().ToString();
  EXPECT_EQ(env.server().status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(env.server_transport().counters()->corrupt_messages.Get(), 1u);
  // The sender learns that its connection ended.
  auto r = coro::Async(env.client_worker().scheduler(), [&env]() { return env.client().Recv(); }).WaitFor(10s);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  ExpectHealthy(env, *other.client, *other.server, 10);
  auto again = env.ConnectClient();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  On(env.client_worker(), [&]() { again->reset(); });
}

TEST_P(Conformance, FaultCorruptMessageFailsOnlyItsConnectionWithDataLoss) {
  Env env(GetParam());
  if (!Supports(env, kFaultCorrupt)) GTEST_SKIP() << GetParam().name << " cannot corrupt a message";
  ExpectDataLossOnThatConnectionOnly(env, {.corrupt_next = 1});
  EXPECT_EQ(env.client_transport().counters()->faults_corrupted.Get(), 1u);
}

TEST_P(Conformance, FaultTruncatedMessageFailsOnlyItsConnectionWithDataLoss) {
  Env env(GetParam());
  if (!Supports(env, kFaultTruncate)) GTEST_SKIP() << GetParam().name << " cannot truncate a message";
  ExpectDataLossOnThatConnectionOnly(env, {.truncate_next = 1});
  EXPECT_EQ(env.client_transport().counters()->faults_truncated.Get(), 1u);
}

// Pairs that carried messages both ways (one still unreceived when they
// close) and one-sided ops give their pool blocks back once both sides have
// closed them: receive slots, messages, exposures, whatever the transport
// kept for them. A transport may keep a block or two for its next reads (TCP
// keeps one 1 KiB prefetch buffer per transport), hence the slack; blocks
// left behind by each of eight pairs would exceed it.
TEST_P(Conformance, ClosedConnectionsGiveTheirPoolMemoryBack) {
  Env env(GetParam());
  env.Listen();
  const size_t before = mempool::testing::BytesInUse(env.pool());
  constexpr size_t kSlack = 4096;
  size_t open = 0;
  for (uint32_t pair = 0; pair < 8; ++pair) {
    SCOPED_TRACE("pair " + std::to_string(pair));
    env.ConnectPair();
    RoundTrip(env, 65537, 7 + pair);
    for (uint32_t i = 1; i <= 3; ++i) ASSERT_TRUE(SendSeq(env, env.client(), i, 4096).ok());
    for (uint32_t i = 1; i <= 2; ++i) {
      auto seq = RecvSeq(env, env.server());
      ASSERT_TRUE(seq.ok()) << seq.status().ToString();
      ASSERT_EQ(*seq, i);
    }
    Status back = On(env.server_worker(), [&]() { return env.server().Send(SeqMessage(env.pool(), 9, 300)); });
    ASSERT_TRUE(back.ok()) << back.ToString();
    {
      auto got = On(env.client_worker(), [&]() { return env.client().Recv(); });
      ASSERT_TRUE(got.ok()) << got.status().ToString();
    }
    open = std::max(open, mempool::testing::BytesInUse(env.pool()));
    env.DropConnections();
  }
  EXPECT_LE(mempool::testing::WaitForBytesInUseAtMost(env.pool(), before + kSlack), before + kSlack)
      << before << " bytes were in use before the pairs, up to " << open << " with one open";
}

TEST_P(Conformance, FaultDelayHoldsMessagesInOrder) {
  Env env(GetParam());
  env.ConnectPair();
  ASSERT_TRUE(env.client_transport().SetFaults({.delay = 30ms}).ok());
  const auto t0 = std::chrono::steady_clock::now();
  for (uint32_t i = 1; i <= 4; ++i) ASSERT_TRUE(SendSeq(env, env.client(), i).ok());
  for (uint32_t i = 1; i <= 4; ++i) {
    auto got = RecvSeq(env, env.server());
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, i);
  }
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms);
  EXPECT_EQ(env.client_transport().counters()->faults_delayed.Get(), 4u);
  ASSERT_TRUE(env.client_transport().SetFaults({}).ok());
  ExpectHealthy(env, env.client(), env.server(), 100);
}

// A connection closed while a Send() sleeps in an injected delay: the Send()
// comes back (CANCELLED where it was still holding the message; loopback's
// simulated wire holds it instead and Send() has returned at once) without
// touching the closed connection's state, and the transport keeps serving.
TEST_P(Conformance, FaultDelayedSendOutlivesItsClosedConnection) {
  Env env(GetParam());
  env.ConnectPair();
  ASSERT_TRUE(env.client_transport().SetFaults({.delay = 500ms}).ok());
  Connection* conn = &env.client();
  auto sent = coro::Async(env.client_worker().scheduler(),
                          [&env, conn]() { return conn->Send(SeqMessage(env.pool(), 1, 256)); });
  // The Send() is asleep by the time the connection goes (its worker runs
  // it before the drop queued behind it); the closed connection's teardown
  // has finished long before the delay ends.
  env.DropConnections();
  On(env.client_worker(), [] { coro::this_coro::SleepFor(50ms); });
  auto s = sent.WaitFor(10s);
  ASSERT_TRUE(s.ok() || s.code() == StatusCode::kCancelled) << s.ToString();
  EXPECT_EQ(env.client_transport().counters()->faults_delayed.Get(), 1u);
  ASSERT_TRUE(env.client_transport().SetFaults({}).ok());
  ExtraPair other(env);
  ASSERT_TRUE(other.client && other.server);
  ExpectHealthy(env, *other.client, *other.server, 2);
}

// A receive buffer the pool refuses: backpressure where the transport retries
// (nothing fails), else RESOURCE_EXHAUSTED for at most one connection; the
// server keeps serving the other and accepts new ones.
TEST_P(Conformance, FaultRefusedAllocationCostsAtMostOneConnection) {
  Env env(GetParam());
  env.ConnectPair();
  ExtraPair other(env);
  ASSERT_TRUE(other.client && other.server);
  const bool keeps = env.server_transport().capabilities().refused_allocation_keeps_connection;
  ASSERT_TRUE(env.server_transport().SetFaults({.refuse_allocations = 1}).ok());
  // Traffic on both connections until the refusal has happened.
  uint32_t seq = 1;
  for (int i = 0; i < 200 && env.server_transport().counters()->faults_refused_allocations.Get() == 0; ++i) {
    const std::pair<Connection*, Connection*> pairs[] = {{&env.client(), &env.server()},
                                                         {other.client.get(), other.server.get()}};
    for (const auto& [client, server] : pairs) {
      if (!client->status().ok() || !server->status().ok()) continue;
      if (!SendSeq(env, *client, seq++, 4096).ok()) continue;
      (void)RecvSeq(env, *server);
    }
  }
  ASSERT_EQ(env.server_transport().counters()->faults_refused_allocations.Get(), 1u);
  std::this_thread::sleep_for(50ms);
  int failed = 0;
  for (Connection* c : {&env.server(), other.server.get()}) {
    if (c->status().ok()) continue;
    ++failed;
    EXPECT_EQ(c->status().code(), StatusCode::kResourceExhausted) << c->status().ToString();
  }
  if (keeps) {
    EXPECT_EQ(failed, 0) << "this transport retries a refused receive buffer";
  } else {
    EXPECT_LE(failed, 1);
  }
  if (env.server().status().ok()) ExpectHealthy(env, env.client(), env.server(), 1000);
  if (other.server->status().ok()) ExpectHealthy(env, *other.client, *other.server, 2000);
  ExtraPair fresh(env);
  ASSERT_TRUE(fresh.client && fresh.server);
  ExpectHealthy(env, *fresh.client, *fresh.server, 3000);
}

TEST_P(Conformance, FaultDisconnectAfterBreaksThatConnection) {
  Env env(GetParam());
  env.ConnectPair();
  ExtraPair other(env);
  ASSERT_TRUE(other.client && other.server);
  ASSERT_TRUE(env.client_transport().SetFaults({.disconnect_after = 3}).ok());
  for (uint32_t i = 1; i <= 3; ++i) ASSERT_TRUE(SendSeq(env, env.client(), i).ok());
  Status s = SendSeq(env, env.client(), 4);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  // What was delivered before stays readable (TCP: if it left before the close).
  for (uint32_t i = 1; i <= 4; ++i) {
    auto got = RecvSeq(env, env.server());
    if (!got.ok()) {
      EXPECT_EQ(got.status().code(), StatusCode::kUnavailable) << got.status().ToString();
      break;
    }
    EXPECT_EQ(*got, i);
    EXPECT_LE(i, 3u) << "message 4 went out after the break";
  }
  EXPECT_EQ(env.client_transport().counters()->faults_disconnects.Get(), 1u);
  ASSERT_TRUE(env.client_transport().SetFaults({}).ok());
  ExpectHealthy(env, *other.client, *other.server, 10);
}

TEST_P(Conformance, FaultQpErrorFailsOnlyThatConnection) {
  Env env(GetParam());
  if (!Supports(env, kFaultQpError)) GTEST_SKIP() << GetParam().name << " has no QP to move to the error state";
  env.ConnectPair();
  ExtraPair other(env);
  ASSERT_TRUE(other.client && other.server);
  ASSERT_TRUE(env.client_transport().SetFaults({.qp_error_next = 1}).ok());
  (void)SendSeq(env, env.client(), 1);  // posted on a QP in error: flushed
  auto r = coro::Async(env.client_worker().scheduler(), [&env]() { return env.client().Recv(); }).WaitFor(10s);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  auto got = RecvSeq(env, env.server());
  EXPECT_EQ(got.status().code(), StatusCode::kUnavailable) << got.status().ToString();
  EXPECT_EQ(env.client_transport().counters()->faults_qp_errors.Get(), 1u);
  ExpectHealthy(env, *other.client, *other.server, 10);
}

// ---------------------------------------------------------------- peer process

// A peer process serving one connection: connects to `uri`, exposes 8 MiB
// read/write, sends the descriptor as its first message, then answers until
// the connection ends. Runs in a fresh (exec'd) copy of this test binary.
constexpr size_t kChildExposed = 8u << 20;
constexpr const char* kChildEnv = "HRPC_TRANSPORT_CONFORMANCE_CHILD";

TEST(ConformanceChild, Serve) {
  const char* spec = getenv(kChildEnv);
  if (spec == nullptr) GTEST_SKIP() << "only runs as the peer process of PeerProcess* tests";
  std::string s(spec);
  const TransportKind* kind = FindKind(s.substr(0, s.find(',')));
  ASSERT_NE(kind, nullptr);
  const std::string uri = s.substr(s.find(',') + 1);
  auto pool = MakeTestPool(64u << 20, 16u << 20);
  auto w = coro::Worker::Start({.sched = {.name = "child"}});
  ASSERT_TRUE(w.ok());
  std::shared_ptr<void> shared;
  Status done = On(**w, [&]() -> Status {
    HRPC_ASSIGN_OR_RETURN(auto t, kind->make((*w)->scheduler(), *pool, TestOptions(), shared));
    HRPC_ASSIGN_OR_RETURN(auto c, t->Connect(uri));
    Buffer mem = Filled(*pool, kChildExposed, 3);
    HRPC_ASSIGN_OR_RETURN(RemoteDescriptor d, c->Expose(mem, Access::kReadWrite));
    HRPC_ASSIGN_OR_RETURN(Buffer msg, pool->Allocate(sizeof d));
    std::memcpy(msg.data(), &d, sizeof d);
    HRPC_TRY(c->Send(IoBuf(std::move(msg))));
    while (c->Recv().ok()) {
    }
    return Status::Ok();
  });
  EXPECT_TRUE(done.ok()) << done.ToString();
  ExitTestChild();
}

class PeerProcess : public ::testing::TestWithParam<TransportKind> {
 protected:
  // Spawns the peer, accepts its connection, returns its descriptor.
  void StartPeer(Env& env) {
    env.Listen();
    auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
    child_ = SpawnTestChild(kChildEnv, GetParam().name + "," + env.listener().uri(), "ConformanceChild.Serve");
    ASSERT_GT(child_, 0);
    auto c = accepted.WaitFor(20s);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn_ = std::move(*c);
    auto m = On(env.server_worker(), [&]() { return conn_->Recv(); });
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->size(), sizeof desc_);
    m->CopyTo(&desc_, 0, sizeof desc_);
    ASSERT_EQ(desc_.len, kChildExposed);
  }
  // SIGSTOP, and wait until the kernel reports the peer stopped.
  void StopPeer() {
    ASSERT_EQ(kill(child_, SIGSTOP), 0);
    int status = 0;
    ASSERT_EQ(waitpid(child_, &status, WUNTRACED), child_);
    ASSERT_TRUE(WIFSTOPPED(status));
    stopped_at_ = std::chrono::steady_clock::now();
  }
  void TearDown() override {
    if (conn_) On(env_->server_worker(), [&]() { conn_.reset(); });
    env_.reset();
    if (child_ > 0) {
      ReapTestChild(child_);
    }
  }
  // Launches kOps one-sided ops (and one Recv) against the stopped peer and
  // returns how long until all of them completed, checking each failed.
  std::chrono::milliseconds FailAllOutstanding(Env& env, const std::function<void()>& kill_peer) {
    constexpr int kOps = 64;
    constexpr size_t kChunk = 64 * 1024;
    std::atomic<int> done{0}, ok{0}, unavailable{0};
    std::vector<Status> errors(kOps + 1);
    for (int i = 0; i < kOps; ++i) {
      env.server_worker().Post([&, i] {
        IoBuf local(*env.pool().Allocate(kChunk));
        const RemoteDescriptor sub = desc_.Sub(i * kChunk, kChunk);
        Status s = (i % 2) ? conn_->Write(local, sub) : conn_->Read(sub, local);
        if (s.ok()) ok.fetch_add(1);
        if (s.code() == StatusCode::kUnavailable) unavailable.fetch_add(1);
        errors[i] = s;
        done.fetch_add(1);
      });
    }
    env.server_worker().Post([&] {
      auto r = conn_->Recv();
      if (r.status().code() == StatusCode::kUnavailable) unavailable.fetch_add(1);
      errors[kOps] = r.status();
      done.fetch_add(1);
    });
    std::this_thread::sleep_for(100ms);
    // Only while the dead-peer timeout cannot have run out yet (this thread
    // may have been descheduled since the stop).
    if (std::chrono::steady_clock::now() - stopped_at_ < FastDeadPeerOptions().dead_peer_timeout / 2) {
      EXPECT_EQ(done.load(), 0) << "ops completed although the peer is stopped";
    }
    const auto t0 = std::chrono::steady_clock::now();
    kill_peer();
    while (done.load() < kOps + 1 && std::chrono::steady_clock::now() - t0 < 10s) std::this_thread::sleep_for(5ms);
    finished_at_ = std::chrono::steady_clock::now();
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(finished_at_ - t0);
    EXPECT_EQ(done.load(), kOps + 1) << "outstanding ops hang after the peer died";
    EXPECT_EQ(ok.load(), 0);
    EXPECT_EQ(unavailable.load(), kOps + 1) << errors[0].ToString() << " / " << errors[kOps].ToString();
    return took;
  }

  pid_t child_ = -1;
  std::unique_ptr<Env> env_;
  std::unique_ptr<Connection> conn_;
  RemoteDescriptor desc_;
  std::chrono::steady_clock::time_point stopped_at_;   // StopPeer() saw the peer stopped
  std::chrono::steady_clock::time_point finished_at_;  // FailAllOutstanding() saw every op end
};

TEST_P(PeerProcess, KilledPeerFailsOutstandingOpsAndListenerKeepsAccepting) {
  env_ = std::make_unique<Env>(GetParam(), FastDeadPeerOptions());
  Env& env = *env_;
  StartPeer(env);
  ASSERT_FALSE(HasFatalFailure());
  // A working op first.
  IoBuf probe(*env.pool().Allocate(4096));
  ASSERT_TRUE(On(env.server_worker(), [&]() { return conn_->Read(desc_.Sub(0, 4096), probe); }).ok());
  StopPeer();
  ASSERT_FALSE(HasFatalFailure());
  auto took = FailAllOutstanding(env, [&] {
    ReapTestChild(child_);
    child_ = -1;
  });
  EXPECT_LT(took, FastDeadPeerOptions().dead_peer_timeout + 500ms);
  // The listener keeps accepting.
  auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
  auto c = env.ConnectClient();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto s = accepted.WaitFor(10s);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE(On(env.client_worker(), [&]() { return (*c)->Send(SeqMessage(env.pool(), 7, 64)); }).ok());
  auto m = On(env.server_worker(), [&]() { return (*s)->Recv(); });
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(SeqOf(*m), 7u);
  On(env.client_worker(), [&]() { c->reset(); });
  On(env.server_worker(), [&]() { s->reset(); });
}

TEST_P(PeerProcess, SilentPeerHitsDeadPeerTimeout) {
  env_ = std::make_unique<Env>(GetParam(), FastDeadPeerOptions());
  Env& env = *env_;
  StartPeer(env);
  ASSERT_FALSE(HasFatalFailure());
  StopPeer();  // alive (socket open) but silent
  ASSERT_FALSE(HasFatalFailure());
  FailAllOutstanding(env, [] {});
  // The peer fell silent when it was stopped: the timeout runs from then.
  const auto took = finished_at_ - stopped_at_;
  const auto timeout = FastDeadPeerOptions().dead_peer_timeout;
  EXPECT_GE(took, timeout / 2);
  EXPECT_LT(took, timeout * 3);
  EXPECT_EQ(conn_->status().code(), StatusCode::kUnavailable);
}

std::vector<TransportKind> MultiProcessKinds() {
  std::vector<TransportKind> out;
  for (auto k : {LoopbackKind(), TcpKind()}) {
    if (k.multi_process) out.push_back(k);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Software, Conformance, ::testing::Values(LoopbackKind(), TcpKind()), KindName);
// Loopback endpoints share one process; its peer-death case is the
// disconnect fault (loopback_test.cc).
INSTANTIATE_TEST_SUITE_P(Software, PeerProcess, ::testing::ValuesIn(MultiProcessKinds()), KindName);

}  // namespace
}  // namespace hrpc::transport::testing
