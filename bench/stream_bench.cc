// stream_bench: a server stream of 1 MiB messages against the same bytes as
// unary calls (concurrency 8) and against a raw TCP stream, in one run, over
// TCP loopback. The server is a child process pinned to --server_cpu, the
// client this process pinned to --client_cpu (one worker each). One line per
// case:
//
//   stream_bench transport=raw case=stream payload=1048576 MBps=... cpu=C/S rounds=3 all_MBps=...
//   stream_bench transport=tcp case=server_stream payload=1048576 window=64/8388608 MBps=... cpu=C/S raw_stream_MBps=... ratio_vs_raw_stream=...
//   stream_bench transport=tcp case=unary payload=1048576 concurrency=8 MBps=... cpu=C/S ratio_stream_vs_unary=...
//
// The cases run in --rounds interleaved rounds (raw, stream, unary, raw, ...)
// and each line is the round with the median MBps (all_MBps lists them).
// cpu=C/S: client and server process CPU in % of one core over the measured
// interval. The messages' attachments are one pool block filled once and
// shared (the server sends the same block again), so MBps is the transport's
// and the runtime's work, not a memset's. The raw stream writes 1 MiB
// buffers with send() and reads them with recv() into one buffer, under the
// congestion control hrpc gives loopback connections (common/congestion.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/cli.h"
#include "common/congestion.h"
#include "common/proc_cpu.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"
#include "stream_bench.hrpc.h"

namespace {

using Clock = std::chrono::steady_clock;
using hrpc::examples::ProcCpuNs;
using hrpc::examples::SelfCpuNs;

struct Config {
  std::string role = "client";
  int server_cpu = 0;
  int client_cpu = 1;
  uint64_t payload = 1 << 20;
  size_t concurrency = 8;
  double duration = 3;
  double warmup = 1;
  uint64_t window_bytes = 8u << 20;
  size_t rounds = 3;  // the client's stream window (bytes; messages: 64)
};

void Pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

class BlocksImpl final : public stream_bench::Blocks::Service {
 public:
  explicit BlocksImpl(hrpc::mempool::Pool& pool) : pool_(pool) {}
  hrpc::Status Download(hrpc::ServerContext& ctx, const stream_bench::DownloadRequest& req,
                        hrpc::ServerWriter<stream_bench::Block>* writer) override {
    HRPC_ASSIGN_OR_RETURN(hrpc::mempool::IoBuf block, BlockOf(ctx, req.block_bytes()));
    stream_bench::Block b;
    for (uint64_t i = 0;; ++i) {
      b.set_seq(i);
      if (!writer->Write(b, block.Share())) return hrpc::Status::Ok();  // the client stopped
    }
  }
  hrpc::Status Get(hrpc::ServerContext& ctx, const stream_bench::DownloadRequest& req,
                   stream_bench::Block* resp) override {
    HRPC_ASSIGN_OR_RETURN(ctx.response_attachment(), BlockOf(ctx, req.block_bytes()));
    resp->set_seq(1);
    return hrpc::Status::Ok();
  }

 private:
  hrpc::Result<hrpc::mempool::IoBuf> BlockOf(hrpc::ServerContext& ctx, size_t n) {
    if (block_.size() != n) {  // one worker: no race
      HRPC_ASSIGN_OR_RETURN(hrpc::mempool::Buffer b, ctx.pool()->Allocate(n));
      std::memset(b.data(), 'b', n);
      block_ = hrpc::mempool::IoBuf(std::move(b));
    }
    (void)pool_;
    return block_.Share();
  }
  hrpc::mempool::Pool& pool_;
  hrpc::mempool::IoBuf block_;
};

// Raw baseline, server side: every accepted socket gets `payload`-byte
// send()s until the client closes it.
void RawServe(int listener, size_t payload) {
  std::vector<char> buf(payload, 'r');
  for (;;) {
    int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) return;
    hrpc::examples::SetCongestion(fd);
    std::thread([fd, &buf] {
      for (;;) {
        size_t off = 0;
        while (off < buf.size()) {
          ssize_t n = ::send(fd, buf.data() + off, buf.size() - off, MSG_NOSIGNAL);
          if (n <= 0) {
            ::close(fd);
            return;
          }
          off += static_cast<size_t>(n);
        }
      }
    }).detach();
  }
}

int ServerMain(const Config& cfg) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  Pin(cfg.server_cpu);
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.runtime.workers = 1;
  if (cfg.server_cpu >= 0) so.runtime.cpus = {cfg.server_cpu};
  auto server = hrpc::Server::Create(so);
  if (!server.ok()) {
    std::fprintf(stderr, "stream_bench server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  BlocksImpl service((*server)->pool(0));
  if (!(*server)->RegisterService(&service).ok() || !(*server)->Start().ok()) return 1;
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 16) != 0 ||
      ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return 1;
  }
  std::thread(RawServe, l, cfg.payload).detach();
  const std::string uri = (*server)->listen_uris().at(0);
  std::printf("READY %s %d\n", uri.substr(uri.rfind(':') + 1).c_str(), ntohs(a.sin_port));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  (*server)->Shutdown();
  return 0;
}

