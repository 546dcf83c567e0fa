// A closed-loop load generator over an RpcChannel: `concurrency` coroutines
// per connection on the channel's own workers, each calling Echo back to back
// with a payload attachment. Used by throughput_client and bench/echo_bench.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/proc_cpu.h"
#include "echo/echo.hrpc.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/stats.h"

namespace hrpc::examples {

struct LoadOptions {
  size_t coroutines_per_worker = 32;
  size_t payload = 64;
  bool echo = false;  // the server sends the payload back (response attachment)
  std::chrono::duration<double> warmup{0.5};
  std::chrono::duration<double> duration{3.0};
  bool progress = false;  // a live line on stderr, once per second
  std::string label;      // printed at the start of the progress line
};

struct LoadResult {
  uint64_t calls = 0;
  uint64_t errors = 0;
  std::string first_error;
  double seconds = 0;
  double rps = 0;
  double mbps = 0;  // payload bytes per second (both directions when echo), 1 MB = 1e6 B
  double p50_us = 0, p99_us = 0, p999_us = 0;
  double client_cpu_pct = 0;  // of one core: 100 = one core busy
  double server_cpu_pct = -1;  // from the ServerStats RPC; -1 when unknown
};

// Server CPU time via the ServerStats RPC (0 on failure).
inline uint64_t ServerCpuNs(hrpc_examples::Echo::Stub& stub) {
  hrpc::ClientContext ctx;
  ctx.set_timeout(std::chrono::seconds(5));
  hrpc_examples::StatsRequest req;
  hrpc_examples::StatsResponse resp;
  return stub.ServerStats(ctx, req, &resp).ok() ? resp.cpu_ns() : 0;
}

inline LoadResult RunLoad(hrpc::RpcChannel& channel, const LoadOptions& o) {
  hrpc_examples::Echo::Stub stub(&channel);
  LoadResult r;
  // The payload, in blocks of at most the pool's largest class; every call
  // sends the same blocks (shared, not copied).
  auto payload = std::make_shared<hrpc::mempool::IoBuf>();
  const size_t block = channel.pool().options().max_class_bytes;
  for (size_t off = 0; off < o.payload; off += block) {
    const size_t n = std::min(block, o.payload - off);
    auto b = channel.pool().Allocate(n);
    if (!b.ok()) {
      r.errors = 1;
      r.first_error = b.status().ToString();
      return r;
    }
    for (size_t i = 0; i < n; ++i) b->data()[i] = static_cast<char>((off + i) * 131);
    payload->Append(std::move(*b));
  }
  // Shared with the load coroutines: the last of them may still be inside
  // WaitGroup::Done() when Wait() returns here.
  struct State {
    std::atomic<bool> stop{false}, measuring{false};
    std::atomic<uint64_t> calls{0}, errors{0};
    std::mutex err_mu;
    std::string first_error;
    hrpc::LatencyHistogram hist;
    hrpc::coro::WaitGroup wg;
  };
  auto st = std::make_shared<State>();
  auto& stop = st->stop;
  auto& measuring = st->measuring;
  auto& calls = st->calls;
  auto& errors = st->errors;
  auto& hist = st->hist;
  const size_t workers = channel.num_workers();
  st->wg.Add(static_cast<int64_t>(workers * o.coroutines_per_worker));
  for (size_t w = 0; w < workers; ++w) {
    for (size_t k = 0; k < o.coroutines_per_worker; ++k) {
      channel.scheduler(w).Post([st, &stub, &o, payload] {
        hrpc_examples::EchoRequest req;
        req.set_echo_attachment(o.echo);
        hrpc_examples::EchoResponse resp;
        while (!st->stop.load(std::memory_order_relaxed)) {
          hrpc::ClientContext ctx;
          ctx.request_attachment() = payload->Share();
          if (o.echo) ctx.set_response_attachment_capacity(o.payload);
          const auto t0 = std::chrono::steady_clock::now();
          hrpc::Status s = stub.Echo(ctx, req, &resp);
          const auto dt = std::chrono::steady_clock::now() - t0;
          if (!st->measuring.load(std::memory_order_relaxed)) continue;
          if (s.ok()) {
            st->calls.fetch_add(1, std::memory_order_relaxed);
            st->hist.Record(std::chrono::duration_cast<std::chrono::nanoseconds>(dt));
          } else if (st->errors.fetch_add(1) == 0) {
            std::lock_guard lock(st->err_mu);
            st->first_error = s.ToString();
          }
        }
        st->wg.Done();
      }, "load");
    }
  }
  std::this_thread::sleep_for(o.warmup);
  const uint64_t scpu0 = ServerCpuNs(stub);
  const uint64_t ccpu0 = SelfCpuNs();
  const auto t0 = std::chrono::steady_clock::now();
  measuring.store(true);
  const auto end = t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(o.duration);
  uint64_t last_calls = 0;
  auto last = t0;
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_until(std::min(end, last + std::chrono::seconds(1)));
    const auto now = std::chrono::steady_clock::now();
    if (!o.progress) {
      last = now;
    } else {
      const uint64_t c = calls.load();
      const double dt = std::chrono::duration<double>(now - last).count();
      const double rps = dt > 0 ? static_cast<double>(c - last_calls) / dt : 0;
      std::fprintf(stderr, "\r%s %5.1fs  calls %10llu  %10.0f rps  %9.1f MB/s  p99 %8.1f us  errors %llu   ",
                   o.label.c_str(), std::chrono::duration<double>(now - t0).count(),
                   static_cast<unsigned long long>(c), rps,
                   rps * static_cast<double>(o.payload) * (o.echo ? 2 : 1) / 1e6,
                   static_cast<double>(hist.Quantile(0.99)) / 1e3, static_cast<unsigned long long>(errors.load()));
      last_calls = c;
      last = now;
    }
  }
  measuring.store(false);
  const auto t1 = std::chrono::steady_clock::now();
  const uint64_t ccpu1 = SelfCpuNs();
  const uint64_t scpu1 = ServerCpuNs(stub);
  if (o.progress) std::fprintf(stderr, "\n");
  stop.store(true);
  st->wg.Wait().IgnoreError();
  {
    std::lock_guard lock(st->err_mu);
    r.first_error = st->first_error;
  }

  r.seconds = std::chrono::duration<double>(t1 - t0).count();
  r.calls = calls.load();
  r.errors = errors.load();
  r.rps = static_cast<double>(r.calls) / r.seconds;
  r.mbps = r.rps * static_cast<double>(o.payload) * (o.echo ? 2 : 1) / 1e6;
  r.p50_us = static_cast<double>(hist.Quantile(0.50)) / 1e3;
  r.p99_us = static_cast<double>(hist.Quantile(0.99)) / 1e3;
  r.p999_us = static_cast<double>(hist.Quantile(0.999)) / 1e3;
  r.client_cpu_pct = static_cast<double>(ccpu1 - ccpu0) / 1e9 / r.seconds * 100;
  if (scpu0 != 0 && scpu1 >= scpu0) r.server_cpu_pct = static_cast<double>(scpu1 - scpu0) / 1e9 / r.seconds * 100;
  return r;
}

}  // namespace hrpc::examples
