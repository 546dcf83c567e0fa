// Tests for mempool/src/iobuf.cc and copy.cc: IoBuf operations never copy
// payload (pointer identity, copy counter at 0); CopyTo/CopyFrom count exactly.
#include "hrpc/mempool/iobuf.h"

#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "fake_registrar.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"

namespace hrpc::mempool {
namespace {

class IoBufTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PoolOptions o;
    o.arena_bytes = 4 * kMiB;
    o.max_class_bytes = 1 * kMiB;
    o.prefault = false;
    auto r = Pool::Create(o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    pool_ = std::move(r).value();
    ResetCopiedBytesThisThread();
  }

  // A buffer of n bytes filled with consecutive values starting at `seed`.
  Buffer Filled(size_t n, uint8_t seed) {
    auto r = pool_->Allocate(n);
    EXPECT_TRUE(r.ok());
    Buffer b = std::move(r).value();
    for (size_t i = 0; i < n; ++i) b.data()[i] = static_cast<char>(seed + i);
    return b;
  }

  // Every byte of `io` as (address) in order, to check pointer identity.
  static std::vector<const char*> Addresses(const IoBuf& io) {
    std::vector<const char*> out;
    for (size_t i = 0; i < io.num_slices(); ++i) {
      const Buffer& s = io.slice(i);
      for (size_t j = 0; j < s.size(); ++j) out.push_back(s.data() + j);
    }
    return out;
  }

