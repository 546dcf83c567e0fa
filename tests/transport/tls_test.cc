// TLS on the TCP transport over loopback: certificates made at test time
// (test_pki.h), echo of 64 B and 1 MiB, a 64 MiB one-way payload and
// one-sided ops with CRC checks, mutual TLS, and every handshake failure
// closing only its own connection with a clear Status.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/transport/loopback.h"
#include "hrpc/transport/tcp.h"
#include "test_pki.h"
#include "transport_harness.h"

namespace hrpc::transport::testing {
namespace {

using namespace std::chrono_literals;
using hrpc::testing::CertFiles;
using hrpc::testing::TestPki;
using mempool::IoBuf;

// `b` without its first `skip` bytes (slices shared, nothing copied).
IoBuf Tail(const IoBuf& b, size_t skip) {
  IoBuf out;
  for (size_t i = 0; i < b.num_slices(); ++i) {
    const mempool::Buffer& s = b.slice(i);
    if (skip >= s.size()) {
      skip -= s.size();
      continue;
    }
    out.Append(s.Slice(skip, s.size() - skip));
    skip = 0;
  }
  return out;
}

// A message head in a pool buffer (control bytes: not through CountedCopy).
Result<IoBuf> Head(mempool::Pool& pool, std::string_view text) {
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(text.size()));
  std::memcpy(b.data(), text.data(), text.size());
  return IoBuf(std::move(b));
}

uint32_t Crc(const IoBuf& b) {
  uint32_t crc = 0;
  for (size_t i = 0; i < b.num_slices(); ++i) crc = Crc32c(b.slice(i).data(), b.slice(i).size(), crc);
  return crc;
}

// A CA with server and client certificates, another CA, and certificates
// that must be refused, in a temp dir removed at the end.
struct TempDir {
  std::string path;
  explicit TempDir(std::string p) : path(std::move(p)) {}
  TempDir(TempDir&& o) noexcept : path(std::exchange(o.path, {})) {}
  ~TempDir() {
    if (!path.empty()) std::filesystem::remove_all(path);
  }
};

struct Pki {
  TempDir dir;
  TestPki ca, other_ca;
  CertFiles server, client, expired_server, expired_client, other_server, other_client;

