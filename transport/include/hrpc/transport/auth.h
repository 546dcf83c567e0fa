// Peer authentication at connect: an Authenticator runs on a fresh connection,
// before the connection carries anything else, and lets it through only when
// the peer proved who it is. It talks over the connection's own control
// messages (Send/Recv), so one implementation serves TCP, RDMA and loopback.
//
// The RPC layer runs it (ServerOptions::authenticator on accepted connections,
// RuntimeOptions::authenticator on outgoing ones) before the connection joins
// the server or the runtime's connection table: a peer that fails never has a
// request dispatched, is never given a descriptor of exposed memory (so no
// key to use in a one-sided op), and its connection is closed.
//
// The built-in one, MakeSharedSecretAuthenticator(), is a mutual challenge-
// response over HMAC-SHA256 (OpenSSL) with fresh 32-byte nonces from both
// sides; docs/transport.md, "Authentication", gives the messages byte by byte.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport {

enum class AuthRole : uint8_t { kClient, kServer };  // who connected, who accepted

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // For logs and /status: "hmac-sha256".
  virtual std::string_view name() const noexcept = 0;
  // Runs the exchange on `conn`, which must be fresh (nothing sent or received
  // yet), from a coroutine on the connection's worker; suspends. Messages it
  // sends come from `pool` (the connection's transport's pool). OK when the
  // peer proved itself; UNAUTHENTICATED with the reason when it did not (a
  // wrong proof, a message that is not part of the exchange, the peer
  // refusing us); the connection's error when it failed meanwhile. On a
  // non-OK return the caller closes the connection. `first_message` (server
  // role, may be null): where a first message that is not part of the
  // exchange at all (a peer that skipped authentication) is stored, so the
  // caller can answer it in its own protocol before closing.
  virtual Status Authenticate(Connection& conn, mempool::Pool& pool, AuthRole role,
                              mempool::IoBuf* first_message = nullptr) const = 0;
  // True when the exchange starts with a message from the connecting side
  // that carries no in-stream payload: then a first message with one is from
  // a peer that skipped authentication, and the server's transport may drop
  // that payload unread (Listener::HoldUntilAdmitted). False (the default)
  // for an exchange that may admit a peer before it has sent anything.
  virtual bool ClientSpeaksFirst() const noexcept { return false; }
};

// Mutual HMAC-SHA256 challenge-response over a shared secret: each side
// proves knowledge of `secret` over both sides' fresh nonces; proofs are
// compared in constant time, so a recorded exchange cannot be replayed and a
// reflected proof does not pass. INVALID_ARGUMENT for an empty secret.
Result<std::shared_ptr<const Authenticator>> MakeSharedSecretAuthenticator(std::string secret);

// Authenticate() bounded by `timeout`: a peer that stays silent has its
// connection closed when it runs out (UNAVAILABLE "timed out").
Status AuthenticateWithin(const Authenticator& auth, Connection& conn, mempool::Pool& pool, AuthRole role,
                          std::chrono::milliseconds timeout, mempool::IoBuf* first_message = nullptr);

// Closes `conn` once what was sent on it had a chance to reach the peer (a
// refusal, so that the peer learns why): reads and drops messages until the
// peer closes or `linger` passes, then closes.
void CloseAfter(Connection& conn, std::chrono::milliseconds linger);

// A server that runs no exchange, given a connection's first message: when it
// is an authentication hello (the client authenticates), answers it with a
// refusal naming `why` (the client fails with it, not with a lost connection)
// and returns true; false for anything else.
bool RefuseAuthenticationHello(Connection& conn, mempool::Pool& pool, const mempool::IoBuf& first, const Status& why);

}  // namespace hrpc::transport
