// echo_bench: hrpc unary calls vs gRPC and raw sockets, server and client in
// separate processes pinned to different cores (--server_cpu, --client_cpu),
// one server and one client thread. One line per case:
//
//   echo_bench transport=raw poll=block case=pingpong payload=64 concurrency=1 rps=... p50_us=... p99_us=... MBps=... cpu=C/S
//   echo_bench transport=raw case=stream payload=1048576 concurrency=1 rps=... MBps=... cpu=C/S
//   echo_bench transport=grpc case=echo payload=4096 concurrency=32 rps=... p50_us=... MBps=... cpu=C/S rounds=3
//   echo_bench transport=tcp poll=spin50us+block case=echo payload=4096 concurrency=32 ... ratio_vs_grpc=... rounds=3
//   echo_bench transport=tcp poll=block case=oneway payload=1048576 concurrency=8 ... ratio_vs_raw_stream=... rounds=3
//
// cpu=C/S: client and server process CPU in % of one core over the measured
// window. MBps = payload bytes per second (both directions for echo cases).
//
// The echo cases send the payload and get it back: gRPC carries it as a
// `bytes` field (bench/grpc_echo: async completion queues, a separate program
// this one runs from its own directory), hrpc as the request and response
// attachment (inline up to 16 KiB, else streamed behind the frame). Each case
// runs --rounds interleaved rounds (gRPC, hrpc spin-then-block, hrpc blocking)
// and prints the round with the median rps; ratio_vs_grpc = hrpc rps / gRPC
// rps. The 64 B concurrency-1 echo lines of hrpc add p50_vs_raw: their p50
// over the raw 64 B ping-pong's in the same polling mode, and mean_vs_raw:
// the raw ping-pong's rps over theirs (with one call in flight, the ratio of
// the mean round trips, free of the histogram's buckets). The one-way cases
// (hrpc only: a request attachment, an empty response) add
// ratio_vs_raw_stream: their MBps over the raw 1 MiB stream's (1 MiB buffers,
// cache-resident), and the 64 MiB call also ratio_vs_raw_stream_64MiB (a
// stream of 64 MiB writes into a 64 MiB buffer). Those raw baselines are
// measured again in every round of their case, and the case's lines use the
// medians, printed first with per_round=. hrpc polls in two modes:
// poll=spin<N>us+block (the scheduler's spin_budget, then epoll) and
// poll=block (spin_budget = 0). gRPC polls as it does by default. The raw
// baselines spin on a non-blocking socket for --spin_us, then poll(); the raw
// ping-pong also runs with both sides blocking at once (poll=block). hrpc's
// and the raw sockets use the congestion control hrpc gives loopback
// connections (--congestion), gRPC the system's; the first line names both.
//
// The metrics cases (--cases=metrics, part of all) measure what observability
// costs: the same hrpc echo against a server without the HTTP endpoint
// (metrics=off: the counters every server keeps) and one with it, scraped
// (metrics=on: /metrics fetched every --scrape_ms by a thread of this
// process, as Prometheus would, with /rpcz recording the calls' phases),
// interleaved rounds; the metrics=on line adds ratio_vs_off (rps) and
// p50_vs_off / p99_vs_off (latency), and the scrapes done and their mean
// time:
//
//   echo_bench transport=tcp metrics=on scrape_ms=100 case=echo payload=64 concurrency=32 rps=... ratio_vs_off=... scrapes=... scrape_ms_mean=... rounds=3
#include <arpa/inet.h>
#include <linux/errqueue.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/echo_service.h"
#include "common/cli.h"
#include "common/load.h"
#include "common/congestion.h"
#include "common/proc_cpu.h"

#include <spdlog/spdlog.h>

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  int server_cpu = 0;
  int client_cpu = 1;
  uint64_t spin_us = 50;
  double duration = 1.0;
  double warmup = 0.3;
  size_t rounds = 3;
  std::string cases = "all";  // all | raw | rpc | metrics
  std::string only;           // rpc cases: comma-separated PAYLOADxCONCURRENCY (empty: every case)
  std::string grpc_echo;      // path of the grpc_echo program
  bool http = false;          // hrpc-server role: with the HTTP endpoint
  uint64_t scrape_ms = 100;   // metrics cases: /metrics every this many ms
  // TCP congestion control of hrpc's and the raw sockets; empty: the system's.
  std::string congestion = hrpc::examples::LoopbackCongestion();
};

using hrpc::examples::SetCongestion;
using hrpc::examples::SystemCongestion;

void Pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

using hrpc::examples::ProcCpuNs;

// --- raw sockets -----------------------------------------------------------

bool WaitFd(int fd, short ev) {
  pollfd p{fd, ev, 0};
  return ::poll(&p, 1, -1) >= 0;
}

// Exactly n bytes; spins on MSG_DONTWAIT for spin_us, then poll().
bool RecvAll(int fd, char* p, size_t n, uint64_t spin_us) {
  auto spin_until = Clock::now() + std::chrono::microseconds(spin_us);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      spin_until = Clock::now() + std::chrono::microseconds(spin_us);
      continue;
    }
    if (r == 0) return false;
    if (errno != EAGAIN && errno != EINTR) return false;
    if (Clock::now() >= spin_until && !WaitFd(fd, POLLIN)) return false;
  }
  return true;
}

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r > 0) {
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (!WaitFd(fd, POLLOUT)) return false;
  }
  return true;
}

