#include "hrpc/base/status.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace hrpc {

std::string_view StatusCodeName(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN_CODE";
}

Status::Status(StatusCode code, std::string_view message) {
  if (code != StatusCode::kOk) rep_ = std::make_unique<Rep>(Rep{code, std::string(message)});
}

Status::Status(const Status& other)
    : rep_(other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) rep_ = other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr;
  return *this;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(rep_->code));
  if (!rep_->message.empty()) {
    out += ": ";
    out += rep_->message;
  }
  return out;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return Status();
  std::string m(context);
  m += ": ";
  m += rep_->message;
  return Status(rep_->code, m);
}

Status ErrnoStatus(int err, std::string_view what) {
  StatusCode code = StatusCode::kInternal;
  switch (err) {
    case ENOSPC: case ENOMEM: case EAGAIN: case ENOBUFS: case EMFILE: case ENFILE: case EFBIG:
    case EDQUOT:
      code = StatusCode::kResourceExhausted; break;
    case ECONNRESET: case EPIPE: case ECONNREFUSED: case ECONNABORTED: case ENOTCONN:
    case EHOSTUNREACH: case ENETUNREACH: case ESHUTDOWN:
      code = StatusCode::kUnavailable; break;
    case ETIMEDOUT: code = StatusCode::kDeadlineExceeded; break;
    case EINVAL: case EBADF: case EFAULT: code = StatusCode::kInvalidArgument; break;
    case EIO: code = StatusCode::kDataLoss; break;
    case EACCES: case EPERM: code = StatusCode::kPermissionDenied; break;
    case ENOENT: code = StatusCode::kNotFound; break;
    case EEXIST: case EADDRINUSE: code = StatusCode::kAlreadyExists; break;
    case ECANCELED: code = StatusCode::kCancelled; break;
    case EOPNOTSUPP: case ENOSYS: code = StatusCode::kUnimplemented; break;
    default: break;
  }
  std::string m(what);
  m += ": ";
  m += std::strerror(err);
  return Status(code, m);
}

void DieOnBadResultAccess(const Status& status) {
  std::fprintf(stderr, "hrpc: value() of a Result holding an error: %s\n",
               status.ToString().c_str());
  std::abort();
}

}  // namespace hrpc
