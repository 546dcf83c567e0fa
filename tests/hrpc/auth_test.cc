// Peer authentication at connect (transport/auth.h) between real Servers and
// runtimes over TCP loopback: the right secret is served; a wrong secret, a
// client without one, a replayed proof and a silent peer are refused with
// UNAUTHENTICATED before anything is dispatched, counted in the metrics, and
// the server keeps serving the others. Then the same with TLS under it
// (ServerOptions::tls, RuntimeOptions::tls). Raw peers build the documented
// messages (docs/transport.md, "Authentication") with OpenSSL themselves.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/auth.h"
#include "hrpc/transport/loopback.h"
#include "hrpc/transport/tcp.h"
#include "rpc_test_util.h"
#include "test_pki.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::Status;
using hrpc::StatusCode;
using hrpc::mempool::IoBuf;

std::shared_ptr<const hrpc::transport::Authenticator> Secret(const std::string& s) {
  auto a = hrpc::transport::MakeSharedSecretAuthenticator(s);
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  return a.ok() ? *a : nullptr;
}

hrpc::RuntimeOptions TcpRuntime(std::shared_ptr<const hrpc::transport::Authenticator> auth = nullptr) {
  hrpc::RuntimeOptions ro;
  ro.transport_choice = hrpc::TransportChoice::kTcp;
  ro.transport.handshake_timeout = 1000ms;
  ro.transport.connect_timeout = 3000ms;
  ro.authenticator = std::move(auth);
  return ro;
}

Status Call(hrpc::Runtime& runtime, const std::string& uri, const std::string& text) {
  auto ch = hrpc::RpcChannel::Create(runtime, uri);
  HRPC_TRY(ch.status());
  rpctest::Test::Stub stub(ch->get());
  ClientContext ctx;
  ctx.set_timeout(10s);
  rpctest::Req req;
  req.set_text(text);
  rpctest::Resp resp;
  HRPC_TRY(stub.Call(ctx, req, &resp));
  if (resp.text() != text) return hrpc::DataLossError("echo came back as '" + resp.text() + "'");
  return Status::Ok();
}

// A call from a runtime of its own (authenticating with `auth`, or not) whose
// request carries an attachment of `bytes` for the server to echo: its
// Status, DATA_LOSS when the echo came back different.
Status CallWithAttachment(std::shared_ptr<const hrpc::transport::Authenticator> auth, const std::string& uri,
                          size_t bytes) {
  auto rt = hrpc::Runtime::Create(TcpRuntime(std::move(auth)));
  HRPC_TRY(rt.status());
  auto ch = hrpc::RpcChannel::Create(**rt, uri);
  HRPC_TRY(ch.status());
  rpctest::Test::Stub stub(ch->get());
  ClientContext ctx;
  ctx.set_timeout(10s);
  ctx.request_attachment() = rpctest::MakePayload((*rt)->pool(0), bytes, 9);
  const uint32_t crc = ctx.request_attachment().Crc32c();
  ctx.set_response_attachment_capacity(bytes);
  rpctest::Req req;
  req.set_echo_attachment(true);
  rpctest::Resp resp;
  HRPC_TRY(stub.Call(ctx, req, &resp));
  if (ctx.response_attachment().Crc32c() != crc) return hrpc::DataLossError("the echoed attachment differs");
  return Status::Ok();
}

// A value of `name` in the Prometheus text (-1 when absent).
double Metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name);
  if (at == std::string::npos) return -1;
  const size_t sp = text.find(' ', at + 1);
  return std::stod(text.substr(sp + 1, text.find('\n', sp) - sp - 1));
}

