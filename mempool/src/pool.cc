// Pool implementation: arenas (arena.* below), size classes, thread caches.
//
// Thread caches. Each (thread, pool) pair has one ThreadCache, owned by the
// pool's CacheRegistry. The thread finds it through two thread_locals:
//  - tls_fast: a trivially destructible {pool id, cache*} pair, the only thing
//    the hot path reads (no TLS guard, no lock);
//  - tls_caches: the thread's list of {pool id, cache*, shared_ptr<registry>},
//    touched only on the slow path; its destructor flushes the thread's caches
//    into every pool that is still alive.
// Pool ids are never reused, so a stale tls_fast entry of a destroyed pool can
// never match a live pool. The registry (shared by pool and threads) has a
// mutex and a `core` pointer the pool clears on destruction: a thread exiting
// concurrently with ~Pool either flushes before the pool tears down or sees
// core == nullptr and drops its entry; the pool deletes the cache objects of
// all threads, which will never touch them again.
#include "hrpc/mempool/pool.h"

#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>

#include <spdlog/spdlog.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

namespace hrpc::mempool {

std::string_view PageModeName(PageMode mode) noexcept {
  switch (mode) {
    case PageMode::kHugeTlb: return "hugetlb-2MiB";
    case PageMode::kTransparentHuge: return "transparent-huge";
    case PageMode::kSmallPages: return "4KiB";
  }
  return "?";
}

namespace detail {

inline constexpr int kMaxClasses = 32;
inline constexpr unsigned kSmallShift = 6;  // class 0 = 64 B
static_assert(size_t{1} << kSmallShift == Pool::kSmallClassMin);

struct ThreadCache;
struct CacheRegistry;

// Free blocks of one class held by one thread. `count` is written only by the
// owning thread (relaxed load/store, plain moves on x86); Stats() reads it.
struct ClassCache {
  std::atomic<uint32_t> count{0};
  uint32_t cap = 0;
  uint32_t batch = 0;
  BlockMeta** items = nullptr;
};

struct ThreadCache {
  uint32_t seen_pressure = 0;  // PoolCore::pressure when this cache last flushed
  std::unique_ptr<BlockMeta*[]> storage;
  std::array<ClassCache, kMaxClasses> classes;
};

struct CacheRegistry {
  std::mutex mu;
  PoolCore* core = nullptr;  // nullptr once the pool is gone
  std::vector<std::unique_ptr<ThreadCache>> caches;
};

namespace {

std::atomic<uint64_t> g_next_pool_id{1};  // ids are never reused

struct TlsFast {
  uint64_t pool_id;
  ThreadCache* cache;
};
thread_local TlsFast tls_fast{0, nullptr};
thread_local bool tls_dead = false;  // tls_caches already destroyed

struct TlsEntry {
  uint64_t pool_id;
  ThreadCache* cache;
  std::shared_ptr<CacheRegistry> registry;
};
struct TlsCaches {
  std::vector<TlsEntry> entries;
  ~TlsCaches();
};
thread_local TlsCaches tls_caches;

}  // namespace

// Shared state of one class: the free list the batch path moves blocks to and
// from, and the metadata arrays of the chunks carved for it.
struct alignas(64) SharedClass {
  std::mutex mu;
  std::vector<BlockMeta*> free;
  size_t carved = 0;      // blocks ever carved
  size_t out = 0;         // carved - free.size(): in use or in thread caches
  size_t high_water = 0;  // max of out
  size_t failures = 0;    // allocations refused: nothing to carve a chunk from
  std::vector<std::unique_ptr<BlockMeta[]>> chunks;
};

struct Arena {
  char* base = nullptr;
  PageMode mode = PageMode::kSmallPages;
  size_t used = 0;  // bump offset of carved chunks (under arena_mu)
  std::array<RegionKey, kMaxRegistrars> keys{};
};

class PoolCore {
 public:
  explicit PoolCore(const PoolOptions& o) : opts(o), id(g_next_pool_id.fetch_add(1)) {}
  ~PoolCore();

