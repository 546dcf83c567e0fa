// io_uring engine: one ring per engine, fixed buffers in a sparse table.
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "hrpc/nvme/io_engine.h"

namespace hrpc::nvme {
namespace {

constexpr unsigned kReapBatch = 64;
constexpr int kMaxEagainRetries = 16;

class UringEngine final : public IoEngine {
 public:
  UringEngine() = default;
  ~UringEngine() override;

  Status Init(const EngineOptions& o);

  EngineKind kind() const noexcept override { return EngineKind::kIoUring; }
  Status Submit(IoRequest* req) override;
  int Reap(bool wait) override;
  size_t outstanding() const noexcept override { return outstanding_; }
  Result<int> EventFd() override;
  Result<uint32_t> RegisterFixedBuffer(void* base, size_t len) override;
  void UnregisterFixedBuffer(uint32_t index) override;
  bool FixedContains(uint32_t index, const void* p, size_t len) const noexcept override;

 private:
  // One SQE in flight: a contiguous part of one request.
  struct Slot {
    IoRequest* req = nullptr;
    uint64_t offset = 0;    // file offset of the segment's first byte
    uint32_t first = 0;     // first iov element
    uint32_t count = 0;     // iov elements
    int32_t fixed = -1;     // fixed-buffer index (count == 1) or -1
    uint64_t expected = 0;  // bytes of the segment
    uint64_t done = 0;      // bytes transferred so far (short transfers)
    int eagain = 0;
    std::vector<iovec> rest;  // remainder after a short vectored transfer
    uint32_t next_free = 0;
  };
  struct FixedEntry {
    std::atomic<uintptr_t> base{0};
    std::atomic<size_t> len{0};
  };

  uint32_t AllocSlot();
  void FreeSlot(uint32_t i);
  io_uring_sqe* GetSqe();
  // Prepares SQEs for as many segments of `req` as free slots allow; true when
  // the request has no segments left to start.
  bool StartSegments(IoRequest* req);
  void PrepSegment(uint32_t slot_index);
  void StartBacklog();
  void Fail(IoRequest* req, Status st);
  // Returns 1 when the request completed.
  int HandleCqe(uint64_t user_data, int res);
  int Complete(IoRequest* req);
  void SubmitPrepared();

  io_uring ring_{};
  bool ring_ok_ = false;
  std::vector<Slot> slots_;
  uint32_t free_head_ = UINT32_MAX;
  unsigned prepared_ = 0;  // SQEs prepared but not yet submitted
  size_t outstanding_ = 0;
  IoRequest* backlog_head_ = nullptr;
  IoRequest* backlog_tail_ = nullptr;
  int evfd_ = -1;
  bool evfd_dirty_ = false;
  bool in_reap_ = false;