class Auth : public ::testing::Test {
 protected:
  void SetUp() override {
    auto rt = hrpc::Runtime::Create(TcpRuntime());
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    server_rt_ = std::move(*rt);
    hrpc::ServerOptions so;
    so.listen = {"tcp://127.0.0.1:0"};
    so.authenticator = Secret("correct horse battery staple");
    Configure(so);
    auto s = hrpc::Server::Create(*server_rt_, so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
    ASSERT_TRUE(server_->RegisterService(&service_).ok());
    ASSERT_TRUE(server_->Start().ok());
    const std::string bound = server_->listen_uris()[0];
    uri_ = "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    server_.reset();
    server_rt_.reset();
  }
  virtual void Configure(hrpc::ServerOptions& so) { (void)so; }
  // The failure count once it reached n (the server counts after closing).
  double FailuresReach(double n) const {
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (Failures() < n && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    return Failures();
  }
  double Failures() const { return Metric(server_->MetricsText(), "hrpc_server_auth_failures_total{authenticator=\"hmac-sha256\"}"); }
  double Passed() const { return Metric(server_->MetricsText(), "hrpc_server_authenticated_total{authenticator=\"hmac-sha256\"}"); }
  // A client with the right secret is still served.
  void StillServesOthers() {
    auto good = hrpc::Runtime::Create(TcpRuntime(Secret("correct horse battery staple")));
    ASSERT_TRUE(good.ok());
    EXPECT_TRUE(Call(**good, uri_, "still here").ok());
  }

  rpctest::TestService service_;
  std::unique_ptr<hrpc::Runtime> server_rt_;
  std::unique_ptr<hrpc::Server> server_;
  std::string uri_;
};

TEST_F(Auth, RightSecretIsServed) {
  auto rt = hrpc::Runtime::Create(TcpRuntime(Secret("correct horse battery staple")));
  ASSERT_TRUE(rt.ok());
  EXPECT_TRUE(Call(**rt, uri_, "a").ok());
  EXPECT_TRUE(Call(**rt, uri_, "b").ok());  // the same authenticated connection
  EXPECT_EQ(service_.calls.load(), 2);
  EXPECT_EQ(Passed(), 1);
  EXPECT_EQ(Failures(), 0);
  EXPECT_EQ(server_->num_connections(), 1u);
}

TEST_F(Auth, WrongSecretIsRefusedAndOthersAreServed) {
  auto rt = hrpc::Runtime::Create(TcpRuntime(Secret("wrong horse")));
  ASSERT_TRUE(rt.ok());
  const Status s = Call(**rt, uri_, "x");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.ToString().find("did not prove knowledge of the shared secret"), std::string::npos) << s.ToString();
  EXPECT_EQ(Metric((*rt)->MetricsText(), "hrpc_client_auth_failures_total{worker=\"0\"}"), 1);
  EXPECT_EQ(service_.calls.load(), 0);
  StillServesOthers();
  EXPECT_EQ(FailuresReach(1), 1);
}

TEST_F(Auth, ClientWithoutSecretGetsUnauthenticatedAndNoDispatch) {
  auto rt = hrpc::Runtime::Create(TcpRuntime());
  ASSERT_TRUE(rt.ok());
  const Status s = Call(**rt, uri_, "x");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.ToString().find("requires authentication"), std::string::npos) << s.ToString();
  EXPECT_EQ(service_.calls.load(), 0);
  StillServesOthers();
  EXPECT_EQ(FailuresReach(1), 1);
}

TEST(AuthOptions, EmptySecretIsRefused) {
  auto a = hrpc::transport::MakeSharedSecretAuthenticator("");
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
}

