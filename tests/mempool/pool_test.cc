// Tests for mempool/src/pool.cc: classes, page modes, thread caches,
// exhaustion/growth, stats and the registrar seam.
#include "hrpc/mempool/pool.h"

#include <dirent.h>
#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "fake_registrar.h"

namespace hrpc::mempool {
namespace {

using testing::FakeRegistrar;

PoolOptions SmallOptions(size_t arena = 2 * kMiB) {
  PoolOptions o;
  o.arena_bytes = arena;
  o.max_class_bytes = std::min<size_t>(arena, 1 * kMiB);
  o.prefault = false;
  o.best_page_mode = PageMode::kTransparentHuge;
  return o;
}

std::unique_ptr<Pool> MustCreate(const PoolOptions& o) {
  auto r = Pool::Create(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

Buffer MustAlloc(Pool& p, size_t n) {
  auto r = p.Allocate(n);
  EXPECT_TRUE(r.ok()) << n << ": " << r.status().ToString();
  return r.ok() ? std::move(r).value() : Buffer();
}

const Pool::ClassStats& StatsFor(const std::vector<Pool::ClassStats>& s, size_t block) {
  for (const auto& c : s) {
    if (c.block_bytes == block) return c;
  }
  ADD_FAILURE() << "no class " << block;
  return s.front();
}

TEST(PoolTest, EveryClassHasItsSizeAndAlignment) {
  PoolOptions o;
  o.prefault = false;
  o.grow = true;  // two blocks of every class up to 16 MiB need ~70 MiB
  auto pool = MustCreate(o);
  ASSERT_NE(pool, nullptr);
  const std::vector<size_t> sizes = pool->ClassSizes();
  ASSERT_EQ(sizes.front(), 64u);
  ASSERT_EQ(sizes.back(), 16 * kMiB);
  ASSERT_EQ(sizes.size(), 19u);  // 64 B .. 16 MiB, powers of two
  std::vector<Buffer> keep;
  for (size_t cls : sizes) {
    for (size_t ask : {cls / 2 + 1, cls}) {
      Buffer b = MustAlloc(*pool, ask);
      ASSERT_TRUE(b);
      EXPECT_EQ(b.size(), ask);
      EXPECT_EQ(b.block_bytes(), cls) << "asked " << ask;
      const auto addr = reinterpret_cast<uintptr_t>(b.data());
      EXPECT_EQ(addr % std::min<size_t>(cls, 64), 0u) << cls;
      if (cls >= Pool::kPageClassMin) {
        EXPECT_EQ(addr % Pool::kPageClassMin, 0u) << "class " << cls << " not page-aligned";
        EXPECT_EQ(addr % std::min(cls, Pool::kChunkBytes), 0u) << cls;
      }
      // The whole block is usable.
      b.data()[0] = 1;
      b.data()[ask - 1] = 2;
      keep.push_back(std::move(b));
    }
  }
  // Distinct blocks never overlap.
  std::vector<std::pair<uintptr_t, size_t>> ranges;
  for (const Buffer& b : keep) ranges.emplace_back(reinterpret_cast<uintptr_t>(b.data()), b.block_bytes());
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    EXPECT_LE(ranges[i - 1].first + ranges[i - 1].second, ranges[i].first);
  }
}

TEST(PoolTest, RejectsBadSizesAndOptions) {
  auto pool = MustCreate(SmallOptions());
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->Allocate(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Allocate(1 * kMiB + 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(pool->Allocate(1 * kMiB).ok());

  PoolOptions bad = SmallOptions();
  bad.arena_bytes = 3 * kMiB;
  EXPECT_EQ(Pool::Create(bad).status().code(), StatusCode::kInvalidArgument);
  bad = SmallOptions();
  bad.max_class_bytes = 4 * kMiB;  // larger than the arena
  EXPECT_EQ(Pool::Create(bad).status().code(), StatusCode::kInvalidArgument);
  bad = SmallOptions();
  bad.max_class_bytes = 3 * 4096;
  EXPECT_EQ(Pool::Create(bad).status().code(), StatusCode::kInvalidArgument);
  bad = SmallOptions();
  bad.max_arenas = 0;
  EXPECT_EQ(Pool::Create(bad).status().code(), StatusCode::kInvalidArgument);
  // More size classes than a thread cache has room for: refused before any
  // memory is reserved (not RESOURCE_EXHAUSTED where the reservation fails).
  bad = SmallOptions();
  bad.arena_bytes = bad.max_class_bytes = uint64_t{1} << 38;
  bad.max_arenas = 1;
  bad.prefault = false;
  const Status huge = Pool::Create(bad).status();
  EXPECT_EQ(huge.code(), StatusCode::kInvalidArgument) << huge.ToString();
}

bool KernelHasHugeTlbPages() {
  void* p = mmap(nullptr, 2 * kMiB, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (p == MAP_FAILED) return false;
  munmap(p, 2 * kMiB);
  return true;
}

bool ThpEnabled() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s;
  return std::getline(f, s) && s.find("[never]") == std::string::npos;
}

TEST(PoolTest, ForcedPageModeFallback) {
  PoolOptions o = SmallOptions();
  o.prefault = true;

  o.best_page_mode = PageMode::kSmallPages;
  auto small = MustCreate(o);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(small->page_mode(), PageMode::kSmallPages);
  // The memory works in every mode.
  Buffer b = MustAlloc(*small, 4096);
  std::memset(b.data(), 0xab, 4096);
  b.Reset();

  o.best_page_mode = PageMode::kTransparentHuge;
  auto thp = MustCreate(o);
  ASSERT_NE(thp, nullptr);
  EXPECT_EQ(thp->page_mode(), ThpEnabled() ? PageMode::kTransparentHuge : PageMode::kSmallPages);

  o.best_page_mode = PageMode::kHugeTlb;
  auto best = MustCreate(o);
  ASSERT_NE(best, nullptr);
  if (KernelHasHugeTlbPages()) {
    EXPECT_EQ(best->page_mode(), PageMode::kHugeTlb);
  } else {
    // hugetlb -> THP (-> 4 KiB when THP is off).
    EXPECT_EQ(best->page_mode(), ThpEnabled() ? PageMode::kTransparentHuge : PageMode::kSmallPages);
  }
  EXPECT_EQ(PageModeName(PageMode::kHugeTlb), "hugetlb-2MiB");
}

TEST(PoolTest, RealHugeTlbPages) {
  if (!KernelHasHugeTlbPages()) {
    GTEST_SKIP() << "kernel has no free 2 MiB hugetlb pages (vm.nr_hugepages = 0); "
                    "fallback covered by ForcedPageModeFallback";
  }
  PoolOptions o = SmallOptions();
  o.best_page_mode = PageMode::kHugeTlb;
  o.prefault = true;
  auto pool = MustCreate(o);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->page_mode(), PageMode::kHugeTlb);
  Buffer b = MustAlloc(*pool, 1 * kMiB);
  std::memset(b.data(), 1, b.size());
}

// Root's cgroup v2 hierarchy with the hugetlb controller, a child cgroup in it
// limited to `limit` bytes of 2 MiB pages, and `pages` more hugetlb pages in
// the system than it had; all undone on destruction. `skip` says why it
// cannot be set up here (not root, no cgroup v2, no hugetlb controller, the
// kernel found no memory for the pages).
class HugeTlbLimitedCgroup {
 public:
  HugeTlbLimitedCgroup(size_t pages, size_t limit) {
    std::ifstream mi("/proc/self/mountinfo");
    for (std::string line; std::getline(mi, line);) {
      // "... <mount point> <options> - cgroup2 <source> ..."
      const size_t dash = line.find(" - cgroup2 ");
      if (dash == std::string::npos) continue;
      std::vector<std::string> f;
      for (size_t p = 0, q; p < dash; p = q + 1) {
        q = line.find(' ', p);
        if (q == std::string::npos || q > dash) q = dash;
        f.push_back(line.substr(p, q - p));
      }
      if (f.size() > 4) root_ = f[4];
      break;
    }
    if (root_.empty()) {
      skip = "no cgroup v2 hierarchy mounted";
      return;
    }
    if (Read(root_ + "/cgroup.controllers").find("hugetlb") == std::string::npos) {
      skip = "the cgroup v2 hierarchy at " + root_ + " has no hugetlb controller";
      return;
    }
    if (Read(root_ + "/cgroup.subtree_control").find("hugetlb") == std::string::npos) {
      if (!Write(root_ + "/cgroup.subtree_control", "+hugetlb")) {
        skip = "cannot enable the hugetlb controller in " + root_ + " (not root?)";
        return;
      }
      enabled_controller_ = true;
    }
    // What an earlier run that was killed left behind (rmdir fails on a
    // cgroup that still has processes).
    if (DIR* d = ::opendir(root_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        if (std::string_view(e->d_name).starts_with("hrpc-pool-test-")) ::rmdir((root_ + "/" + e->d_name).c_str());
      }
      ::closedir(d);
    }
    dir_ = root_ + "/hrpc-pool-test-" + std::to_string(::getpid());
    if (::mkdir(dir_.c_str(), 0755) != 0) {
      skip = "cannot make " + dir_ + ": " + std::strerror(errno);
      dir_.clear();
      return;
    }
    if (!Write(dir_ + "/hugetlb.2MB.max", std::to_string(limit))) {
      skip = "cannot set " + dir_ + "/hugetlb.2MB.max";
      return;
    }
    const std::string nr = Read("/proc/sys/vm/nr_hugepages");
    if (nr.empty()) {
      skip = "no /proc/sys/vm/nr_hugepages";
      return;
    }
    const unsigned long before = std::strtoul(nr.c_str(), nullptr, 10);
    if (!Write("/proc/sys/vm/nr_hugepages", std::to_string(before + pages))) {
      skip = "cannot raise vm.nr_hugepages (not root?)";
      return;
    }
    // What the kernel found memory for (it may be fewer than asked); given
    // back on destruction, whatever others changed meanwhile.
    const unsigned long now = std::strtoul(Read("/proc/sys/vm/nr_hugepages").c_str(), nullptr, 10);
    raised_pages_ = now > before ? now - before : 0;
    if (raised_pages_ < pages) {
      skip = "the kernel found no memory for " + std::to_string(pages) + " more hugetlb pages";
    }
  }
  ~HugeTlbLimitedCgroup() {
    if (raised_pages_ > 0) {
      const unsigned long now = std::strtoul(Read("/proc/sys/vm/nr_hugepages").c_str(), nullptr, 10);
      Write("/proc/sys/vm/nr_hugepages", std::to_string(now > raised_pages_ ? now - raised_pages_ : 0));
    }
    if (!dir_.empty()) ::rmdir(dir_.c_str());
    if (enabled_controller_) Write(root_ + "/cgroup.subtree_control", "-hugetlb");
  }
  HugeTlbLimitedCgroup(const HugeTlbLimitedCgroup&) = delete;
  HugeTlbLimitedCgroup& operator=(const HugeTlbLimitedCgroup&) = delete;

  bool Join() const { return Write(dir_ + "/cgroup.procs", "0"); }
  // Times a fault was refused for the limit ("max N" of hugetlb.2MB.events).
  unsigned long LimitHits() const {
    const std::string e = Read(dir_ + "/hugetlb.2MB.events");
    const size_t at = e.find("max ");
    return at == std::string::npos ? 0 : std::stoul(e.substr(at + 4));
  }

  std::string skip;

 private:
  static std::string Read(const std::string& path) {
    std::ifstream f(path);
    std::string s, line;
    while (std::getline(f, line)) s += line + "\n";
    return s;
  }
  static bool Write(const std::string& path, const std::string& value) {
    std::ofstream f(path);
    f << value;
    f.flush();
    return static_cast<bool>(f);
  }

  std::string root_, dir_;
  bool enabled_controller_ = false;
  unsigned long raised_pages_ = 0;
};

// The kernel reserves a private hugetlb mapping's pages when it is made, but a
// cgroup's hugetlb limit is charged when each page is first touched, and a
// refused touch is SIGBUS. A pool whose arena the limit cannot hold falls back
// to ordinary pages when it is mapped, and its memory is then usable whole,
// whether or not it was asked to prefault.
TEST(PoolTest, AHugeTlbArenaTheCgroupCannotHoldFallsBackInsteadOfRaisingSigbus) {
  constexpr size_t kArena = 8 * kMiB;
  {
    // Kernels before 5.14 cannot populate a mapping: there the pool takes the
    // pages on trust (docs/mempool.md) and this cannot be checked.
    void* probe = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(probe, MAP_FAILED);
    const bool can_populate = madvise(probe, 4096, 23 /* MADV_POPULATE_WRITE */) == 0;
    munmap(probe, 4096);
    if (!can_populate) GTEST_SKIP() << "this kernel has no MADV_POPULATE_WRITE";
  }
  // More pages than the arena needs: other test processes may take some of
  // them meanwhile (every pool tries hugetlb pages first).
  HugeTlbLimitedCgroup cg(4 * kArena / Pool::kHugePageBytes, Pool::kHugePageBytes);
  if (!cg.skip.empty()) GTEST_SKIP() << cg.skip;
  for (bool prefault : {true, false}) {
    SCOPED_TRACE(prefault ? "prefault" : "no prefault");
    bool limit_hit = false;
    for (int attempt = 0; attempt < 3 && !limit_hit; ++attempt) {
      const unsigned long hits = cg.LimitHits();
      const pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        ::alarm(60);  // a hung child does not outlive the test
        if (!cg.Join()) ::_exit(2);
        PoolOptions o;
        o.arena_bytes = kArena;
        o.max_class_bytes = 1 * kMiB;
        o.prefault = prefault;
        auto created = Pool::Create(o);
        if (!created.ok()) ::_exit(3);
        if ((*created)->page_mode() == PageMode::kHugeTlb) ::_exit(4);
        std::vector<Buffer> all;
        for (;;) {
          auto b = (*created)->Allocate(1 * kMiB);
          if (!b.ok()) break;
          std::memset(b->data(), 0x5a, b->size());
          all.push_back(std::move(b).value());
        }
        ::_exit(all.size() == kArena / kMiB ? 0 : 5);
      }
      int status = 0;
      ASSERT_EQ(::waitpid(pid, &status, 0), pid);
      ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
      ASSERT_EQ(WEXITSTATUS(status), 0) << "2: cannot join the cgroup, 3: Create failed, "
                                           "4: the arena kept hugetlb pages, 5: not all of the arena usable";
      // The arena did try hugetlb pages and the limit refused one (not:
      // other processes had taken the pages, and it never got any).
      limit_hit = cg.LimitHits() > hits;
    }
    if (!limit_hit) GTEST_SKIP() << "other processes took the hugetlb pages three times in a row";
  }
}

TEST(PoolTest, NumaBinding) {
  if (numa_available() < 0) GTEST_SKIP() << "no NUMA support in this kernel";
  PoolOptions o = SmallOptions();
  o.numa_node = 0;
  o.prefault = true;
  auto created = Pool::Create(o);
  if (!created.ok() && created.status().message().find("mbind") != std::string_view::npos) {
    GTEST_SKIP() << "mbind refused here (container policy?): " << created.status().ToString();
  }
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  std::unique_ptr<Pool> pool = std::move(created).value();
  EXPECT_EQ(pool->numa_node(), 0);
  Buffer b = MustAlloc(*pool, 4096);
  EXPECT_EQ(b.numa_node(), 0);
  b.data()[0] = 1;
  int node = -1;
  ASSERT_EQ(get_mempolicy(&node, nullptr, 0, b.data(), MPOL_F_NODE | MPOL_F_ADDR), 0);
  EXPECT_EQ(node, 0);

  PoolOptions bad = SmallOptions();
  bad.numa_node = numa_max_node() + 1;
  EXPECT_EQ(Pool::Create(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(PoolTest, BufferSharesAndReturnsOnLastRelease) {
  auto pool = MustCreate(SmallOptions());
  ASSERT_NE(pool, nullptr);
  Buffer a = MustAlloc(*pool, 8192);
  EXPECT_EQ(a.use_count(), 1u);
  Buffer b = a;
  Buffer s = a.Slice(100, 200);
  EXPECT_EQ(a.use_count(), 3u);
  EXPECT_EQ(s.data(), a.data() + 100);
  EXPECT_EQ(s.size(), 200u);
  EXPECT_EQ(StatsFor(pool->Stats(), 8192).in_use, 1u);
  a.Reset();
  b.Reset();
  EXPECT_FALSE(a);
  EXPECT_EQ(s.use_count(), 1u);
  EXPECT_EQ(StatsFor(pool->Stats(), 8192).in_use, 1u);
  Buffer moved = std::move(s);
  EXPECT_FALSE(s);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  moved.Reset();
  EXPECT_EQ(StatsFor(pool->Stats(), 8192).in_use, 0u);
}

TEST(PoolTest, StatsCountInUseFreeAndHighWater) {
  auto pool = MustCreate(SmallOptions());
  ASSERT_NE(pool, nullptr);
  std::vector<Buffer> v;
  for (int i = 0; i < 10; ++i) v.push_back(MustAlloc(*pool, 4096));
  auto s = StatsFor(pool->Stats(), 4096);
  EXPECT_EQ(s.in_use, 10u);
  EXPECT_EQ(s.in_use + s.free, Pool::kChunkBytes / 4096);  // one chunk carved
  EXPECT_GE(s.high_water, 10u);
  v.clear();
  s = StatsFor(pool->Stats(), 4096);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.free, Pool::kChunkBytes / 4096);
  EXPECT_GE(s.high_water, 10u);
  EXPECT_EQ(StatsFor(pool->Stats(), 64).in_use + StatsFor(pool->Stats(), 64).free, 0u);
}

TEST(PoolTest, ExhaustionIsAStatusAndRecovers) {
  auto pool = MustCreate(SmallOptions(2 * kMiB));
  ASSERT_NE(pool, nullptr);
  std::vector<Buffer> v;
  for (;;) {
    auto r = pool->Allocate(64 * kKiB);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
      break;
    }
    v.push_back(std::move(r).value());
    ASSERT_LE(v.size(), 32u);
  }
  EXPECT_EQ(v.size(), 2 * kMiB / (64 * kKiB));
  // The arena is fully carved for 64 KiB blocks: other classes are exhausted too.
  EXPECT_EQ(pool->Allocate(4096).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->num_arenas(), 1u);
  v.pop_back();
  Buffer again = MustAlloc(*pool, 64 * kKiB);
  EXPECT_TRUE(again);
  EXPECT_EQ(pool->Allocate(64 * kKiB).status().code(), StatusCode::kResourceExhausted);
}

TEST(PoolTest, GrowsByWholeArenasUpToMax) {
  PoolOptions o = SmallOptions(2 * kMiB);
  o.grow = true;
  o.max_arenas = 3;
  auto pool = MustCreate(o);
  ASSERT_NE(pool, nullptr);
  std::vector<Buffer> v;
  for (;;) {
    auto r = pool->Allocate(256 * kKiB);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
      break;
    }
    v.push_back(std::move(r).value());
    ASSERT_LE(v.size(), 24u);
  }
  EXPECT_EQ(v.size(), 3 * 2 * kMiB / (256 * kKiB));
  EXPECT_EQ(pool->num_arenas(), 3u);
  EXPECT_EQ(pool->AddArena().code(), StatusCode::kResourceExhausted);

  PoolOptions fixed = SmallOptions(2 * kMiB);
  fixed.max_arenas = 2;
  auto p2 = MustCreate(fixed);
  ASSERT_NE(p2, nullptr);
  EXPECT_EQ(p2->num_arenas(), 1u);
  EXPECT_TRUE(p2->AddArena().ok());
  EXPECT_EQ(p2->num_arenas(), 2u);
  EXPECT_EQ(p2->AddArena().code(), StatusCode::kResourceExhausted);
}

TEST(PoolTest, RegistrarCalledOncePerArenaIncludingLaterOnes) {
  PoolOptions o = SmallOptions(2 * kMiB);
  o.grow = true;
  o.max_arenas = 4;
  auto pool = MustCreate(o);
  ASSERT_NE(pool, nullptr);
  FakeRegistrar r1(100), r2(500);
  auto s1 = pool->AttachRegistrar(&r1);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(r1.registers(), 1);
  ASSERT_TRUE(pool->AddArena().ok());
  EXPECT_EQ(r1.registers(), 2);
  // Growth through allocation registers the new arena too.
  std::vector<Buffer> v;
  while (pool->num_arenas() < 3) v.push_back(MustAlloc(*pool, 1 * kMiB));
  EXPECT_EQ(r1.registers(), 3);
  auto s2 = pool->AttachRegistrar(&r2);
  ASSERT_TRUE(s2.ok());
  EXPECT_NE(*s1, *s2);
  EXPECT_EQ(r2.registers(), 3);
  EXPECT_EQ(r1.double_registers() + r2.double_registers(), 0);
  EXPECT_EQ(pool->num_registrars(), 2u);

  // Keys: Buffer::key and KeyFor agree with what the registrar handed out.
  for (const Buffer& b : v) {
    auto k = pool->KeyFor(*s1, b.data() + 17);
    ASSERT_TRUE(k.ok()) << k.status().ToString();
    EXPECT_EQ(k->lkey, b.key(*s1).lkey);
    EXPECT_EQ(k->rkey, b.key(*s1).rkey);
    EXPECT_TRUE(r1.IsLive(reinterpret_cast<void*>(k->handle)));
    EXPECT_EQ(pool->KeyFor(*s2, b.data())->lkey, b.key(*s2).lkey);
    EXPECT_GE(b.key(*s2).lkey, 500u);
  }
  int on_stack = 0;
  EXPECT_EQ(pool->KeyFor(*s1, &on_stack).status().code(), StatusCode::kNotFound);
  auto heap = std::make_unique<char[]>(64);
  EXPECT_EQ(pool->KeyFor(*s1, heap.get()).status().code(), StatusCode::kNotFound);

  pool->DetachRegistrar(*s1);
  EXPECT_EQ(pool->num_registrars(), 1u);
  EXPECT_EQ(r1.unregisters(), 3);
  EXPECT_EQ(r1.live(), 0u);
  EXPECT_EQ(r1.bad_unregisters(), 0);
  EXPECT_EQ(pool->KeyFor(*s1, v[0].data()).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(pool->AddArena().ok());  // detached: not called again
  EXPECT_EQ(r1.registers(), 3);
  EXPECT_EQ(r2.registers(), 4);
  v.clear();
  pool.reset();
  EXPECT_EQ(r2.unregisters(), 4);
  EXPECT_EQ(r2.live(), 0u);
  EXPECT_EQ(r2.bad_unregisters(), 0);
}

TEST(PoolTest, RegistrarFailureLeavesNothingRegistered) {
  auto pool = MustCreate(SmallOptions(2 * kMiB));
  ASSERT_NE(pool, nullptr);
  FakeRegistrar r;
  r.FailNext();
  EXPECT_EQ(pool->AttachRegistrar(&r).status().code(), StatusCode::kInternal);
  EXPECT_EQ(r.live(), 0u);
  PoolOptions o = SmallOptions(2 * kMiB);
  o.max_arenas = 2;
  auto p2 = MustCreate(o);
  ASSERT_NE(p2, nullptr);
  auto slot = p2->AttachRegistrar(&r);
  ASSERT_TRUE(slot.ok());
  r.FailNext();
  EXPECT_EQ(p2->AddArena().code(), StatusCode::kInternal);
  EXPECT_EQ(p2->num_arenas(), 1u);
  EXPECT_TRUE(p2->AddArena().ok());  // the slot is reusable after a failure
  EXPECT_EQ(r.live(), 2u);
  p2.reset();
  EXPECT_EQ(r.live(), 0u);
  EXPECT_EQ(r.bad_unregisters(), 0);
}

// Two threads allocate and each frees the other's buffers, through a queue.
TEST(PoolTest, CrossThreadFreeGoesHome) {
  PoolOptions o = SmallOptions(8 * kMiB);
  o.thread_cache_max_blocks = 16;  // exercise the batch paths often
  auto pool = MustCreate(o);
  ASSERT_NE(pool, nullptr);
  struct Chan {
    std::mutex mu;
    std::deque<Buffer> q;
  };
  Chan to[2];
  constexpr int kIters = 20000;
  constexpr size_t kSizes[] = {64, 200, 4096, 65536};
  std::atomic<int> corrupt{0};
  auto worker = [&](int me) {
    Chan& out = to[1 - me];
    Chan& in = to[me];
    for (int i = 0; i < kIters; ++i) {
      auto r = pool->Allocate(kSizes[i % 4]);
      if (r.ok()) {
        Buffer b = std::move(r).value();
        std::memcpy(b.data(), &i, sizeof(i));
        b.data()[b.size() - 1] = static_cast<char>(me);
        std::lock_guard lock(out.mu);
        out.q.push_back(std::move(b));
      }
      std::deque<Buffer> got;
      {
        std::lock_guard lock(in.mu);
        if (in.q.size() > 64) got.swap(in.q);
      }
      for (Buffer& b : got) {
        if (b.data()[b.size() - 1] != static_cast<char>(1 - me)) corrupt.fetch_add(1);
      }
      got.clear();  // freed on this thread, allocated on the other
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  to[0].q.clear();
  to[1].q.clear();
  EXPECT_EQ(corrupt.load(), 0);
  for (const auto& s : pool->Stats()) {
    EXPECT_EQ(s.in_use, 0u) << s.block_bytes;
  }
}

TEST(PoolTest, ThreadExitFlushesItsCache) {
  auto pool = MustCreate(SmallOptions(2 * kMiB));
  ASSERT_NE(pool, nullptr);
  const size_t total = 2 * kMiB / (64 * kKiB);
  std::thread t([&] {
    std::vector<Buffer> v;
    for (size_t i = 0; i < total; ++i) v.push_back(MustAlloc(*pool, 64 * kKiB));
    // Freed into this thread's cache; the thread then exits.
  });
  t.join();
  // Every block is back in the shared list, so this thread can take them all.
  std::vector<Buffer> v;
  for (size_t i = 0; i < total; ++i) {
    auto r = pool->Allocate(64 * kKiB);
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    v.push_back(std::move(r).value());
  }
}

// Exhaustion makes other threads give back what their caches hold.
TEST(PoolTest, ExhaustionDrainsOtherThreadsCaches) {
  auto pool = MustCreate(SmallOptions(2 * kMiB));
  ASSERT_NE(pool, nullptr);
  const size_t total = 2 * kMiB / (64 * kKiB);
  std::mutex mu;
  std::condition_variable cv;
  int phase = 0;
  std::thread hoarder([&] {
    Buffer small = MustAlloc(*pool, 64 * kKiB);
    {
      std::vector<Buffer> v;
      for (size_t i = 1; i < total; ++i) v.push_back(MustAlloc(*pool, 64 * kKiB));
    }  // freed into this thread's cache
    std::unique_lock lock(mu);
    phase = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return phase == 2; });
    lock.unlock();
    small.Reset();  // any free sees the pressure and flushes the whole cache
    lock.lock();
    phase = 3;
    cv.notify_all();
    cv.wait(lock, [&] { return phase == 4; });
  });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return phase == 1; });
  }
  EXPECT_EQ(pool->Allocate(64 * kKiB).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(StatsFor(pool->Stats(), 64 * kKiB).free, total - 1);  // parked in the hoarder's cache
  {
    std::unique_lock lock(mu);
    phase = 2;
    cv.notify_all();
    cv.wait(lock, [&] { return phase == 3; });
  }
  std::vector<Buffer> v;
  for (size_t i = 0; i < total; ++i) {
    auto r = pool->Allocate(64 * kKiB);
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    v.push_back(std::move(r).value());
  }
  {
    std::lock_guard lock(mu);
    phase = 4;
    cv.notify_all();
  }
  hoarder.join();
}

TEST(PoolTest, PoolDestroyedWhileOtherThreadsHoldCaches) {
  std::mutex mu;
  std::condition_variable cv;
  int phase = 0;
  auto pool = MustCreate(SmallOptions());
  ASSERT_NE(pool, nullptr);
  std::thread t([&] {
    { Buffer b = MustAlloc(*pool, 4096); }  // leaves a cache for `pool` on this thread
    {
      std::unique_lock lock(mu);
      phase = 1;
      cv.notify_all();
      cv.wait(lock, [&] { return phase == 2; });
    }
    // The old pool is gone; a new one on this thread must not see its cache.
    auto p2 = MustCreate(SmallOptions());
    ASSERT_NE(p2, nullptr);
    Buffer b = MustAlloc(*p2, 4096);
    EXPECT_EQ(StatsFor(p2->Stats(), 4096).in_use, 1u);
  });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return phase == 1; });
  }
  pool.reset();
  {
    std::lock_guard lock(mu);
    phase = 2;
    cv.notify_all();
  }
  t.join();  // thread exit with a cache entry for a dead pool
}

