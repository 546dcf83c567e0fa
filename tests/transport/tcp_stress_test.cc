// TCP receive state machine under stress: the receive prefetch (up to
// kPrefetchBytes read past the current frame) must never take one-sided
// payload, whatever offset of the next frame's header or padding it ends at.
//
// PrefetchEndsInsideWriteHeader pins the exact case deterministically from a
// raw socket (frames built byte by byte from docs/transport.md);
// ConcurrentTrafficBothWays is the random stress: Writes, Reads and messages of
// random sizes in flight in both directions on one connection, every byte
// CRC-checked and the connection required to stay healthy.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/transport/tcp.h"
#include "tcp_relay.h"
#include "transport_harness.h"

namespace hrpc::transport::testing {
namespace {

using namespace std::chrono_literals;
using mempool::Buffer;
using mempool::IoBuf;

constexpr size_t kPad = 992;       // docs/transport.md: padding before WRITE / READ_RESP payloads
constexpr size_t kPrefetch = 1024;  // docs/transport.md: receive prefetch

void PutHeader(std::vector<uint8_t>& out, uint8_t type, uint32_t length, uint64_t op_id = 0, uint64_t addr = 0,
               uint32_t key = 0, uint32_t aux = 0) {
  uint8_t h[32] = {};
  h[0] = 0xA7;
  h[1] = type;
  std::memcpy(&h[4], &length, 4);
  std::memcpy(&h[8], &op_id, 8);
  std::memcpy(&h[16], &addr, 8);
  std::memcpy(&h[24], &key, 4);
  std::memcpy(&h[28], &aux, 4);
  out.insert(out.end(), h, h + 32);
}

void PutHello(std::vector<uint8_t>& out) {
  PutHeader(out, /*HELLO*/ 1, 32);
  uint8_t b[32] = {};
  const uint64_t magic = 0x3150435450524831ull;
  const uint16_t version = 3;
  const uint32_t max_msg = 65536, depth = 16, keepalive = 1000, dead = 10000;
  std::memcpy(&b[0], &magic, 8);
  std::memcpy(&b[8], &version, 2);
  std::memcpy(&b[12], &max_msg, 4);
  std::memcpy(&b[16], &depth, 4);
  std::memcpy(&b[20], &keepalive, 4);
  std::memcpy(&b[24], &dead, 4);
  out.insert(out.end(), b, b + 32);
}

class RawPeer {
 public:
  explicit RawPeer(const std::string& uri) {
    auto u = ParseUri(uri);
    EXPECT_TRUE(u.ok());
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(u->port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
  }
  ~RawPeer() { close(fd_); }
  // One send() call: on loopback the whole batch is in the peer's socket
  // before it reads, so its first readv sees the frames back to back.
  void Write(const std::vector<uint8_t>& bytes) {
    ASSERT_EQ(send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // Reads whole frames until one of type `type` arrives; returns its header,
  // or an empty vector on EOF / timeout.
  std::vector<uint8_t> WaitFrame(uint8_t type, std::chrono::milliseconds timeout = 5000ms) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      std::vector<uint8_t> h = ReadN(32, end);
      if (h.size() != 32) return {};
      uint32_t len;
      std::memcpy(&len, &h[4], 4);
      const size_t skip = len + ((h[1] == 4 || h[1] == 7) ? kPad : 0);
      if (ReadN(skip, end).size() != skip) return {};
      if (h[1] == type) return h;
    }
  }

 private:
  std::vector<uint8_t> ReadN(size_t n, std::chrono::steady_clock::time_point end) {
    std::vector<uint8_t> out;
    while (out.size() < n) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
      uint8_t buf[4096];
      const ssize_t r = recv(fd_, buf, std::min(sizeof buf, n - out.size()), 0);
      if (r <= 0) break;
      out.insert(out.end(), buf, buf + r);
    }
    return out;
  }

