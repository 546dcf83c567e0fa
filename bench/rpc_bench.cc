// rpc_bench: RPC-level figures over one transport, server and client on two
// runtimes of this process (one worker each), for comparison with the
// transport's own limit measured in the same run (bench/rdma_bench.sh puts
// perftest beside it in the Soft-RoCE guest). One line per case:
//   rpc_bench case=pingpong transport=rdma size=64 p50_us=… p99_us=… half_rtt_us=… iters=… cpu=…
//   rpc_bench case=pull transport=rdma size=1048576 depth=8 MBps=… calls=… cpu=…
// pingpong: a unary Echo call with a 64-byte (--ping-size) inline attachment, timed with the
// cycle counter (in the guest a steady_clock read costs ~3 us); half_rtt_us is
// comparable with ib_send_lat's one-way figure. pull: calls whose request
// attachment the server pulls (RDMA READ; on TCP it is streamed), `depth`
// calls in flight, MBps in MiB/s (perftest's unit); --sizes lists the
// attachment sizes (one line each, depth 1 above 16 MiB: one large call at a
// time). cpu: process CPU over wall time (2 = both cores busy). Workers are
// not pinned unless --server-cpu / --client-cpu say so (pin= on every line);
// with --polling both busy-poll, as perftest's processes do.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/echo_service.h"
#include "common/cli.h"
#include "common/proc_cpu.h"
#include "echo/echo.hrpc.h"
#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string transport = "tcp";
  std::string addr = "127.0.0.1";
  std::string cases = "pingpong,pull";
  std::string sizes = "1048576,67108864";
  uint64_t depth = 8;
  uint64_t iters = 5000;
  uint64_t ping_size = 64;  // pingpong: attachment bytes
  double seconds = 3.0;
  bool polling = true;
  int64_t spin_us = -1;  // idle spin before blocking; -1: 1000 with --polling, else 50
  uint64_t chunk = hrpc::kDefaultBulkChunkBytes;  // server: bytes per READ piece
  uint64_t window = 4;                             // server: READ pieces in flight
  int server_cpu = -1;                             // pins the server's worker (-1: not pinned)
  int client_cpu = -1;                             // pins the client's worker
};

hrpc::RuntimeOptions RuntimeFor(const Args& a, const char* name, int cpu) {
  hrpc::RuntimeOptions ro;
  ro.name = name;
  ro.workers = 1;
  if (cpu >= 0) ro.cpus = {cpu};
  ro.transport_choice = a.transport == "rdma" ? hrpc::TransportChoice::kRdma : hrpc::TransportChoice::kTcp;
  ro.rdma.completion = a.polling ? hrpc::transport::CompletionMode::kPolling : hrpc::transport::CompletionMode::kBlocking;
  ro.spin_budget = std::chrono::microseconds(a.spin_us >= 0 ? a.spin_us : a.polling ? 1000 : 50);
  ro.pool.arena_bytes = 256u << 20;
  return ro;
}

// "none", or "server:N,client:M" (-1: that side not pinned).
std::string PinLabel(const Args& a) {
  if (a.server_cpu < 0 && a.client_cpu < 0) return "none";
  return "server:" + std::to_string(a.server_cpu) + ",client:" + std::to_string(a.client_cpu);
}

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

hrpc::mempool::IoBuf Payload(hrpc::mempool::Pool& pool, size_t n) {
  hrpc::mempool::IoBuf out;
  const size_t block = pool.options().max_class_bytes;
  for (size_t off = 0; off < n; off += block) {
    auto b = pool.Allocate(std::min(block, n - off));
    if (!b.ok()) return hrpc::mempool::IoBuf();
    std::memset(b->data(), 0x5a, b->size());
    out.Append(std::move(*b));
  }
  return out;
}

