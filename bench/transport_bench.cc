// transport_bench: hrpc::transport over TCP against a raw-socket baseline, in
// one run. Server and client are separate processes (fork) pinned to
// different cores. One line per case:
//
//   transport_bench case=<pingpong|write|read|payload|raw_pingpong|raw_stream>
//     transport=<tcp|tls|raw> size=<bytes> p50_us=.. p99_us=.. MBps=.. cpu=..
//     [depth=..] pin=client:<cpu>,server:<cpu> poll=<mode>
//
// cpu = CPU-seconds per wall-second summed over both processes (2.0 = both
// cores busy). p50/p99 are per round trip (ping-pong) or per operation.
// poll: hrpc workers spin for spin_budget, then block in epoll_wait
// ("spin50us+epoll"); raw_pingpong runs twice: plain blocking sockets, and
// the same spin-then-block discipline as the workers, so the comparison can be
// made in the same polling mode.
//
// TLS: the server also listens with TLS (certificates made at start in a temp
// dir, EC P-256; TLS 1.3 is negotiated), and the last cases run on a plain and
// a TLS connection one after the other: 64 B ping-pong, 1 MiB one-sided WRITE
// and READ, and `payload` (a 1 MiB in-stream payload behind a small message,
// Connection::SendWithPayload, answered by a 1-byte message: the path RPC
// attachments take over TCP). --tls=0 skips them.
//
// Raw sockets use the congestion control hrpc's loopback connections get
// (TcpOptions::loopback_congestion_control).
//
// Usage: transport_bench [--seconds=S] [--client-cpu=N] [--server-cpu=N] [--depth=N] [--spin-us=N] [--tls=0|1]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/cli.h"
#include "common/congestion.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/tcp.h"
#include "test_pki.h"

using namespace hrpc;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using mempool::IoBuf;

namespace {

struct Args {
  double seconds = 1.0;
  int client_cpu = 0;
  int server_cpu = 1;
  int depth = 4;
  int spin_us = 50;
  bool tls = true;
  std::string cert_dir;  // made by main(): server.pem/.key, ca.pem
};

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "transport_bench: %s\n", what.c_str());
  exit(1);
}

void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) Die("sched_setaffinity: " + std::string(strerror(errno)));
}

