// A TCP relay on 127.0.0.1 in front of a local port, for tests that need to
// shape what a connection's bytes do on the way: hold them back for a while
// after the accept (a connect that takes long to complete), or pass them on
// in small random pieces with pauses (a receiver whose reads end anywhere).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

namespace hrpc::testing {

struct TcpRelayOptions {
  // Nothing is passed on either way until this long after the accept (the
  // client's TCP connect completes at once).
  std::chrono::milliseconds hold{0};
  // > 0: each read is passed on in pieces of 1..max_piece bytes, with a pause
  // of up to max_pause after some of them.
  size_t max_piece = 0;
  std::chrono::microseconds max_pause{0};
  uint32_t seed = 1;
};

class TcpRelay {
 public:
  TcpRelay(uint16_t target_port, TcpRelayOptions o) : target_port_(target_port), o_(o) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = Loopback(0);
    socklen_t len = sizeof a;
    if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        listen(listen_fd_, 8) != 0 || getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("relay: cannot listen");
    }
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~TcpRelay() {
    stop_.store(true);
    acceptor_.join();
    for (auto& t : relays_) t.join();
    close(listen_fd_);
  }
  TcpRelay(const TcpRelay&) = delete;
  TcpRelay& operator=(const TcpRelay&) = delete;

  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }
  // Bytes passed on, both ways together.
  uint64_t relayed() const { return relayed_.load(); }

 private:
  static sockaddr_in Loopback(uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    return a;
  }
  void Accept() {
    while (!stop_.load()) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 20) != 1) continue;
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      const uint32_t seed = o_.seed + static_cast<uint32_t>(accepted_.fetch_add(1));
      relays_.emplace_back([this, fd, seed] { Relay(fd, seed); });
    }
  }
  void Relay(int client, uint32_t seed) {
    const auto until = std::chrono::steady_clock::now() + o_.hold;
    while (!stop_.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::mt19937 rng(seed);
    const int server = socket(AF_INET, SOCK_STREAM, 0);
    const sockaddr_in a = Loopback(target_port_);
    if (server >= 0 && connect(server, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) {
      const int one = 1;
      setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      std::vector<char> buf(256 * 1024);
      bool open = true;
      while (open && !stop_.load()) {
        if (poll(p, 2, 20) <= 0) continue;
        for (int i = 0; i < 2 && open; ++i) {
          if (p[i].revents == 0) continue;
          const ssize_t n = read(p[i].fd, buf.data(), buf.size());
          open = n > 0 && Pass(p[1 - i].fd, buf.data(), static_cast<size_t>(n), rng);
        }
      }
    }
    if (server >= 0) close(server);
    close(client);
  }
  bool Pass(int fd, const char* p, size_t n, std::mt19937& rng) {
    while (n > 0) {
      size_t piece = n;
      if (o_.max_piece > 0) piece = std::min<size_t>(n, 1 + rng() % o_.max_piece);
      if (!WriteAll(fd, p, piece)) return false;
      relayed_.fetch_add(piece);
      p += piece;
      n -= piece;
      if (o_.max_pause.count() > 0 && rng() % 4 == 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % (o_.max_pause.count() + 1)));
      }
    }
    return true;
  }
  // False once the peer is gone (no SIGPIPE) or the relay stops: a peer that
  // no longer reads never keeps the destructor waiting.
  bool WriteAll(int fd, const char* p, size_t n) {
    while (n > 0) {
      if (stop_.load()) return false;
      pollfd out{fd, POLLOUT, 0};
      if (poll(&out, 1, 20) <= 0) continue;
      const ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  const uint16_t target_port_;
  const TcpRelayOptions o_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::atomic<uint64_t> relayed_{0};
  std::thread acceptor_;
  std::vector<std::thread> relays_;  // started by the acceptor only
};

}  // namespace hrpc::testing