// Sends n bytes with MSG_ZEROCOPY (the socket has SO_ZEROCOPY); counts the
// sends and, from the completion notifications read so far, how many the
// kernel ended up copying anyway (SO_EE_CODE_ZEROCOPY_COPIED).
struct ZeroCopyCounts {
  uint64_t sends = 0, completed = 0, copied = 0;
};
void DrainZeroCopy(int fd, ZeroCopyCounts& z) {
  for (;;) {
    char control[128];
    msghdr mh{};
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    if (::recvmsg(fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) return;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm != nullptr; cm = CMSG_NXTHDR(&mh, cm)) {
      if (!(cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR)) continue;
      sock_extended_err ee;
      std::memcpy(&ee, CMSG_DATA(cm), sizeof ee);
      if (ee.ee_errno != 0 || ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
      const uint64_t n = uint64_t{ee.ee_data} - ee.ee_info + 1;
      z.completed += n;
      if (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) z.copied += n;
    }
  }
}
bool SendAllZeroCopy(int fd, const char* p, size_t n, ZeroCopyCounts& z) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL | MSG_ZEROCOPY);
    if (r > 0) {
      ++z.sends;
      p += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == ENOBUFS) {  // too many pages pinned: wait for completions
      DrainZeroCopy(fd, z);
      continue;
    }
    if (r < 0 && errno != EAGAIN && errno != EINTR) return false;
    DrainZeroCopy(fd, z);
    if (!WaitFd(fd, POLLOUT)) return false;
  }
  DrainZeroCopy(fd, z);
  return true;
}

int RawServerMain(const Config& cfg) {
  Pin(cfg.server_cpu);
  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(ls, 16) != 0) return 1;
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  std::printf("READY tcp://127.0.0.1:%d\n", ntohs(a.sin_port));
  std::fflush(stdout);
  std::vector<char> buf(1 << 20);
  for (;;) {
    int fd = ::accept(ls, nullptr, nullptr);
    if (fd < 0) continue;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SetCongestion(fd, cfg.congestion);
    char mode = 0;
    uint32_t size = 0;
    if (!RecvAll(fd, &mode, 1, cfg.spin_us) || !RecvAll(fd, reinterpret_cast<char*>(&size), 4, cfg.spin_us)) {
      ::close(fd);
      continue;
    }
    if (mode == 'p' || mode == 'b') {  // ping-pong: spinning first ('p'), or blocking at once ('b')
      const uint64_t spin = mode == 'p' ? cfg.spin_us : 0;
      while (RecvAll(fd, buf.data(), size, spin) && SendAll(fd, buf.data(), size)) {
      }
    } else if (mode == 's') {
      // Each `size`-byte message lands in the same place of a buffer of its
      // size, as a received payload lands in pool blocks reused call to call.
      std::vector<char> sbuf(std::max<size_t>(size, 1));
      uint64_t total = 0;
      for (;;) {
        const size_t off = total % sbuf.size();
        ssize_t r = ::recv(fd, sbuf.data() + off, sbuf.size() - off, 0);
        if (r <= 0) break;
        total += static_cast<uint64_t>(r);
      }
      SendAll(fd, reinterpret_cast<char*>(&total), sizeof total);
    }
    ::close(fd);
  }
}

int RawConnect(const std::string& uri, char mode, uint32_t size, const std::string& congestion) {
  const int port = std::stoi(uri.substr(uri.rfind(':') + 1));
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  SetCongestion(fd, congestion);
  SendAll(fd, &mode, 1);
  SendAll(fd, reinterpret_cast<char*>(&size), 4);
  return fd;
}

// --- hrpc server -------------------------------------------------------------