  std::unique_ptr<Pool> pool_;
};

TEST_F(IoBufTest, OperationsKeepPointerIdentityAndCopyNothing) {
  Buffer a = Filled(4096, 0), b = Filled(8192, 50), c = Filled(100, 200);
  IoBuf io(a);
  io.Append(b);
  io.Append(Buffer());  // empty: dropped
  io.Prepend(c);
  ASSERT_EQ(io.size(), 4096u + 8192 + 100);
  ASSERT_EQ(io.num_slices(), 3u);
  const std::vector<const char*> all = Addresses(io);
  EXPECT_EQ(all.front(), c.data());
  EXPECT_EQ(all[100], a.data());
  EXPECT_EQ(all[100 + 4096], b.data());

  // Share: same bytes, refcounts bumped.
  IoBuf shared = io.Share();
  EXPECT_EQ(Addresses(shared), all);
  EXPECT_EQ(a.use_count(), 3u);  // a, io, shared

  // Cut across slice boundaries at both ends.
  IoBuf front = io.CutFront(150);  // all of c + 50 bytes of a
  IoBuf back = io.CutBack(8192 + 10);  // last 10 bytes of a + all of b
  EXPECT_EQ(front.size(), 150u);
  EXPECT_EQ(back.size(), 8202u);
  EXPECT_EQ(io.size(), 4096u - 60);
  EXPECT_EQ(front.num_slices(), 2u);
  EXPECT_EQ(back.num_slices(), 2u);
  EXPECT_EQ(io.num_slices(), 1u);
  std::vector<const char*> rejoined = Addresses(front);
  for (const char* p : Addresses(io)) rejoined.push_back(p);
  for (const char* p : Addresses(back)) rejoined.push_back(p);
  EXPECT_EQ(rejoined, all);

  // Put it back together with Append(IoBuf&&).
  IoBuf whole = std::move(front);
  whole.Append(std::move(io));
  whole.Append(std::move(back));
  EXPECT_EQ(Addresses(whole), all);
  EXPECT_EQ(whole.size(), all.size());

  // Trim both ends.
  whole.TrimFront(100);
  whole.TrimBack(8192);
  EXPECT_EQ(whole.size(), 4096u);
  EXPECT_EQ(whole.slice(0).data(), a.data());
  EXPECT_EQ(Addresses(whole), std::vector<const char*>(all.begin() + 100, all.begin() + 100 + 4096));

  // Cutting everything and nothing.
  IoBuf none = whole.CutFront(0);
  EXPECT_TRUE(none.empty());
  IoBuf everything = whole.CutBack(whole.size());
  EXPECT_TRUE(whole.empty());
  EXPECT_EQ(whole.num_slices(), 0u);
  EXPECT_EQ(everything.size(), 4096u);

  // iovecs point at the pool blocks.
  std::vector<iovec> iov = shared.Iovecs();
  ASSERT_EQ(iov.size(), 3u);
  EXPECT_EQ(iov[0].iov_base, c.data());
  EXPECT_EQ(iov[1].iov_base, a.data());
  EXPECT_EQ(iov[2].iov_base, b.data());
  EXPECT_EQ(iov[2].iov_len, 8192u);
  iovec two[2];
  EXPECT_EQ(shared.FillIovecs(two), 2u);

  // The checksum reads in place.
  std::vector<char> flat;
  for (const char* p : all) flat.push_back(*p);
  EXPECT_EQ(shared.Crc32c(), Crc32c(flat.data(), flat.size()));

  EXPECT_EQ(CopiedBytesThisThread(), 0u);
}

// More slices than fit inline; prepend/cut/move across the spill.
TEST_F(IoBufTest, LongChainsAndMovedFromState) {
  std::vector<Buffer> parts;
  for (int i = 0; i < 9; ++i) parts.push_back(Filled(100 + i, static_cast<uint8_t>(i)));
  IoBuf io;
  for (int i = 1; i < 9; ++i) io.Append(parts[i]);
  io.Prepend(parts[0]);
  ASSERT_EQ(io.num_slices(), 9u);
  for (size_t i = 0; i < 9; ++i) EXPECT_EQ(io.slice(i).data(), parts[i].data());
  const std::vector<const char*> all = Addresses(io);
  IoBuf front = io.CutFront(250);  // 2 whole slices + 49 bytes of the third
  EXPECT_EQ(front.num_slices(), 3u);
  IoBuf back = io.CutBack(300);
  std::vector<const char*> rejoined = Addresses(front);
  for (const char* p : Addresses(io)) rejoined.push_back(p);
  for (const char* p : Addresses(back)) rejoined.push_back(p);
  EXPECT_EQ(rejoined, all);

  IoBuf moved = std::move(io);
  EXPECT_EQ(io.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(io.num_slices(), 0u);
  io.Append(parts[0]);  // and usable
  EXPECT_EQ(io.slice(0).data(), parts[0].data());
  IoBuf small(parts[1]);
  small = std::move(moved);
  EXPECT_EQ(small.size(), 9u * 100 + 36 - 250 - 300);
  io.Append(std::move(small));
  EXPECT_EQ(small.num_slices(), 0u);
  EXPECT_EQ(parts[0].use_count(), 3u);  // parts, `io`, `front`
  front = IoBuf();
  back = IoBuf();
  io = IoBuf();
  for (const Buffer& b : parts) EXPECT_EQ(b.use_count(), 1u);
  EXPECT_EQ(CopiedBytesThisThread(), 0u);
}

// Move assignment between every pairing of inline and spilled chains (a move
// touches only the live slices), and a slice taken from an rvalue handle.
TEST_F(IoBufTest, MoveAssignAcrossInlineAndSpilledKeepsEveryReference) {
  std::vector<Buffer> parts;
  for (int i = 0; i < 12; ++i) parts.push_back(Filled(64, static_cast<uint8_t>(i)));
  auto chain = [&](int from, int n) {
    IoBuf io;
    for (int i = from; i < from + n; ++i) io.Append(parts[i]);
    return io;
  };
  for (int dst_n : {0, 2, 6}) {
    for (int src_n : {0, 3, 6}) {
      IoBuf dst = chain(0, dst_n);
      IoBuf src = chain(6, src_n);
      dst = std::move(src);
      EXPECT_EQ(dst.num_slices(), static_cast<size_t>(src_n));
      EXPECT_EQ(dst.size(), 64u * src_n);
      for (int i = 0; i < src_n; ++i) EXPECT_EQ(dst.slice(i).data(), parts[6 + i].data());
      EXPECT_EQ(src.num_slices(), 0u);  // NOLINT(bugprone-use-after-move)
      for (int i = 0; i < 6; ++i) EXPECT_EQ(parts[i].use_count(), 1u) << dst_n << "<-" << src_n;
      src.Append(parts[11]);  // the moved-from chain is usable
      src.Append(IoBuf(parts[10]));
      EXPECT_EQ(src.num_slices(), 2u);
      EXPECT_EQ(src.slice(0).data(), parts[11].data());
    }
  }
  for (const Buffer& b : parts) EXPECT_EQ(b.use_count(), 1u);

  Buffer h = parts[0];
  EXPECT_EQ(parts[0].use_count(), 2u);
  Buffer tail = std::move(h).Slice(10, 20);  // takes h's reference over
  EXPECT_EQ(parts[0].use_count(), 2u);
  EXPECT_FALSE(h);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(tail.data(), parts[0].data() + 10);
  EXPECT_EQ(tail.size(), 20u);
  EXPECT_EQ(CopiedBytesThisThread(), 0u);
}

// A chain that grows past its inline slots by prepending, shrinks from both
// ends, is shared while spilled and is refilled after Clear keeps every
// reference exact and every slice in order.
TEST_F(IoBufTest, SpilledChainsGrowShrinkShareAndRefill) {
  std::vector<Buffer> parts;
  for (int i = 0; i < 20; ++i) parts.push_back(Filled(10, static_cast<uint8_t>(i)));
  IoBuf io;
  for (int i = 19; i >= 0; --i) io.Prepend(parts[i]);  // grows twice by PushFront
  ASSERT_EQ(io.num_slices(), 20u);
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(io.slice(i).data(), parts[i].data());
  {
    IoBuf shared = io.Share();
    EXPECT_EQ(shared.num_slices(), 20u);
    for (const Buffer& b : parts) EXPECT_EQ(b.use_count(), 3u);
  }
  IoBuf front = io.CutFront(35);  // 3 whole slices and half of the fourth
  ASSERT_EQ(front.num_slices(), 4u);
  EXPECT_EQ(front.slice(3).data(), parts[3].data());
  EXPECT_EQ(front.slice(3).size(), 5u);
  EXPECT_EQ(io.slice(0).data(), parts[3].data() + 5);
  EXPECT_EQ(io.num_slices(), 17u);
  IoBuf back = io.CutBack(100);  // the last 10 slices
  EXPECT_EQ(back.num_slices(), 10u);
  EXPECT_EQ(back.slice(0).data(), parts[10].data());
  EXPECT_EQ(io.num_slices(), 7u);
  EXPECT_EQ(io.size(), 65u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(parts[i].use_count(), 2u);  // parts, front
  EXPECT_EQ(parts[3].use_count(), 3u);                               // parts, front, io
  io.TrimFront(io.size());
  EXPECT_TRUE(io.empty());
  for (int i = 4; i < 10; ++i) EXPECT_EQ(parts[i].use_count(), 1u);
  for (int i = 0; i < 6; ++i) io.Append(parts[i]);  // refills the kept array
  for (int i = 0; i < 6; ++i) EXPECT_EQ(io.slice(i).data(), parts[i].data());
  io.Append(std::move(back));
  EXPECT_EQ(io.num_slices(), 16u);
  EXPECT_EQ(io.slice(15).data(), parts[19].data());
  front = IoBuf();
  io = std::move(front);
  for (const Buffer& b : parts) EXPECT_EQ(b.use_count(), 1u);
  EXPECT_EQ(CopiedBytesThisThread(), 0u);
}

TEST_F(IoBufTest, FillSgesCarriesTheRegistrarLkey) {
  testing::FakeRegistrar r(7000);
  auto slot = pool_->AttachRegistrar(&r);
  ASSERT_TRUE(slot.ok());
  Buffer a = Filled(4096, 1), b = Filled(65536, 2);
  IoBuf io(a);
  io.Append(b.Slice(4096, 4096));
  Sge sges[4];
  ASSERT_EQ(io.FillSges(*slot, sges), 2u);
  EXPECT_EQ(sges[0].addr, reinterpret_cast<uint64_t>(a.data()));
  EXPECT_EQ(sges[0].length, 4096u);
  EXPECT_EQ(sges[1].addr, reinterpret_cast<uint64_t>(b.data() + 4096));
  EXPECT_EQ(sges[1].length, 4096u);
  const RegionKey k = r.KeyOf(reinterpret_cast<void*>(pool_->KeyFor(*slot, a.data())->handle));
  EXPECT_GE(k.lkey, 7000u);
  EXPECT_EQ(sges[0].lkey, k.lkey);
  EXPECT_EQ(sges[1].lkey, k.lkey);
  EXPECT_EQ(CopiedBytesThisThread(), 0u);
  io = IoBuf();
  a.Reset();
  b.Reset();
  pool_->DetachRegistrar(*slot);
  EXPECT_EQ(r.live(), 0u);
}

TEST_F(IoBufTest, CopyToAndCopyFromCountExactly) {
  std::vector<char> src(3 * kMiB + 123);
  std::iota(src.begin(), src.end(), 0);
  const uint64_t total_before = CopiedBytesTotal();
  auto r = IoBuf::CopyFrom(*pool_, src.data(), src.size());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  IoBuf io = std::move(r).value();
  EXPECT_EQ(CopiedBytesThisThread(), src.size());
  EXPECT_GE(CopiedBytesTotal() - total_before, src.size());
  EXPECT_EQ(io.size(), src.size());
  EXPECT_EQ(io.num_slices(), 4u);  // 1 MiB max class

  ResetCopiedBytesThisThread();
  std::vector<char> dst(5000);
  const size_t off = 1 * kMiB - 2000;  // straddles a slice boundary
  io.CopyTo(dst.data(), off, dst.size());
  EXPECT_EQ(CopiedBytesThisThread(), dst.size());
  EXPECT_EQ(std::memcmp(dst.data(), src.data() + off, dst.size()), 0);
  EXPECT_EQ(io.Crc32c(), Crc32c(src.data(), src.size()));

  // The counter is per thread.
  uint64_t other = 1;
  std::thread([&] { other = CopiedBytesThisThread(); }).join();
  EXPECT_EQ(other, 0u);
}

TEST_F(IoBufTest, CopyFromReportsExhaustion) {
  std::vector<char> src(8 * kMiB);
  auto r = IoBuf::CopyFrom(*pool_, src.data(), src.size());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace hrpc::mempool
