// WalLog on real files opened O_DIRECT: appends replay in order after a
// reopen; a torn tail, a corrupt record (and all after it) and trailing
// garbage are cut off and the file truncated; a disk-full append (RLIMIT_FSIZE,
// in a child process) is rolled back and the log stays good; a reservation
// the disk cannot take is refused before anything is written.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/nvme/wal_log.h"
#include "nvme_test_util.h"

namespace hrpc::nvme {
namespace {

using testing::PatternIoBuf;
using testing::SmallPool;
using testing::TempDir;

struct Replayed {
  uint64_t sequence;
  std::string request;
  uint64_t bytes;
  uint32_t crc;
};

Result<std::unique_ptr<WalLog>> OpenLog(const std::string& path, mempool::Pool& pool, std::vector<Replayed>* out) {
  WalLogOptions o;
  o.path = path;
  o.pool = &pool;
  return WalLog::Open(o, [out](const WalRecordInfo& info, std::string_view request, mempool::IoBuf payload) {
    out->push_back({info.sequence, std::string(request), payload.size(), payload.Crc32c()});
    return Status::Ok();
  });
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Appends `n` records of (i+1) * 4 KiB payload, request "req-<i>"; returns their payload CRCs.
std::vector<uint32_t> AppendSome(WalLog& log, mempool::Pool& pool, int n, std::vector<uint64_t>* ends = nullptr) {
  std::vector<uint32_t> crcs;
  for (int i = 0; i < n; ++i) {
    mempool::IoBuf payload = PatternIoBuf(pool, (i + 1) * 4096, 8192, 100 + i);
    crcs.push_back(payload.Crc32c());
    mempool::ResetCopiedBytesThisThread();
    auto rec = log.Encode("req-" + std::to_string(i), std::move(payload));
    EXPECT_TRUE(rec.ok()) << rec.status().ToString();
    if (!rec.ok()) break;
    EXPECT_EQ(mempool::CopiedBytesThisThread(), 0u);
    EXPECT_TRUE(log.Append(*rec).ok());
    if (ends != nullptr) ends->push_back(log.end_offset());
  }
  return crcs;
}

// Runs `child` in a forked process whose files may not grow past `limit`
// bytes (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past it fails with EFBIG);
// its exit code: `child`'s result, 10 when the limit could not be set, -1
// when it did not exit normally.
int InLimitedChild(rlim_t limit, const std::function<int()>& child) {
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    rlimit lim{limit, limit};
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(10);
    _exit(child());
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return -1;
  return WEXITSTATUS(st);
}

// A new log at `path` with `n` records (AppendSome); their end offsets.
std::vector<uint64_t> FreshLog(const std::string& path, mempool::Pool& pool, int n) {
  std::vector<Replayed> none;
  auto log = OpenLog(path, pool, &none);
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  std::vector<uint64_t> ends;
  if (log.ok()) AppendSome(**log, pool, n, &ends);
  return ends;
}

TEST(NvmeWalLog, AppendsReplayInOrderAfterReopen) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = SmallPool();
  const std::string path = dir.File("a.wal");
  std::vector<uint32_t> crcs;
  {
    std::vector<Replayed> none;
    auto log = OpenLog(path, *pool, &none);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    EXPECT_TRUE(none.empty());
    crcs = AppendSome(**log, *pool, 5);
    // Every record: one 4 KiB head block + its payload; the head is all the CPU built.
    EXPECT_EQ((*log)->stats().records, 5u);
    EXPECT_EQ((*log)->stats().head_bytes_built, 5u * 4096);
    EXPECT_EQ((*log)->end_offset(), 5u * 4096 + (1 + 2 + 3 + 4 + 5) * 4096u);
  }
  EXPECT_EQ(FileSize(path), 16u << 20);  // preallocated ahead of the tail
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].sequence, i + 1);
    EXPECT_EQ(got[i].request, "req-" + std::to_string(i));
    EXPECT_EQ(got[i].bytes, (i + 1) * 4096);
    EXPECT_EQ(got[i].crc, crcs[i]);
  }
  EXPECT_EQ((*log)->recovery().cut_bytes, 0u);
  EXPECT_TRUE((*log)->recovery().cut_reason.empty());
  EXPECT_EQ((*log)->next_sequence(), 6u);
  // Appends continue after the replayed records.
  AppendSome(**log, *pool, 1);
  got.clear();
  log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok());
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got[5].sequence, 6u);
}