struct Measure {
  double mbps = 0, client_cpu = 0, server_cpu = 0;
};

// Runs `step` (returns bytes moved) until warmup + duration; measures the
// last `duration` seconds.
template <class Step>
Measure Run(const Config& cfg, pid_t server, Step step) {
  const auto warm_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.warmup));
  while (Clock::now() < warm_end) step();
  const uint64_t c0 = SelfCpuNs(), s0 = ProcCpuNs(server);
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.duration));
  uint64_t bytes = 0;
  while (Clock::now() < end) {
    const uint64_t n = step();
    if (n == 0) return {};
    bytes += n;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return {bytes / secs / 1e6, (SelfCpuNs() - c0) / 1e9 / secs * 100, (ProcCpuNs(server) - s0) / 1e9 / secs * 100};
}

int ClientMain(const Config& cfg, const char* self) {
  int fds[2];
  if (pipe(fds) != 0) return 1;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    std::string role = "--role=server", cpu = "--server_cpu=" + std::to_string(cfg.server_cpu),
                payload = "--payload=" + std::to_string(cfg.payload);
    char* argv[] = {const_cast<char*>(self), role.data(), cpu.data(), payload.data(), nullptr};
    execv(self, argv);
    _exit(127);
  }
  close(fds[1]);
  FILE* out = fdopen(fds[0], "r");
  char line[256];
  int hrpc_port = 0, raw_port = 0;
  while (fgets(line, sizeof line, out) != nullptr) {
    if (std::sscanf(line, "READY %d %d", &hrpc_port, &raw_port) == 2) break;
  }
  if (hrpc_port == 0) {
    std::printf("stream_bench error=server-did-not-start\n");
    return 1;
  }
  Pin(cfg.client_cpu);
  const size_t payload = cfg.payload;

  hrpc::RpcChannelOptions co;
  co.runtime.workers = 1;
  co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  if (cfg.client_cpu >= 0) co.runtime.cpus = {cfg.client_cpu};
  co.stream_window.bytes = static_cast<uint32_t>(cfg.window_bytes);
  auto channel = hrpc::RpcChannel::Create("tcp://127.0.0.1:" + std::to_string(hrpc_port), co);
  if (!channel.ok() || !(*channel)->Connect().ok()) {
    std::printf("stream_bench error=connect\n");
    return 1;
  }
  stream_bench::Blocks::Stub stub(channel->get());
  stream_bench::DownloadRequest req;
  req.set_block_bytes(payload);

  // Raw TCP stream, server -> client, recv() into one buffer.
  auto raw_case = [&]() -> Measure {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    hrpc::examples::SetCongestion(fd);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(raw_port));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
    std::vector<char> buf(payload);
    Measure m = Run(cfg, pid, [&]() -> uint64_t {
      size_t off = 0;
      while (off < payload) {
        ssize_t n = ::recv(fd, buf.data() + off, payload - off, 0);
        if (n <= 0) return 0;
        off += static_cast<size_t>(n);
      }
      return payload;
    });
    ::close(fd);
    return m;
  };

  // Server stream: a coroutine on the channel's worker reads.
  auto stream_case = [&]() -> Measure {
    Measure m;
    hrpc::coro::Event done;
    (*channel)->scheduler(0).Post([&] {
      hrpc::ClientContext ctx;
      auto reader = stub.Download(ctx, req);
      stream_bench::Block b;
      hrpc::mempool::IoBuf att;
      m = Run(cfg, pid, [&]() -> uint64_t {
        if (!reader->Read(&b, &att) || att.size() != payload) return 0;
        att = hrpc::mempool::IoBuf();
        return payload;
      });
      ctx.Cancel();
      reader->Finish().IgnoreError();
      done.Set();
    });
    done.Wait().IgnoreError();
    return m;
  };

  // The same bytes as unary calls, `concurrency` in flight.
  auto unary_case = [&]() -> Measure {
    std::atomic<uint64_t> bytes{0};
    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    hrpc::coro::WaitGroup wg;
    wg.Add(static_cast<int64_t>(cfg.concurrency));
    for (size_t i = 0; i < cfg.concurrency; ++i) {
      (*channel)->scheduler(0).Post([&] {
        while (!stop.load(std::memory_order_relaxed)) {
          hrpc::ClientContext ctx;
          stream_bench::Block b;
          if (!stub.Get(ctx, req, &b).ok() || ctx.response_attachment().size() != payload) {
            errors.fetch_add(1);
            break;
          }
          bytes.fetch_add(payload, std::memory_order_relaxed);
        }
        wg.Done();
      });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(cfg.warmup));
    const uint64_t b0 = bytes.load(), c0 = SelfCpuNs(), s0 = ProcCpuNs(pid);
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(cfg.duration));
    const uint64_t b1 = bytes.load(), c1 = SelfCpuNs(), s1 = ProcCpuNs(pid);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    stop.store(true);
    wg.Wait().IgnoreError();
    if (errors.load() > 0) return {};
    return {(b1 - b0) / secs / 1e6, (c1 - c0) / 1e9 / secs * 100, (s1 - s0) / 1e9 / secs * 100};
  };

  // Interleaved rounds, so that a noisy neighbour hits every case alike;
  // each line is the round with the median MBps.
  std::vector<Measure> raws, streams, unaries;
  for (size_t r = 0; r < cfg.rounds; ++r) {
    raws.push_back(raw_case());
    streams.push_back(stream_case());
    unaries.push_back(unary_case());
  }
  auto median = [](std::vector<Measure> v) {
    std::sort(v.begin(), v.end(), [](const Measure& a, const Measure& b) { return a.mbps < b.mbps; });
    return v[v.size() / 2];
  };
  const Measure raw = median(raws), st = median(streams), un = median(unaries);
  auto all = [](const std::vector<Measure>& v) {
    std::string s;
    for (const Measure& m : v) s += (s.empty() ? "" : ",") + std::to_string(static_cast<int>(m.mbps));
    return s;
  };
  std::printf("stream_bench transport=raw case=stream payload=%zu MBps=%.1f cpu=%.0f/%.0f rounds=%zu all_MBps=%s "
              "pin=server:%d,client:%d\n",
              payload, raw.mbps, raw.client_cpu, raw.server_cpu, cfg.rounds, all(raws).c_str(), cfg.server_cpu,
              cfg.client_cpu);
  const auto& w = co.stream_window;
  std::printf("stream_bench transport=tcp case=server_stream payload=%zu window=%u/%u MBps=%.1f cpu=%.0f/%.0f "
              "raw_stream_MBps=%.1f ratio_vs_raw_stream=%.2f rounds=%zu all_MBps=%s pin=server:%d,client:%d\n",
              payload, w.messages, w.bytes, st.mbps, st.client_cpu, st.server_cpu, raw.mbps,
              raw.mbps > 0 ? st.mbps / raw.mbps : 0.0, cfg.rounds, all(streams).c_str(), cfg.server_cpu,
              cfg.client_cpu);
  std::printf("stream_bench transport=tcp case=unary payload=%zu concurrency=%zu MBps=%.1f cpu=%.0f/%.0f "
              "ratio_stream_vs_unary=%.2f rounds=%zu all_MBps=%s pin=server:%d,client:%d\n",
              payload, cfg.concurrency, un.mbps, un.client_cpu, un.server_cpu, un.mbps > 0 ? st.mbps / un.mbps : 0.0,
              cfg.rounds, all(unaries).c_str(), cfg.server_cpu, cfg.client_cpu);
  std::fflush(stdout);
  channel->reset();
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"stream_bench: a server stream of large messages vs unary calls vs a raw TCP stream"};
  app.add_option("--role", cfg.role, "client (runs everything) or server (started by the client)")
      ->check(CLI::IsMember({"client", "server"}));
  app.add_option("--server_cpu", cfg.server_cpu, "cpu of the server process (-1: not pinned)")->capture_default_str();
  app.add_option("--client_cpu", cfg.client_cpu, "cpu of the client (-1: not pinned)")->capture_default_str();
  hrpc::examples::AddSize(app, "--payload", &cfg.payload, "bytes per message");
  app.add_option("--concurrency", cfg.concurrency, "unary calls in flight")->capture_default_str();
  hrpc::examples::AddSize(app, "--window", &cfg.window_bytes, "the client's stream window in bytes (>= 256K, < 4G)")
      ->check(CLI::Range(uint64_t{256} << 10, (uint64_t{4} << 30) - 1));
  app.add_option("--rounds", cfg.rounds, "interleaved rounds; each line is the median one")
      ->check(CLI::Range(size_t{1}, size_t{99}))
      ->capture_default_str();
  app.add_option("--duration", cfg.duration, "seconds measured per case")->capture_default_str();
  app.add_option("--warmup", cfg.warmup, "seconds before measuring")->capture_default_str();
  std::string log = "warn";
  hrpc::examples::AddLogLevel(app, &log);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log)) return code;
  if (cfg.role == "server") return ServerMain(cfg);
  return ClientMain(cfg, "/proc/self/exe");
}
