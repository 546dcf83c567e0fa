// transport_bench for the rdma transport: one-sided WRITE/READ bandwidth and a
// SEND ping-pong (64 bytes unless --ping-size) between two workers of this process
// (each with its own transport, connected over rdmacm to --addr; receive queues per
// connection, or one shared one per transport with --srq), one machine-readable line
// per case:
//   transport_bench case=write transport=rdma size=65536 MBps=… p50_us=… p99_us=… cpu=…
// MBps is MiB/s (2^20), perftest's unit. pingpong p50/p99 are round trips;
// half_rtt_us is comparable with ib_send_lat's one-way figure. Round trips are
// timed with the cycle counter, as perftest times them: in the Soft-RoCE guest the
// clocksource is the HPET and one steady_clock read costs ~3 us, more than the
// difference being measured.
// bench/rdma_bench.sh runs it in the Soft-RoCE guest beside perftest.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/cli.h"
#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/transport/rdma.h"

using namespace hrpc;
using namespace hrpc::transport;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string addr = "10.11.0.1";
  double seconds = 3.0;
  size_t ping_size = 64;
  bool srq = false;
  std::vector<size_t> sizes = {64 * 1024, 256 * 1024, 1024 * 1024};
  uint32_t depth = 16;
  uint32_t iters = 5000;
  CompletionMode mode = CompletionMode::kPolling;         // client
  CompletionMode server_mode = CompletionMode::kBlocking;  // server
  std::string cases = "write,read,pingpong";
};

template <class F>
auto On(coro::Worker& w, F&& fn) {
  return coro::Async(w.scheduler(), std::forward<F>(fn)).Get();
}

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

