// Pool: NUMA-bound, hugepage-backed arenas carved into size-class blocks, with
// per-thread caches, handing out refcounted Buffers.
//
// Memory. Each arena is one mapping of `arena_bytes`, bound to `numa_node`
// (mbind) when it is >= 0, backed by 2 MiB hugetlb pages when the kernel has
// them, else transparent huge pages (madvise), else 4 KiB pages; page_mode()
// says which the first arena got and each arena logs it, with the reason it
// got no hugetlb pages. A hugetlb arena is populated when it is mapped, so a
// page the kernel reserved but then refuses (a cgroup's hugetlb limit, none
// left on the bound node) makes the arena fall back instead of raising SIGBUS
// at its first touch. All arenas of a pool
// live in one virtual reservation of max_arenas * arena_bytes made at Create,
// so the arena of any pointer is (p - base) / arena_bytes: KeyFor is O(1).
// The pool never maps more than its arenas: with grow=false it stays at one
// arena unless AddArena() is called; with grow=true it adds whole arenas, up
// to max_arenas, when a class runs dry.
//
// Classes. Small classes 64 B .. 2 KiB and page classes 4 KiB .. max_class_bytes,
// all powers of two. Arenas are carved on demand into chunks of
// max(256 KiB, class) owned by one class, so one arena serves every class; a
// chunk stays with its class for the pool's lifetime. Blocks of classes
// >= kPageClassMin are aligned to min(class, 256 KiB) (so at least 4 KiB:
// valid for O_DIRECT and NVMe PRP lists). Block metadata is out of band.
//
// Threads. Pool is thread-safe. Each thread has a small cache of free blocks
// per class per pool; Allocate and the last Buffer release touch only that
// cache (no lock, no atomic RMW). Caches refill from and flush to a shared
// per-class free list in batches. A thread's caches are flushed when it exits;
// a pool may be destroyed while other threads still have (now unused) caches.
//
// Failure modes. Allocate returns RESOURCE_EXHAUSTED when the class is empty
// and the pool may not grow (retry after frees); INVALID_ARGUMENT for 0 bytes
// or more than max_class_bytes. Free blocks parked in another thread's cache
// (at most thread_cache_bytes per class per thread) are not visible to this
// thread until that cache flushes: a RESOURCE_EXHAUSTED makes every thread
// flush its cache of this pool at its next free, so a retry can succeed; a
// thread that never frees again keeps its cache until it exits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/mempool/buffer.h"
#include "hrpc/mempool/registrar.h"

namespace hrpc::mempool {

inline constexpr size_t kKiB = size_t{1} << 10;
inline constexpr size_t kMiB = size_t{1} << 20;

enum class PageMode : uint8_t { kHugeTlb, kTransparentHuge, kSmallPages };
std::string_view PageModeName(PageMode mode) noexcept;

struct PoolOptions {
  // Size of one arena: a multiple of 2 MiB, >= max_class_bytes.
  size_t arena_bytes = 64 * kMiB;
  int numa_node = -1;  // -1: no binding
  // Try this mode first, then fall back (kHugeTlb -> kTransparentHuge ->
  // kSmallPages). Set lower to force a fallback.
  PageMode best_page_mode = PageMode::kHugeTlb;
  // Largest class: a power of two in [4 KiB, arena_bytes].
  size_t max_class_bytes = 16 * kMiB;
  size_t max_arenas = 8;  // 1..255; also sizes the virtual reservation
  bool grow = false;      // add arenas up to max_arenas when a class is exhausted
  // Touch every page of a new arena up front (no page faults on the data path).
  // Hugetlb arenas are populated whatever this says (see above).
  bool prefault = true;
  // Thread cache: per class per thread, hold at most
  // clamp(thread_cache_bytes / class, 1, thread_cache_max_blocks) free blocks;
  // refill/flush move half of that at a time.
  size_t thread_cache_bytes = 4 * kMiB;
  uint32_t thread_cache_max_blocks = 256;
};

class Pool final {
 public:
  static constexpr size_t kSmallClassMin = 64;
  static constexpr size_t kPageClassMin = 4096;
  static constexpr size_t kChunkBytes = 256 * kKiB;
  static constexpr size_t kHugePageBytes = 2 * kMiB;
  static_assert(kPageClassMin % kSmallClassMin == 0);
  static_assert(kChunkBytes % kPageClassMin == 0 && kHugePageBytes % kChunkBytes == 0);

  // Maps the first arena. INVALID_ARGUMENT for inconsistent options;
  // RESOURCE_EXHAUSTED/INTERNAL when the kernel refuses the mapping.
  static Result<std::unique_ptr<Pool>> Create(PoolOptions options);

  Pool(Pool&&) noexcept;
  Pool& operator=(Pool&&) noexcept;
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // Unregisters every arena from every attached registrar and unmaps. All
  // Buffers must have been dropped.
  ~Pool();

  // A block of the smallest class >= bytes, as a Buffer of exactly `bytes`.
  Result<Buffer> Allocate(size_t bytes);

  // Registers every existing arena with `r` (and every later one). On error
  // nothing stays registered. RESOURCE_EXHAUSTED when kMaxRegistrars are attached.
  Result<RegistrarSlot> AttachRegistrar(Registrar* r);
  // Unregisters every arena from the registrar in `slot` and frees the slot.
  void DetachRegistrar(RegistrarSlot slot);
  // Keys of the arena containing p. O(1). NOT_FOUND if p is in no arena of
  // this pool; FAILED_PRECONDITION if no registrar is attached at `slot`.
  Result<RegionKey> KeyFor(RegistrarSlot slot, const void* p) const;

  // Maps one more arena (and registers it). RESOURCE_EXHAUSTED at max_arenas.
  Status AddArena();

  PageMode page_mode() const;  // of the first arena
  int numa_node() const;
  size_t num_arenas() const;
  // Registrars attached now: every arena is registered exactly this many times.
  size_t num_registrars() const;
  const PoolOptions& options() const;
  // Block sizes of all classes, ascending.
  std::vector<size_t> ClassSizes() const;

  struct ClassStats {
    size_t block_bytes;
    size_t in_use;      // blocks held by Buffers
    size_t free;        // blocks carved and free (shared list + thread caches)
    size_t high_water;  // peak blocks outside the shared free list (in use or
                        // parked in thread caches): an upper bound on peak in_use
    size_t carved;      // blocks carved for this class so far (in_use + free)
    size_t failures;    // Allocate()s refused with RESOURCE_EXHAUSTED (class empty,
                        // no arena room to carve)
  };
  // A consistent-enough snapshot (exact when no other thread is allocating).
  std::vector<ClassStats> Stats() const;

 private:
  explicit Pool(std::unique_ptr<detail::PoolCore> core) noexcept;
  std::unique_ptr<detail::PoolCore> core_;
};

}  // namespace hrpc::mempool
