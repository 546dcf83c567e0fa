// What channels and connections cost on a shared Runtime, with same-run
// baselines. One `runtime_bench` line per case:
//   case=channel_create   channels on one runtime (no call made): time and
//                         memory per channel; baseline: the one-line channel
//                         with a private runtime (a worker thread and a pool each).
//   case=connection       servers on the runtime, one channel each, one call
//                         each from every worker: memory per connection (client
//                         and server side, both in this process); baseline:
//                         raw kernel sockets connected the same way (connect +
//                         accept, no hrpc).
// With --transport=rdma (the Soft-RoCE guest) the connection case runs over
// RDMA with a shared receive queue per worker (the runtime's default) and,
// as its baseline, with a receive ring per connection.
//
// Memory: heap = mallinfo2().uordblks delta (what hrpc allocates), rss =
// /proc/self/statm resident delta (incl. pool pages touched and stacks).
// Workers are not pinned; the main thread issues every call.
#include <arpa/inet.h>
#include <dirent.h>
#include <malloc.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/cli.h"
#include "common/echo_service.h"
#include "echo/echo.hrpc.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "common/proc_cpu.h"

#include <spdlog/spdlog.h>

namespace {

using Clock = std::chrono::steady_clock;

struct Mem {
  int64_t heap = 0;
  int64_t rss = 0;
  static Mem Now() {
    Mem m;
    m.heap = static_cast<int64_t>(mallinfo2().uordblks);
    long pages = 0, resident = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
      std::fclose(f);
    }
    m.rss = resident * sysconf(_SC_PAGESIZE);
    return m;
  }
};

size_t Threads() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.' ? 1 : 0;
    closedir(d);
  }
  return n;
}

struct Options {
  std::string transport = "tcp";
  size_t channels = 10000;
  size_t baseline_channels = 50;
  size_t servers = 200;
  size_t workers = 2;
  std::string addr = "127.0.0.1";  // rdma: the device's address (RXE_GUEST_ADDR in the guest)
};

hrpc::RuntimeOptions RuntimeFor(const Options& o) {
  hrpc::RuntimeOptions ro;
  ro.workers = o.workers;
  ro.transport_choice = o.transport == "rdma" ? hrpc::TransportChoice::kRdma : hrpc::TransportChoice::kTcp;
  return ro;
}

