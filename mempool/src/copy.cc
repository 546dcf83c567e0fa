#include "hrpc/mempool/copy.h"

#include <atomic>
#include <cstring>

namespace hrpc::mempool {
namespace {
// Per-thread count (plain: only its thread touches it) and a process-wide
// relaxed total for reports.
thread_local uint64_t tls_copied = 0;
std::atomic<uint64_t> g_copied_total{0};
}  // namespace

void CountedCopy(void* dst, const void* src, size_t n) noexcept {
  if (n == 0) return;
  std::memcpy(dst, src, n);
  tls_copied += n;
  g_copied_total.fetch_add(n, std::memory_order_relaxed);
}

uint64_t CopiedBytesThisThread() noexcept { return tls_copied; }
void ResetCopiedBytesThisThread() noexcept { tls_copied = 0; }
uint64_t CopiedBytesTotal() noexcept { return g_copied_total.load(std::memory_order_relaxed); }

}  // namespace hrpc::mempool