// A payload whose slice is legal on its own for O_DIRECT but does not start
// on a page (an inline attachment's shape) cannot follow the head block in one
// write (PRP): Encode() places it in fresh pages (counted), and the record
// appends and replays, instead of failing at Append after it was handed on.
TEST(NvmeWalLog, APayloadThatCannotFollowTheHeadBlockIsPlacedInFreshPages) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = SmallPool();
  const std::string path = dir.File("inline.wal");
  std::vector<Replayed> none;
  auto log = OpenLog(path, *pool, &none);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  const int fd = open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto rules = QueryDeviceRules(fd);
  close(fd);
  ASSERT_TRUE(rules.ok()) << rules.status().ToString();
  if (rules->mem_align >= rules->page || rules->logical_block > 4096) {
    GTEST_SKIP() << "no O_DIRECT-aligned address off a page here (" << rules->ToString() << ")";
  }
  mempool::IoBuf src = PatternIoBuf(*pool, 8192, 8192, 7);
  mempool::IoBuf payload(src.slice(0).Slice(rules->mem_align, 4096));
  ASSERT_TRUE(CheckScatterList(payload.Iovecs(), 0, *rules).ok()) << "the slice is not legal on its own";
  const uint32_t crc = payload.Crc32c();
  mempool::ResetCopiedBytesThisThread();
  auto rec = (*log)->Encode("inline", std::move(payload));
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(mempool::CopiedBytesThisThread(), 4096u);
  EXPECT_EQ((*log)->stats().payload_bytes_copied, 4096u);
  const Status appended = (*log)->Append(*rec);
  ASSERT_TRUE(appended.ok()) << appended.ToString();
  // A payload that can follow the head block is still not copied.
  AppendSome(**log, *pool, 1);
  EXPECT_EQ((*log)->stats().payload_bytes_copied, 4096u);
  log->reset();
  std::vector<Replayed> got;
  log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].request, "inline");
  EXPECT_EQ(got[0].bytes, 4096u);
  EXPECT_EQ(got[0].crc, crc);
}

// Appends grow the file ahead by fallocate; the zeroed space after the last
// record is the log's end on reopen (truncated, not counted as cut).
TEST(NvmeWalLog, PreallocatedSpaceIsTheEndNotACut) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = SmallPool();
  const std::string path = dir.File("prealloc.wal");
  uint64_t end = 0;
  {
    std::vector<Replayed> none;
    auto log = OpenLog(path, *pool, &none);
    ASSERT_TRUE(log.ok());
    AppendSome(**log, *pool, 3);
    end = (*log)->end_offset();
  }
  EXPECT_EQ(FileSize(path), 16u << 20);
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  EXPECT_EQ(got.size(), 3u);
  EXPECT_EQ((*log)->recovery().cut_bytes, 0u);
  EXPECT_TRUE((*log)->recovery().cut_reason.empty());
  EXPECT_EQ(FileSize(path), end);
}

TEST(NvmeWalLog, TornTailIsCutOff) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = SmallPool();
  const std::string path = dir.File("torn.wal");
  const std::vector<uint64_t> ends = FreshLog(path, *pool, 3);
  ASSERT_EQ(ends.size(), 3u);
  // A crash in the middle of the third record: its last 4 KiB never reached the disk.
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(ends[2] - 4096)), 0);
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  EXPECT_EQ(got.size(), 2u);
  EXPECT_EQ((*log)->recovery().valid_bytes, ends[1]);
  EXPECT_EQ((*log)->recovery().cut_bytes, ends[2] - 4096 - ends[1]);
  EXPECT_NE((*log)->recovery().cut_reason.find("torn"), std::string::npos) << (*log)->recovery().cut_reason;
  EXPECT_EQ(FileSize(path), ends[1]);
  EXPECT_EQ((*log)->next_sequence(), 3u);
}