int HrpcServerMain(const Config& cfg) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.runtime.workers = 1;
  if (cfg.server_cpu >= 0) so.runtime.cpus = {cfg.server_cpu};
  so.runtime.spin_budget = std::chrono::microseconds(cfg.spin_us);
  so.runtime.tcp.loopback_congestion_control = cfg.congestion;
  if (cfg.http) so.http_listen = "127.0.0.1:0";
  auto server = hrpc::Server::Create(so);
  if (!server.ok()) {
    std::fprintf(stderr, "echo_bench server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  hrpc::examples::EchoServiceImpl service(server->get());
  if (!(*server)->RegisterService(&service).ok() || !(*server)->Start().ok()) return 1;
  if (cfg.http) {
    std::printf("READY %s %s\n", (*server)->listen_uris().at(0).c_str(), (*server)->http_address().c_str());
  } else {
    std::printf("READY %s\n", (*server)->listen_uris().at(0).c_str());
  }
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  (*server)->Shutdown();
  return 0;
}

struct Child {
  pid_t pid = -1;
  std::string uri;
  FILE* out = nullptr;  // the child's stdout: kept open so its later log lines do not hit SIGPIPE
};

// Starts args[0] with its stdout on a pipe, pinned to `cpu` (-1: not pinned).
// Returns the pid and the read end of the pipe (nullptr, -1 on failure).
pid_t StartPinned(std::vector<std::string> args, int cpu, FILE** out) {
  *out = nullptr;
  int fds[2];
  if (pipe(fds) != 0) return -1;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    Pin(cpu);
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  *out = fdopen(fds[0], "r");
  return pid;
}

// StartPinned, then waits for its "READY <rest>" line: Child::uri = <rest>,
// empty if none came.
Child SpawnReady(std::vector<std::string> args, int cpu) {
  Child c;
  c.pid = StartPinned(std::move(args), cpu, &c.out);
  char line[256];
  while (c.out && fgets(line, sizeof line, c.out)) {  // skips log lines
    std::string s(line);
    if (s.rfind("READY ", 0) == 0) {
      c.uri = s.substr(6, s.find_last_not_of("\r\n") - 5);
      break;
    }
  }
  return c;
}

Child Spawn(const char* self, const std::string& role, const Config& cfg) {
  std::vector<std::string> args = {self, "--role=" + role, "--server_cpu=" + std::to_string(cfg.server_cpu),
                                   "--spin_us=" + std::to_string(cfg.spin_us),
                                   "--congestion=" + (cfg.congestion.empty() ? "system" : cfg.congestion)};
  if (cfg.http) args.push_back("--http=1");
  return SpawnReady(std::move(args), -1);
}

// Runs args[0] pinned to `cpu` to completion; its last stdout line that starts
// with `prefix`, split into key=value pairs (empty when there is none).
std::map<std::string, std::string> RunForLine(std::vector<std::string> args, int cpu, const std::string& prefix) {
  std::map<std::string, std::string> kv;
  FILE* f = nullptr;
  const pid_t pid = StartPinned(std::move(args), cpu, &f);
  if (pid < 0) return kv;
  std::string last;
  char line[1024];
  while (f && fgets(line, sizeof line, f)) {
    if (std::string(line).rfind(prefix, 0) == 0) last = line;
  }
  if (f) fclose(f);
  int st;
  waitpid(pid, &st, 0);
  std::istringstream in(last);
  std::string tok;
  while (in >> tok) {
    const size_t eq = tok.find('=');
    if (eq != std::string::npos) kv[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return kv;
}

void Stop(Child& c) {
  if (c.pid <= 0) return;
  kill(c.pid, SIGTERM);
  int st;
  waitpid(c.pid, &st, 0);
  c.pid = -1;
  if (c.out) fclose(c.out);
  c.out = nullptr;
}

// What the raw-socket baselines measured, for the ratios on the hrpc lines.
struct RawBaseline {
  double pingpong_p50_us = 0;        // 64 B ping-pong, both sides spinning --spin_us before they sleep
  double pingpong_block_p50_us = 0;  // the same, both sides blocking at once
  double pingpong_rps = 0;           // their round trips per second (1 / the mean round trip)
  double pingpong_block_rps = 0;
  double stream_mbps = 0;      // 1 MiB writes, one way
  double stream_64m_mbps = 0;  // 64 MiB writes from and into 64 MiB buffers, one way
};

// 64 B ping-pong over a raw socket: spinning `spin` µs before sleeping (mode
// 'p', as the hrpc spin-then-block mode does) or blocking at once ('b', the
// poll=block mode's baseline). Returns the p50 in µs and the round trips per
// second; prints its line when `print`.
struct PingpongResult {
  double p50_us = 0;
  double rps = 0;
};
PingpongResult RawPingpong(const Child& srv, const Config& cfg, char mode, uint64_t spin, const char* label,
                           bool print = true) {
  Pin(cfg.client_cpu);
  const uint32_t size = 64;
  int fd = RawConnect(srv.uri, mode, size, cfg.congestion);
  std::vector<char> buf(size, 'x');
  hrpc::LatencyHistogram hist;
  const auto warm_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.warmup));
  while (Clock::now() < warm_end) {
    SendAll(fd, buf.data(), size);
    RecvAll(fd, buf.data(), size, spin);
  }
  const uint64_t c0 = hrpc::examples::SelfCpuNs(), s0 = ProcCpuNs(srv.pid);
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.duration));
  uint64_t n = 0;
  for (auto now = t0; now < end; ++n) {
    SendAll(fd, buf.data(), size);
    RecvAll(fd, buf.data(), size, spin);
    const auto t = Clock::now();
    hist.Record(std::chrono::duration_cast<std::chrono::nanoseconds>(t - now));
    now = t;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const uint64_t c1 = hrpc::examples::SelfCpuNs(), s1 = ProcCpuNs(srv.pid);
  ::close(fd);
  if (print) {
    std::printf("echo_bench transport=raw %s case=pingpong payload=%u concurrency=1 rps=%.0f p50_us=%.1f "
                "p99_us=%.1f MBps=%.1f cpu=%.0f/%.0f\n",
                label, size, n / secs, hist.Quantile(0.5) / 1e3, hist.Quantile(0.99) / 1e3, n * size / secs / 1e6,
                (c1 - c0) / 1e9 / secs * 100, (s1 - s0) / 1e9 / secs * 100);
    std::fflush(stdout);
  }
  return {hist.Quantile(0.5) / 1e3, n / secs};
}

