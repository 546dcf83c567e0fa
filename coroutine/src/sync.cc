// Event, Mutex, ConditionVariable, Semaphore, WaitGroup and the future state,
// all built on one primitive: a Waiter claimed by exactly one of {waker, timer}.
#include "hrpc/coroutine/sync.h"

#include <spdlog/spdlog.h>

#include "fiber.h"

namespace hrpc::coro {
namespace detail {

void WaitList::PushBack(Waiter* w) noexcept {
  w->next = nullptr;
  w->prev = tail_;
  if (tail_) {
    tail_->next = w;
  } else {
    head_ = w;
  }
  tail_ = w;
  w->linked = true;
}

Waiter* WaitList::PopFront() noexcept {
  Waiter* w = head_;
  if (w) Remove(w);
  return w;
}

void WaitList::Remove(Waiter* w) noexcept {
  if (!w->linked) return;
  if (w->prev) {
    w->prev->next = w->next;
  } else {
    head_ = w->next;
  }
  if (w->next) {
    w->next->prev = w->prev;
  } else {
    tail_ = w->prev;
  }
  w->next = w->prev = nullptr;
  w->linked = false;
}

bool Claim(Waiter* w) noexcept {
  uint8_t expected = 0;
  return w->state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel);
}

void Resume(Waiter* w) noexcept {
  if (w->fiber) {
    ResumeFiber(w->fiber);
  } else {
    std::lock_guard g(w->m);
    w->done = true;
    w->cv.notify_one();
  }
}

bool Block(Waiter& w, std::unique_lock<std::mutex>& lk, const Clock::time_point* deadline) {
  Fiber* f = CurrentFiberRaw();
  if (f) {
    w.fiber = f;
    Scheduler::Impl* s = f->sched;
    Scheduler::TimerId tid = 0;
    if (deadline) {
      // Runs inline on this fiber's scheduler thread; it and Wake() race on w.state.
      tid = AddInlineTimer(s, *deadline, [&w] {
        uint8_t expected = 0;
        if (w.state.compare_exchange_strong(expected, 2, std::memory_order_acq_rel)) ResumeFiber(w.fiber);
      });
    }
    f->state = FiberState::kSuspended;
    lk.unlock();
    SuspendCurrent();
    if (w.state.load(std::memory_order_acquire) == 1) {
      if (deadline) CancelInlineTimer(s, tid);  // may already have fired (and lost)
      return true;
    }
    lk.lock();
    return false;
  }
  // Plain thread.
  w.fiber = nullptr;
  lk.unlock();
  std::unique_lock wl(w.m);
  if (deadline) {
    if (w.cv.wait_until(wl, *deadline, [&] { return w.done; })) return true;
    uint8_t expected = 0;
    if (w.state.compare_exchange_strong(expected, 2, std::memory_order_acq_rel)) {
      wl.unlock();
      lk.lock();
      return false;
    }
    // A waker claimed us just now; it will set `done` under w.m.
  }
  w.cv.wait(wl, [&] { return w.done; });
  return true;
}

Status FutureStateBase::WaitReady(const Clock::time_point* deadline) {
  std::unique_lock lk(mu_);
  if (ready_) return Status::Ok();
  Waiter w;
  waiters_.PushBack(&w);
  if (Block(w, lk, deadline)) return Status::Ok();
  waiters_.Remove(&w);
  if (ready_) return Status::Ok();
  return DeadlineExceededError("future not ready before the deadline");
}

bool FutureStateBase::IsReady() const {
  std::lock_guard lk(mu_);
  return ready_;
}

void FutureStateBase::WakeAllLocked() {
  // The state is shared-owned by the setter too, so waking under its lock is safe.
  while (Waiter* w = waiters_.PopFront()) {
    if (Claim(w)) Resume(w);
  }
}

}  // namespace detail

// ------------------------------------------------------------------ Event

void Event::Set() {
  detail::WakeBatch wake;  // resumes after the unlock: a waiter may destroy *this
  std::lock_guard lk(mu_);
  set_ = true;
  wake.AddAll(waiters_);
}

void Event::Reset() {
  std::lock_guard lk(mu_);
  set_ = false;
}

bool Event::IsSet() const {
  std::lock_guard lk(mu_);
  return set_;
}

Status Event::Wait() {
  std::unique_lock lk(mu_);
  if (set_) return Status::Ok();
  detail::Waiter w;
  waiters_.PushBack(&w);
  detail::Block(w, lk, nullptr);
  return Status::Ok();
}

Status Event::WaitUntil(Clock::time_point tp) {
  std::unique_lock lk(mu_);
  if (set_) return Status::Ok();
  detail::Waiter w;
  waiters_.PushBack(&w);
  if (detail::Block(w, lk, &tp)) return Status::Ok();
  waiters_.Remove(&w);
  if (set_) return Status::Ok();
  return DeadlineExceededError("event not set before the deadline");
}

// ------------------------------------------------------------------ LocalEvent

void LocalEvent::Set() noexcept {
  set_ = true;
  if (detail::Fiber* f = std::exchange(waiter_, nullptr)) detail::ResumeFiber(f);
}

Status LocalEvent::Wait() { return Park(nullptr); }

Status LocalEvent::WaitUntil(Clock::time_point tp) { return Park(&tp); }

