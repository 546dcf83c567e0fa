#include "hrpc/nvme/sink.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "hrpc/mempool/registrar.h"
#include "hrpc/nvme/fixup.h"

namespace hrpc::nvme {

std::string_view DurabilityName(Durability d) noexcept {
  switch (d) {
    case Durability::kNone: return "none";
    case Durability::kFdatasyncOnFlush: return "fdatasync-on-flush";
    case Durability::kDsyncPerWrite: return "dsync-per-write";
  }
  return "?";
}

// Registers each pool arena as one io_uring fixed buffer (handle = index).
// An arena the table cannot take (full, or the kernel refused) does not fail
// its registration, so the pool is not refused its growth for it: that
// arena's slabs go as READV/WRITEV (its handle names no slot, so
// FixedContains says no). When no arena at all could be registered the sink
// does without the registrar (Open).
class Sink::FixedRegistrar final : public mempool::Registrar {
 public:
  static constexpr uint64_t kNotFixed = UINT32_MAX;
  FixedRegistrar(IoEngine* engine, std::string path) : engine_(engine), path_(std::move(path)) {}
  std::string_view name() const override { return "io_uring-fixed"; }
  Result<mempool::RegionKey> Register(void* base, size_t len, int) override {
    auto index = engine_->RegisterFixedBuffer(base, len);
    if (index.ok()) {
      fixed_.fetch_add(1, std::memory_order_relaxed);
      return mempool::RegionKey{0, 0, *index};
    }
    refused_ = index.status();
    if (fixed_.load(std::memory_order_relaxed) > 0) {
      SPDLOG_WARN("nvme sink {}: a pool arena of {} MiB is not a fixed buffer ({}); its slabs go as READV/WRITEV",
                  path_, len >> 20, refused_.ToString());
    }
    return mempool::RegionKey{0, 0, kNotFixed};
  }
  void Unregister(void*, size_t, const mempool::RegionKey& key) override {
    if (key.handle == kNotFixed) return;
    fixed_.fetch_sub(1, std::memory_order_relaxed);
    engine_->UnregisterFixedBuffer(static_cast<uint32_t>(key.handle));
  }
  // Arenas registered as fixed buffers now; why the last one that could not be was refused.
  size_t fixed() const noexcept { return fixed_.load(std::memory_order_relaxed); }
  const Status& refused() const noexcept { return refused_; }