// One way, `size`-byte writes from one buffer into one buffer of that size:
// 1 MiB buffers stay in the cache on both sides; 64 MiB ones do not, as a
// single 64 MiB call's payload does not. Returns MB/s; prints its line when
// `print`.
double RawStream(const Child& srv, const Config& cfg, uint32_t size, bool print = true) {
  Pin(cfg.client_cpu);
  int fd = RawConnect(srv.uri, 's', size, cfg.congestion);
  std::vector<char> buf(size, 'y');
  const auto warm_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.warmup));
  do {
    SendAll(fd, buf.data(), size);
  } while (Clock::now() < warm_end);
  const uint64_t c0 = hrpc::examples::SelfCpuNs(), s0 = ProcCpuNs(srv.pid);
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.duration));
  uint64_t n = 0;
  while (Clock::now() < end) {
    SendAll(fd, buf.data(), size);
    ++n;
  }
  ::shutdown(fd, SHUT_WR);
  uint64_t total = 0;
  RecvAll(fd, reinterpret_cast<char*>(&total), sizeof total, cfg.spin_us);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const uint64_t c1 = hrpc::examples::SelfCpuNs(), s1 = ProcCpuNs(srv.pid);
  ::close(fd);
  if (print) {
    std::printf("echo_bench transport=raw case=stream payload=%u concurrency=1 rps=%.0f MBps=%.1f cpu=%.0f/%.0f\n",
                size, n / secs, n * double(size) / secs / 1e6, (c1 - c0) / 1e9 / secs * 100,
                (s1 - s0) / 1e9 / secs * 100);
    std::fflush(stdout);
  }
  return n * double(size) / secs / 1e6;
}

RawBaseline RawCases(const char* self, const Config& cfg) {
  RawBaseline base;
  Child srv = Spawn(self, "raw-server", cfg);
  if (srv.uri.empty()) {
    std::printf("echo_bench transport=raw error=server-did-not-start\n");
    return base;
  }
  Pin(cfg.client_cpu);
  // Ping-pong, 64 B: spinning --spin_us before sleeping, as the hrpc
  // spin-then-block mode does, then blocking at once (the poll=block mode's
  // baseline).
  const std::string spin_label = "poll=spin" + std::to_string(cfg.spin_us) + "us+block";
  const PingpongResult spin = RawPingpong(srv, cfg, 'p', cfg.spin_us, spin_label.c_str());
  const PingpongResult block = RawPingpong(srv, cfg, 'b', 0, "poll=block");
  base.pingpong_p50_us = spin.p50_us;
  base.pingpong_rps = spin.rps;
  base.pingpong_block_p50_us = block.p50_us;
  base.pingpong_block_rps = block.rps;
  base.stream_mbps = RawStream(srv, cfg, 1u << 20);
  base.stream_64m_mbps = RawStream(srv, cfg, 64u << 20);
  // The same stream sent with MSG_ZEROCOPY: whether zero-copy sends pay on
  // this path (on loopback the kernel copies at delivery and says so).
  {
    const uint32_t size = 1 << 20;
    int fd = RawConnect(srv.uri, 's', size, cfg.congestion);
    int one = 1;
    if (::setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one) != 0) {
      std::printf("echo_bench transport=raw case=stream_zerocopy error=\"SO_ZEROCOPY: %s\"\n", std::strerror(errno));
      ::close(fd);
    } else {
      std::vector<char> buf(size, 'y');
      ZeroCopyCounts z;
      const auto warm_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.warmup));
      while (Clock::now() < warm_end) SendAllZeroCopy(fd, buf.data(), size, z);
      z = ZeroCopyCounts{};
      const uint64_t c0 = hrpc::examples::SelfCpuNs(), s0 = ProcCpuNs(srv.pid);
      const auto t0 = Clock::now();
      const auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.duration));
      uint64_t n = 0;
      while (Clock::now() < end && SendAllZeroCopy(fd, buf.data(), size, z)) ++n;
      ::shutdown(fd, SHUT_WR);
      uint64_t total = 0;
      RecvAll(fd, reinterpret_cast<char*>(&total), sizeof total, cfg.spin_us);
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const uint64_t c1 = hrpc::examples::SelfCpuNs(), s1 = ProcCpuNs(srv.pid);
      DrainZeroCopy(fd, z);
      ::close(fd);
      const double mbps = n * double(size) / secs / 1e6;
      std::printf("echo_bench transport=raw case=stream_zerocopy payload=%u concurrency=1 rps=%.0f MBps=%.1f "
                  "cpu=%.0f/%.0f sends=%llu completed=%llu copied_by_kernel=%llu ratio_vs_stream=%.2f\n",
                  size, n / secs, mbps, (c1 - c0) / 1e9 / secs * 100, (s1 - s0) / 1e9 / secs * 100,
                  static_cast<unsigned long long>(z.sends), static_cast<unsigned long long>(z.completed),
                  static_cast<unsigned long long>(z.copied), base.stream_mbps > 0 ? mbps / base.stream_mbps : 0.0);
      std::fflush(stdout);
    }
  }
  Stop(srv);
  return base;
}

struct CaseResult {
  bool ok = false;
  std::string error;
  double rps = 0, p50_us = 0, p99_us = 0, client_cpu = -1, server_cpu = -1;
};

struct RpcCase {
  size_t payload, concurrency;
  bool echo = true;  // false: one way (request attachment, empty response), hrpc only
};

// One gRPC round: a grpc_echo client on the client cpu against the running server.
CaseResult GrpcRound(const Config& cfg, const Child& server, const RpcCase& c) {
  CaseResult r;
  auto kv = RunForLine({cfg.grpc_echo, "--role=client", "--" + server.uri, "--payload=" + std::to_string(c.payload),
                        "--concurrency=" + std::to_string(c.concurrency), "--duration=" + std::to_string(cfg.duration),
                        "--warmup=" + std::to_string(cfg.warmup), "--server_pid=" + std::to_string(server.pid)},
                       cfg.client_cpu, "grpc_echo ");
  if (kv.count("error") || !kv.count("rps")) {
    r.error = kv.count("error") ? kv["error"] : "no-result";
    return r;
  }
  r.rps = std::stod(kv["rps"]);
  r.p50_us = std::stod(kv["p50_us"]);
  r.p99_us = std::stod(kv["p99_us"]);
  const std::string cpu = kv["cpu"];
  const size_t slash = cpu.find('/');
  r.client_cpu = std::stod(cpu.substr(0, slash));
  r.server_cpu = slash == std::string::npos ? -1 : std::stod(cpu.substr(slash + 1));
  r.ok = std::stoull(kv["errors"]) == 0;
  if (!r.ok) r.error = "errors=" + kv["errors"];
  return r;
}

