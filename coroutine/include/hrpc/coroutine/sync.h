// Synchronization primitives that suspend the calling coroutine, not its
// thread. Each also works from a plain thread (no scheduler): there the call
// blocks the thread (mutex + condition variable per waiter).
//
// Wake-ups from any thread resume a waiting coroutine on its own scheduler
// (same thread: ready queue; other thread: the scheduler's MPSC queue and an
// eventfd write if it sleeps). A timed wait and a wake-up race through one
// atomic per waiter: exactly one of them wins, the waiter resumes once.
//
// Timed waits return DEADLINE_EXCEEDED on timeout. None of these objects may be
// destroyed while someone waits on it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"

namespace hrpc::coro {

using Clock = std::chrono::steady_clock;

namespace detail {

struct Fiber;  // a coroutine; defined in coroutine/src

// The coroutine running on this thread, or nullptr.
Fiber* CurrentFiber() noexcept;

// One blocked caller (coroutine or plain thread). Lives on the waiter's stack
// and is linked into the primitive's list under the primitive's mutex.
struct Waiter {
  Waiter* next = nullptr;
  Waiter* prev = nullptr;
  bool linked = false;
  Fiber* fiber = nullptr;               // nullptr: a plain thread
  std::atomic<uint8_t> state{0};        // 0 waiting, 1 woken, 2 timed out
  std::mutex m;                         // plain-thread wake-up only
  std::condition_variable cv;
  bool done = false;
};

// Intrusive FIFO of waiters; guarded by the owning primitive's mutex.
class WaitList {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  void PushBack(Waiter* w) noexcept;
  Waiter* PopFront() noexcept;
  void Remove(Waiter* w) noexcept;  // no-op if not linked

 private:
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
};

// Claims `w` for waking (waiter state 0 -> 1). Returns false if the waiter had
// already timed out (then `w` must not be touched again). A claimed waiter stays
// parked, so `w` stays valid, until Resume(w). Call with the primitive's mutex
// held and `w` already unlinked.
bool Claim(Waiter* w) noexcept;
// Resumes a claimed waiter. Afterwards `w` may be gone.
void Resume(Waiter* w) noexcept;

// Wakes collected under a primitive's mutex and delivered after it is released.
// A resumed waiter may destroy the primitive at once (`wg.Wait(); return;`), so
// nothing may touch the primitive after the first Resume. Declare the batch
// BEFORE the lock guard: the guard unlocks first, then the batch resumes.
class WakeBatch {
 public:
  WakeBatch() = default;
  WakeBatch(const WakeBatch&) = delete;
  WakeBatch& operator=(const WakeBatch&) = delete;
  ~WakeBatch() {
    while (Waiter* w = claimed_.PopFront()) Resume(w);
  }
  // Claims `w` (already unlinked) for this batch; false if its timer won.
  bool Add(Waiter* w) noexcept {
    if (!Claim(w)) return false;
    claimed_.PushBack(w);
    return true;
  }
  // Claims every waiter of `list`; ones whose timer won are just unlinked.
  void AddAll(WaitList& list) noexcept {
    while (Waiter* w = list.PopFront()) Add(w);
  }

 private:
  WaitList claimed_;
};

// Blocks the caller until a waker claims and resumes `w`, or the deadline (nullptr: none).
// Precondition: `lk` holds the primitive's mutex and `w` is linked.
// Returns true if woken (lk is then UNLOCKED and w unlinked by the waker);
// false on timeout (lk is LOCKED again and w may still be linked: unlink it).
bool Block(Waiter& w, std::unique_lock<std::mutex>& lk, const Clock::time_point* deadline);

void LogCoroutineException(std::string_view name, std::string_view what) noexcept;

}  // namespace detail

// Manual-reset event. Set() from any thread wakes every waiter.
class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void Set();
  void Reset();
  bool IsSet() const;
  Status Wait();
  Status WaitFor(std::chrono::nanoseconds d) { return WaitUntil(DeadlineAfter(Clock::now(), d)); }
  Status WaitUntil(Clock::time_point tp);

 private:
  mutable std::mutex mu_;
  bool set_ = false;
  detail::WaitList waiters_;
};

// A one-shot event for code confined to one scheduler (a transport's
// connections, whose every method runs on their worker): Set() and Wait() run on
// that scheduler's thread, Wait() only in a coroutine. One waiter at a time. No
// lock and no atomic operation, so it is cheaper than Event on paths taken per
// message. Set() only queues the waiter, so the woken coroutine may destroy the
// LocalEvent at once.
class LocalEvent {
 public:
  LocalEvent() = default;
  LocalEvent(const LocalEvent&) = delete;
  LocalEvent& operator=(const LocalEvent&) = delete;