TEST(AuthOptions, ServerWithoutAuthenticatorRefusesAnAuthenticatingClientClearly) {
  auto srt = hrpc::Runtime::Create(TcpRuntime());
  ASSERT_TRUE(srt.ok());
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  auto server = hrpc::Server::Create(**srt, so);
  ASSERT_TRUE(server.ok());
  rpctest::TestService svc;
  ASSERT_TRUE((*server)->RegisterService(&svc).ok());
  ASSERT_TRUE((*server)->Start().ok());
  const std::string bound = (*server)->listen_uris()[0];
  auto rt = hrpc::Runtime::Create(TcpRuntime(Secret("s")));
  ASSERT_TRUE(rt.ok());
  const Status s = Call(**rt, "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1), "x");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.ToString().find("this server does not authenticate clients"), std::string::npos) << s.ToString();
  EXPECT_EQ(svc.calls.load(), 0);
}

// --- Raw peers: the exchange built by hand ----------------------------------

constexpr uint64_t kMagic = 0x4854554143505248ull;  // "HRPCAUTH"
using Bytes = std::vector<uint8_t>;

std::array<uint8_t, 32> Hmac(const std::string& key, std::string_view label, const Bytes& cn, const Bytes& sn) {
  Bytes data(label.begin(), label.end());
  data.insert(data.end(), cn.begin(), cn.end());
  data.insert(data.end(), sn.begin(), sn.end());
  std::array<uint8_t, 32> out{};
  unsigned len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(), out.data(), &len);
  return out;
}

Bytes Msg(uint8_t kind, const Bytes& body, uint32_t code = 0) {
  Bytes m(16, 0);
  std::memcpy(m.data(), &kMagic, 8);
  m[8] = kind;
  m[9] = 1;
  std::memcpy(&m[12], &code, 4);
  m.insert(m.end(), body.begin(), body.end());
  return m;
}

// A TCP transport on a worker of its own, for connections driven by hand.
class RawPeer {
 public:
  // fn as a coroutine on the peer's worker; its result as a Result.
  template <class F>
  auto On(F&& fn) {
    return hrpc::coro::Async(worker_->scheduler(), std::forward<F>(fn)).Get();
  }
  RawPeer() {
    hrpc::mempool::PoolOptions po;
    po.arena_bytes = 16u << 20;
    po.max_class_bytes = 1u << 20;
    po.best_page_mode = hrpc::mempool::PageMode::kTransparentHuge;
    po.prefault = false;
    po.max_arenas = 1;
    pool_ = std::move(hrpc::mempool::Pool::Create(po)).value();
    worker_ = std::move(hrpc::coro::Worker::Start({.sched = {.name = "raw-peer"}})).value();
    transport_ = std::move(On([&] { return hrpc::transport::CreateTcpTransport(worker_->scheduler(), *pool_); }))
                     .value();
  }
  ~RawPeer() {
    (void)On([&] {
      conn_.reset();
      listener_.reset();
      transport_.reset();
      return 0;
    });
  }
  Status Connect(const std::string& uri) {
    return On([&]() -> hrpc::Result<int> {
      HRPC_ASSIGN_OR_RETURN(conn_, transport_->Connect(uri));
      return 0;
    }).status();
  }
  Status Send(const Bytes& b) {
    return On([&]() -> hrpc::Result<int> {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, IoBuf::CopyFrom(*pool_, b.data(), b.size()));
      HRPC_TRY(conn_->Send(std::move(m)));
      return 0;
    }).status();
  }
  // `b` with `payload_bytes` of payload behind it, handed to the transport
  // (which may still be writing it when this returns).
  Status SendWithPayload(const Bytes& b, size_t payload_bytes) {
    return On([&]() -> hrpc::Result<int> {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, IoBuf::CopyFrom(*pool_, b.data(), b.size()));
      IoBuf payload;
      for (size_t off = 0; off < payload_bytes; off += pool_->options().max_class_bytes) {
        HRPC_ASSIGN_OR_RETURN(auto block,
                              pool_->Allocate(std::min(pool_->options().max_class_bytes, payload_bytes - off)));
        std::memset(block.data(), 'p', block.size());
        payload.Append(std::move(block));
      }
      HRPC_TRY(conn_->SendWithPayload(std::move(m), std::move(payload)));
      return 0;
    }).status();
  }
  hrpc::Result<Bytes> Recv() {
    return On([&]() -> hrpc::Result<Bytes> {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, conn_->Recv());
      Bytes out(m.size());
      m.CopyTo(out.data(), 0, out.size());
      return out;
    });
  }

  std::unique_ptr<hrpc::mempool::Pool> pool_;
  std::unique_ptr<hrpc::coro::Worker> worker_;
  std::unique_ptr<hrpc::transport::Transport> transport_;
  std::unique_ptr<hrpc::transport::Listener> listener_;
  std::unique_ptr<hrpc::transport::Connection> conn_;
};