void ChannelCreate(const Options& o) {
  const std::string uri = o.transport + "://" + o.addr + ":7";  // never connected
  {
    auto rt = hrpc::Runtime::Create(RuntimeFor(o));
    if (!rt.ok()) {
      std::printf("runtime_bench case=channel_create error=\"%s\"\n", rt.status().ToString().c_str());
      return;
    }
    // Rounds of create-all / destroy-all until 200 ms have passed (so that
    // the CPU time, read at clock-tick resolution, means something); the
    // memory figures are the first round's, the time is the median round's.
    std::vector<double> ns_rounds;
    Mem m0, m1;
    size_t threads = 0, threads_after = 0;
    const uint64_t cpu0 = hrpc::examples::SelfCpuNs();
    const auto start = Clock::now();
    while (ns_rounds.empty() || Clock::now() - start < std::chrono::milliseconds(200)) {
      std::vector<std::unique_ptr<hrpc::RpcChannel>> chans;
      chans.reserve(o.channels);
      if (ns_rounds.empty()) {
        threads = Threads();
        m0 = Mem::Now();
      }
      const auto t0 = Clock::now();
      for (size_t i = 0; i < o.channels; ++i) chans.push_back(std::move(*hrpc::RpcChannel::Create(**rt, uri)));
      const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
      if (ns_rounds.empty()) {
        m1 = Mem::Now();
        threads_after = Threads();
      }
      ns_rounds.push_back(ns);
    }
    const double wall = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    const double cpu = static_cast<double>(hrpc::examples::SelfCpuNs() - cpu0) / wall;
    std::sort(ns_rounds.begin(), ns_rounds.end());
    const double ns = ns_rounds[ns_rounds.size() / 2];
    std::printf("runtime_bench case=channel_create mode=shared_runtime transport=%s channels=%zu rounds=%zu "
                "ns_per_channel=%.0f heap_bytes_per_channel=%.0f rss_bytes_per_channel=%.0f threads_added=%zd "
                "cpu=%.2f pin=none\n",
                o.transport.c_str(), o.channels, ns_rounds.size(), ns / static_cast<double>(o.channels),
                static_cast<double>(m1.heap - m0.heap) / static_cast<double>(o.channels),
                static_cast<double>(m1.rss - m0.rss) / static_cast<double>(o.channels),
                static_cast<ssize_t>(threads_after) - static_cast<ssize_t>(threads), cpu);
  }
  {
    hrpc::RpcChannelOptions co;
    co.runtime = RuntimeFor(o);
    co.runtime.workers = 1;
    std::vector<std::unique_ptr<hrpc::RpcChannel>> chans;
    chans.reserve(o.baseline_channels);
    const size_t threads = Threads();
    const Mem m0 = Mem::Now();
    const uint64_t cpu0 = hrpc::examples::SelfCpuNs();
    const auto t0 = Clock::now();
    for (size_t i = 0; i < o.baseline_channels; ++i) {
      auto c = hrpc::RpcChannel::Create(uri, co);
      if (!c.ok()) {
        std::printf("runtime_bench case=channel_create mode=private_runtime error=\"%s\"\n",
                    c.status().ToString().c_str());
        return;
      }
      chans.push_back(std::move(*c));
    }
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    const double cpu = static_cast<double>(hrpc::examples::SelfCpuNs() - cpu0) / ns;
    const Mem m1 = Mem::Now();
    std::printf("runtime_bench case=channel_create mode=private_runtime(baseline) transport=%s channels=%zu "
                "ns_per_channel=%.0f heap_bytes_per_channel=%.0f rss_bytes_per_channel=%.0f threads_added=%zd "
                "cpu=%.2f pin=none\n",
                o.transport.c_str(), o.baseline_channels, ns / static_cast<double>(o.baseline_channels),
                static_cast<double>(m1.heap - m0.heap) / static_cast<double>(o.baseline_channels),
                static_cast<double>(m1.rss - m0.rss) / static_cast<double>(o.baseline_channels),
                static_cast<ssize_t>(Threads()) - static_cast<ssize_t>(threads), cpu);
  }
}

// Connections: o.servers servers on one runtime, a channel to each, one call
// from every worker (so each worker connects to each server).
void Connections(const Options& o, bool srq, const char* mode) {
  hrpc::RuntimeOptions ro = RuntimeFor(o);
  ro.rdma.use_srq = srq;
  auto rt_or = hrpc::Runtime::Create(ro);
  if (!rt_or.ok()) {
    std::printf("runtime_bench case=connection mode=%s error=\"%s\"\n", mode, rt_or.status().ToString().c_str());
    return;
  }
  hrpc::Runtime& rt = **rt_or;
  hrpc::examples::EchoServiceImpl service;
  std::vector<std::unique_ptr<hrpc::Server>> servers;
  std::vector<std::unique_ptr<hrpc::RpcChannel>> chans;
  for (size_t i = 0; i < o.servers; ++i) {
    hrpc::ServerOptions so;
    so.listen = {o.transport + "://" + o.addr + ":0"};
    auto s = hrpc::Server::Create(rt, so);
    if (!s.ok() || !(*s)->RegisterService(&service).ok() || !(*s)->Start().ok()) {
      std::printf("runtime_bench case=connection mode=%s error=\"server start failed\"\n", mode);
      return;
    }
    const std::string bound = (*s)->listen_uris().at(0);
    servers.push_back(std::move(*s));
    chans.push_back(std::move(*hrpc::RpcChannel::Create(rt, o.transport + "://" + o.addr + ":" +
                                                                 bound.substr(bound.rfind(':') + 1))));
  }
  // One warm-up call on a separate server so that transports, stacks and the
  // first pool blocks exist before measuring.
  {
    hrpc_examples::Echo::Stub stub(chans[0].get());
    hrpc::ClientContext ctx;
    hrpc_examples::EchoRequest req;
    hrpc_examples::EchoResponse resp;
    for (size_t w = 0; w < rt.num_workers(); ++w) (void)stub.Echo(ctx, req, &resp);
  }
  const size_t before = rt.stats().client_connections;
  const Mem m0 = Mem::Now();
  const uint64_t cpu0 = hrpc::examples::SelfCpuNs();
  const auto t0 = Clock::now();
  size_t failed = 0;
  for (size_t i = 1; i < chans.size(); ++i) {
    hrpc_examples::Echo::Stub stub(chans[i].get());
    for (size_t w = 0; w < rt.num_workers(); ++w) {
      hrpc::ClientContext ctx;
      hrpc_examples::EchoRequest req;
      req.set_text("x");
      hrpc_examples::EchoResponse resp;
      const hrpc::Status st = stub.Echo(ctx, req, &resp);
      if (!st.ok() && failed++ == 0) std::fprintf(stderr, "runtime_bench: first failed call: %s\n", st.ToString().c_str());
    }
  }
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
  const double cpu = static_cast<double>(hrpc::examples::SelfCpuNs() - cpu0) / ns;
  const Mem m1 = Mem::Now();
  const size_t conns = rt.stats().client_connections - before;
  const double n = static_cast<double>(conns == 0 ? 1 : conns);
  std::printf("runtime_bench case=connection mode=%s transport=%s connections=%zu failed=%zu "
              "heap_bytes_per_connection=%.0f rss_bytes_per_connection=%.0f us_per_connect_and_call=%.1f "
              "threads=%zu cpu=%.2f pin=none note=client+server_side\n",
              mode, o.transport.c_str(), conns, failed, static_cast<double>(m1.heap - m0.heap) / n,
              static_cast<double>(m1.rss - m0.rss) / n, ns / n / 1000.0, Threads(), cpu);
  chans.clear();
  servers.clear();
}

