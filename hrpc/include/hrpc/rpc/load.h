// RunLoad: a load generator over an RpcChannel or a runtime's workers, for
// benchmarks and the `hrpc press` tool. `coroutines_per_worker` coroutines on
// each of the channel's (runtime's) workers call back to back (closed loop),
// or on a fixed schedule of `qps` calls per second over all of them (a call
// starts at its slot, or as soon as a coroutine is free when the server falls
// behind). Calls during `warmup` are
// not measured; then for `duration` every call's latency goes into a
// histogram and, with `progress`, a line on stderr shows the totals once a
// second.
//
// RunLoad blocks the calling thread, which must not be one of the channel's
// workers. The `call` function runs concurrently on every worker: it makes
// one call with the fresh ClientContext it is given and returns its Status;
// it must be thread-safe and must not block the thread (call through the
// channel, which suspends only the calling coroutine).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "hrpc/base/status.h"
#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"

namespace hrpc {

struct LoadOptions {
  size_t coroutines_per_worker = 32;  // calls in flight on each worker of the channel
  double qps = 0;                     // target calls per second in all; 0: closed loop, as fast as they go
  std::chrono::duration<double> warmup{0.5};
  std::chrono::duration<double> duration{3.0};
  bool progress = false;   // a live line on stderr, once per second
  std::string label;       // printed at the start of the progress line
  uint64_t bytes_per_call = 0;  // payload bytes one call moves, for MB/s (0: no MB/s)
  // Run on the calling thread just as the measured window opens and just
  // after it closes (e.g. to read the server's CPU time); may be empty.
  std::function<void()> on_window_start, on_window_end;
};

struct LoadResult {
  uint64_t calls = 0;   // measured calls that ended OK
  uint64_t errors = 0;  // measured calls that failed
  std::string first_error;
  double seconds = 0;  // the measured window
  double rps = 0;      // calls per second
  double mbps = 0;     // bytes_per_call * rps, 1 MB = 1e6 B
  double p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
  double client_cpu_pct = 0;  // this process, of one core: 100 = one core busy
};

using LoadCall = std::function<Status(ClientContext& ctx)>;

// INVALID_ARGUMENT (as first_error, with errors = 1 and no call made) for
// zero coroutines, a negative qps or a non-positive duration.
LoadResult RunLoad(RpcChannel& channel, const LoadOptions& options, const LoadCall& call);
// The same on the workers of `runtime`, for any channel made on it (a
// ClusterChannel, say).
LoadResult RunLoad(Runtime& runtime, const LoadOptions& options, const LoadCall& call);

}  // namespace hrpc
