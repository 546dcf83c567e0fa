// Private to the RPC runtime: the worker set (workers + pools + per-worker
// transports) and the helpers that build and read control frames.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/mempool/registrar.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/transport.h"

namespace hrpc::transport {
class RdmaDomain;
}

namespace hrpc::internal {

// Workers, their pools and their transports. Transports are created lazily on
// the worker's own thread (TransportFor) and destroyed by Shutdown(), also on
// their threads. Destruction order: transports, workers, registrars, pools.
class WorkerSet {
 public:
  static Result<std::unique_ptr<WorkerSet>> Create(const RuntimeOptions& options);
  ~WorkerSet();

  size_t size() const noexcept { return slots_.size(); }
  coro::Worker& worker(size_t i) { return *slots_[i].worker; }
  coro::Scheduler& scheduler(size_t i) { return slots_[i].worker->scheduler(); }
  mempool::Pool& pool(size_t i) { return *slots_[i].pool; }
  // Index of the worker whose scheduler runs on this thread, or -1.
  int CurrentIndex() const noexcept;

  // The transport for `scheme` on worker i; call on worker i.
  Result<transport::Transport*> TransportFor(size_t i, std::string_view scheme);

  // Runs fn as a coroutine on worker i and waits for it (from any thread but
  // worker i's own).
  Status RunOn(size_t i, std::function<Status()> fn);
  // Destroys every transport on its worker. Connections/listeners must be gone.
  void DestroyTransports();

 private:
  struct Slot {
    coro::Worker* worker = nullptr;
    mempool::Pool* pool = nullptr;
    std::map<std::string, std::unique_ptr<transport::Transport>, std::less<>> transports;
  };
  struct PoolReg {
    std::unique_ptr<mempool::Registrar> tcp_registrar;
    mempool::RegistrarSlot tcp_slot = 0;
    bool attached = false;
    // Destroyed after the transports (DestroyTransports) and before the pools.
    std::shared_ptr<transport::RdmaDomain> rdma_domain;
  };
  explicit WorkerSet(const RuntimeOptions& o) : options_(o) {}
  PoolReg& RegFor(mempool::Pool* pool);

  RuntimeOptions options_;
  std::vector<std::unique_ptr<mempool::Pool>> own_pools_;  // destroyed last
  std::map<mempool::Pool*, PoolReg> regs_;
  std::mutex regs_mu_;
  std::vector<std::unique_ptr<coro::Worker>> own_workers_;
  std::vector<Slot> slots_;
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

}  // namespace hrpc::internal