  int fd_ = -1;
};

// A MESSAGE of kPrefetch-32-k bytes followed by a WRITE: the first prefetch
// (kPrefetch bytes from the MESSAGE header) ends k bytes into the WRITE header, so the
// next read starts in the middle of that header. It may only reach the end of
// the padding, never into the payload. Every k of 1..31, on one connection.
TEST(TcpPrefetch, PrefetchEndsInsideWriteHeader) {
  Env env(TcpKind());
  env.Listen();
  auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
  RawPeer raw(env.listener().uri());
  std::vector<uint8_t> hello;
  PutHello(hello);
  raw.Write(hello);
  ASSERT_EQ(raw.WaitFrame(/*HELLO_ACK*/ 2).size(), 32u);
  auto conn = accepted.WaitFor(5s);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  Connection& server = **conn;

  constexpr size_t kPayload = 4096;
  Buffer target = Filled(env.pool(), kPayload, 1);
  auto d = On(env.server_worker(), [&]() { return server.Expose(target, Access::kReadWrite); });
  ASSERT_TRUE(d.ok()) << d.status().ToString();

  for (uint32_t k = 1; k < 32; ++k) {
    SCOPED_TRACE("prefetch ends " + std::to_string(k) + " bytes into the WRITE header");
    const uint32_t msg_len = static_cast<uint32_t>(kPrefetch - 32 - k);
    std::vector<uint8_t> batch;
    PutHeader(batch, /*MESSAGE*/ 3, msg_len);
    for (uint32_t i = 0; i < msg_len; ++i) batch.push_back(static_cast<uint8_t>(k + i));
    ASSERT_EQ(batch.size() + k, kPrefetch);
    PutHeader(batch, /*WRITE*/ 4, kPayload, /*op_id=*/k, d->addr, d->key);
    batch.insert(batch.end(), kPad, 0);
    std::vector<uint8_t> payload(kPayload);
    for (size_t i = 0; i < kPayload; ++i) payload[i] = static_cast<uint8_t>(i * 7 + k);
    batch.insert(batch.end(), payload.begin(), payload.end());
    raw.Write(batch);

    auto ack = raw.WaitFrame(/*WRITE_ACK*/ 5);
    ASSERT_EQ(ack.size(), 32u) << "no WRITE_ACK: " << server.status().ToString();
    uint64_t op_id;
    std::memcpy(&op_id, &ack[8], 8);
    EXPECT_EQ(op_id, k);
    auto m = On(env.server_worker(), [&]() { return server.Recv(); });
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->size(), msg_len);
    std::vector<uint8_t> got(msg_len);
    m->CopyTo(got.data(), 0, msg_len);
    for (uint32_t i = 0; i < msg_len; ++i) ASSERT_EQ(got[i], static_cast<uint8_t>(k + i)) << i;
    EXPECT_EQ(std::memcmp(target.data(), payload.data(), kPayload), 0);
    ASSERT_TRUE(server.status().ok()) << server.status().ToString();
  }
  On(env.server_worker(), [&]() { conn->reset(); });
}

// Messages carry (seq, size) in their first 8 bytes and a pattern after.
IoBuf Message(mempool::Pool& pool, uint32_t seq, uint32_t n) {
  Buffer b = Filled(pool, n, seq);
  std::memcpy(b.data(), &seq, 4);
  std::memcpy(b.data() + 4, &n, 4);
  return IoBuf(std::move(b));
}

Status CheckMessage(mempool::Pool& pool, const IoBuf& m, uint32_t want_seq) {
  if (m.size() < 8) return DataLossError("message of " + std::to_string(m.size()) + " bytes");
  uint32_t seq, n;
  m.CopyTo(&seq, 0, 4);
  m.CopyTo(&n, 4, 4);
  if (seq != want_seq || n != m.size()) {
    return DataLossError("message " + std::to_string(seq) + "/" + std::to_string(n) + " bytes, want " +
                         std::to_string(want_seq) + "/" + std::to_string(m.size()));
  }
  if (Message(pool, seq, n).Crc32c() != m.Crc32c()) return DataLossError("message " + std::to_string(seq) + " CRC");
  return Status::Ok();
}

// Mostly small (so several frames and paddings share one prefetch, ending at
// every offset), some medium, a few large.
uint32_t RandomSize(std::mt19937& rng, uint32_t max) {
  const uint32_t r = rng() % 10;
  if (r < 5) return 1 + rng() % 512;
  if (r < 8) return 1 + rng() % 8192;
  return 1 + rng() % max;
}

// Waits for `wg`. When it does not finish within `d`, closes `conn` (its
// pending ops then fail at once) and waits for it anyway: no coroutine of
// this side outlives the state on the caller's stack. DEADLINE_EXCEEDED then.
Status WaitOrClose(coro::WaitGroup& wg, Connection& conn, std::chrono::seconds d) {
  if (Status s = wg.WaitFor(d); !s.ok()) {
    conn.Close();
    wg.Wait().IgnoreError();
    return DeadlineExceededError("side still running after " + std::to_string(d.count()) + " s: " + s.ToString());
  }
  return Status::Ok();
}

// The results of two sides run as coroutines on the connections' workers. A
// side still running after `d` has both connections closed, on their workers,
// and is waited for: a stuck test fails instead of leaving coroutines on
// freed state.
std::pair<Status, Status> JoinSides(coro::Future<void>& a, coro::Worker& wa, Connection& ca,
                                    coro::Future<void>& b, coro::Worker& wb, Connection& cb,
                                    std::chrono::seconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  Status sa = a.WaitUntil(until);
  Status sb = b.WaitUntil(until);
  if (a.valid() || b.valid()) {
    On(wa, [&] { ca.Close(); });
    On(wb, [&] { cb.Close(); });
    if (a.valid()) sa = DeadlineExceededError("timed out; after its connection closed: " + a.Get().ToString());
    if (b.valid()) sb = DeadlineExceededError("timed out; after its connection closed: " + b.Get().ToString());
  }
  return {sa, sb};
}

// One side: kWorkers coroutines doing Write-then-Read-back of random sizes to
// their own slice of the peer's exposed region, plus a sender of kMessages
// messages of random sizes, plus a receiver of the peer's kMessages messages.
constexpr int kWorkers = 8;
constexpr int kOpsPerWorker = 400;
constexpr uint32_t kSlot = 64 * 1024;
constexpr uint32_t kMessages = 1500;

Status RunSide(mempool::Pool& pool, Connection& conn, const RemoteDescriptor& peer_region, uint32_t seed) {
  coro::WaitGroup wg;
  std::atomic<int> failures{0};
  std::string first_error;
  auto fail = [&](const Status& s) {
    if (failures.fetch_add(1) == 0) first_error = s.ToString();
  };
  wg.Add(kWorkers + 1);
  for (int w = 0; w < kWorkers; ++w) {
    coro::Scheduler::Current()->Spawn([&, w] {
      std::mt19937 rng(seed * 131 + w);
      for (int i = 0; i < kOpsPerWorker && failures.load() == 0; ++i) {
        const uint32_t n = RandomSize(rng, kSlot);
        const uint32_t off = rng() % (kSlot - n + 1);
        const RemoteDescriptor sub = peer_region.Sub(static_cast<uint64_t>(w) * kSlot + off, n);
        IoBuf src(Filled(pool, n, seed * 100000 + w * 1000 + i));
        // A destination in 1..3 slices so READ_RESP bodies scatter.
        IoBuf dst;
        const uint32_t cut = n > 2 ? 1 + rng() % (n - 1) : n;
        dst.Append(*pool.Allocate(cut));
        if (n > cut) dst.Append(*pool.Allocate(n - cut));
        if (Status s = conn.Write(src, sub); !s.ok()) {
          fail(s);
          break;
        }
        if (Status s = conn.Read(sub, dst); !s.ok()) {
          fail(s);
          break;
        }
        if (dst.Crc32c() != src.Crc32c()) {
          fail(DataLossError("read back differs from what was written (" + std::to_string(n) + " bytes)"));
          break;
        }
      }
      wg.Done();
    });
  }
  coro::Scheduler::Current()->Spawn([&] {
    std::mt19937 rng(seed * 7 + 3);
    for (uint32_t i = 0; i < kMessages && failures.load() == 0; ++i) {
      const uint32_t n = 8 + rng() % (rng() % 4 == 0 ? 4096 : 300);
      if (Status s = conn.Send(Message(pool, i, n)); !s.ok()) {
        fail(s);
        break;
      }
    }
    wg.Done();
  });
  Status recv_status;
  for (uint32_t i = 0; i < kMessages; ++i) {
    auto m = conn.Recv();
    if (!m.ok()) {
      recv_status = m.status();
      break;
    }
    if (Status s = CheckMessage(pool, *m, i); !s.ok()) {
      recv_status = s;
      break;
    }
  }
  HRPC_TRY(WaitOrClose(wg, conn, 60s));
  if (failures.load() > 0) return DataLossError(std::to_string(failures.load()) + " failed ops; first: " + first_error);
  HRPC_TRY(recv_status);
  return conn.status();
}

TEST(TcpPrefetch, ConcurrentTrafficBothWays) {
  Env env(TcpKind());
  env.ConnectPair();
  Buffer server_region = Filled(env.pool(), kWorkers * kSlot, 1);
  Buffer client_region = Filled(env.pool(), kWorkers * kSlot, 2);
  auto sd = On(env.server_worker(), [&]() { return env.server().Expose(server_region, Access::kReadWrite); });
  auto cd = On(env.client_worker(), [&]() { return env.client().Expose(client_region, Access::kReadWrite); });
  ASSERT_TRUE(sd.ok() && cd.ok());
  auto server_side = coro::Async(env.server_worker().scheduler(),
                                 [&]() { return RunSide(env.pool(), env.server(), *cd, 11); });
  auto client_side = coro::Async(env.client_worker().scheduler(),
                                 [&]() { return RunSide(env.pool(), env.client(), *sd, 22); });
  auto [c, s] = JoinSides(client_side, env.client_worker(), env.client(), server_side, env.server_worker(),
                          env.server(), 180s);
  EXPECT_TRUE(c.ok()) << "client side: " << c.ToString();
  EXPECT_TRUE(s.ok()) << "server side: " << s.ToString();
}

// Messages with and without payloads, in runs of one shape (so a frame
// announces the ones behind it), both ways at once through a relay that
// passes the bytes on in pieces of 1..3000 bytes with short pauses: each
// side's reads end anywhere in headers, messages, paddings and payloads.
// Every message arrives whole and in order, each payload of 4 KiB or more
// starts a 4 KiB-aligned pool block, no byte is copied, and both connections
// stay healthy.
struct Shaped {
  uint32_t msg = 0, payload = 0;
};

std::vector<Shaped> RandomShapes(uint32_t seed, uint32_t count) {
  std::mt19937 rng(seed);
  std::vector<Shaped> out;
  while (out.size() < count) {
    Shaped sh;
    sh.msg = 12 + rng() % (rng() % 4 == 0 ? 9000 : 400);
    if (rng() % 2 == 0) {
      const uint32_t r = rng() % 20;
      sh.payload = r < 8    ? 4096 * (1 + rng() % 4)
                   : r < 12 ? 1 + rng() % 16384
                   : r < 19 ? 1 + rng() % (128 * 1024)
                            : 1u << 20;
    }
    for (uint32_t run = 1 + rng() % 6; run > 0 && out.size() < count; --run) out.push_back(sh);
  }
  return out;
}

// A message is (seq, message bytes, payload bytes) then a pattern; its
// payload is Filled() with seed seq * 7 + 1.
IoBuf ShapedMessage(mempool::Pool& pool, uint32_t seq, const Shaped& sh) {
  Buffer b = Filled(pool, sh.msg, seq);
  std::memcpy(b.data(), &seq, 4);
  std::memcpy(b.data() + 4, &sh.msg, 4);
  std::memcpy(b.data() + 8, &sh.payload, 4);
  return IoBuf(std::move(b));
}

Status CheckShaped(mempool::Pool& pool, IoBuf m, uint32_t want_seq, const Shaped& want) {
  const std::string what = "message " + std::to_string(want_seq);
  if (m.size() != size_t{want.msg} + want.payload) {
    return DataLossError(what + ": " + std::to_string(m.size()) + " bytes, want " + std::to_string(want.msg) + " + " +
                         std::to_string(want.payload));
  }
  IoBuf msg = m.CutFront(want.msg);
  if (msg.Crc32c() != ShapedMessage(pool, want_seq, want).Crc32c()) return DataLossError(what + ": message bytes differ");
  if (want.payload == 0) return Status::Ok();
  if (want.payload >= 4096 && reinterpret_cast<uintptr_t>(m.slice(0).data()) % 4096 != 0) {
    return DataLossError(what + ": payload not 4 KiB-aligned");
  }
  if (m.Crc32c() != IoBuf(Filled(pool, want.payload, want_seq * 7 + 1)).Crc32c()) {
    return DataLossError(what + ": payload bytes differ");
  }
  return Status::Ok();
}

Status ShapedSide(mempool::Pool& pool, Connection& conn, const std::vector<Shaped>& out, const std::vector<Shaped>& in) {
  coro::WaitGroup wg;
  Status send_status;
  wg.Add(1);
  coro::Scheduler::Current()->Spawn([&] {
    for (uint32_t i = 0; i < out.size(); ++i) {
      IoBuf m = ShapedMessage(pool, i, out[i]);
      Status s = out[i].payload == 0
                     ? conn.Send(std::move(m))
                     : conn.SendWithPayload(std::move(m), IoBuf(Filled(pool, out[i].payload, i * 7 + 1)));
      if (!s.ok()) {
        send_status = s.WithContext("send " + std::to_string(i));
        break;
      }
    }
    wg.Done();
  });
  Status recv_status;
  for (uint32_t i = 0; i < in.size(); ++i) {
    auto m = conn.Recv();
    if (!m.ok()) {
      recv_status = m.status().WithContext("receive " + std::to_string(i));
      break;
    }
    if (Status s = CheckShaped(pool, std::move(*m), i, in[i]); !s.ok()) {
      recv_status = s;
      break;
    }
  }
  HRPC_TRY(WaitOrClose(wg, conn, 90s));
  HRPC_TRY(send_status);
  HRPC_TRY(recv_status);
  return conn.status();
}

TEST(TcpPrefetch, PayloadMessagesArriveWholeThroughAChoppingRelay) {
  Env env(TcpKind());
  env.Listen();
  const std::string uri = env.listener().uri();
  hrpc::testing::TcpRelay relay(static_cast<uint16_t>(std::stoi(uri.substr(uri.rfind(':') + 1))),
                                {.max_piece = 3000, .max_pause = std::chrono::microseconds(200), .seed = 7});
  auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
  auto client = On(env.client_worker(), [&]() {
    return env.client_transport().Connect("tcp://127.0.0.1:" + std::to_string(relay.port()));
  });
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto server = accepted.WaitFor(10s);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::vector<Shaped> to_server = RandomShapes(101, 300), to_client = RandomShapes(202, 300);
  const uint64_t copied0 = mempool::CopiedBytesTotal();
  auto server_side = coro::Async(env.server_worker().scheduler(),
                                 [&]() { return ShapedSide(env.pool(), **server, to_client, to_server); });
  auto client_side = coro::Async(env.client_worker().scheduler(),
                                 [&]() { return ShapedSide(env.pool(), **client, to_server, to_client); });
  auto [c, s] = JoinSides(client_side, env.client_worker(), **client, server_side, env.server_worker(), **server, 200s);
  EXPECT_TRUE(c.ok()) << "client side: " << c.ToString();
  EXPECT_TRUE(s.ok()) << "server side: " << s.ToString();
  EXPECT_EQ(mempool::CopiedBytesTotal() - copied0, 0u);
  std::printf("relayed %llu bytes in pieces of at most 3000\n", static_cast<unsigned long long>(relay.relayed()));
  On(env.client_worker(), [&]() { client->reset(); });
  On(env.server_worker(), [&]() { server->reset(); });
}

}  // namespace
}  // namespace hrpc::transport::testing
