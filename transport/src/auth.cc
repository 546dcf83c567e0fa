#include "hrpc/transport/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <cstring>
#include <string>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"

namespace hrpc::transport {
namespace {

// Every message: a 16-byte header, then the body of its kind.
//   0 u64 magic "HRPCAUTH"   8 u8 kind   9 u8 version (1)   10 u16 0   12 u32 code
// kHello (client -> server)     body: client nonce (32)
// kChallenge (server -> client) body: server nonce (32), server proof (32)
// kProof (client -> server)     body: client proof (32)
// kResult (either way)          code: a StatusCode (0: accepted); body: reason text
// server proof = HMAC-SHA256(secret, "hrpc-auth-v1 server" || client nonce || server nonce)
// client proof = HMAC-SHA256(secret, "hrpc-auth-v1 client" || client nonce || server nonce)
constexpr uint64_t kMagic = 0x4854554143505248ull;  // "HRPCAUTH" read LE
constexpr uint8_t kVersion = 1;
constexpr size_t kHeader = 16, kNonce = 32, kMac = 32, kMaxReason = 256;
enum Kind : uint8_t { kHello = 1, kChallenge = 2, kProof = 3, kResult = 4 };
using Nonce = std::array<uint8_t, kNonce>;
using Mac = std::array<uint8_t, kMac>;

struct Message {
  Kind kind = kResult;
  uint32_t code = 0;
  std::array<uint8_t, kNonce + kMac> body{};
  size_t body_len = 0;
  std::string reason;
};

Status Unauthenticated(std::string why) { return Status(StatusCode::kUnauthenticated, "authentication: " + why); }

Status Send(Connection& conn, mempool::Pool& pool, Kind kind, uint32_t code, const void* body, size_t n) {
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(kHeader + n));
  char* p = b.data();
  std::memset(p, 0, kHeader);
  std::memcpy(p, &kMagic, 8);
  p[8] = static_cast<char>(kind);
  p[9] = static_cast<char>(kVersion);
  std::memcpy(p + 12, &code, 4);
  if (n > 0) std::memcpy(p + kHeader, body, n);
  return conn.Send(mempool::IoBuf(std::move(b)));
}

Status SendResult(Connection& conn, mempool::Pool& pool, const Status& s) {
  const std::string why(s.message().substr(0, kMaxReason));
  return Send(conn, pool, kResult, static_cast<uint32_t>(s.code()), why.data(), why.size());
}

// Bytes [0, n) of a message that has at least n, gathered from its slices
// (control bytes, like a frame header: not payload, not CountedCopy).
void Gather(const mempool::IoBuf& m, void* out, size_t n) {
  auto* dst = static_cast<char*>(out);
  for (size_t i = 0; i < m.num_slices() && n > 0; ++i) {
    const size_t k = std::min(n, m.slice(i).size());
    std::memcpy(dst, m.slice(i).data(), k);
    dst += k;
    n -= k;
  }
}

// The next message, if it is one of the exchange. `stray` gets a message that
// is not (no magic) instead of an error, when the caller wants it.
Result<Message> Receive(Connection& conn, mempool::IoBuf* stray = nullptr) {
  auto got = conn.Recv();
  if (!got.ok()) return got.status().WithContext("authentication");  // the connection's error, not a refusal
  const mempool::IoBuf& m = *got;
  uint8_t h[kHeader] = {};
  uint64_t magic = 0;
  if (m.size() >= kHeader) {
    Gather(m, h, kHeader);
    std::memcpy(&magic, h, 8);
  }
  if (magic != kMagic) {
    if (stray != nullptr) {
      *stray = std::move(*got);
      return Unauthenticated("the peer did not authenticate (its first message is not part of the exchange)");
    }
    return Unauthenticated("a message that is not part of the exchange");
  }
  if (h[9] != kVersion) return Unauthenticated("the peer speaks version " + std::to_string(h[9]));
  Message out;
  out.kind = static_cast<Kind>(h[8]);
  std::memcpy(&out.code, h + 12, 4);
  const size_t body = m.size() - kHeader;
  size_t want = 0;
  switch (out.kind) {
    case kHello: want = kNonce; break;
    case kChallenge: want = kNonce + kMac; break;
    case kProof: want = kMac; break;
    case kResult: {
      if (body > kMaxReason) return Unauthenticated("a result with a reason of " + std::to_string(body) + " bytes");
      std::string all(m.size(), '\0');
      Gather(m, all.data(), m.size());
      out.reason = all.substr(kHeader);
      return out;
    }
    default: return Unauthenticated("unknown message kind " + std::to_string(h[8]));
  }
  if (body != want) {
    return Unauthenticated("message kind " + std::to_string(h[8]) + " of " + std::to_string(body) +
                           " bytes, expected " + std::to_string(want));
  }
  uint8_t all[kHeader + kNonce + kMac];
  Gather(m, all, kHeader + want);
  std::memcpy(out.body.data(), all + kHeader, want);
  out.body_len = want;
  return out;
}

// The peer refused us: its reason, as it said it. It has nothing more to hear
// from us: the connection is closed here.
Status Refused(Connection& conn, const Message& m) {
  conn.Close();
  const auto code = m.code == 0 || m.code >= static_cast<uint32_t>(kStatusCodeCount)
                        ? StatusCode::kUnauthenticated
                        : static_cast<StatusCode>(m.code);
  return Status(code, "authentication: the peer refused: " + m.reason);
}

class SharedSecret final : public Authenticator {
 public:
  explicit SharedSecret(std::string secret) : secret_(std::move(secret)) {}
  std::string_view name() const noexcept override { return "hmac-sha256"; }
  bool ClientSpeaksFirst() const noexcept override { return true; }  // the hello

