// TLS for the TCP transport (tls_stream.h) and CreateTlsContext() (tcp.h).
#include "tls_stream.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

namespace hrpc::transport {
namespace {

Status UnauthenticatedError(std::string_view m) { return {StatusCode::kUnauthenticated, m}; }

// OpenSSL's queued errors, oldest first, "; "-joined (and cleared).
std::string ErrorQueue() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

// Reasons that mean a certificate was refused, by this side or by the peer (an alert).
bool IsCertificateReason(int reason) {
  switch (reason) {
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
      return true;
    default:
      return false;
  }
}

// The socket as OpenSSL's BIO: like its socket BIO, but sends with
// MSG_NOSIGNAL (a peer that reset the connection is an EPIPE, not a SIGPIPE
// that ends the process) and leaves the fd to the connection.
int SockFd(BIO* b) { return static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(b))); }

int SockWrite(BIO* b, const char* data, size_t len, size_t* written) {
  BIO_clear_retry_flags(b);
  const ssize_t w = send(SockFd(b), data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(b);
    return 0;
  }
  *written = static_cast<size_t>(w);
  return 1;
}

int SockRead(BIO* b, char* data, size_t len, size_t* got) {
  BIO_clear_retry_flags(b);
  const ssize_t r = recv(SockFd(b), data, len, MSG_DONTWAIT);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_read(b);
    return 0;
  }
  if (r == 0) errno = 0;  // the peer's FIN: OpenSSL sees EOF (SSL_ERROR_SYSCALL/ZERO_RETURN), errno 0
  *got = static_cast<size_t>(r);
  return r > 0 ? 1 : 0;
}

long SockCtrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

int SockCreate(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

const BIO_METHOD* SocketMethod() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hrpc tcp socket");
    BIO_meth_set_write_ex(m, SockWrite);
    BIO_meth_set_read_ex(m, SockRead);
    BIO_meth_set_ctrl(m, SockCtrl);
    BIO_meth_set_create(m, SockCreate);
    return m;
  }();
  return method;
}

constexpr size_t kDirectBytes = 4096;       // pieces this large are encrypted where they are
constexpr size_t kMaxDirectBytes = 64 * 1024;  // per SSL_write: the queue learns of progress
constexpr size_t kStageBytes = 16 * 1024;   // one TLS record of plaintext

}  // namespace

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Result<std::shared_ptr<const TlsContext>> CreateTlsContext(const TlsOptions& options) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return InvalidArgumentError("tls: cert_file and key_file go together");
  }
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  if (ctx == nullptr) return InternalError("tls: SSL_CTX_new: " + ErrorQueue());
  auto made = std::make_shared<const TlsContext>(ctx, options);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // No renegotiation, no compression; a peer that closes without close_notify
  // reads as a close (the frame layer sees a truncated frame itself).
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // No resumption tickets and no cache of earlier handshakes: nothing arrives after the handshake but data.
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (!options.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, options.cert_file.c_str()) != 1) {
      return InvalidArgumentError("tls: cert_file " + options.cert_file + ": " + ErrorQueue());
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, options.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return InvalidArgumentError("tls: key_file " + options.key_file + ": " + ErrorQueue());
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return InvalidArgumentError("tls: key_file " + options.key_file + " does not match cert_file " +
                                  options.cert_file + ": " + ErrorQueue());
    }
  }
  if (!options.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, options.ca_file.c_str(), nullptr) != 1) {
      return InvalidArgumentError("tls: ca_file " + options.ca_file + ": " + ErrorQueue());
    }
    // The CAs a server names when it asks for a client certificate.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ctx, names);
    }
    ERR_clear_error();
  }
  return made;
}

