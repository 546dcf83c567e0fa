// The replicated blockstore end to end: three real blockstore_server
// processes over TCP on loopback (a leader and two followers, fixed roles).
//  (a) 12 KiB and 1 MiB writes: every node's log and chunk file hold the same
//      bytes, no node's CPU copied a payload byte, the leader built one 4 KiB
//      head block per write and the followers none; unaligned writes are
//      INVALID_ARGUMENT and the cluster keeps serving;
//  (b) a follower SIGKILLed mid-stream: under --ack=all the next write fails
//      with UNAVAILABLE within its deadline; restarted, the follower replays
//      its log and every write it acknowledged reads back from it, and the
//      running leader reconnects to it (--ack=all writes succeed again); under
//      --ack=majority writes keep succeeding with a follower down;
//  (c) the leader SIGKILLed mid-stream (--durability=dsync): restarted, it
//      replays its log and every acknowledged write reads back from every node;
//  (d) a follower whose disk is full (RLIMIT_FSIZE): RESOURCE_EXHAUSTED to the
//      client, every acknowledged write still reads back, and the follower's
//      log replays with nothing cut.
// Built with REPLICATION_OVER_RDMA (replication_rdma_test, label rdma: run in
// the Soft-RoCE guest), (a) runs with every hop over rdma:// — payloads
// pulled by one-sided READ — and the other cases skip (they exercise the
// processes and the disk, which TCP covers; the emulated guest is slow).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iterator>
#include <thread>

#include "blockstore_test_util.h"
#include "hrpc/nvme/wal.h"
#ifdef REPLICATION_OVER_RDMA
#include "hrpc/transport/rdma.h"
#endif

namespace {

using namespace blockstore_test;

#ifdef REPLICATION_OVER_RDMA
// The rdma netdev's address: RXE_GUEST_ADDR in the guest, or HRPC_RDMA_TEST_ADDR.
std::string Host() {
  for (const char* v : {"HRPC_RDMA_TEST_ADDR", "RXE_GUEST_ADDR"}) {
    const char* a = std::getenv(v);
    if (a != nullptr && *a != '\0') return a;
  }
  return "";
}
const char* const kScheme = "rdma";
#define REPLICATION_SUITE ReplicationRdma
// The emulated guest is slow and its files are on 9p: fewer, smaller.
constexpr int kWritesPerSize = 2;
const char* const kDiskSize = "4M";
// Why this case cannot run here ("" when it can).
std::string SkipReason(bool tcp_only) {
  if (tcp_only) return "a process/disk fault case: runs over TCP (replication_test, label integration)";
  if (!hrpc::transport::RdmaDeviceAvailable()) return "no RDMA device (run inside ../shared/rxe/run-in-rxe-guest.sh)";
  if (Host().empty()) return "RDMA device found but no address: set HRPC_RDMA_TEST_ADDR";
  return "";
}
#else
std::string Host() { return "127.0.0.1"; }
const char* const kScheme = "tcp";
#define REPLICATION_SUITE Replication
constexpr int kWritesPerSize = 6;
const char* const kDiskSize = "16M";
std::string SkipReason(bool) { return ""; }
#endif

#define SKIP_UNLESS_RUNNABLE(tcp_only)                         \
  do {                                                         \
    const std::string why_ = SkipReason(tcp_only);             \
    if (!why_.empty()) GTEST_SKIP() << why_;                   \
  } while (0)

// A loopback port free right now (the followers keep theirs across restarts).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(a.sin_port);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A leader and two followers on files of one temporary directory.
class Cluster {
 public:
  explicit Cluster(std::string ack, std::string durability = "dsync") : ack_(std::move(ack)), durability_(std::move(durability)) {
    for (int i = 0; i < 2; ++i) follower_ports_[i] = FreePort();
  }
  ~Cluster() {
    for (Child& c : followers_) Stop(c, SIGKILL);
    Stop(leader_, SIGKILL);
  }

  std::string Disk(int node) const { return dir_.File("node" + std::to_string(node) + ".img"); }
  std::string Log(int node) const { return Disk(node) + ".wal"; }
  std::string FollowerUri(int i) const {
    return std::string(kScheme) + "://" + Host() + ":" + std::to_string(follower_ports_[i]);
  }