  Status Authenticate(Connection& conn, mempool::Pool& pool, AuthRole role,
                      mempool::IoBuf* first_message) const override {
    return role == AuthRole::kClient ? AsClient(conn, pool) : AsServer(conn, pool, first_message);
  }

 private:
  Mac Proof(std::string_view label, const Nonce& client, const Nonce& server) const {
    uint8_t data[32 + 2 * kNonce];
    std::memcpy(data, label.data(), label.size());
    std::memcpy(data + label.size(), client.data(), kNonce);
    std::memcpy(data + label.size() + kNonce, server.data(), kNonce);
    Mac mac{};
    unsigned len = 0;
    HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()), data, label.size() + 2 * kNonce,
         mac.data(), &len);
    return mac;
  }
  static bool Same(const Mac& a, const uint8_t* b) { return CRYPTO_memcmp(a.data(), b, kMac) == 0; }
  static Status Fresh(Nonce& n) {
    if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) return InternalError("RAND_bytes failed");
    return Status::Ok();
  }

  Status AsClient(Connection& conn, mempool::Pool& pool) const {
    Nonce mine{}, theirs{};
    HRPC_TRY(Fresh(mine));
    HRPC_TRY(Send(conn, pool, kHello, 0, mine.data(), mine.size()));
    HRPC_ASSIGN_OR_RETURN(Message m, Receive(conn));
    if (m.kind == kResult) return Refused(conn, m);
    if (m.kind != kChallenge) return Unauthenticated("expected the server's challenge, got kind " + std::to_string(m.kind));
    std::memcpy(theirs.data(), m.body.data(), kNonce);
    if (!Same(Proof(kServerLabel, mine, theirs), m.body.data() + kNonce)) {
      Status s = Unauthenticated("the server did not prove knowledge of the shared secret");
      SendResult(conn, pool, s).IgnoreError();
      return s;
    }
    const Mac proof = Proof(kClientLabel, mine, theirs);
    HRPC_TRY(Send(conn, pool, kProof, 0, proof.data(), proof.size()));
    HRPC_ASSIGN_OR_RETURN(Message r, Receive(conn));
    if (r.kind != kResult) return Unauthenticated("expected the server's verdict, got kind " + std::to_string(r.kind));
    if (r.code != 0) return Refused(conn, r);
    return Status::Ok();
  }

  Status AsServer(Connection& conn, mempool::Pool& pool, mempool::IoBuf* first_message) const {
    Status s = ServerExchange(conn, pool, first_message);
    if (s.ok()) return SendResult(conn, pool, Status::Ok());
    if (conn.status().ok() && (first_message == nullptr || first_message->empty())) {
      SendResult(conn, pool, s).IgnoreError();
    }
    return s;
  }

  Status ServerExchange(Connection& conn, mempool::Pool& pool, mempool::IoBuf* first_message) const {
    mempool::IoBuf stray;
    HRPC_ASSIGN_OR_RETURN(Message hello, Receive(conn, first_message != nullptr ? first_message : &stray));
    if (hello.kind == kResult) return Refused(conn, hello);
    if (hello.kind != kHello) return Unauthenticated("expected the client's hello, got kind " + std::to_string(hello.kind));
    Nonce client{}, mine{};
    std::memcpy(client.data(), hello.body.data(), kNonce);
    HRPC_TRY(Fresh(mine));
    uint8_t challenge[kNonce + kMac];
    std::memcpy(challenge, mine.data(), kNonce);
    const Mac proof = Proof(kServerLabel, client, mine);
    std::memcpy(challenge + kNonce, proof.data(), kMac);
    HRPC_TRY(Send(conn, pool, kChallenge, 0, challenge, sizeof challenge));
    HRPC_ASSIGN_OR_RETURN(Message m, Receive(conn));
    if (m.kind == kResult) return Refused(conn, m);
    if (m.kind != kProof) return Unauthenticated("expected the client's proof, got kind " + std::to_string(m.kind));
    if (!Same(Proof(kClientLabel, client, mine), m.body.data())) {
      return Unauthenticated("the client did not prove knowledge of the shared secret");
    }
    return Status::Ok();
  }

  static constexpr std::string_view kServerLabel = "hrpc-auth-v1 server";
  static constexpr std::string_view kClientLabel = "hrpc-auth-v1 client";
  static_assert(kServerLabel.size() <= 32 && kClientLabel.size() <= 32);
  std::string secret_;
};

}  // namespace

