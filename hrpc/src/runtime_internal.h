// Private to the RPC runtime: the runtime's core (workers, pools,
// registrations, per-worker transports and connection tables) and the helpers
// that build and read control frames.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/counter.h"
#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/mempool/registrar.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/stats.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport {
class RdmaDomain;
}

namespace hrpc::internal {

// One connection as /status shows it: a server's accepted connection or a
// client's outgoing one. Written on its worker, read by the HTTP endpoint.
struct ConnectionInfo {
  std::string peer;
  std::string scheme;
  size_t worker = 0;
  std::chrono::system_clock::time_point opened;
  OwnerCounter started;   // requests read from it (server) / calls sent on it (client)
  OwnerCounter finished;  // of those, finished
  // Running (server) or in flight (client).
  uint64_t unfinished() const noexcept {
    const uint64_t s = started.Get(), f = finished.Get();
    return s >= f ? s - f : 0;
  }
};

class PeerTable;
class MetricsCollector;

// Runs `task` on the reaper: one thread per process that exit() waits for (up
// to 10 s), for the stops a runtime's own worker cannot do itself: deleting
// the runtime whose last reference dropped there, joining a thread that may
// wait on that worker. So no worker or helper thread of the runtime still runs
// while the process destroys its static objects.
void ReapLater(std::function<void()> task);

// The runtime's core: workers, their pools, one registration per pool and
// transport kind, per-worker transports and outgoing-connection tables.
// Shared (shared_ptr) by the Runtime object and every Server and RpcChannel
// on it; destroyed when the last of them goes. Transports are created lazily
// on their worker's thread (TransportFor). Destruction order: outgoing
// connections, transports, workers, registrations, pools.
class WorkerSet {
 public:
  static Result<std::shared_ptr<WorkerSet>> Create(const RuntimeOptions& options);
  ~WorkerSet();
  WorkerSet(const WorkerSet&) = delete;
  WorkerSet& operator=(const WorkerSet&) = delete;

  const RuntimeOptions& options() const noexcept { return options_; }
  size_t size() const noexcept { return slots_.size(); }
  coro::Worker& worker(size_t i) { return *slots_[i].worker; }
  coro::Scheduler& scheduler(size_t i) { return slots_[i].worker->scheduler(); }
  mempool::Pool& pool(size_t i) { return *slots_[i].pool; }
  size_t group_of(size_t i) const { return slots_[i].group; }
  size_t num_groups() const noexcept { return num_groups_; }
  PeerTable& peers(size_t i) { return *slots_[i].peers; }
  StatsRegistry& client_stats() noexcept { return client_stats_; }
  // Index of the worker whose scheduler runs on this thread, or -1.
  int CurrentIndex() const noexcept;

  // The transport for `scheme` on worker i; call on worker i.
  Result<transport::Transport*> TransportFor(size_t i, std::string_view scheme);

  // Runs fn as a coroutine on worker i and waits for it (a coroutine caller
  // is suspended, a plain thread blocks). FAILED_PRECONDITION, fn not run, on
  // worker i's own thread outside a coroutine (it would wait for itself).
  Status RunOn(size_t i, std::function<Status()> fn);

  // FAILED_PRECONDITION when this thread is one of the workers and not in a
  // coroutine (a poller, an I/O completion callback): a blocking wait there
  // stops a worker that may be the one to finish what it waits for. `what`
  // and `name` name the operation refused (the message is built only then).
  Status CheckMayBlock(std::string_view what, std::string_view name = {}) const;

  // Round robin over the workers, for calls made off the workers.
  size_t NextWorker() noexcept { return next_worker_.fetch_add(1, std::memory_order_relaxed) % slots_.size(); }

  RuntimeStats Stats() const;