CaseResult HrpcRound(const Config& cfg, hrpc::RpcChannel& channel, const RpcCase& c) {
  hrpc::examples::LoadOptions lo;
  lo.coroutines_per_worker = c.concurrency;
  lo.payload = c.payload;
  lo.echo = c.echo;
  lo.warmup = std::chrono::duration<double>(cfg.warmup);
  lo.duration = std::chrono::duration<double>(cfg.duration);
  const auto l = hrpc::examples::RunLoad(channel, lo);
  CaseResult r;
  r.ok = l.errors == 0;
  if (!r.ok) r.error = "errors=" + std::to_string(l.errors) + " first_error=\"" + l.first_error + "\"";
  r.rps = l.rps;
  r.p50_us = l.p50_us;
  r.p99_us = l.p99_us;
  r.client_cpu = l.client_cpu_pct;
  r.server_cpu = l.server_cpu_pct;
  return r;
}

// The round with the median rps (failed rounds count as 0 rps).
CaseResult MedianRound(std::vector<CaseResult> rounds) {
  std::sort(rounds.begin(), rounds.end(), [](const CaseResult& a, const CaseResult& b) {
    return (a.ok ? a.rps : 0) < (b.ok ? b.rps : 0);
  });
  return rounds[rounds.size() / 2];
}

void PrintRpcLine(const std::string& what, const RpcCase& c, const CaseResult& r, const CaseResult* grpc,
                  size_t rounds, const RawBaseline* raw = nullptr) {
  std::printf("echo_bench %s case=%s payload=%zu concurrency=%zu", what.c_str(), c.echo ? "echo" : "oneway",
              c.payload, c.concurrency);
  if (!r.ok) {
    std::printf(" error=%s\n", r.error.c_str());
    std::fflush(stdout);
    return;
  }
  const double mbps = r.rps * static_cast<double>(c.payload) * (c.echo ? 2 : 1) / 1e6;
  std::printf(" rps=%.0f p50_us=%.1f p99_us=%.1f MBps=%.1f cpu=%.0f/%.0f", r.rps, r.p50_us, r.p99_us, mbps,
              r.client_cpu, r.server_cpu);
  if (grpc != nullptr && grpc->ok && grpc->rps > 0) std::printf(" ratio_vs_grpc=%.2f", r.rps / grpc->rps);
  if (raw != nullptr && c.concurrency == 1 && c.echo && c.payload == 64) {
    // The raw 64 B ping-pong of the same polling mode.
    const bool blocking = what.find("poll=block") != std::string::npos;
    const double raw_p50 = blocking ? raw->pingpong_block_p50_us : raw->pingpong_p50_us;
    if (raw_p50 > 0) std::printf(" raw_p50_us=%.1f p50_vs_raw=%.2f", raw_p50, r.p50_us / raw_p50);
    // One call in flight: the mean round trip is 1 / rps, measured without
    // the histogram's buckets (up to 1/16 wide, which both p50s round up to).
    const double raw_rps = blocking ? raw->pingpong_block_rps : raw->pingpong_rps;
    if (raw_rps > 0 && r.rps > 0) std::printf(" raw_rps=%.0f mean_vs_raw=%.2f", raw_rps, raw_rps / r.rps);
  }
  if (raw != nullptr && !c.echo && raw->stream_mbps > 0) {
    std::printf(" raw_stream_MBps=%.1f ratio_vs_raw_stream=%.2f", raw->stream_mbps, mbps / raw->stream_mbps);
    if (c.payload == (64u << 20) && raw->stream_64m_mbps > 0) {
      std::printf(" raw_stream_64MiB_MBps=%.1f ratio_vs_raw_stream_64MiB=%.2f", raw->stream_64m_mbps,
                  mbps / raw->stream_64m_mbps);
    }
  }
  std::printf(" rounds=%zu\n", rounds);
  std::fflush(stdout);
}

