// TLS on one non-blocking socket, for the TCP transport: the connection reads
// and writes through a TlsStream instead of readv()/sendmsg() when it runs TLS
// (and only then: the plain path does not see this class).
//
// The socket stays the connection's; OpenSSL reads and writes it directly
// (a BIO of ours on the fd: recv, and send with MSG_NOSIGNAL), so the
// transport's epoll loop drives it: a call that would
// block returns EAGAIN (Readv/Writev) or kWantRead/kWantWrite (Handshake), and
// the loop calls again when the socket is ready. No read-ahead: OpenSSL takes
// one record at a time from the socket, so a decrypted record can only be
// left over in OpenSSL when the caller asked for less than it held
// (HasBuffered(); the loop must come back without waiting for epoll).
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/transport/tcp.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace hrpc::transport {

class TlsContext {
 public:
  TlsContext(SSL_CTX* ctx, TlsOptions options) : ctx_(ctx), options_(std::move(options)) {}
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  SSL_CTX* ctx() const { return ctx_; }
  const TlsOptions& options() const { return options_; }

 private:
  SSL_CTX* ctx_;
  TlsOptions options_;
};

namespace tcp {

class TlsStream {
 public:
  // `host`: the connecting side's URI host (the name to verify unless
  // options().server_name is set). `peer`: for messages.
  static Result<std::unique_ptr<TlsStream>> Create(const TlsContext& ctx, int fd, bool server, std::string_view host,
                                                   std::string peer);
  ~TlsStream();  // sends close_notify when the TLS connection has not failed (best effort)
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  enum class Step : uint8_t { kDone, kWantRead, kWantWrite };
  // Advances the handshake. A failure: UNAUTHENTICATED when a certificate was
  // refused (here or by the peer), UNAVAILABLE otherwise, with OpenSSL's reason.
  Result<Step> Handshake();

  // Like readv(2) on the decrypted stream: bytes read (filling the iovecs in
  // order, straight from OpenSSL into them), 0 when the peer closed, -1 with
  // errno EAGAIN (nothing now), a socket errno, or EPROTO (error() says why).
  ssize_t Readv(const iovec* iov, int n);
  // Like writev(2): plaintext bytes taken from the front of `iov`. After an
  // EAGAIN the next call must start with the same bytes (OpenSSL holds a
  // record of them half-sent); the transport's queue guarantees that, since
  // bytes it was not told were taken stay at its front.
  ssize_t Writev(const iovec* iov, int n);

  // Decrypted bytes OpenSSL holds that no Readv() has taken yet.
  bool HasBuffered() const;
  const Status& error() const { return error_; }
  // "TLSv1.3 TLS_AES_256_GCM_SHA384" once the handshake is done.
  std::string Describe() const;

 private:
  TlsStream(SSL* ssl, std::string peer) : ssl_(ssl), peer_(std::move(peer)) {}
  // The Status for OpenSSL error `ssl_error` after a call returned `rc`.
  Status Failure(int ssl_error, std::string_view during);
  Status RefusedOrFailed(int ssl_error);

  SSL* ssl_;
  std::string peer_;
  Status error_;
  // Pieces smaller than kDirectBytes are gathered here into one record (a
  // record costs a header, an AEAD tag and a syscall); larger ones are
  // encrypted from where they are.
  std::vector<char> stage_;
  size_t pending_len_ = 0;  // an SSL_write that returned WANT_*: retried with these bytes
  bool pending_staged_ = false;
};

}  // namespace tcp
}  // namespace hrpc::transport
