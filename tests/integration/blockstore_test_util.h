// Helpers of the blockstore integration tests: the real blockstore_server
// binary in a child process (its "READY <uri>" line read from a pipe), a
// temporary directory, the write pattern and its checks through the stub.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "blockstore/blockstore.hrpc.h"
#include "common/child_process.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/rpc/rpc_channel.h"

namespace blockstore_test {

using namespace std::chrono_literals;

using hrpc::examples::Child;

// Starts blockstore_server with `args` (and RLIMIT_FSIZE = fsize_limit when
// non-zero); waits for its "READY <uri>" line.
inline Child StartServer(const std::vector<std::string>& args, rlim_t fsize_limit = 0) {
  return hrpc::examples::StartChild(BLOCKSTORE_SERVER, args, fsize_limit);
}

inline void Stop(Child& c, int sig) { hrpc::examples::KillChild(c, sig); }

// A fresh directory holding disk.img (and whatever else a test puts there,
// File()), removed with its contents on destruction. It is made under
// $HRPC_BLOCKSTORE_TEST_DIR, else BLOCKSTORE_TEST_DIR (the build tree), else
// /tmp — which may be tmpfs, where O_DIRECT is refused (ODirectProblem()).
class TempFile {
 public:
  TempFile() {
    const char* env = std::getenv("HRPC_BLOCKSTORE_TEST_DIR");
#ifdef BLOCKSTORE_TEST_DIR
    std::string root = env != nullptr ? env : BLOCKSTORE_TEST_DIR;
#else
    std::string root = env != nullptr ? env : "/tmp";
#endif
    std::string tmpl = root + "/hrpc_blockstore_XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) dir_ = tmpl;
    path_ = dir_ + "/disk.img";
  }
  ~TempFile() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return dir_ + "/" + name; }

  // Empty when files here open with O_DIRECT, else why not (for GTEST_SKIP).
  std::string ODirectProblem() const {
    if (dir_.empty()) return "cannot create a temporary directory";
    const std::string probe = File(".odirect-probe");
    const int fd = open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
    if (fd < 0) return "O_DIRECT not supported on the file system of " + dir_ + ": " + std::strerror(errno);
    close(fd);
    unlink(probe.c_str());
    return "";
  }
  // Empty when the file system of the directory has fallocate, else why not.
  std::string FallocateProblem() const {
    if (dir_.empty()) return "cannot create a temporary directory";
    const std::string probe = File(".fallocate-probe");
    const int fd = open(probe.c_str(), O_RDWR | O_CREAT, 0644);
    if (fd < 0) return "cannot create " + probe + ": " + std::strerror(errno);
    const int r = fallocate(fd, 0, 0, 4096);
    const int err = errno;
    close(fd);
    unlink(probe.c_str());
    return r == 0 ? "" : "no fallocate on the file system of " + dir_ + ": " + std::strerror(err);
  }

 private:
  std::string dir_, path_;
};

inline void FillPattern(char* p, uint64_t off, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t w = (off + i) ^ seed;
    std::memcpy(p + i, &w, std::min<size_t>(8, n - i));
  }
}

inline uint32_t PatternCrc(uint64_t off, size_t n, uint64_t seed) {
  std::vector<char> v(n);
  FillPattern(v.data(), off, n, seed);
  return hrpc::Crc32c(v.data(), n);
}

inline std::unique_ptr<hrpc::RpcChannel> Connect(const std::string& uri) {
  hrpc::RpcChannelOptions co;
  co.eager_threshold = 0;  // payloads by one-sided READ/WRITE
  auto ch = hrpc::RpcChannel::Create(uri, co);
  EXPECT_TRUE(ch.ok()) << ch.status().ToString();
  return ch.ok() ? std::move(*ch) : nullptr;
}

inline hrpc::Status Write(hrpc::RpcChannel& ch, uint64_t off, size_t n, uint64_t seed, size_t payload_bytes = 0) {
  hrpc_blockstore::BlockStore::Stub stub(&ch);
  hrpc::ClientContext ctx;
  ctx.set_timeout(10s);
  if (payload_bytes == 0) payload_bytes = n;
  HRPC_ASSIGN_OR_RETURN(hrpc::mempool::Buffer buf, ch.pool().Allocate(payload_bytes));
  FillPattern(buf.data(), off, payload_bytes, seed);
  ctx.request_attachment() = hrpc::mempool::IoBuf(buf.Slice(0, payload_bytes));
  hrpc_blockstore::WriteBlocksRequest req;
  req.set_offset(off);
  hrpc_blockstore::WriteBlocksResponse resp;
  HRPC_TRY(stub.WriteBlocks(ctx, req, &resp));
  if (resp.bytes() != payload_bytes) return hrpc::DataLossError("short write ack");
  return hrpc::Status::Ok();
}

// Reads [off, off+n) and checks it against the pattern: DATA_LOSS on mismatch.
inline hrpc::Status ReadCheck(hrpc::RpcChannel& ch, uint64_t off, size_t n, uint64_t seed) {
  hrpc_blockstore::BlockStore::Stub stub(&ch);
  hrpc::ClientContext ctx;
  ctx.set_timeout(10s);
  ctx.set_response_attachment_capacity(n);
  hrpc_blockstore::ReadBlocksRequest req;
  req.set_offset(off);
  req.set_length(n);
  hrpc_blockstore::ReadBlocksResponse resp;
  HRPC_TRY(stub.ReadBlocks(ctx, req, &resp));
  const uint32_t want = PatternCrc(off, n, seed);
  if (ctx.response_attachment().size() != n) return hrpc::DataLossError("wrong read size");
  if (ctx.response_attachment().Crc32c() != want) return hrpc::DataLossError("crc mismatch at " + std::to_string(off));
  if (resp.crc32c() != want) return hrpc::DataLossError("server crc mismatch");
  return hrpc::Status::Ok();
}

inline hrpc::Result<hrpc_blockstore::StatResponse> Stat(hrpc::RpcChannel& ch) {
  hrpc_blockstore::BlockStore::Stub stub(&ch);
  hrpc::ClientContext ctx;
  ctx.set_timeout(10s);
  hrpc_blockstore::StatResponse resp;
  HRPC_TRY(stub.Stat(ctx, hrpc_blockstore::StatRequest(), &resp));
  return resp;
}

}  // namespace blockstore_test
