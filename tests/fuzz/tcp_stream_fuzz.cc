// The TCP transport's receive path (frame parser, handshake, credits, one-sided
// op checks) fed by a real socket: a listening TcpTransport on loopback, whose
// accepted connections expose a buffer and take every message, and for each
// input a fresh client socket that writes the bytes and half-closes. The first
// input byte is a mode: bit 0 puts a valid HELLO before the bytes (so that they
// reach the frame parser of an open connection), bit 1 asks for in-stream
// payloads in that HELLO, bit 2 (with bit 0) replaces the placeholders
// "AAAAAAAA" and "KKKK" in the bytes by the address and key of the buffer the
// server exposed and announced (so WRITE and READ_REQ frames reach the served
// paths and their bounds checks, not only the key check), bit 3 asks for
// checked messages in that HELLO (so MESSAGE frames reach the sequence and
// CRC32C checks). The transport must close the connection (a bad
// frame, or the client's end of stream) without a sanitizer report and within
// kCloseWithin; the next input gets a new connection from the same listener.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <spdlog/spdlog.h>

#include "fuzz_util.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/tcp.h"

using namespace hrpc;
using namespace std::chrono_literals;

namespace {

constexpr auto kCloseWithin = 20s;
constexpr size_t kExposed = 64 * 1024;
// Placeholders an input may hold (mode bit 2): replaced by the address and the
// key of the buffer the server exposed on this connection.
constexpr uint64_t kAddrMark = 0x4141414141414141ull;  // "AAAAAAAA"
constexpr uint32_t kKeyMark = 0x4B4B4B4Bu;             // "KKKK"

struct Server {
  std::unique_ptr<mempool::Pool> pool;
  std::unique_ptr<coro::Worker> worker;
  std::unique_ptr<transport::Transport> transport;
  std::unique_ptr<transport::Listener> listener;
  uint16_t port = 0;
};

void Serve(Server& s) {
  for (;;) {
    auto c = s.listener->Accept();
    if (!c.ok()) return;
    std::shared_ptr<transport::Connection> conn = std::move(*c);
    s.worker->scheduler().Spawn([&s, conn] {
      // Expose a buffer and tell the client where it is (addr, len, key: the
      // descriptor an RPC layer would send), so that its one-sided ops can
      // name memory that exists.
      auto buf = s.pool->Allocate(kExposed);
      if (!buf.ok()) return;
      auto d = conn->Expose(*buf, transport::Access::kReadWrite);
      auto msg = s.pool->Allocate(sizeof(transport::RemoteDescriptor));
      if (d.ok() && msg.ok()) {
        std::memcpy(msg->data(), &*d, sizeof *d);
        (void)conn->Send(mempool::IoBuf(std::move(*msg)));
      }
      while (conn->Recv().ok()) {
      }
    });
  }
}

Server* Start() {
  spdlog::set_level(spdlog::level::off);  // every input is a protocol violation worth a log line
  auto* s = new Server;  // lives until exit, reachable (not a leak)
  s->pool = MakeFuzzPool();
  s->worker = std::move(coro::Worker::Start({.sched = {.name = "fuzz-tcp"}})).value();
  auto ok = coro::Async(s->worker->scheduler(), [&]() -> Status {
              transport::TcpOptions o;
              o.common.recv_depth = 16;
              o.common.keepalive_interval = 100ms;
              o.common.dead_peer_timeout = 5000ms;
              o.common.handshake_timeout = 5000ms;
              o.max_payload_bytes = 1u << 20;
              HRPC_ASSIGN_OR_RETURN(s->transport, transport::CreateTcpTransport(s->worker->scheduler(), *s->pool, o));
              HRPC_ASSIGN_OR_RETURN(s->listener, s->transport->Listen("tcp://127.0.0.1:0"));
              HRPC_ASSIGN_OR_RETURN(auto u, transport::ParseUri(s->listener->uri()));
              s->port = u.port;
              s->worker->scheduler().Spawn([s] { Serve(*s); });
              return Status::Ok();
            }).Get();
  HRPC_FUZZ_CHECK(ok.ok(), "%s", ok.ToString().c_str());
  return s;
}

std::vector<uint8_t> Hello(bool payloads, bool checked) {
  std::vector<uint8_t> f(64, 0);
  f[0] = 0xA7;
  f[1] = 1;  // HELLO
  const uint32_t len = 32;
  std::memcpy(&f[4], &len, 4);
  const uint64_t magic = 0x3150435450524831ull;
  const uint16_t version = 3, flags = (payloads ? 1 : 0) | (checked ? 2 : 0);
  const uint32_t max_msg = 65536, depth = 16, keepalive = 1000, dead = 5000, pages = 64;
  std::memcpy(&f[32], &magic, 8);
  std::memcpy(&f[40], &version, 2);
  std::memcpy(&f[42], &flags, 2);
  std::memcpy(&f[44], &max_msg, 4);
  std::memcpy(&f[48], &depth, 4);
  std::memcpy(&f[52], &keepalive, 4);
  std::memcpy(&f[56], &dead, 4);
  std::memcpy(&f[60], &pages, 4);
  return f;
}

// libFuzzer's timer signals interrupt blocking calls: every call here
// retries on EINTR (a connect() that was interrupted goes on in the kernel:
// wait for it and read its outcome).
bool Connect(int fd, const sockaddr_in& a) {
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) return true;
  if (errno != EINTR) return false;
  pollfd p{fd, POLLOUT, 0};
  while (poll(&p, 1, 5000) < 0 && errno == EINTR) {
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return false;
  errno = err;
  return err == 0;
}

bool SendAll(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads exactly n bytes (false at EOF, error or after 5 s).
bool ReadFull(int fd, uint8_t* out, size_t n) {
  size_t got = 0;
  while (got < n) {
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, 5000);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t r = recv(fd, out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Server* server = Start();
  if (size == 0) return 0;
  std::vector<uint8_t> bytes;
  if (data[0] & 1) bytes = Hello((data[0] & 2) != 0, (data[0] & 8) != 0);
  bytes.insert(bytes.end(), data + 1, data + size);

  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  HRPC_FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(server->port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  HRPC_FUZZ_CHECK(Connect(fd, a), "connect: %s", strerror(errno));
  if ((data[0] & 5) == 5) {
    // Handshake first, read HELLO_ACK and the descriptor message, then put the
    // exposed address and key where the input has the placeholders.
    const size_t hello = 64;
    HRPC_FUZZ_CHECK(SendAll(fd, bytes.data(), hello), "send hello: %s", strerror(errno));
    bytes.erase(bytes.begin(), bytes.begin() + hello);
    uint8_t in[64 + 32 + sizeof(transport::RemoteDescriptor)];
    if (ReadFull(fd, in, sizeof in) && in[64 + 1] == 3) {
      transport::RemoteDescriptor d;
      std::memcpy(&d, in + 96, sizeof d);
      for (size_t i = 0; i + 8 <= bytes.size(); ++i) {
        uint64_t v;
        std::memcpy(&v, &bytes[i], 8);
        if (v == kAddrMark) std::memcpy(&bytes[i], &d.addr, 8);
      }
      for (size_t i = 0; i + 4 <= bytes.size(); ++i) {
        uint32_t v;
        std::memcpy(&v, &bytes[i], 4);
        if (v == kKeyMark) std::memcpy(&bytes[i], &d.key, 4);
      }
    }
  }
  // Write while reading what the server answers (it may fill our receive
  // buffer), until everything is written or the server has closed.
  size_t off = 0;
  bool eof = false;
  const auto until = std::chrono::steady_clock::now() + kCloseWithin;
  bool shut = false;
  while (!eof) {
    if (off == bytes.size() && !shut) {
      shutdown(fd, SHUT_WR);
      shut = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (shut ? 0 : POLLOUT)), 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    HRPC_FUZZ_CHECK(left.count() > 0, "the server did not close the connection within %llds",
                    static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kCloseWithin).count()));
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      uint8_t sink[4096];
      const ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
      if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) eof = true;
    }
    if (!shut && (p.revents & POLLOUT)) {
      const ssize_t w = send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        off += static_cast<size_t>(w);
      } else if (w < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
        off = bytes.size();  // the server reset the connection: nothing more to write
      }
    }
  }
  close(fd);
  return 0;
}