Bytes Nonce() {
  Bytes n(32);
  RAND_bytes(n.data(), 32);
  return n;
}

TEST_F(Auth, ReplayedClientProofIsRefused) {
  const std::string key = "correct horse battery staple";
  const Bytes cn = Nonce();
  // First connection, by the book: its hello and proof are recorded.
  Bytes recorded_proof;
  {
    RawPeer p;
    ASSERT_TRUE(p.Connect(uri_).ok());
    ASSERT_TRUE(p.Send(Msg(1, cn)).ok());
    auto ch = p.Recv();
    ASSERT_TRUE(ch.ok()) << ch.status().ToString();
    ASSERT_EQ(ch->size(), 16u + 64u);
    ASSERT_EQ((*ch)[8], 2);
    const Bytes sn(ch->begin() + 16, ch->begin() + 48);
    const auto server_proof = Hmac(key, "hrpc-auth-v1 server", cn, sn);
    ASSERT_TRUE(std::equal(server_proof.begin(), server_proof.end(), ch->begin() + 48));
    const auto proof = Hmac(key, "hrpc-auth-v1 client", cn, sn);
    recorded_proof.assign(proof.begin(), proof.end());
    ASSERT_TRUE(p.Send(Msg(3, recorded_proof)).ok());
    auto verdict = p.Recv();
    ASSERT_TRUE(verdict.ok());
    EXPECT_EQ((*verdict)[8], 4);
    EXPECT_EQ((*verdict)[12], 0) << "accepted";
  }
  // Second connection: the same hello and the recorded proof replayed against a fresh server nonce.
  RawPeer p;
  ASSERT_TRUE(p.Connect(uri_).ok());
  ASSERT_TRUE(p.Send(Msg(1, cn)).ok());
  auto ch = p.Recv();
  ASSERT_TRUE(ch.ok());
  ASSERT_EQ(ch->size(), 16u + 64u);
  ASSERT_TRUE(p.Send(Msg(3, recorded_proof)).ok());
  auto verdict = p.Recv();
  ASSERT_TRUE(verdict.ok()) << verdict.status().ToString();
  ASSERT_GE(verdict->size(), 16u);
  EXPECT_EQ((*verdict)[8], 4);
  EXPECT_EQ((*verdict)[12], static_cast<uint8_t>(StatusCode::kUnauthenticated));
  const std::string reason(verdict->begin() + 16, verdict->end());
  EXPECT_NE(reason.find("the client did not prove"), std::string::npos) << reason;
  // Then the server closes it; nothing was dispatched.
  EXPECT_FALSE(p.Recv().ok());
  EXPECT_EQ(service_.calls.load(), 0);
  EXPECT_EQ(FailuresReach(1), 1);
  EXPECT_EQ(Passed(), 1);
  StillServesOthers();
}