// Raw kernel sockets connected the same way: listener, connect, accept.
void RawSockets(const Options& o) {
  const size_t n = (o.servers - 1) * o.workers;
  std::vector<int> fds;
  const Mem m0 = Mem::Now();
  const auto t0 = Clock::now();
  const int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(lfd, 4096) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::printf("runtime_bench case=connection mode=raw_sockets(baseline) error=\"%s\"\n", std::strerror(errno));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) break;
    fds.push_back(c);
    fds.push_back(accept(lfd, nullptr, nullptr));
  }
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
  const Mem m1 = Mem::Now();
  const double k = static_cast<double>(fds.size() / 2);
  std::printf("runtime_bench case=connection mode=raw_sockets(baseline) transport=tcp connections=%zu "
              "heap_bytes_per_connection=%.0f rss_bytes_per_connection=%.0f us_per_connect=%.1f pin=none "
              "note=user_space_only\n",
              fds.size() / 2, static_cast<double>(m1.heap - m0.heap) / k, static_cast<double>(m1.rss - m0.rss) / k,
              ns / k / 1000.0);
  for (int fd : fds) close(fd);
  close(lfd);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const char* a = std::getenv("RXE_GUEST_ADDR"); a != nullptr && *a != '\0') o.addr = a;
  CLI::App app("What channels and connections cost on a shared Runtime, with same-run baselines\n"
               "(one runtime_bench line per case; see the header of bench/runtime_bench.cc).",
               "runtime_bench");
  app.add_option("--transport", o.transport, "the transport (rdma: in the Soft-RoCE guest)")
      ->check(CLI::IsMember({"tcp", "rdma"}))
      ->capture_default_str();
  app.add_option("--channels", o.channels, "channel_create: channels on the shared runtime")->capture_default_str();
  app.add_option("--servers", o.servers, "connection: servers, one connection each (at least 2)")
      ->capture_default_str();
  app.add_option("--workers", o.workers, "workers of the shared runtime (at least 1)")->capture_default_str();
  app.add_option("--addr", o.addr,
                 "address to listen on and call (rdma: the device's IPv4 address; default: RXE_GUEST_ADDR if set)")
      ->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  o.servers = std::max<size_t>(2, o.servers);
  o.workers = std::max<size_t>(1, o.workers);
  spdlog::set_level(spdlog::level::warn);
  ChannelCreate(o);
  if (o.transport == "rdma") {
    Connections(o, /*srq=*/true, "shared_runtime_srq");
    Connections(o, /*srq=*/false, "shared_runtime_ring_per_connection(baseline)");
  } else {
    Connections(o, /*srq=*/false, "shared_runtime");
    RawSockets(o);
  }
  return 0;
}
