// Status and Result<T>: the error currency of every fallible hrpc path.
//
// A Status is a code plus a human-readable message. OK is the only success
// value and costs one null pointer; an error allocates its message once.
// Codes follow the familiar gRPC/absl set so that storage services can map
// them 1:1. Exceptions never carry errors across a module boundary: a
// function that can fail returns [[nodiscard]] Status or Result<T>.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace hrpc {

enum class StatusCode : uint8_t {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,  // also: a wait_for() that timed out
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,  // e.g. a one-sided op outside what the peer exposed
  kResourceExhausted = 8, // pool empty, credits gone, disk full: may succeed later
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,    // unknown service or method
  kInternal = 13,
  kUnavailable = 14,      // peer gone / not connected: retry may succeed
  kDataLoss = 15,         // checksum mismatch, corrupted frame
  kUnauthenticated = 16,
};
inline constexpr int kStatusCodeCount = 17;

std::string_view StatusCodeName(StatusCode code) noexcept;

class [[nodiscard]] Status {
 public:
  Status() noexcept = default;  // OK
  Status(StatusCode code, std::string_view message);

  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  static Status Ok() noexcept { return Status(); }

  bool ok() const noexcept { return rep_ == nullptr; }
  StatusCode code() const noexcept { return rep_ ? rep_->code : StatusCode::kOk; }
  std::string_view message() const noexcept {
    return rep_ ? std::string_view(rep_->message) : std::string_view();
  }
  // "DEADLINE_EXCEEDED: message" or "OK".
  std::string ToString() const;
  // Returns a copy with "context: " prepended to the message (same code).
  Status WithContext(std::string_view context) const;

  // Explicitly discard a Status whose failure is irrelevant (e.g. best-effort close).
  void IgnoreError() const noexcept {}