namespace tcp {

Result<std::unique_ptr<TlsStream>> TlsStream::Create(const TlsContext& ctx, int fd, bool server,
                                                     std::string_view host, std::string peer) {
  const TlsOptions& o = ctx.options();
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx.ctx());
  if (ssl == nullptr) return InternalError("tls: SSL_new: " + ErrorQueue());
  std::unique_ptr<TlsStream> s(new TlsStream(ssl, std::move(peer)));
  BIO* bio = BIO_new(SocketMethod());
  if (bio == nullptr) return InternalError("tls: BIO_new: " + ErrorQueue());
  BIO_set_data(bio, reinterpret_cast<void*>(static_cast<intptr_t>(fd)));
  SSL_set_bio(ssl, bio, bio);  // the SSL owns it
  if (server) {
    SSL_set_accept_state(ssl);
    SSL_set_verify(ssl, o.require_client_cert ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_NONE,
                   nullptr);
  } else {
    SSL_set_connect_state(ssl);
    SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
    const std::string name = o.server_name.empty() ? std::string(host) : o.server_name;
    unsigned char ip[16];
    const bool is_ip = inet_pton(AF_INET, name.c_str(), ip) == 1 || inet_pton(AF_INET6, name.c_str(), ip) == 1;
    if (is_ip) {
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) != 1) {
        return InvalidArgumentError("tls: cannot verify the address " + name + ": " + ErrorQueue());
      }
    } else if (SSL_set1_host(ssl, name.c_str()) != 1 || SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) {
      return InvalidArgumentError("tls: cannot verify the name " + name + ": " + ErrorQueue());
    }
  }
  s->stage_.resize(kStageBytes);
  return s;
}

TlsStream::~TlsStream() {
  if (error_.ok() && pending_len_ == 0 && SSL_is_init_finished(ssl_)) {
    SSL_shutdown(ssl_);  // close_notify; non-blocking, not waited for
  }
  SSL_free(ssl_);
}

Status TlsStream::Failure(int ssl_error, std::string_view during) {
  const std::string where = "TLS " + std::string(during) + " with " + peer_;
  const std::string closed = during == "handshake" ? ": the peer closed the connection (does it speak TLS?)"
                                                   : ": the peer closed the connection";
  if (ssl_error == SSL_ERROR_ZERO_RETURN) return UnavailableError(where + closed);
  if (ssl_error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    const int err = errno;
    ERR_clear_error();
    if (err == 0) return UnavailableError(where + closed);
    return ErrnoStatus(err, where);
  }
  const unsigned long first = ERR_peek_error();
  const bool cert = ERR_GET_LIB(first) == ERR_LIB_SSL && IsCertificateReason(ERR_GET_REASON(first));
  std::string reason = ErrorQueue();
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    reason = "certificate verify failed: " + std::string(X509_verify_cert_error_string(verify)) + " (" + reason + ")";
    return UnauthenticatedError(where + ": " + reason);
  }
  if (reason.empty()) reason = "OpenSSL error " + std::to_string(ssl_error);
  return cert ? UnauthenticatedError(where + ": " + reason) : UnavailableError(where + ": " + reason);
}

Result<TlsStream::Step> TlsStream::Handshake() {
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) return Step::kDone;
  const int e = SSL_get_error(ssl_, rc);
  if (e == SSL_ERROR_WANT_READ) return Step::kWantRead;
  if (e == SSL_ERROR_WANT_WRITE) return Step::kWantWrite;
  error_ = Failure(e, "handshake");
  return error_;
}

ssize_t TlsStream::Readv(const iovec* iov, int n) {
  if (!error_.ok()) {
    errno = EPROTO;
    return -1;
  }
  size_t total = 0;
  for (int i = 0; i < n; ++i) {
    char* p = static_cast<char*>(iov[i].iov_base);
    size_t left = iov[i].iov_len;
    while (left > 0) {
      ERR_clear_error();
      errno = 0;
      size_t got = 0;
      const int rc = SSL_read_ex(ssl_, p, left, &got);
      if (rc == 1) {
        p += got;
        left -= got;
        total += got;
        continue;
      }
      const int e = SSL_get_error(ssl_, rc);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (total > 0) return static_cast<ssize_t>(total);
        errno = EAGAIN;
        return -1;
      }
      if (e == SSL_ERROR_ZERO_RETURN) return static_cast<ssize_t>(total);  // 0 when nothing came first
      error_ = Failure(e, "receive");
      if (total > 0) return static_cast<ssize_t>(total);  // the error comes with the next call
      errno = EPROTO;
      return -1;
    }
  }
  return static_cast<ssize_t>(total);
}

