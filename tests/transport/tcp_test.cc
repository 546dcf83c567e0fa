// TCP-specific behaviour seen from a raw socket: garbage, truncated frames,
// handshake mismatches and timeouts, credit violations. Frames are built here
// byte by byte from docs/transport.md (not from the private codec), so the
// test also pins the wire format.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/transport/tcp.h"
#include "../mempool/pool_test_util.h"
#include "transport_harness.h"

namespace hrpc::transport::testing {
namespace {

using namespace std::chrono_literals;
using mempool::IoBuf;

std::vector<uint8_t> Header(uint8_t type, uint32_t length, uint64_t op_id = 0, uint16_t credits = 0) {
  std::vector<uint8_t> h(32, 0);
  h[0] = 0xA7;
  h[1] = type;
  std::memcpy(&h[2], &credits, 2);
  std::memcpy(&h[4], &length, 4);
  std::memcpy(&h[8], &op_id, 8);
  return h;
}

std::vector<uint8_t> HelloFrame(uint16_t version = 3, uint32_t depth = 16, uint32_t dead = 1000) {
  std::vector<uint8_t> f = Header(/*HELLO*/ 1, 32);
  std::vector<uint8_t> b(32, 0);
  const uint64_t magic = 0x3150435450524831ull;
  const uint32_t max_msg = 65536, keepalive = 100;
  std::memcpy(&b[0], &magic, 8);
  std::memcpy(&b[8], &version, 2);
  std::memcpy(&b[12], &max_msg, 4);
  std::memcpy(&b[16], &depth, 4);
  std::memcpy(&b[20], &keepalive, 4);
  std::memcpy(&b[24], &dead, 4);
  f.insert(f.end(), b.begin(), b.end());
  return f;
}

class RawClient {
 public:
  // rcvbuf > 0: the socket's receive buffer (SO_RCVBUF, set before connecting).
  explicit RawClient(const std::string& uri, int rcvbuf = 0) {
    auto u = ParseUri(uri);
    EXPECT_TRUE(u.ok());
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) {
      EXPECT_EQ(setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(u->port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << strerror(errno);
  }
  ~RawClient() { close(fd_); }
  void Write(const std::vector<uint8_t>& bytes) {
    ASSERT_EQ(send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // False once the server closed the connection (or the kernel refused).
  bool TryWrite(const std::vector<uint8_t>& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }
  // Reads until `n` bytes arrived, EOF, or the timeout.
  std::vector<uint8_t> Read(size_t n, std::chrono::milliseconds timeout = 3000ms) {
    std::vector<uint8_t> out;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (out.size() < n) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
      uint8_t buf[4096];
      ssize_t r = recv(fd_, buf, std::min(sizeof buf, n - out.size()), 0);
      if (r <= 0) {
        eof_ = true;
        break;
      }
      out.insert(out.end(), buf, buf + r);
    }
    return out;
  }
  // True when the server closed the connection within the timeout.
  bool ClosedByServer(std::chrono::milliseconds timeout = 3000ms) {
    Read(SIZE_MAX, timeout);
    return eof_;
  }

 private:
  int fd_ = -1;
  bool eof_ = false;
};

class TcpWire : public ::testing::Test {
 protected:
  void SetUp() override {
    sink_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(512);
    spdlog::default_logger()->sinks().push_back(sink_);
    env_ = std::make_unique<Env>(TcpKind());
    env_->ConnectPair();
  }
  void TearDown() override {
    env_.reset();
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  bool Logged(const std::string& needle) {
    for (const auto& line : sink_->last_formatted()) {
      if (line.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  // The healthy connection still works, and the listener still accepts.
  void ServerUnaffected() {
    ASSERT_TRUE(On(env_->client_worker(), [&]() { return env_->client().Send(IoBuf(Filled(env_->pool(), 100, 1))); }).ok());
    auto m = On(env_->server_worker(), [&]() { return env_->server().Recv(); });
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(m->size(), 100u);
    auto accepted = coro::Async(env_->server_worker().scheduler(), [&]() { return env_->listener().Accept(); });
    auto c = env_->ConnectClient();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    auto s = accepted.WaitFor(5s);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    On(env_->client_worker(), [&]() { c->reset(); });
    On(env_->server_worker(), [&]() { s->reset(); });
  }
  // Handshakes from a raw socket; returns the raw client.
  std::unique_ptr<RawClient> Handshaken() {
    auto raw = std::make_unique<RawClient>(env_->listener().uri());
    raw->Write(HelloFrame());
    auto ack = raw->Read(64);
    EXPECT_EQ(ack.size(), 64u);
    if (ack.size() == 64) {
      EXPECT_EQ(ack[0], 0xA7);
      EXPECT_EQ(ack[1], 2) << "HELLO_ACK";
    }
    return raw;
  }

  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::unique_ptr<Env> env_;
};

// A peer that asks to be pinged every few milliseconds (a dead-peer timeout
// of 3 ms) makes this side's timer tick often while it is connected, not
// after it has gone: an idle worker goes back to sleeping at its own pace.
TEST_F(TcpWire, APeerThatAskedForFrequentPingsNoLongerSetsThePaceOnceGone) {
  auto wakeups_in = [&](std::chrono::milliseconds d) {
    const uint64_t s0 = env_->server_worker().scheduler().stats().sleeps;
    std::this_thread::sleep_for(d);
    return env_->server_worker().scheduler().stats().sleeps - s0;
  };
  {
    auto raw = std::make_unique<RawClient>(env_->listener().uri());
    raw->Write(HelloFrame(3, 16, /*dead_peer_ms=*/3));
    ASSERT_EQ(raw->Read(64).size(), 64u);
    const uint64_t fast = wakeups_in(500ms);
    std::printf("wakeups in 500 ms with the peer: %llu\n", static_cast<unsigned long long>(fast));
    EXPECT_GT(fast, 25u) << "the timer did not follow the peer's pace";
  }
  std::this_thread::sleep_for(300ms);  // the server notices it has gone
  const uint64_t idle = wakeups_in(1000ms);
  std::printf("wakeups in 1000 ms after it left: %llu\n", static_cast<unsigned long long>(idle));
  EXPECT_LT(idle, 100u) << "the timer kept the gone peer's pace";
  ServerUnaffected();
}

TEST_F(TcpWire, GarbageInsteadOfHandshakeClosesThatConnection) {
  RawClient raw(env_->listener().uri());
  raw.Write(std::vector<uint8_t>(100, 0xEE));
  EXPECT_TRUE(raw.ClosedByServer());
  EXPECT_TRUE(Logged("bad frame magic")) << "the reason must be logged";
  ServerUnaffected();
}

TEST_F(TcpWire, GarbageAfterHandshakeClosesThatConnection) {
  auto raw = Handshaken();
  std::vector<uint8_t> junk = Header(/*type*/ 77, 0);
  raw->Write(junk);
  EXPECT_TRUE(raw->ClosedByServer());
  EXPECT_TRUE(Logged("unknown frame type 77"));
  ServerUnaffected();
}

TEST_F(TcpWire, TruncatedFrameClosesThatConnection) {
  auto raw = Handshaken();
  std::vector<uint8_t> f = Header(/*MESSAGE*/ 3, 1000);
  f.resize(f.size() + 10, 'x');
  raw->Write(f);
  raw->ShutdownWrite();
  EXPECT_TRUE(raw->ClosedByServer());
  EXPECT_TRUE(Logged("truncated frame: peer closed after 10 of 1000 body bytes"));
  ServerUnaffected();
}

TEST_F(TcpWire, TruncatedHeaderClosesThatConnection) {
  auto raw = Handshaken();
  std::vector<uint8_t> f = Header(3, 10);
  f.resize(20);
  raw->Write(f);
  raw->ShutdownWrite();
  EXPECT_TRUE(raw->ClosedByServer());
  EXPECT_TRUE(Logged("truncated frame: peer closed after 20 of 32 header bytes"));
  ServerUnaffected();
}

TEST_F(TcpWire, OversizedMessageClosesThatConnection) {
  auto raw = Handshaken();
  raw->Write(Header(3, 1u << 30));
  EXPECT_TRUE(raw->ClosedByServer());
  EXPECT_TRUE(Logged("exceeds the limit"));
  ServerUnaffected();
}

TEST_F(TcpWire, VersionMismatchIsAnsweredWithAnErrorFrame) {
  RawClient raw(env_->listener().uri());
  raw.Write(HelloFrame(/*version=*/99));
  auto hdr = raw.Read(32);
  ASSERT_EQ(hdr.size(), 32u);
  EXPECT_EQ(hdr[1], 8) << "ERROR frame";
  uint32_t len = 0, code = 0;
  std::memcpy(&len, &hdr[4], 4);
  std::memcpy(&code, &hdr[28], 4);
  EXPECT_EQ(code, static_cast<uint32_t>(StatusCode::kFailedPrecondition));
  auto text = raw.Read(len);
  EXPECT_NE(std::string(text.begin(), text.end()).find("protocol version 99 not supported"), std::string::npos);
  EXPECT_TRUE(raw.ClosedByServer());
  ServerUnaffected();
}

TEST_F(TcpWire, SilentClientHitsHandshakeTimeout) {
  RawClient raw(env_->listener().uri());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(raw.ClosedByServer(5000ms));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, TestOptions().handshake_timeout / 2);
  EXPECT_TRUE(Logged("handshake not completed"));
  ServerUnaffected();
}

TEST_F(TcpWire, MessageWithoutCreditClosesThatConnection) {
  auto raw = Handshaken();
  std::vector<uint8_t> all;
  for (uint32_t i = 0; i < TestOptions().recv_depth + 1; ++i) {
    auto f = Header(3, 8);
    f.resize(40, 'm');
    all.insert(all.end(), f.begin(), f.end());
  }
  raw->Write(all);
  EXPECT_TRUE(raw->ClosedByServer());
  EXPECT_TRUE(Logged("without a credit"));
  ServerUnaffected();
}

TEST_F(TcpWire, ConnectToNonHrpcServerFails) {
  // A server that answers with junk.
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(lfd, 1), 0);
  socklen_t len = sizeof a;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  std::thread junk([&] {
    int c = accept(lfd, nullptr, nullptr);
    std::string s = "HTTP/1.1 400 Bad Request\r\n\r\n....................";
    (void)!write(c, s.data(), s.size());
    std::this_thread::sleep_for(500ms);
    close(c);
  });
  const std::string uri = "tcp://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  auto c = On(env_->client_worker(), [&]() { return env_->client_transport().Connect(uri); });
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kDataLoss) << c.status().ToString();
  junk.join();
  close(lfd);
}

TEST_F(TcpWire, ConnectWithNobodyListeningIsUnavailable) {
  auto c = On(env_->client_worker(), [&]() { return env_->client_transport().Connect("tcp://127.0.0.1:1"); });
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
}

TEST_F(TcpWire, ExposeRefusesMemoryFromAnotherPool) {
  auto other = MakeTestPool(4u << 20, 1u << 20);
  mempool::Buffer b = Filled(*other, 4096, 1);
  auto d = On(env_->server_worker(), [&]() { return env_->server().Expose(b, Access::kRead); });
  EXPECT_EQ(d.status().code(), StatusCode::kFailedPrecondition) << d.status().ToString();
  b.Reset();
}

TEST_F(TcpWire, RefusedLargeWriteIsDrainedAndConnectionSurvives) {
  mempool::Buffer small = Filled(env_->pool(), 4096, 1);
  auto d = On(env_->server_worker(), [&]() { return env_->server().Expose(small, Access::kReadWrite); });
  ASSERT_TRUE(d.ok());
  // 8 MiB aimed at a 4 KiB exposure: refused, its bytes drained from the stream.
  IoBuf big(Filled(env_->pool(), 8u << 20, 2));
  Status s = On(env_->client_worker(), [&]() {
    return env_->client().Write(big, RemoteDescriptor{d->addr, 8u << 20, d->key});
  });
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
  IoBuf ok(Filled(env_->pool(), 4096, 3));
  EXPECT_TRUE(On(env_->client_worker(), [&]() { return env_->client().Write(ok, *d); }).ok());
  EXPECT_EQ(ok.Crc32c(), IoBuf(small).Crc32c());
}

// A MESSAGE_PAYLOAD frame from a raw socket: `length` message bytes, the
// padding, then `payload` bytes (header addr = payload length).
std::vector<uint8_t> MessagePayloadFrame(uint32_t msg_len, uint64_t payload_len, size_t payload_bytes_sent) {
  std::vector<uint8_t> f = Header(/*MESSAGE_PAYLOAD*/ 11, msg_len);
  std::memcpy(&f[16], &payload_len, 8);
  f.resize(f.size() + msg_len + 992 + payload_bytes_sent, 'p');  // 992: the padding
  return f;
}

// A message with a payload behind it: one credit, delivered as the message's
// slices followed by 4 KiB-aligned blocks of the receiver's pool, in order
// with plain messages, and not a byte copied by the CPU.
TEST_F(TcpWire, MessageWithPayloadLandsInAlignedPoolBlocksUncopied) {
  Connection& client = env_->client();
  ASSERT_GT(client.limits().max_payload_bytes, 0u);
  const size_t max_class = env_->pool().options().max_class_bytes;
  for (size_t msg_len : {size_t{0}, size_t{10}, size_t{200}, size_t{3000}}) {
    for (size_t n : {size_t{1}, size_t{100}, size_t{4096}, size_t{65536 + 17}, size_t{1} << 20,
                     size_t{9} << 20, max_class + 3 * 4096 + 5}) {
      SCOPED_TRACE("message " + std::to_string(msg_len) + " payload " + std::to_string(n));
      IoBuf msg = msg_len > 0 ? IoBuf(Filled(env_->pool(), msg_len, 7)) : IoBuf();
      IoBuf payload;
      for (size_t off = 0; off < n; off += max_class) {
        payload.Append(Filled(env_->pool(), std::min(max_class, n - off), static_cast<uint32_t>(n + off)));
      }
      const uint32_t want_msg_crc = msg.Crc32c();
      const uint32_t want_payload_crc = payload.Crc32c();
      const uint64_t copied0 = mempool::CopiedBytesTotal();
      Status sent = On(env_->client_worker(), [&]() -> Status {
        HRPC_TRY(client.Send(IoBuf(Filled(env_->pool(), 50, 1))));
        HRPC_TRY(client.SendWithPayload(std::move(msg), std::move(payload)));
        return client.Send(IoBuf(Filled(env_->pool(), 60, 2)));
      });
      ASSERT_TRUE(sent.ok()) << sent.ToString();
      auto got = On(env_->server_worker(), [&]() -> Result<std::vector<IoBuf>> {
        std::vector<IoBuf> v;
        for (int i = 0; i < 3; ++i) {
          HRPC_ASSIGN_OR_RETURN(IoBuf m, env_->server().Recv());
          v.push_back(std::move(m));
        }
        return v;
      });
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(mempool::CopiedBytesTotal() - copied0, 0u);
      ASSERT_EQ((*got)[0].size(), 50u);
      ASSERT_EQ((*got)[2].size(), 60u);
      IoBuf& m = (*got)[1];
      ASSERT_EQ(m.size(), msg_len + n);
      IoBuf body = m.Share();
      IoBuf head = body.CutFront(msg_len);
      EXPECT_EQ(head.Crc32c(), want_msg_crc);
      EXPECT_EQ(body.Crc32c(), want_payload_crc);
      // The payload starts a new block; blocks of 4 KiB and more are 4 KiB-aligned and in the pool.
      size_t seen = 0, slice = 0;
      while (seen < msg_len) seen += m.slice(slice++).size();
      EXPECT_EQ(seen, msg_len) << "message and payload share a block";
      for (; slice < m.num_slices(); ++slice) {
        const mempool::Buffer& b = m.slice(slice);
        if (b.size() >= 4096) {
          EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 4096, 0u);
        }
        EXPECT_TRUE(env_->pool().KeyFor(0, b.data()).ok() || env_->pool().num_registrars() == 0);
      }
    }
  }
}

// A peer whose hello does not offer payloads (flags 0) may not send one.
TEST_F(TcpWire, PayloadFromAPeerThatDidNotAgreeClosesThatConnection) {
  auto raw = Handshaken();
  raw->Write(MessagePayloadFrame(10, 100, 100));
  EXPECT_TRUE(raw->ClosedByServer());
  EXPECT_TRUE(Logged("message payload of 100 bytes (this connection takes 1 to 0)"));
  ServerUnaffected();
}

TEST_F(TcpWire, PayloadLargerThanOfferedClosesThatConnection) {
  RawClient raw(env_->listener().uri());
  std::vector<uint8_t> hello = HelloFrame();
  const uint16_t flags = 1;         // payloads
  const uint32_t pages = 2;         // up to 8 KiB
  std::memcpy(&hello[32 + 10], &flags, 2);
  std::memcpy(&hello[32 + 28], &pages, 4);
  raw.Write(hello);
  ASSERT_EQ(raw.Read(64).size(), 64u);
  raw.Write(MessagePayloadFrame(10, 8193, 0));
  EXPECT_TRUE(raw.ClosedByServer());
  EXPECT_TRUE(Logged("message payload of 8193 bytes (this connection takes 1 to 8192)"));
  ServerUnaffected();
}

// A raw client whose hello offers payloads up to 64 KiB, handshaken.
std::unique_ptr<RawClient> PayloadClient(Env& env) {
  auto raw = std::make_unique<RawClient>(env.listener().uri());
  std::vector<uint8_t> hello = HelloFrame();
  const uint16_t flags = 1;     // payloads
  const uint32_t pages = 16;    // up to 64 KiB
  std::memcpy(&hello[32 + 10], &flags, 2);
  std::memcpy(&hello[32 + 28], &pages, 4);
  raw->Write(hello);
  EXPECT_EQ(raw->Read(64).size(), 64u);
  return raw;
}

// A frame that announces `announced` (header key) same-shaped frames behind
// it: a MESSAGE_PAYLOAD (MessagePayloadFrame) when payload_len > 0, else a
// MESSAGE. Message bytes are `tag`, payload byte j is tag * 31 + j.
std::vector<uint8_t> AnnouncingFrame(uint32_t msg_len, uint32_t payload_len, uint32_t announced, uint8_t tag) {
  std::vector<uint8_t> f;
  if (payload_len > 0) {
    f = MessagePayloadFrame(msg_len, payload_len, payload_len);
    std::fill(f.begin() + 32 + msg_len, f.begin() + 32 + msg_len + 992, 0);
    for (uint32_t j = 0; j < payload_len; ++j) f[32 + msg_len + 992 + j] = static_cast<uint8_t>(tag * 31 + j);
  } else {
    f = Header(/*MESSAGE*/ 3, msg_len);
    f.resize(32 + msg_len);
  }
  std::memcpy(&f[24], &announced, 4);
  std::fill(f.begin() + 32, f.begin() + 32 + msg_len, tag);
  return f;
}

// A raw client whose hello offers payloads up to `pages` * 4 KiB, handshaken
// with a listener that holds its connections until admitted.
std::unique_ptr<RawClient> HeldPayloadClient(Env& env, uint32_t pages, bool client_speaks_first = true) {
  EXPECT_TRUE(On(env.server_worker(), [&]() -> Status {
                env.listener().HoldUntilAdmitted(client_speaks_first);
                return Status::Ok();
              }).ok());
  auto raw = std::make_unique<RawClient>(env.listener().uri());
  std::vector<uint8_t> hello = HelloFrame();
  const uint16_t flags = 1;  // payloads
  std::memcpy(&hello[32 + 10], &flags, 2);
  std::memcpy(&hello[32 + 28], &pages, 4);
  raw->Write(hello);
  EXPECT_EQ(raw->Read(64).size(), 64u);
  return raw;
}

// Listener::HoldUntilAdmitted (a server with an authenticator): until
// Connection::Admit(), a connection reads nothing while a message it received
// waits to be taken, and no in-stream payload, so a peer that has not
// authenticated makes this side hold little memory (without the hold, the
// payload below would have 8 MiB of blocks mapped ahead of its bytes at
// once). Once admitted, what waited is read whole.
TEST_F(TcpWire, AConnectionHeldUntilAdmittedReadsNoPayloadBeforeAdmit) {
  using mempool::testing::BytesInUse;
  auto raw = HeldPayloadClient(*env_, /*pages=*/16384);  // payloads up to 64 MiB
  auto accepted = coro::Async(env_->server_worker().scheduler(), [&]() { return env_->listener().Accept(); }).WaitFor(5s);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  std::unique_ptr<Connection> conn = std::move(*accepted);
  const auto& ctr = *env_->server_transport().counters();
  auto recv = [&]() { return On(env_->server_worker(), [&]() { return conn->Recv(); }); };

  // Two messages, the second longer than what one read takes past the first:
  // the second is read only once the first was taken.
  const uint64_t received0 = ctr.messages_received.Get();
  std::vector<uint8_t> two = Header(/*MESSAGE*/ 3, 48);
  two.resize(32 + 48, 'a');
  std::vector<uint8_t> second = Header(/*MESSAGE*/ 3, 8000);
  second.resize(32 + 8000, 'b');
  two.insert(two.end(), second.begin(), second.end());
  raw->Write(two);
  for (int i = 0; i < 500 && ctr.messages_received.Get() == received0; ++i) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(ctr.messages_received.Get(), received0 + 1) << "read past a message that was not taken";
  auto m1 = recv();
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  EXPECT_EQ(m1->size(), 48u);
  auto m2 = recv();
  ASSERT_TRUE(m2.ok()) << m2.status().ToString();
  EXPECT_EQ(m2->size(), 8000u);

  // A 16 MiB payload, 64 KiB of it sent: no block is taken for it.
  const size_t before = BytesInUse(env_->pool());
  const uint64_t payload = uint64_t{16} << 20;
  const size_t sent = size_t{64} << 10;
  raw->Write(MessagePayloadFrame(40, payload, sent));
  size_t most = 0;
  for (int i = 0; i < 30; ++i) {
    most = std::max(most, BytesInUse(env_->pool()));
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_LT(most, before + (size_t{1} << 20)) << "blocks taken for the payload of a connection not admitted";

  // Admitted: the payload is read, the message delivered whole.
  On(env_->server_worker(), [&]() { conn->Admit(); });
  std::vector<uint8_t> rest(payload - sent, 'p');
  std::thread writer([&] { raw->Write(rest); });
  auto m3 = recv();
  writer.join();
  ASSERT_TRUE(m3.ok()) << m3.status().ToString();
  EXPECT_EQ(m3->size(), 40 + payload);
  On(env_->server_worker(), [&]() { conn.reset(); });
  ServerUnaffected();
}

// A first message with a payload before authentication, when the exchange
// starts with a message of the client's that carries none: the peer skipped
// authentication, so its payload is read into the scratch buffer and
// dropped, and its message delivered alone, for the authenticator to refuse
// in its own terms. When the exchange may admit a peer before it has sent
// anything, the same frame is only held: after Admit() it arrives whole.
TEST_F(TcpWire, AHeldConnectionDropsThePayloadOfItsFirstMessageOnlyWhenTheClientSpeaksFirst) {
  using mempool::testing::BytesInUse;
  for (bool client_speaks_first : {true, false}) {
    SCOPED_TRACE(client_speaks_first ? "client speaks first" : "the server may admit at once");
    auto raw = HeldPayloadClient(*env_, /*pages=*/16, client_speaks_first);
    auto accepted =
        coro::Async(env_->server_worker().scheduler(), [&]() { return env_->listener().Accept(); }).WaitFor(5s);
    ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
    std::unique_ptr<Connection> conn = std::move(*accepted);
    const size_t before = BytesInUse(env_->pool());
    raw->Write(MessagePayloadFrame(10, 60000, 60000));
    if (client_speaks_first) {
      auto m = On(env_->server_worker(), [&]() { return conn->Recv(); });
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      EXPECT_EQ(m->size(), 10u) << "the message alone";
      EXPECT_LT(BytesInUse(env_->pool()), before + 60000) << "blocks taken for the dropped payload";
    } else {
      const uint64_t received0 = env_->server_transport().counters()->messages_received.Get();
      std::this_thread::sleep_for(200ms);
      EXPECT_EQ(env_->server_transport().counters()->messages_received.Get(), received0) << "read before Admit()";
      EXPECT_LT(BytesInUse(env_->pool()), before + 60000) << "blocks taken before Admit()";
      On(env_->server_worker(), [&]() { conn->Admit(); });
      auto m = On(env_->server_worker(), [&]() { return conn->Recv(); });
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      EXPECT_EQ(m->size(), 10u + 60000u) << "the message with its payload";
    }
    // The connection goes on: the next message arrives.
    std::vector<uint8_t> next = Header(/*MESSAGE*/ 3, 20);
    next.resize(32 + 20, 'n');
    raw->Write(next);
    auto m2 = On(env_->server_worker(), [&]() { return conn->Recv(); });
    ASSERT_TRUE(m2.ok()) << m2.status().ToString();
    EXPECT_EQ(m2->size(), 20u);
    On(env_->server_worker(), [&]() { conn.reset(); });
  }
  ServerUnaffected();
}

// A peer that goes away in the middle of a message's payload: the blocks the
// payload was being read into go back to the pool, whether the connection
// was still waiting in the accept queue or had been accepted.
TEST_F(TcpWire, PeerGoneMidPayloadGivesThePayloadBlocksBack) {
  using mempool::testing::BytesInUse;
  const size_t before = BytesInUse(env_->pool());
  std::unique_ptr<Connection> accepted;
  for (bool accept : {false, true}) {
    SCOPED_TRACE(accept ? "accepted" : "in the accept queue");
    auto raw = PayloadClient(*env_);
    if (accept) {
      auto s = coro::Async(env_->server_worker().scheduler(), [&]() { return env_->listener().Accept(); }).WaitFor(5s);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      accepted = std::move(*s);
    }
    raw->Write(MessagePayloadFrame(10, 60000, 30000));  // half of the payload
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (BytesInUse(env_->pool()) < before + 30000 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
    }
    EXPECT_GE(BytesInUse(env_->pool()), before + 30000) << "the payload's blocks were never taken";
    raw.reset();  // the peer is gone
    if (accept) {
      auto m = On(env_->server_worker(), [&]() { return accepted->Recv(); });
      EXPECT_EQ(m.status().code(), StatusCode::kUnavailable) << m.status().ToString();
    }
    EXPECT_LE(mempool::testing::WaitForBytesInUseAtMost(env_->pool(), before + 4096, 5s), before + 4096)
        << before << " bytes were in use before";
  }
  On(env_->server_worker(), [&]() { accepted.reset(); });
  ServerUnaffected();
}

// A peer that keeps asking for one-sided ops and never reads the answers
// (here: READs of memory it was never shown, each refused with an ERROR whose
// text takes a pool block): the answers waiting for it are bounded (4 x
// max_outstanding_ops), then it loses its connection; the pool it shares with
// every other connection does not grow with what it sends.
TEST_F(TcpWire, PeerThatAsksWithoutReadingTheAnswersLosesItsConnection) {
  auto raw = Handshaken();
  const size_t base = mempool::testing::BytesInUse(env_->pool());
  std::vector<uint8_t> batch;
  for (uint64_t i = 0; i < 4096; ++i) {
    std::vector<uint8_t> f = Header(/*READ_REQ*/ 6, 0, i + 1);
    const uint64_t addr = 0x1000;
    const uint32_t key = 0xdead0001u, len = 64;
    std::memcpy(&f[16], &addr, 8);
    std::memcpy(&f[24], &key, 4);
    std::memcpy(&f[28], &len, 4);
    batch.insert(batch.end(), f.begin(), f.end());
  }
  size_t peak = 0;
  int sent = 0;
  for (; sent < 200 && raw->TryWrite(batch); ++sent) {  // up to 819,200 requests, 26 MB
    peak = std::max(peak, mempool::testing::BytesInUse(env_->pool()));
  }
  EXPECT_TRUE(raw->ClosedByServer()) << "after " << sent << " batches of 4096 READs";
  const uint64_t refused = env_->server_transport().counters()->refused_here.Get();
  std::printf("%d batches sent, %llu READs refused, pool peak %zu bytes over %zu\n", sent,
              static_cast<unsigned long long>(refused), peak - std::min(peak, base), base);
  EXPECT_LT(peak - std::min(peak, base), size_t{2} << 20) << "the unread answers grew the shared pool";
  EXPECT_TRUE(Logged("answers to its one-sided ops wait unread"));
  // Back to where it was, give or take the 1 KiB prefetch buffers the
  // transports keep (base may be read before the server's first read took its own).
  EXPECT_LE(mempool::testing::WaitForBytesInUseAtMost(env_->pool(), base + 4096), base + 4096);
  ServerUnaffected();
}

// A peer that ends an open connection with an ERROR of its own (here one
// naming CANCELLED) has this side's waiters see the connection lost:
// UNAVAILABLE with the peer's reason, not the peer's code.
TEST_F(TcpWire, APeersConnectionErrorIsUnavailableHere) {
  auto accepted = coro::Async(env_->server_worker().scheduler(), [&]() { return env_->listener().Accept(); });
  auto raw = Handshaken();
  auto conn = accepted.WaitFor(5s);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  const std::string why = "the peer's own reason";
  std::vector<uint8_t> f = Header(/*ERROR*/ 8, static_cast<uint32_t>(why.size()));
  const uint32_t code = static_cast<uint32_t>(StatusCode::kCancelled);
  std::memcpy(&f[28], &code, 4);
  f.insert(f.end(), why.begin(), why.end());
  raw->Write(f);
  auto m = On(env_->server_worker(), [&]() { return (*conn)->Recv(); });
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kUnavailable) << m.status().ToString();
  EXPECT_NE(m.status().ToString().find(why), std::string::npos) << m.status().ToString();
  On(env_->server_worker(), [&]() { conn->reset(); });
  ServerUnaffected();
}

// Frames whose header announces the ones behind it are read several to a
// readv (header, message and padding into one buffer, a payload into its own
// blocks); a read may end anywhere in them. Here the bytes arrive in pieces
// that end inside the first frame (its header, its padding, or at its end),
// inside the second payload (or message), inside the third header and inside
// the fourth message, or the first frame whole and then inside the second
// one's padding and payload: every message arrives whole and in order, a
// payload in aligned pool blocks, and not a byte copied.
TEST_F(TcpWire, AnnouncedFramesSplitAnywhereArriveWholeAndUncopied) {
  constexpr uint32_t kFrames = 5;
  struct Shape {
    uint32_t msg, payload;
  };
  uint8_t run = 0;  // each run tags its frames anew: a recycled block never holds the expected bytes
  for (Shape shape : {Shape{10, 4096}, Shape{4200, 0}}) {
    const size_t pad = shape.payload > 0 ? 992 : 0;
    const size_t frame = 32 + shape.msg + pad + shape.payload;
    const size_t end = kFrames * frame;
    std::vector<std::vector<size_t>> splits;
    for (size_t first_cut : {size_t{32 + 10 + 500}, size_t{20}, frame}) {
      splits.push_back({first_cut, frame + 32 + shape.msg + pad + shape.payload / 4 - 100, 2 * frame + 12,
                        3 * frame + 32 + 4, end});
    }
    if (shape.payload > 0) {
      // The first frame whole, then a read ending in the second one's padding
      // (its payload was planned when the first header was read), then one
      // ending inside its payload.
      splits.push_back({frame, frame + 32 + shape.msg + pad / 2, frame + 32 + shape.msg + pad + 1000, end});
    }
    for (const std::vector<size_t>& cuts : splits) {
      std::string ends;
      for (size_t c : cuts) ends += " " + std::to_string(c);
      SCOPED_TRACE("message " + std::to_string(shape.msg) + " payload " + std::to_string(shape.payload) +
                   ", pieces ending at" + ends);
      ++run;
      auto raw = PayloadClient(*env_);
      auto accepted = coro::Async(env_->server_worker().scheduler(), [&]() { return env_->listener().Accept(); });
      auto conn = accepted.WaitFor(5s);
      ASSERT_TRUE(conn.ok()) << conn.status().ToString();
      std::vector<uint8_t> stream;
      for (uint32_t i = 0; i < kFrames; ++i) {
        auto f = AnnouncingFrame(shape.msg, shape.payload, kFrames - 1 - i, static_cast<uint8_t>(run * kFrames + i + 1));
        stream.insert(stream.end(), f.begin(), f.end());
      }
      ASSERT_EQ(stream.size(), end);
      const uint64_t copied0 = mempool::CopiedBytesTotal();
      size_t at = 0;
      for (size_t cut : cuts) {
        raw->Write(std::vector<uint8_t>(stream.begin() + at, stream.begin() + cut));
        at = cut;
        std::this_thread::sleep_for(20ms);  // the server reads each piece on its own
      }
      auto got = On(env_->server_worker(), [&]() -> Result<std::vector<IoBuf>> {
        std::vector<IoBuf> v;
        for (uint32_t i = 0; i < kFrames; ++i) {
          HRPC_ASSIGN_OR_RETURN(IoBuf m, (*conn)->Recv());
          v.push_back(std::move(m));
        }
        return v;
      });
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(mempool::CopiedBytesTotal() - copied0, 0u);
      for (uint32_t i = 0; i < kFrames; ++i) {
        SCOPED_TRACE("frame " + std::to_string(i));
        IoBuf& m = (*got)[i];
        ASSERT_EQ(m.size(), shape.msg + shape.payload);
        std::vector<uint8_t> bytes(m.size());
        size_t off = 0;
        for (size_t slice = 0; slice < m.num_slices(); ++slice) {
          const mempool::Buffer& b = m.slice(slice);
          std::memcpy(bytes.data() + off, b.data(), b.size());  // the test's own check, not the data path
          off += b.size();
          if (shape.payload > 0 && off == m.size()) {
            EXPECT_EQ(b.size(), shape.payload) << "the payload is one block";
            EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 4096, 0u);
          }
        }
        const auto tag = static_cast<uint8_t>(run * kFrames + i + 1);
        for (uint32_t j = 0; j < shape.msg; ++j) ASSERT_EQ(bytes[j], tag) << "message byte " << j;
        for (uint32_t j = 0; j < shape.payload; ++j) {
          ASSERT_EQ(bytes[shape.msg + j], static_cast<uint8_t>(tag * 31 + j)) << "payload byte " << j;
        }
      }
      EXPECT_TRUE(On(env_->server_worker(), [&]() { return (*conn)->status(); }).ok());
      On(env_->server_worker(), [&]() { conn->reset(); });
    }
  }
}

// A frame that is not what its predecessor announced (another payload or
// message length, another type) closes that connection only: the bytes the
// receiver had placed for it are never delivered.
TEST_F(TcpWire, FrameNotAsAnnouncedClosesThatConnection) {
  struct Liar {
    std::vector<uint8_t> first, second;
    std::string why;
  };
  const std::string payload_announced = " is not the one its predecessor announced (type 11, 10 + 4096 bytes";
  const std::string message_announced = " is not the one its predecessor announced (type 3, 2000 + 0 bytes";
  std::vector<Liar> liars;
  liars.push_back({AnnouncingFrame(10, 4096, 1, 1), AnnouncingFrame(10, 8192, 0, 2),
                   "(type 11, 10 + 8192 bytes, 0 more announced)" + payload_announced});
  liars.push_back({AnnouncingFrame(10, 4096, 1, 1), AnnouncingFrame(11, 4096, 0, 2),
                   "(type 11, 11 + 4096 bytes, 0 more announced)" + payload_announced});
  liars.push_back({AnnouncingFrame(10, 4096, 1, 1), AnnouncingFrame(10 + 992 + 4096, 0, 0, 2),
                   "(type 3, 5098 + 0 bytes, 0 more announced)" + payload_announced});
  liars.push_back({AnnouncingFrame(2000, 0, 2, 1), AnnouncingFrame(1000, 0, 1, 2),
                   "(type 3, 1000 + 0 bytes, 1 more announced)" + message_announced});
  liars.push_back({AnnouncingFrame(2000, 0, 2, 1), AnnouncingFrame(2000, 0, 0, 2),
                   "(type 3, 2000 + 0 bytes, 0 more announced)" + message_announced});  // 1 more was planned
  for (const Liar& l : liars) {
    SCOPED_TRACE(l.why);
    auto raw = PayloadClient(*env_);
    std::vector<uint8_t> stream = l.first;
    stream.insert(stream.end(), l.second.begin(), l.second.end());
    stream.resize(stream.size() + 8192, 0xA7);  // the rest of what was announced (never delivered)
    raw->Write(stream);
    EXPECT_TRUE(raw->ClosedByServer());
    EXPECT_TRUE(Logged(l.why));
  }
  ServerUnaffected();
}

// The sender announces runs of same-shaped frames; runs broken by
// plain messages and by other shapes arrive whole, in order and uncopied.
TEST_F(TcpWire, RunsOfPayloadsArriveInOrderUncopied) {
  Connection& client = env_->client();
  struct Shape {
    size_t msg, payload;
  };
  std::vector<Shape> shapes;
  for (int i = 0; i < 20; ++i) shapes.push_back({24, 4096});
  shapes.push_back({40, 0});  // a plain message
  for (int i = 0; i < 6; ++i) shapes.push_back({24, 8192});
  for (int i = 0; i < 6; ++i) shapes.push_back({100, 8192});
  for (int i = 0; i < 3; ++i) shapes.push_back({24, 65536});
  for (int i = 0; i < 10; ++i) shapes.push_back({5000, 0});  // messages no prefetch holds
  shapes.push_back({24, 4096});
  std::vector<uint32_t> crcs;
  std::vector<IoBuf> msgs, payloads;
  (void)On(env_->client_worker(), [&]() -> Status {
    for (size_t i = 0; i < shapes.size(); ++i) {
      msgs.push_back(IoBuf(Filled(env_->pool(), shapes[i].msg, static_cast<uint32_t>(i))));
      payloads.push_back(shapes[i].payload > 0 ? IoBuf(Filled(env_->pool(), shapes[i].payload, static_cast<uint32_t>(1000 + i)))
                                               : IoBuf());
      crcs.push_back(msgs.back().Crc32c() ^ payloads.back().Crc32c());
    }
    return Status::Ok();
  });
  const uint64_t copied0 = mempool::CopiedBytesTotal();
  auto got = coro::Async(env_->server_worker().scheduler(), [&]() -> Result<std::vector<IoBuf>> {
    std::vector<IoBuf> v;
    for (size_t i = 0; i < shapes.size(); ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env_->server().Recv());
      v.push_back(std::move(m));
    }
    return v;
  });
  Status sent = On(env_->client_worker(), [&]() -> Status {
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (payloads[i].empty()) {
        HRPC_TRY(client.Send(std::move(msgs[i])));
      } else {
        HRPC_TRY(client.SendWithPayload(std::move(msgs[i]), std::move(payloads[i])));
      }
    }
    return Status::Ok();
  });
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  auto r = got.WaitFor(10s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(mempool::CopiedBytesTotal() - copied0, 0u);
  for (size_t i = 0; i < shapes.size(); ++i) {
    SCOPED_TRACE("message " + std::to_string(i));
    IoBuf& m = (*r)[i];
    ASSERT_EQ(m.size(), shapes[i].msg + shapes[i].payload);
    IoBuf head = m.CutFront(shapes[i].msg);
    EXPECT_EQ(head.Crc32c() ^ m.Crc32c(), crcs[i]);
    for (size_t s = 0; s < m.num_slices(); ++s) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(m.slice(s).data()) % 4096, 0u) << "payload slice " << s;
    }
  }
}

// The tcp kind with TcpOptions changed by `set`.
TransportKind TcpWith(std::function<void(TcpOptions&)> set) {
  TransportKind k = TcpKind();
  k.make = [set](coro::Scheduler& sched, mempool::Pool& pool, const TransportOptions& opt,
                 std::shared_ptr<void>&) -> Result<std::unique_ptr<Transport>> {
    TcpOptions o;
    o.common = opt;
    set(o);
    return CreateTcpTransport(sched, pool, o);
  };
  return k;
}

TransportKind TcpWithPayloadLimit(uint64_t max_payload_bytes) {
  return TcpWith([max_payload_bytes](TcpOptions& o) { o.max_payload_bytes = max_payload_bytes; });
}

TEST(TcpPayload, OverTheAgreedLimitIsRefusedLocally) {
  Env env(TcpWithPayloadLimit(1u << 20));
  env.ConnectPair();
  EXPECT_EQ(env.client().limits().max_payload_bytes, 1u << 20);
  Status s = On(env.client_worker(), [&]() {
    return env.client().SendWithPayload(IoBuf(), IoBuf(Filled(env.pool(), (1u << 20) + 1, 3)));
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(On(env.client_worker(), [&]() { return env.client().status(); }).ok()) << "the connection stays";
  env.DropConnections();
}

// Sides with different max_payload_bytes agree on one limit, in whole pages
// (none when one side's is under a page): a payload one side may send is one
// the other takes.
TEST(TcpPayload, SidesWithDifferentLimitsAgreeOnOne) {
  Env env(TcpKind());  // the server side: the default limit
  env.Listen();
  for (const uint64_t mine : {uint64_t{5000}, uint64_t{1000}, uint64_t{3} << 20}) {
    SCOPED_TRACE("client max_payload_bytes " + std::to_string(mine));
    auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
    std::unique_ptr<Transport> transport;
    std::unique_ptr<Connection> client;
    ASSERT_TRUE(On(env.client_worker(), [&]() -> Status {
                  TcpOptions o;
                  o.common = TestOptions();
                  o.max_payload_bytes = mine;
                  HRPC_ASSIGN_OR_RETURN(transport, CreateTcpTransport(env.client_worker().scheduler(), env.pool(), o));
                  HRPC_ASSIGN_OR_RETURN(client, transport->Connect(env.listener().uri()));
                  return Status::Ok();
                }).ok());
    auto server = accepted.WaitFor(5s);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    const uint64_t agreed = mine / 4096 * 4096;
    EXPECT_EQ(client->limits().max_payload_bytes, agreed);
    EXPECT_EQ((*server)->limits().max_payload_bytes, agreed);
    if (agreed > 0) {
      Status sent = On(env.client_worker(), [&]() {
        return client->SendWithPayload(IoBuf(Filled(env.pool(), 64, 1)), IoBuf(Filled(env.pool(), agreed, 2)));
      });
      ASSERT_TRUE(sent.ok()) << sent.ToString();
      auto got = On(env.server_worker(), [&]() { return (*server)->Recv(); });
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(got->size(), 64 + agreed);
    }
    Status over = On(env.client_worker(), [&]() {
      return client->SendWithPayload(IoBuf(Filled(env.pool(), 64, 1)), IoBuf(Filled(env.pool(), agreed + 500, 2)));
    });
    EXPECT_EQ(over.code(), agreed > 0 ? StatusCode::kInvalidArgument : StatusCode::kUnimplemented) << over.ToString();
    EXPECT_TRUE(On(env.server_worker(), [&]() { return (*server)->status(); }).ok()) << "the server side failed";
    On(env.server_worker(), [&]() { server->reset(); });
    On(env.client_worker(), [&]() {
      client.reset();
      transport.reset();
    });
  }
}

TEST(TcpPayload, DisabledOnEitherSideMeansUnimplemented) {
  Env env(TcpWithPayloadLimit(0));
  env.ConnectPair();
  EXPECT_EQ(env.client().limits().max_payload_bytes, 0u);
  Status s = On(env.client_worker(), [&]() {
    return env.client().SendWithPayload(IoBuf(), IoBuf(Filled(env.pool(), 4096, 3)));
  });
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s.ToString();
  env.DropConnections();
}

// unsent_bytes() counts what the socket has not taken yet (what Close()
// would drop): non-zero while the peer's worker reads nothing, 0 once it has
// read everything, and 0 on a closed connection.
TEST(TcpPayload, UnsentBytesCountWhatTheSocketHasNotTakenYet) {
  Env env(TcpKind());
  env.ConnectPair();
  constexpr size_t kPayload = 8u << 20;
  std::atomic<bool> blocked{false}, release{false};
  env.server_worker().scheduler().Post([&] {
    blocked.store(true);
    while (!release.load()) std::this_thread::sleep_for(1ms);
  });
  for (int i = 0; i < 500 && !blocked.load(); ++i) std::this_thread::sleep_for(2ms);
  ASSERT_TRUE(blocked.load());
  auto sent = On(env.client_worker(), [&]() -> Result<uint64_t> {
    HRPC_TRY(env.client().SendWithPayload(IoBuf(Filled(env.pool(), 4096, 1)), IoBuf(Filled(env.pool(), kPayload, 3))));
    return env.client().unsent_bytes();
  });
  release.store(true);
  ASSERT_TRUE(sent.ok()) << sent.status().ToString();
  EXPECT_GT(*sent, 0u) << "the loopback socket took 8 MiB at once";
  // The frame and what the connection itself sent before (its hello, credits).
  EXPECT_LE(*sent, kPayload + 4096 + 4096);
  auto got = On(env.server_worker(), [&]() { return env.server().Recv(); });
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->size(), 4096 + kPayload);
  // Received: 0 once the peer's acknowledgement is in (on loopback, at once).
  uint64_t left = 1;
  for (int i = 0; i < 500 && left != 0; ++i) {
    left = On(env.client_worker(), [&]() { return env.client().unsent_bytes(); });
    if (left != 0) std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(left, 0u);
  On(env.client_worker(), [&]() { env.client().Close(); });
  EXPECT_EQ(On(env.client_worker(), [&]() { return env.client().unsent_bytes(); }), 0u);
  env.DropConnections();
}

// A Send parked on the send queue's high-water mark goes on once the kernel
// has taken the queue below half of it, not only once the queue is empty (a
// peer that reads slowly would otherwise hold it until its last byte).
TEST(TcpSendQueue, AParkedSendGoesOnOnceTheQueueIsBelowHalfTheHighWater) {
  Env env(TcpWith([](TcpOptions& o) {
    o.send_queue_high_water = 4u << 20;
    o.common.recv_depth = 256;  // credits for every message below: the peer returns none
  }));
  env.Listen();
  auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
  RawClient raw(env.listener().uri(), /*rcvbuf=*/16 << 10);
  raw.Write(HelloFrame(3, /*depth=*/256));
  ASSERT_EQ(raw.Read(64).size(), 64u);
  auto conn = accepted.WaitFor(5s);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  const auto& ctr = *env.server_transport().counters();
  std::atomic<int64_t> unsent_when_resumed{-1};
  // 160 messages of 60 KiB (one per slot): the kernel takes 1-2 MiB ahead on
  // loopback and gives room back in steps of hundreds of KiB, so the queue
  // is still well above 0 when it falls under half the high water.
  constexpr int kMessages = 160;
  auto sender = coro::Async(env.server_worker().scheduler(), [&]() -> Status {
    for (int i = 0; i < kMessages; ++i) {
      const uint64_t stalls = ctr.send_queue_stalls.Get();
      HRPC_TRY((*conn)->Send(IoBuf(Filled(env.pool(), 60u << 10, i))));
      if (ctr.send_queue_stalls.Get() != stalls && unsent_when_resumed.load() < 0) {
        unsent_when_resumed.store(static_cast<int64_t>(TcpStatsOf(**conn)->queued_bytes));
      }
    }
    return Status::Ok();
  });
  // The peer reads 256 KiB every 2 ms.
  size_t got = 0;
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < until) {
    const size_t n = raw.Read(256u << 10, 50ms).size();
    got += n;
    if (n == 0 && sender.IsReady()) break;
    std::this_thread::sleep_for(2ms);
  }
  const Status sent = sender.WaitFor(5s);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  EXPECT_GT(got, size_t{kMessages} * (60u << 10));
  ASSERT_GE(unsent_when_resumed.load(), 0) << "no Send was parked: the test proves nothing";
  EXPECT_GT(unsent_when_resumed.load(), 0) << "the parked Send went on only once the queue was empty";
  EXPECT_LE(unsent_when_resumed.load(), 2 << 20);
  On(env.server_worker(), [&]() { conn->reset(); });
}

// Takes every block the pool has left, on the calling thread (a worker's
// thread cache included), from the largest class down to the smallest.
std::vector<mempool::Buffer> ExhaustPool(mempool::Pool& pool) {
  std::vector<mempool::Buffer> held;
  for (size_t size = pool.options().max_class_bytes; size >= mempool::Pool::kSmallClassMin; size /= 2) {
    for (auto b = pool.Allocate(size); b.ok(); b = pool.Allocate(size)) held.push_back(std::move(*b));
  }
  return held;
}

// A receiver whose pool is empty stops reading (the sender's bytes wait in
// the socket) instead of closing the connection, and delivers every message
// intact once memory is returned.
TEST(TcpPayload, AnExhaustedPoolPausesReadingUntilMemoryIsBack) {
  Env env(TcpKind());
  env.ConnectPair();
  constexpr size_t kPayload = 3u << 20;  // several blocks ahead of the reader
  constexpr int kMsgs = 3;
  std::vector<std::vector<mempool::Buffer>> held(1);
  const uint64_t stalls_before = env.server_transport().counters()->receive_memory_stalls.Get();
  // Messages and payloads first: the pool is shared, and the client's side needs no more memory after.
  std::vector<IoBuf> msgs, payloads;
  auto made = On(env.client_worker(), [&]() -> Status {
    for (int i = 0; i < kMsgs; ++i) {
      msgs.push_back(IoBuf(Filled(env.pool(), 200 + i, 100 + i)));
      payloads.push_back(IoBuf(Filled(env.pool(), kPayload, 200 + i)));
    }
    return Status::Ok();
  });
  ASSERT_TRUE(made.ok());
  std::vector<uint32_t> crcs;
  for (int i = 0; i < kMsgs; ++i) crcs.push_back(msgs[i].Crc32c() ^ payloads[i].Crc32c());
  // Kept here too, so that a payload sent and freed by the client does not
  // hand the server's empty pool a block.
  std::vector<IoBuf> sent_payloads;
  for (auto& p : payloads) sent_payloads.push_back(p.Share());
  held[0] = On(env.server_worker(), [&]() { return ExhaustPool(env.pool()); });
  ASSERT_FALSE(held[0].empty());
  // The payload needs a 4 MiB block: none is left (small ones the transport
  // frees meanwhile can carry the message, never the payload).
  ASSERT_FALSE(On(env.server_worker(), [&]() { return env.pool().Allocate(kPayload).ok(); }))
      << "the pool still gives payload blocks on the server's thread";
  (void)On(env.client_worker(), [&]() -> Status {
    coro::Scheduler::Current()->Spawn([&] {
      for (int i = 0; i < kMsgs; ++i) env.client().SendWithPayload(std::move(msgs[i]), std::move(payloads[i])).IgnoreError();
    });
    return Status::Ok();
  });
  auto got = coro::Async(env.server_worker().scheduler(), [&]() -> Result<std::vector<IoBuf>> {
    std::vector<IoBuf> out;
    for (int i = 0; i < kMsgs; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.server().Recv());
      out.push_back(std::move(m));
    }
    return out;
  });
  // Stalled for a while (well past a few retries), not failed.
  std::this_thread::sleep_for(300ms);
  for (int i = 0; i < 500 && env.server_transport().counters()->receive_memory_stalls.Get() == stalls_before; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GT(env.server_transport().counters()->receive_memory_stalls.Get(), stalls_before);
  EXPECT_FALSE(got.IsReady()) << "a message arrived while the pool was empty";
  EXPECT_TRUE(On(env.server_worker(), [&]() { return env.server().status(); }).ok());
  EXPECT_TRUE(On(env.client_worker(), [&]() { return env.client().status(); }).ok());
  // Memory back (freed on the server's thread, as a handler would): all arrive.
  On(env.server_worker(), [&]() { held.clear(); });
  On(env.client_worker(), [&]() { sent_payloads.clear(); });
  auto r = got.WaitFor(10s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), static_cast<size_t>(kMsgs));
  for (int i = 0; i < kMsgs; ++i) {
    IoBuf& m = (*r)[i];
    ASSERT_EQ(m.size(), 200 + i + kPayload) << "message " << i;
    IoBuf msg = m.CutFront(200 + i);
    EXPECT_EQ(msg.Crc32c() ^ m.Crc32c(), crcs[i]) << "message " << i;
  }
  EXPECT_TRUE(On(env.server_worker(), [&]() { return env.server().status(); }).ok());
  env.DropConnections();
}

// A peer that keeps its connection alive (pings) and asks for READs of
// exposed memory but never reads the answers: once nothing could be sent for
// the dead-peer timeout its connection fails UNAVAILABLE, and a Revoke of
// that memory, which waits for the answers in flight, returns.
TEST(TcpDeadPeer, APeerThatDoesNotReadLosesItsConnection) {
  Env env(TcpKind(), FastDeadPeerOptions());
  env.Listen();
  auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
  RawClient raw(env.listener().uri());
  raw.Write(HelloFrame());
  ASSERT_EQ(raw.Read(64).size(), 64u);
  auto conn = accepted.WaitFor(5s);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  constexpr uint32_t kLen = 4u << 20;
  mempool::Buffer mem = Filled(env.pool(), kLen, 9);
  auto desc = On(env.server_worker(), [&]() { return (*conn)->Expose(mem, Access::kRead); });
  ASSERT_TRUE(desc.ok()) << desc.status().ToString();
  for (uint64_t op = 1; op <= 16; ++op) {  // 64 MiB of answers: far more than the sockets hold
    std::vector<uint8_t> f = Header(/*READ_REQ*/ 6, 0, op);
    std::memcpy(&f[16], &desc->addr, 8);
    std::memcpy(&f[24], &desc->key, 4);
    std::memcpy(&f[28], &kLen, 4);
    raw.Write(f);
  }
  const auto t0 = std::chrono::steady_clock::now();
  Status st;
  while (std::chrono::steady_clock::now() - t0 < 10s) {
    raw.Write(Header(/*PING*/ 10, 0));  // alive: the receive side's dead-peer check does not fire
    std::this_thread::sleep_for(100ms);
    st = On(env.server_worker(), [&]() { return (*conn)->status(); });
    if (!st.ok()) break;
  }
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  auto revoked = coro::Async(env.server_worker().scheduler(), [&]() { return (*conn)->Revoke(*desc); });
  const Status r = revoked.WaitFor(2s);  // DEADLINE_EXCEEDED: still waiting
  EXPECT_NE(r.code(), StatusCode::kDeadlineExceeded) << "Revoke still waits for the answers: " << r.ToString();
  On(env.server_worker(), [&]() { conn->reset(); });
}

// The wait is bounded: memory that never comes back (here held by the test;
// it may be the connection's own half-received payload) fails the connection
// with RESOURCE_EXHAUSTED after the dead-peer timeout, not never.
TEST(TcpPayload, AMemoryWaitLongerThanTheDeadPeerTimeoutFailsTheConnection) {
  Env env(TcpKind(), FastDeadPeerOptions());
  env.ConnectPair();
  IoBuf payload(Filled(env.pool(), 3u << 20, 5));
  IoBuf kept = payload.Share();
  auto held = On(env.server_worker(), [&]() { return ExhaustPool(env.pool()); });
  const auto t0 = std::chrono::steady_clock::now();
  (void)On(env.client_worker(), [&]() { return env.client().SendWithPayload(IoBuf(), std::move(payload)); });
  auto m = On(env.server_worker(), [&]() { return env.server().Recv(); });
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(m.status().code(), StatusCode::kResourceExhausted) << m.status().ToString();
  EXPECT_GE(waited, 900ms) << "failed before the dead-peer timeout (1 s)";
  EXPECT_LT(waited, 10s);
  On(env.server_worker(), [&]() { held.clear(); });
  On(env.client_worker(), [&]() { kept = IoBuf(); });
  env.DropConnections();
}

// A wait that ends with bytes read is over: memory that comes back a little
// at a time keeps a paused receiver going for longer than the dead-peer
// timeout, which bounds one wait without progress, not a slow stretch.
TEST(TcpPayload, AReceiverThatKeepsGettingMemoryBackOutlastsTheDeadPeerTimeout) {
  Env env(TcpKind(), FastDeadPeerOptions());  // dead-peer timeout 1 s
  env.ConnectPair();
  constexpr size_t kMsg = 30000;  // one 32 KiB block each
  constexpr int kMsgs = 12;
  constexpr auto kTrickle = 250ms;  // one block back this often: 3 s in all
  std::vector<IoBuf> msgs, kept;
  std::vector<uint32_t> crcs;
  On(env.client_worker(), [&]() {
    for (int i = 0; i < kMsgs; ++i) {
      msgs.push_back(IoBuf(Filled(env.pool(), kMsg, static_cast<uint8_t>(i))));
      crcs.push_back(msgs.back().Crc32c());
      kept.push_back(msgs.back().Share());  // a sent message's block does not return to the pool
    }
  });
  // Every 32 KiB block the pool can make (the arena's free space is carved
  // into them), then every larger block.
  auto held = On(env.server_worker(), [&]() {
    std::vector<mempool::Buffer> out;
    for (size_t size = 32 * 1024; size <= env.pool().options().max_class_bytes; size *= 2) {
      for (auto b = env.pool().Allocate(size); b.ok(); b = env.pool().Allocate(size)) out.push_back(std::move(*b));
    }
    std::reverse(out.begin(), out.end());  // 32 KiB blocks last
    return out;
  });
  ASSERT_GE(held.size(), static_cast<size_t>(kMsgs));
  ASSERT_EQ(held.back().size(), 32u * 1024);
  const uint64_t stalls_before = env.server_transport().counters()->receive_memory_stalls.Get();
  (void)On(env.client_worker(), [&]() -> Status {
    coro::Scheduler::Current()->Spawn([&] {
      for (int i = 0; i < kMsgs; ++i) env.client().Send(std::move(msgs[i])).IgnoreError();
    });
    return Status::Ok();
  });
  std::atomic<int> received{0};
  auto got = coro::Async(env.server_worker().scheduler(), [&]() -> Result<std::vector<IoBuf>> {
    std::vector<IoBuf> out;  // kept: each message holds its block
    for (int i = 0; i < kMsgs; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, env.server().Recv());
      out.push_back(std::move(m));
      received.fetch_add(1);
    }
    return out;
  });
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kMsgs && !got.IsReady(); ++i) {
    std::this_thread::sleep_for(kTrickle);
    On(env.server_worker(), [&]() { held.pop_back(); });  // one 32 KiB block back
  }
  auto r = got.WaitFor(10s);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(r.ok()) << r.status().ToString() << " after " << received.load() << " of " << kMsgs
                      << " messages, "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  ASSERT_EQ(r->size(), static_cast<size_t>(kMsgs));
  for (int i = 0; i < kMsgs; ++i) EXPECT_EQ((*r)[i].Crc32c(), crcs[i]) << "message " << i;
  EXPECT_GT(took, 2000ms) << "the messages did not wait for memory";
  EXPECT_GT(env.server_transport().counters()->receive_memory_stalls.Get(), stalls_before + kMsgs / 2);
  EXPECT_TRUE(On(env.client_worker(), [&]() { return env.client().status(); }).ok());
  r = Result<std::vector<IoBuf>>(std::vector<IoBuf>());
  On(env.server_worker(), [&]() { held.clear(); });
  On(env.client_worker(), [&]() { kept.clear(); });
  env.DropConnections();
}