 private:
  IoEngine* engine_;
  const std::string path_;
  std::atomic<size_t> fixed_{0};
  Status refused_;  // written under the pool's growth lock
};

Result<std::unique_ptr<Sink>> Sink::Open(SinkOptions o) {
  if (o.pool == nullptr) return InvalidArgumentError("SinkOptions.pool is required");
  if (o.path.empty()) return InvalidArgumentError("SinkOptions.path is empty");
  if (o.queue_depth == 0) return InvalidArgumentError("SinkOptions.queue_depth must be > 0");
  if (o.read_slab_bytes == 0 || o.read_slab_bytes % kNvmePageBytes != 0 ||
      o.read_slab_bytes > o.pool->options().max_class_bytes) {
    return InvalidArgumentError(fmt::format(
        "SinkOptions.read_slab_bytes {} must be a multiple of 4 KiB and <= the pool's largest class",
        o.read_slab_bytes));
  }
  std::unique_ptr<Sink> s(new Sink());
  s->opts_ = std::move(o);
  const SinkOptions& opts = s->opts_;

  int flags = O_RDWR | O_DIRECT | O_CLOEXEC | (opts.create ? O_CREAT : 0);
  s->fd_ = open(opts.path.c_str(), flags, 0644);
  if (s->fd_ < 0) {
    const int err = errno;
    if (err == EINVAL) {
      return FailedPreconditionError(
          fmt::format("open {}: O_DIRECT is not supported by this file system", opts.path));
    }
    return ErrnoStatus(err, "open " + opts.path);
  }
  struct stat st {};
  if (fstat(s->fd_, &st) != 0) return ErrnoStatus(errno, "fstat " + opts.path);
  if (S_ISBLK(st.st_mode)) {
    s->is_block_device_ = true;
    uint64_t bytes = 0;
    if (ioctl(s->fd_, BLKGETSIZE64, &bytes) != 0) return ErrnoStatus(errno, "ioctl(BLKGETSIZE64)");
    s->device_bytes_ = bytes;
  } else if (S_ISREG(st.st_mode)) {
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (opts.size_bytes > size) {
      if (fallocate(s->fd_, 0, 0, static_cast<off_t>(opts.size_bytes)) != 0) {
        const int err = errno;
        if (err != EOPNOTSUPP) return IoErrnoStatus(err, "fallocate " + opts.path);
        if (ftruncate(s->fd_, static_cast<off_t>(opts.size_bytes)) != 0) {
          return IoErrnoStatus(errno, "ftruncate " + opts.path);
        }
      }
      size = opts.size_bytes;
    }
    s->device_bytes_ = size;
  } else {
    return InvalidArgumentError(opts.path + " is not a regular file or block device");
  }

  if (opts.rules) {
    s->rules_ = *opts.rules;
    HRPC_TRY(ValidateRules(s->rules_));
  } else {
    HRPC_ASSIGN_OR_RETURN(s->rules_, QueryDeviceRules(s->fd_));
  }

  EngineOptions eo;
  eo.queue_depth = opts.queue_depth;
  eo.fixed_buffer_slots = opts.register_fixed_buffers ? opts.fixed_buffer_slots : 0;
  std::string why_psync;
  if (opts.engine != EngineChoice::kPsync) {
    auto uring = CreateUringEngine(eo);
    if (uring.ok()) {
      s->engine_ = std::move(uring).value();
    } else if (opts.engine == EngineChoice::kIoUring) {
      return uring.status();
    } else {
      why_psync = fmt::format("io_uring unavailable ({})", uring.status().ToString());
    }
  } else {
    why_psync = "forced by options";
  }
  if (!s->engine_) s->engine_ = CreatePsyncEngine();

  if (s->engine_->kind() == EngineKind::kIoUring && opts.register_fixed_buffers) {
    s->registrar_ = std::make_unique<FixedRegistrar>(s->engine_.get(), opts.path);
    auto slot = opts.pool->AttachRegistrar(s->registrar_.get());
    if (slot.ok() && s->registrar_->fixed() == 0) {
      opts.pool->DetachRegistrar(*slot);
      slot = s->registrar_->refused().ok() ? InternalError("no pool arena to register")
                                           : s->registrar_->refused();
    }
    if (slot.ok()) {
      s->slot_ = *slot;
      s->registrar_attached_ = true;
    } else {
      SPDLOG_WARN("nvme sink {}: pool arenas not registered as fixed buffers ({}); using READV/WRITEV",
                  opts.path, slot.status().ToString());
      s->registrar_.reset();
    }
  }
  if (s->engine_->kind() == EngineKind::kPsync) {
    SPDLOG_INFO("nvme sink {}: engine psync (preadv2/pwritev2, O_DIRECT): {}; durability {}; {}",
                opts.path, why_psync, DurabilityName(opts.durability), s->rules_.ToString());
  } else {
    SPDLOG_INFO("nvme sink {}: engine io_uring qd {} fixed buffers {}; durability {}; {}", opts.path,
                opts.queue_depth, s->registrar_attached_ ? "on" : "off",
                DurabilityName(opts.durability), s->rules_.ToString());
  }
  return s;
}

Sink::~Sink() {
  if (home_ != nullptr) {
    if (coro::Scheduler::Current() != home_) {
      SPDLOG_ERROR("nvme sink {}: destroyed while attached to scheduler '{}' from another thread",
                   opts_.path, home_->name());
    }
    Detach();
  }
  if (engine_) {
    while (engine_->outstanding() > 0) {
      if (engine_->Reap(true) < 0) break;
    }
    if (registrar_attached_) opts_.pool->DetachRegistrar(slot_);
    engine_.reset();
  }
  if (fd_ >= 0) close(fd_);
}

Status Sink::CheckThread() const {
  if (home_ != nullptr && coro::Scheduler::Current() != home_) {
    return FailedPreconditionError(fmt::format(
        "nvme sink {} belongs to scheduler '{}'; called from another thread", opts_.path, home_->name()));
  }
  return Status::Ok();
}

Status Sink::AttachTo(coro::Scheduler& scheduler) {
  if (home_ == &scheduler) return Status::Ok();
  if (home_ != nullptr) return FailedPreconditionError("nvme sink is attached to another scheduler");
  coro::Scheduler* cur = coro::Scheduler::Current();
  if (cur != nullptr && cur != &scheduler) {
    return FailedPreconditionError("Sink::AttachTo must run on the scheduler's thread");
  }
  HRPC_ASSIGN_OR_RETURN(event_fd_, engine_->EventFd());
  scheduler.AddPoller(this);
  home_ = &scheduler;
  return Status::Ok();
}

void Sink::Detach() {
  if (home_ == nullptr) return;
  home_->RemovePoller(this);
  home_ = nullptr;
}

int Sink::Poll() { return engine_->Reap(false); }
int Sink::fd() const { return event_fd_; }
int Sink::Reap(bool wait) { return engine_->Reap(wait); }

void Sink::OnDone(IoRequest* req, void* arg) {
  auto* op = static_cast<SinkOp*>(arg);
  Sink* s = op->sink_;
  op->in_flight_ = false;
  if (!req->status.ok()) {
    ++s->stats_.errors;
  } else if (req->opcode == IoOpcode::kWrite) {
    s->stats_.bytes_written += req->bytes;
  } else if (req->opcode == IoOpcode::kRead) {
    s->stats_.bytes_read += req->bytes;
  }
  coro::Event* waker = op->waker_;
  if (op->on_done) op->on_done(*op);  // may restart op; must not destroy it
  if (waker != nullptr) waker->Set();
}

// Fills op's request from op.hold_ (already set, and op.iov_ already filled
// from it) for `opcode` at `offset`.
Status Sink::Prepare(SinkOp& op, IoOpcode opcode, uint64_t offset) {
  const size_t n = op.hold_.num_slices();
  op.fixed_.clear();
  if (registrar_attached_) {
    op.fixed_.resize(n, -1);
    for (size_t i = 0; i < n; ++i) {
      const iovec& v = op.iov_[i];
      auto key = opts_.pool->KeyFor(slot_, v.iov_base);
      if (key.ok() && engine_->FixedContains(static_cast<uint32_t>(key->handle), v.iov_base, v.iov_len)) {
        op.fixed_[i] = static_cast<int32_t>(key->handle);
        ++stats_.fixed_slices;
      } else {
        ++stats_.vectored_slices;
      }
    }
  } else {
    stats_.vectored_slices += n;
  }
  const uint64_t len = op.hold_.size();
  if (is_block_device_ && (offset > device_bytes_ || len > device_bytes_ - offset)) {
    return OutOfRangeError(fmt::format("nvme sink {}: [{}, +{}) is beyond the device ({} bytes)",
                                       opts_.path, offset, len, device_bytes_));
  }
  op.req_ = IoRequest{};
  op.req_.opcode = opcode;
  op.req_.fd = fd_;
  op.req_.offset = offset;
  op.req_.iov = op.iov_;
  op.req_.fixed = op.fixed_;
  op.req_.dsync = opcode == IoOpcode::kWrite && opts_.durability == Durability::kDsyncPerWrite;
  return Status::Ok();
}

Status Sink::Launch(SinkOp& op) {
  op.req_.done = &Sink::OnDone;
  op.req_.arg = &op;
  op.sink_ = this;
  op.in_flight_ = true;
  Status st = engine_->Submit(&op.req_);
  if (!st.ok()) op.in_flight_ = false;
  return st;
}

Status Sink::StartWrite(uint64_t offset, const mempool::IoBuf& data, SinkOp& op) {
  HRPC_TRY(CheckThread());
  if (op.in_flight_) return FailedPreconditionError("SinkOp is still in flight");
  if (data.empty()) return InvalidArgumentError("nvme sink: empty write");
  op.iov_.resize(data.num_slices());
  data.FillIovecs(op.iov_);
  if (FindViolation(op.iov_, offset, rules_)) {
    if (!opts_.fixup_unaligned) {
      return CheckScatterList(op.iov_, offset, rules_).WithContext(fmt::format("nvme sink write at {}", offset));
    }
    FixupPlan plan;
    HRPC_ASSIGN_OR_RETURN(op.hold_, FixupForDirectIo(*opts_.pool, data, offset, rules_, &plan));
    ++stats_.fixup_writes;
    stats_.fixup_copied_bytes += plan.copied();
    op.iov_.resize(op.hold_.num_slices());
    op.hold_.FillIovecs(op.iov_);
  } else {
    op.hold_ = data.Share();
  }
  HRPC_TRY(Prepare(op, IoOpcode::kWrite, offset));
  ++stats_.writes;
  return Launch(op);
}

Status Sink::StartRead(uint64_t offset, const mempool::IoBuf& dst, SinkOp& op) {
  HRPC_TRY(CheckThread());
  if (op.in_flight_) return FailedPreconditionError("SinkOp is still in flight");
  if (dst.empty()) return InvalidArgumentError("nvme sink: empty read");
  op.hold_ = dst.Share();
  op.iov_.resize(op.hold_.num_slices());
  op.hold_.FillIovecs(op.iov_);
  if (FindViolation(op.iov_, offset, rules_)) {
    return CheckScatterList(op.iov_, offset, rules_).WithContext(fmt::format("nvme sink read at {}", offset));
  }
  HRPC_TRY(Prepare(op, IoOpcode::kRead, offset));
  ++stats_.reads;
  return Launch(op);
}

Status Sink::StartFlush(SinkOp& op) {
  HRPC_TRY(CheckThread());
  if (op.in_flight_) return FailedPreconditionError("SinkOp is still in flight");
  op.hold_ = mempool::IoBuf();
  op.iov_.clear();
  op.fixed_.clear();
  op.req_ = IoRequest{};
  op.req_.opcode = IoOpcode::kFdatasync;
  op.req_.fd = fd_;
  ++stats_.flushes;
  return Launch(op);
}

Status Sink::Wait(SinkOp& op) {
  if (op.in_flight_) {
    if (home_ != nullptr && coro::this_coro::InCoroutine()) {
      coro::Event ev;
      op.waker_ = &ev;
      while (op.in_flight_) ev.Wait().IgnoreError();
      op.waker_ = nullptr;
    } else {
      // Not attached (or on the scheduler's thread outside a coroutine): reap here.
      while (op.in_flight_) {
        if (engine_->Reap(true) < 0) return InternalError("nvme sink: reaping completions failed");
      }
    }
  }
  return op.req_.status;
}

Status Sink::Write(uint64_t offset, const mempool::IoBuf& data) {
  SinkOp op;
  HRPC_TRY(StartWrite(offset, data, op));
  return Wait(op);
}

Status Sink::ReadInto(uint64_t offset, const mempool::IoBuf& dst) {
  SinkOp op;
  HRPC_TRY(StartRead(offset, dst, op));
  return Wait(op);
}

Result<mempool::IoBuf> Sink::Read(uint64_t offset, size_t len) {
  if (len == 0) return InvalidArgumentError("nvme sink: empty read");
  if (len % rules_.logical_block != 0 || offset % rules_.logical_block != 0) {
    return InvalidArgumentError(fmt::format(
        "nvme sink read [{}, +{}): offset and length must be multiples of the logical block ({})",
        offset, len, rules_.logical_block));
  }
  mempool::IoBuf dst;
  for (size_t left = len; left > 0;) {
    const size_t n = std::min(left, opts_.read_slab_bytes);
    // At least a page-class block, so that the slab is page-aligned.
    HRPC_ASSIGN_OR_RETURN(mempool::Buffer slab,
                          opts_.pool->Allocate(std::max<size_t>(n, mempool::Pool::kPageClassMin)));
    dst.Append(slab.Slice(0, n));
    left -= n;
  }
  HRPC_TRY(ReadInto(offset, dst));
  return dst;
}

Status Sink::Flush() {
  if (opts_.durability != Durability::kFdatasyncOnFlush) return CheckThread();
  SinkOp op;
  HRPC_TRY(StartFlush(op));
  return Wait(op);
}

}  // namespace hrpc::nvme
