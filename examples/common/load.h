// The samples' Echo load: hrpc::RunLoad calling Echo with a payload
// attachment (sent back with `echo`), plus the server's CPU time over the
// measured window from the ServerStats RPC. Used by throughput_client and
// bench/echo_bench.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "echo/echo.hrpc.h"
#include "hrpc/rpc/load.h"
#include "hrpc/rpc/rpc_channel.h"

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

// hrpc::LoadResult (mbps counts payload bytes, both directions when echo)
// and the server's CPU.
struct LoadResult : hrpc::LoadResult {
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
  hrpc_examples::EchoRequest req;
  req.set_echo_attachment(o.echo);
  uint64_t scpu0 = 0, scpu1 = 0;
  hrpc::LoadOptions lo;
  lo.coroutines_per_worker = o.coroutines_per_worker;
  lo.warmup = o.warmup;
  lo.duration = o.duration;
  lo.progress = o.progress;
  lo.label = o.label;
  lo.bytes_per_call = o.payload * (o.echo ? 2 : 1);
  lo.on_window_start = [&] { scpu0 = ServerCpuNs(stub); };
  lo.on_window_end = [&] { scpu1 = ServerCpuNs(stub); };
  static_cast<hrpc::LoadResult&>(r) = hrpc::RunLoad(channel, lo, [&](hrpc::ClientContext& ctx) {
    ctx.request_attachment() = payload->Share();
    if (o.echo) ctx.set_response_attachment_capacity(o.payload);
    hrpc_examples::EchoResponse resp;
    return stub.Echo(ctx, req, &resp);
  });
  if (scpu0 != 0 && scpu1 >= scpu0 && r.seconds > 0) {
    r.server_cpu_pct = static_cast<double>(scpu1 - scpu0) / 1e9 / r.seconds * 100;
  }
  return r;
}

}  // namespace hrpc::examples
