// WalLog: an append-only write-ahead log of WAL records (wal.h) in one file
// opened O_DIRECT through a Sink, and its recovery.
//
//   auto log = nvme::WalLog::Open({.path = "chunk.wal", .pool = &pool,
//                                  .durability = nvme::Durability::kDsyncPerWrite},
//                                 [&](const WalRecordInfo&, std::string_view request, IoBuf payload) {
//                                   return ApplyAgain(request, payload);   // replay, in log order
//                                 });
//   (on the worker)  HRPC_TRY((*log)->AttachTo(scheduler));
//   (in coroutines)  HRPC_ASSIGN_OR_RETURN(IoBuf record, log->Encode(request, std::move(payload)));
//                    HRPC_TRY(log->Append(record));   // this record and every one before it are written
//
// Recovery (Open). The file is read from the start, one record at a time; each
// record's meta, request and payload CRC32C are checked and the record is
// handed to `replay`. The first record that is torn (the file ends inside it)
// or corrupt (bad magic, a CRC mismatch, inconsistent lengths; zeroed space
// reads as bad magic), and everything after it, is cut off: the file is
// truncated to the end of the last good record, and recovery() says how many
// bytes went and why. Space that is all zeros after the last record (what
// preallocation leaves) is truncated too but is not counted as cut. Appends then continue at that end with the sequence
// after the highest one replayed. A record whose head block does not fit in
// one read slab (SinkOptions::read_slab_bytes, 1 MiB) is treated as corrupt.
//
// Appending. Encode() builds the record's head block (meta, zero padding,
// request) in a fresh pool page — the only bytes the CPU writes, counted in
// stats().head_bytes_built — and returns head block + the payload's own
// slices, not copied when they can follow the head block in one O_DIRECT
// write: behind it, the payload's first slice must start on a page (PRP),
// which a slice legal on its own (an inline attachment) may not. Such a
// payload is copied into fresh pages (mempool::CountedCopy, counted in
// stats().payload_bytes_copied), so a record Encode() returns is one the
// log can write (no write that fails after the record was handed on, e.g.
// to followers, for its memory's shape). Append() takes a record built here or by another
// node's WalLog (a follower appends the leader's record as it arrived: meta,
// lengths and the request CRC are checked, the payload CRC is left to the
// transport and to recovery) and writes it at the tail as one O_DIRECT write.
// Several appends may be in flight from coroutines of the worker; each
// returns only once every record before it is written too, so an
// acknowledged record is never behind a torn one (which recovery would cut).
// With Durability::kDsyncPerWrite "written" means durable; with
// kFdatasyncOnFlush call Flush().
//
// Failures. A failed write of the last record at the tail is rolled back
// (its bytes in the allocated part of the file are zeroed, whatever it wrote
// beyond is truncated, the next append reuses the space): e.g. disk full
// (RESOURCE_EXHAUSTED) leaves the log as it was, and the space reserved for
// the records after it (Reserve) stays allocated; where a range cannot be
// zeroed the file is cut at the record and that space allocated again, and
// if that fails the log is broken (a reservation it could not keep). A failure with later
// records already in flight breaks the log: every later Append returns that
// error until the process reopens the log (recovery cuts the hole).
//
// Threads. Open() blocks the calling thread. After AttachTo(), Encode,
// Append and Flush are called from coroutines of that scheduler only (the
// Sink enforces it). Not attached, they block the calling thread (tests,
// tools). The pool must outlive the log.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/sink.h"
#include "hrpc/nvme/wal.h"

namespace hrpc::nvme {

struct WalLogOptions {
  std::string path;               // the log file (created when missing)
  mempool::Pool* pool = nullptr;  // required: head blocks, recovery reads, fixed buffers
  Durability durability = Durability::kNone;
  EngineChoice engine = EngineChoice::kAuto;
  uint32_t block_bytes = 4096;    // record alignment: a power of two >= the device's logical block
  bool register_fixed_buffers = true;  // io_uring: the pool's arenas as fixed buffers (appends)
  // Appends grow the file by fallocate in steps of this many bytes (0: never),
  // so a record is written inside the file's size: the file system then takes
  // its inode lock shared and io_uring need not hand the write to a worker
  // thread, as it must for a write that extends the file. Zeroed space after
  // the last record is the log's end, not a cut (recovery truncates it).
  // When fallocate fails (disk full, RLIMIT_FSIZE) appends extend the file.
  uint64_t preallocate_bytes = 16ull << 20;
  std::optional<DeviceRules> rules;    // override QueryDeviceRules (tests)
};

// What Open() found.
struct WalRecovery {
  uint64_t records = 0;        // replayed
  uint64_t valid_bytes = 0;    // where appends continue
  uint64_t cut_bytes = 0;      // torn or corrupt tail removed
  uint64_t last_sequence = 0;  // highest sequence replayed (0: none)
  std::string cut_reason;      // empty when the log ended on a record boundary
};

class WalLog {
 public:
  // Called for each good record in log order; an error stops Open with it.
  using ReplayFn =
      std::function<Status(const WalRecordInfo& info, std::string_view request, mempool::IoBuf payload)>;