TEST(NvmeWalLog, CorruptRecordAndEverythingAfterItIsCutOff) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = SmallPool();
  const std::string path = dir.File("corrupt.wal");
  const std::vector<uint64_t> ends = FreshLog(path, *pool, 4);
  ASSERT_EQ(ends.size(), 4u);
  // One flipped payload byte in record 2 (a bit rot or a torn page).
  const int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char c = 0;
  ASSERT_EQ(pread(fd, &c, 1, static_cast<off_t>(ends[0] + 4096 + 100)), 1);
  c ^= 0x40;
  ASSERT_EQ(pwrite(fd, &c, 1, static_cast<off_t>(ends[0] + 4096 + 100)), 1);
  close(fd);
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  EXPECT_EQ(got.size(), 1u);
  EXPECT_NE((*log)->recovery().cut_reason.find("payload crc"), std::string::npos) << (*log)->recovery().cut_reason;
  EXPECT_EQ(FileSize(path), ends[0]);
}

TEST(NvmeWalLog, GarbageAndZerosAfterTheLastRecordAreCutOff) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  auto pool = SmallPool();
  const std::string path = dir.File("garbage.wal");
  const std::vector<uint64_t> ends = FreshLog(path, *pool, 2);
  ASSERT_EQ(ends.size(), 2u);
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(ends[1])), 0);  // no preallocated space: junk right after
  for (const char fill : {'\0', 'x'}) {
    SCOPED_TRACE(static_cast<int>(fill));
    const int fd = open(path.c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    const std::string junk(8192 + 100, fill);
    ASSERT_EQ(write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
    close(fd);
    std::vector<Replayed> got;
    auto log = OpenLog(path, *pool, &got);
    ASSERT_TRUE(log.ok());
    EXPECT_EQ(got.size(), 2u);
    EXPECT_EQ((*log)->recovery().cut_bytes, junk.size());
    EXPECT_EQ(FileSize(path), ends[1]);
  }
}

// A child process with RLIMIT_FSIZE appends until the disk is "full": that
// append fails with RESOURCE_EXHAUSTED and is rolled back; the log still
// takes appends that fit and replays exactly the successful ones.
TEST(NvmeWalLog, DiskFullAppendIsRolledBack) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  const std::string path = dir.File("full.wal");
  const int code = InLimitedChild(64 * 4096, [&] {
    auto pool = SmallPool();
    std::vector<Replayed> none;
    auto log = OpenLog(path, *pool, &none);
    if (!log.ok()) return 11;
    int ok = 0;
    Status last;
    for (;;) {  // 5 blocks per record: the 13th would end past 64 blocks
      auto rec = (*log)->Encode("r", PatternIoBuf(*pool, 4 * 4096, 4096, ok));
      if (!rec.ok()) return 12;
      last = (*log)->Append(*rec);
      if (!last.ok()) break;
      ++ok;
    }
    if (last.code() != StatusCode::kResourceExhausted) return 13;
    if (FileSize(path) != ok * 5u * 4096) return 14;  // the partial record is gone
    // A small record still fits.
    auto small = (*log)->Encode("small", PatternIoBuf(*pool, 4096, 4096, 77));
    if (!small.ok() || !(*log)->Append(*small).ok()) return 15;
    return ok == 12 ? 0 : 16;
  });
  ASSERT_EQ(code, 0) << "the child's exit code names the step that failed";
  auto pool = SmallPool();
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  ASSERT_EQ(got.size(), 13u);
  EXPECT_EQ(got.back().request, "small");
  EXPECT_EQ((*log)->recovery().cut_bytes, 0u);
}