  bool sparse_ok_ = false;
  std::mutex fixed_mu_;  // allocation of table indices (any thread)
  std::vector<uint8_t> fixed_used_;
  std::unique_ptr<FixedEntry[]> fixed_;
  unsigned fixed_slots_ = 0;
};

UringEngine::~UringEngine() {
  if (ring_ok_) {
    // Requests still in flight would complete into freed memory: wait for them.
    while (outstanding_ > 0) {
      if (Reap(true) < 0) break;
    }
    io_uring_queue_exit(&ring_);
  }
  if (evfd_ >= 0) close(evfd_);
}

Status UringEngine::Init(const EngineOptions& o) {
  if (o.queue_depth == 0 || o.queue_depth > 4096) {
    return InvalidArgumentError(fmt::format("queue_depth {} not in [1, 4096]", o.queue_depth));
  }
  // COOP_TASKRUN: a completion does not interrupt this thread with an IPI to
  // run io_uring's task work; the work runs when the thread next enters the
  // kernel (it waits in io_uring_enter, or reads the eventfd, anyway).
  // TASKRUN_FLAG: a thread that polls the CQ from user space sees
  // IORING_SQ_TASKRUN and enters the kernel to flush it (liburing's peek does).
  // fio sets the same (plus DEFER_TASKRUN, which needs SINGLE_ISSUER: the pool
  // registers arenas from whichever thread grows it, so the sink cannot).
  unsigned flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  int rc = 0;
  for (;;) {
    io_uring_params p{};
    p.flags = flags;
    p.cq_entries = 2 * o.queue_depth;
    rc = io_uring_queue_init_params(o.queue_depth, &ring_, &p);
    if (rc == -EINVAL && (flags & (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG)) != 0) {
      flags &= ~(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);  // kernel < 5.19
      continue;
    }
    break;
  }
  if (rc < 0) return UnavailableError(fmt::format("io_uring_queue_init: {}", strerror(-rc)));
  ring_ok_ = true;
  slots_.resize(o.queue_depth);
  for (uint32_t i = 0; i < slots_.size(); ++i) slots_[i].next_free = i + 1 < slots_.size() ? i + 1 : UINT32_MAX;
  free_head_ = 0;

  fixed_slots_ = o.fixed_buffer_slots;
  if (fixed_slots_ > 0) {
    rc = io_uring_register_buffers_sparse(&ring_, fixed_slots_);
    if (rc < 0) {
      SPDLOG_WARN("nvme: io_uring sparse fixed-buffer table unavailable ({}); no fixed buffers",
                  strerror(-rc));
    } else {
      sparse_ok_ = true;
      fixed_used_.assign(fixed_slots_, 0);
      fixed_ = std::make_unique<FixedEntry[]>(fixed_slots_);
    }
  }
  return Status::Ok();
}

uint32_t UringEngine::AllocSlot() {
  const uint32_t i = free_head_;
  if (i != UINT32_MAX) {
    free_head_ = slots_[i].next_free;
    slots_[i].done = 0;
    slots_[i].eagain = 0;
    slots_[i].rest.clear();
  }
  return i;
}

void UringEngine::FreeSlot(uint32_t i) {
  slots_[i].req = nullptr;
  slots_[i].next_free = free_head_;
  free_head_ = i;
}

io_uring_sqe* UringEngine::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {  // cannot happen while in-flight SQEs <= queue depth; be safe
    SubmitPrepared();
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void UringEngine::PrepSegment(uint32_t si) {
  Slot& s = slots_[si];
  IoRequest* req = s.req;
  io_uring_sqe* sqe = GetSqe();
  const bool write = req->opcode == IoOpcode::kWrite;
  if (req->opcode == IoOpcode::kFdatasync) {
    io_uring_prep_fsync(sqe, req->fd, IORING_FSYNC_DATASYNC);
  } else if (s.fixed >= 0) {
    const iovec& v = req->iov[s.first];
    char* base = static_cast<char*>(v.iov_base) + s.done;
    const unsigned n = static_cast<unsigned>(s.expected - s.done);
    if (write) {
      io_uring_prep_write_fixed(sqe, req->fd, base, n, s.offset + s.done, s.fixed);
    } else {
      io_uring_prep_read_fixed(sqe, req->fd, base, n, s.offset + s.done, s.fixed);
    }
  } else {
    const iovec* iov = &req->iov[s.first];
    unsigned cnt = s.count;
    if (s.done > 0) {  // remainder of a short transfer
      s.rest.assign(iov, iov + cnt);
      uint64_t skip = s.done;
      size_t k = 0;
      while (skip >= s.rest[k].iov_len) skip -= s.rest[k++].iov_len;
      s.rest.erase(s.rest.begin(), s.rest.begin() + static_cast<ptrdiff_t>(k));
      s.rest[0].iov_base = static_cast<char*>(s.rest[0].iov_base) + skip;
      s.rest[0].iov_len -= skip;
      iov = s.rest.data();
      cnt = static_cast<unsigned>(s.rest.size());
    }
    if (write) {
      io_uring_prep_writev(sqe, req->fd, iov, cnt, s.offset + s.done);
    } else {
      io_uring_prep_readv(sqe, req->fd, iov, cnt, s.offset + s.done);
    }
  }
  if (write && req->dsync) sqe->rw_flags = RWF_DSYNC;
  io_uring_sqe_set_data64(sqe, uint64_t{si} + 1);
  ++prepared_;
}

bool UringEngine::StartSegments(IoRequest* req) {
  const uint32_t n = req->opcode == IoOpcode::kFdatasync ? 1 : static_cast<uint32_t>(req->iov.size());
  while (req->engine_next < n) {
    const uint32_t si = AllocSlot();
    if (si == UINT32_MAX) return false;
    Slot& s = slots_[si];
    s.req = req;
    s.offset = req->engine_next_offset;
    s.first = req->engine_next;
    s.fixed = -1;
    if (req->opcode == IoOpcode::kFdatasync) {
      s.count = 1;
      s.expected = 0;
    } else if (!req->fixed.empty() && req->fixed[s.first] >= 0) {
      s.count = 1;
      s.fixed = req->fixed[s.first];
      s.expected = req->iov[s.first].iov_len;
    } else {
      uint32_t j = s.first;
      s.expected = 0;
      while (j < n && j - s.first < IOV_MAX && (req->fixed.empty() || req->fixed[j] < 0)) {
        s.expected += req->iov[j].iov_len;
        ++j;
      }
      s.count = j - s.first;
    }
    req->engine_next += s.count;
    req->engine_next_offset += s.expected;
    ++req->engine_pending;
    PrepSegment(si);
  }
  return true;
}

void UringEngine::SubmitPrepared() {
  while (prepared_ > 0) {
    const int rc = io_uring_submit(&ring_);
    if (rc >= 0) {
      prepared_ -= std::min<unsigned>(prepared_, static_cast<unsigned>(rc));
      if (rc == 0) break;
    } else if (rc == -EINTR) {
      continue;
    } else {
      // EAGAIN/EBUSY: the kernel is short of resources; the SQEs stay in the
      // ring and go with the next submit (Reap submits them with its wait).
      if (rc != -EAGAIN && rc != -EBUSY) SPDLOG_ERROR("nvme: io_uring_submit: {}", strerror(-rc));
      break;
    }
  }
}

Status UringEngine::Submit(IoRequest* req) {
  if (req == nullptr || req->fd < 0) return InvalidArgumentError("IoRequest without fd");
  if (req->opcode != IoOpcode::kFdatasync) {
    if (req->iov.empty()) return InvalidArgumentError("IoRequest with no iovecs");
    if (!req->fixed.empty() && req->fixed.size() != req->iov.size()) {
      return InvalidArgumentError("IoRequest: fixed[] and iov[] differ in length");
    }
  }
  req->status = Status::Ok();
  req->bytes = 0;
  req->engine_pending = 0;
  req->engine_next = 0;
  req->engine_next_offset = req->offset;
  req->engine_link = nullptr;
  ++outstanding_;
  if (backlog_head_ != nullptr || !StartSegments(req)) {
    if (backlog_tail_ != nullptr) {
      backlog_tail_->engine_link = req;
    } else {
      backlog_head_ = req;
    }
    backlog_tail_ = req;
  }
  // Inside Reap (a `done` callback submitting more work) the SQEs go with
  // Reap's next submit: one syscall for the whole batch.
  if (!in_reap_) SubmitPrepared();
  return Status::Ok();
}

void UringEngine::StartBacklog() {
  while (backlog_head_ != nullptr && free_head_ != UINT32_MAX) {
    IoRequest* req = backlog_head_;
    if (!StartSegments(req)) break;
    backlog_head_ = req->engine_link;
    if (backlog_head_ == nullptr) backlog_tail_ = nullptr;
    req->engine_link = nullptr;
  }
}

int UringEngine::Complete(IoRequest* req) {
  --outstanding_;
  req->done(req, req->arg);
  return 1;
}

void UringEngine::Fail(IoRequest* req, Status st) {
  if (req->status.ok()) req->status = std::move(st);
  const uint32_t n = req->opcode == IoOpcode::kFdatasync ? 1 : static_cast<uint32_t>(req->iov.size());
  if (req->engine_next < n) {
    // Stop starting its other segments. Only the backlog head can be partly started.
    req->engine_next = n;
    if (backlog_head_ == req) {
      backlog_head_ = req->engine_link;
      if (backlog_head_ == nullptr) backlog_tail_ = nullptr;
      req->engine_link = nullptr;
    }
  }
}

int UringEngine::HandleCqe(uint64_t user_data, int res) {
  const uint32_t si = static_cast<uint32_t>(user_data - 1);
  Slot& s = slots_[si];
  IoRequest* req = s.req;
  const char* what = req->opcode == IoOpcode::kWrite   ? "io_uring write"
                     : req->opcode == IoOpcode::kRead ? "io_uring read"
                                                       : "io_uring fdatasync";
  bool finished = true;
  if (res == -EAGAIN || res == -EINTR) {
    if (++s.eagain <= kMaxEagainRetries) {
      PrepSegment(si);
      finished = false;
    } else {
      Fail(req, IoErrnoStatus(-res, fmt::format("{} at offset {}", what, s.offset + s.done)));
    }
  } else if (res < 0) {
    Fail(req, IoErrnoStatus(-res, fmt::format("{} at offset {}", what, s.offset + s.done)));
  } else if (req->opcode != IoOpcode::kFdatasync) {
    s.done += static_cast<uint64_t>(res);
    req->bytes += static_cast<uint64_t>(res);
    if (s.done < s.expected) {
      if (res == 0) {
        Fail(req, req->opcode == IoOpcode::kRead
                      ? OutOfRangeError(fmt::format("{}: end of file at offset {} ({} of {} bytes)",
                                                    what, s.offset + s.done, s.done, s.expected))
                      : DataLossError(fmt::format("{}: short write made no progress at offset {} "
                                                  "({} of {} bytes)",
                                                  what, s.offset + s.done, s.done, s.expected)));
      } else {
        PrepSegment(si);  // retry the remainder
        finished = false;
      }
    }
  }
  if (!finished) return 0;
  FreeSlot(si);
  --req->engine_pending;
  const uint32_t n = req->opcode == IoOpcode::kFdatasync ? 1 : static_cast<uint32_t>(req->iov.size());
  if (req->engine_pending == 0 && req->engine_next >= n) return Complete(req);
  return 0;
}

int UringEngine::Reap(bool wait) {
  if (outstanding_ == 0 && !evfd_dirty_ && prepared_ == 0) return 0;
  int completed = 0;
  bool waited = !wait;
  for (;;) {
    if (prepared_ > 0) SubmitPrepared();
    io_uring_cqe* cqes[kReapBatch];
    // (With IORING_SETUP_TASKRUN_FLAG, liburing's peek enters the kernel when
    // completions wait for this thread to run their task work.)
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kReapBatch);
    if (n == 0) {
      if (evfd_dirty_) {
        // CQEs were consumed since the eventfd was last drained: drain it now
        // (else a stale count keeps the poller waking), then look again — a
        // completion posted before this read is in the CQ, one posted after
        // it makes the eventfd readable again, so no wake-up is lost. A poll
        // that finds nothing new costs no syscall.
        uint64_t v;
        while (read(evfd_, &v, sizeof v) < 0 && errno == EINTR) {
        }
        evfd_dirty_ = false;
        continue;
      }
      if (waited || outstanding_ == 0 || completed > 0) break;
      // Submits, with the wait, SQEs the kernel did not take in
      // SubmitPrepared (EAGAIN/EBUSY): else nothing may be in flight to wait for.
      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc >= 0) {
        prepared_ -= std::min<unsigned>(prepared_, static_cast<unsigned>(rc));
      } else if (rc == -EAGAIN || rc == -EBUSY) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the kernel is short of resources
        rc = 0;
      }
      if (rc < 0 && rc != -EINTR && rc != -ETIME) {
        SPDLOG_ERROR("nvme: io_uring wait: {}", strerror(-rc));
        return completed > 0 ? completed : -1;
      }
      continue;
    }
    struct Done {
      uint64_t ud;
      int res;
    } batch[kReapBatch];
    for (unsigned i = 0; i < n; ++i) batch[i] = {cqes[i]->user_data, cqes[i]->res};
    io_uring_cq_advance(&ring_, n);
    if (evfd_ >= 0) evfd_dirty_ = true;
    in_reap_ = true;
    for (unsigned i = 0; i < n; ++i) completed += HandleCqe(batch[i].ud, batch[i].res);
    in_reap_ = false;
    StartBacklog();
    waited = true;
  }
  if (prepared_ > 0) SubmitPrepared();
  return completed;
}

