// Resolver: host names to addresses without blocking a worker.
//
// Names are resolved by c-ares on a thread of the resolver's own (one per
// Resolver, started by the first name it is asked for), so a worker that
// connects to "storage-7:7000" suspends only the connecting coroutine. A
// numeric address ("10.0.0.1", "::1") is converted in place, without a thread
// hop (a process that only uses numeric addresses never starts the thread).
// From a plain thread, Resolve() blocks that thread.
//
// Errors: UNAVAILABLE "cannot resolve 'name': <c-ares reason>" (unknown name,
// no answer, server failure), DEADLINE_EXCEEDED when `deadline` passes first,
// INVALID_ARGUMENT for an empty name or a port out of range.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"

namespace hrpc::transport {

struct SocketAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string ToString() const;  // "10.0.0.1:7000", "[::1]:7000"
};

struct ResolverOptions {
  // DNS servers to ask, "ip" or "ip:port" ("127.0.0.1:5353"); empty: the
  // system's (/etc/resolv.conf), with /etc/hosts consulted first.
  std::vector<std::string> servers;
  // Per-query timeout and attempts per server (c-ares' own retry).
  std::chrono::milliseconds query_timeout{1000};
  int tries = 2;
};

class Resolver {
 public:
  // INVALID_ARGUMENT for a bad server entry; INTERNAL when c-ares cannot start.
  static Result<std::unique_ptr<Resolver>> Create(ResolverOptions options = {});
  // The process's resolver with default options (system configuration).
  static Resolver& Default();
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Every address of `host` (`family`: AF_UNSPEC, AF_INET or AF_INET6), in the
  // order the resolver returned them, each with `port`. DEADLINE_EXCEEDED at
  // `deadline`; CANCELLED as soon as `stop` is requested (from any thread).
  Result<std::vector<SocketAddress>> Resolve(
      std::string_view host, uint16_t port, int family = AF_UNSPEC,
      std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max(),
      std::stop_token stop = {});

  // Names resolved through c-ares (numeric ones are not counted).
  uint64_t queries() const noexcept;

  class Impl;

 private:
  explicit Resolver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `host` as a numeric address literal with `port`; NOT_FOUND when it is a name.
Result<SocketAddress> NumericAddress(std::string_view host, uint16_t port, int family = AF_UNSPEC);

}  // namespace hrpc::transport
