// The built-in HTTP endpoint on cpp-httplib (Debian's libcpp-httplib-dev).
// Threads: one accepts (listen_after_bind), two serve requests (a small
// httplib::ThreadPool, so a slow or keep-alive client does not hold back a
// Prometheus scrape); none of them is a worker of the runtime.
#include <pthread.h>

#include <httplib.h>

#include <chrono>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "hrpc/transport/transport.h"
#include "observability.h"

namespace hrpc::internal {

class HttpEndpoint::Impl {
 public:
  httplib::Server server;
  std::thread thread;
};

namespace {
constexpr size_t kRequestThreads = 2;

void NameThisThread() {
  thread_local bool named = false;
  if (!named) {
    ::pthread_setname_np(::pthread_self(), "hrpc-http");
    named = true;
  }
}
}  // namespace

Result<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& listen,
                                                          std::map<std::string, Handler> routes) {
  std::string addr = listen;
  if (addr.rfind("http://", 0) == 0) addr = addr.substr(7);
  while (!addr.empty() && addr.back() == '/') addr.pop_back();
  auto uri = transport::ParseUri("tcp://" + addr);
  if (!uri.ok()) {
    return InvalidArgumentError("http_listen '" + listen + "': want host:port (" + uri.status().ToString() + ")");
  }
  std::unique_ptr<HttpEndpoint> ep(new HttpEndpoint());
  ep->impl_ = std::make_unique<Impl>();
  httplib::Server& svr = ep->impl_->server;
  svr.new_task_queue = [] { return new httplib::ThreadPool(kRequestThreads); };
  svr.set_keep_alive_timeout(2);
  svr.set_read_timeout(5);
  svr.set_write_timeout(5);
  for (auto& [path, handler] : routes) {
    svr.Get(path, [handler = std::move(handler), path = path](const httplib::Request& req, httplib::Response& res) {
      NameThisThread();
      Request r;
      r.path = path;
      for (const auto& [k, v] : req.params) r.params[k] = v;
      const auto fmt = r.params.find("format");
      if (fmt != r.params.end()) {
        r.wants_html = fmt->second == "html";
      } else {
        r.wants_html = req.get_header_value("Accept").find("text/html") != std::string::npos;
      }
      Response out;
      try {
        out = handler(r);
      } catch (const std::exception& e) {
        out = Response{500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
      }
      res.status = out.status;
      res.set_content(std::move(out.body), out.content_type.c_str());
    });
  }
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404) {
      res.set_content("not found: " + req.path + " (try /metrics /status /rpcz /health)\n", "text/plain; charset=utf-8");
    }
  });
  // IPv6 literals come back from ParseUri without brackets.
  const std::string host = uri->host;
  int port = uri->port;
  if (port == 0) {
    port = svr.bind_to_any_port(host);
    if (port < 0) return UnavailableError("http endpoint: cannot bind " + host + ":0");
  } else if (!svr.bind_to_port(host, port)) {
    return UnavailableError("http endpoint: cannot bind " + host + ":" + std::to_string(port) +
                            " (in use, or not an address of this host)");
  }
  ep->address_ = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  ep->impl_->thread = std::thread([&svr] {
    ::pthread_setname_np(::pthread_self(), "hrpc-http");
    if (!svr.listen_after_bind()) SPDLOG_WARN("hrpc http endpoint: stopped serving");
  });
  // stop() only stops a server that runs: wait for it to, so Stop() right
  // after Start() cannot miss it.
  for (int i = 0; i < 5000 && !svr.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!svr.is_running()) {
    ep->Stop();
    return UnavailableError("http endpoint on " + listen + " did not start");
  }
  return ep;
}

HttpEndpoint::~HttpEndpoint() { Stop(); }

void HttpEndpoint::Stop() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_.reset();
}

}  // namespace hrpc::internal
