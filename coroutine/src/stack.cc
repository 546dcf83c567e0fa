// Coroutine stacks (mmap + PROT_NONE guard page) and the guard-page SIGSEGV
// handler that names the coroutine that overflowed.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "fiber.h"

#if HRPC_CORO_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace hrpc::coro::detail {

namespace {

size_t PageSize() noexcept {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

// The SIGSEGV disposition is process state by nature; we install ours once and
// remember the previous one to chain to for faults that are not ours.
struct sigaction g_prev_segv;
std::once_flag g_install_once;

void WriteStr(const char* s) noexcept {
  size_t n = std::strlen(s);
  while (n > 0) {
    ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

void OnSegv(int sig, siginfo_t* info, void* uctx) {
  Fiber* f = CurrentFiberRaw();
  auto* addr = static_cast<char*>(info->si_addr);
  if (f != nullptr && f->stack.guard > 0 && addr >= f->stack.map && addr < f->stack.map + f->stack.guard) {
    WriteStr("coroutine stack overflow: coroutine '");
    WriteStr(f->name.c_str());
    WriteStr("' ran into the guard page of its stack (raise SchedulerOptions::stack_bytes)\n");
    // abort() must not come back here; SIGABRT's disposition is untouched.
    std::abort();
  }
  // Not ours: hand over to whoever was installed before (e.g. ASan), else die
  // with the default action by re-faulting with SIG_DFL.
  if ((g_prev_segv.sa_flags & SA_SIGINFO) && g_prev_segv.sa_sigaction != nullptr) {
    g_prev_segv.sa_sigaction(sig, info, uctx);
    return;
  }
  if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN && g_prev_segv.sa_handler != nullptr) {
    g_prev_segv.sa_handler(sig);
    return;
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGSEGV, &dfl, nullptr);
}

// Frees this thread's alternate signal stack (if we installed it) at thread exit.
struct AltStack {
  void* mem = nullptr;
  size_t len = 0;
  bool checked = false;
  ~AltStack() {
    if (!mem) return;
    stack_t ss{};
    ss.ss_flags = SS_DISABLE;
    ::sigaltstack(&ss, nullptr);
    ::munmap(mem, len);
  }
};
thread_local AltStack tls_alt;

constexpr size_t kAltStackBytes = 64 * 1024;
constexpr size_t kMinUsableAltStack = 16 * 1024;
static_assert(kAltStackBytes >= kMinUsableAltStack);

}  // namespace

bool AllocateStack(size_t usable, bool guard, Stack* out) noexcept {
  const size_t page = PageSize();
  usable = (usable + page - 1) / page * page;
  const size_t guard_len = guard ? page : 0;
  const size_t len = usable + guard_len;
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                   -1, 0);
  if (p == MAP_FAILED) return false;
  if (guard_len && ::mprotect(p, guard_len, PROT_NONE) != 0) {
    int err = errno;
    ::munmap(p, len);
    errno = err;
    return false;
  }
  out->map = static_cast<char*>(p);
  out->map_len = len;
  out->guard = guard_len;
  out->lo = out->map + guard_len;
  out->usable = usable;
  return true;
}

void FreeStack(Stack* s) noexcept {
#if HRPC_CORO_ASAN
  // A coroutine that never returned (suspended when its scheduler stopped)
  // leaves its frames' redzones poisoned; without this, memory mapped later
  // at the same address (a verbs queue, say) would be reported as a stack
  // buffer overflow.
  if (s->map) __asan_unpoison_memory_region(s->lo, s->usable);
#endif
  if (s->map) ::munmap(s->map, s->map_len);
  *s = Stack{};
}

void InstallOverflowHandler() {
  std::call_once(g_install_once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = &OnSegv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGSEGV, &sa, &g_prev_segv);
  });
}

void EnsureAltStack() {
  if (tls_alt.checked) return;
  tls_alt.checked = true;
  stack_t cur{};
  if (::sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) && cur.ss_size >= kMinUsableAltStack) {
    return;  // someone (e.g. ASan) already gave this thread one
  }
  void* p = ::mmap(nullptr, kAltStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  stack_t ss{};
  ss.ss_sp = p;
  ss.ss_size = kAltStackBytes;
  if (::sigaltstack(&ss, nullptr) != 0) {
    ::munmap(p, kAltStackBytes);
    return;
  }
  tls_alt.mem = p;
  tls_alt.len = kAltStackBytes;
}

}  // namespace hrpc::coro::detail