  Status Init();
  Status AddArenaLocked();  // arena_mu held
  Status MapArena(size_t idx, Arena& a);
  Status BindArena(char* addr, size_t len) const;
  ThreadCache* CacheSlow();
  std::unique_ptr<ThreadCache> NewCache() const;
  // Moves up to cc.batch blocks from the shared list into cc (carving a chunk
  // if the list is empty). RESOURCE_EXHAUSTED when nothing can be found.
  Status Refill(ClassCache& cc, unsigned cls);
  void Flush(ClassCache& cc, unsigned cls, uint32_t n);
  Status CarveLocked(unsigned cls);  // shared[cls].mu held
  Status CarveChunkLocked(unsigned cls);
  Result<BlockMeta*> TakeOne(unsigned cls);
  void ReturnOne(BlockMeta* m);
  void FlushAll(ThreadCache& tc);

  const PoolOptions opts;
  const uint64_t id;
  // Bumped when a class runs dry; a thread that sees a new value flushes its
  // whole cache on its next free, so blocks parked in busy threads' caches
  // become visible to the starving thread.
  std::atomic<uint32_t> pressure{0};
  unsigned num_classes = 0;
  size_t arena_bytes = 0;
  char* reserve_base = nullptr;
  size_t reserve_bytes = 0;
  std::unique_ptr<Arena[]> arenas;
  std::atomic<size_t> num_arenas{0};
  std::array<std::atomic<Registrar*>, kMaxRegistrars> registrars{};
  mutable std::mutex arena_mu;  // arenas, registrars, carving
  std::unique_ptr<SharedClass[]> shared;
  std::shared_ptr<CacheRegistry> registry = std::make_shared<CacheRegistry>();
};

namespace {

TlsCaches::~TlsCaches() {
  tls_dead = true;
  tls_fast = {0, nullptr};
  for (TlsEntry& e : entries) {
    std::lock_guard lock(e.registry->mu);
    if (e.registry->core == nullptr) continue;  // pool already gone
    e.registry->core->FlushAll(*e.cache);
    auto& v = e.registry->caches;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i].get() == e.cache) {
        v[i] = std::move(v.back());
        v.pop_back();
        break;
      }
    }
  }
}

bool ThpDisabled() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s;
  if (!std::getline(f, s)) return true;
  return s.find("[never]") != std::string::npos;
}

void Prefault(char* p, size_t len, size_t page) {
  if (madvise(p, len, MADV_POPULATE_WRITE) == 0) return;
  for (size_t off = 0; off < len; off += page) {
    reinterpret_cast<volatile char*>(p)[off] = 0;
  }
}

}  // namespace

std::unique_ptr<ThreadCache> PoolCore::NewCache() const {
  auto tc = std::make_unique<ThreadCache>();
  tc->seen_pressure = pressure.load(std::memory_order_relaxed);
  uint32_t caps[kMaxClasses] = {};
  size_t total = 0;
  for (unsigned c = 0; c < num_classes; ++c) {
    size_t block = Pool::kSmallClassMin << c;
    size_t cap = std::clamp<size_t>(opts.thread_cache_bytes / block, 1, opts.thread_cache_max_blocks);
    caps[c] = static_cast<uint32_t>(cap);
    total += cap;
  }
  tc->storage = std::make_unique<BlockMeta*[]>(total);
  size_t off = 0;
  for (unsigned c = 0; c < num_classes; ++c) {
    ClassCache& cc = tc->classes[c];
    cc.cap = caps[c];
    cc.batch = std::max<uint32_t>(1, caps[c] / 2);
    cc.items = tc->storage.get() + off;
    off += caps[c];
  }
  return tc;
}

ThreadCache* PoolCore::CacheSlow() {
  if (tls_dead) return nullptr;  // thread is exiting: use the shared lists
  auto& entries = tls_caches.entries;
  for (TlsEntry& e : entries) {
    if (e.pool_id == id) {
      tls_fast = {id, e.cache};
      return e.cache;
    }
  }
  // Drop entries of destroyed pools before adding one.
  std::erase_if(entries, [](TlsEntry& e) {
    std::lock_guard lock(e.registry->mu);
    return e.registry->core == nullptr;
  });
  std::unique_ptr<ThreadCache> tc = NewCache();
  ThreadCache* raw = tc.get();
  {
    std::lock_guard lock(registry->mu);
    registry->caches.push_back(std::move(tc));
  }
  entries.push_back(TlsEntry{id, raw, registry});
  tls_fast = {id, raw};
  return raw;
}

Status PoolCore::CarveLocked(unsigned cls) {
  Status s = CarveChunkLocked(cls);
  if (!s.ok()) {
    pressure.fetch_add(1, std::memory_order_relaxed);
    ++shared[cls].failures;
  }
  return s;
}

