// examples/blockstore end to end: the real blockstore_server binary in a child
// process over TCP, driven through the generated stub.
//  (a) aligned write/read round trip with CRC32C; the server copied 0 payload bytes,
//      and (io_uring) every slice went to the disk as WRITE_FIXED/READ_FIXED: the
//      sink is opened on the server's own pool, the one the runtime pulls into;
//  (b) unaligned offset/length -> INVALID_ARGUMENT, the server keeps serving;
//  (c) disk full (RLIMIT_FSIZE on the server, SIGXFSZ ignored by it) ->
//      RESOURCE_EXHAUSTED to the client, the server keeps serving;
//  (d) --durability=dsync, SIGKILL in the middle of a write stream, restart on
//      the same file: every acknowledged write reads back intact.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <iterator>
#include <vector>

#include <gtest/gtest.h>

#include "blockstore/blockstore.hrpc.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/rpc/rpc_channel.h"
#include "blockstore_test_util.h"

namespace {

using namespace std::chrono_literals;
using namespace blockstore_test;

TEST(Blockstore, AlignedRoundTripZeroCopies) {
  TempFile file;
  Child server = StartServer({"--file=" + file.path(), "--listen=tcp://127.0.0.1:0", "--size=16M", "--log=warn"});
  ASSERT_GT(server.pid, 0);
  ASSERT_FALSE(server.uri.empty()) << "server did not print READY";
  auto ch = Connect(server.uri);
  ASSERT_NE(ch, nullptr);
  // Baseline after the connection is up: the TCP handshake copies its 32-byte
  // hello through CountedCopy (control bytes, not payload).
  auto base = Stat(*ch);
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  const size_t sizes[] = {4096, 64 << 10, 1 << 20, 3 << 20};
  uint64_t off = 0, total = 0;
  for (size_t n : sizes) {
    ASSERT_TRUE(Write(*ch, off, n, 7).ok()) << n;
    off += n;
    total += n;
  }
  // The pulled slabs went to the disk as registered buffers: WRITE_FIXED only.
  auto after_writes = Stat(*ch);
  ASSERT_TRUE(after_writes.ok()) << after_writes.status().ToString();
  const bool uring = after_writes->engine() == "io_uring";
  if (uring) {
    EXPECT_TRUE(after_writes->fixed_buffers()) << "the server pool's arenas must be the sink's fixed buffers";
    EXPECT_GE(after_writes->fixed_slices() - base->fixed_slices(), std::size(sizes));
    EXPECT_EQ(after_writes->vectored_slices() - base->vectored_slices(), 0u)
        << "a pulled payload slab went to the disk as WRITEV (not from a registered arena)";
  }
  off = 0;
  for (size_t n : sizes) {
    hrpc::Status s = ReadCheck(*ch, off, n, 7);
    ASSERT_TRUE(s.ok()) << n << ": " << s.ToString();
    off += n;
  }
  // A read of a range written with another seed must fail the check (the check can fail).
  EXPECT_EQ(ReadCheck(*ch, 0, 4096, 8).code(), hrpc::StatusCode::kDataLoss);
  auto st = Stat(*ch);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->bytes_written(), total);
  EXPECT_EQ(st->bytes_read(), total + 4096);
  EXPECT_EQ(st->copied_bytes() - base->copied_bytes(), 0u) << "aligned requests must not be copied by the server CPU";
  Stop(server, SIGTERM);
  if (!uring) GTEST_SKIP() << "io_uring unavailable (engine " << st->engine() << "): fixed-buffer path not checked";
  // Reads landed in slabs of the same registered pool: READ_FIXED only.
  EXPECT_GE(st->fixed_slices() - after_writes->fixed_slices(), std::size(sizes) + 1);
  EXPECT_EQ(st->vectored_slices() - base->vectored_slices(), 0u);
}