TEST_F(Auth, RpcFrameInsteadOfHelloIsAnsweredUnauthenticatedAndClosed) {
  RawPeer p;
  ASSERT_TRUE(p.Connect(uri_).ok());
  hrpc::wire::FrameHeader h;
  h.kind = hrpc::wire::FrameKind::kRequest;
  h.txn_id = 77;
  h.service_id = rpctest::Test::kServiceId;
  h.method_id = rpctest::Test::kMethods[0].method_id;
  Bytes frame(hrpc::wire::kHeaderSize);
  auto n = hrpc::wire::EncodeFrame(h, {}, {}, {}, {}, std::as_writable_bytes(std::span(frame)));
  ASSERT_TRUE(n.ok());
  ASSERT_TRUE(p.Send(frame).ok());
  auto resp = p.Recv();
  ASSERT_TRUE(resp.ok()) << resp.status().ToString();
  auto f = hrpc::wire::Decode(std::as_bytes(std::span(*resp)));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->header().txn_id, 77u);
  EXPECT_EQ(f->status().code(), StatusCode::kUnauthenticated);
  EXPECT_FALSE(p.Recv().ok()) << "closed after the answer";
  EXPECT_EQ(service_.calls.load(), 0);
  EXPECT_EQ(FailuresReach(1), 1);
  StillServesOthers();
}

