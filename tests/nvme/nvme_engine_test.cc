// The syscall level: io_uring and psync engines on an O_DIRECT file, with
// plain aligned memory (no pool, no scheduler).
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/nvme/io_engine.h"
#include "nvme_test_util.h"

namespace hrpc::nvme {
namespace {

using testing::TempDir;
using testing::Aligned;

struct Waitable {
  IoRequest req;
  bool done = false;
  static void Done(IoRequest*, void* arg) { static_cast<Waitable*>(arg)->done = true; }
  Waitable() {
    req.done = &Done;
    req.arg = this;
  }
};

Status RunIo(IoEngine& e, Waitable& w) {
  w.done = false;
  HRPC_TRY(e.Submit(&w.req));
  while (!w.done) {
    if (e.Reap(true) < 0) return InternalError("reap failed");
  }
  return w.req.status;
}

class NvmeEngine : public ::testing::TestWithParam<EngineKind> {
 protected:
  void SetUp() override {
    HRPC_NVME_REQUIRE_ODIRECT(dir_);
    fd_ = open(dir_.File("engine.dat").c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
    ASSERT_GE(fd_, 0) << strerror(errno);
    if (GetParam() == EngineKind::kIoUring) {
      EngineOptions o;
      o.queue_depth = 2;  // small, so multi-SQE requests go through the backlog
      o.fixed_buffer_slots = 4;
      auto e = CreateUringEngine(o);
      if (!e.ok()) GTEST_SKIP() << "io_uring unavailable: " << e.status().ToString();
      engine_ = std::move(e).value();
    } else {
      engine_ = CreatePsyncEngine();
    }
  }
  void TearDown() override {
    engine_.reset();
    if (fd_ >= 0) close(fd_);
  }

  TempDir dir_;
  int fd_ = -1;
  std::unique_ptr<IoEngine> engine_;
};

TEST_P(NvmeEngine, VectoredRoundTrip) {
  Aligned src(3 * 65536), dst(3 * 65536);
  testing::Fill(src.data, src.size, 11);
  std::memset(dst.data, 0, dst.size);
  // Three elements written, read back as two.
  std::vector<iovec> w = {{src.data, 65536}, {src.data + 65536, 65536}, {src.data + 131072, 65536}};
  Waitable wr;
  wr.req.opcode = IoOpcode::kWrite;
  wr.req.fd = fd_;
  wr.req.offset = 1 << 20;
  wr.req.iov = w;
  ASSERT_TRUE(RunIo(*engine_, wr).ok()) << wr.req.status.ToString();
  EXPECT_EQ(wr.req.bytes, src.size);

  std::vector<iovec> r = {{dst.data, 4096}, {dst.data + 4096, dst.size - 4096}};
  Waitable rd;
  rd.req.opcode = IoOpcode::kRead;
  rd.req.fd = fd_;
  rd.req.offset = 1 << 20;
  rd.req.iov = r;
  ASSERT_TRUE(RunIo(*engine_, rd).ok()) << rd.req.status.ToString();
  EXPECT_EQ(rd.req.bytes, dst.size);
  EXPECT_EQ(std::memcmp(src.data, dst.data, src.size), 0);
  EXPECT_EQ(engine_->outstanding(), 0u);
}

TEST_P(NvmeEngine, FixedBuffersAndBacklog) {
  Aligned region(1 << 20);
  auto idx = engine_->RegisterFixedBuffer(region.data, region.size);
  if (GetParam() == EngineKind::kPsync) {
    EXPECT_EQ(idx.status().code(), StatusCode::kUnimplemented);
    return;
  }
  ASSERT_TRUE(idx.ok()) << idx.status().ToString();
  EXPECT_TRUE(engine_->FixedContains(*idx, region.data + 4096, 8192));
  EXPECT_FALSE(engine_->FixedContains(*idx, region.data + region.size - 4096, 8192));
  EXPECT_FALSE(engine_->FixedContains(*idx + 1, region.data, 4096));

  // Six fixed elements with queue depth 2: six SQEs, started as slots free.
  testing::Fill(region.data, 6 * 16384, 5);
  std::vector<iovec> iov;
  std::vector<int32_t> fixed;
  for (int i = 0; i < 6; ++i) {
    iov.push_back({region.data + i * 16384, 16384});
    fixed.push_back(static_cast<int32_t>(*idx));
  }
  Waitable wr;
  wr.req.opcode = IoOpcode::kWrite;
  wr.req.fd = fd_;
  wr.req.offset = 0;
  wr.req.iov = iov;
  wr.req.fixed = fixed;
  // And a second request queued behind it.
  Waitable wr2;
  wr2.req = wr.req;
  wr2.req.done = &Waitable::Done;
  wr2.req.arg = &wr2;
  wr2.req.offset = 6 * 16384;
  ASSERT_TRUE(engine_->Submit(&wr.req).ok());
  ASSERT_TRUE(engine_->Submit(&wr2.req).ok());
  EXPECT_EQ(engine_->outstanding(), 2u);
  while (!wr.done || !wr2.done) ASSERT_GE(engine_->Reap(true), 0);
  ASSERT_TRUE(wr.req.status.ok()) << wr.req.status.ToString();
  ASSERT_TRUE(wr2.req.status.ok()) << wr2.req.status.ToString();
  EXPECT_EQ(wr.req.bytes, 6u * 16384);

  // Read both back with READ_FIXED into the second half of the region.
  char* back = region.data + (region.size / 2);
  std::vector<iovec> riov = {{back, 12 * 16384}};
  std::vector<int32_t> rfixed = {static_cast<int32_t>(*idx)};
  Waitable rd;
  rd.req.opcode = IoOpcode::kRead;
  rd.req.fd = fd_;
  rd.req.offset = 0;
  rd.req.iov = riov;
  rd.req.fixed = rfixed;
  ASSERT_TRUE(RunIo(*engine_, rd).ok()) << rd.req.status.ToString();
  EXPECT_EQ(std::memcmp(back, region.data, 6 * 16384), 0);
  EXPECT_EQ(std::memcmp(back + 6 * 16384, region.data, 6 * 16384), 0);
  engine_->UnregisterFixedBuffer(*idx);
  EXPECT_FALSE(engine_->FixedContains(*idx, region.data, 4096));
}

// The eventfd a scheduler polls: readable once a completion is waiting, and
// not readable any more after Reap delivered it (a stale count would keep an
// idle worker waking). Non-blocking Reaps that find nothing deliver nothing.
TEST_P(NvmeEngine, EventFdSignalsCompletionsAndIsDrainedByReap) {
  auto fd = engine_->EventFd();
  if (GetParam() == EngineKind::kPsync) {
    EXPECT_FALSE(fd.ok() && *fd >= 0);
    return;
  }
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  auto readable = [&](int timeout_ms) {
    pollfd p{*fd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
  };
  Aligned buf(65536);
  testing::Fill(buf.data, buf.size, 3);
  std::vector<iovec> v = {{buf.data, buf.size}};
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Waitable w;
    w.req.opcode = IoOpcode::kWrite;
    w.req.fd = fd_;
    w.req.offset = 0;
    w.req.iov = v;
    ASSERT_TRUE(engine_->Submit(&w.req).ok());
    // The eventfd is signalled after the CQE is posted: once readable, one
    // non-blocking Reap delivers the completion.
    ASSERT_TRUE(readable(10000)) << "no eventfd signal for a completion";
    ASSERT_EQ(engine_->Reap(false), 1);
    ASSERT_TRUE(w.done);
    EXPECT_TRUE(w.req.status.ok()) << w.req.status.ToString();
    EXPECT_EQ(engine_->outstanding(), 0u);
    EXPECT_FALSE(readable(0)) << "eventfd still readable after its completion was reaped";
    EXPECT_EQ(engine_->Reap(false), 0);
    EXPECT_FALSE(readable(0));
  }
}

TEST_P(NvmeEngine, MisalignedIsInvalidArgument) {
  Aligned buf(8192);
  std::vector<iovec> iov = {{buf.data + 1, 4096}};
  Waitable wr;
  wr.req.opcode = IoOpcode::kWrite;
  wr.req.fd = fd_;
  wr.req.iov = iov;
  Status st = RunIo(*engine_, wr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
}

TEST_P(NvmeEngine, ShortReadAtEndOfFileIsOutOfRange) {
  ASSERT_EQ(ftruncate(fd_, 8192), 0);
  Aligned buf(16384);
  std::vector<iovec> iov = {{buf.data, 16384}};
  Waitable rd;
  rd.req.opcode = IoOpcode::kRead;
  rd.req.fd = fd_;
  rd.req.iov = iov;
  Status st = RunIo(*engine_, rd);
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange) << st.ToString();
  EXPECT_EQ(rd.req.bytes, 8192u);  // the part before the end was read (the retry found EOF)
}

TEST_P(NvmeEngine, DsyncWriteAndFdatasync) {
  Aligned buf(4096);
  testing::Fill(buf.data, 4096, 3);
  std::vector<iovec> iov = {{buf.data, 4096}};
  Waitable wr;
  wr.req.opcode = IoOpcode::kWrite;
  wr.req.fd = fd_;
  wr.req.iov = iov;
  wr.req.dsync = true;
  ASSERT_TRUE(RunIo(*engine_, wr).ok()) << wr.req.status.ToString();
  Waitable fs;
  fs.req.opcode = IoOpcode::kFdatasync;
  fs.req.fd = fd_;
  ASSERT_TRUE(RunIo(*engine_, fs).ok()) << fs.req.status.ToString();
}

TEST(NvmeEngineErrors, ErrnoMapping) {
  EXPECT_EQ(IoErrnoStatus(ENOSPC, "w").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(IoErrnoStatus(EFBIG, "w").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(IoErrnoStatus(EDQUOT, "w").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(IoErrnoStatus(EIO, "w").code(), StatusCode::kDataLoss);
  EXPECT_EQ(IoErrnoStatus(EINVAL, "w").code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Engines, NvmeEngine,
                         ::testing::Values(EngineKind::kIoUring, EngineKind::kPsync),
                         [](const auto& param_info) {
                           return param_info.param == EngineKind::kIoUring ? std::string("io_uring")
                                                                     : std::string("psync");
                         });

}  // namespace
}  // namespace hrpc::nvme
