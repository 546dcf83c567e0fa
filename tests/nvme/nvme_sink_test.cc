// The Sink: round trips with CRCs on both engines, the copy counter (0 on the
// aligned path, exactly head+tail with the fix-up), durability modes, many
// requests in flight, coroutines resumed through the poller hook, and full
// disks (a loop-mounted tiny ext4, and RLIMIT_FSIZE) -> RESOURCE_EXHAUSTED.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/nvme/sink.h"
#include "nvme_test_util.h"

namespace hrpc::nvme {
namespace {

using testing::PatternIoBuf;
using testing::PatternSlab;
using testing::TempDir;
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;

class NvmeSink : public ::testing::TestWithParam<EngineChoice> {
 protected:
  void SetUp() override {
    HRPC_NVME_REQUIRE_ODIRECT(dir_);
    pool_ = testing::SmallPool();
    ASSERT_NE(pool_, nullptr);
  }
  SinkOptions Options(const std::string& name) {
    SinkOptions o;
    o.path = dir_.File(name);
    o.pool = pool_.get();
    o.engine = GetParam();
    o.size_bytes = 16 * kMiB;
    o.queue_depth = 8;
    return o;
  }
  std::unique_ptr<Sink> OpenSink(SinkOptions o) {
    auto s = Sink::Open(std::move(o));
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return nullptr;
    const EngineKind want = GetParam() == EngineChoice::kPsync ? EngineKind::kPsync : EngineKind::kIoUring;
    EXPECT_EQ((*s)->engine(), want);
    return std::move(s).value();
  }