  // Opens (creating) and recovers the log, see above. INVALID_ARGUMENT bad
  // options; FAILED_PRECONDITION O_DIRECT refused; replay's error; the errno
  // Status of a failed read or truncate.
  static Result<std::unique_ptr<WalLog>> Open(WalLogOptions options, const ReplayFn& replay);
  ~WalLog();
  WalLog(const WalLog&) = delete;
  WalLog& operator=(const WalLog&) = delete;

  const WalRecovery& recovery() const noexcept { return recovery_; }

  // Opens the append sink on this scheduler's thread and attaches it.
  Status AttachTo(coro::Scheduler& scheduler);

  // The record for `request` + `payload` with the next sequence; `payload_crc`
  // when known (else computed: a CPU read). INVALID_ARGUMENT when the payload
  // is not a multiple of the block; RESOURCE_EXHAUSTED when the pool is.
  Result<mempool::IoBuf> Encode(std::string_view request, mempool::IoBuf payload,
                                std::optional<uint32_t> payload_crc = std::nullopt,
                                WalRecordInfo* info = nullptr);
  // Makes room for `bytes` of records after those appended or reserved: the
  // file is grown (fallocate) to hold them, so their appends cannot fail for
  // want of space. Each Append uses up its record's size of the reservation.
  // RESOURCE_EXHAUSTED when the disk or RLIMIT_FSIZE cannot take them (the
  // process must ignore SIGXFSZ), broken() when the log is; OK unchecked on a
  // file system without fallocate (appends there extend the file and may still
  // find the disk full). A replication leader reserves
  // before it forwards a record: one its own disk cannot take is refused
  // before any follower logs it.
  Status Reserve(uint64_t bytes);
  // Appends `record` (see above). DATA_LOSS / INVALID_ARGUMENT for a record
  // that does not parse or has the wrong block size; the sink's errors.
  Status Append(const mempool::IoBuf& record);
  Status Flush();

  uint64_t end_offset() const noexcept { return tail_; }
  uint64_t next_sequence() const noexcept { return next_sequence_; }
  const std::string& path() const noexcept { return opts_.path; }
  Sink* sink() noexcept { return sink_.get(); }  // after AttachTo

  struct Stats {
    uint64_t records = 0;           // appended since Open
    uint64_t bytes = 0;
    uint64_t head_bytes_built = 0;  // head blocks built by Encode
    uint64_t payload_bytes_copied = 0;  // payloads Encode placed in fresh pages
    uint64_t failures = 0;
  };
  const Stats& stats() const noexcept { return stats_; }
  // Not OK once an append failed past the tail (every later Append fails
  // with it until the log is opened again).
  const Status& broken() const noexcept { return broken_; }

 private:
  WalLog() = default;
  Status Recover(const ReplayFn& replay);
  Status OpenAppendSink();
  Status WriteAt(uint64_t offset, const mempool::IoBuf& record);
  // After the failed append of the last record at `off`: OK, or what breaks the log.
  Status RollBack(uint64_t off, uint64_t size, const Status& why);

  WalLogOptions opts_;
  DeviceRules rules_;  // the log file's (found at Open)
  int fd_ = -1;  // plain fd for truncation
  std::unique_ptr<Sink> sink_;
  uint64_t tail_ = 0;
  uint64_t allocated_ = 0;  // file size: tail_ and preallocated space after it
  uint64_t reserved_ = 0;   // bytes after tail_ that Reserve promised to appends to come
  uint64_t next_sequence_ = 1;
  std::set<uint64_t> in_flight_;  // offsets of records being written
  Status broken_;
  coro::Mutex mu_;
  coro::ConditionVariable written_;
  WalRecovery recovery_;
  Stats stats_;
};

}  // namespace hrpc::nvme
