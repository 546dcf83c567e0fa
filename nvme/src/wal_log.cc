#include "hrpc/nvme/wal_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace hrpc::nvme {

namespace {

constexpr size_t kRecoveryReadBytes = size_t{1} << 20;  // one read slab

// Whether [off, end) of the file reads as zeros (preallocated, never written).
bool AllZeros(Sink& reader, uint64_t off, uint64_t end) {
  if ((end - off) % reader.rules().logical_block != 0) return false;  // preallocation is whole blocks
  while (off < end) {
    const uint64_t n = std::min<uint64_t>(end - off, kRecoveryReadBytes);
    auto data = reader.Read(off, n);
    if (!data.ok()) return false;
    for (size_t i = 0; i < data->num_slices(); ++i) {
      const mempool::Buffer& b = data->slice(i);
      if (!std::all_of(b.data(), b.data() + b.size(), [](char c) { return c == 0; })) return false;
    }
    off += n;
  }
  return true;
}

}  // namespace

Result<std::unique_ptr<WalLog>> WalLog::Open(WalLogOptions options, const ReplayFn& replay) {
  if (options.pool == nullptr) return InvalidArgumentError("WalLog: pool is required");
  if (options.block_bytes < 512 || (options.block_bytes & (options.block_bytes - 1)) != 0) {
    return InvalidArgumentError(fmt::format("WalLog: block {} is not a power of two >= 512", options.block_bytes));
  }
  std::unique_ptr<WalLog> log(new WalLog());
  log->opts_ = std::move(options);
  HRPC_TRY(log->Recover(replay));
  return log;
}

WalLog::~WalLog() {
  sink_.reset();
  if (fd_ >= 0) close(fd_);
}

Status WalLog::Recover(const ReplayFn& replay) {
  SinkOptions so;
  so.path = opts_.path;
  so.pool = opts_.pool;
  so.create = true;
  so.engine = opts_.engine;
  so.register_fixed_buffers = false;
  so.read_slab_bytes = kRecoveryReadBytes;
  so.rules = opts_.rules;
  HRPC_ASSIGN_OR_RETURN(std::unique_ptr<Sink> reader, Sink::Open(so));
  rules_ = reader->rules();
  if (reader->rules().logical_block > opts_.block_bytes) {
    return InvalidArgumentError(fmt::format("WalLog {}: block {} is smaller than the device's logical block {}",
                                            opts_.path, opts_.block_bytes, reader->rules().logical_block));
  }
  fd_ = open(opts_.path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) return ErrnoStatus(errno, "WalLog: open " + opts_.path);
  const off_t end = lseek(fd_, 0, SEEK_END);
  if (end < 0) return ErrnoStatus(errno, "WalLog: lseek " + opts_.path);
  const uint64_t size = static_cast<uint64_t>(end);

  const uint32_t block = opts_.block_bytes;
  uint64_t off = 0, preallocated = 0;
  std::string problem;
  while (off < size) {
    if (size - off < block) {
      problem = fmt::format("{} bytes at the end, less than a block", size - off);
      break;
    }
    // The first block holds the meta; the rest of the record follows it.
    const uint64_t want = std::min<uint64_t>(size - off, kRecoveryReadBytes);
    HRPC_ASSIGN_OR_RETURN(mempool::IoBuf first, reader->Read(off, want / block * block));
    const mempool::Buffer& head = first.slice(0);
    auto info = ParseWalMeta(std::span<const char>(head.data(), head.size()));
    if (!info.ok()) {
      const bool zeros = std::all_of(head.data(), head.data() + block, [](char c) { return c == 0; });
      if (zeros && AllZeros(*reader, off, size)) {
        preallocated = size - off;  // the end of the log
        break;
      }
      problem = info.status().message();
      break;
    }
    if (info->block_bytes != block) {
      problem = fmt::format("record {} has block size {}, the log uses {}", info->sequence, info->block_bytes, block);
      break;
    }
    if (info->record_bytes > size - off) {
      problem = fmt::format("record {} is torn: {} of {} bytes", info->sequence, size - off, info->record_bytes);
      break;
    }
    const size_t hb = info->header_block_bytes();
    if (head.size() < hb) {
      problem = fmt::format("record {}: head block of {} bytes exceeds a read slab", info->sequence, hb);
      break;
    }
    auto request = VerifyWalHeaderBlock(*info, std::span<const char>(head.data(), head.size()));
    if (!request.ok()) {
      problem = request.status().message();
      break;
    }
    // `request` points into `head`, which the payload's trim may free: kept first.
    const std::string req(*request);
    // The payload: what the first read already holds past the head block, then the rest.
    mempool::IoBuf payload = std::move(first);
    payload.TrimFront(hb);
    if (payload.size() > info->payload_bytes) payload.TrimBack(payload.size() - info->payload_bytes);
    if (payload.size() < info->payload_bytes) {
      const uint64_t at = off + hb + payload.size();
      HRPC_ASSIGN_OR_RETURN(mempool::IoBuf rest, reader->Read(at, info->payload_bytes - payload.size()));
      payload.Append(std::move(rest));
    }
    if (Status s = VerifyWalPayload(*info, payload.Iovecs()); !s.ok()) {
      problem = s.message();
      break;
    }
    HRPC_TRY(replay(*info, req, std::move(payload)));
    ++recovery_.records;
    recovery_.last_sequence = std::max(recovery_.last_sequence, info->sequence);
    off += info->record_bytes;
  }
  recovery_.valid_bytes = off;
  recovery_.cut_bytes = size - off - preallocated;
  recovery_.cut_reason = problem;
  if (off < size) {
    if (ftruncate(fd_, static_cast<off_t>(off)) != 0) return ErrnoStatus(errno, "WalLog: truncate " + opts_.path);
    if (fdatasync(fd_) != 0) return ErrnoStatus(errno, "WalLog: fdatasync " + opts_.path);
    if (recovery_.cut_bytes > 0) {
      SPDLOG_WARN("WalLog {}: cut {} bytes after {} good records at offset {}: {}", opts_.path, size - off,
                  recovery_.records, off, problem);
    }
  }
  allocated_ = off;
  tail_ = off;
  next_sequence_ = recovery_.last_sequence + 1;
  SPDLOG_INFO("WalLog {}: {} records replayed, appends continue at {} (sequence {})", opts_.path, recovery_.records,
              tail_, next_sequence_);
  return Status::Ok();
}