  static Pki Make() {
    char tmpl[] = "/tmp/hrpc-tls-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    auto ca = TestPki::Create(dir, "hrpc test CA");
    auto other = TestPki::Create(dir, "another CA", "other-");
    EXPECT_TRUE(ca.ok() && other.ok());
    Pki p{TempDir(dir), std::move(*ca), std::move(*other), {}, {}, {}, {}, {}, {}};
    const std::vector<std::string> sans = {"DNS:localhost", "IP:127.0.0.1"};
    p.server = p.ca.Issue("server", sans).value();
    p.client = p.ca.Issue("client", {"DNS:client.test"}).value();
    p.expired_server = p.ca.Issue("expired-server", sans, -7200, -3600).value();
    p.expired_client = p.ca.Issue("expired-client", {"DNS:client.test"}, -7200, -3600).value();
    p.other_server = p.other_ca.Issue("server", sans).value();
    p.other_client = p.other_ca.Issue("client", {"DNS:client.test"}).value();
    return p;
  }
};

std::shared_ptr<const TlsContext> Ctx(TlsOptions o) {
  auto c = CreateTlsContext(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : nullptr;
}

class TlsTcp : public ::testing::Test {
 protected:
  void SetUp() override { env_ = std::make_unique<Env>(TcpKind()); }
  void TearDown() override {
    if (client_) On(env_->client_worker(), [&] { client_.reset(); });
    if (server_) On(env_->server_worker(), [&] { server_.reset(); });
    if (listener_) On(env_->server_worker(), [&] { listener_.reset(); });
    env_.reset();
  }

  std::shared_ptr<const TlsContext> ServerCtx(const CertFiles& f, bool mutual = false) {
    return Ctx({.cert_file = f.cert, .key_file = f.key, .ca_file = pki_.ca.ca_file(), .require_client_cert = mutual});
  }
  std::shared_ptr<const TlsContext> ClientCtx(const std::string& ca, const CertFiles* cert = nullptr,
                                              std::string server_name = "") {
    TlsOptions o{.ca_file = ca, .server_name = std::move(server_name)};
    if (cert != nullptr) {
      o.cert_file = cert->cert;
      o.key_file = cert->key;
    }
    return Ctx(o);
  }

  void ListenTls(std::shared_ptr<const TlsContext> ctx) {
    auto l = On(env_->server_worker(), [&] { return env_->server_transport().ListenTls("tcp://127.0.0.1:0", ctx); });
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    listener_ = std::move(*l);
  }
  Result<std::unique_ptr<Connection>> ConnectTls(std::shared_ptr<const TlsContext> ctx, std::string uri = "") {
    if (uri.empty()) uri = listener_->uri();
    return On(env_->client_worker(), [&] { return env_->client_transport().ConnectTls(uri, ctx); });
  }
  // Connects with `ctx` and accepts: both ends open.
  void Pair(std::shared_ptr<const TlsContext> ctx) {
    auto accepted = coro::Async(env_->server_worker().scheduler(), [&] { return listener_->Accept(); });
    auto c = ConnectTls(std::move(ctx));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    client_ = std::move(*c);
    auto s = accepted.WaitFor(10s);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
  }
  // A client that must be refused: its status, after which a good client
  // still gets through (the listener kept serving).
  Status Refused(std::shared_ptr<const TlsContext> ctx, std::shared_ptr<const TlsContext> good) {
    const uint64_t failures = env_->server_transport().counters()->handshake_failures.Get();
    auto c = ConnectTls(std::move(ctx));
    EXPECT_FALSE(c.ok());
    Status s = c.ok() ? Status::Ok() : c.status();
    if (c.ok()) On(env_->client_worker(), [&] { c->reset(); });
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (env_->server_transport().counters()->handshake_failures.Get() == failures &&
           std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_GT(env_->server_transport().counters()->handshake_failures.Get(), failures);
    Pair(std::move(good));
    EXPECT_TRUE(server_ && client_);
    Echo(64, 1);
    On(env_->client_worker(), [&] { client_.reset(); });
    On(env_->server_worker(), [&] { server_.reset(); });
    return s;
  }

  // Sends n bytes from the client (as an in-stream payload when with_payload),
  // the server sends them back the same way; CRCs compared on both ends.
  void Echo(size_t n, uint32_t seed, bool with_payload = false) {
    mempool::Pool& pool = env_->pool();
    IoBuf sent(Filled(pool, n, seed));
    const uint32_t crc = Crc(sent);
    const size_t head_bytes = with_payload ? 2 : 0;
    auto served = coro::Async(env_->server_worker().scheduler(), [&]() -> Status {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, server_->Recv());
      IoBuf body = Tail(m, head_bytes);
      if (body.size() != n || Crc(body) != crc) return DataLossError("server got different bytes");
      if (!with_payload) return server_->Send(std::move(body));
      HRPC_ASSIGN_OR_RETURN(IoBuf head, Head(pool, "hd"));
      return server_->SendWithPayload(std::move(head), std::move(body));
    });
    IoBuf back = On(env_->client_worker(), [&]() -> Result<IoBuf> {
      if (with_payload) {
        HRPC_ASSIGN_OR_RETURN(IoBuf head, Head(pool, "hd"));
        HRPC_TRY(client_->SendWithPayload(std::move(head), sent.Share()));
      } else {
        HRPC_TRY(client_->Send(sent.Share()));
      }
      return client_->Recv();
    }).value();
    auto done = served.WaitFor(30s);
    ASSERT_TRUE(done.ok()) << done.ToString();
    ASSERT_EQ(back.size(), n + head_bytes);
    EXPECT_EQ(Crc(Tail(back, head_bytes)), crc);
  }

  Pki pki_ = Pki::Make();
  std::unique_ptr<Env> env_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<Connection> server_, client_;
};

TEST_F(TlsTcp, EchoesMessagesPayloadsAndOneSidedOpsIntactWithoutCopies) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  spdlog::default_logger()->sinks().push_back(sink);
  ListenTls(ServerCtx(pki_.server));
  Pair(ClientCtx(pki_.ca.ca_file()));
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
  bool tls13 = false;  // "hrpc tcp: TLSv1.3 TLS_AES_256_GCM_SHA384 with tcp://..."
  for (const auto& line : sink->last_formatted()) tls13 |= line.find("hrpc tcp: TLSv1.3 ") != std::string::npos;
  EXPECT_TRUE(tls13) << "TLS 1.3 negotiated";
  const uint64_t copied = mempool::CopiedBytesTotal();
  Echo(64, 1);
  Echo(1 << 20, 2, /*with_payload=*/true);
  Echo(60000, 3);  // a control message of several TLS records
  // 64 MiB one way, as an in-stream payload read into pool slabs.
  {
    mempool::Pool& pool = env_->pool();
    IoBuf big(Filled(pool, 64u << 20, 4));
    const uint32_t crc = Crc(big);
    auto got = coro::Async(env_->server_worker().scheduler(), [&] { return server_->Recv(); });
    ASSERT_TRUE(On(env_->client_worker(), [&]() -> Status {
                  HRPC_ASSIGN_OR_RETURN(IoBuf head, Head(pool, "x"));
                  return client_->SendWithPayload(std::move(head), std::move(big));
                }).ok());
    auto m = got.WaitFor(60s);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->size(), (64u << 20) + 1);
    EXPECT_EQ(Crc(Tail(*m, 1)), crc);
    On(env_->server_worker(), [&] { *m = IoBuf(); });
  }
  // One-sided WRITE and READ of 1 MiB through an exposed buffer.
  {
    mempool::Pool& pool = env_->pool();
    mempool::Buffer target = pool.Allocate(1 << 20).value();
    std::memset(target.data(), 0, target.size());
    auto desc = On(env_->server_worker(), [&] { return server_->Expose(target, Access::kReadWrite); });
    ASSERT_TRUE(desc.ok());
    IoBuf src(Filled(pool, 1 << 20, 5));
    const uint32_t crc = Crc(src);
    ASSERT_TRUE(On(env_->client_worker(), [&] { return client_->Write(src, *desc); }).ok());
    EXPECT_EQ(Crc32c(target.data(), target.size()), crc);
    IoBuf dst(pool.Allocate(1 << 20).value());
    ASSERT_TRUE(On(env_->client_worker(), [&] { return client_->Read(*desc, dst); }).ok());
    EXPECT_EQ(Crc(dst), crc);
  }
  EXPECT_EQ(mempool::CopiedBytesTotal(), copied) << "payload bytes copied by the CPU";
}