Result<int> UringEngine::EventFd() {
  if (evfd_ >= 0) return evfd_;
  const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "eventfd");
  const int rc = io_uring_register_eventfd(&ring_, fd);
  if (rc < 0) {
    close(fd);
    return ErrnoStatus(-rc, "io_uring_register_eventfd");
  }
  evfd_ = fd;
  return fd;
}

Result<uint32_t> UringEngine::RegisterFixedBuffer(void* base, size_t len) {
  if (!sparse_ok_) return UnimplementedError("io_uring fixed-buffer table unavailable");
  std::lock_guard lk(fixed_mu_);
  uint32_t idx = 0;
  while (idx < fixed_slots_ && fixed_used_[idx] != 0) ++idx;
  if (idx == fixed_slots_) {
    return ResourceExhaustedError(fmt::format("io_uring fixed-buffer table full ({} slots)", fixed_slots_));
  }
  iovec v{base, len};
  __u64 tag = 0;
  const int rc = io_uring_register_buffers_update_tag(&ring_, idx, &v, &tag, 1);
  if (rc < 0) return ErrnoStatus(-rc, "io_uring_register_buffers_update");
  fixed_used_[idx] = 1;
  fixed_[idx].len.store(len, std::memory_order_relaxed);
  fixed_[idx].base.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
  return idx;
}