// gRPC and hrpc (spin-then-block, blocking) on the same cases, interleaved.
void RpcCases(const char* self, const Config& cfg, const RawBaseline& raw) {
  const std::vector<RpcCase> cases = {{64, 1},        {64, 32},      {4096, 32},
                                      {65536, 32},    {1 << 20, 1},  {1 << 20, 32},
                                      {1 << 20, 8, false}, {64u << 20, 1, false}};

  Child grpc_server;
  std::string grpc_error;
  if (access(cfg.grpc_echo.c_str(), X_OK) != 0) {
    grpc_error = "grpc_echo-not-built(" + cfg.grpc_echo + ")";
  } else {
    grpc_server = SpawnReady({cfg.grpc_echo, "--role=server"}, cfg.server_cpu);
    if (grpc_server.uri.empty()) grpc_error = "grpc-server-did-not-start";
  }

  // The one-way cases and the 64 B call at 1 in flight are held against raw
  // streams and ping-pongs measured in the same rounds (the host's rates drift
  // by a third within minutes here).
  Child raw_server = Spawn(self, "raw-server", cfg);

  struct Mode {
    std::string label;
    uint64_t spin_us;
    Child server;
    std::unique_ptr<hrpc::RpcChannel> channel;
  };
  std::array<Mode, 2> modes = {Mode{"poll=spin" + std::to_string(cfg.spin_us) + "us+block", cfg.spin_us, {}, {}},
                               Mode{"poll=block", 0, {}, {}}};
  for (Mode& m : modes) {
    Config mc = cfg;
    mc.spin_us = m.spin_us;
    m.server = Spawn(self, "hrpc-server", mc);
    if (m.server.uri.empty()) continue;
    const std::string uri = "tcp://127.0.0.1:" + m.server.uri.substr(m.server.uri.rfind(':') + 1);
    hrpc::RpcChannelOptions co;
    co.runtime.workers = 1;
    if (cfg.client_cpu >= 0) co.runtime.cpus = {cfg.client_cpu};
    co.runtime.spin_budget = std::chrono::microseconds(m.spin_us);
    co.runtime.tcp.loopback_congestion_control = cfg.congestion;
    auto channel = hrpc::RpcChannel::Create(uri, co);
    if (channel.ok() && (*channel)->Connect().ok()) m.channel = std::move(*channel);
  }

  for (const RpcCase& c : cases) {
    const std::string name = std::to_string(c.payload) + "x" + std::to_string(c.concurrency);
    if (!cfg.only.empty() && ("," + cfg.only + ",").find("," + name + ",") == std::string::npos) continue;
    std::vector<CaseResult> grpc_rounds;
    std::array<std::vector<CaseResult>, 2> hrpc_rounds;
    std::vector<double> raw_1m, raw_64m;
    std::vector<PingpongResult> raw_pp, raw_pp_block;
    for (size_t round = 0; round < cfg.rounds; ++round) {
      if (grpc_error.empty() && c.echo) grpc_rounds.push_back(GrpcRound(cfg, grpc_server, c));
      if (c.echo && c.concurrency == 1 && c.payload == 64 && !raw_server.uri.empty()) {
        raw_pp.push_back(RawPingpong(raw_server, cfg, 'p', cfg.spin_us, "", false));
        raw_pp_block.push_back(RawPingpong(raw_server, cfg, 'b', 0, "", false));
      }
      if (!c.echo && !raw_server.uri.empty()) {
        raw_1m.push_back(RawStream(raw_server, cfg, 1u << 20, false));
        if (c.payload == (64u << 20)) raw_64m.push_back(RawStream(raw_server, cfg, 64u << 20, false));
      }
      for (size_t i = 0; i < modes.size(); ++i) {
        if (modes[i].channel) {
          hrpc_rounds[i].push_back(HrpcRound(cfg, *modes[i].channel, c));
        } else {
          hrpc_rounds[i].push_back(CaseResult{false, "server-did-not-start-or-connect"});
        }
      }
    }
    CaseResult grpc;
    grpc.error = grpc_error;
    if (!grpc_rounds.empty()) {
      grpc = MedianRound(grpc_rounds);
      PrintRpcLine("transport=grpc", c, grpc, nullptr, cfg.rounds);
    }
    // The raw baselines of this case, measured in its rounds: their medians.
    RawBaseline same_rounds = raw;
    // Prints " KEY=median ROUNDS_KEY=a,b,c" (ascending) and returns the median.
    auto print_median = [](std::vector<double> v, const char* key, const char* rounds_key, int decimals) {
      std::sort(v.begin(), v.end());
      std::printf(" %s=%.*f %s=", key, decimals, v[v.size() / 2], rounds_key);
      for (size_t i = 0; i < v.size(); ++i) std::printf("%s%.*f", i ? "," : "", decimals, v[i]);
      return v[v.size() / 2];
    };
    auto median_of = [&](const std::vector<double>& v, const std::string& what, const char* unit) {
      std::printf("echo_bench transport=raw %s", what.c_str());
      const double m = print_median(v, unit, "per_round", 1);
      std::printf(" rounds=%zu\n", v.size());
      return m;
    };
    // The ping-pong's p50 and rate, each the median of its rounds.
    auto pingpong_of = [&](const std::vector<PingpongResult>& v, const std::string& what) {
      std::vector<double> p50, rps;
      for (const PingpongResult& r : v) {
        p50.push_back(r.p50_us);
        rps.push_back(r.rps);
      }
      std::printf("echo_bench transport=raw %s case=pingpong payload=64 concurrency=1", what.c_str());
      PingpongResult m;
      m.p50_us = print_median(p50, "p50_us", "per_round", 1);
      m.rps = print_median(rps, "rps", "rps_per_round", 0);
      std::printf(" rounds=%zu\n", v.size());
      return m;
    };
    if (!raw_pp.empty()) {
      const PingpongResult spin = pingpong_of(raw_pp, modes[0].label);
      const PingpongResult block = pingpong_of(raw_pp_block, "poll=block");
      same_rounds.pingpong_p50_us = spin.p50_us;
      same_rounds.pingpong_rps = spin.rps;
      same_rounds.pingpong_block_p50_us = block.p50_us;
      same_rounds.pingpong_block_rps = block.rps;
    }
    if (!raw_1m.empty()) {
      same_rounds.stream_mbps = median_of(raw_1m, "case=stream payload=1048576 concurrency=1", "MBps");
    }
    if (!raw_64m.empty()) {
      same_rounds.stream_64m_mbps = median_of(raw_64m, "case=stream payload=67108864 concurrency=1", "MBps");
    }
    for (size_t i = 0; i < modes.size(); ++i) {
      PrintRpcLine("transport=tcp " + modes[i].label, c, MedianRound(hrpc_rounds[i]), c.echo ? &grpc : nullptr,
                   cfg.rounds, &same_rounds);
    }
  }

  for (Mode& m : modes) {
    m.channel.reset();
    Stop(m.server);
  }
  Stop(grpc_server);
  Stop(raw_server);
}