double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::vector<std::string> fields;
  size_t i = rp + 2;
  while (i < s.size()) {
    size_t j = s.find(' ', i);
    if (j == std::string::npos) j = s.size();
    fields.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  // fields[0] is state (field 3); utime = field 14, stime = field 15.
  if (fields.size() < 13) return 0;
  return (std::stod(fields[11]) + std::stod(fields[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct Stats {
  double p50 = 0, p99 = 0;
};
Stats Percentiles(std::vector<double>& us) {
  if (us.empty()) return {};
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

void Print(const char* kase, const char* transport, size_t size, Stats st, double mbps, double cpu,
           const Args& a, const std::string& extra) {
  printf("transport_bench case=%s transport=%s size=%zu p50_us=%.1f p99_us=%.1f MBps=%.1f cpu=%.2f%s "
         "pin=client:%d,server:%d\n",
         kase, transport, size, st.p50, st.p99, mbps, cpu, extra.c_str(), a.client_cpu, a.server_cpu);
  fflush(stdout);
}

// ------------------------------------------------------------------ raw sockets

int Listen0(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 16) != 0) Die("raw listen");
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

int Dial(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) Die("raw connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  hrpc::examples::SetCongestion(fd);
  return fd;
}

// Receives exactly n bytes. spin_us > 0: poll with MSG_DONTWAIT for that long
// before blocking (the workers' idle discipline). Returns false at EOF.
bool RecvFull(int fd, char* buf, size_t n, int spin_us) {
  size_t got = 0;
  while (got < n) {
    ssize_t r;
    if (spin_us > 0) {
      const auto until = Clock::now() + std::chrono::microseconds(spin_us);
      do {
        r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
      } while (r < 0 && errno == EAGAIN && Clock::now() < until);
      if (r < 0 && errno == EAGAIN) r = recv(fd, buf + got, n - got, 0);
    } else {
      r = recv(fd, buf + got, n - got, 0);
    }
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

bool SendFull(int fd, const char* buf, size_t n) {
  size_t sent = 0;
  while (sent < n) {
    ssize_t w = send(fd, buf + sent, n - sent, MSG_NOSIGNAL);
    if (w <= 0) return false;
    sent += static_cast<size_t>(w);
  }
  return true;
}

// Raw server: per connection, the first byte picks the mode:
// 'p' <spin> echo 64-byte messages; 's' drain until EOF, then answer 1 byte.
void RawServe(int lfd) {
  for (;;) {
    int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    hrpc::examples::SetCongestion(c);
    char mode[2];
    if (!RecvFull(c, mode, 2, 0)) {
      close(c);
      continue;
    }
    const int spin = mode[1] ? 50 : 0;
    if (mode[0] == 'p') {
      char buf[64];
      while (RecvFull(c, buf, 64, spin) && SendFull(c, buf, 64)) {
      }
    } else {
      std::vector<char> buf(1 << 20);
      while (recv(c, buf.data(), buf.size(), 0) > 0) {
      }
      SendFull(c, "k", 1);
    }
    close(c);
  }
}

// ------------------------------------------------------------------ server process

constexpr size_t kExposed = 4u << 20;

// Answers every message: messages back as they came; a message with an
// in-stream payload (larger than a control message may be) with one byte.
void Serve(std::shared_ptr<transport::Connection> conn, mempool::Pool& pool) {
  auto mem = pool.Allocate(kExposed);
  if (!mem.ok()) return;
  auto d = conn->Expose(*mem, transport::Access::kReadWrite);
  if (!d.ok()) return;
  auto msg = pool.Allocate(sizeof *d);
  std::memcpy(msg->data(), &*d, sizeof *d);
  if (!conn->Send(IoBuf(std::move(*msg))).ok()) return;
  for (;;) {
    auto m = conn->Recv();
    if (!m.ok()) return;
    if (m->size() > conn->limits().max_message_bytes) {
      auto ack = pool.Allocate(1);
      if (!ack.ok()) return;
      *m = IoBuf(std::move(*ack));
    }
    if (!conn->Send(std::move(*m)).ok()) return;
  }
}

void AcceptLoop(transport::Listener* listener, mempool::Pool* pool) {
  for (;;) {
    auto c = listener->Accept();
    if (!c.ok()) return;
    std::shared_ptr<transport::Connection> conn(std::move(*c));
    coro::Scheduler::Current()->Spawn([conn, pool] { Serve(conn, *pool); });
  }
}

[[noreturn]] void ServerMain(const Args& a, int report_fd) {
  Pin(a.server_cpu);
  spdlog::set_level(spdlog::level::warn);
  uint16_t raw_port = 0;
  int lfd = Listen0(&raw_port);
  std::thread raw([lfd] { RawServe(lfd); });
  raw.detach();

  mempool::PoolOptions po;
  po.arena_bytes = 128u << 20;
  po.max_class_bytes = 16u << 20;
  auto pool = mempool::Pool::Create(po);
  if (!pool.ok()) Die(pool.status().ToString());
  coro::WorkerOptions wo;
  wo.sched.name = "server";
  wo.sched.spin_budget = std::chrono::microseconds(a.spin_us);
  wo.cpu = a.server_cpu;
  auto w = coro::Worker::Start(wo);
  if (!w.ok()) Die(w.status().ToString());
  coro::Worker& worker = **w;
  std::unique_ptr<transport::Transport> t;
  std::unique_ptr<transport::Listener> listener, tls_listener;
  Status st = coro::Async(worker.scheduler(), [&]() -> Status {
    HRPC_ASSIGN_OR_RETURN(t, transport::CreateTcpTransport(worker.scheduler(), **pool, {}));
    HRPC_ASSIGN_OR_RETURN(listener, t->Listen("tcp://127.0.0.1:0"));
    if (a.tls) {
      HRPC_ASSIGN_OR_RETURN(auto ctx, transport::CreateTlsContext({.cert_file = a.cert_dir + "/server.pem",
                                                                   .key_file = a.cert_dir + "/server.key"}));
      HRPC_ASSIGN_OR_RETURN(tls_listener, t->ListenTls("tcp://127.0.0.1:0", ctx));
    }
    return Status::Ok();
  }).Get();
  if (!st.ok()) Die(st.ToString());
  std::string line = listener->uri() + " " + std::to_string(raw_port) + " " +
                     (tls_listener ? tls_listener->uri() : std::string("-")) + "\n";
  if (write(report_fd, line.data(), line.size()) < 0) Die("pipe");
  close(report_fd);
  worker.Post([&] { AcceptLoop(listener.get(), pool->get()); });
  if (tls_listener) worker.Post([&] { AcceptLoop(tls_listener.get(), pool->get()); });
  pause();
  _exit(0);
}

// ------------------------------------------------------------------ client cases

struct Client {
  const char* name;  // "tcp" or "tls": the transport= field
  Args a;
  pid_t server;
  coro::Worker* worker;
  mempool::Pool* pool;
  transport::Connection* conn;
  transport::RemoteDescriptor desc;

  double Cpu0() const { return CpuSeconds(getpid()) + CpuSeconds(server); }

  void PingPong(size_t size) {
    auto b = pool->Allocate(size);
    std::memset(b->data(), 'p', size);
    std::vector<double> us;
    double cpu0 = 0, wall = 0;
    size_t n = 0;
    Status s = coro::Async(worker->scheduler(), [&]() -> Status {
      for (int i = 0; i < 2000; ++i) {  // warm-up
        HRPC_TRY(conn->Send(IoBuf(*b)));
        HRPC_TRY(conn->Recv());
      }
      cpu0 = Cpu0();
      const auto start = Clock::now();
      const auto end = start + std::chrono::duration<double>(a.seconds);
      us.reserve(1 << 20);
      while (Clock::now() < end) {
        const auto t0 = Clock::now();
        HRPC_TRY(conn->Send(IoBuf(*b)));
        HRPC_TRY(conn->Recv());
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        ++n;
      }
      wall = std::chrono::duration<double>(Clock::now() - start).count();
      return Status::Ok();
    }).Get();
    if (!s.ok()) Die("pingpong: " + s.ToString());
    const double cpu = (Cpu0() - cpu0) / wall;
    Print("pingpong", name, size, Percentiles(us), 2.0 * size * n / wall / 1e6, cpu, a,
          " poll=spin" + std::to_string(a.spin_us) + "us+epoll");
  }

  void OneSided(bool write, size_t size) {
    std::vector<IoBuf> bufs;
    for (int i = 0; i < a.depth; ++i) {
      auto b = pool->Allocate(size);
      if (!b.ok()) Die(b.status().ToString());
      std::memset(b->data(), 'w', size);
      bufs.emplace_back(std::move(*b));
    }
    const transport::RemoteDescriptor d = desc.Sub(0, static_cast<uint32_t>(size));
    std::vector<double> us;
    us.reserve(1 << 20);
    std::atomic<size_t> ops{0};
    double cpu0 = 0, wall = 0;
    auto run = [&](double seconds, bool record) -> Status {
      coro::WaitGroup wg;
      Status first;
      const auto end = Clock::now() + std::chrono::duration<double>(seconds);
      for (int i = 0; i < a.depth; ++i) {
        wg.Add(1);
        coro::Scheduler::Current()->Spawn([&, i] {
          while (Clock::now() < end) {
            const auto t0 = Clock::now();
            Status s = write ? conn->Write(bufs[i], d) : conn->Read(d, bufs[i]);
            if (!s.ok()) {
              first = s;
              break;
            }
            if (record) {
              us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
              ops.fetch_add(1, std::memory_order_relaxed);
            }
          }
          wg.Done();
        });
      }
      (void)wg.Wait();
      return first;
    };
    Status s = coro::Async(worker->scheduler(), [&]() -> Status {
      HRPC_TRY(run(0.1, false));
      cpu0 = Cpu0();
      const auto start = Clock::now();
      HRPC_TRY(run(a.seconds, true));
      wall = std::chrono::duration<double>(Clock::now() - start).count();
      return Status::Ok();
    }).Get();
    if (!s.ok()) Die(std::string(write ? "write: " : "read: ") + s.ToString());
    const double cpu = (Cpu0() - cpu0) / wall;
    Print(write ? "write" : "read", name, size, Percentiles(us), double(size) * ops.load() / wall / 1e6, cpu, a,
          " depth=" + std::to_string(a.depth) + " poll=spin" + std::to_string(a.spin_us) + "us+epoll");
  }

  // A `size`-byte in-stream payload behind a 16-byte message, answered by a
  // 1-byte message; one at a time.
  void Payload(size_t size) {
    auto head = pool->Allocate(16);
    auto body = pool->Allocate(size);
    if (!head.ok() || !body.ok()) Die("payload buffers");
    std::memset(head->data(), 'h', 16);
    std::memset(body->data(), 'b', size);
    std::vector<double> us;
    us.reserve(1 << 20);
    double cpu0 = 0, wall = 0;
    size_t n = 0;
    Status s = coro::Async(worker->scheduler(), [&]() -> Status {
      auto one = [&]() -> Status {
        HRPC_TRY(conn->SendWithPayload(IoBuf(*head), IoBuf(*body)));
        HRPC_ASSIGN_OR_RETURN(IoBuf ack, conn->Recv());
        return ack.size() == 1 ? Status::Ok() : DataLossError("payload answered with " + std::to_string(ack.size()));
      };
      for (int i = 0; i < 20; ++i) HRPC_TRY(one());
      cpu0 = Cpu0();
      const auto start = Clock::now();
      const auto end = start + std::chrono::duration<double>(a.seconds);
      while (Clock::now() < end) {
        const auto t0 = Clock::now();
        HRPC_TRY(one());
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        ++n;
      }
      wall = std::chrono::duration<double>(Clock::now() - start).count();
      return Status::Ok();
    }).Get();
    if (!s.ok()) Die("payload: " + s.ToString());
    Print("payload", name, size, Percentiles(us), double(size) * n / wall / 1e6, (Cpu0() - cpu0) / wall, a,
          " poll=spin" + std::to_string(a.spin_us) + "us+epoll");
  }

  void RawPingPong(uint16_t port, bool spin) {
    int fd = Dial(port);
    char mode[2] = {'p', static_cast<char>(spin ? 1 : 0)};
    SendFull(fd, mode, 2);
    const int spin_us = spin ? a.spin_us : 0;
    char buf[64];
    std::memset(buf, 'r', sizeof buf);
    for (int i = 0; i < 2000; ++i) {
      SendFull(fd, buf, 64);
      RecvFull(fd, buf, 64, spin_us);
    }
    std::vector<double> us;
    us.reserve(1 << 20);
    const double cpu0 = Cpu0();
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration<double>(a.seconds);
    size_t n = 0;
    while (Clock::now() < end) {
      const auto t0 = Clock::now();
      if (!SendFull(fd, buf, 64) || !RecvFull(fd, buf, 64, spin_us)) Die("raw pingpong");
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      ++n;
    }
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const double cpu = (Cpu0() - cpu0) / wall;
    close(fd);
    Print("raw_pingpong", "raw", 64, Percentiles(us), 2.0 * 64 * n / wall / 1e6, cpu, a,
          spin ? " poll=spin" + std::to_string(a.spin_us) + "us+block" : std::string(" poll=blocking"));
  }

  void RawStream(uint16_t port) {
    int fd = Dial(port);
    char mode[2] = {'s', 0};
    SendFull(fd, mode, 2);
    constexpr size_t kChunk = 1u << 20;
    auto b = pool->Allocate(kChunk);
    std::memset(b->data(), 's', kChunk);
    std::vector<double> us;
    const double cpu0 = Cpu0();
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration<double>(a.seconds);
    size_t bytes = 0;
    while (Clock::now() < end) {
      const auto t0 = Clock::now();
      if (!SendFull(fd, b->data(), kChunk)) Die("raw stream");
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      bytes += kChunk;
    }
    shutdown(fd, SHUT_WR);
    char k;
    RecvFull(fd, &k, 1, 0);
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const double cpu = (Cpu0() - cpu0) / wall;
    close(fd);
    Print("raw_stream", "raw", kChunk, Percentiles(us), bytes / wall / 1e6, cpu, a, " poll=blocking");
  }
};

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app("hrpc::transport over TCP against a raw-socket baseline, server and client in two processes\n"
               "pinned to --server-cpu and --client-cpu; one transport_bench line per case (see the header\n"
               "of bench/transport_bench.cc).",
               "transport_bench");
  app.add_option("--seconds", a.seconds, "seconds per case")->capture_default_str();
  app.add_option("--client-cpu", a.client_cpu, "cpu of the client process")->capture_default_str();
  app.add_option("--server-cpu", a.server_cpu, "cpu of the server process")->capture_default_str();
  app.add_option("--depth", a.depth, "write/read: operations in flight")->capture_default_str();
  app.add_option("--spin-us", a.spin_us, "busy-poll this long before blocking in epoll_wait")->capture_default_str();
  app.add_option("--tls", a.tls, "also run the TLS cases (each beside the same case on plain TCP)")
      ->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  if (a.tls) {
    char tmpl[] = "/tmp/transport_bench-tls-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) Die("mkdtemp");
    a.cert_dir = tmpl;
    auto ca = hrpc::testing::TestPki::Create(a.cert_dir, "transport_bench CA");
    if (!ca.ok()) Die(ca.status().ToString());
    auto server = ca->Issue("server", {"IP:127.0.0.1"});
    if (!server.ok()) Die(server.status().ToString());
  }
  int pfd[2];
  if (pipe(pfd) != 0) Die("pipe");
  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    close(pfd[0]);
    ServerMain(a, pfd[1]);
  }
  close(pfd[1]);
  Pin(a.client_cpu);
  spdlog::set_level(spdlog::level::warn);
  char line[256] = {};
  size_t got = 0;
  while (got < sizeof line - 1) {
    ssize_t r = read(pfd[0], line + got, sizeof line - 1 - got);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  char uri[200], tls_uri[200];
  unsigned raw_port = 0;
  if (sscanf(line, "%199s %u %199s", uri, &raw_port, tls_uri) != 3) Die("server did not report its ports");

  mempool::PoolOptions po;
  po.arena_bytes = 128u << 20;
  po.max_class_bytes = 16u << 20;
  auto pool = mempool::Pool::Create(po);
  if (!pool.ok()) Die(pool.status().ToString());
  coro::WorkerOptions wo;
  wo.sched.name = "client";
  wo.sched.spin_budget = std::chrono::microseconds(a.spin_us);
  wo.cpu = a.client_cpu;
  auto w = coro::Worker::Start(wo);
  if (!w.ok()) Die(w.status().ToString());
  std::unique_ptr<transport::Transport> t;
  std::unique_ptr<transport::Connection> conn, tls_conn;
  transport::RemoteDescriptor desc, tls_desc;
  Status st = coro::Async((*w)->scheduler(), [&]() -> Status {
    HRPC_ASSIGN_OR_RETURN(t, transport::CreateTcpTransport((*w)->scheduler(), **pool, {}));
    auto open = [&](std::unique_ptr<transport::Connection>& c, transport::RemoteDescriptor& d) -> Status {
      HRPC_ASSIGN_OR_RETURN(IoBuf m, c->Recv());
      if (m.size() != sizeof d) return DataLossError("bad descriptor message");
      m.CopyTo(&d, 0, sizeof d);
      return Status::Ok();
    };
    HRPC_ASSIGN_OR_RETURN(conn, t->Connect(uri));
    HRPC_TRY(open(conn, desc));
    if (a.tls) {
      HRPC_ASSIGN_OR_RETURN(auto ctx, transport::CreateTlsContext({.ca_file = a.cert_dir + "/ca.pem"}));
      HRPC_ASSIGN_OR_RETURN(tls_conn, t->ConnectTls(tls_uri, ctx));
      HRPC_TRY(open(tls_conn, tls_desc));
    }
    return Status::Ok();
  }).Get();
  if (a.tls) std::filesystem::remove_all(a.cert_dir);
  if (!st.ok()) Die(st.ToString());
  printf("# transport_bench: client pid %d on cpu %d, server pid %d on cpu %d, %.1f s per case, "
         "hrpc workers spin %d us then epoll_wait, one-sided depth %d, pool page mode %s\n",
         getpid(), a.client_cpu, child, a.server_cpu, a.seconds, a.spin_us, a.depth,
         std::string(mempool::PageModeName((*pool)->page_mode())).c_str());

  Client c{"tcp", a, child, w->get(), pool->get(), conn.get(), desc};
  c.RawPingPong(static_cast<uint16_t>(raw_port), /*spin=*/false);
  c.RawPingPong(static_cast<uint16_t>(raw_port), /*spin=*/true);
  c.PingPong(64);
  c.RawStream(static_cast<uint16_t>(raw_port));
  for (size_t size : {size_t{4} << 10, size_t{64} << 10, size_t{1} << 20, size_t{4} << 20}) c.OneSided(true, size);
  for (size_t size : {size_t{4} << 10, size_t{64} << 10, size_t{1} << 20, size_t{4} << 20}) c.OneSided(false, size);
  if (a.tls) {
    printf("# TLS cases: each on plain TCP, then on TLS (EC P-256 certificate)\n");
    Client s{"tls", a, child, w->get(), pool->get(), tls_conn.get(), tls_desc};
    for (Client* x : {&c, &s}) x->PingPong(64);
    for (Client* x : {&c, &s}) x->OneSided(true, 1 << 20);
    for (Client* x : {&c, &s}) x->OneSided(false, 1 << 20);
    for (Client* x : {&c, &s}) x->Payload(1 << 20);
  }

  coro::Async((*w)->scheduler(), [&] {
    conn.reset();
    tls_conn.reset();
    t.reset();
  }).Get().IgnoreError();
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  return 0;
}
