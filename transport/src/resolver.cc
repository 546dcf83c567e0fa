#include "hrpc/transport/resolver.h"

#include <arpa/inet.h>
#include <ares.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "hrpc/coroutine/sync.h"

namespace hrpc::transport {
namespace {

using Clock = std::chrono::steady_clock;

// What one Resolve() waits for; shared with the c-ares callback, which may run
// after a caller whose deadline passed has left.
struct Query {
  std::string host;
  uint16_t port = 0;
  int family = AF_UNSPEC;
  coro::Event done;
  Status status = Status::Ok();
  std::vector<SocketAddress> out;
};

SocketAddress FromSockaddr(const sockaddr* sa, socklen_t len, uint16_t port) {
  SocketAddress a;
  std::memcpy(&a.addr, sa, std::min<size_t>(len, sizeof a.addr));
  a.len = len;
  if (a.addr.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&a.addr)->sin_port = htons(port);
  } else if (a.addr.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&a.addr)->sin6_port = htons(port);
  }
  return a;
}

void OnAddrinfo(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
  std::unique_ptr<std::shared_ptr<Query>> holder(static_cast<std::shared_ptr<Query>*>(arg));
  Query& q = **holder;
  if (status != ARES_SUCCESS) {
    q.status = UnavailableError("cannot resolve '" + q.host + "': " + ares_strerror(status));
  } else {
    for (ares_addrinfo_node* n = result->nodes; n != nullptr; n = n->ai_next) {
      if (n->ai_family != AF_INET && n->ai_family != AF_INET6) continue;
      q.out.push_back(FromSockaddr(n->ai_addr, n->ai_addrlen, q.port));
    }
    if (q.out.empty()) q.status = UnavailableError("cannot resolve '" + q.host + "': no address");
  }
  if (result != nullptr) ares_freeaddrinfo(result);
  q.done.Set();
}

std::once_flag g_ares_init;

}  // namespace

std::string SocketAddress::ToString() const {
  char ip[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "?";
}

Result<SocketAddress> NumericAddress(std::string_view host, uint16_t port, int family) {
  std::string h(host);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  SocketAddress a;
  if (family != AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in*>(&a.addr);
    if (inet_pton(AF_INET, h.c_str(), &in->sin_addr) == 1) {
      in->sin_family = AF_INET;
      in->sin_port = htons(port);
      a.len = sizeof(sockaddr_in);
      return a;
    }
  }
  if (family != AF_INET) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.addr);
    if (inet_pton(AF_INET6, h.c_str(), &in6->sin6_addr) == 1) {
      in6->sin6_family = AF_INET6;
      in6->sin6_port = htons(port);
      a.len = sizeof(sockaddr_in6);
      return a;
    }
  }
  return NotFoundError("'" + std::string(host) + "' is not a numeric address");
}

class Resolver::Impl {
 public:
  ~Impl() {
    bool running;
    {
      std::lock_guard lock(mu_);
      running = thread_.joinable();
    }
    if (running) {
      stop_.store(true, std::memory_order_release);
      Wake();
      thread_.join();
    }
    if (channel_ != nullptr) ares_destroy(channel_);  // pending queries end with ARES_EDESTRUCTION
    if (efd_ >= 0) close(efd_);
    std::lock_guard lock(mu_);
    for (auto& q : queue_) {
      q->status = UnavailableError("resolver stopped");
      q->done.Set();
    }
  }