TEST_F(TlsTcp, MutualTlsAcceptsAClientCertificateFromTheCaAndRefusesOthers) {
  ListenTls(ServerCtx(pki_.server, /*mutual=*/true));
  auto good = ClientCtx(pki_.ca.ca_file(), &pki_.client);
  Pair(good);
  Echo(64, 1);
  Echo(1 << 20, 2, /*with_payload=*/true);
  On(env_->client_worker(), [&] { client_.reset(); });
  On(env_->server_worker(), [&] { server_.reset(); });

  Status none = Refused(ClientCtx(pki_.ca.ca_file()), good);
  EXPECT_EQ(none.code(), StatusCode::kUnauthenticated) << none.ToString();
  EXPECT_NE(none.message().find("certificate required"), std::string::npos) << none.ToString();

  Status unknown = Refused(ClientCtx(pki_.ca.ca_file(), &pki_.other_client), good);
  EXPECT_EQ(unknown.code(), StatusCode::kUnauthenticated) << unknown.ToString();
  EXPECT_NE(unknown.message().find("unknown ca"), std::string::npos) << unknown.ToString();

  Status expired = Refused(ClientCtx(pki_.ca.ca_file(), &pki_.expired_client), good);
  EXPECT_EQ(expired.code(), StatusCode::kUnauthenticated) << expired.ToString();
  EXPECT_NE(expired.message().find("expired"), std::string::npos) << expired.ToString();
}