Result<std::shared_ptr<const Authenticator>> MakeSharedSecretAuthenticator(std::string secret) {
  if (secret.empty()) return InvalidArgumentError("shared-secret authenticator: the secret is empty");
  return std::shared_ptr<const Authenticator>(std::make_shared<SharedSecret>(std::move(secret)));
}

namespace {
// Runs fn(); closes `conn` if it has not returned after `timeout` (which ends
// whatever fn waits for on the connection). True when it timed out.
template <class F>
bool Within(Connection& conn, std::chrono::milliseconds timeout, F&& fn) {
  struct Watch {
    coro::Event done;
    Connection* conn = nullptr;
    bool timed_out = false;
  };
  auto w = std::make_shared<Watch>();
  w->conn = &conn;
  coro::Scheduler::Current()->Spawn(
      [w, timeout] {
        if (!w->done.WaitFor(timeout).ok() && w->conn != nullptr) {
          w->timed_out = true;
          w->conn->Close();
        }
      },
      "hrpc-auth-timer");
  fn();
  w->conn = nullptr;
  w->done.Set();
  return w->timed_out;
}
}  // namespace

Status AuthenticateWithin(const Authenticator& auth, Connection& conn, mempool::Pool& pool, AuthRole role,
                          std::chrono::milliseconds timeout, mempool::IoBuf* first_message) {
  if (coro::Scheduler::Current() == nullptr) return FailedPreconditionError("AuthenticateWithin: not on a worker");
  Status s;
  if (Within(conn, timeout, [&] { s = auth.Authenticate(conn, pool, role, first_message); })) {
    // A peer that does not answer in time is unreachable, not refused.
    return UnavailableError("authentication timed out after " + std::to_string(timeout.count()) + " ms (" +
                            s.ToString() + ")");
  }
  return s;
}

bool RefuseAuthenticationHello(Connection& conn, mempool::Pool& pool, const mempool::IoBuf& first, const Status& why) {
  if (first.size() != kHeader + kNonce) return false;
  uint8_t h[kHeader];
  Gather(first, h, kHeader);
  uint64_t magic = 0;
  std::memcpy(&magic, h, 8);
  if (magic != kMagic || h[8] != kHello) return false;
  SendResult(conn, pool, why).IgnoreError();
  return true;
}

void CloseAfter(Connection& conn, std::chrono::milliseconds linger) {
  if (coro::Scheduler::Current() != nullptr && conn.status().ok()) {
    Within(conn, linger, [&] {
      while (conn.Recv().ok()) {
      }
    });
  }
  conn.Close();
}

}  // namespace hrpc::transport