  std::vector<std::string> NodeArgs(int node, const std::string& size) const {
    return {"--file=" + Disk(node), "--size=" + size, "--durability=" + durability_, "--log=warn"};
  }
  // Follower i (node i + 1), on its fixed port; `fsize` > 0: RLIMIT_FSIZE.
  bool StartFollower(int i, const std::string& size = "16M", rlim_t fsize = 0) {
    auto args = NodeArgs(i + 1, size);
    args.push_back("--role=follower");
    args.push_back("--listen=" + FollowerUri(i));
    followers_[i] = StartServer(args, fsize);
    return !followers_[i].uri.empty();
  }
  // `fsize` > 0: RLIMIT_FSIZE.
  bool StartLeader(const std::string& size = "16M", const std::string& ack = "", rlim_t fsize = 0) {
    auto args = NodeArgs(0, size);
    args.push_back("--role=leader");
    args.push_back("--followers=" + FollowerUri(0) + "," + FollowerUri(1));
    args.push_back("--ack=" + (ack.empty() ? ack_ : ack));
    args.push_back("--listen=" + std::string(kScheme) + "://" + Host() + ":0");
    args.push_back("--replicate_timeout_ms=3000");
    leader_ = StartServer(args, fsize);
    return !leader_.uri.empty();
  }
  bool StartAll(const std::string& size = "16M") { return StartFollower(0, size) && StartFollower(1, size) && StartLeader(size); }

  std::string ODirectProblem() const { return dir_.ODirectProblem(); }
  std::string FallocateProblem() const { return dir_.FallocateProblem(); }
  Child& leader() { return leader_; }
  Child& follower(int i) { return followers_[i]; }

 private:
  TempFile dir_;
  std::string ack_, durability_;
  int follower_ports_[2] = {0, 0};
  Child followers_[2];
  Child leader_;
};

TEST(REPLICATION_SUITE, ThreeNodesHoldTheSameBytesWithoutCopies) {
  SKIP_UNLESS_RUNNABLE(false);
  Cluster cluster("all");
  if (const std::string why = cluster.ODirectProblem(); !why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(cluster.StartAll(kDiskSize));
  auto leader = Connect(cluster.leader().uri);
  std::unique_ptr<hrpc::RpcChannel> nodes[3] = {Connect(cluster.leader().uri), Connect(cluster.follower(0).uri),
                                                Connect(cluster.follower(1).uri)};
  hrpc_blockstore::StatResponse before[3];
  for (int n = 0; n < 3; ++n) {
    auto st = Stat(*nodes[n]);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    before[n] = *st;
  }
  EXPECT_EQ(before[0].replication().role(), "leader");
  EXPECT_EQ(before[1].replication().role(), "follower");

  uint64_t off = 0, writes = 0;
  std::vector<std::pair<uint64_t, size_t>> written;
  for (size_t n : {size_t{12} << 10, size_t{1} << 20}) {
    for (int i = 0; i < kWritesPerSize; ++i, ++writes, off += n) {
      hrpc::Status s = Write(*leader, off, n, 21);
      ASSERT_TRUE(s.ok()) << n << " at " << off << ": " << s.ToString();
      written.emplace_back(off, n);
    }
  }
  for (int n = 0; n < 3; ++n) {
    SCOPED_TRACE(n);
    for (auto [o, len] : written) EXPECT_TRUE(ReadCheck(*nodes[n], o, len, 21).ok()) << o;  // every node, same data
    auto st = Stat(*nodes[n]);
    ASSERT_TRUE(st.ok());
    const auto& r = st->replication();
    EXPECT_EQ(st->copied_bytes() - before[n].copied_bytes(), 0u) << "a payload byte was copied";
    EXPECT_EQ(r.log_records() - before[n].replication().log_records(), writes);
    EXPECT_EQ(r.applied_bytes(), off);
    const uint64_t head = r.head_bytes_built() - before[n].replication().head_bytes_built();
    EXPECT_LE(head, 4096 * writes);
    if (n == 0) EXPECT_EQ(head, 4096 * writes);  // one head block per write, on the leader only
    else EXPECT_EQ(head, 0u);
  }
  // Unaligned writes: rejected, nothing written, still serving.
  EXPECT_EQ(Write(*leader, 100, 4096, 1).code(), hrpc::StatusCode::kInvalidArgument);
  EXPECT_EQ(Write(*leader, off, 4096, 1, 4000).code(), hrpc::StatusCode::kInvalidArgument);
  EXPECT_EQ(Write(*leader, off, 4096, 1, 1536).code(), hrpc::StatusCode::kInvalidArgument);  // 512-aligned, not a log block
  auto st = Stat(*nodes[1]);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->replication().log_records(), writes);
  ASSERT_TRUE(Write(*leader, off, 8192, 22).ok());
  EXPECT_TRUE(ReadCheck(*leader, off, 8192, 22).ok());

  // Byte for byte: the followers' logs are the leader's, and so are the chunk files.
  nodes[0].reset();
  nodes[1].reset();
  nodes[2].reset();
  leader.reset();
  Stop(cluster.leader(), SIGTERM);
  Stop(cluster.follower(0), SIGTERM);
  Stop(cluster.follower(1), SIGTERM);
  const std::string log0 = Slurp(cluster.Log(0)), disk0 = Slurp(cluster.Disk(0));
  EXPECT_GE(log0.size(), off + 4096 * writes);
  for (int n = 1; n < 3; ++n) {
    EXPECT_TRUE(Slurp(cluster.Log(n)) == log0) << "node " << n << "'s log differs from the leader's";
    EXPECT_TRUE(Slurp(cluster.Disk(n)) == disk0) << "node " << n << "'s chunk file differs from the leader's";
  }
}

// Streams 64 KiB writes at increasing offsets until one fails or `stop`;
// records the acknowledged offsets, the first failure and how long it took.
// With `hold_at` set, it waits after that many acknowledged writes until
// Resume() (so a test can kill a node knowing the stream has not ended).
struct Stream {
  static constexpr size_t kBlock = 64 << 10;
  std::vector<uint64_t> acked;
  std::atomic<size_t> count{0};
  hrpc::Status failure;
  std::chrono::milliseconds failure_took{0};
  std::atomic<bool> stop{false};
  size_t hold_at = SIZE_MAX;
  // Times through [first, limit): a rewrite is the same bytes (a block's
  // bytes depend only on its offset and the seed).
  int passes = 1;
  std::atomic<bool> resumed{false};
  std::thread thread;