// Reservations add up: with room for 64 blocks, twelve records of 5 blocks
// are reserved before any is appended and the thirteenth is refused with
// RESOURCE_EXHAUSTED, writing nothing; the twelve then append, each using
// its part of the reservation, so 4 blocks are left to reserve and not 5.
TEST(NvmeWalLog, ReserveRefusesWhatTheDiskCannotTake) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  const std::string path = dir.File("reserve.wal");
  const int code = InLimitedChild(64 * 4096, [&] {
    auto pool = SmallPool();
    std::vector<Replayed> none;
    auto log = OpenLog(path, *pool, &none);
    if (!log.ok()) return 11;
    std::vector<mempool::IoBuf> records;
    for (int i = 0; i < 12; ++i) {
      auto rec = (*log)->Encode("r", PatternIoBuf(*pool, 4 * 4096, 4096, i));
      if (!rec.ok() || rec->size() != 5 * 4096) return 12;
      if (!(*log)->Reserve(rec->size()).ok()) return 13;
      records.push_back(std::move(*rec));
    }
    if ((*log)->Reserve(5 * 4096).code() != StatusCode::kResourceExhausted) return 14;
    if ((*log)->end_offset() != 0) return 15;
    for (const mempool::IoBuf& rec : records) {
      if (!(*log)->Append(rec).ok()) return 16;
    }
    if (FileSize(path) != 60 * 4096) return 17;
    if ((*log)->Reserve(5 * 4096).code() != StatusCode::kResourceExhausted) return 18;
    return (*log)->Reserve(4 * 4096).ok() ? 0 : 19;
  });
  ASSERT_EQ(code, 0) << "the child's exit code names the step that failed";
  auto pool = SmallPool();
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  EXPECT_EQ(got.size(), 12u);
  // The last reservation (4 zeroed blocks) is the log's end, not a cut.
  EXPECT_EQ((*log)->recovery().cut_bytes, 0u);
}

// An append that fails (here: a write past RLIMIT_FSIZE, lowered after the
// reservations were made) is rolled back without taking the reservations of
// the records behind it along: the file keeps the space they were promised,
// the next record takes the failed one's place, and the failed record never
// comes back at the next Open.
TEST(NvmeWalLog, AFailedAppendKeepsTheReservationsOfTheRecordsBehindIt) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  const std::string path = dir.File("rollback.wal");
  const int code = InLimitedChild(uint64_t{1} << 30, [&] {
    auto pool = SmallPool();
    std::vector<Replayed> none;
    auto log = OpenLog(path, *pool, &none);
    if (!log.ok()) return 11;
    auto a = (*log)->Encode("a", PatternIoBuf(*pool, 4 * 4096, 4096, 1));
    if (!a.ok() || a->size() != 5 * 4096 || !(*log)->Reserve(a->size()).ok()) return 12;
    auto b = (*log)->Encode("b", PatternIoBuf(*pool, 4 * 4096, 4096, 2));
    if (!b.ok() || !(*log)->Reserve(b->size()).ok()) return 13;
    if (FileSize(path) < 10 * 4096) return 14;
    rlimit low{2 * 4096, uint64_t{1} << 30};  // the write of `a` ends past it
    if (setrlimit(RLIMIT_FSIZE, &low) != 0) return 10;
    if ((*log)->Append(*a).ok()) return 15;
    rlimit back{uint64_t{1} << 30, uint64_t{1} << 30};
    if (setrlimit(RLIMIT_FSIZE, &back) != 0) return 10;
    if (!(*log)->broken().ok()) return 16;
    if ((*log)->end_offset() != 0) return 17;
    if (FileSize(path) < 5 * 4096) return 18;  // b's reservation: still in the file
    if (!(*log)->Append(*b).ok()) return 19;
    return (*log)->end_offset() == 5 * 4096 ? 0 : 20;
  });
  ASSERT_EQ(code, 0) << "the child's exit code names the step that failed";
  auto pool = SmallPool();
  std::vector<Replayed> got;
  auto log = OpenLog(path, *pool, &got);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  ASSERT_EQ(got.size(), 1u) << "the failed record came back, or b is lost";
  EXPECT_EQ(got[0].request, "b");
}

}  // namespace
}  // namespace hrpc::nvme
