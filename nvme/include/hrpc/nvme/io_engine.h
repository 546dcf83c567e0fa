// IoEngine: the syscall level of the NVMe sink — io_uring or preadv/pwritev.
//
// An engine moves scatter lists between memory and one O_DIRECT fd. It knows
// nothing about pools or coroutines: the Sink (sink.h) builds IoRequests from
// IoBufs and wakes coroutines from the completion callbacks. Tests and
// benchmarks may drive an engine directly.
//
// Threading: an engine is used by one thread at a time (the thread of the
// Sink that owns it); nothing here is locked. RegisterFixedBuffer /
// UnregisterFixedBuffer are the exception: they may be called from any thread
// (the pool grows on whichever thread allocates) and only touch the kernel's
// buffer table and an atomic mirror of it.
//
// Completion: Submit() never blocks on I/O for io_uring; the request's `done`
// callback runs later from Reap() on the submitting thread. The psync engine
// does the I/O inside Submit() and calls `done` before Submit() returns.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "hrpc/base/status.h"

namespace hrpc::nvme {

enum class EngineKind : uint8_t { kIoUring, kPsync };
std::string_view EngineKindName(EngineKind k) noexcept;  // "io_uring" / "psync"

enum class IoOpcode : uint8_t { kRead, kWrite, kFdatasync };

// One I/O request. Caller-owned: it and the memory `iov` and `fixed` point to
// must stay alive and unchanged until `done` has been called.
struct IoRequest {
  IoOpcode opcode = IoOpcode::kWrite;
  int fd = -1;
  uint64_t offset = 0;
  std::span<const iovec> iov;
  // Per element of `iov`: its io_uring fixed-buffer index, or -1 when the
  // element is not inside a registered buffer. Empty: none is. A fixed
  // element goes as its own READ_FIXED/WRITE_FIXED SQE; runs of non-fixed
  // elements go as one READV/WRITEV SQE (up to IOV_MAX elements each).
  std::span<const int32_t> fixed;
  bool dsync = false;  // writes: RWF_DSYNC (data + the metadata to reach it, per write)

  // Called once, on the thread that calls Reap() (psync: inside Submit()).
  // `status` / `bytes` are set before; `req` may be reused or freed inside.
  void (*done)(IoRequest* req, void* arg) = nullptr;
  void* arg = nullptr;

  // Results. OK and bytes == total length, or an error: ENOSPC/EDQUOT/EFBIG ->
  // RESOURCE_EXHAUSTED, EIO -> DATA_LOSS, a read past the end of the file ->
  // OUT_OF_RANGE, a write that makes no progress -> DATA_LOSS; EINVAL
  // (misaligned O_DIRECT) -> INVALID_ARGUMENT. Short transfers are retried for
  // the remainder before they count as failures.
  Status status;
  uint64_t bytes = 0;

  // Engine bookkeeping; do not touch.
  uint32_t engine_pending = 0;    // SQEs in flight
  uint32_t engine_next = 0;       // next iov element to submit
  uint64_t engine_next_offset = 0;
  IoRequest* engine_link = nullptr;  // backlog list
};

// The errno of a failed I/O as a Status (see IoRequest::status).
Status IoErrnoStatus(int err, std::string_view what);

struct EngineOptions {
  // Most SQEs in flight (io_uring ring size). More requests wait in a backlog
  // inside the engine and start as completions free slots.
  unsigned queue_depth = 64;
  // Size of the sparse fixed-buffer table (one entry per pool arena).
  unsigned fixed_buffer_slots = 64;
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual EngineKind kind() const noexcept = 0;

  // Starts `req`. An error here means the request was not started and `done`
  // will not be called (bad arguments, or the ring refused the submission).
  virtual Status Submit(IoRequest* req) = 0;
  // Delivers completions (runs `done` callbacks) and starts backlogged
  // requests. wait=true: if anything is outstanding, block until at least one
  // completion event arrives (a request of several SQEs may need several
  // calls). Returns how many requests completed. Must not be called from a
  // `done` callback (Submit may be).
  virtual int Reap(bool wait) = 0;
  // Requests submitted and not yet completed (including the backlog).
  virtual size_t outstanding() const noexcept = 0;

  // io_uring only: an eventfd that becomes readable when completions are
  // waiting (created and registered on first call). -1 for psync. Reap()
  // drains it after consuming completions (and then looks at the completion
  // queue again), so it is not left readable for completions already
  // delivered; a Reap that finds nothing does not touch it.
  virtual Result<int> EventFd() = 0;

  // io_uring only: register [base, base+len) as a fixed buffer; returns its
  // index. RESOURCE_EXHAUSTED when the table is full; UNIMPLEMENTED for psync;
  // the kernel's error otherwise (ENOMEM: RLIMIT_MEMLOCK too small).
  virtual Result<uint32_t> RegisterFixedBuffer(void* base, size_t len) = 0;
  virtual void UnregisterFixedBuffer(uint32_t index) = 0;
  // True when fixed buffer `index` is registered and contains [p, p+len).
  virtual bool FixedContains(uint32_t index, const void* p, size_t len) const noexcept = 0;
};

// io_uring with `options.queue_depth` entries. UNAVAILABLE (with the errno
// text) when io_uring_queue_init fails: no io_uring in this kernel, disabled
// by sysctl/seccomp, or out of memlock — the caller may then fall back.
Result<std::unique_ptr<IoEngine>> CreateUringEngine(const EngineOptions& options);
// preadv2/pwritev2 in the calling thread.
std::unique_ptr<IoEngine> CreatePsyncEngine();

}  // namespace hrpc::nvme