// Fetches http://<addr>/metrics every `period` until stopped (a Prometheus
// stand-in): counts the scrapes and their time.
class Scraper {
 public:
  Scraper(const std::string& addr, std::chrono::milliseconds period) {
    const size_t colon = addr.rfind(':');
    thread_ = std::thread([this, host = addr.substr(0, colon), port = std::stoi(addr.substr(colon + 1)), period] {
      httplib::Client cli(host, port);
      cli.set_keep_alive(true);
      while (!stop_.load()) {
        const auto t0 = Clock::now();
        auto res = cli.Get("/metrics");
        const auto t1 = Clock::now();
        if (res && res->status == 200 && !res->body.empty()) {
          scrapes_.fetch_add(1);
          scrape_ns_.fetch_add(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
          bytes_.store(res->body.size());
        } else {
          errors_.fetch_add(1);
        }
        std::this_thread::sleep_until(t0 + period);
      }
    });
  }
  ~Scraper() {
    stop_.store(true);
    thread_.join();
  }
  void Reset() {
    scrapes_.store(0);
    scrape_ns_.store(0);
    errors_.store(0);
  }
  uint64_t scrapes() const { return scrapes_.load(); }
  uint64_t errors() const { return errors_.load(); }
  uint64_t bytes() const { return bytes_.load(); }
  double mean_ms() const {
    const uint64_t n = scrapes_.load();
    return n ? static_cast<double>(scrape_ns_.load()) / static_cast<double>(n) / 1e6 : 0.0;
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> scrapes_{0}, scrape_ns_{0}, errors_{0}, bytes_{0};
  std::thread thread_;
};

// hrpc echo with the HTTP endpoint off vs on and scraped, interleaved rounds.
void MetricsCases(const char* self, const Config& cfg) {
  const std::vector<RpcCase> cases = {{64, 1}, {64, 32}, {4096, 32}};
  struct Mode {
    bool http;
    Child server;
    std::unique_ptr<hrpc::RpcChannel> channel;
    std::string http_addr;
  };
  std::array<Mode, 2> modes = {Mode{false, {}, {}, {}}, Mode{true, {}, {}, {}}};
  for (Mode& m : modes) {
    Config mc = cfg;
    mc.http = m.http;
    m.server = Spawn(self, "hrpc-server", mc);
    if (m.server.uri.empty()) continue;
    std::string uri = m.server.uri;
    if (const size_t sp = uri.find(' '); sp != std::string::npos) {
      m.http_addr = uri.substr(sp + 1);
      uri = uri.substr(0, sp);
    }
    uri = "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1);
    hrpc::RpcChannelOptions co;
    co.runtime.workers = 1;
    if (cfg.client_cpu >= 0) co.runtime.cpus = {cfg.client_cpu};
    co.runtime.spin_budget = std::chrono::microseconds(cfg.spin_us);
    co.runtime.tcp.loopback_congestion_control = cfg.congestion;
    auto channel = hrpc::RpcChannel::Create(uri, co);
    if (channel.ok() && (*channel)->Connect().ok()) m.channel = std::move(*channel);
  }
  const std::string poll = "poll=spin" + std::to_string(cfg.spin_us) + "us+block";
  if (!modes[1].channel || modes[1].http_addr.empty()) {
    std::printf("echo_bench transport=tcp metrics=on error=server-with-http-endpoint-did-not-start\n");
  } else {
    Scraper scraper(modes[1].http_addr, std::chrono::milliseconds(cfg.scrape_ms));
    for (const RpcCase& c : cases) {
      std::array<std::vector<CaseResult>, 2> rounds;
      uint64_t scrapes = 0, scrape_errors = 0;
      double scrape_ms_sum = 0;
      for (size_t round = 0; round < cfg.rounds; ++round) {
        for (size_t i = 0; i < modes.size(); ++i) {
          if (!modes[i].channel) {
            rounds[i].push_back(CaseResult{false, "server-did-not-start-or-connect"});
            continue;
          }
          if (i == 1) scraper.Reset();
          rounds[i].push_back(HrpcRound(cfg, *modes[i].channel, c));
          if (i == 1) {
            scrapes += scraper.scrapes();
            scrape_errors += scraper.errors();
            scrape_ms_sum += scraper.mean_ms() * static_cast<double>(scraper.scrapes());
          }
        }
      }
      const CaseResult off = MedianRound(rounds[0]);
      const CaseResult on = MedianRound(rounds[1]);
      PrintRpcLine("transport=tcp " + poll + " metrics=off", c, off, nullptr, cfg.rounds);
      std::printf("echo_bench transport=tcp %s metrics=on scrape_ms=%llu case=echo payload=%zu concurrency=%zu",
                  poll.c_str(), static_cast<unsigned long long>(cfg.scrape_ms), c.payload, c.concurrency);
      if (!on.ok) {
        std::printf(" error=%s\n", on.error.c_str());
      } else {
        std::printf(" rps=%.0f p50_us=%.1f p99_us=%.1f MBps=%.1f cpu=%.0f/%.0f", on.rps, on.p50_us, on.p99_us,
                    on.rps * static_cast<double>(c.payload) * 2 / 1e6, on.client_cpu, on.server_cpu);
        if (off.ok && off.rps > 0) {
          std::printf(" off_rps=%.0f ratio_vs_off=%.3f p50_vs_off=%.2f p99_vs_off=%.2f", off.rps, on.rps / off.rps,
                      off.p50_us > 0 ? on.p50_us / off.p50_us : 0.0, off.p99_us > 0 ? on.p99_us / off.p99_us : 0.0);
        }
        std::printf(" scrapes=%llu scrape_errors=%llu scrape_ms_mean=%.2f scrape_bytes=%llu rounds=%zu\n",
                    static_cast<unsigned long long>(scrapes), static_cast<unsigned long long>(scrape_errors),
                    scrapes ? scrape_ms_sum / static_cast<double>(scrapes) : 0.0,
                    static_cast<unsigned long long>(scraper.bytes()), cfg.rounds);
      }
      std::fflush(stdout);
    }
  }
  for (Mode& m : modes) {
    m.channel.reset();
    Stop(m.server);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  std::string role;
  uint64_t server_cpu = 0, client_cpu = 1;
  CLI::App app("hrpc unary echo calls over TCP loopback vs gRPC (bench/grpc_echo) and raw-socket ping-pong and\n"
               "stream baselines, server and client in separate processes pinned to --server_cpu and\n"
               "--client_cpu. One line per case:\n"
               "echo_bench transport=... payload=... concurrency=... rps=... p50_us=... p99_us=... MBps=... cpu=C/S\n"
               "(cpu: client/server process CPU in % of one core; hrpc lines add ratio_vs_grpc). Build in Release.",
               "echo_bench");
  app.add_option("--server_cpu", server_cpu, "cpu of the server process")->capture_default_str();
  app.add_option("--client_cpu", client_cpu, "cpu of the client process")->capture_default_str();
  app.add_option("--spin_us", cfg.spin_us, "busy-poll this long before sleeping (hrpc and raw alike)")
      ->capture_default_str();
  app.add_option("--duration", cfg.duration, "seconds per case")->capture_default_str();
  app.add_option("--warmup", cfg.warmup, "seconds of warm-up per case")->capture_default_str();
  app.add_option("--rounds", cfg.rounds, "interleaved gRPC/hrpc rounds per RPC case; the median is printed")
      ->capture_default_str();
  app.add_option("--cases", cfg.cases,
                 "all | raw | rpc (gRPC and hrpc) | metrics (hrpc with the HTTP endpoint off vs scraped)")
      ->capture_default_str();
  app.add_option("--only", cfg.only, "rpc cases to run, as PAYLOADxCONCURRENCY, comma-separated (e.g. 64x32,65536x32)");
  app.add_option("--scrape_ms", cfg.scrape_ms, "metrics cases: fetch /metrics this often")->capture_default_str();
  app.add_option("--congestion", cfg.congestion,
                 "TCP congestion control of hrpc's and the raw sockets (hrpc's default: "
                 "TcpOptions::loopback_congestion_control); 'system' for the system default, which gRPC uses")
      ->capture_default_str();
  app.add_flag("--http", cfg.http, "internal (hrpc-server): open the HTTP endpoint");
  app.add_option("--grpc_echo", cfg.grpc_echo, "the grpc_echo program; empty: the one beside this program")
      ->capture_default_str();
  app.add_option("--role", role, "internal: raw-server | hrpc-server")->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  cfg.server_cpu = static_cast<int>(server_cpu) < ncpu ? static_cast<int>(server_cpu) : -1;
  cfg.client_cpu = static_cast<int>(client_cpu) < ncpu ? static_cast<int>(client_cpu) : -1;
  spdlog::set_level(spdlog::level::warn);
  if (cfg.congestion == "system") cfg.congestion.clear();
  if (role == "raw-server") return RawServerMain(cfg);
  if (role == "hrpc-server") return HrpcServerMain(cfg);
  signal(SIGPIPE, SIG_IGN);
  if (cfg.rounds == 0) cfg.rounds = 1;
  std::printf("echo_bench: server cpu %d, client cpu %d, spin %llu us then sleep, %.1f s per case and round, "
              "tcp congestion control: hrpc and raw %s, gRPC %s (the system default)\n",
              cfg.server_cpu, cfg.client_cpu, static_cast<unsigned long long>(cfg.spin_us), cfg.duration,
              cfg.congestion.empty() ? SystemCongestion().c_str() : cfg.congestion.c_str(), SystemCongestion().c_str());
  std::fflush(stdout);
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  if (cfg.grpc_echo.empty()) {
    const std::string dir(self);
    cfg.grpc_echo = dir.substr(0, dir.rfind('/') + 1) + "grpc_echo";
  }
  RawBaseline raw;
  if (cfg.cases == "all" || cfg.cases == "raw") raw = RawCases(self, cfg);
  if (cfg.cases == "all" || cfg.cases == "rpc") RpcCases(self, cfg, raw);
  if (cfg.cases == "all" || cfg.cases == "metrics") MetricsCases(self, cfg);
  return 0;
}