  Status Init(const ResolverOptions& o) {
    std::call_once(g_ares_init, [] { ares_library_init(ARES_LIB_INIT_ALL); });
    ares_options opts{};
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    opts.timeout = static_cast<int>(o.query_timeout.count());
    opts.tries = o.tries;
    if (const int rc = ares_init_options(&channel_, &opts, mask); rc != ARES_SUCCESS) {
      channel_ = nullptr;
      return InternalError(std::string("c-ares init: ") + ares_strerror(rc));
    }
    if (!o.servers.empty()) {
      std::string csv;
      for (const auto& s : o.servers) {
        if (s.empty() || s.find(',') != std::string::npos) return InvalidArgumentError("bad DNS server '" + s + "'");
        csv += (csv.empty() ? "" : ",") + s;
      }
      if (const int rc = ares_set_servers_ports_csv(channel_, csv.c_str()); rc != ARES_SUCCESS) {
        return InvalidArgumentError("DNS servers '" + csv + "': " + ares_strerror(rc));
      }
    }
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) return ErrnoStatus(errno, "eventfd");
    return Status::Ok();
  }

  void Submit(std::shared_ptr<Query> q) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(q));
      // The thread starts with the first name to resolve: a process that
      // only ever uses numeric addresses never has it.
      if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
    }
    queries_.fetch_add(1, std::memory_order_relaxed);
    Wake();
  }

  uint64_t queries() const noexcept { return queries_.load(std::memory_order_relaxed); }

 private:
  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(efd_, &one, sizeof one);
  }

  void Loop() {
    pthread_setname_np(pthread_self(), "hrpc-resolver");
    while (!stop_.load(std::memory_order_acquire)) {
      ares_socket_t socks[ARES_GETSOCK_MAXNUM];
      const int bits = ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
      pollfd fds[ARES_GETSOCK_MAXNUM + 1];
      fds[0] = {efd_, POLLIN, 0};
      int n = 1;
      for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short ev = 0;
        if (ARES_GETSOCK_READABLE(bits, i)) ev |= POLLIN;
        if (ARES_GETSOCK_WRITABLE(bits, i)) ev |= POLLOUT;
        if (ev == 0) continue;
        fds[n++] = {socks[i], ev, 0};
      }
      timeval tv{};
      const timeval* t = ares_timeout(channel_, nullptr, &tv);
      const int ms = t == nullptr ? -1 : static_cast<int>(t->tv_sec * 1000 + (t->tv_usec + 999) / 1000);
      const int rc = poll(fds, n, ms);
      if (rc < 0 && errno != EINTR) {
        // Never leave the loop while the resolver lives: queries would wait
        // for a thread that is gone. Log, pause, and poll again.
        SPDLOG_ERROR("hrpc resolver: poll: {}", std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      for (int i = 1; i < n; ++i) {
        const bool r = fds[i].revents & (POLLIN | POLLERR | POLLHUP);
        const bool w = fds[i].revents & (POLLOUT | POLLERR | POLLHUP);
        if (r || w) ares_process_fd(channel_, r ? fds[i].fd : ARES_SOCKET_BAD, w ? fds[i].fd : ARES_SOCKET_BAD);
      }
      ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
      if (fds[0].revents & POLLIN) {
        uint64_t v;
        [[maybe_unused]] ssize_t r = read(efd_, &v, sizeof v);
      }
      std::deque<std::shared_ptr<Query>> batch;
      {
        std::lock_guard lock(mu_);
        batch.swap(queue_);
      }
      for (auto& q : batch) {
        ares_addrinfo_hints hints{};
        hints.ai_family = q->family;
        hints.ai_socktype = SOCK_STREAM;
        const std::string port = std::to_string(q->port);
        const std::string host = q->host;
        ares_getaddrinfo(channel_, host.c_str(), port.c_str(), &hints, OnAddrinfo,
                         new std::shared_ptr<Query>(std::move(q)));
      }
    }
  }

  ares_channel channel_ = nullptr;
  int efd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::deque<std::shared_ptr<Query>> queue_;
  std::atomic<uint64_t> queries_{0};
};

Result<std::unique_ptr<Resolver>> Resolver::Create(ResolverOptions options) {
  if (options.query_timeout.count() <= 0 || options.tries <= 0) {
    return InvalidArgumentError("resolver: query_timeout and tries must be positive");
  }
  auto impl = std::make_unique<Impl>();
  HRPC_TRY(impl->Init(options));
  return std::unique_ptr<Resolver>(new Resolver(std::move(impl)));
}

Resolver& Resolver::Default() {
  // Never destroyed: connections may resolve while the process exits.
  static Resolver* const r = [] {
    auto made = Create();
    if (!made.ok()) {
      SPDLOG_CRITICAL("hrpc resolver: {}", made.status().ToString());
      std::abort();
    }
    return made->release();
  }();
  return *r;
}

Resolver::Resolver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Resolver::~Resolver() = default;

uint64_t Resolver::queries() const noexcept { return impl_->queries(); }

Result<std::vector<SocketAddress>> Resolver::Resolve(std::string_view host, uint16_t port, int family,
                                                     Clock::time_point deadline, std::stop_token stop) {
  if (host.empty()) return InvalidArgumentError("cannot resolve an empty host name");
  if (auto numeric = NumericAddress(host, port, family); numeric.ok()) {
    return std::vector<SocketAddress>{*numeric};
  }
  auto q = std::make_shared<Query>();
  q->host = std::string(host);
  q->port = port;
  q->family = family;
  impl_->Submit(q);
  {
    // The query stays with the resolver's thread (its callback holds it).
    std::stop_callback wake(stop, [q] { q->done.Set(); });
    if (!q->done.WaitUntil(deadline).ok() && !q->done.IsSet()) {
      return DeadlineExceededError("resolving '" + q->host + "' took too long");
    }
  }
  // Stop was requested before the wake-up (or this one was its): the answer,
  // if any, is not waited for nor read.
  if (stop.stop_requested()) return CancelledError("resolving '" + q->host + "' was cancelled");
  HRPC_TRY(q->status);
  return std::move(q->out);
}

}  // namespace hrpc::transport
