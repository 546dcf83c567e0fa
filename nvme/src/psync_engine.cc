// preadv2/pwritev2 engine (the fallback when io_uring is unavailable), and
// what both engines share.
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "hrpc/nvme/io_engine.h"

namespace hrpc::nvme {

std::string_view EngineKindName(EngineKind k) noexcept {
  switch (k) {
    case EngineKind::kIoUring: return "io_uring";
    case EngineKind::kPsync: return "psync";
  }
  return "?";
}

Status IoErrnoStatus(int err, std::string_view what) {
  switch (err) {
    // A full disk, a quota or RLIMIT_FSIZE: the write may succeed later or elsewhere.
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return ResourceExhaustedError(fmt::format("{}: {}", what, strerror(err)));
    default:
      return ErrnoStatus(err, what);
  }
}

namespace {

class PsyncEngine final : public IoEngine {
 public:
  EngineKind kind() const noexcept override { return EngineKind::kPsync; }

  Status Submit(IoRequest* req) override {
    if (req == nullptr || req->fd < 0) return InvalidArgumentError("IoRequest without fd");
    if (req->opcode != IoOpcode::kFdatasync && req->iov.empty()) {
      return InvalidArgumentError("IoRequest with no iovecs");
    }
    req->status = Status::Ok();
    req->bytes = 0;
    req->status = Run(req);
    req->done(req, req->arg);
    return Status::Ok();
  }
  int Reap(bool) override { return 0; }
  size_t outstanding() const noexcept override { return 0; }
  Result<int> EventFd() override { return -1; }
  Result<uint32_t> RegisterFixedBuffer(void*, size_t) override {
    return UnimplementedError("psync engine has no fixed buffers");
  }
  void UnregisterFixedBuffer(uint32_t) override {}
  bool FixedContains(uint32_t, const void*, size_t) const noexcept override { return false; }

 private:
  Status Run(IoRequest* req) {
    if (req->opcode == IoOpcode::kFdatasync) {
      while (fdatasync(req->fd) != 0) {
        if (errno != EINTR) return IoErrnoStatus(errno, "fdatasync");
      }
      return Status::Ok();
    }
    const bool write = req->opcode == IoOpcode::kWrite;
    const int flags = write && req->dsync ? RWF_DSYNC : 0;
    // Work on a copy of the iovecs so short transfers can advance in place.
    rest_.assign(req->iov.begin(), req->iov.end());
    size_t first = 0;
    uint64_t off = req->offset;
    while (first < rest_.size()) {
      const int cnt = static_cast<int>(std::min<size_t>(rest_.size() - first, IOV_MAX));
      const ssize_t n = write ? pwritev2(req->fd, &rest_[first], cnt, static_cast<off_t>(off), flags)
                              : preadv2(req->fd, &rest_[first], cnt, static_cast<off_t>(off), flags);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return IoErrnoStatus(errno, fmt::format("{} at offset {}", write ? "pwritev2" : "preadv2", off));
      }
      if (n == 0) {
        return write ? DataLossError(fmt::format("pwritev2: short write made no progress at offset {}", off))
                     : OutOfRangeError(fmt::format("preadv2: end of file at offset {}", off));
      }
      req->bytes += static_cast<uint64_t>(n);
      off += static_cast<uint64_t>(n);
      size_t left = static_cast<size_t>(n);
      while (left > 0 && left >= rest_[first].iov_len) left -= rest_[first++].iov_len;
      if (left > 0) {  // short transfer inside an element: retry the remainder
        rest_[first].iov_base = static_cast<char*>(rest_[first].iov_base) + left;
        rest_[first].iov_len -= left;
      }
    }
    return Status::Ok();
  }

  std::vector<iovec> rest_;
};

}  // namespace

std::unique_ptr<IoEngine> CreatePsyncEngine() { return std::make_unique<PsyncEngine>(); }

}  // namespace hrpc::nvme