TEST_F(TlsTcp, ClientRefusesAServerItCannotVerify) {
  auto good = ClientCtx(pki_.ca.ca_file());
  // A certificate from a CA the client does not trust.
  ListenTls(ServerCtx(pki_.other_server));
  Status s = Refused(good, ClientCtx(pki_.other_ca.ca_file()));
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("unable to get local issuer certificate"), std::string::npos) << s.ToString();
  On(env_->server_worker(), [&] { listener_.reset(); });

  // An expired certificate.
  ListenTls(ServerCtx(pki_.expired_server));
  s = On(env_->client_worker(), [&] { return env_->client_transport().ConnectTls(listener_->uri(), good); }).status();
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("certificate has expired"), std::string::npos) << s.ToString();
  On(env_->server_worker(), [&] { listener_.reset(); });

  // A certificate for another name.
  ListenTls(ServerCtx(pki_.server));
  s = Refused(ClientCtx(pki_.ca.ca_file(), nullptr, "storage.example"), good);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("hostname mismatch"), std::string::npos) << s.ToString();
  // The name it does carry.
  Pair(ClientCtx(pki_.ca.ca_file(), nullptr, "localhost"));
  Echo(64, 7);
}

TEST_F(TlsTcp, PlainAndTlsPeersRefuseEachOtherAndTheListenerKeepsServing) {
  auto good = ClientCtx(pki_.ca.ca_file());
  ListenTls(ServerCtx(pki_.server));
  const auto failures = [&] { return env_->server_transport().counters()->handshake_failures.Get(); };

  // A plain client to the TLS listener.
  uint64_t before = failures();
  const std::string uri = listener_->uri();
  auto plain = On(env_->client_worker(), [&] { return env_->client_transport().Connect(uri); });
  ASSERT_FALSE(plain.ok());
  EXPECT_EQ(plain.status().code(), StatusCode::kUnavailable) << plain.status().ToString();
  for (int i = 0; i < 500 && failures() == before; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_GT(failures(), before);

  // Garbage, then a client that says nothing (closed at handshake_timeout).
  for (const bool silent : {false, true}) {
    before = failures();
    auto u = ParseUri(uri).value();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(u.port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    if (!silent) {
      const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
      ASSERT_GT(send(fd, junk, sizeof junk - 1, MSG_NOSIGNAL), 0);
    }
    char buf[256];
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t r;
    while ((r = recv(fd, buf, sizeof buf, 0)) > 0) {
    }
    EXPECT_TRUE(r == 0 || errno == ECONNRESET) << "the server closes the connection: " << strerror(errno);
    close(fd);
    for (int i = 0; i < 500 && failures() == before; ++i) std::this_thread::sleep_for(5ms);
    EXPECT_GT(failures(), before);
  }

  // Still serving.
  Pair(good);
  Echo(1 << 20, 9, /*with_payload=*/true);
  On(env_->client_worker(), [&] { client_.reset(); });
  On(env_->server_worker(), [&] { server_.reset(); });
  On(env_->server_worker(), [&] { listener_.reset(); });

  // A TLS client to a plain listener.
  auto l = On(env_->server_worker(), [&] { return env_->server_transport().Listen("tcp://127.0.0.1:0"); });
  ASSERT_TRUE(l.ok());
  listener_ = std::move(*l);
  auto c = ConnectTls(good);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
  EXPECT_NE(c.status().message().find("TLS handshake"), std::string::npos) << c.status().ToString();
}

TEST_F(TlsTcp, SendingToAPeerThatWentAwayFailsThatConnectionWithoutASignal) {
  ListenTls(ServerCtx(pki_.server));
  Pair(ClientCtx(pki_.ca.ca_file()));
  On(env_->client_worker(), [&] { client_.reset(); });
  // The server keeps sending 1 MiB payloads into the closed connection: the
  // socket answers with a reset, then EPIPE (no SIGPIPE: the test goes on).
  mempool::Pool& pool = env_->pool();
  IoBuf big(Filled(pool, 1 << 20, 3));
  Status s = On(env_->server_worker(), [&]() -> Status {
    for (int i = 0; i < 1000; ++i) {
      HRPC_ASSIGN_OR_RETURN(IoBuf head, Head(pool, "x"));
      HRPC_TRY(server_->SendWithPayload(std::move(head), big.Share()));
      coro::this_coro::SleepFor(1ms);
    }
    return Status::Ok();
  });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  // The listener serves the next client.
  On(env_->server_worker(), [&] { server_.reset(); });
  Pair(ClientCtx(pki_.ca.ca_file()));
  Echo(64, 11);
}

// A raw OpenSSL client limited to TLS `version` at most: whether its
// handshake with the listener at `port` completes.
bool RawHandshake(uint16_t port, int version, const std::string& ca_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_security_level(ctx, 0);  // let it offer what Debian's default forbids
  SSL_CTX_set_min_proto_version(ctx, 0);
  SSL_CTX_set_max_proto_version(ctx, version);
  SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  ok = ok && SSL_connect(ssl) == 1 && SSL_version(ssl) == version;
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
  return ok;
}

TEST_F(TlsTcp, Tls12IsTheOldestVersionAccepted) {
  ListenTls(ServerCtx(pki_.server));
  const uint16_t port = ParseUri(listener_->uri()).value().port;
  const auto failures = [&] { return env_->server_transport().counters()->handshake_failures.Get(); };
  const auto reach = [&](uint64_t n) {
    for (int i = 0; i < 500 && failures() < n; ++i) std::this_thread::sleep_for(5ms);
    return failures();
  };
  // TLS 1.2 passes; the raw client then leaves without the transport's HELLO
  // (one handshake failure, counted before the refusals below).
  const uint64_t start = failures();
  EXPECT_TRUE(RawHandshake(port, TLS1_2_VERSION, pki_.ca.ca_file()));
  EXPECT_EQ(reach(start + 1), start + 1);
  EXPECT_FALSE(RawHandshake(port, TLS1_1_VERSION, pki_.ca.ca_file()));
  EXPECT_FALSE(RawHandshake(port, TLS1_VERSION, pki_.ca.ca_file()));
  EXPECT_EQ(reach(start + 3), start + 3);
  Pair(ClientCtx(pki_.ca.ca_file()));
  Echo(64, 12);
}

TEST(TlsOptionsTest, BadFilesAndMissingPartsAreRefusedUpFront) {
  Pki pki = Pki::Make();
  auto missing = CreateTlsContext({.cert_file = pki.dir.path + "/nope.pem", .key_file = pki.server.key});
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("nope.pem"), std::string::npos) << missing.status().ToString();
  auto mismatch = CreateTlsContext({.cert_file = pki.server.cert, .key_file = pki.client.key});
  EXPECT_EQ(mismatch.status().code(), StatusCode::kInvalidArgument) << mismatch.status().ToString();
  EXPECT_NE(mismatch.status().message().find("key values mismatch"), std::string::npos) << mismatch.status().ToString();
  EXPECT_EQ(CreateTlsContext({.cert_file = pki.server.cert}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateTlsContext({.ca_file = pki.dir.path + "/none.pem"}).status().code(), StatusCode::kInvalidArgument);

  Env env(TcpKind());
  auto client_only = CreateTlsContext({.ca_file = pki.ca.ca_file()}).value();
  auto server_only = CreateTlsContext({.cert_file = pki.server.cert, .key_file = pki.server.key}).value();
  auto l = On(env.server_worker(), [&] { return env.server_transport().ListenTls("tcp://127.0.0.1:0", client_only); });
  EXPECT_EQ(l.status().code(), StatusCode::kInvalidArgument);
  auto c = On(env.client_worker(), [&] { return env.client_transport().ConnectTls("tcp://127.0.0.1:1", server_only); });
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);

  Env loop(LoopbackKind());
  auto ll = On(loop.server_worker(), [&] { return loop.server_transport().ListenTls("loop://tls", server_only); });
  EXPECT_EQ(ll.status().code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace hrpc::transport::testing
