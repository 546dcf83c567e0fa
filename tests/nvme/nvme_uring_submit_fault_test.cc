// io_uring_submit refusing SQEs (EAGAIN: the kernel short of resources) must
// not strand a request: the SQEs stay in the ring and Reap(true) submits them
// with its wait. Linked with -Wl,--wrap=io_uring_submit, so the engine's calls
// go through a wrapper that fails the first kFailures of them.
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <span>
#include <thread>

#include <gtest/gtest.h>

#include "hrpc/nvme/io_engine.h"
#include "nvme_test_util.h"

extern "C" int __real_io_uring_submit(struct io_uring* ring);
std::atomic<int> g_fail_submits{0};
extern "C" int __wrap_io_uring_submit(struct io_uring* ring) {
  if (g_fail_submits.load() > 0) {
    g_fail_submits.fetch_sub(1);
    return -EAGAIN;
  }
  return __real_io_uring_submit(ring);
}

namespace {

using namespace hrpc::nvme;
using hrpc::nvme::testing::TempDir;
using hrpc::nvme::testing::Aligned;

TEST(NvmeUringSubmitFault, AWriteWhoseSubmitsFailedStillCompletes) {
  TempDir dir;
  HRPC_NVME_REQUIRE_ODIRECT(dir);
  const int fd = open(dir.File("fault.dat").c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
  ASSERT_GE(fd, 0) << strerror(errno);
  auto e = CreateUringEngine(EngineOptions{});
  if (!e.ok()) GTEST_SKIP() << "io_uring unavailable: " << e.status().ToString();
  std::unique_ptr<IoEngine> engine = std::move(e).value();
  Aligned buf(65536);
  std::memset(buf.data, 7, buf.size);
  IoRequest req;
  req.opcode = IoOpcode::kWrite;
  req.fd = fd;
  req.offset = 0;
  const iovec iov{buf.data, buf.size};
  req.iov = std::span<const iovec>(&iov, 1);
  std::atomic<bool> done{false};
  req.done = [](IoRequest*, void* arg) { static_cast<std::atomic<bool>*>(arg)->store(true); };
  req.arg = &done;
  // Submit's own call and the one Reap makes first both fail.
  g_fail_submits.store(2);
  ASSERT_TRUE(engine->Submit(&req).ok());
  auto reaped = std::async(std::launch::async, [&] {
    while (!done.load()) {
      if (engine->Reap(true) < 0) return false;
    }
    return true;
  });
  if (reaped.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    std::fprintf(stderr, "FAILED: the write never completed: Reap waited with its SQE unsubmitted\n");
    std::_Exit(1);  // the reaping thread is stuck in the kernel: nothing to join
  }
  EXPECT_TRUE(reaped.get());
  EXPECT_TRUE(req.status.ok()) << req.status.ToString();
  EXPECT_EQ(req.bytes, buf.size);
  EXPECT_EQ(g_fail_submits.load(), 0);
  close(fd);
}

}  // namespace