int Die(const Status& s, const char* what) {
  std::fprintf(stderr, "rdma_transport_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (const char* e = std::getenv("RXE_GUEST_ADDR")) a.addr = e;
  std::string mode = "polling", server_mode = "blocking";
  CLI::App app("transport_bench for the rdma transport: one-sided WRITE/READ bandwidth and a SEND\n"
               "ping-pong (--ping-size bytes) between two workers of this process, connected over rdmacm to --addr; one\n"
               "transport_bench line per case (bench/rdma_bench.sh runs it beside perftest).",
               "rdma_transport_bench");
  app.add_option("--addr", a.addr, "the device's IPv4 address (default: RXE_GUEST_ADDR if set)")
      ->capture_default_str();
  app.add_option("--seconds", a.seconds, "write/read: seconds per size")->capture_default_str();
  app.add_option("--sizes", a.sizes, "write/read: comma-separated sizes in bytes")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--depth", a.depth, "write/read: one-sided ops outstanding")->capture_default_str();
  app.add_option("--ping-size", a.ping_size, "pingpong: bytes per message")
      ->check(CLI::Range(size_t{1}, size_t{64 * 1024}))
      ->capture_default_str();
  app.add_flag("--srq", a.srq, "each transport receives through a shared receive queue (as the runtime's do)");
  app.add_option("--iters", a.iters, "pingpong: round trips")->capture_default_str();
  app.add_option("--cases", a.cases, "comma-separated: write, read, pingpong")->capture_default_str();
  app.add_option("--mode", mode, "the client's completions")
      ->check(CLI::IsMember({"polling", "blocking"}))
      ->capture_default_str();
  app.add_option("--server-mode", server_mode, "the server's completions")
      ->check(CLI::IsMember({"polling", "blocking"}))
      ->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  a.mode = mode == "blocking" ? CompletionMode::kBlocking : CompletionMode::kPolling;
  a.server_mode = server_mode == "polling" ? CompletionMode::kPolling : CompletionMode::kBlocking;
  spdlog::set_level(spdlog::level::warn);
  if (!RdmaDeviceAvailable()) {
    std::printf("transport_bench SKIPPED transport=rdma reason=no-rdma-device\n");
    return 0;
  }
  const size_t max_size = *std::max_element(a.sizes.begin(), a.sizes.end());
  mempool::PoolOptions po;
  po.arena_bytes = 128u << 20;
  po.max_class_bytes = std::max<size_t>(32u << 20, max_size);
  po.best_page_mode = mempool::PageMode::kTransparentHuge;
  po.max_arenas = 1;
  auto pool = mempool::Pool::Create(po);
  if (!pool.ok()) return Die(pool.status(), "pool");
  auto sw = coro::Worker::Start({.sched = {.name = "bench-server"}});
  auto cw = coro::Worker::Start({.sched = {.name = "bench-client"}});
  if (!sw.ok() || !cw.ok()) return Die(InternalError("worker"), "start");
  auto dom = RdmaDomain::Open(**pool);
  if (!dom.ok()) return Die(dom.status(), "domain");
  RdmaOptions o;
  o.domain = *dom;
  // The client polls as chosen; the server side of one-sided ops has nothing to
  // do (like perftest's passive side), so it blocks unless --server-mode=polling:
  // on a 2-vCPU guest a second busy poller starves the soft-RoCE kernel threads.
  o.completion = a.server_mode;
  o.common.recv_depth = 64;
  o.common.max_message_bytes = 64 * 1024;
  o.sq_depth = 512;
  o.use_srq = a.srq;
  o.srq_depth = 128;  // slots of max_message_bytes each, from the pool
  o.max_rd_atomic = 128;
  auto st = On(**sw, [&]() { return CreateRdmaTransport((*sw)->scheduler(), **pool, o); });
  RdmaOptions co = o;
  co.completion = a.mode;
  auto ct = On(**cw, [&]() { return CreateRdmaTransport((*cw)->scheduler(), **pool, co); });
  if (!st.ok()) return Die(st.status(), "server transport");
  if (!ct.ok()) return Die(ct.status(), "client transport");
  auto l = On(**sw, [&]() { return (*st)->Listen("rdma://" + a.addr + ":0"); });
  if (!l.ok()) return Die(l.status(), "listen");
  auto acc = coro::Async((*sw)->scheduler(), [&]() { return (*l)->Accept(); });
  auto c = On(**cw, [&]() { return (*ct)->Connect((*l)->uri()); });
  if (!c.ok()) return Die(c.status(), "connect");
  auto s = acc.Get();
  if (!s.ok()) return Die(s.status(), "accept");
  Connection& client = **c;
  Connection& server = **s;
  auto has = [&](const char* k) { return a.cases.find(k) != std::string::npos; };

  for (const char* op : {"write", "read"}) {
    if (!has(op)) continue;
    const bool write = std::strcmp(op, "write") == 0;
    for (size_t size : a.sizes) {
      // The server exposes depth slots; each client coroutine loops over its own slot.
      auto target = (*pool)->Allocate(size * a.depth);
      if (!target.ok()) return Die(target.status(), "allocate target");
      auto d = On(**sw, [&]() { return server.Expose(*target, Access::kReadWrite); });
      if (!d.ok()) return Die(d.status(), "expose");
      std::atomic<uint64_t> bytes{0};
      std::atomic<bool> stop{false};
      std::vector<double> lat_us;
      Status result = On(**cw, [&]() -> Status {
        coro::WaitGroup wg;
        std::atomic<int> bad{0};
        std::vector<std::vector<double>> lats(a.depth);
        wg.Add(a.depth);
        for (uint32_t i = 0; i < a.depth; ++i) {
          coro::Scheduler::Current()->Spawn([&, i] {
            auto local = (*pool)->Allocate(size);
            if (!local.ok()) {
              bad++;
              wg.Done();
              return;
            }
            mempool::IoBuf buf(*local);
            const RemoteDescriptor sub = d->Sub(i * size, static_cast<uint32_t>(size));
            while (!stop.load(std::memory_order_relaxed)) {
              const auto t0 = Clock::now();
              Status r = write ? client.Write(buf, sub) : client.Read(sub, buf);
              if (!r.ok()) {
                bad++;
                break;
              }
              lats[i].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
              bytes.fetch_add(size, std::memory_order_relaxed);
            }
            wg.Done();
          });
        }
        coro::this_coro::SleepFor(std::chrono::milliseconds(200));  // warm-up
        const uint64_t b0 = bytes.load();
        const auto cpu0 = (*cw)->CpuTime();
        const auto t0 = Clock::now();
        coro::this_coro::SleepFor(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(a.seconds)));
        const uint64_t b1 = bytes.load();
        const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        const double cpu = std::chrono::duration<double>((*cw)->CpuTime() - cpu0).count() / secs;
        stop = true;
        HRPC_TRY(wg.Wait());
        for (auto& v : lats) lat_us.insert(lat_us.end(), v.begin(), v.end());
        if (bad.load() != 0) return InternalError("one-sided op failed: " + client.status().ToString());
        const double mbps = static_cast<double>(b1 - b0) / secs / (1024.0 * 1024.0);
        std::printf("transport_bench case=%s transport=rdma size=%zu MBps=%.2f p50_us=%.1f p99_us=%.1f cpu=%.2f "
                    "depth=%u\n",
                    op, size, mbps, Pct(lat_us, 0.5), Pct(lat_us, 0.99), cpu, a.depth);
        std::fflush(stdout);
        return Status::Ok();
      });
      if (!result.ok()) return Die(result, op);
      (void)On(**sw, [&]() { return server.Revoke(*d); });
    }
  }

  if (has("pingpong")) {
    const size_t size = a.ping_size;
    auto echo = coro::Async((*sw)->scheduler(), [&]() -> Status {
      for (uint32_t i = 0; i < a.iters + 100; ++i) {
        HRPC_ASSIGN_OR_RETURN(mempool::IoBuf m, server.Recv());
        HRPC_TRY(server.Send(std::move(m)));
      }
      return Status::Ok();
    });
    const coro::CycleClock& ticks = coro::CycleClock::Get();
    std::vector<double> rtt;
    double cpu = 0;
    Status r = On(**cw, [&]() -> Status {
      rtt.reserve(a.iters);
      const auto cpu0 = (*cw)->CpuTime();
      const auto w0 = Clock::now();
      for (uint32_t i = 0; i < a.iters + 100; ++i) {
        HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, (*pool)->Allocate(size));
        std::memset(b.data(), static_cast<int>(i), size);
        const uint64_t t0 = ticks.Now();
        HRPC_TRY(client.Send(mempool::IoBuf(std::move(b))));
        HRPC_ASSIGN_OR_RETURN(mempool::IoBuf m, client.Recv());
        if (i >= 100) rtt.push_back(ticks.Micros(ticks.Now() - t0));
        if (m.size() != size) return DataLossError("echo size");
      }
      cpu = std::chrono::duration<double>((*cw)->CpuTime() - cpu0).count() /
            std::chrono::duration<double>(Clock::now() - w0).count();
      return Status::Ok();
    });
    if (!r.ok()) return Die(r, "pingpong");
    if (Status e = echo.Get(); !e.ok()) return Die(e, "echo");
    const double p50 = Pct(rtt, 0.5), p99 = Pct(rtt, 0.99);
    std::printf("transport_bench case=pingpong transport=rdma size=%zu p50_us=%.2f p99_us=%.2f half_rtt_us=%.2f "
                "cpu=%.2f iters=%u tsc_mhz=%.0f\n",
                size, p50, p99, p50 / 2, cpu, a.iters, ticks.ticks_per_ns() * 1000.0);
    std::fflush(stdout);
  }

  (void)On(**cw, [&]() { c->reset(); });
  (void)On(**sw, [&]() {
    s->reset();
    l->reset();
  });
  (void)On(**cw, [&]() { ct->reset(); });
  (void)On(**sw, [&]() { st->reset(); });
  cw->reset();
  sw->reset();
  dom->reset();
  return 0;
}