void UringEngine::UnregisterFixedBuffer(uint32_t idx) {
  if (!sparse_ok_ || idx >= fixed_slots_) return;
  std::lock_guard lk(fixed_mu_);
  if (fixed_used_[idx] == 0) return;
  fixed_[idx].base.store(0, std::memory_order_release);
  fixed_[idx].len.store(0, std::memory_order_relaxed);
  iovec v{nullptr, 0};
  __u64 tag = 0;
  const int rc = io_uring_register_buffers_update_tag(&ring_, idx, &v, &tag, 1);
  if (rc < 0) SPDLOG_WARN("nvme: unregistering fixed buffer {}: {}", idx, strerror(-rc));
  fixed_used_[idx] = 0;
}

bool UringEngine::FixedContains(uint32_t idx, const void* p, size_t len) const noexcept {
  if (!sparse_ok_ || idx >= fixed_slots_) return false;
  const uintptr_t base = fixed_[idx].base.load(std::memory_order_acquire);
  if (base == 0) return false;
  const size_t blen = fixed_[idx].len.load(std::memory_order_relaxed);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a >= base && a - base <= blen && len <= blen - (a - base);
}

}  // namespace

Result<std::unique_ptr<IoEngine>> CreateUringEngine(const EngineOptions& options) {
  auto e = std::make_unique<UringEngine>();
  HRPC_TRY(e->Init(options));
  return std::unique_ptr<IoEngine>(std::move(e));
}

}  // namespace hrpc::nvme