TEST(Blockstore, UnalignedIsInvalidArgumentAndServerKeepsServing) {
  TempFile file;
  Child server = StartServer({"--file=" + file.path(), "--listen=tcp://127.0.0.1:0", "--size=4M", "--log=warn"});
  ASSERT_FALSE(server.uri.empty());
  auto ch = Connect(server.uri);
  ASSERT_NE(ch, nullptr);
  EXPECT_EQ(Write(*ch, 100, 4096, 1).code(), hrpc::StatusCode::kInvalidArgument);         // offset
  EXPECT_EQ(Write(*ch, 0, 4096, 1, 4000).code(), hrpc::StatusCode::kInvalidArgument);      // length
  EXPECT_EQ(ReadCheck(*ch, 1000, 4096, 1).code(), hrpc::StatusCode::kInvalidArgument);  // read offset
  ASSERT_TRUE(Write(*ch, 8192, 8192, 2).ok());
  EXPECT_TRUE(ReadCheck(*ch, 8192, 8192, 2).ok());
  auto st = Stat(*ch);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->bytes_written(), 8192u);
  Stop(server, SIGTERM);
}

TEST(Blockstore, DiskFullIsResourceExhaustedAndServerKeepsServing) {
  TempFile file;
  // The file may grow to 2 MiB: writes beyond fail with EFBIG (SIGXFSZ ignored by the server).
  Child server = StartServer({"--file=" + file.path(), "--listen=tcp://127.0.0.1:0", "--log=warn"}, 2 << 20);
  ASSERT_FALSE(server.uri.empty());
  auto ch = Connect(server.uri);
  ASSERT_NE(ch, nullptr);
  ASSERT_TRUE(Write(*ch, 0, 1 << 20, 3).ok());
  hrpc::Status full = Write(*ch, 4 << 20, 1 << 20, 3);
  EXPECT_EQ(full.code(), hrpc::StatusCode::kResourceExhausted) << full.ToString();
  // Still serving: reads, and writes that fit.
  EXPECT_TRUE(ReadCheck(*ch, 0, 1 << 20, 3).ok());
  EXPECT_TRUE(Write(*ch, 1 << 20, 1 << 20, 4).ok());
  EXPECT_TRUE(ReadCheck(*ch, 1 << 20, 1 << 20, 4).ok());
  int st = 0;
  EXPECT_EQ(waitpid(server.pid, &st, WNOHANG), 0) << "the server died";
  Stop(server, SIGTERM);
}

TEST(Blockstore, SigkillMidStreamDsyncAckedWritesSurvive) {
  TempFile file;
  const size_t kBlock = 64 << 10;
  std::vector<std::string> args = {"--file=" + file.path(), "--listen=tcp://127.0.0.1:0", "--size=64M",
                                   "--durability=dsync", "--log=warn"};
  Child server = StartServer(args);
  ASSERT_FALSE(server.uri.empty());
  std::vector<uint64_t> acked;
  std::atomic<size_t> acked_count{0};
  // Writes until the server is gone, around the volume again (up to 8 times)
  // if it gets there first: a block's bytes depend only on its offset and the
  // seed, so a rewrite is the same bytes.
  constexpr uint64_t kWrites = 8 * (64u << 20) / kBlock;
  std::thread writer([&] {
    auto ch = Connect(server.uri);
    if (ch == nullptr) return;
    for (uint64_t i = 0; i < kWrites; ++i) {
      const uint64_t off = (i * kBlock) % (64u << 20);
      if (!Write(*ch, off, kBlock, 11).ok()) break;  // the server is gone
      acked.push_back(off);
      acked_count.store(acked.size(), std::memory_order_release);
    }
  });
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (acked_count.load(std::memory_order_acquire) < 40 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(1ms);
  }
  Stop(server, SIGKILL);  // in the middle of the stream
  writer.join();
  ASSERT_GE(acked.size(), 40u);
  ASSERT_LT(acked.size(), kWrites) << "the stream finished before the kill";
  std::sort(acked.begin(), acked.end());
  acked.erase(std::unique(acked.begin(), acked.end()), acked.end());

  Child again = StartServer(args);
  ASSERT_FALSE(again.uri.empty());
  auto ch = Connect(again.uri);
  ASSERT_NE(ch, nullptr);
  for (uint64_t off : acked) {
    hrpc::Status s = ReadCheck(*ch, off, kBlock, 11);
    ASSERT_TRUE(s.ok()) << "acknowledged write at " << off << ": " << s.ToString();
  }
  Stop(again, SIGTERM);
}

}  // namespace

