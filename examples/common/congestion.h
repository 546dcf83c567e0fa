// TCP congestion control for the benchmarks' raw-socket baselines: the one
// hrpc's TCP transport gives connections between two ends on this host
// (TcpOptions::loopback_congestion_control), so a raw baseline and hrpc run
// under the same algorithm (docs/transport.md, "Congestion control").
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <fstream>
#include <string>

#include "hrpc/transport/tcp.h"

namespace hrpc::examples {

inline std::string LoopbackCongestion() { return transport::TcpOptions{}.loopback_congestion_control; }

// Sets `algo` on a TCP socket; empty leaves the system default.
inline void SetCongestion(int fd, const std::string& algo = LoopbackCongestion()) {
  if (!algo.empty()) setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, algo.data(), static_cast<socklen_t>(algo.size()));
}

// The system default (net.ipv4.tcp_congestion_control), "unknown" if unreadable.
inline std::string SystemCongestion() {
  std::ifstream f("/proc/sys/net/ipv4/tcp_congestion_control");
  std::string s;
  std::getline(f, s);
  return s.empty() ? "unknown" : s;
}

}  // namespace hrpc::examples