  // For monitoring (any thread). The counters of every transport made so
  // far (kept after the transport is gone, so totals never go back).
  struct TransportEntry {
    size_t worker = 0;
    std::string scheme;
    std::shared_ptr<const transport::TransportCounters> counters;
  };
  std::vector<TransportEntry> TransportEntries() const;
  // Names of the RDMA devices of the runtime's RdmaDomains.
  std::vector<std::string> RdmaDevices() const;
  // The distinct pools, in worker order (pool_index(i): worker i's).
  std::vector<const mempool::Pool*> Pools() const;
  size_t pool_index(size_t i) const;
  // Worker i's outgoing connections; valid while the runtime runs.
  const PeerTable* peer_table(size_t i) const { return slots_[i].peers.get(); }
  std::chrono::system_clock::time_point created() const noexcept { return created_; }
  // The collector of Runtime::MetricsText() (made on first use).
  MetricsCollector& runtime_metrics();

  std::atomic<size_t> servers{0};
  std::atomic<size_t> channels{0};

 private:
  struct Slot {
    coro::Worker* worker = nullptr;
    mempool::Pool* pool = nullptr;
    size_t group = 0;
    std::map<std::string, std::unique_ptr<transport::Transport>, std::less<>> transports;
    std::unique_ptr<PeerTable> peers;
  };
  struct PoolReg {
    std::unique_ptr<mempool::Registrar> tcp_registrar;
    mempool::RegistrarSlot tcp_slot = 0;
    bool attached = false;
    // Destroyed after the transports and before the pools.
    std::shared_ptr<transport::RdmaDomain> rdma_domain;
  };
  explicit WorkerSet(const RuntimeOptions& o);
  PoolReg& RegFor(mempool::Pool* pool);
  void CloseConnections();
  void DestroyTransports();

  RuntimeOptions options_;
  std::vector<std::unique_ptr<mempool::Pool>> own_pools_;  // destroyed last
  std::map<mempool::Pool*, PoolReg> regs_;
  mutable std::mutex regs_mu_;
  std::vector<std::unique_ptr<coro::Worker>> own_workers_;
  std::vector<Slot> slots_;
  size_t num_groups_ = 1;
  std::atomic<size_t> transports_{0};
  std::atomic<size_t> next_worker_{0};
  StatsRegistry client_stats_;
  mutable std::mutex transports_mu_;  // transport_entries_
  std::vector<TransportEntry> transport_entries_;
  const std::chrono::system_clock::time_point created_ = std::chrono::system_clock::now();
  std::mutex metrics_mu_;
  std::unique_ptr<MetricsCollector> runtime_metrics_;
};

// --- frames -----------------------------------------------------------------

// A pool buffer holding `room` bytes of free space followed by the serialized
// message: the frame prefix is later written right-aligned into the room, so
// header, descriptors and message end up contiguous without a copy.
struct SerializedMessage {
  mempool::Buffer buf;  // room + message
  size_t room = 0;
  size_t message_len = 0;
};
Result<SerializedMessage> SerializeWithRoom(mempool::Pool& pool, const google::protobuf::MessageLite& msg,
                                            size_t room);
Result<SerializedMessage> RawWithRoom(mempool::Pool& pool, std::string_view bytes, size_t room);

// Writes the prefix for `descriptors` (<= room/24 - ...) in front of the
// message and returns header+descriptors+message as one slice.
Result<mempool::IoBuf> FinishFrame(SerializedMessage& m, wire::FrameHeader header,
                                   std::span<const wire::BulkDescriptor> descriptors);

// A frame without a message: cancel, ping, or an error response (with its
// status message).
Result<mempool::IoBuf> SmallFrame(mempool::Pool& pool, wire::FrameHeader header, std::string_view status_message);

// A received control frame: header, descriptors, message and status message
// in one contiguous buffer (`control`, which `frame` views), and the inline
// attachment as slices of the received buffers (never copied). A message the
// transport delivered in several slices has its non-payload parts gathered
// with a plain memcpy (they are not payload, so CountedCopy does not count them).
struct ReceivedFrame {
  mempool::Buffer control;
  wire::Frame frame;
  mempool::IoBuf attachment;
};
Result<ReceivedFrame> ReadFrame(mempool::Pool& pool, mempool::IoBuf& msg);
// The header of the frame in `msg`, decoded; the rest is not looked at.
Result<wire::FrameHeader> PeekHeader(const mempool::IoBuf& msg);

}  // namespace hrpc::internal
