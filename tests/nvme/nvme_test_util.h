// Helpers shared by the nvme tests: a temporary directory on a file system
// that supports O_DIRECT, a small pool, patterned slabs.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "hrpc/mempool/buffer.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"

#ifndef HRPC_NVME_TEST_DIR
#define HRPC_NVME_TEST_DIR "/tmp"
#endif

namespace hrpc::nvme::testing {

// A fresh directory under $HRPC_NVME_TEST_DIR (else the build dir, where
// /work is ext4 on virtio), removed on destruction.
class TempDir {
 public:
  TempDir() {
    const char* env = getenv("HRPC_NVME_TEST_DIR");
    std::string root = env != nullptr ? env : HRPC_NVME_TEST_DIR;
    std::string tmpl = root + "/nvme-test-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

  // Empty when O_DIRECT works here, else the reason (for GTEST_SKIP).
  std::string ODirectProblem() const {
    if (path_.empty()) return "cannot create a temp dir under " HRPC_NVME_TEST_DIR;
    const std::string probe = File(".odirect-probe");
    const int fd = open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644);
    if (fd < 0) {
      return "O_DIRECT not supported on the file system of " + path_ + ": " + strerror(errno);
    }
    close(fd);
    unlink(probe.c_str());
    return {};
  }

 private:
  std::string path_;
};

#define HRPC_NVME_REQUIRE_ODIRECT(dir)                             \
  do {                                                             \
    ASSERT_TRUE((dir).ok());                                       \
    const std::string problem_ = (dir).ODirectProblem();           \
    if (!problem_.empty()) GTEST_SKIP() << problem_;               \
  } while (0)

inline std::unique_ptr<mempool::Pool> SmallPool(size_t arena_mib = 32) {
  mempool::PoolOptions o;
  o.arena_bytes = arena_mib * mempool::kMiB;
  o.max_class_bytes = 4 * mempool::kMiB;
  o.max_arenas = 2;
  o.best_page_mode = mempool::PageMode::kTransparentHuge;
  auto p = mempool::Pool::Create(o);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(p).value() : nullptr;
}

inline void Fill(char* p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = static_cast<char>(x);
  }
}

// A patterned slab of exactly `bytes` from `pool` (page-aligned when >= 4 KiB).
inline mempool::Buffer PatternSlab(mempool::Pool& pool, size_t bytes, uint64_t seed) {
  auto b = pool.Allocate(bytes);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (!b.ok()) return {};
  Fill(b->data(), bytes, seed);
  return *b;
}

// `total` bytes in slabs of `slab` bytes.
inline mempool::IoBuf PatternIoBuf(mempool::Pool& pool, size_t total, size_t slab, uint64_t seed) {
  mempool::IoBuf out;
  for (size_t off = 0; off < total; off += slab) {
    out.Append(PatternSlab(pool, std::min(slab, total - off), seed + off));
  }
  return out;
}

inline bool SameBytes(const mempool::IoBuf& a, const mempool::IoBuf& b) {
  if (a.size() != b.size()) return false;
  std::string x(a.size(), '\0'), y(b.size(), '\0');
  a.CopyTo(x.data(), 0, x.size());
  b.CopyTo(y.data(), 0, y.size());
  return x == y;
}

// `n` bytes aligned to 4 KiB (O_DIRECT), from posix_memalign.
struct Aligned {
  explicit Aligned(size_t n) : size(n) {
    void* p = nullptr;
    EXPECT_EQ(posix_memalign(&p, 4096, n), 0);
    data = static_cast<char*>(p);
  }
  ~Aligned() { free(data); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  char* data;
  size_t size;
};

}  // namespace hrpc::nvme::testing