TEST_F(Auth, SilentPeerIsClosedAtTheHandshakeTimeout) {
  RawPeer p;
  ASSERT_TRUE(p.Connect(uri_).ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = p.Recv();  // the server says nothing first; it closes at handshake_timeout (1 s)
  EXPECT_FALSE(r.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  EXPECT_EQ(FailuresReach(1), 1);
  StillServesOthers();
}

// What a peer that has not authenticated sends costs the server little memory
// (Listener::HoldUntilAdmitted): a payload behind a message after the first
// is not read until the peer is admitted, which it never is (the connection
// closes at the handshake timeout); one behind the first message (a client
// that skipped authentication) is dropped unread and its request answered
// UNAUTHENTICATED. Without that, each of these peers would have the server
// take 8 MiB of blocks ahead of its payload, or all of it.
TEST_F(Auth, APeerThatHasNotAuthenticatedMakesTheServerHoldNoPayload) {
  // Peak bytes of blocks the server's pool handed out (its classes' high
  // water marks): an upper bound on what it ever held at once.
  hrpc::mempool::Pool& pool = server_rt_->pool(0);
  auto peak = [&pool] {
    size_t n = 0;
    for (const auto& c : pool.Stats()) n += c.high_water * c.block_bytes;
    return n;
  };
  const size_t peak0 = peak();
  std::vector<std::unique_ptr<RawPeer>> peers;
  for (int i = 0; i < 4; ++i) {
    auto p = std::make_unique<RawPeer>();
    ASSERT_TRUE(p->Connect(uri_).ok());
    ASSERT_TRUE(p->Send(Msg(1, Nonce())).ok());
    auto challenge = p->Recv();
    ASSERT_TRUE(challenge.ok()) << challenge.status().ToString();
    ASSERT_TRUE(p->SendWithPayload(Msg(3, Bytes(32, 0)), size_t{6} << 20).ok());  // a "proof" with a payload
    peers.push_back(std::move(p));
  }
  for (auto& p : peers) EXPECT_FALSE(p->Recv().ok()) << "closed at the handshake timeout";
  EXPECT_EQ(FailuresReach(4), 4);
  EXPECT_LT(peak() - peak0, size_t{2} << 20) << "the server took memory for the payloads of unauthenticated peers";
  // A client without the secret whose first call carries an attachment
  // behind its request: the payload is dropped unread, the request refused.
  const Status plain = CallWithAttachment(nullptr, uri_, size_t{4} << 20);
  EXPECT_EQ(plain.code(), StatusCode::kUnauthenticated) << plain.ToString();
  EXPECT_NE(plain.message().find("requires authentication"), std::string::npos) << plain.ToString();
  EXPECT_LT(peak() - peak0, size_t{2} << 20);
  EXPECT_EQ(service_.calls.load(), 0);
  // An authenticated client's first call carries an attachment: it arrives
  // before the server has admitted the connection, and is served.
  const Status good = CallWithAttachment(Secret("correct horse battery staple"), uri_, size_t{3} << 20);
  EXPECT_TRUE(good.ok()) << good.ToString();
}

// An authenticator that admits every peer without a message (as one that
// judges the peer's address or TLS identity would): the server holds its
// connections until admitted but drops nothing (ClientSpeaksFirst() is
// false), and first calls with attachments are served. (Whether such a call
// reaches the server before Admit() is up to the scheduler; the transport
// test AHeldConnectionDropsThePayloadOfItsFirstMessageOnlyWhenTheClientSpeaksFirst
// makes it so.)
class AdmitsEveryone final : public hrpc::transport::Authenticator {
 public:
  std::string_view name() const noexcept override { return "admits-everyone"; }
  Status Authenticate(hrpc::transport::Connection&, hrpc::mempool::Pool&, hrpc::transport::AuthRole,
                      IoBuf*) const override {
    return Status::Ok();
  }
};

TEST(AuthCustom, AnExchangeThatAdmitsAtOnceKeepsTheFirstCallsAttachment) {
  auto rt = hrpc::Runtime::Create(TcpRuntime());
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.authenticator = std::make_shared<AdmitsEveryone>();
  auto server = hrpc::Server::Create(**rt, so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  const std::string bound = (*server)->listen_uris()[0];
  const std::string uri = "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1);
  for (int i = 0; i < 5; ++i) {  // each from a new runtime: a new connection
    const Status st = CallWithAttachment(nullptr, uri, size_t{2} << 20);
    EXPECT_TRUE(st.ok()) << i << ": " << st.ToString();
  }
  (*server)->Shutdown();
}

// The client side of a replay: a fake server answers with a proof recorded
// for another client nonce; the client refuses it.
TEST(AuthClient, ReplayedServerProofIsRefused) {
  const std::string key = "k";
  RawPeer fake;
  (void)fake.On([&] {
    fake.listener_ = std::move(fake.transport_->Listen("tcp://127.0.0.1:0")).value();
    return 0;
  });
  const std::string bound = fake.listener_->uri();
  auto served = hrpc::coro::Async(fake.worker_->scheduler(), [&]() -> Status {
    HRPC_ASSIGN_OR_RETURN(auto c, fake.listener_->Accept());
    HRPC_ASSIGN_OR_RETURN(IoBuf hello, c->Recv());
    const Bytes old_cn = Nonce(), sn = Nonce();
    const auto proof = Hmac(key, "hrpc-auth-v1 server", old_cn, sn);
    Bytes body = sn;
    body.insert(body.end(), proof.begin(), proof.end());
    const Bytes m = Msg(2, body);
    HRPC_ASSIGN_OR_RETURN(IoBuf out, IoBuf::CopyFrom(*fake.pool_, m.data(), m.size()));
    HRPC_TRY(c->Send(std::move(out)));
    HRPC_ASSIGN_OR_RETURN(IoBuf verdict, c->Recv());  // the client's refusal, then its close
    Bytes v(verdict.size());
    verdict.CopyTo(v.data(), 0, v.size());
    if (v.size() < 16 || v[8] != 4 || v[12] != static_cast<uint8_t>(StatusCode::kUnauthenticated)) {
      return hrpc::InternalError("expected the client's refusal");
    }
    return c->Recv().ok() ? hrpc::InternalError("expected the client to close") : Status::Ok();
  });
  auto rt = hrpc::Runtime::Create(TcpRuntime(Secret(key)));
  ASSERT_TRUE(rt.ok());
  const Status s = Call(**rt, "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1), "x");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.ToString().find("the server did not prove"), std::string::npos) << s.ToString();
  EXPECT_TRUE(served.Get().ok());
}

// A server that goes away during the exchange, or stays silent past the
// timeout, is unreachable rather than a refusal: the call fails UNAVAILABLE
// (which a retrying client retries) and no authentication failure is counted.
TEST(AuthClient, AServerLostOrSilentDuringTheExchangeIsUnavailable) {
  RawPeer fake;
  (void)fake.On([&] {
    fake.listener_ = std::move(fake.transport_->Listen("tcp://127.0.0.1:0")).value();
    return 0;
  });
  const std::string bound = fake.listener_->uri();
  const std::string uri = "tcp://127.0.0.1:" + bound.substr(bound.rfind(':') + 1);
  hrpc::RuntimeOptions ro = TcpRuntime(Secret("k"));
  ro.transport.connect_timeout = 1000ms;  // also the handshake's: generous for a loaded machine
  auto rt = hrpc::Runtime::Create(ro);
  ASSERT_TRUE(rt.ok());
  for (bool silent : {false, true}) {
    SCOPED_TRACE(silent ? "silent" : "closes");
    auto served = hrpc::coro::Async(fake.worker_->scheduler(), [&]() -> Status {
      HRPC_ASSIGN_OR_RETURN(auto c, fake.listener_->Accept());
      HRPC_ASSIGN_OR_RETURN(IoBuf hello, c->Recv());  // the client's hello, never answered
      if (silent) (void)c->Recv();                     // until the client gives up
      return Status::Ok();
    });
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = Call(**rt, uri, "x");
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
    const Status fake_side = served.WaitFor(5s);
    EXPECT_TRUE(fake_side.ok()) << fake_side.ToString();
  }
  EXPECT_EQ(Metric((*rt)->MetricsText(), "hrpc_client_auth_failures_total{worker=\"0\"}"), 0);
}

// --- TLS under the RPC layer, with the authenticator on top ------------------

// The Auth server (shared secret) with mutual TLS under it.
class TlsRpc : public Auth {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hrpc-rpc-tls-XXXXXX";
    dir_ = mkdtemp(tmpl);
    auto ca = hrpc::testing::TestPki::Create(dir_, "hrpc test CA");
    ASSERT_TRUE(ca.ok()) << ca.status().ToString();
    const auto server = ca->Issue("server", {"DNS:localhost", "IP:127.0.0.1"});
    client_ = ca->Issue("client", {"DNS:client.test"}).value();
    ca_file_ = ca->ca_file();
    auto ctx = hrpc::transport::CreateTlsContext(
        {.cert_file = server->cert, .key_file = server->key, .ca_file = ca_file_, .require_client_cert = true});
    ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
    tls_ = *ctx;
    Auth::SetUp();
  }
  void Configure(hrpc::ServerOptions& so) override { so.tls = tls_; }
  void TearDown() override {
    Auth::TearDown();
    std::filesystem::remove_all(dir_);
  }
  // A client runtime: TLS with our client certificate (or none), and a secret.
  std::unique_ptr<hrpc::Runtime> Client(bool tls, bool cert, const std::string& secret) {
    hrpc::RuntimeOptions ro = TcpRuntime(secret.empty() ? nullptr : Secret(secret));
    if (tls) {
      hrpc::transport::TlsOptions o{.ca_file = ca_file_};
      if (cert) {
        o.cert_file = client_.cert;
        o.key_file = client_.key;
      }
      ro.tls = hrpc::transport::CreateTlsContext(o).value();
    }
    auto rt = hrpc::Runtime::Create(ro);
    EXPECT_TRUE(rt.ok()) << rt.status().ToString();
    return rt.ok() ? std::move(*rt) : nullptr;
  }
  // Incoming connections the server's transports refused (TLS handshakes among them).
  double TransportHandshakeFailures() const {
    const std::string text = server_->MetricsText();
    double sum = 0;
    for (size_t at = text.find("\nhrpc_transport_connect_failures_total{"); at != std::string::npos;
         at = text.find("\nhrpc_transport_connect_failures_total{", at + 1)) {
      const std::string line = text.substr(at + 1, text.find('\n', at + 1) - at - 1);
      if (line.find("direction=\"in\"") != std::string::npos) sum += std::stod(line.substr(line.rfind(' ') + 1));
    }
    return sum;
  }

  std::string dir_, ca_file_;
  hrpc::testing::CertFiles client_;
  std::shared_ptr<const hrpc::transport::TlsContext> tls_;
};

TEST_F(TlsRpc, CallsWithAttachmentsRunOverMutualTlsAndTheAuthenticator) {
  auto rt = Client(/*tls=*/true, /*cert=*/true, "correct horse battery staple");
  ASSERT_TRUE(rt);
  auto ch = hrpc::RpcChannel::Create(*rt, uri_);
  ASSERT_TRUE(ch.ok());
  rpctest::Test::Stub stub(ch->get());
  for (const size_t n : {size_t{64}, size_t{1} << 20}) {
    ClientContext ctx;
    ctx.set_timeout(10s);
    ctx.request_attachment() = rpctest::MakePayload((*ch)->pool(), n, static_cast<uint32_t>(n));
    const uint32_t crc = ctx.request_attachment().Crc32c();
    rpctest::Req req;
    req.set_text("tls");
    req.set_echo_attachment(true);
    rpctest::Resp resp;
    ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
    EXPECT_EQ(resp.attachment_bytes(), n);
    EXPECT_EQ(resp.attachment_crc32c(), crc);
    EXPECT_EQ(ctx.response_attachment().size(), n);
    EXPECT_EQ(ctx.response_attachment().Crc32c(), crc);
  }
  EXPECT_EQ(service_.calls.load(), 2);
}

TEST_F(TlsRpc, TlsRefusalsAndAWrongSecretOverTlsAreRefusedAndOthersServed) {
  // No client certificate: refused by TLS (the server asks for one).
  auto no_cert = Client(/*tls=*/true, /*cert=*/false, "correct horse battery staple");
  Status s = Call(*no_cert, uri_, "x");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.ToString().find("certificate required"), std::string::npos) << s.ToString();
  // No TLS at all: the server does not answer a plain hello.
  auto plain = Client(/*tls=*/false, /*cert=*/false, "correct horse battery staple");
  s = Call(*plain, uri_, "x");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  // TLS passes, the authenticator on top refuses the wrong secret.
  auto wrong = Client(/*tls=*/true, /*cert=*/true, "wrong horse");
  s = Call(*wrong, uri_, "x");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.ToString().find("did not prove knowledge of the shared secret"), std::string::npos) << s.ToString();
  EXPECT_EQ(service_.calls.load(), 0);
  // Still serving, and the TLS refusals were counted by the transport.
  auto good = Client(/*tls=*/true, /*cert=*/true, "correct horse battery staple");
  EXPECT_TRUE(Call(*good, uri_, "still here").ok());
  EXPECT_EQ(service_.calls.load(), 1);
  EXPECT_GE(TransportHandshakeFailures(), 2);
}

TEST(TlsRpcOptions, TlsOnANonTcpListenerIsRefused) {
  char tmpl[] = "/tmp/hrpc-rpc-tls-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto ca = hrpc::testing::TestPki::Create(dir, "ca").value();
  auto cert = ca.Issue("server", {"IP:127.0.0.1"}).value();
  hrpc::ServerOptions so;
  so.listen = {"loop://tls-server"};
  so.tls = hrpc::transport::CreateTlsContext({.cert_file = cert.cert, .key_file = cert.key}).value();
  hrpc::RuntimeOptions ro = TcpRuntime();
  ro.loopback = hrpc::transport::LoopbackNetwork::Create();
  auto lrt = hrpc::Runtime::Create(ro);
  ASSERT_TRUE(lrt.ok());
  auto server = hrpc::Server::Create(**lrt, so);
  ASSERT_TRUE(server.ok());
  rpctest::TestService svc;
  ASSERT_TRUE((*server)->RegisterService(&svc).ok());
  EXPECT_EQ((*server)->Start().code(), StatusCode::kUnimplemented);
  std::filesystem::remove_all(dir);
}

}  // namespace