Status WalLog::OpenAppendSink() {
  SinkOptions so;
  so.path = opts_.path;
  so.pool = opts_.pool;
  so.create = false;
  so.engine = opts_.engine;
  so.durability = opts_.durability;
  so.register_fixed_buffers = opts_.register_fixed_buffers;
  so.rules = opts_.rules;
  HRPC_ASSIGN_OR_RETURN(sink_, Sink::Open(so));
  return Status::Ok();
}

Status WalLog::AttachTo(coro::Scheduler& scheduler) {
  if (sink_ != nullptr) return FailedPreconditionError("WalLog: already attached");
  HRPC_TRY(OpenAppendSink());
  return sink_->AttachTo(scheduler);
}

namespace {
// Whether `payload` may follow a head block (a first element that ends on a
// page) in one O_DIRECT write under `rules`.
bool CanFollowAHeadBlock(const mempool::IoBuf& payload, const DeviceRules& rules) {
  std::vector<iovec> iov = payload.Iovecs();
  // Any block that ends on a page stands for the head block here.
  const uintptr_t head_end = uintptr_t{1} << 40;
  iov.insert(iov.begin(), iovec{reinterpret_cast<void*>(head_end - rules.logical_block), rules.logical_block});
  return !FindViolation(iov, 0, rules).has_value();
}
}  // namespace

Result<mempool::IoBuf> WalLog::Encode(std::string_view request, mempool::IoBuf payload,
                                      std::optional<uint32_t> payload_crc, WalRecordInfo* info_out) {
  if (!payload.empty() && payload.size() % rules_.logical_block == 0 && !CanFollowAHeadBlock(payload, rules_)) {
    // Fresh pages, of the pool's largest class at most: each starts on a page
    // (a page class, also for a piece under a page) and all but the last are
    // whole pages.
    constexpr size_t kPage = mempool::Pool::kPageClassMin;
    const size_t piece = opts_.pool->options().max_class_bytes;
    mempool::IoBuf placed;
    for (size_t off = 0; off < payload.size(); off += piece) {
      const size_t n = std::min(piece, payload.size() - off);
      HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, opts_.pool->Allocate((n + kPage - 1) / kPage * kPage));
      payload.CopyTo(b.data(), off, n);
      placed.Append(b.Slice(0, n));
    }
    stats_.payload_bytes_copied += payload.size();
    payload = std::move(placed);
  }
  WalRecordInfo info;
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf record, EncodeWalRecord(*opts_.pool, next_sequence_, request,
                                                               std::move(payload), opts_.block_bytes,
                                                               payload_crc, &info));
  ++next_sequence_;
  stats_.head_bytes_built += info.header_block_bytes();
  if (info_out != nullptr) *info_out = info;
  return record;
}

Status WalLog::WriteAt(uint64_t offset, const mempool::IoBuf& record) {
  if (opts_.preallocate_bytes > 0 && offset + record.size() > allocated_) {
    const uint64_t grow = std::max<uint64_t>(opts_.preallocate_bytes, offset + record.size() - allocated_);
    if (fallocate(fd_, 0, static_cast<off_t>(allocated_), static_cast<off_t>(grow)) == 0) {
      allocated_ += grow;
    } else {
      SPDLOG_DEBUG("WalLog {}: fallocate {} bytes at {}: {}; the append extends the file", opts_.path, grow,
                   allocated_, strerror(errno));
    }
  }
  if (sink_ == nullptr) HRPC_TRY(OpenAppendSink());  // not attached: a blocking sink of this thread
  return sink_->Write(offset, record);
}