int Pingpong(const Args& a, hrpc::Runtime& client, hrpc::RpcChannel& channel) {
  std::vector<double> us;
  const uint64_t cpu0 = hrpc::examples::SelfCpuNs();
  const auto t0 = Clock::now();
  auto st = hrpc::coro::Async(client.scheduler(0), [&]() -> hrpc::Status {
    hrpc_examples::Echo::Stub stub(&channel);
    hrpc::mempool::IoBuf payload = Payload(client.pool(0), a.ping_size);
    hrpc_examples::EchoRequest req;
    hrpc_examples::EchoResponse resp;
    const hrpc::coro::CycleClock& ticks = hrpc::coro::CycleClock::Get();
    us.reserve(a.iters);
    for (uint64_t i = 0; i < a.iters + a.iters / 10; ++i) {
      hrpc::ClientContext ctx;
      ctx.request_attachment() = payload.Share();
      const uint64_t s = ticks.Now();
      HRPC_TRY(stub.Echo(ctx, req, &resp));
      if (i >= a.iters / 10) us.push_back(ticks.Micros(ticks.Now() - s));  // after a warm-up tenth
    }
    return hrpc::Status::Ok();
  }).Get();
  if (!st.ok()) {
    std::printf("rpc_bench case=pingpong transport=%s error=\"%s\"\n", a.transport.c_str(), st.ToString().c_str());
    return 1;
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = static_cast<double>(hrpc::examples::SelfCpuNs() - cpu0) / 1e9 / wall;
  const double p50 = Pct(us, 0.5);
  std::printf("rpc_bench case=pingpong transport=%s size=%llu p50_us=%.2f p99_us=%.2f half_rtt_us=%.2f iters=%llu "
              "cpu=%.2f tsc_mhz=%.0f pin=%s polling=%d\n",
              a.transport.c_str(), static_cast<unsigned long long>(a.ping_size), p50, Pct(us, 0.99), p50 / 2,
              static_cast<unsigned long long>(a.iters), cpu,
              hrpc::coro::CycleClock::Get().ticks_per_ns() * 1000, PinLabel(a).c_str(), a.polling ? 1 : 0);
  return 0;
}

int Pull(const Args& a, hrpc::Runtime& client, hrpc::RpcChannel& channel, size_t size) {
  const size_t depth = size > (16u << 20) ? 1 : a.depth;
  struct State {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> calls{0}, errors{0};
    std::atomic<int64_t> last_done_ns{0};  // steady_clock time of the latest completion
    std::string first_error;
    hrpc::coro::WaitGroup wg;
  };
  auto state = std::make_shared<State>();
  hrpc::mempool::IoBuf payload = Payload(client.pool(0), size);
  if (payload.size() != size) {
    std::printf("rpc_bench case=pull transport=%s size=%zu error=\"no memory for the payload\"\n", a.transport.c_str(),
                size);
    return 1;
  }
  auto shared = std::make_shared<hrpc::mempool::IoBuf>(std::move(payload));
  // Warm up: one call, so connections and pools exist before the clock starts.
  {
    hrpc_examples::Echo::Stub stub(&channel);
    hrpc::ClientContext ctx;
    ctx.request_attachment() = shared->Share();
    hrpc_examples::EchoRequest req;
    hrpc_examples::EchoResponse resp;
    if (auto s = stub.Echo(ctx, req, &resp); !s.ok()) {
      std::printf("rpc_bench case=pull transport=%s size=%zu error=\"%s\"\n", a.transport.c_str(), size,
                  s.ToString().c_str());
      return 1;
    }
  }
  const uint64_t cpu0 = hrpc::examples::SelfCpuNs();
  const auto t0 = Clock::now();
  state->wg.Add(static_cast<int64_t>(depth));
  for (size_t k = 0; k < depth; ++k) {
    client.scheduler(0).Post([state, shared, &channel] {
      hrpc_examples::Echo::Stub stub(&channel);
      hrpc_examples::EchoRequest req;
      hrpc_examples::EchoResponse resp;
      while (!state->stop.load(std::memory_order_relaxed)) {
        hrpc::ClientContext ctx;
        ctx.request_attachment() = shared->Share();
        hrpc::Status s = stub.Echo(ctx, req, &resp);
        if (s.ok()) {
          state->last_done_ns.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
          state->calls.fetch_add(1, std::memory_order_release);
        } else if (state->errors.fetch_add(1) == 0) {
          state->first_error = s.ToString();
        }
      }
      state->wg.Done();
    }, "pull");
  }
  // Bytes between the first and the last completion seen, over the time
  // between them (calls still in flight at either end are not counted), at
  // least --seconds and 3 calls.
  auto wait_calls = [&](uint64_t n) {
    while (state->calls.load(std::memory_order_acquire) < n && state->errors.load() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  wait_calls(1);
  const uint64_t c0 = state->calls.load(std::memory_order_acquire);
  const int64_t t_first = state->last_done_ns.load(std::memory_order_relaxed);
  std::this_thread::sleep_for(std::chrono::duration<double>(a.seconds));
  wait_calls(c0 + 3);
  const uint64_t c1 = state->calls.load(std::memory_order_acquire);
  const int64_t t_last = state->last_done_ns.load(std::memory_order_relaxed);
  const uint64_t calls = c1 - c0;
  const double span = static_cast<double>(t_last - t_first) / 1e9;
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = static_cast<double>(hrpc::examples::SelfCpuNs() - cpu0) / 1e9 / wall;
  state->stop.store(true);
  state->wg.Wait().IgnoreError();
  if (state->errors.load() > 0) {
    std::printf("rpc_bench case=pull transport=%s size=%zu errors=%llu error=\"%s\"\n", a.transport.c_str(), size,
                static_cast<unsigned long long>(state->errors.load()), state->first_error.c_str());
    return 1;
  }
  std::printf("rpc_bench case=pull transport=%s size=%zu depth=%zu chunk=%llu window=%llu MBps=%.1f calls=%llu cpu=%.2f "
              "pin=%s polling=%d\n",
              a.transport.c_str(), size, depth, static_cast<unsigned long long>(a.chunk),
              static_cast<unsigned long long>(a.window),
              span > 0 ? static_cast<double>(calls) * static_cast<double>(size) / span / (1 << 20) : 0.0,
              static_cast<unsigned long long>(calls), cpu, PinLabel(a).c_str(), a.polling ? 1 : 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (const char* e = std::getenv("RXE_GUEST_ADDR"); e != nullptr && *e != '\0') a.addr = e;
  CLI::App app("RPC round trips and pulled payloads over one transport (see the header).",
               "rpc_bench");
  app.add_option("--transport", a.transport, "tcp | rdma")->capture_default_str();
  app.add_option("--addr", a.addr, "address to listen on and call (rdma: the device's IPv4 address)")
      ->capture_default_str();
  app.add_option("--cases", a.cases, "comma-separated: pingpong, pull")->capture_default_str();
  app.add_option("--sizes", a.sizes, "pull: comma-separated attachment sizes in bytes")->capture_default_str();
  app.add_option("--depth", a.depth, "pull: calls in flight (1 above 16 MiB)")->capture_default_str();
  app.add_option("--iters", a.iters, "pingpong: timed round trips")->capture_default_str();
  app.add_option("--ping-size", a.ping_size, "pingpong: attachment bytes (inline up to the eager threshold)")
      ->capture_default_str();
  app.add_option("--seconds", a.seconds, "pull: seconds per size")->capture_default_str();
  app.add_flag("--polling", a.polling,
               "workers busy-poll (RDMA CQ polling mode) instead of blocking "
               "(on by default; --polling=false turns it off)");
  app.add_option("--spin-us", a.spin_us,
                 "microseconds an idle worker polls before it blocks (-1: 1000 with --polling, else 50; "
                 "0 makes every wait block, so instruction counts do not depend on timing)")
      ->capture_default_str();
  hrpc::examples::AddSize(app, "--chunk", &a.chunk,
                          "server: bytes per READ piece of a pulled attachment (bulk_chunk_bytes)");
  app.add_option("--window", a.window, "server: READ pieces in flight per attachment (bulk_window)")
      ->capture_default_str();
  app.add_option("--server-cpu", a.server_cpu, "pin the server's worker to this cpu (-1: not pinned)")
      ->capture_default_str();
  app.add_option("--client-cpu", a.client_cpu, "pin the client's worker to this cpu (-1: not pinned)")
      ->capture_default_str();
  std::string log_level = "warn";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;

  auto server_rt = hrpc::Runtime::Create(RuntimeFor(a, "rpcb-srv", a.server_cpu));
  auto client_rt = hrpc::Runtime::Create(RuntimeFor(a, "rpcb-cli", a.client_cpu));
  if (!server_rt.ok() || !client_rt.ok()) {
    std::printf("rpc_bench transport=%s error=\"%s\"\n", a.transport.c_str(),
                (!server_rt.ok() ? server_rt.status() : client_rt.status()).ToString().c_str());
    return 1;
  }
  hrpc::ServerOptions so;
  so.listen = {a.transport + "://" + a.addr + ":0"};
  so.bulk_chunk_bytes = a.chunk;
  so.bulk_window = a.window;
  auto server = hrpc::Server::Create(**server_rt, so);
  hrpc::examples::EchoServiceImpl service;
  if (!server.ok() || !(*server)->RegisterService(&service).ok()) return 1;
  if (auto s = (*server)->Start(); !s.ok()) {
    std::printf("rpc_bench transport=%s error=\"%s\"\n", a.transport.c_str(), s.ToString().c_str());
    return 1;
  }
  const std::string bound = (*server)->listen_uris().at(0);
  auto channel = hrpc::RpcChannel::Create(**client_rt, a.transport + "://" + a.addr + ":" +
                                                           bound.substr(bound.rfind(':') + 1));
  if (!channel.ok() || !(*channel)->Connect().ok()) {
    std::printf("rpc_bench transport=%s error=\"connect failed\"\n", a.transport.c_str());
    return 1;
  }
  int rc = 0;
  if (a.cases.find("pingpong") != std::string::npos) rc |= Pingpong(a, **client_rt, **channel);
  if (a.cases.find("pull") != std::string::npos) {
    std::stringstream ss(a.sizes);
    for (std::string s; std::getline(ss, s, ',');) rc |= Pull(a, **client_rt, **channel, std::stoull(s));
  }
  channel->reset();
  server->reset();
  return rc;
}