  TempDir dir_;
  std::unique_ptr<mempool::Pool> pool_;
};

TEST_P(NvmeSink, AlignedRoundTripCopiesNothing) {
  auto sink = OpenSink(Options("aligned.dat"));
  ASSERT_NE(sink, nullptr);
  EXPECT_EQ(sink->fixed_buffers(), GetParam() != EngineChoice::kPsync);
  // 1 MiB in four 256 KiB slabs, plus a 64 KiB + 4 KiB write of mixed slabs.
  mempool::IoBuf big = PatternIoBuf(*pool_, 1 * kMiB, 256 * kKiB, 1);
  mempool::IoBuf mixed(PatternSlab(*pool_, 64 * kKiB, 2));
  mixed.Append(PatternSlab(*pool_, 4 * kKiB, 3));
  const uint32_t crc_big = big.Crc32c(), crc_mixed = mixed.Crc32c();

  mempool::ResetCopiedBytesThisThread();
  ASSERT_TRUE(sink->Write(64 * kKiB, big).ok());
  ASSERT_TRUE(sink->Write(4 * kMiB, mixed).ok());
  auto back_big = sink->Read(64 * kKiB, 1 * kMiB);
  ASSERT_TRUE(back_big.ok()) << back_big.status().ToString();
  auto back_mixed = sink->Read(4 * kMiB, 68 * kKiB);
  ASSERT_TRUE(back_mixed.ok()) << back_mixed.status().ToString();
  EXPECT_EQ(mempool::CopiedBytesThisThread(), 0u) << "the aligned path must not copy payload";
  EXPECT_EQ(sink->stats().fixup_copied_bytes, 0u);

  EXPECT_EQ(back_big->Crc32c(), crc_big);
  EXPECT_EQ(back_mixed->Crc32c(), crc_mixed);
  EXPECT_TRUE(testing::SameBytes(*back_big, big));
  EXPECT_EQ(sink->stats().bytes_written, 1 * kMiB + 68 * kKiB);
  EXPECT_EQ(sink->stats().bytes_read, 1 * kMiB + 68 * kKiB);
  if (GetParam() != EngineChoice::kPsync) {
    EXPECT_GT(sink->stats().fixed_slices, 0u);
    EXPECT_EQ(sink->stats().vectored_slices, 0u);  // every slab is in a registered arena
  }
}

TEST_P(NvmeSink, UnalignedIsRejectedByDefault) {
  auto sink = OpenSink(Options("reject.dat"));
  ASSERT_NE(sink, nullptr);
  mempool::Buffer slab = PatternSlab(*pool_, 16 * kKiB, 4);
  mempool::IoBuf odd(slab.Slice(8, 4096));  // address 8 bytes into a page
  Status st = sink->Write(0, odd);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("element 0 of 1"), std::string_view::npos) << st.message();
  // Offset not on a logical block: refused even with the fix-up (no read-modify-write).
  mempool::IoBuf ok(PatternSlab(*pool_, 4096, 5));
  EXPECT_EQ(sink->Write(100, ok).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sink->Read(0, 100).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(NvmeSink, UnalignedFixupRoundTripCopiesHeadAndTailOnly) {
  SinkOptions o = Options("fixup.dat");
  o.fixup_unaligned = true;
  auto sink = OpenSink(o);
  ASSERT_NE(sink, nullptr);
  const uint32_t lb = sink->rules().logical_block;
  ASSERT_LE(lb, 4096u);
  // head: `lb * 3` bytes at an odd address; middle: 64 KiB of whole pages;
  // tail: `lb` bytes that start mid-page (or `lb` into the page when lb = 4096: then
  // it is misaligned only for PRP's "last starts on a page").
  mempool::Buffer a = PatternSlab(*pool_, 16 * kKiB, 6);
  mempool::Buffer b = PatternSlab(*pool_, 64 * kKiB, 7);
  mempool::Buffer c = PatternSlab(*pool_, 16 * kKiB, 8);
  const size_t head = 3 * lb, tail = lb;
  mempool::IoBuf data(a.Slice(8, head));
  data.Append(b);
  data.Append(c.Slice(lb == 4096 ? 4096 - 512 : lb, tail));
  ASSERT_FALSE(CheckScatterList(data.Iovecs(), 8 * kKiB, sink->rules()).ok());
  const uint32_t crc = data.Crc32c();

  mempool::ResetCopiedBytesThisThread();
  ASSERT_TRUE(sink->Write(8 * kKiB, data).ok());
  EXPECT_EQ(mempool::CopiedBytesThisThread(), head + tail);
  EXPECT_EQ(sink->stats().fixup_copied_bytes, head + tail);
  EXPECT_EQ(sink->stats().fixup_writes, 1u);

  auto back = sink->Read(8 * kKiB, data.size());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Crc32c(), crc);
  EXPECT_TRUE(testing::SameBytes(*back, data));
}

TEST_P(NvmeSink, DurabilityModes) {
  for (Durability d : {Durability::kNone, Durability::kFdatasyncOnFlush, Durability::kDsyncPerWrite}) {
    SCOPED_TRACE(DurabilityName(d));
    SinkOptions o = Options(std::string("durable-") + std::string(DurabilityName(d)) + ".dat");
    o.durability = d;
    auto sink = OpenSink(o);
    ASSERT_NE(sink, nullptr);
    EXPECT_EQ(sink->durability(), d);
    mempool::IoBuf data = PatternIoBuf(*pool_, 256 * kKiB, 64 * kKiB, 20 + static_cast<int>(d));
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(sink->Write(i * 256 * kKiB, data).ok());
    ASSERT_TRUE(sink->Flush().ok());
    EXPECT_EQ(sink->stats().flushes, d == Durability::kFdatasyncOnFlush ? 1u : 0u);
    auto back = sink->Read(3 * 256 * kKiB, 256 * kKiB);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->Crc32c(), data.Crc32c());
  }
}

TEST_P(NvmeSink, ManyRequestsInFlightFromOneThread) {
  SinkOptions o = Options("async.dat");
  o.queue_depth = 4;  // fewer SQE slots than requests: the engine backlog is used
  auto sink = OpenSink(o);
  ASSERT_NE(sink, nullptr);
  constexpr int kOps = 32;
  std::vector<mempool::IoBuf> bufs;
  std::vector<uint32_t> crcs;
  for (int i = 0; i < kOps; ++i) {
    bufs.push_back(PatternIoBuf(*pool_, 64 * kKiB, 16 * kKiB, 100 + i));  // 4 slices = 4 SQEs each
    crcs.push_back(bufs.back().Crc32c());
  }
  std::vector<SinkOp> ops(kOps);
  int completed = 0;
  for (int i = 0; i < kOps; ++i) {
    ops[i].on_done = [&completed](SinkOp&) { ++completed; };
    ASSERT_TRUE(sink->StartWrite(i * 64 * kKiB, bufs[i], ops[i]).ok());
  }
  while (completed < kOps) ASSERT_GE(sink->Reap(true), 0);
  for (auto& op : ops) EXPECT_TRUE(op.status().ok()) << op.status().ToString();
  EXPECT_EQ(sink->outstanding(), 0u);

  // Read them back the same way, into fresh slabs.
  completed = 0;
  for (int i = 0; i < kOps; ++i) {
    mempool::IoBuf dst(PatternSlab(*pool_, 64 * kKiB, 0));
    ASSERT_TRUE(sink->StartRead(i * 64 * kKiB, dst, ops[i]).ok());
  }
  while (completed < kOps) ASSERT_GE(sink->Reap(true), 0);
  for (int i = 0; i < kOps; ++i) {
    ASSERT_TRUE(ops[i].status().ok()) << ops[i].status().ToString();
    EXPECT_EQ(ops[i].data().Crc32c(), crcs[i]) << "op " << i;
  }
}

TEST_P(NvmeSink, ReadPastEndOfFileIsOutOfRange) {
  SinkOptions o = Options("eof.dat");
  o.size_bytes = 64 * kKiB;
  auto sink = OpenSink(o);
  ASSERT_NE(sink, nullptr);
  EXPECT_EQ(sink->Read(64 * kKiB, 4 * kKiB).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(sink->Read(32 * kKiB, 64 * kKiB).status().code(), StatusCode::kOutOfRange);
  EXPECT_TRUE(sink->Read(0, 64 * kKiB).ok());
}

TEST_P(NvmeSink, CoroutinesAreResumedByThePoller) {
  auto sink = OpenSink(Options("coro.dat"));
  ASSERT_NE(sink, nullptr);
  auto worker = coro::Worker::Start({.sched = {.name = "nvme-test"}});
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  coro::Scheduler& sched = (*worker)->scheduler();
  Sink* s = sink.get();
  mempool::Pool* pool = pool_.get();

  // Eight coroutines write and read back concurrently on one worker; each
  // suspends while its I/O is in flight.
  auto fut = coro::Async(sched, [&]() -> Status {
    HRPC_TRY(s->AttachTo(sched));
    constexpr int kWriters = 8;
    coro::WaitGroup wg;
    std::atomic<int> bad{0};
    size_t max_seen_in_flight = 0;  // on the worker thread only
    wg.Add(kWriters);
    for (int i = 0; i < kWriters; ++i) {
      sched.Spawn([&, i] {
        mempool::IoBuf data = PatternIoBuf(*pool, 256 * kKiB, 64 * kKiB, 500 + i);
        const uint64_t off = i * 256 * kKiB;
        // The coroutines before this one are parked in Write() with their I/O
        // in flight: the worker thread is not blocked in the kernel.
        max_seen_in_flight = std::max(max_seen_in_flight, s->outstanding());
        mempool::ResetCopiedBytesThisThread();
        Status st = s->Write(off, data);
        if (!st.ok()) ++bad;
        auto back = s->Read(off, 256 * kKiB);
        if (!back.ok() || back->Crc32c() != data.Crc32c()) ++bad;
        if (mempool::CopiedBytesThisThread() != 0) ++bad;
        wg.Done();
      });
    }
    HRPC_TRY(wg.Wait());
    s->Detach();
    if (bad != 0) return InternalError(std::to_string(bad.load()) + " coroutines failed");
    if (s->engine() == EngineKind::kIoUring && max_seen_in_flight < 2) {
      return InternalError("writes did not overlap: max in flight " + std::to_string(max_seen_in_flight));
    }
    return Status::Ok();
  });
  Status st = fut.WaitFor(std::chrono::seconds(60));
  EXPECT_TRUE(st.ok()) << st.ToString();
  // Off its scheduler's thread, an attached sink refuses work; detached, it works here.
  mempool::IoBuf data(PatternSlab(*pool_, 4096, 1));
  EXPECT_TRUE(sink->Write(0, data).ok());
}

TEST_P(NvmeSink, WrongThreadIsRefused) {
  auto sink = OpenSink(Options("thread.dat"));
  ASSERT_NE(sink, nullptr);
  auto worker = coro::Worker::Start({.sched = {.name = "nvme-owner"}});
  ASSERT_TRUE(worker.ok());
  coro::Scheduler& sched = (*worker)->scheduler();
  Sink* s = sink.get();
  ASSERT_TRUE(coro::Async(sched, [&]() -> Status { return s->AttachTo(sched); }).Get().ok());
  mempool::IoBuf data(PatternSlab(*pool_, 4096, 1));
  EXPECT_EQ(sink->Write(0, data).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(coro::Async(sched, [&]() { s->Detach(); }).Get().ok());
  EXPECT_TRUE(sink->Write(0, data).ok());
}

// RLIMIT_FSIZE in a child process: the write past the limit fails with EFBIG
// (SIGXFSZ ignored), which the sink reports as RESOURCE_EXHAUSTED; the writes
// below the limit succeed.
TEST_P(NvmeSink, FileSizeLimitIsResourceExhausted) {
  const std::string path = dir_.File("fsize.dat");
  const EngineChoice engine = GetParam();
  pool_.reset();  // the child makes its own pool
  fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    rlimit lim{1 * kMiB, 1 * kMiB};
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(10);
    auto pool = testing::SmallPool(8);
    if (!pool) _exit(11);
    SinkOptions o;
    o.path = path;
    o.pool = pool.get();
    o.engine = engine;
    auto sink = Sink::Open(o);
    if (!sink.ok()) _exit(12);
    mempool::IoBuf data = PatternIoBuf(*pool, 256 * kKiB, 256 * kKiB, 1);
    for (int i = 0; i < 4; ++i) {
      if (!(*sink)->Write(i * 256 * kKiB, data).ok()) _exit(13);  // up to the limit: fine
    }
    Status st = (*sink)->Write(1 * kMiB, data);
    if (st.code() != StatusCode::kResourceExhausted) {
      fprintf(stderr, "write past RLIMIT_FSIZE: %s\n", st.ToString().c_str());
      _exit(14);
    }
    sink->reset();
    pool.reset();
    _exit(0);
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus)) << "child killed by signal " << WTERMSIG(wstatus);
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
}

// A really full file system: a 16 MiB ext4 image mounted through a loop
// device (needs root and mount permission; skipped otherwise).
TEST_P(NvmeSink, DiskFullIsResourceExhausted) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to loop-mount a small file system";
  const std::string img = dir_.File("small.img"), mnt = dir_.File("mnt");
  ASSERT_EQ(system(("truncate -s 16M " + img + " && mkdir -p " + mnt).c_str()), 0);
  if (system(("mkfs.ext4 -q -F -O ^has_journal " + img + " >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "mkfs.ext4 failed";
  }
  if (system(("mount -o loop " + img + " " + mnt + " 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "mount -o loop is not permitted here";
  }
  struct Unmount {
    std::string m;
    ~Unmount() { (void)!system(("umount " + m).c_str()); }
  } unmount{mnt};

  SinkOptions o;
  o.path = mnt + "/full.dat";
  o.pool = pool_.get();
  o.engine = GetParam();
  o.durability = Durability::kFdatasyncOnFlush;
  auto sink = Sink::Open(o);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  mempool::IoBuf data = PatternIoBuf(*pool_, 1 * kMiB, 1 * kMiB, 3);
  Status st;
  int written = 0;
  for (; written < 64; ++written) {  // 64 MiB into 16 MiB: must run out
    st = (*sink)->Write(static_cast<uint64_t>(written) * kMiB, data);
    if (!st.ok()) break;
  }
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  EXPECT_GT(written, 4);  // the first writes fit
  EXPECT_LT(written, 16);
  // The sink keeps working for what fits.
  EXPECT_TRUE((*sink)->Write(0, data).ok());
  EXPECT_TRUE((*sink)->Flush().ok());
}

// A block device (a loop device over a file in the temp dir): the rules come
// from BLKSSZGET, the size from BLKGETSIZE64, and I/O past the end is refused.
TEST_P(NvmeSink, BlockDevice) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for losetup";
  const std::string img = dir_.File("bdev.img");
  ASSERT_EQ(system(("truncate -s 8M " + img).c_str()), 0);
  FILE* p = popen(("losetup --find --show " + img + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char dev[128] = {0};
  const bool got = fgets(dev, sizeof dev, p) != nullptr;
  pclose(p);
  if (!got || dev[0] != '/') GTEST_SKIP() << "losetup is not permitted here";
  std::string device(dev);
  while (!device.empty() && (device.back() == '\n' || device.back() == ' ')) device.pop_back();
  struct Detach {
    std::string d;
    ~Detach() { (void)!system(("losetup -d " + d).c_str()); }
  } detach{device};

  SinkOptions o;
  o.path = device;
  o.pool = pool_.get();
  o.engine = GetParam();
  o.create = false;
  auto sink = Sink::Open(o);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  EXPECT_TRUE((*sink)->is_block_device());
  EXPECT_EQ((*sink)->device_bytes(), 8 * kMiB);
  EXPECT_EQ((*sink)->rules().source, RulesSource::kBlockDevice);
  mempool::IoBuf data = PatternIoBuf(*pool_, 256 * kKiB, 64 * kKiB, 77);
  ASSERT_TRUE((*sink)->Write(8 * kMiB - 256 * kKiB, data).ok());
  auto back = (*sink)->Read(8 * kMiB - 256 * kKiB, 256 * kKiB);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Crc32c(), data.Crc32c());
  EXPECT_EQ((*sink)->Write(8 * kMiB - 128 * kKiB, data).code(), StatusCode::kOutOfRange);
  EXPECT_EQ((*sink)->Read(8 * kMiB, 4 * kKiB).status().code(), StatusCode::kOutOfRange);
}

// The pool grows past what the fixed-buffer table holds (one slot here):
// the growth is not refused for it; the new arena's slabs go as WRITEV/READV
// and their bytes land as well as the fixed ones'.
TEST_P(NvmeSink, APoolArenaTheFixedTableCannotTakeStillGrowsThePool) {
  auto pool = testing::SmallPool(8);  // two arenas of 8 MiB at most
  ASSERT_NE(pool, nullptr);
  SinkOptions o = Options("grow.dat");
  o.pool = pool.get();
  o.fixed_buffer_slots = 1;
  auto sink = OpenSink(o);
  ASSERT_NE(sink, nullptr);
  const Status grown = pool->AddArena();
  ASSERT_TRUE(grown.ok()) << "the pool did not grow: " << grown.ToString();
  // 4 MiB slabs from both arenas, as many as they hold.
  std::vector<mempool::IoBuf> slabs;
  for (int i = 0; i < 8; ++i) {
    auto b = pool->Allocate(4 * kMiB);
    if (!b.ok()) break;
    testing::Fill(b->data(), b->size(), 20 + i);
    slabs.emplace_back(std::move(*b));
  }
  ASSERT_GE(slabs.size(), 2u);
  const auto before = sink->stats();
  for (size_t i = 0; i < slabs.size(); ++i) ASSERT_TRUE(sink->Write(i * 4 * kMiB, slabs[i]).ok()) << i;
  // Read back past the sink: the pool has no room left for its read slabs.
  const int fd = ::open(o.path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::vector<char> back(4 * kMiB);
  for (size_t i = 0; i < slabs.size(); ++i) {
    ASSERT_EQ(::pread(fd, back.data(), back.size(), static_cast<off_t>(i * 4 * kMiB)),
              static_cast<ssize_t>(back.size()));
    EXPECT_EQ(Crc32c(back.data(), back.size()), slabs[i].Crc32c()) << i;
  }
  ::close(fd);
  if (GetParam() != EngineChoice::kPsync) {
    EXPECT_GT(sink->stats().fixed_slices, before.fixed_slices) << "no slab of the first arena went as a fixed buffer";
    EXPECT_GT(sink->stats().vectored_slices, before.vectored_slices) << "no slab of the second arena went as WRITEV";
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, NvmeSink,
                         ::testing::Values(EngineChoice::kIoUring, EngineChoice::kPsync),
                         [](const auto& param_info) {
                           return param_info.param == EngineChoice::kIoUring ? std::string("io_uring")
                                                                       : std::string("psync");
                         });

TEST(NvmeSinkOpen, BadOptions) {
  SinkOptions o;
  o.path = "/tmp/x";
  EXPECT_EQ(Sink::Open(o).status().code(), StatusCode::kInvalidArgument);  // no pool
}

TEST(NvmeSinkOpen, AutoPicksAnEngineAndReportsRules) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = testing::SmallPool(8);
  ASSERT_NE(pool, nullptr);
  SinkOptions o;
  o.path = dir.File("auto.dat");
  o.pool = pool.get();
  auto sink = Sink::Open(o);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  const DeviceRules& r = (*sink)->rules();
  EXPECT_TRUE(ValidateRules(r).ok());
  EXPECT_NE(r.source, RulesSource::kCaller);
  // What the kernel reported here, for the log.
  std::printf("engine %s, rules %s\n", std::string(EngineKindName((*sink)->engine())).c_str(),
              r.ToString().c_str());
}

}  // namespace
}  // namespace hrpc::nvme