  void Resume() { resumed.store(true); }

  void Start(const std::string& uri, uint64_t first, uint64_t limit, uint64_t seed) {
    thread = std::thread([=, this] {
      int passes_left = passes;
      auto ch = Connect(uri);
      if (ch == nullptr || first + kBlock > limit) return;
      for (uint64_t off = first; !stop.load(); off += kBlock) {
        if (off + kBlock > limit) {
          if (--passes_left == 0) return;
          off = first;
        }
        const auto t0 = std::chrono::steady_clock::now();
        hrpc::Status s = Write(*ch, off, kBlock, seed);
        if (!s.ok()) {
          failure = s;
          failure_took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
          return;
        }
        acked.push_back(off);
        count.store(acked.size(), std::memory_order_release);
        if (acked.size() == hold_at) {
          while (!resumed.load() && !stop.load()) std::this_thread::sleep_for(1ms);
        }
      }
    });
  }
  bool WaitFor(size_t n) {
    const auto give_up = std::chrono::steady_clock::now() + 30s;
    while (count.load(std::memory_order_acquire) < n && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(1ms);
    }
    return count.load(std::memory_order_acquire) >= n;
  }
  void Join() {
    if (thread.joinable()) thread.join();
  }
};

TEST(REPLICATION_SUITE, FollowerKilledMidStream) {
  SKIP_UNLESS_RUNNABLE(true);
  Cluster cluster("all", "none");
  ASSERT_TRUE(cluster.StartAll("32M"));
  // --ack=all: a write that needs the dead follower fails with UNAVAILABLE within the replicate deadline (3 s).
  Stream s1;
  s1.hold_at = 20;
  s1.Start(cluster.leader().uri, 0, 16 << 20, 31);
  ASSERT_TRUE(s1.WaitFor(20));
  Stop(cluster.follower(0), SIGKILL);
  s1.Resume();
  s1.Join();
  ASSERT_FALSE(s1.failure.ok()) << "the stream finished before the kill";
  EXPECT_EQ(s1.failure.code(), hrpc::StatusCode::kUnavailable) << s1.failure.ToString();
  EXPECT_LT(s1.failure_took, 4s) << "the failure must come within the replicate deadline";

  // Restarted on its files, the follower replays its log: every write it
  // acknowledged (all of them, under --ack=all) reads back from it.
  ASSERT_TRUE(cluster.StartFollower(0, "32M"));
  {
    auto f = Connect(cluster.follower(0).uri);
    auto st = Stat(*f);
    ASSERT_TRUE(st.ok());
    EXPECT_GE(st->replication().replayed_records(), s1.acked.size());
    for (uint64_t off : s1.acked) {
      hrpc::Status s = ReadCheck(*f, off, Stream::kBlock, 31);
      ASSERT_TRUE(s.ok()) << "acknowledged write at " << off << ": " << s.ToString();
    }
  }

  // The leader reconnects to the restarted follower: --ack=all writes succeed again.
  {
    auto leader = Connect(cluster.leader().uri);
    hrpc::Status again = Write(*leader, 16 << 20, Stream::kBlock, 33);
    ASSERT_TRUE(again.ok()) << again.ToString();
    auto f = Connect(cluster.follower(0).uri);
    EXPECT_TRUE(ReadCheck(*f, 16 << 20, Stream::kBlock, 33).ok());
  }

  // --ack=majority: the leader restarted with it keeps acknowledging with a follower gone.
  Stop(cluster.leader(), SIGTERM);
  ASSERT_TRUE(cluster.StartLeader("32M", "majority"));
  Stream s2;
  s2.hold_at = 10;
  s2.Start(cluster.leader().uri, (16 << 20) + Stream::kBlock, 32 << 20, 32);
  ASSERT_TRUE(s2.WaitFor(10));
  Stop(cluster.follower(1), SIGKILL);
  const size_t at_kill = s2.count.load();
  s2.Resume();
  EXPECT_TRUE(s2.WaitFor(at_kill + 20)) << "writes stopped with one follower down: " << s2.failure.ToString();
  s2.stop = true;
  s2.Join();
  EXPECT_TRUE(s2.failure.ok()) << s2.failure.ToString();
  auto leader = Connect(cluster.leader().uri);
  for (uint64_t off : s2.acked) ASSERT_TRUE(ReadCheck(*leader, off, Stream::kBlock, 32).ok()) << off;
}

TEST(REPLICATION_SUITE, LeaderKilledMidStreamAckedWritesSurvive) {
  SKIP_UNLESS_RUNNABLE(true);
  Cluster cluster("all", "dsync");
  ASSERT_TRUE(cluster.StartAll("32M"));
  Stream s;
  s.passes = 8;  // still writing when the kill comes, however late this thread runs
  s.Start(cluster.leader().uri, 0, 32 << 20, 41);
  ASSERT_TRUE(s.WaitFor(20));
  Stop(cluster.leader(), SIGKILL);
  s.Join();
  ASSERT_FALSE(s.failure.ok()) << "the stream finished before the kill";
  ASSERT_TRUE(cluster.StartLeader("32M"));
  std::unique_ptr<hrpc::RpcChannel> nodes[3] = {Connect(cluster.leader().uri), Connect(cluster.follower(0).uri),
                                                Connect(cluster.follower(1).uri)};
  auto st = Stat(*nodes[0]);
  ASSERT_TRUE(st.ok());
  EXPECT_GE(st->replication().replayed_records(), s.acked.size());
  std::vector<uint64_t> offsets = s.acked;
  std::sort(offsets.begin(), offsets.end());
  offsets.erase(std::unique(offsets.begin(), offsets.end()), offsets.end());
  for (int n = 0; n < 3; ++n) {
    for (uint64_t off : offsets) {
      hrpc::Status r = ReadCheck(*nodes[n], off, Stream::kBlock, 41);
      ASSERT_TRUE(r.ok()) << "node " << n << ", acknowledged write at " << off << ": " << r.ToString();
    }
  }
  // The restarted leader takes writes again.
  EXPECT_TRUE(Write(*nodes[0], 0, 4096, 42).ok());
}

// A follower applies a leader's records in the order it forwarded them, not
// in the order their calls happen to finish: a record whose predecessor is
// still on its way waits for it, one that a later record overtook is refused
// (never written over newer data), and one whose predecessor never comes goes
// on without it. The test plays the leader.
TEST(REPLICATION_SUITE, AFollowerAppliesRecordsInTheLeadersOrder) {
  SKIP_UNLESS_RUNNABLE(true);
  Cluster cluster("all");
  if (const std::string why = cluster.ODirectProblem(); !why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(cluster.StartFollower(0, kDiskSize));
  auto f = Connect(cluster.follower(0).uri);
  ASSERT_NE(f, nullptr);
  hrpc_blockstore::BlockReplica::Stub stub(f.get());
  constexpr size_t kBlock = 4096;
  struct Sent {
    hrpc::ClientContext ctx;
    hrpc_blockstore::ReplicateRequest req;
    hrpc_blockstore::ReplicateResponse resp;
  };
  // Record `seq` writes pattern `seq` to block 0.
  auto send = [&](uint64_t run, uint64_t seq, uint64_t prev, std::chrono::milliseconds timeout) {
    auto s = std::make_shared<Sent>();
    s->ctx.set_timeout(timeout);
    auto buf = f->pool().Allocate(kBlock);
    EXPECT_TRUE(buf.ok());
    FillPattern(buf->data(), 0, kBlock, seq);
    hrpc_blockstore::WriteBlocksRequest w;
    w.set_offset(0);
    auto record = hrpc::nvme::EncodeWalRecord(f->pool(), seq, w.SerializeAsString(),
                                              hrpc::mempool::IoBuf(buf->Slice(0, kBlock)), 4096);
    EXPECT_TRUE(record.ok()) << record.status().ToString();
    s->ctx.request_attachment() = std::move(*record);
    s->req.set_sequence(seq);
    s->req.set_prev_sequence(prev);
    s->req.set_leader_run(run);
    return std::make_pair(s, stub.ReplicateFuture(s->ctx, s->req));
  };
  // 1; then 3 (after 2), which waits; then 2: both land, 3 last.
  ASSERT_TRUE(send(77, 1, 0, 10s).second.Get().ok());
  auto [s3, third] = send(77, 3, 2, 10s);
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(third.IsReady()) << "record 3 did not wait for record 2";
  auto second = send(77, 2, 1, 10s).second.Get();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  auto r3 = third.WaitFor(10s);
  ASSERT_TRUE(r3.ok()) << r3.status().ToString();
  EXPECT_TRUE(ReadCheck(*f, 0, kBlock, 3).ok());
  // 3 again, overtaken by itself: refused.
  EXPECT_EQ(send(77, 3, 2, 10s).second.Get().status().code(), hrpc::StatusCode::kFailedPrecondition);
  // Another leader run, whose record 7 arrives before its record 6: 6 is refused.
  ASSERT_TRUE(send(88, 7, 6, 10s).second.Get().ok());
  auto late = send(88, 6, 5, 10s).second.Get();
  EXPECT_EQ(late.status().code(), hrpc::StatusCode::kFailedPrecondition) << late.status().ToString();
  EXPECT_TRUE(ReadCheck(*f, 0, kBlock, 7).ok()) << "an older record was written over a newer one";
  // 9 after an 8 that never comes: it goes on (within its deadline), and 10 right after it.
  auto ninth = send(88, 9, 8, 2s).second.Get();
  ASSERT_TRUE(ninth.ok()) << ninth.status().ToString();
  ASSERT_TRUE(send(88, 10, 9, 10s).second.Get().ok());
  EXPECT_TRUE(ReadCheck(*f, 0, kBlock, 10).ok());
  // A record waiting for its predecessor when the leader restarts (a new run
  // starts at 31 after 30): its run is over, it is refused.
  ASSERT_TRUE(send(99, 30, 29, 10s).second.Get().ok());
  auto [s32, waiting] = send(99, 32, 31, 10s);
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(send(100, 31, 30, 10s).second.Get().ok());
  auto stale = waiting.WaitFor(10s);
  EXPECT_EQ(stale.status().code(), hrpc::StatusCode::kFailedPrecondition) << stale.status().ToString();
  EXPECT_TRUE(ReadCheck(*f, 0, kBlock, 31).ok());
  auto st = Stat(*f);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->replication().order_waits(), 3u);
  EXPECT_EQ(st->replication().order_gaps(), 1u);
  EXPECT_EQ(st->replication().order_refused(), 3u);
  EXPECT_EQ(st->replication().log_records(), 8u);
}

// A write outside the volume is refused before anything is logged (a record
// the chunk file cannot take would fail its replay at every restart), and
// CopyChunk, which would write the chunk file past the log, is refused on a
// replicated node: every node restarts on its files and the data is there.
TEST(REPLICATION_SUITE, WritesOutsideTheVolumeAndPastTheLogAreRefused) {
  SKIP_UNLESS_RUNNABLE(true);
  Cluster cluster("all");
  ASSERT_TRUE(cluster.StartAll("16M"));
  auto leader = Connect(cluster.leader().uri);
  ASSERT_TRUE(Write(*leader, 0, Stream::kBlock, 61).ok());
  for (uint64_t off : {uint64_t{16} << 20, uint64_t{0xFFFFFFFFFFFF0000}}) {
    const hrpc::Status s = Write(*leader, off, Stream::kBlock, 62);
    EXPECT_EQ(s.code(), hrpc::StatusCode::kOutOfRange) << off << ": " << s.ToString();
  }
  {
    hrpc_blockstore::BlockStreams::Stub streams(leader.get());
    hrpc::ClientContext ctx;
    ctx.set_timeout(10s);
    hrpc_blockstore::CopyChunkResponse resp;
    auto writer = streams.CopyChunk(ctx, &resp);
    auto buf = leader->pool().Allocate(Stream::kBlock);
    ASSERT_TRUE(buf.ok());
    hrpc_blockstore::CopyChunkRequest req;
    req.set_offset(0);
    writer->Write(req, hrpc::mempool::IoBuf(std::move(*buf)));
    EXPECT_EQ(writer->Finish().code(), hrpc::StatusCode::kFailedPrecondition);
  }
  leader.reset();
  Stop(cluster.leader(), SIGTERM);
  Stop(cluster.follower(0), SIGTERM);
  Stop(cluster.follower(1), SIGTERM);
  ASSERT_TRUE(cluster.StartAll("16M")) << "a node did not restart on its files";
  std::unique_ptr<hrpc::RpcChannel> nodes[3] = {Connect(cluster.leader().uri), Connect(cluster.follower(0).uri),
                                                Connect(cluster.follower(1).uri)};
  for (int n = 0; n < 3; ++n) {
    const hrpc::Status r = ReadCheck(*nodes[n], 0, Stream::kBlock, 61);
    EXPECT_TRUE(r.ok()) << "node " << n << ": " << r.ToString();
  }
}

// Writes 64 KiB blocks of `pattern` from offset 0 through a 4 MiB volume
// until one is refused; the offsets acknowledged before it, and its status
// (OK when none was refused).
hrpc::Status WriteUntilRefused(hrpc::RpcChannel& leader, int pattern, std::vector<uint64_t>* acked) {
  for (uint64_t off = 0; off + Stream::kBlock <= (4u << 20); off += Stream::kBlock) {
    const hrpc::Status s = Write(leader, off, Stream::kBlock, pattern);
    if (!s.ok()) return s;
    acked->push_back(off);
  }
  return hrpc::Status::Ok();
}

TEST(REPLICATION_SUITE, DiskFullFollowerIsResourceExhausted) {
  SKIP_UNLESS_RUNNABLE(true);
  Cluster cluster("all", "none");
  // Follower 0's files may not grow past 4 MiB: its chunk file is 4 MiB from
  // the start, so its log fills up after about 60 writes of 64 KiB.
  ASSERT_TRUE(cluster.StartFollower(0, "4M", 4 << 20));
  ASSERT_TRUE(cluster.StartFollower(1, "4M"));
  ASSERT_TRUE(cluster.StartLeader("4M"));
  auto leader = Connect(cluster.leader().uri);
  std::vector<uint64_t> acked;
  const hrpc::Status full = WriteUntilRefused(*leader, 51, &acked);
  ASSERT_FALSE(full.ok()) << "the follower's disk never filled up";
  EXPECT_EQ(full.code(), hrpc::StatusCode::kResourceExhausted) << full.ToString();
  EXPECT_GE(acked.size(), 50u);
  // Nothing corrupted: every acknowledged write reads back from the leader and the full follower.
  auto f = Connect(cluster.follower(0).uri);
  for (uint64_t off : acked) {
    ASSERT_TRUE(ReadCheck(*leader, off, Stream::kBlock, 51).ok()) << off;
    ASSERT_TRUE(ReadCheck(*f, off, Stream::kBlock, 51).ok()) << off;
  }
  int st = 0;
  EXPECT_EQ(waitpid(cluster.follower(0).pid, &st, WNOHANG), 0) << "the full follower died";
  // Its log holds exactly the acknowledged records: replayed with nothing cut.
  f.reset();
  Stop(cluster.follower(0), SIGTERM);
  ASSERT_TRUE(cluster.StartFollower(0, "4M"));
  f = Connect(cluster.follower(0).uri);
  auto stat = Stat(*f);
  ASSERT_TRUE(stat.ok());
  EXPECT_EQ(stat->replication().replayed_records(), acked.size());
  EXPECT_EQ(stat->replication().cut_bytes(), 0u);
}

// The leader's own disk fills up: the write whose record it has no room for
// fails, and so does every later one, before any follower gets its record (a
// follower applying writes the leader never logged would hold data the client
// was told was not written).
TEST(REPLICATION_SUITE, ALeaderWhoseLogBrokeForwardsNothing) {
  SKIP_UNLESS_RUNNABLE(true);
  Cluster cluster("all", "none");
  // The leader reserves a record's room with fallocate; without it the append finds out.
  if (const std::string why = cluster.FallocateProblem(); !why.empty()) GTEST_SKIP() << why;
  ASSERT_TRUE(cluster.StartFollower(0, "4M"));
  ASSERT_TRUE(cluster.StartFollower(1, "4M"));
  ASSERT_TRUE(cluster.StartLeader("4M", "", 4 << 20));
  auto leader = Connect(cluster.leader().uri);
  std::vector<uint64_t> acked;
  const hrpc::Status full = WriteUntilRefused(*leader, 71, &acked);
  ASSERT_FALSE(full.ok()) << "the leader's disk never filled up";
  EXPECT_EQ(full.code(), hrpc::StatusCode::kResourceExhausted) << full.ToString();
  EXPECT_GE(acked.size(), 50u);
  auto f0 = Connect(cluster.follower(0).uri);
  auto f1 = Connect(cluster.follower(1).uri);
  auto before0 = Stat(*f0), before1 = Stat(*f1), leader_stat = Stat(*leader);
  ASSERT_TRUE(before0.ok() && before1.ok() && leader_stat.ok());
  // Not even the write that found the disk full reached them.
  EXPECT_EQ(before0->replication().log_records(), leader_stat->replication().log_records());
  EXPECT_EQ(before1->replication().log_records(), leader_stat->replication().log_records());
  for (int i = 0; i < 3; ++i) {
    const hrpc::Status again = Write(*leader, 0, Stream::kBlock, 72);
    EXPECT_FALSE(again.ok()) << "write " << i << " after the log broke was acknowledged";
  }
  auto after0 = Stat(*f0), after1 = Stat(*f1);
  ASSERT_TRUE(after0.ok() && after1.ok());
  EXPECT_EQ(after0->replication().log_records(), before0->replication().log_records())
      << "follower 0 logged records its leader refused";
  EXPECT_EQ(after1->replication().log_records(), before1->replication().log_records())
      << "follower 1 logged records its leader refused";
  EXPECT_EQ(after0->replication().applied_bytes(), before0->replication().applied_bytes());
  // The leader still serves what it acknowledged.
  for (uint64_t off : acked) ASSERT_TRUE(ReadCheck(*leader, off, Stream::kBlock, 71).ok()) << off;
  int st = 0;
  EXPECT_EQ(waitpid(cluster.leader().pid, &st, WNOHANG), 0) << "the leader died";
}

}  // namespace