Status LocalEvent::Park(const Clock::time_point* deadline) {
  if (set_) return Status::Ok();
  detail::Fiber* f = detail::CurrentFiberRaw();
  if (f == nullptr) return FailedPreconditionError("LocalEvent::Wait outside a coroutine");
  if (waiter_ != nullptr) return FailedPreconditionError("LocalEvent::Wait: another coroutine is waiting");
  waiter_ = f;
  Scheduler::TimerId tid = 0;
  if (deadline != nullptr) {
    // Same thread as Set(): whichever runs first takes waiter_.
    tid = detail::AddInlineTimer(f->sched, *deadline, [this] {
      if (detail::Fiber* w = std::exchange(waiter_, nullptr)) detail::ResumeFiber(w);
    });
  }
  f->state = detail::FiberState::kSuspended;
  detail::SuspendCurrent();
  if (deadline != nullptr) {
    if (set_) {
      (void)detail::CancelInlineTimer(f->sched, tid);  // may have fired already (and found no waiter)
    } else {
      return DeadlineExceededError("event not set before the deadline");
    }
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ Mutex

void Mutex::Lock() {
  std::unique_lock lk(mu_);
  if (!locked_) {
    locked_ = true;
    return;
  }
  detail::Waiter w;
  waiters_.PushBack(&w);
  detail::Block(w, lk, nullptr);  // woken == ownership handed to us
}

bool Mutex::TryLock() {
  std::lock_guard lk(mu_);
  if (locked_) return false;
  locked_ = true;
  return true;
}

void Mutex::Unlock() {
  detail::WakeBatch wake;
  std::lock_guard lk(mu_);
  while (detail::Waiter* w = waiters_.PopFront()) {
    if (wake.Add(w)) return;  // hand-off: stays locked, now owned by w
  }
  locked_ = false;
}

// ------------------------------------------------------------------ ConditionVariable

void ConditionVariable::Wait(Mutex& m) {
  std::unique_lock lk(mu_);
  detail::Waiter w;
  waiters_.PushBack(&w);
  m.Unlock();
  detail::Block(w, lk, nullptr);
  m.Lock();
}

Status ConditionVariable::WaitUntil(Mutex& m, Clock::time_point tp) {
  std::unique_lock lk(mu_);
  detail::Waiter w;
  waiters_.PushBack(&w);
  m.Unlock();
  if (detail::Block(w, lk, &tp)) {
    m.Lock();
    return Status::Ok();
  }
  waiters_.Remove(&w);
  lk.unlock();
  m.Lock();
  return DeadlineExceededError("condition variable not notified before the deadline");
}

void ConditionVariable::NotifyOne() {
  detail::WakeBatch wake;
  std::lock_guard lk(mu_);
  while (detail::Waiter* w = waiters_.PopFront()) {
    if (wake.Add(w)) return;
  }
}

void ConditionVariable::NotifyAll() {
  detail::WakeBatch wake;
  std::lock_guard lk(mu_);
  wake.AddAll(waiters_);
}

// ------------------------------------------------------------------ Semaphore

void Semaphore::Acquire() {
  std::unique_lock lk(mu_);
  if (count_ > 0) {
    count_--;
    return;
  }
  detail::Waiter w;
  waiters_.PushBack(&w);
  detail::Block(w, lk, nullptr);  // woken == a permit handed to us
}

bool Semaphore::TryAcquire() {
  std::lock_guard lk(mu_);
  if (count_ == 0) return false;
  count_--;
  return true;
}

Status Semaphore::AcquireUntil(Clock::time_point tp) {
  std::unique_lock lk(mu_);
  if (count_ > 0) {
    count_--;
    return Status::Ok();
  }
  detail::Waiter w;
  waiters_.PushBack(&w);
  if (detail::Block(w, lk, &tp)) return Status::Ok();
  waiters_.Remove(&w);
  return DeadlineExceededError("semaphore not acquired before the deadline");
}

void Semaphore::Release(size_t n) {
  detail::WakeBatch wake;
  std::lock_guard lk(mu_);
  while (n > 0) {
    detail::Waiter* w = waiters_.PopFront();
    if (!w) break;
    if (wake.Add(w)) n--;
  }
  count_ += n;
}

size_t Semaphore::count() const {
  std::lock_guard lk(mu_);
  return count_;
}

// ------------------------------------------------------------------ WaitGroup

void WaitGroup::Add(int64_t n) {
  detail::WakeBatch wake;  // the last Done() may let a waiter destroy *this
  std::lock_guard lk(mu_);
  count_ += n;
  if (count_ < 0) {
    SPDLOG_ERROR("WaitGroup count went negative ({}): more Done() than Add()", count_);
    count_ = 0;
  }
  if (count_ == 0) wake.AddAll(waiters_);
}

Status WaitGroup::Wait() {
  std::unique_lock lk(mu_);
  if (count_ == 0) return Status::Ok();
  detail::Waiter w;
  waiters_.PushBack(&w);
  detail::Block(w, lk, nullptr);
  return Status::Ok();
}

Status WaitGroup::WaitUntil(Clock::time_point tp) {
  std::unique_lock lk(mu_);
  if (count_ == 0) return Status::Ok();
  detail::Waiter w;
  waiters_.PushBack(&w);
  if (detail::Block(w, lk, &tp)) return Status::Ok();
  waiters_.Remove(&w);
  if (count_ == 0) return Status::Ok();
  return DeadlineExceededError("wait group not done before the deadline");
}

int64_t WaitGroup::count() const {
  std::lock_guard lk(mu_);
  return count_;
}

}  // namespace hrpc::coro