// The streaming service: a chunk copied in by a client stream, read back by a
// server stream of any length in page-aligned chunks (no size announced),
// neither copied by the server's CPU.
TEST(Blockstore, CopyChunkThenReadStream) {
  TempFile file;
  Child server = StartServer({"--file=" + file.path(), "--listen=tcp://127.0.0.1:0", "--size=16M", "--log=warn"});
  ASSERT_GT(server.pid, 0);
  ASSERT_FALSE(server.uri.empty()) << "server did not print READY";
  auto ch = Connect(server.uri);
  ASSERT_NE(ch, nullptr);
  auto base = Stat(*ch);
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  hrpc_blockstore::BlockStreams::Stub streams(ch.get());
  constexpr uint64_t kOff = 4u << 20, kPiece = 1u << 20, kPieces = 3;
  {
    hrpc::ClientContext ctx;
    ctx.set_timeout(10s);
    hrpc_blockstore::CopyChunkResponse resp;
    auto writer = streams.CopyChunk(ctx, &resp);
    for (uint64_t i = 0; i < kPieces; ++i) {
      auto buf = ch->pool().Allocate(kPiece);
      ASSERT_TRUE(buf.ok());
      FillPattern(buf->data(), kOff + i * kPiece, kPiece, 11);
      hrpc_blockstore::CopyChunkRequest req;
      req.set_offset(kOff);
      ASSERT_TRUE(writer->Write(req, hrpc::mempool::IoBuf(std::move(*buf)))) << i;
    }
    hrpc::Status s = writer->Finish();
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.bytes(), kPieces * kPiece);
    EXPECT_EQ(resp.crc32c(), PatternCrc(kOff, kPieces * kPiece, 11));
  }
  ASSERT_TRUE(ReadCheck(*ch, kOff, kPieces * kPiece, 11).ok()) << "the unary read disagrees with the copy";
  {
    const uint64_t length = kPieces * kPiece - 1000;  // not a multiple of anything
    hrpc::ClientContext ctx;
    ctx.set_timeout(10s);
    hrpc_blockstore::ReadStreamRequest req;
    req.set_offset(kOff);
    req.set_length(length);
    req.set_chunk_bytes(256 << 10);
    auto reader = streams.ReadStream(ctx, req);
    hrpc_blockstore::ReadStreamChunk chunk;
    hrpc::mempool::IoBuf data;
    uint64_t got = 0;
    uint32_t crc = 0;
    int chunks = 0;
    while (reader->Read(&chunk, &data)) {
      EXPECT_EQ(chunk.offset(), kOff + got);
      EXPECT_EQ(chunk.crc32c(), data.Crc32c());
      ASSERT_GT(data.num_slices(), 0u);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(data.slice(0).data()) % 4096, 0u) << "chunk " << chunks << " not page-aligned";
      for (size_t i = 0; i < data.num_slices(); ++i) crc = hrpc::Crc32c(data.slice(i).data(), data.slice(i).size(), crc);
      got += data.size();
      ++chunks;
    }
    hrpc::Status s = reader->Finish();
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(got, length);
    EXPECT_EQ(chunks, 12);
    EXPECT_EQ(crc, PatternCrc(kOff, length, 11));
  }
  auto st = Stat(*ch);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->copied_bytes() - base->copied_bytes(), 0u) << "stream payloads must not be copied by the server CPU";
  Stop(server, SIGTERM);
}