Status PoolCore::CarveChunkLocked(unsigned cls) {
  const size_t block = Pool::kSmallClassMin << cls;
  const size_t chunk = std::max(Pool::kChunkBytes, block);
  std::lock_guard lock(arena_mu);
  size_t n = num_arenas.load(std::memory_order_relaxed);
  Arena* target = nullptr;
  for (size_t i = 0; i < n; ++i) {
    if (arena_bytes - arenas[i].used >= chunk) {
      target = &arenas[i];
      break;
    }
  }
  if (target == nullptr) {
    if (!opts.grow || n >= opts.max_arenas) {
      return ResourceExhaustedError("mempool: no free block of " + std::to_string(block) +
                                    " bytes (" + std::to_string(n) + " arena(s) of " +
                                    std::to_string(arena_bytes) + " bytes carved)");
    }
    HRPC_TRY(AddArenaLocked());
    target = &arenas[n];
  }
  const size_t count = chunk / block;
  auto metas = std::make_unique<BlockMeta[]>(count);
  char* start = target->base + target->used;
  target->used += chunk;
  const auto arena_idx = static_cast<uint8_t>(target - arenas.get());
  SharedClass& sc = shared[cls];
  sc.free.reserve(sc.free.size() + count);
  // Push in reverse so blocks are handed out in address order.
  for (size_t i = count; i-- > 0;) {
    BlockMeta& m = metas[i];
    m.size_class = static_cast<uint8_t>(cls);
    m.arena = arena_idx;
    m.pool = this;
    m.data = start + i * block;
    sc.free.push_back(&m);
  }
  sc.carved += count;
  sc.chunks.push_back(std::move(metas));
  return Status::Ok();
}

Status PoolCore::Refill(ClassCache& cc, unsigned cls) {
  SharedClass& sc = shared[cls];
  std::lock_guard lock(sc.mu);
  if (sc.free.empty()) HRPC_TRY(CarveLocked(cls));
  const size_t n = std::min<size_t>(cc.batch, sc.free.size());
  const uint32_t have = cc.count.load(std::memory_order_relaxed);
  std::memcpy(cc.items + have, sc.free.data() + sc.free.size() - n, n * sizeof(BlockMeta*));
  sc.free.resize(sc.free.size() - n);
  sc.out += n;
  sc.high_water = std::max(sc.high_water, sc.out);
  cc.count.store(have + static_cast<uint32_t>(n), std::memory_order_relaxed);
  return Status::Ok();
}

void PoolCore::Flush(ClassCache& cc, unsigned cls, uint32_t n) {
  // Hand back the oldest (bottom) n blocks; keep the recently freed, cache-warm ones.
  const uint32_t have = cc.count.load(std::memory_order_relaxed);
  n = std::min(n, have);
  SharedClass& sc = shared[cls];
  {
    std::lock_guard lock(sc.mu);
    sc.free.insert(sc.free.end(), cc.items, cc.items + n);
    sc.out -= n;
  }
  std::memmove(cc.items, cc.items + n, (have - n) * sizeof(BlockMeta*));
  cc.count.store(have - n, std::memory_order_relaxed);
}

void PoolCore::FlushAll(ThreadCache& tc) {
  for (unsigned c = 0; c < num_classes; ++c) {
    ClassCache& cc = tc.classes[c];
    if (cc.count.load(std::memory_order_relaxed) != 0) Flush(cc, c, cc.cap);
  }
}

Result<BlockMeta*> PoolCore::TakeOne(unsigned cls) {
  SharedClass& sc = shared[cls];
  std::lock_guard lock(sc.mu);
  if (sc.free.empty()) HRPC_TRY(CarveLocked(cls));
  BlockMeta* m = sc.free.back();
  sc.free.pop_back();
  sc.out += 1;
  sc.high_water = std::max(sc.high_water, sc.out);
  return m;
}

void PoolCore::ReturnOne(BlockMeta* m) {
  SharedClass& sc = shared[m->size_class];
  std::lock_guard lock(sc.mu);
  sc.free.push_back(m);
  sc.out -= 1;
}