  void Set() noexcept;
  bool IsSet() const noexcept { return set_; }
  // FAILED_PRECONDITION outside a coroutine or with another waiter parked.
  Status Wait();
  // DEADLINE_EXCEEDED when not set by `tp`.
  Status WaitUntil(Clock::time_point tp);

 private:
  Status Park(const Clock::time_point* deadline);
  bool set_ = false;
  detail::Fiber* waiter_ = nullptr;
};

// FIFO mutex with direct hand-off to the next waiter. Usable with std::unique_lock.
class Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock();
  bool TryLock();
  void Unlock();
  void lock() { Lock(); }
  bool try_lock() { return TryLock(); }
  void unlock() { Unlock(); }

 private:
  friend class ConditionVariable;
  std::mutex mu_;
  bool locked_ = false;
  detail::WaitList waiters_;
};

class ConditionVariable {
 public:
  ConditionVariable() = default;
  ConditionVariable(const ConditionVariable&) = delete;
  ConditionVariable& operator=(const ConditionVariable&) = delete;

  // `m` must be locked by the caller; it is unlocked while waiting and locked again on return.
  void Wait(Mutex& m);
  template <class Pred>
  void Wait(Mutex& m, Pred pred) {
    while (!pred()) Wait(m);
  }
  Status WaitFor(Mutex& m, std::chrono::nanoseconds d) { return WaitUntil(m, DeadlineAfter(Clock::now(), d)); }
  Status WaitUntil(Mutex& m, Clock::time_point tp);
  void NotifyOne();
  void NotifyAll();

 private:
  std::mutex mu_;
  detail::WaitList waiters_;
};

class Semaphore {
 public:
  explicit Semaphore(size_t initial = 0) : count_(initial) {}
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  void Acquire();
  bool TryAcquire();
  Status AcquireFor(std::chrono::nanoseconds d) { return AcquireUntil(DeadlineAfter(Clock::now(), d)); }
  Status AcquireUntil(Clock::time_point tp);
  void Release(size_t n = 1);
  size_t count() const;

 private:
  mutable std::mutex mu_;
  size_t count_;
  detail::WaitList waiters_;
};

// Counts outstanding work; Wait() returns when the count is zero.
class WaitGroup {
 public:
  WaitGroup() = default;
  WaitGroup(const WaitGroup&) = delete;
  WaitGroup& operator=(const WaitGroup&) = delete;

  void Add(int64_t n = 1);
  void Done() { Add(-1); }
  Status Wait();
  Status WaitFor(std::chrono::nanoseconds d) { return WaitUntil(DeadlineAfter(Clock::now(), d)); }
  Status WaitUntil(Clock::time_point tp);
  int64_t count() const;

 private:
  mutable std::mutex mu_;
  int64_t count_ = 0;
  detail::WaitList waiters_;
};

// ---------------------------------------------------------------- futures

template <class T>
class Future;
template <class T>
class Promise;

namespace detail {

// Shared state of one Promise/Future pair (non-template part).
class FutureStateBase {
 public:
  // Waits until ready or the deadline (nullptr: none). OK when ready.
  Status WaitReady(const Clock::time_point* deadline);
  bool IsReady() const;

 protected:
  // Publishes the result (stored by `store` under the lock); false if already set.
  template <class Store>
  bool Publish(Store&& store) {
    std::unique_lock lk(mu_);
    if (ready_) return false;
    store();
    ready_ = true;
    WakeAllLocked();
    return true;
  }
  void WakeAllLocked();

  mutable std::mutex mu_;
  bool ready_ = false;
  WaitList waiters_;
};

template <class T>
class FutureState final : public FutureStateBase {
 public:
  using Stored = std::conditional_t<std::is_void_v<T>, Status, Result<T>>;
  bool Set(Stored v) {
    return Publish([&] { value_.emplace(std::move(v)); });
  }
  Stored Take() { return std::move(*value_); }  // after WaitReady() returned OK

 private:
  std::optional<Stored> value_;
};

template <class R>
struct AsyncTraits {
  using Value = R;
};
template <>
struct AsyncTraits<Status> {
  using Value = void;
};
template <class U>
struct AsyncTraits<Result<U>> {
  using Value = U;
};

}  // namespace detail

// Future<T>::Get() returns Result<T>, or Status for T = void.
template <class T>
using FutureResult = std::conditional_t<std::is_void_v<T>, Status, Result<T>>;