TransportKind TcpWithCongestion(std::string loopback) {
  return TcpWith([loopback](TcpOptions& o) { o.loopback_congestion_control = loopback; });
}

std::string ReadLine(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

// TCP_CONGESTION of this process's sockets connected to or from `port`.
std::vector<std::string> CongestionOfSocketsOn(uint16_t port) {
  std::vector<std::string> out;
  for (int fd = 0; fd < 4096; ++fd) {
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) continue;
    sockaddr_in local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 || local.sin_family != AF_INET) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    if (ntohs(local.sin_port) != port && ntohs(peer.sin_port) != port) continue;
    char name[32] = {};
    socklen_t nl = sizeof name;
    if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &nl) != 0) continue;
    out.emplace_back(name);
  }
  return out;
}

uint16_t PortOf(const std::string& uri) {
  auto u = ParseUri(uri);
  EXPECT_TRUE(u.ok());
  return u.ok() ? u->port : 0;
}

// A client transport of its own (options `to`) on the env's client worker,
// connected to the env's listener; `server` is the accepted side.
struct OwnTcpClient {
  Env& env;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<Connection> client, server;
  OwnTcpClient(Env& e, const TcpOptions& to) : env(e) {
    auto t = On(env.client_worker(), [&]() { return CreateTcpTransport(env.client_worker().scheduler(), env.pool(), to); });
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    if (!t.ok()) return;
    transport = std::move(*t);
    auto accepted = coro::Async(env.server_worker().scheduler(), [&]() { return env.listener().Accept(); });
    const std::string uri = env.listener().uri();
    auto c = On(env.client_worker(), [&]() { return transport->Connect(uri); });
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (c.ok()) client = std::move(*c);
    auto s = accepted.WaitFor(5s);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (s.ok()) server = std::move(*s);
  }
  bool ok() const { return client && server; }
  ~OwnTcpClient() {
    On(env.server_worker(), [&]() { server.reset(); });
    On(env.client_worker(), [&]() {
      client.reset();
      transport.reset();
    });
  }
};