// Threads exit (flushing their caches) while the pool is being destroyed.
TEST(PoolTest, ThreadExitRacesPoolDestruction) {
  for (int round = 0; round < 20; ++round) {
    auto pool = MustCreate(SmallOptions(8 * kMiB));
    ASSERT_NE(pool, nullptr);
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 100; ++i) {
          Buffer b = MustAlloc(*pool, size_t{64} << (i % 8));
          if (b) b.data()[0] = 1;
        }
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
      });
    }
    while (ready.load() < 4) std::this_thread::yield();
    go.store(true);
    pool.reset();
    for (auto& t : threads) t.join();
  }
}

TEST(PoolTest, ManyPoolsCoexist) {
  std::vector<std::unique_ptr<Pool>> pools;
  for (int i = 0; i < 8; ++i) {
    pools.push_back(MustCreate(SmallOptions()));
    ASSERT_NE(pools.back(), nullptr);
  }
  // Interleave allocations: each block must come from (and go back to) its own pool.
  std::vector<Buffer> v;
  for (int round = 0; round < 200; ++round) {
    for (auto& p : pools) v.push_back(MustAlloc(*p, 4096));
  }
  for (size_t i = 0; i < pools.size(); ++i) {
    EXPECT_EQ(StatsFor(pools[i]->Stats(), 4096).in_use, 200u);
    FakeRegistrar r;
    auto slot = pools[i]->AttachRegistrar(&r);
    ASSERT_TRUE(slot.ok());
    EXPECT_TRUE(pools[i]->KeyFor(*slot, v[i].data()).ok());
    EXPECT_EQ(pools[(i + 1) % pools.size()]->KeyFor(0, v[i].data()).status().code(),
              StatusCode::kNotFound);
    pools[i]->DetachRegistrar(*slot);
  }
  v.clear();
  // Destroy in a scrambled order, creating new ones in between.
  for (int i = 0; i < 20; ++i) {
    pools.erase(pools.begin() + (i * 3) % static_cast<int>(pools.size()));
    pools.push_back(MustCreate(SmallOptions()));
    ASSERT_NE(pools.back(), nullptr);
    Buffer b = MustAlloc(*pools.back(), 64);
    EXPECT_EQ(StatsFor(pools.back()->Stats(), 64).in_use, 1u);
  }
}

}  // namespace
}  // namespace hrpc::mempool
