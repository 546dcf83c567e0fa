// Sink: the zero-copy NVMe sink — pool slabs to a file or block device opened
// O_DIRECT, by DMA, with no CPU copy.
//
//   auto sink = nvme::Sink::Open({.path = "/dev/nvme0n1", .pool = &pool,
//                                 .durability = nvme::Durability::kDsyncPerWrite});
//   (on the worker)  HRPC_TRY((*sink)->AttachTo(scheduler));
//   (in coroutines)  HRPC_TRY(sink->Write(off, payload));        // payload: IoBuf of slabs
//                    HRPC_ASSIGN_OR_RETURN(IoBuf data, sink->Read(off, len));
//                    HRPC_TRY(sink->Flush());
//
// Engine, chosen at Open and logged: io_uring (liburing) when
// io_uring_queue_init works, else preadv2/pwritev2 (still O_DIRECT); either
// can be forced. With io_uring the pool's arenas are registered once as fixed
// buffers through a mempool::Registrar (RegionKey.handle = fixed-buffer
// index), and every slice inside a registered arena goes as its own
// WRITE_FIXED/READ_FIXED SQE; other slices go as one WRITEV/READV.
//
// Ownership and threads. A Sink owns its fd, its ring and its registrar slot
// in the pool (the pool has kMaxRegistrars = 4 slots; when none is free, or the
// kernel refuses the registration, the sink runs without fixed buffers and
// logs it). The Pool must outlive the Sink. A Sink is used from ONE thread at
// a time — open one per worker (several sinks on the same file are fine):
//  - attached to a coro::Scheduler (AttachTo, on that scheduler's thread):
//    Write/Read/Flush called from its coroutines suspend only the coroutine;
//    the ring's eventfd is the scheduler's poller fd and Poll() reaps
//    completions and resumes the waiting coroutines. Calls from any other
//    thread fail with FAILED_PRECONDITION.
//  - not attached: calls block the calling thread (it reaps its own
//    completions). The Start*/Reap API keeps many requests in flight from one
//    plain thread (benchmarks, tests).
// The psync engine does its I/O synchronously in the calling thread (a
// coroutine's whole worker waits): it is the fallback, not the fast path.
//
// Buffers. Writes take the caller's IoBuf as is (shared for the duration of
// the I/O, never copied) if it passes CheckScatterList (alignment.h) for the
// device; otherwise INVALID_ARGUMENT naming the element and the rule, or —
// with SinkOptions::fixup_unaligned — the minimal head/tail fix-up (fixup.h),
// whose copies go through mempool::CountedCopy and are counted in stats().
// Reads land in fresh page-aligned pool slabs (Read) or in the caller's
// (ReadInto); the bytes are then the caller's.
//
// Errors (Status codes): INVALID_ARGUMENT misaligned or empty request;
// OUT_OF_RANGE beyond the end of a block device, or a read past the end of a
// file; RESOURCE_EXHAUSTED disk full (ENOSPC), quota (EDQUOT), file too big
// (EFBIG: RLIMIT_FSIZE — the process must ignore SIGXFSZ, which the sink does
// not touch), or the pool has no slab; DATA_LOSS EIO, or a write that made no
// progress (short writes are first retried for their remainder);
// FAILED_PRECONDITION wrong thread or O_DIRECT unsupported at Open.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/alignment.h"
#include "hrpc/nvme/io_engine.h"

namespace hrpc::nvme {

enum class EngineChoice : uint8_t { kAuto, kIoUring, kPsync };

enum class Durability : uint8_t {
  kNone,              // O_DIRECT only: data left the page cache, the device cache may hold it; Flush() is a no-op
  kFdatasyncOnFlush,  // Flush() = fdatasync: every write completed before it is durable after it
  kDsyncPerWrite,     // every write is RWF_DSYNC: durable when it completes; Flush() is a no-op
};
std::string_view DurabilityName(Durability d) noexcept;

struct SinkOptions {
  std::string path;               // file or block device
  mempool::Pool* pool = nullptr;  // required: fixed buffers, read slabs, fix-up slabs
  bool create = true;             // files: O_CREAT
  uint64_t size_bytes = 0;        // files: grow (fallocate) to at least this at Open; 0: as is
  EngineChoice engine = EngineChoice::kAuto;
  unsigned queue_depth = 64;      // io_uring SQEs in flight; more requests queue in the engine
  Durability durability = Durability::kNone;
  bool fixup_unaligned = false;   // misaligned writes: copy head/tail (true) or INVALID_ARGUMENT
  bool register_fixed_buffers = true;  // io_uring: register the pool's arenas
  unsigned fixed_buffer_slots = 64;    // io_uring fixed-buffer table size (>= pool max_arenas)
  size_t read_slab_bytes = 1 << 20;    // Read(): slab size (a multiple of 4 KiB)
  std::optional<DeviceRules> rules;    // override QueryDeviceRules (tests)
};

class Sink;

// One asynchronous sink operation (Start* / Reap). Caller-owned; must stay put
// (it is not movable) until done(). Reusable once done.
class SinkOp {
 public:
  SinkOp() = default;
  SinkOp(const SinkOp&) = delete;
  SinkOp& operator=(const SinkOp&) = delete;