// The consumer side: one Get() (or a successful WaitFor) per future; the value
// is moved out. Get/WaitFor suspend a coroutine or block a plain thread.
template <class T>
class Future {
 public:
  Future() = default;
  bool valid() const noexcept { return state_ != nullptr; }
  bool IsReady() const { return state_ && state_->IsReady(); }

  FutureResult<T> Get() { return Finish(state_ ? state_->WaitReady(nullptr) : Invalid()); }
  FutureResult<T> WaitFor(std::chrono::nanoseconds d) { return WaitUntil(DeadlineAfter(Clock::now(), d)); }
  FutureResult<T> WaitUntil(Clock::time_point tp) {
    return Finish(state_ ? state_->WaitReady(&tp) : Invalid());
  }

 private:
  friend class Promise<T>;
  explicit Future(std::shared_ptr<detail::FutureState<T>> s) : state_(std::move(s)) {}
  static Status Invalid() { return FailedPreconditionError("Future has no state (default or already consumed)"); }
  FutureResult<T> Finish(Status waited) {
    if (!waited.ok()) return waited;  // timeout keeps the state for a later Get()
    auto s = std::move(state_);
    return s->Take();
  }
  std::shared_ptr<detail::FutureState<T>> state_;
};

// The producer side; move-only. SetValue/SetError may be called from any
// thread; the first one wins. A Promise destroyed unset completes its future
// with CANCELLED ("promise dropped"), so no waiter hangs forever.
template <class T>
class Promise {
 public:
  Promise() : state_(std::make_shared<detail::FutureState<T>>()) {}
  Promise(Promise&&) noexcept = default;
  Promise& operator=(Promise&& o) noexcept {
    if (this != &o) {
      Drop();
      state_ = std::move(o.state_);
      future_taken_ = o.future_taken_;
    }
    return *this;
  }
  ~Promise() { Drop(); }

  // Once per promise; a second call returns an invalid future.
  Future<T> GetFuture() {
    if (future_taken_ || !state_) return Future<T>();
    future_taken_ = true;
    return Future<T>(state_);
  }
  template <class U = T>
    requires(!std::is_void_v<U>)
  bool SetValue(U value) {
    return state_ && state_->Set(Result<T>(std::move(value)));
  }
  template <class U = T>
    requires(std::is_void_v<U>)
  bool SetValue() {
    return state_ && state_->Set(Status::Ok());
  }
  // `s` must not be OK (an OK status becomes INTERNAL).
  bool SetError(Status s) {
    if (s.ok()) s = InternalError("Promise::SetError called with OK");
    return state_ && state_->Set(std::move(s));
  }
  // For Result<T> (or Status when T = void) produced elsewhere.
  bool Set(FutureResult<T> r) { return state_ && state_->Set(std::move(r)); }

 private:
  void Drop() {
    if (state_) state_->Set(CancelledError("promise dropped"));
    state_.reset();
  }
  std::shared_ptr<detail::FutureState<T>> state_;
  bool future_taken_ = false;
};

// Runs fn() as a coroutine on `sched` (Spawn if called on sched's thread, Post
// otherwise) and returns a Future for its result. fn may return void, T,
// Status (-> Future<void>) or Result<U> (-> Future<U>). An exception escaping
// fn is logged and becomes INTERNAL with its what().
template <class F>
auto Async(Scheduler& sched, F&& fn, std::string_view name = {})
    -> Future<typename detail::AsyncTraits<std::invoke_result_t<std::decay_t<F>&>>::Value> {
  using R = std::invoke_result_t<std::decay_t<F>&>;
  using V = typename detail::AsyncTraits<R>::Value;
  auto promise = std::make_shared<Promise<V>>();
  Future<V> future = promise->GetFuture();
  auto body = [promise, fp = std::make_shared<std::decay_t<F>>(std::forward<F>(fn))]() {
    try {
      if constexpr (std::is_void_v<R>) {
        (*fp)();
        promise->SetValue();
      } else if constexpr (std::is_same_v<R, Status> ||
                           std::is_same_v<R, Result<V>>) {
        promise->Set((*fp)());
      } else {
        promise->SetValue((*fp)());
      }
    } catch (const std::exception& e) {
      detail::LogCoroutineException(this_coro::Name(), e.what());
      promise->SetError(InternalError(std::string("exception in coroutine: ") + e.what()));
    } catch (...) {
      detail::LogCoroutineException(this_coro::Name(), "unknown exception");
      promise->SetError(InternalError("exception in coroutine: unknown exception"));
    }
  };
  if (Scheduler::Current() == &sched) {
    sched.Spawn(std::move(body), name);
  } else {
    sched.Post(std::move(body), name);
  }
  return future;
}

}  // namespace hrpc::coro