// A connection that sent in the same coroutine batch that destroyed it and
// its transport (no poll in between to flush it): the transport still lets go
// of the connection, so nothing it held (a received message nobody took) stays
// out of the pool and the transport's state is freed.
TEST(TcpTeardown, TransportDestroyedRightAfterASendGivesEverythingBack) {
  Env env(TcpKind());
  env.Listen();
  TcpOptions to;
  to.common = TestOptions();
  OwnTcpClient own(env, to);
  ASSERT_TRUE(own.ok());
  std::weak_ptr<TransportCounters> counters = own.transport->counters();
  const size_t base = mempool::testing::WaitForBytesInUseAtMost(env.pool(), 0, 200ms);
  // A message the client never takes: its blocks stay with the connection.
  ASSERT_TRUE(On(env.server_worker(), [&]() { return own.server->Send(IoBuf(Filled(env.pool(), 3000, 9))); }).ok());
  for (int i = 0; i < 400 && counters.lock()->messages_received.Get() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(counters.lock()->messages_received.Get(), 1u);
  ASSERT_GT(mempool::testing::BytesInUse(env.pool()), base);
  On(env.client_worker(), [&]() {
    EXPECT_TRUE(own.client->Send(IoBuf(Filled(env.pool(), 10, 1))).ok());  // queued for the next flush
    own.client.reset();
    own.transport.reset();
  });
  On(env.server_worker(), [&]() { own.server.reset(); });
  const size_t after = mempool::testing::WaitForBytesInUseAtMost(env.pool(), base, 5s);
  EXPECT_LE(after, base) << "the message the client never took stayed out of the pool";
  EXPECT_TRUE(counters.expired()) << "the destroyed transport's state is still alive";
}

// Each side pings for the other's dead-peer timeout: a peer whose timeout is
// far shorter than ours (3 s against our keepalive of 10 s and timeout of
// 30 s) keeps an idle connection to us, both ways. Pinging at our own pace,
// this side's 3 s timeout would run out within the 8 s; at its peer's (every
// second), only a stall of two seconds could.
TEST(TcpKeepalive, PeerWithAShorterDeadPeerTimeoutKeepsAnIdleConnection) {
  TransportOptions fast = TestOptions();
  fast.dead_peer_timeout = 3000ms;
  Env env(TcpKind(), fast);  // this side's transports: dead-peer 3 s
  env.Listen();
  TcpOptions to;
  to.common.keepalive_interval = 10000ms;
  to.common.dead_peer_timeout = 30000ms;
  OwnTcpClient own(env, to);
  ASSERT_TRUE(own.ok());
  std::this_thread::sleep_for(8000ms);  // idle: only pings
  const Status server_side = On(env.server_worker(), [&]() { return own.server->status(); });
  const Status client_side = On(env.client_worker(), [&]() { return own.client->status(); });
  EXPECT_TRUE(server_side.ok()) << server_side.ToString();
  EXPECT_TRUE(client_side.ok()) << client_side.ToString();
}

TEST(TcpCongestion, ConnectionsOnThisHostUseTheLoopbackChoice) {
  const std::string system = ReadLine("/proc/sys/net/ipv4/tcp_congestion_control");
  // reno is built into every kernel; when it is the default, cubic is the
  // choice that shows the setting took effect.
  const std::string want = system == "reno" ? "cubic" : "reno";
  Env env(TcpWithCongestion(want));
  env.ConnectPair();
  const auto seen = CongestionOfSocketsOn(PortOf(env.listener().uri()));
  ASSERT_EQ(seen.size(), 2u) << "the accepted and the connected socket";
  EXPECT_EQ(seen[0], want);
  EXPECT_EQ(seen[1], want);
  env.DropConnections();
}

TEST(TcpCongestion, EmptyOrUnknownKeepsTheSystemDefault) {
  const std::string system = ReadLine("/proc/sys/net/ipv4/tcp_congestion_control");
  ASSERT_FALSE(system.empty());
  for (const char* choice : {"", "no-such-algorithm"}) {
    SCOPED_TRACE(choice);
    Env env(TcpWithCongestion(choice));
    env.ConnectPair();
    const auto seen = CongestionOfSocketsOn(PortOf(env.listener().uri()));
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0], system);
    EXPECT_EQ(seen[1], system);
    Status s = On(env.client_worker(), [&]() { return env.client().Send(IoBuf(Filled(env.pool(), 64, 1))); });
    EXPECT_TRUE(s.ok()) << s.ToString();
    auto got = On(env.server_worker(), [&]() { return env.server().Recv(); });
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->size(), 64u);
    env.DropConnections();
  }
}

TEST(TcpCongestion, DefaultOnLoopbackIsCubicWhereTheKernelHasIt) {
  const std::string available = ReadLine("/proc/sys/net/ipv4/tcp_available_congestion_control");
  if (available.find("cubic") == std::string::npos) GTEST_SKIP() << "kernel without cubic: " << available;
  const std::string allowed = ReadLine("/proc/sys/net/ipv4/tcp_allowed_congestion_control");
  if (geteuid() != 0 && allowed.find("cubic") == std::string::npos) {
    GTEST_SKIP() << "cubic not allowed without CAP_NET_ADMIN: " << allowed;
  }
  Env env(TcpKind());
  env.ConnectPair();
  const auto seen = CongestionOfSocketsOn(PortOf(env.listener().uri()));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], "cubic");
  EXPECT_EQ(seen[1], "cubic");
  env.DropConnections();
}

}  // namespace
}  // namespace hrpc::transport::testing
