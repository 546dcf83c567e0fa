// Scheduler: fcontext switching, ready queue, MPSC remote queue + eventfd,
// timers, pollers and the spin-then-sleep idle loop.
#include "hrpc/coroutine/scheduler.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "fiber.h"
#include "hrpc/base/counter.h"
#include "hrpc/coroutine/cycle_clock.h"

namespace hrpc::coro {

using detail::Fiber;
using detail::FiberState;
using detail::RemoteNode;
namespace bctx = boost::context::detail;

namespace {
// initial-exec: the module is built PIC, and the default general-dynamic model
// would cost a __tls_get_addr call on every switch.
__attribute__((tls_model("initial-exec"))) thread_local Scheduler::Impl* tls_sched = nullptr;
__attribute__((tls_model("initial-exec"))) thread_local Fiber* tls_fiber = nullptr;

inline void CpuRelax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

class Scheduler::Impl {
 public:
  explicit Impl(SchedulerOptions o) : opts(std::move(o)) {}
  ~Impl();

  Status Init();
  void Spawn(std::function<void()> fn, std::string_view name);
  void Post(std::function<void()> fn, std::string_view name);
  void Run();
  void Stop() {
    posting.fetch_add(1, std::memory_order_seq_cst);
    stop.store(true, std::memory_order_seq_cst);
    Wake();
    posting.fetch_sub(1, std::memory_order_release);
  }
  void Wake() {
    if (sleeping.exchange(false, std::memory_order_seq_cst)) {
      uint64_t one = 1;
      ssize_t r = ::write(evfd, &one, sizeof one);
      (void)r;  // EAGAIN only if the counter is saturated: it is readable anyway
      eventfd_writes.fetch_add(1, std::memory_order_relaxed);
    }
  }
  void PushRemote(RemoteNode* n) {
    posting.fetch_add(1, std::memory_order_seq_cst);
    RemoteNode* head = remote_head.load(std::memory_order_relaxed);
    do {
      n->next = head;
    } while (!remote_head.compare_exchange_weak(head, n, std::memory_order_seq_cst,
                                                std::memory_order_relaxed));
    Wake();
    posting.fetch_sub(1, std::memory_order_release);  // the last touch of *this
  }
  // Any thread, outside a push.
  void WakeFromOutside() {
    posting.fetch_add(1, std::memory_order_seq_cst);
    Wake();
    posting.fetch_sub(1, std::memory_order_release);
  }
  void PushReady(Fiber* f) noexcept {
    f->state = FiberState::kReady;
    f->next = nullptr;
    if (ready_tail) {
      ready_tail->next = f;
    } else {
      ready_head = f;
    }
    ready_tail = f;
    ready_len.Add();
  }
  Fiber* PopReady() noexcept {
    Fiber* f = ready_head;
    if (f) {
      ready_head = f->next;
      if (!ready_head) ready_tail = nullptr;
      f->next = nullptr;
      ready_len.Sub();
    }
    return f;
  }

  TimerId AddTimer(Clock::time_point when, std::function<void()> fn);
  bool CancelTimer(TimerId id);

  // Fiber side.
  void SwitchOut(Fiber* f) noexcept;
  static void Entry(bctx::transfer_t t) noexcept;

  SchedulerOptions opts;
  Scheduler* owner = nullptr;
  int epfd = -1;
  int evfd = -1;
  bool no_pwait2 = false;  // epoll_pwait2 failed here once: epoll_wait from then on (Sleep)
  Fiber* ready_head = nullptr;
  Fiber* ready_tail = nullptr;
  std::atomic<RemoteNode*> remote_head{nullptr};
  std::atomic<bool> sleeping{false};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> eventfd_writes{0};
  // Threads inside PushRemote(), WakeFromOutside() or Stop(). Once a node is pushed, the
  // worker may run it before the pushing thread returns, and what it runs may
  // end in this scheduler's destruction (a post answers the last call of a
  // channel that is then destroyed): ~Impl waits for them.
  std::atomic<uint32_t> posting{0};
  bctx::fcontext_t main_ctx = nullptr;
  std::vector<Fiber*> all;          // every allocated fiber (alive or pooled)
  std::vector<Fiber*> free_fibers;  // finished, stack kept for reuse
  std::vector<Poller*> pollers;
  // Counters: written on the scheduler's thread, read anywhere (stats(), load()).
  OwnerCounter spawned, finished, context_switches, sleeps, stacks_mapped, ready_len;
  // Load accounting in CycleClock ticks: when Run() started, idle ticks of
  // finished idle periods, and the start of the current one (0: busy).
  std::atomic<uint64_t> run_start_tick{0};
  OwnerCounter idle_ticks;
  std::atomic<uint64_t> idle_since_tick{0};
#if HRPC_CORO_ASAN
  void* main_fake_stack = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif

 private:
  struct TimerEntry {
    Clock::time_point when;
    TimerId id;
    std::function<void()> fn;
  };
  struct TimerSlot {
    uint32_t gen = 0;
    bool armed = false;
  };
  static bool Later(const TimerEntry& a, const TimerEntry& b) noexcept {
    return a.when > b.when || (a.when == b.when && a.id > b.id);
  }
  bool Live(TimerId id) const noexcept {
    uint32_t slot = static_cast<uint32_t>(id);
    return slot < slots_.size() && slots_[slot].armed && slots_[slot].gen == (id >> 32);
  }
  void Disarm(TimerId id) noexcept {
    uint32_t slot = static_cast<uint32_t>(id);
    slots_[slot].armed = false;
    slots_[slot].gen++;
    free_slots_.push_back(slot);
  }
  void FireTimers(const CycleClock& sc);
  void DrainRemote();
  void RunFiber(Fiber* f) noexcept;
  void Recycle(Fiber* f) noexcept;
  Fiber* NewFiber();
  int RunBatch();
  int PollAll();
  void Sleep();

  std::vector<TimerEntry> heap_;
  std::vector<TimerSlot> slots_;
  std::vector<uint32_t> free_slots_;
  size_t stale_in_heap_ = 0;  // cancelled entries still in heap_
  // CycleClock tick before which the earliest timer cannot be due (0: look now),
  // so the run loop does not read steady_clock on every iteration.
  uint64_t timer_check_tick_ = 0;
};

// ------------------------------------------------------------------ lifecycle

Status Scheduler::Impl::Init() {
  if (opts.stack_bytes < 4096) opts.stack_bytes = 4096;
  evfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (evfd < 0) return ErrnoStatus(errno, "eventfd");
  epfd = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) return ErrnoStatus(errno, "epoll_create1");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // nullptr marks the eventfd
  if (::epoll_ctl(epfd, EPOLL_CTL_ADD, evfd, &ev) != 0) return ErrnoStatus(errno, "epoll_ctl(eventfd)");
  detail::InstallOverflowHandler();
  return Status::Ok();
}

Scheduler::Impl::~Impl() {
  // A thread that got past its push is out within a few instructions (at most
  // an eventfd write); one that has not reached it yet is the caller's bug
  // (posting to a scheduler that is being destroyed).
  while (posting.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  // What the coroutines, timers and posted functions hold goes first, while
  // every stack is still mapped: a Promise released here wakes its waiters,
  // which live on those stacks (the wake-ups only queue: nothing runs again).
  for (Fiber* f : all) f->fn = nullptr;
  heap_.clear();
  for (RemoteNode* n = remote_head.exchange(nullptr); n != nullptr; n = remote_head.exchange(nullptr)) {
    while (n) {  // deleting a posted function may post again: until none is left
      RemoteNode* next = n->next;
      if (!n->fiber) delete n;
      n = next;
    }
  }
  for (Fiber* f : all) {
    detail::FreeStack(&f->stack);
    delete f;
  }
  if (epfd >= 0) ::close(epfd);
  if (evfd >= 0) ::close(evfd);
}

Fiber* Scheduler::Impl::NewFiber() {
  if (!free_fibers.empty()) {
    Fiber* f = free_fibers.back();
    free_fibers.pop_back();
    return f;
  }
  auto* f = new Fiber;
  if (!detail::AllocateStack(opts.stack_bytes, opts.guard_pages, &f->stack)) {
    int err = errno;
    delete f;
    // Spawn has no error channel: running out of address space or VMAs is fatal.
    std::fprintf(stderr, "hrpc::coro: cannot map a %zu-byte coroutine stack: %s\n", opts.stack_bytes,
                 std::strerror(err));
    std::abort();
  }
  f->sched = this;
  f->resume_node.fiber = f;
  f->all_index = all.size();
  all.push_back(f);
  stacks_mapped.Add();
  return f;
}

void Scheduler::Impl::Recycle(Fiber* f) noexcept {
  finished.Add();
  f->name.clear();
  f->on_suspend = nullptr;
  if (free_fibers.size() < opts.max_pooled_stacks) {
    free_fibers.push_back(f);
    return;
  }
  Fiber* last = all.back();
  all[f->all_index] = last;
  last->all_index = f->all_index;
  all.pop_back();
  detail::FreeStack(&f->stack);
  delete f;
}

void Scheduler::Impl::Spawn(std::function<void()> fn, std::string_view name) {
  Fiber* f = NewFiber();
  f->fn = std::move(fn);
  f->name.assign(name.data(), name.size());
  f->ctx = bctx::make_fcontext(f->stack.lo + f->stack.usable, f->stack.usable, &Impl::Entry);
  spawned.Add();
  PushReady(f);
}

void Scheduler::Impl::Post(std::function<void()> fn, std::string_view name) {
  auto* n = new RemoteNode;
  n->fn = std::move(fn);
  n->name.assign(name.data(), name.size());
  PushRemote(n);
}

// ------------------------------------------------------------------ switching

void Scheduler::Impl::Entry(bctx::transfer_t t) noexcept {
  auto* f = static_cast<Fiber*>(t.data);
  Impl* s = f->sched;
#if HRPC_CORO_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s->main_bottom, &s->main_size);
#endif
  s->main_ctx = t.fctx;
  try {
    f->fn();
  } catch (const std::exception& e) {
    detail::LogCoroutineException(f->name, e.what());
  } catch (...) {
    detail::LogCoroutineException(f->name, "unknown exception");
  }
  try {
    f->fn = nullptr;  // captures die on the fiber's own stack
  } catch (...) {
    detail::LogCoroutineException(f->name, "exception from a capture's destructor");
  }
  f->state = FiberState::kDone;
  s = f->sched;
#if HRPC_CORO_ASAN
  __sanitizer_start_switch_fiber(nullptr, s->main_bottom, s->main_size);  // nullptr: this fiber dies
#endif
  bctx::jump_fcontext(s->main_ctx, nullptr);
  __builtin_unreachable();
}

void Scheduler::Impl::RunFiber(Fiber* f) noexcept {
  f->state = FiberState::kRunning;
  tls_fiber = f;
#if HRPC_CORO_ASAN
  __sanitizer_start_switch_fiber(&main_fake_stack, f->stack.lo, f->stack.usable);
#endif
  bctx::transfer_t t = bctx::jump_fcontext(f->ctx, f);
#if HRPC_CORO_ASAN
  __sanitizer_finish_switch_fiber(main_fake_stack, nullptr, nullptr);
#endif
  tls_fiber = nullptr;
  context_switches.Add();
  if (f->state == FiberState::kDone) {
    Recycle(f);
  } else {
    f->ctx = t.fctx;
  }
}

void Scheduler::Impl::SwitchOut(Fiber* f) noexcept {
  if (f->on_suspend != nullptr) [[unlikely]] {
    auto* fn = std::exchange(f->on_suspend, nullptr);
    fn(f->on_suspend_arg);
  }
#if HRPC_CORO_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, main_bottom, main_size);
#endif
  bctx::transfer_t t = bctx::jump_fcontext(main_ctx, nullptr);
#if HRPC_CORO_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &main_bottom, &main_size);
#endif
  main_ctx = t.fctx;
}

// ------------------------------------------------------------------ loop

void Scheduler::Impl::DrainRemote() {
  RemoteNode* n = remote_head.exchange(nullptr, std::memory_order_acquire);
  RemoteNode* rev = nullptr;  // the stack is LIFO: reverse to keep posting order
  while (n) {
    RemoteNode* next = n->next;
    n->next = rev;
    rev = n;
    n = next;
  }
  while (rev) {
    RemoteNode* next = rev->next;
    if (rev->fiber) {
      PushReady(rev->fiber);
    } else {
      Spawn(std::move(rev->fn), rev->name);
      delete rev;
    }
    rev = next;
  }
}

int Scheduler::Impl::RunBatch() {
  // Up to 64 runs between looks at the remote queue, timers and pollers.
  int ran = 0;
  while (ran < 64 && !stop.load(std::memory_order_relaxed)) {
    Fiber* f = PopReady();
    if (!f) break;
    RunFiber(f);
    ran++;
  }
  return ran;
}

int Scheduler::Impl::PollAll() {
  int n = 0;
  for (size_t i = 0; i < pollers.size(); ++i) n += pollers[i]->Poll();
  return n;
}

void Scheduler::Impl::Sleep() {
  int timeout_ms = -1;
  timespec ts{};
  timespec* tsp = nullptr;
  if (!heap_.empty()) {
    auto d = heap_.front().when - SteadyNow();
    if (d < Clock::duration::zero()) d = Clock::duration::zero();
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    ts.tv_sec = ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    tsp = &ts;
    timeout_ms = static_cast<int>(std::min<int64_t>((ns + 999999) / 1000000, INT_MAX));
  }
  sleeping.store(true, std::memory_order_seq_cst);
  if (remote_head.load(std::memory_order_seq_cst) != nullptr || stop.load(std::memory_order_seq_cst)) {
    sleeping.store(false, std::memory_order_relaxed);
    return;
  }
  sleeps.Add();
  epoll_event evs[16];
  // epoll_pwait2 (µs timeouts) where the kernel and the seccomp profile allow
  // it: an old kernel says ENOSYS, a container profile that does not know it
  // often EPERM. Either way epoll_wait from then on (ms timeouts), or an idle
  // worker would spin on the failing call.
  int n = -1;
  if (!no_pwait2) {
    n = ::epoll_pwait2(epfd, evs, 16, tsp, nullptr);
    no_pwait2 = n < 0 && errno != EINTR;
  }
  if (no_pwait2) n = ::epoll_wait(epfd, evs, 16, timeout_ms);
  sleeping.store(false, std::memory_order_seq_cst);
  for (int i = 0; i < n; ++i) {
    if (evs[i].data.ptr == nullptr) {
      uint64_t v;
      ssize_t r = ::read(evfd, &v, sizeof v);
      (void)r;
    }
  }
}

void Scheduler::Impl::Run() {
  Impl* prev_sched = tls_sched;
  tls_sched = this;
  detail::EnsureAltStack();
  const CycleClock& spin_clock = CycleClock::Get();
  bool idle = false;
  const uint64_t spin_ticks = spin_clock.TicksFor(opts.spin_budget);
  const uint64_t timer_lookahead = spin_clock.TicksFor(std::chrono::milliseconds(1));
  uint64_t idle_since = 0;
  run_start_tick.store(spin_clock.Now(), std::memory_order_relaxed);
  // Ends the current idle period (load accounting: one clock read per period).
  auto end_idle = [&] {
    const uint64_t now = spin_clock.Now();
    idle_since_tick.store(0, std::memory_order_relaxed);
    if (now > idle_since) idle_ticks.Add(now - idle_since);
  };
  while (!stop.load(std::memory_order_relaxed)) {
    if (remote_head.load(std::memory_order_relaxed) != nullptr) DrainRemote();
    if (!heap_.empty()) {
      // Due by the cheap clock — or the check is further ahead than FireTimers
      // ever sets it (1 ms): the TSC went backwards (another CPU's, a resumed VM).
      const uint64_t now_tick = spin_clock.Now();
      if (now_tick >= timer_check_tick_ || timer_check_tick_ - now_tick > timer_lookahead) FireTimers(spin_clock);
    }
    int work = RunBatch();
    if (!pollers.empty()) work += PollAll();
    if (work > 0 || ready_head != nullptr) {
      if (idle) end_idle();
      idle = false;
      continue;
    }
    if (!idle) {
      idle = true;
      idle_since = spin_clock.Now();
      idle_since_tick.store(idle_since, std::memory_order_relaxed);
      continue;
    }
    if (spin_clock.Now() - idle_since < spin_ticks) {
      // With pollers the next round of polls is the pause. PAUSE is not free
      // everywhere: QEMU's TCG leaves its execution loop on every one.
      if (pollers.empty()) CpuRelax();
      continue;
    }
    Sleep();
    end_idle();
    idle = false;
  }
  if (idle) end_idle();
  stop.store(false, std::memory_order_relaxed);
  tls_sched = prev_sched;
}

// ------------------------------------------------------------------ timers

Scheduler::TimerId Scheduler::Impl::AddTimer(Clock::time_point when, std::function<void()> fn) {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  slots_[slot].armed = true;
  TimerId id = (static_cast<uint64_t>(slots_[slot].gen) << 32) | slot;
  heap_.push_back(TimerEntry{when, id, std::move(fn)});
  std::push_heap(heap_.begin(), heap_.end(), &Later);
  if (heap_.front().id == id) timer_check_tick_ = 0;  // a new earliest timer
  return id;
}

bool Scheduler::Impl::CancelTimer(TimerId id) {
  if (!Live(id)) return false;
  Disarm(id);
  stale_in_heap_++;
  if (stale_in_heap_ > 64 && stale_in_heap_ * 2 > heap_.size()) {
    std::erase_if(heap_, [this](const TimerEntry& e) { return !Live(e.id); });
    std::make_heap(heap_.begin(), heap_.end(), &Later);
    stale_in_heap_ = 0;
  }
  return true;
}

void Scheduler::Impl::FireTimers(const CycleClock& sc) {
  Clock::time_point now = sc.SteadyNow();
  timer_check_tick_ = 0;
  while (!heap_.empty() && heap_.front().when <= now) {
    std::pop_heap(heap_.begin(), heap_.end(), &Later);
    TimerEntry e = std::move(heap_.back());
    heap_.pop_back();
    if (!Live(e.id)) {
      if (stale_in_heap_ > 0) stale_in_heap_--;
      continue;
    }
    Disarm(e.id);
    e.fn();  // may add timers (AddTimer resets timer_check_tick_)
  }
  if (!heap_.empty()) {
    // Look again when the earliest is due by the cheap clock, and at least every
    // millisecond so its rate error (measured once) never delays a timer much.
    const Clock::duration d = std::min<Clock::duration>(heap_.front().when - now, std::chrono::milliseconds(1));
    if (d > Clock::duration::zero()) timer_check_tick_ = sc.Now() + sc.TicksFor(d);
  }
}

// ------------------------------------------------------------------ public API

Result<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  HRPC_TRY(impl->Init());
  return std::unique_ptr<Scheduler>(new Scheduler(std::move(impl)));
}

Scheduler::Scheduler(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->owner = this; }
Scheduler::~Scheduler() = default;

Scheduler* Scheduler::Current() noexcept {
  return tls_sched ? tls_sched->owner : nullptr;
}

void Scheduler::Spawn(std::function<void()> fn, std::string_view name) { impl_->Spawn(std::move(fn), name); }
void Scheduler::Post(std::function<void()> fn, std::string_view name) { impl_->Post(std::move(fn), name); }
void Scheduler::Run() { impl_->Run(); }
void Scheduler::Stop() { impl_->Stop(); }
void Scheduler::Wake() { impl_->WakeFromOutside(); }

void Scheduler::AddPoller(Poller* p) {
  impl_->pollers.push_back(p);
  int fd = p->fd();
  if (fd >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = p;
    if (::epoll_ctl(impl_->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      SPDLOG_WARN("scheduler {}: epoll_ctl(ADD, poller fd {}): {}", impl_->opts.name, fd, std::strerror(errno));
    }
  }
}

void Scheduler::RemovePoller(Poller* p) {
  auto& v = impl_->pollers;
  v.erase(std::remove(v.begin(), v.end(), p), v.end());
  int fd = p->fd();
  if (fd >= 0) ::epoll_ctl(impl_->epfd, EPOLL_CTL_DEL, fd, nullptr);
}

Scheduler::TimerId Scheduler::AddTimer(std::chrono::steady_clock::time_point when, std::function<void()> fn) {
  Impl* s = impl_.get();
  return s->AddTimer(when, [s, fn = std::move(fn)]() mutable { s->Spawn(std::move(fn), "timer"); });
}
bool Scheduler::CancelTimer(TimerId id) { return impl_->CancelTimer(id); }

std::string_view Scheduler::name() const noexcept { return impl_->opts.name; }
const SchedulerOptions& Scheduler::options() const noexcept { return impl_->opts; }

Scheduler::Stats Scheduler::stats() const noexcept {
  Stats s;
  s.spawned = impl_->spawned.Get();
  s.finished = impl_->finished.Get();
  s.context_switches = impl_->context_switches.Get();
  s.sleeps = impl_->sleeps.Get();
  s.stacks_mapped = impl_->stacks_mapped.Get();
  s.eventfd_writes = impl_->eventfd_writes.load(std::memory_order_relaxed);
  s.alive = static_cast<size_t>(s.spawned - s.finished);
  s.pooled_stacks = impl_->free_fibers.size();
  return s;
}

Scheduler::Load Scheduler::load() const noexcept {
  const Impl& im = *impl_;
  Load l;
  const uint64_t start = im.run_start_tick.load(std::memory_order_relaxed);
  const uint64_t finished = im.finished.Get();
  const uint64_t spawned = im.spawned.Get();
  l.alive = spawned >= finished ? static_cast<size_t>(spawned - finished) : 0;
  l.run_queue = static_cast<size_t>(im.ready_len.Get());
  l.context_switches = im.context_switches.Get();
  l.sleeps = im.sleeps.Get();
  if (start == 0) return l;
  const CycleClock& clock = CycleClock::Get();
  const uint64_t now = clock.Now();
  // Ticks of different CPUs may disagree a little: clamp instead of wrapping.
  const uint64_t total = now > start ? now - start : 0;
  uint64_t idle = im.idle_ticks.Get();
  const uint64_t since = im.idle_since_tick.load(std::memory_order_relaxed);
  if (since != 0 && now > since) idle += now - since;
  idle = std::min(idle, total);
  const double per_ns = clock.ticks_per_ns();
  l.idle = std::chrono::nanoseconds(static_cast<int64_t>(static_cast<double>(idle) / per_ns));
  l.busy = std::chrono::nanoseconds(static_cast<int64_t>(static_cast<double>(total - idle) / per_ns));
  return l;
}

// ------------------------------------------------------------------ detail

namespace detail {

Fiber* CurrentFiberRaw() noexcept { return tls_fiber; }
Fiber* CurrentFiber() noexcept { return tls_fiber; }

void SuspendCurrent() noexcept {
  Fiber* f = tls_fiber;
  f->sched->SwitchOut(f);
}

void ResumeFiber(Fiber* f) noexcept {
  Scheduler::Impl* s = f->sched;
  if (tls_sched == s) {
    s->PushReady(f);
  } else {
    s->PushRemote(&f->resume_node);
  }
}

Scheduler::TimerId AddInlineTimer(Scheduler::Impl* s, Clock::time_point when, std::function<void()> fn) {
  return s->AddTimer(when, std::move(fn));
}
bool CancelInlineTimer(Scheduler::Impl* s, Scheduler::TimerId id) { return s->CancelTimer(id); }

void LogCoroutineException(std::string_view name, std::string_view what) noexcept {
  try {
    SPDLOG_ERROR("exception escaped coroutine '{}': {}", name, what);
  } catch (...) {
  }
}

}  // namespace detail

// ------------------------------------------------------------------ this_coro

namespace this_coro {

void Yield() {
  Fiber* f = tls_fiber;
  if (!f) {
    std::this_thread::yield();
    return;
  }
  f->sched->PushReady(f);
  f->sched->SwitchOut(f);
}

void SleepUntil(std::chrono::steady_clock::time_point tp) {
  Fiber* f = tls_fiber;
  if (!f) {
    std::this_thread::sleep_until(tp);
    return;
  }
  Scheduler::Impl* s = f->sched;
  s->AddTimer(tp, [s, f] { s->PushReady(f); });
  f->state = FiberState::kSuspended;
  s->SwitchOut(f);
}

void SleepFor(std::chrono::nanoseconds d) { SleepUntil(DeadlineAfter(SteadyNow(), d)); }

bool InCoroutine() noexcept { return tls_fiber != nullptr; }

void OnNextSuspend(void (*fn)(void*) noexcept, void* arg) noexcept {
  Fiber* f = tls_fiber;
  if (f == nullptr) return;
  f->on_suspend = fn;
  f->on_suspend_arg = arg;
}

bool CancelOnNextSuspend() noexcept {
  Fiber* f = tls_fiber;
  return f != nullptr && std::exchange(f->on_suspend, nullptr) != nullptr;
}

std::string_view Name() noexcept { return tls_fiber ? std::string_view(tls_fiber->name) : std::string_view(); }

}  // namespace this_coro

}  // namespace hrpc::coro
