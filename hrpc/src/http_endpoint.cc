// The built-in HTTP endpoint on GNU libmicrohttpd (Debian's libmicrohttpd-dev).
// Two threads of its own (libmicrohttpd names them MHD-worker), each an epoll
// loop over its share of the connections, neither a worker of the runtime: a
// slow or idle client holds no thread, only its connection. What a client can
// take is bounded: kMaxConnections connections (then new ones are closed at
// once), a request's headers within kConnectionMemory bytes (else 431),
// kIdleSeconds without a byte before its connection is closed, GET and HEAD
// only (anything else is answered 405 without reading its body). Stop()
// closes every connection and joins the threads, whatever the clients do.
#include <netdb.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include <cstring>
#include <string_view>
#include <utility>

#include "hrpc/transport/transport.h"
#include "observability.h"

namespace hrpc::internal {

namespace {
constexpr unsigned kRequestThreads = 2;
constexpr unsigned kMaxConnections = 64;
// Per client address: a host that keeps connections busy (headers sent a
// byte at a time restart the idle timeout) holds at most this many.
constexpr unsigned kMaxConnectionsPerAddress = 8;
constexpr size_t kConnectionMemory = 32 * 1024;
constexpr unsigned kIdleSeconds = 5;
}  // namespace

class HttpEndpoint::Impl {
 public:
  std::map<std::string, Handler> routes;
  MHD_Daemon* daemon = nullptr;

  static MHD_Result Answer(void* cls, MHD_Connection* conn, const char* url, const char* method, const char*,
                           const char*, size_t*, void**) {
    auto* self = static_cast<Impl*>(cls);
    const std::string_view m(method);
    if (m != MHD_HTTP_METHOD_GET && m != MHD_HTTP_METHOD_HEAD) {
      return Send(conn, Response{405, "text/plain; charset=utf-8", "only GET and HEAD\n"}, "GET, HEAD");
    }
    auto route = self->routes.find(url);
    if (route == self->routes.end()) {
      return Send(conn, Response{404, "text/plain; charset=utf-8",
                                 std::string("not found: ") + url + " (try /metrics /status /rpcz /health)\n"});
    }
    Request r;
    r.path = route->first;
    MHD_get_connection_values(
        conn, MHD_GET_ARGUMENT_KIND,
        [](void* params, MHD_ValueKind, const char* key, const char* value) -> MHD_Result {
          (*static_cast<std::map<std::string, std::string>*>(params))[key] = value != nullptr ? value : "";
          return MHD_YES;
        },
        &r.params);
    const auto fmt = r.params.find("format");
    if (fmt != r.params.end()) {
      r.wants_html = fmt->second == "html";
    } else {
      const char* accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
      r.wants_html = accept != nullptr && std::strstr(accept, "text/html") != nullptr;
    }
    Response out;
    try {
      out = route->second(r);
    } catch (const std::exception& e) {
      out = Response{500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
    }
    return Send(conn, out);
  }

  static MHD_Result Send(MHD_Connection* conn, const Response& out, const char* allow = nullptr) {
    MHD_Response* res =
        MHD_create_response_from_buffer(out.body.size(), const_cast<char*>(out.body.data()), MHD_RESPMEM_MUST_COPY);
    if (res == nullptr) return MHD_NO;
    MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, out.content_type.c_str());
    if (allow != nullptr) MHD_add_response_header(res, MHD_HTTP_HEADER_ALLOW, allow);
    const MHD_Result queued = MHD_queue_response(conn, static_cast<unsigned>(out.status), res);
    MHD_destroy_response(res);
    return queued;
  }
};

Result<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& listen,
                                                          std::map<std::string, Handler> routes) {
  std::string addr = listen;
  if (addr.rfind("http://", 0) == 0) addr = addr.substr(7);
  while (!addr.empty() && addr.back() == '/') addr.pop_back();
  auto uri = transport::ParseUri("tcp://" + addr);
  if (!uri.ok()) {
    return InvalidArgumentError("http_listen '" + listen + "': want host:port (" + uri.status().ToString() + ")");
  }
  // IPv6 literals come back from ParseUri without brackets.
  const std::string host = uri->host;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port_text = std::to_string(uri->port);
  if (int rc = ::getaddrinfo(host.c_str(), port_text.c_str(), &hints, &found); rc != 0 || found == nullptr) {
    return UnavailableError("http endpoint: cannot resolve " + host + ": " + ::gai_strerror(rc));
  }
  sockaddr_storage sa{};
  std::memcpy(&sa, found->ai_addr, found->ai_addrlen);
  ::freeaddrinfo(found);

  std::unique_ptr<HttpEndpoint> ep(new HttpEndpoint());
  ep->impl_ = std::make_unique<Impl>();
  Impl* impl = ep->impl_.get();
  impl->routes = std::move(routes);
  // MHD_USE_ITC: Stop() wakes the threads at once (not at their next timeout).
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC;
  if (sa.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  impl->daemon = MHD_start_daemon(
      flags, 0, nullptr, nullptr, &Impl::Answer, impl, MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&sa),
      MHD_OPTION_THREAD_POOL_SIZE, kRequestThreads, MHD_OPTION_CONNECTION_LIMIT, kMaxConnections,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, kMaxConnectionsPerAddress,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, kConnectionMemory, MHD_OPTION_CONNECTION_TIMEOUT, kIdleSeconds,
      MHD_OPTION_END);
  if (impl->daemon == nullptr) {
    return UnavailableError("http endpoint: cannot bind " + host + ":" + port_text +
                            " (in use, or not an address of this host)");
  }
  int port = uri->port;
  if (port == 0) {
    const MHD_DaemonInfo* info = MHD_get_daemon_info(impl->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (info == nullptr || info->port == 0) {
      ep->Stop();
      return UnavailableError("http endpoint: no port bound for " + host + ":0");
    }
    port = info->port;
  }
  ep->address_ = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  return ep;
}

HttpEndpoint::~HttpEndpoint() { Stop(); }

void HttpEndpoint::Stop() {
  if (!impl_) return;
  if (impl_->daemon != nullptr) MHD_stop_daemon(impl_->daemon);
  impl_.reset();
}

}  // namespace hrpc::internal