  friend bool operator==(const Status& a, const Status& b) noexcept {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<Rep> rep_;
};

// Shorthand constructors, one per code that call sites use.
inline Status CancelledError(std::string_view m) { return {StatusCode::kCancelled, m}; }
inline Status InvalidArgumentError(std::string_view m) { return {StatusCode::kInvalidArgument, m}; }
inline Status DeadlineExceededError(std::string_view m) { return {StatusCode::kDeadlineExceeded, m}; }
inline Status NotFoundError(std::string_view m) { return {StatusCode::kNotFound, m}; }
inline Status AlreadyExistsError(std::string_view m) { return {StatusCode::kAlreadyExists, m}; }
inline Status PermissionDeniedError(std::string_view m) { return {StatusCode::kPermissionDenied, m}; }
inline Status ResourceExhaustedError(std::string_view m) { return {StatusCode::kResourceExhausted, m}; }
inline Status FailedPreconditionError(std::string_view m) { return {StatusCode::kFailedPrecondition, m}; }
inline Status AbortedError(std::string_view m) { return {StatusCode::kAborted, m}; }
inline Status OutOfRangeError(std::string_view m) { return {StatusCode::kOutOfRange, m}; }
inline Status UnimplementedError(std::string_view m) { return {StatusCode::kUnimplemented, m}; }
inline Status InternalError(std::string_view m) { return {StatusCode::kInternal, m}; }
inline Status UnavailableError(std::string_view m) { return {StatusCode::kUnavailable, m}; }
inline Status DataLossError(std::string_view m) { return {StatusCode::kDataLoss, m}; }

// Status from an errno value: "what: strerror(err)", mapped to the closest code
// (ENOSPC/ENOMEM/EAGAIN -> RESOURCE_EXHAUSTED, ECONNRESET/EPIPE/ECONNREFUSED ->
// UNAVAILABLE, ETIMEDOUT -> DEADLINE_EXCEEDED, EINVAL -> INVALID_ARGUMENT,
// EIO -> DATA_LOSS, EACCES/EPERM -> PERMISSION_DENIED, else INTERNAL).
Status ErrnoStatus(int err, std::string_view what);

// Result<T>: a T or a non-OK Status. Accessing value() of an error is a bug
// (asserted), not a recoverable condition.
template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::remove_cv_t<T>, Status>, "Result<Status> is meaningless");
  static_assert(!std::is_reference_v<T>, "Result<T&> is not supported");

 public:
  Result(T value) : status_(), has_value_(true) { new (&storage_) T(std::move(value)); }
  Result(Status status) : status_(std::move(status)), has_value_(false) {
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "Result constructed from OK Status");
  }
  template <typename U>
    requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::decay_t<U>, T> &&
             !std::is_same_v<std::decay_t<U>, Status> &&
             !std::is_same_v<std::decay_t<U>, Result>)
  Result(U&& value) : Result(T(std::forward<U>(value))) {}

  Result(const Result& o) : status_(o.status_), has_value_(o.has_value_) {
    if (has_value_) new (&storage_) T(*o.ptr());
  }
  Result(Result&& o) noexcept(std::is_nothrow_move_constructible_v<T>)
      : status_(std::move(o.status_)), has_value_(o.has_value_) {
    if (has_value_) new (&storage_) T(std::move(*o.ptr()));
  }
  Result& operator=(const Result& o) {
    if (this != &o) {
      Reset();
      status_ = o.status_;
      has_value_ = o.has_value_;
      if (has_value_) new (&storage_) T(*o.ptr());
    }
    return *this;
  }
  Result& operator=(Result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) {
    if (this != &o) {
      Reset();
      status_ = std::move(o.status_);
      has_value_ = o.has_value_;
      if (has_value_) new (&storage_) T(std::move(*o.ptr()));
    }
    return *this;
  }
  ~Result() { Reset(); }

  bool ok() const noexcept { return has_value_; }
  explicit operator bool() const noexcept { return has_value_; }
  const Status& status() const& noexcept { return status_; }
  Status status() && noexcept { return std::move(status_); }

  T& value() & { Check(); return *ptr(); }
  const T& value() const& { Check(); return *ptr(); }
  T&& value() && { Check(); return std::move(*ptr()); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T value_or(T fallback) const& { return has_value_ ? *ptr() : std::move(fallback); }

 private:
  T* ptr() noexcept { return std::launder(reinterpret_cast<T*>(&storage_)); }
  const T* ptr() const noexcept { return std::launder(reinterpret_cast<const T*>(&storage_)); }
  void Check() const;
  void Reset() noexcept {
    if (has_value_) ptr()->~T();
    has_value_ = false;
  }

  Status status_;
  bool has_value_;
  alignas(T) unsigned char storage_[sizeof(T)];
};

[[noreturn]] void DieOnBadResultAccess(const Status& status);

template <typename T>
void Result<T>::Check() const {
  if (!has_value_) [[unlikely]] DieOnBadResultAccess(status_);
}

namespace detail {
inline Status AsStatus(Status s) { return s; }
template <typename T>
Status AsStatus(const Result<T>& r) { return r.status(); }
}  // namespace detail

}  // namespace hrpc

#define HRPC_INTERNAL_CONCAT2(a, b) a##b
#define HRPC_INTERNAL_CONCAT(a, b) HRPC_INTERNAL_CONCAT2(a, b)

// HRPC_TRY(expr): return the Status of `expr` (a Status or Result) if it is an error.
#define HRPC_TRY(expr)                                                        \
  do {                                                                        \
    auto&& hrpc_try_value_ = (expr);                                          \
    if (!hrpc_try_value_.ok()) [[unlikely]]                                   \
      return ::hrpc::detail::AsStatus(std::move(hrpc_try_value_));            \
  } while (0)

// HRPC_ASSIGN_OR_RETURN(lhs, expr): `lhs = *expr` or return its error Status.
#define HRPC_ASSIGN_OR_RETURN(lhs, expr)                                      \
  auto HRPC_INTERNAL_CONCAT(hrpc_result_, __LINE__) = (expr);                 \
  if (!HRPC_INTERNAL_CONCAT(hrpc_result_, __LINE__).ok()) [[unlikely]]        \
    return std::move(HRPC_INTERNAL_CONCAT(hrpc_result_, __LINE__)).status();  \
  lhs = std::move(HRPC_INTERNAL_CONCAT(hrpc_result_, __LINE__)).value()