  bool done() const noexcept { return !in_flight_; }
  const Status& status() const noexcept { return req_.status; }
  uint64_t bytes() const noexcept { return req_.bytes; }
  // The buffers of the operation (a read's destination); held until the next Start*.
  const mempool::IoBuf& data() const noexcept { return hold_; }
  mempool::IoBuf TakeData() noexcept { return std::move(hold_); }

  // Optional: runs on the sink's thread when the op completes (from Reap/Poll,
  // or inside Start* with the psync engine — so restarting the op from here
  // recurses with psync; queue it instead). May start a new op on this SinkOp
  // (io_uring: its SQE is submitted with the rest of the reaped batch); must
  // not destroy it.
  std::function<void(SinkOp&)> on_done;

 private:
  friend class Sink;
  IoRequest req_;
  std::vector<iovec> iov_;
  std::vector<int32_t> fixed_;
  mempool::IoBuf hold_;
  coro::Event* waker_ = nullptr;
  Sink* sink_ = nullptr;
  bool in_flight_ = false;
};

class Sink final : public coro::Poller {
 public:
  // Opens `path` O_RDWR|O_DIRECT, learns the device rules, starts the engine.
  // INVALID_ARGUMENT bad options; FAILED_PRECONDITION when the file system
  // refuses O_DIRECT (e.g. tmpfs) — tests skip on it; UNAVAILABLE when
  // io_uring was forced and is unavailable; the errno Status otherwise.
  static Result<std::unique_ptr<Sink>> Open(SinkOptions options);
  // Waits for outstanding I/O, unregisters the arenas, closes the fd. Detach()
  // first when attached (the destructor detaches if called on that thread).
  ~Sink() override;
  Sink(const Sink&) = delete;
  Sink& operator=(const Sink&) = delete;

  // ---- the API of a storage service's handler coroutines (or a plain thread)
  Status Write(uint64_t offset, const mempool::IoBuf& data);
  Result<mempool::IoBuf> Read(uint64_t offset, size_t len);
  Status ReadInto(uint64_t offset, const mempool::IoBuf& dst);
  Status Flush();

  // ---- asynchronous: many ops in flight from one thread
  // An error return means the op did not start (on_done will not run).
  Status StartWrite(uint64_t offset, const mempool::IoBuf& data, SinkOp& op);
  Status StartRead(uint64_t offset, const mempool::IoBuf& dst, SinkOp& op);
  Status StartFlush(SinkOp& op);
  // Suspends the coroutine (attached) or reaps on this thread until op is done.
  Status Wait(SinkOp& op);
  // Not attached: deliver completions (wait=true blocks for at least one
  // completion event when something is outstanding). Returns ops completed.
  int Reap(bool wait);
  size_t outstanding() const noexcept { return engine_->outstanding(); }

  // ---- scheduler integration (call on the scheduler's thread)
  Status AttachTo(coro::Scheduler& scheduler);
  void Detach();
  int Poll() override;     // reaps CQEs without blocking; resumes waiters
  int fd() const override; // the ring's eventfd (-1 for psync / before AttachTo)

  // ---- what the sink is
  EngineKind engine() const noexcept { return engine_->kind(); }
  const DeviceRules& rules() const noexcept { return rules_; }
  Durability durability() const noexcept { return opts_.durability; }
  bool fixed_buffers() const noexcept { return registrar_attached_; }
  bool is_block_device() const noexcept { return is_block_device_; }
  uint64_t device_bytes() const noexcept { return device_bytes_; }  // block device size, or file size at Open
  const std::string& path() const noexcept { return opts_.path; }

  struct Stats {
    uint64_t writes = 0, reads = 0, flushes = 0, errors = 0;
    uint64_t bytes_written = 0, bytes_read = 0;
    uint64_t fixed_slices = 0;     // slices sent as WRITE_FIXED/READ_FIXED
    uint64_t vectored_slices = 0;  // slices sent through WRITEV/READV (or psync)
    uint64_t fixup_writes = 0, fixup_copied_bytes = 0;  // head/tail fix-ups and their CountedCopy bytes
  };
  const Stats& stats() const noexcept { return stats_; }

  class FixedRegistrar;  // private: defined in sink.cc

 private:
  Sink() = default;
  Status CheckThread() const;
  Status Prepare(SinkOp& op, IoOpcode opcode, uint64_t offset);
  Status Launch(SinkOp& op);
  static void OnDone(IoRequest* req, void* arg);

  SinkOptions opts_;
  int fd_ = -1;
  bool is_block_device_ = false;
  uint64_t device_bytes_ = 0;
  DeviceRules rules_;
  std::unique_ptr<IoEngine> engine_;
  std::unique_ptr<FixedRegistrar> registrar_;
  mempool::RegistrarSlot slot_ = 0;
  bool registrar_attached_ = false;
  coro::Scheduler* home_ = nullptr;
  int event_fd_ = -1;
  Stats stats_;
};

}  // namespace hrpc::nvme