Status WalLog::Reserve(uint64_t bytes) {
  if (!broken_.ok()) return broken_;
  if (bytes > UINT64_MAX - tail_ - reserved_) return InvalidArgumentError("WalLog: reservation overflows");
  const uint64_t end = tail_ + reserved_ + bytes;
  if (end > allocated_) {
    // A preallocation step when the disk has it, else exactly what is needed.
    const uint64_t need = end - allocated_;
    const uint64_t step = std::max<uint64_t>(opts_.preallocate_bytes, need);
    if (fallocate(fd_, 0, static_cast<off_t>(allocated_), static_cast<off_t>(step)) == 0) {
      allocated_ += step;
    } else if (errno == EOPNOTSUPP || errno == ENOSYS) {
      // A file system without fallocate (9p, some FUSE): nothing to check
      // ahead; the append extends the file as it goes.
    } else if (step > need && fallocate(fd_, 0, static_cast<off_t>(allocated_), static_cast<off_t>(need)) == 0) {
      allocated_ = end;
    } else {
      return ErrnoStatus(errno, fmt::format("WalLog {}: no room for {} bytes of records at {}", opts_.path, bytes,
                                            tail_ + reserved_));
    }
  }
  reserved_ += bytes;
  return Status::Ok();
}

Status WalLog::Append(const mempool::IoBuf& record) {
  if (record.empty()) return InvalidArgumentError("WalLog: empty record");
  const mempool::Buffer& head = record.slice(0);
  HRPC_ASSIGN_OR_RETURN(WalRecordInfo info, ParseWalMeta(std::span<const char>(head.data(), head.size())));
  if (info.block_bytes != opts_.block_bytes) {
    return InvalidArgumentError(
        fmt::format("WalLog: record block size {} != the log's {}", info.block_bytes, opts_.block_bytes));
  }
  if (record.size() != info.record_bytes) {
    return DataLossError(fmt::format("WalLog: record {} is {} bytes, its meta says {}", info.sequence,
                                     record.size(), info.record_bytes));
  }
  if (head.size() < info.header_block_bytes()) {
    return InvalidArgumentError(fmt::format("WalLog: record {}'s head block is split across buffers", info.sequence));
  }
  HRPC_TRY(VerifyWalHeaderBlock(info, std::span<const char>(head.data(), head.size())).status());
  if (!broken_.ok()) return broken_;

  const uint64_t off = tail_;
  tail_ += record.size();
  reserved_ -= std::min(reserved_, record.size());
  next_sequence_ = std::max(next_sequence_, info.sequence + 1);
  in_flight_.insert(off);
  Status s = WriteAt(off, record);
  in_flight_.erase(off);
  if (!s.ok()) {
    ++stats_.failures;
    if (tail_ == off + record.size()) {
      // The last record: the next append takes its place (unless an earlier
      // record's failure broke the log already: that stays).
      tail_ = off;
      if (broken_.ok()) broken_ = RollBack(off, record.size(), s);
    } else {
      broken_ = s;
    }
    if (coro::Scheduler::Current() != nullptr) written_.NotifyAll();
    return s;
  }
  allocated_ = std::max(allocated_, off + record.size());
  ++stats_.records;
  stats_.bytes += record.size();
  if (coro::Scheduler::Current() == nullptr) return Status::Ok();  // blocking: nothing else in flight
  written_.NotifyAll();
  // Acknowledge only once every earlier record is written as well.
  std::unique_lock<coro::Mutex> lock(mu_);
  written_.Wait(mu_, [&] { return !broken_.ok() || in_flight_.empty() || *in_flight_.begin() > off; });
  return broken_;
}

Status WalLog::RollBack(uint64_t off, uint64_t size, const Status& why) {
  // What the failed write left must not come back at the next Open (a record
  // whose append failed was refused), and the space after `off` that the
  // reservations of records to come count on stays allocated. A partial
  // write may also have grown the file past what was allocated: that goes.
  const uint64_t keep = std::max(allocated_, off);
  const uint64_t inside = std::min(off + size, keep) - off;  // the record's bytes in the allocated part
  if (inside > 0 && fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                              static_cast<off_t>(inside)) == 0) {
    if (ftruncate(fd_, static_cast<off_t>(keep)) != 0) {
      return ErrnoStatus(errno, "WalLog: truncate after " + why.ToString());
    }
    allocated_ = keep;
    return Status::Ok();
  }
  // Nothing allocated there, or a file system that cannot zero a range:
  // cut the file at the record, then allocate again what is reserved.
  if (ftruncate(fd_, static_cast<off_t>(off)) != 0) return ErrnoStatus(errno, "WalLog: truncate after " + why.ToString());
  allocated_ = off;
  if (reserved_ == 0) return Status::Ok();
  if (fallocate(fd_, 0, static_cast<off_t>(off), static_cast<off_t>(reserved_)) == 0) {
    allocated_ = off + reserved_;
    return Status::Ok();
  }
  if (errno == EOPNOTSUPP || errno == ENOSYS) return Status::Ok();  // appends extend the file, as Reserve said
  return ErrnoStatus(errno, fmt::format("WalLog {}: the {} bytes reserved for records to come are lost after a "
                                        "failed append ({})",
                                        opts_.path, reserved_, why.ToString()));
}

Status WalLog::Flush() {
  if (sink_ == nullptr) return Status::Ok();
  return sink_->Flush();
}

}  // namespace hrpc::nvme