ssize_t TlsStream::Writev(const iovec* iov, int n) {
  if (!error_.ok()) {
    errno = EPROTO;
    return -1;
  }
  size_t total = 0;
  int i = 0;
  size_t off = 0;  // into iov[i]
  // Copies the next `want` bytes of the iovecs (from i/off) into stage_, or
  // as many as are there and fit.
  auto gather = [&](size_t want, bool small_only) {
    size_t len = 0;
    int j = i;
    size_t o = off;
    while (j < n && len < want) {
      const size_t avail = iov[j].iov_len - o;
      if (small_only && avail >= kDirectBytes) break;
      const size_t take = std::min(avail, want - len);
      std::memcpy(stage_.data() + len, static_cast<const char*>(iov[j].iov_base) + o, take);  // headers, control bytes
      len += take;
      o += take;
      if (o == iov[j].iov_len) {
        ++j;
        o = 0;
      }
    }
    return len;
  };
  while (i < n) {
    if (iov[i].iov_len == off) {
      ++i;
      off = 0;
      continue;
    }
    const char* p;
    size_t len;
    bool staged;
    if (pending_len_ > 0) {
      staged = pending_staged_;
      len = pending_len_;
      p = staged ? stage_.data() : static_cast<const char*>(iov[i].iov_base) + off;
      if (staged) gather(len, false);
    } else if (iov[i].iov_len - off >= kDirectBytes) {
      staged = false;
      p = static_cast<const char*>(iov[i].iov_base) + off;
      len = std::min(iov[i].iov_len - off, kMaxDirectBytes);
    } else {
      staged = true;
      p = stage_.data();
      len = gather(stage_.size(), true);
    }
    ERR_clear_error();
    errno = 0;
    size_t wrote = 0;
    const int rc = SSL_write_ex(ssl_, p, len, &wrote);
    if (rc != 1) {
      const int e = SSL_get_error(ssl_, rc);
      if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        pending_len_ = len;
        pending_staged_ = staged;
        if (total > 0) return static_cast<ssize_t>(total);
        errno = EAGAIN;
        return -1;
      }
      error_ = e == SSL_ERROR_SYSCALL ? RefusedOrFailed(e) : Failure(e, "send");
      errno = EPROTO;
      return -1;
    }
    pending_len_ = 0;
    total += len;
    // Step over the `len` bytes just sent.
    for (size_t left = len; left > 0;) {
      const size_t take = std::min(left, iov[i].iov_len - off);
      left -= take;
      off += take;
      if (off == iov[i].iov_len) {
        ++i;
        off = 0;
      }
    }
  }
  return static_cast<ssize_t>(total);
}

// A send that failed on the socket: a peer that refused us (TLS 1.3: our
// certificate, after our side had finished its handshake) sent an alert
// before it closed, and the alert's reason is the one worth reporting.
Status TlsStream::RefusedOrFailed(int ssl_error) {
  const int err = errno;
  ERR_clear_error();
  char byte;
  size_t got = 0;
  const int rc = SSL_read_ex(ssl_, &byte, 1, &got);
  if (rc != 1 && SSL_get_error(ssl_, rc) == SSL_ERROR_SSL) return Failure(SSL_ERROR_SSL, "send");
  ERR_clear_error();
  errno = err;
  return Failure(ssl_error, "send");
}

bool TlsStream::HasBuffered() const { return SSL_pending(ssl_) > 0; }

std::string TlsStream::Describe() const {
  return std::string(SSL_get_version(ssl_)) + " " + SSL_get_cipher_name(ssl_);
}

}  // namespace tcp
}  // namespace hrpc::transport