Status PoolCore::BindArena(char* addr, size_t len) const {
  if (opts.numa_node < 0) return Status::Ok();
  std::vector<unsigned long> mask(static_cast<size_t>(opts.numa_node) / (8 * sizeof(unsigned long)) + 1);
  mask[static_cast<size_t>(opts.numa_node) / (8 * sizeof(unsigned long))] |=
      1UL << (static_cast<size_t>(opts.numa_node) % (8 * sizeof(unsigned long)));
  if (mbind(addr, len, MPOL_BIND, mask.data(), mask.size() * 8 * sizeof(unsigned long) + 1,
            MPOL_MF_STRICT) != 0) {
    const int err = errno;
    return ErrnoStatus(err, "mempool: mbind arena to node " + std::to_string(opts.numa_node));
  }
  return Status::Ok();
}

Status PoolCore::MapArena(size_t idx, Arena& a) {
  char* addr = reserve_base + idx * arena_bytes;
  const size_t len = arena_bytes;
  constexpr int kBase = MAP_PRIVATE | MAP_ANONYMOUS;
  const auto unmap = [&] { mmap(addr, len, PROT_NONE, kBase | MAP_NORESERVE | MAP_FIXED, -1, 0); };
  PageMode mode = opts.best_page_mode;
  std::string why_not_hugetlb;
  bool mapped = false;
  if (mode == PageMode::kHugeTlb) {
    const int huge = MAP_HUGETLB | (21 << MAP_HUGE_SHIFT);
    // Probe without MAP_FIXED first: a failed MAP_FIXED may leave a hole in
    // the reservation on old kernels. Only map over the reservation once the
    // kernel has shown it has the pages.
    void* probe = mmap(nullptr, len, PROT_READ | PROT_WRITE, kBase | huge, -1, 0);
    if (probe != MAP_FAILED) {
      munmap(probe, len);
      void* p = mmap(addr, len, PROT_READ | PROT_WRITE, kBase | huge | MAP_FIXED, -1, 0);
      if (p != MAP_FAILED) {
        mapped = true;
      } else {
        why_not_hugetlb = std::strerror(errno);
        // Refill a possible hole; EEXIST means the reservation is intact.
        mmap(addr, len, PROT_NONE, kBase | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
      }
    } else {
      why_not_hugetlb = std::strerror(errno);
    }
    if (mapped) {
      if (Status s = BindArena(addr, len); !s.ok()) {
        unmap();
        return s;
      }
      // The pages the mapping reserved can still be refused when they are
      // first touched (a cgroup's hugetlb limit, none left on the bound node),
      // and a refused touch is SIGBUS. Populating now turns that into an
      // error, and the arena falls back. Kernels before 5.14 cannot populate
      // (EINVAL): there the pages are taken on trust.
      if (madvise(addr, len, MADV_POPULATE_WRITE) != 0) {
        if (errno != EINVAL) {
          why_not_hugetlb = std::string("populating its pages failed: ") + std::strerror(errno);
          mapped = false;  // the mapping below replaces it and gives its pages back
        } else if (opts.prefault) {
          Prefault(addr, len, Pool::kHugePageBytes);
        }
      }
    }
    if (!mapped) mode = PageMode::kTransparentHuge;
  }
  if (!mapped) {
    void* p = mmap(addr, len, PROT_READ | PROT_WRITE, kBase | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      unmap();
      return ErrnoStatus(err, "mempool: mmap arena");
    }
    if (mode == PageMode::kTransparentHuge &&
        (ThpDisabled() || madvise(addr, len, MADV_HUGEPAGE) != 0)) {
      mode = PageMode::kSmallPages;
    }
    if (mode == PageMode::kSmallPages) madvise(addr, len, MADV_NOHUGEPAGE);
    if (Status s = BindArena(addr, len); !s.ok()) {
      unmap();
      return s;
    }
    if (opts.prefault) Prefault(addr, len, 4096);
  }
  a.base = addr;
  a.mode = mode;
  a.used = 0;
  spdlog::info("mempool: pool {} arena {} mapped: {} MiB at {} node {} pages {}{}{}", id, idx,
               len / kMiB, static_cast<void*>(addr), opts.numa_node, PageModeName(mode),
               mode == opts.best_page_mode ? "" : " (fallback)",
               why_not_hugetlb.empty() ? "" : "; hugetlb: " + why_not_hugetlb);
  return Status::Ok();
}

Status PoolCore::AddArenaLocked() {
  const size_t idx = num_arenas.load(std::memory_order_relaxed);
  if (idx >= opts.max_arenas) {
    return ResourceExhaustedError("mempool: max_arenas (" + std::to_string(opts.max_arenas) +
                                  ") reached");
  }
  Arena& a = arenas[idx];
  HRPC_TRY(MapArena(idx, a));
  for (int s = 0; s < kMaxRegistrars; ++s) {
    Registrar* r = registrars[s].load(std::memory_order_relaxed);
    if (r == nullptr) continue;
    Result<RegionKey> key = r->Register(a.base, arena_bytes, opts.numa_node);
    if (!key.ok()) {
      for (int u = 0; u < s; ++u) {
        if (Registrar* ru = registrars[u].load(std::memory_order_relaxed)) {
          ru->Unregister(a.base, arena_bytes, a.keys[u]);
        }
      }
      mmap(a.base, arena_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
           -1, 0);
      a = Arena{};
      return key.status().WithContext("mempool: registrar " + std::string(r->name()));
    }
    a.keys[s] = *key;
  }
  num_arenas.store(idx + 1, std::memory_order_release);
  return Status::Ok();
}

Status PoolCore::Init() {
  const PoolOptions& o = opts;
  if (o.arena_bytes == 0 || o.arena_bytes % Pool::kHugePageBytes != 0) {
    return InvalidArgumentError("mempool: arena_bytes must be a non-zero multiple of 2 MiB");
  }
  // The classes run from 2^kSmallShift up to max_class_bytes: at most kMaxClasses of them.
  constexpr uint64_t kLargestClass = uint64_t{1} << (kSmallShift + kMaxClasses - 1);
  if (!std::has_single_bit(o.max_class_bytes) || o.max_class_bytes < Pool::kPageClassMin ||
      o.max_class_bytes > o.arena_bytes || o.max_class_bytes > kLargestClass) {
    return InvalidArgumentError("mempool: max_class_bytes must be a power of two in [4 KiB, arena_bytes] and at most " +
                                std::to_string(kLargestClass >> 30) + " GiB");
  }
  if (o.max_arenas == 0 || o.max_arenas > 255) {
    return InvalidArgumentError("mempool: max_arenas must be in [1, 255]");
  }
  if (o.thread_cache_max_blocks == 0) {
    return InvalidArgumentError("mempool: thread_cache_max_blocks must be >= 1");
  }
  if (o.numa_node >= 0) {
    if (numa_available() < 0) {
      return FailedPreconditionError("mempool: numa_node set but the kernel has no NUMA support");
    }
    if (o.numa_node > numa_max_node()) {
      return InvalidArgumentError("mempool: numa_node " + std::to_string(o.numa_node) +
                                  " > max node " + std::to_string(numa_max_node()));
    }
  }
  arena_bytes = o.arena_bytes;
  num_classes = static_cast<unsigned>(std::countr_zero(o.max_class_bytes)) - kSmallShift + 1;
  shared = std::make_unique<SharedClass[]>(num_classes);
  arenas = std::make_unique<Arena[]>(o.max_arenas);

  // One reservation for all arenas, 2 MiB aligned (hugetlb needs it).
  reserve_bytes = o.max_arenas * arena_bytes;
  const size_t over = reserve_bytes + Pool::kHugePageBytes;
  void* p = mmap(nullptr, over, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mempool: reserve address space");
  auto raw = reinterpret_cast<uintptr_t>(p);
  uintptr_t aligned = (raw + Pool::kHugePageBytes - 1) & ~(uintptr_t{Pool::kHugePageBytes} - 1);
  if (aligned > raw) munmap(p, aligned - raw);
  const uintptr_t end = raw + over, used_end = aligned + reserve_bytes;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  reserve_base = reinterpret_cast<char*>(aligned);

  std::lock_guard lock(arena_mu);
  return AddArenaLocked();
}

PoolCore::~PoolCore() {
  {
    std::lock_guard lock(registry->mu);
    registry->core = nullptr;
    // Blocks still in use are a caller bug (a Buffer outlived its Pool).
    size_t in_use = 0;
    for (unsigned c = 0; c < num_classes; ++c) {
      size_t cached = 0;
      for (auto& tc : registry->caches) cached += tc->classes[c].count.load(std::memory_order_relaxed);
      in_use += shared[c].out - cached;
    }
    if (in_use != 0) spdlog::error("mempool: pool {} destroyed with {} blocks in use", id, in_use);
    registry->caches.clear();
  }
  if (tls_fast.pool_id == id) tls_fast = {0, nullptr};
  {
    std::lock_guard lock(arena_mu);
    const size_t n = num_arenas.load(std::memory_order_relaxed);
    for (int s = 0; s < kMaxRegistrars; ++s) {
      Registrar* r = registrars[s].load(std::memory_order_relaxed);
      if (r == nullptr) continue;
      for (size_t i = 0; i < n; ++i) r->Unregister(arenas[i].base, arena_bytes, arenas[i].keys[s]);
      registrars[s].store(nullptr, std::memory_order_relaxed);
    }
  }
  if (reserve_base != nullptr) munmap(reserve_base, reserve_bytes);
}

void FreeBlock(BlockMeta* m) noexcept {
  PoolCore* core = m->pool;
  ThreadCache* tc = tls_fast.pool_id == core->id ? tls_fast.cache : core->CacheSlow();
  if (tc == nullptr) [[unlikely]] {
    core->ReturnOne(m);
    return;
  }
  if (core->pressure.load(std::memory_order_relaxed) != tc->seen_pressure) [[unlikely]] {
    tc->seen_pressure = core->pressure.load(std::memory_order_relaxed);
    core->FlushAll(*tc);
    core->ReturnOne(m);
    return;
  }
  ClassCache& cc = tc->classes[m->size_class];
  uint32_t n = cc.count.load(std::memory_order_relaxed);
  if (n == cc.cap) [[unlikely]] {
    core->Flush(cc, m->size_class, cc.batch);
    n = cc.count.load(std::memory_order_relaxed);
  }
  cc.items[n] = m;
  cc.count.store(n + 1, std::memory_order_relaxed);
}

RegionKey BlockKey(const BlockMeta* m, RegistrarSlot slot) noexcept {
  if (slot >= kMaxRegistrars) return RegionKey{};
  return m->pool->arenas[m->arena].keys[slot];
}

int BlockNumaNode(const BlockMeta* m) noexcept { return m->pool->opts.numa_node; }

size_t BlockBytes(const BlockMeta* m) noexcept { return Pool::kSmallClassMin << m->size_class; }

}  // namespace detail

using detail::BlockMeta;
using detail::ClassCache;
using detail::PoolCore;
using detail::ThreadCache;

Result<std::unique_ptr<Pool>> Pool::Create(PoolOptions options) {
  auto core = std::make_unique<PoolCore>(options);
  core->registry->core = core.get();
  HRPC_TRY(core->Init());
  return std::unique_ptr<Pool>(new Pool(std::move(core)));
}

Pool::Pool(std::unique_ptr<PoolCore> core) noexcept : core_(std::move(core)) {}
Pool::Pool(Pool&&) noexcept = default;
Pool& Pool::operator=(Pool&&) noexcept = default;
Pool::~Pool() = default;

Result<Buffer> Pool::Allocate(size_t bytes) {
  PoolCore* c = core_.get();
  if (bytes - 1 >= c->opts.max_class_bytes) [[unlikely]] {
    return InvalidArgumentError("mempool: Allocate(" + std::to_string(bytes) +
                                "): size must be in [1, max_class_bytes=" +
                                std::to_string(c->opts.max_class_bytes) + "]");
  }
  const unsigned cls =
      bytes <= kSmallClassMin ? 0u : static_cast<unsigned>(std::bit_width(bytes - 1)) - detail::kSmallShift;
  ThreadCache* tc = detail::tls_fast.pool_id == c->id ? detail::tls_fast.cache : c->CacheSlow();
  BlockMeta* m;
  if (tc != nullptr) [[likely]] {
    ClassCache& cc = tc->classes[cls];
    uint32_t n = cc.count.load(std::memory_order_relaxed);
    if (n == 0) [[unlikely]] {
      HRPC_TRY(c->Refill(cc, cls));
      n = cc.count.load(std::memory_order_relaxed);
    }
    m = cc.items[n - 1];
    cc.count.store(n - 1, std::memory_order_relaxed);
  } else {
    HRPC_ASSIGN_OR_RETURN(m, c->TakeOne(cls));
  }
  m->refs.store(1, std::memory_order_relaxed);
  return Buffer(m, m->data, bytes);
}

Result<RegistrarSlot> Pool::AttachRegistrar(Registrar* r) {
  if (r == nullptr) return InvalidArgumentError("mempool: AttachRegistrar(nullptr)");
  PoolCore* c = core_.get();
  std::lock_guard lock(c->arena_mu);
  int slot = -1;
  for (int s = 0; s < kMaxRegistrars; ++s) {
    if (c->registrars[s].load(std::memory_order_relaxed) == nullptr) {
      slot = s;
      break;
    }
  }
  if (slot < 0) return ResourceExhaustedError("mempool: all registrar slots in use");
  const size_t n = c->num_arenas.load(std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    detail::Arena& a = c->arenas[i];
    Result<RegionKey> key = r->Register(a.base, c->arena_bytes, c->opts.numa_node);
    if (!key.ok()) {
      for (size_t u = 0; u < i; ++u) r->Unregister(c->arenas[u].base, c->arena_bytes, c->arenas[u].keys[slot]);
      for (size_t u = 0; u < i; ++u) c->arenas[u].keys[slot] = RegionKey{};
      return key.status().WithContext("mempool: registrar " + std::string(r->name()));
    }
    a.keys[slot] = *key;
  }
  c->registrars[slot].store(r, std::memory_order_release);
  return static_cast<RegistrarSlot>(slot);
}

void Pool::DetachRegistrar(RegistrarSlot slot) {
  PoolCore* c = core_.get();
  if (slot >= kMaxRegistrars) return;
  std::lock_guard lock(c->arena_mu);
  Registrar* r = c->registrars[slot].load(std::memory_order_relaxed);
  if (r == nullptr) return;
  const size_t n = c->num_arenas.load(std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    r->Unregister(c->arenas[i].base, c->arena_bytes, c->arenas[i].keys[slot]);
    c->arenas[i].keys[slot] = RegionKey{};
  }
  c->registrars[slot].store(nullptr, std::memory_order_release);
}

Result<RegionKey> Pool::KeyFor(RegistrarSlot slot, const void* p) const {
  const PoolCore* c = core_.get();
  const auto addr = reinterpret_cast<uintptr_t>(p);
  const auto base = reinterpret_cast<uintptr_t>(c->reserve_base);
  const size_t idx = (addr - base) / c->arena_bytes;  // wraps to huge when addr < base
  if (addr < base || idx >= c->num_arenas.load(std::memory_order_acquire)) {
    return NotFoundError("mempool: pointer is in no arena of this pool");
  }
  if (slot >= kMaxRegistrars || c->registrars[slot].load(std::memory_order_acquire) == nullptr) {
    return FailedPreconditionError("mempool: no registrar attached at slot " + std::to_string(slot));
  }
  return c->arenas[idx].keys[slot];
}

Status Pool::AddArena() {
  std::lock_guard lock(core_->arena_mu);
  return core_->AddArenaLocked();
}

PageMode Pool::page_mode() const { return core_->arenas[0].mode; }
int Pool::numa_node() const { return core_->opts.numa_node; }
size_t Pool::num_arenas() const { return core_->num_arenas.load(std::memory_order_acquire); }
size_t Pool::num_registrars() const {
  size_t n = 0;
  for (const auto& r : core_->registrars) n += r.load(std::memory_order_acquire) != nullptr ? 1 : 0;
  return n;
}
const PoolOptions& Pool::options() const { return core_->opts; }

std::vector<size_t> Pool::ClassSizes() const {
  std::vector<size_t> out;
  for (unsigned c = 0; c < core_->num_classes; ++c) out.push_back(kSmallClassMin << c);
  return out;
}

std::vector<Pool::ClassStats> Pool::Stats() const {
  PoolCore* c = core_.get();
  std::vector<ClassStats> out(c->num_classes);
  std::lock_guard reg_lock(c->registry->mu);
  for (unsigned k = 0; k < c->num_classes; ++k) {
    size_t cached = 0;
    for (auto& tc : c->registry->caches) cached += tc->classes[k].count.load(std::memory_order_relaxed);
    detail::SharedClass& sc = c->shared[k];
    std::lock_guard lock(sc.mu);
    const size_t in_use = sc.out >= cached ? sc.out - cached : 0;
    out[k] = ClassStats{kSmallClassMin << k, in_use, sc.free.size() + cached, sc.high_water, sc.carved, sc.failures};
  }
  return out;
}

}  // namespace hrpc::mempool
