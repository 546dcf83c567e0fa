// WAL records: layout, encode/decode round trip, corruption detection, and the
// pool-backed encoder that passes the payload slabs through untouched.
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/alignment.h"
#include "hrpc/nvme/wal.h"

namespace hrpc::nvme {
namespace {

std::vector<char> Payload(size_t n, uint8_t seed) {
  std::vector<char> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(seed ^ (i * 131 + (i >> 9)));
  return p;
}

// Builds a contiguous record: header block + payload.
std::vector<char> Record(uint64_t seq, std::string_view header, const std::vector<char>& payload,
                         uint32_t block, WalRecordInfo* info_out = nullptr) {
  std::vector<char> rec(WalHeaderBlockBytes(header.size(), block) + payload.size());
  const uint32_t crc = Crc32c(payload.data(), payload.size());
  auto info = EncodeWalHeaderBlock(std::span<char>(rec.data(), WalHeaderBlockBytes(header.size(), block)),
                                   seq, header, payload.size(), crc, block);
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  if (info_out != nullptr && info.ok()) *info_out = *info;
  if (!payload.empty()) {
    std::memcpy(rec.data() + WalHeaderBlockBytes(header.size(), block), payload.data(), payload.size());
  }
  return rec;
}

TEST(NvmeWal, LayoutIsBlockAligned) {
  EXPECT_EQ(WalHeaderBlockBytes(0, 4096), 4096u);
  EXPECT_EQ(WalHeaderBlockBytes(4096 - 68, 4096), 4096u);
  EXPECT_EQ(WalHeaderBlockBytes(4096 - 67, 4096), 8192u);  // the request is padded to 4 bytes
  EXPECT_EQ(WalHeaderBlockBytes(100, 512), 512u);
  const std::string header(300, 'h');
  WalRecordInfo info;
  auto rec = Record(7, header, Payload(3 * 4096, 1), 4096, &info);
  EXPECT_EQ(info.header_block_bytes(), 4096u);
  EXPECT_EQ(info.record_bytes, 4 * 4096u);
  EXPECT_EQ(info.record_bytes % 4096, 0u);
  // The payload starts on a block boundary of the record.
  EXPECT_EQ(info.header_block_bytes() % 4096, 0u);
}

// Curve's example: a 12 KiB write with 50 B of meta and 100 B of request makes
// one 4 KiB head block and a 16 KiB record; the size + request piece ends the
// head block, so the payload follows it with no gap.
TEST(NvmeWal, RequestEndsTheHeadBlock) {
  const std::string request(100, 'r');
  WalRecordInfo info;
  auto rec = Record(3, request, Payload(12 * 1024, 4), 4096, &info);
  EXPECT_EQ(info.header_block_bytes(), 4096u);
  EXPECT_EQ(info.record_bytes, 16u * 1024);
  const size_t off = WalRequestOffset(info);
  EXPECT_EQ(off, 4096u - 4 - 100);
  uint32_t size_field = 0;
  std::memcpy(&size_field, rec.data() + off, 4);
  EXPECT_EQ(size_field, 100u);
  EXPECT_EQ(std::string(rec.data() + off + 4, 100), request);
  // A request whose size is not a multiple of 4 gets zero padding behind it.
  auto odd = Record(4, std::string(101, 'q'), Payload(4096, 5), 4096, &info);
  EXPECT_EQ(WalRequestOffset(info) % 4, 0u);
  EXPECT_EQ(WalRequestOffset(info), 4096u - 4 - 104);
  EXPECT_EQ(odd[4095], 0);
  EXPECT_EQ(odd[4092], 'q');
}

TEST(NvmeWal, RoundTrip) {
  for (uint32_t block : {512u, 4096u}) {
    for (size_t header_len : {size_t{0}, size_t{17}, size_t{448}, size_t{5000}}) {
      SCOPED_TRACE(testing::Message() << "block " << block << " header " << header_len);
      std::string header(header_len, '\0');
      for (size_t i = 0; i < header_len; ++i) header[i] = static_cast<char>('a' + i % 26);
      const auto payload = Payload(2 * block * 4, 9);
      WalRecordInfo enc;
      auto rec = Record(42 + header_len, header, payload, block, &enc);
      auto view = DecodeWalRecord(rec);
      ASSERT_TRUE(view.ok()) << view.status().ToString();
      EXPECT_EQ(view->info.sequence, 42 + header_len);
      EXPECT_EQ(view->info.block_bytes, block);
      EXPECT_EQ(view->request_header, header);
      ASSERT_EQ(view->payload.size(), payload.size());
      EXPECT_EQ(std::memcmp(view->payload.data(), payload.data(), payload.size()), 0);
      EXPECT_EQ(view->info.payload_crc, Crc32c(payload.data(), payload.size()));
      EXPECT_EQ(view->info.record_bytes, enc.record_bytes);
    }
  }
}

TEST(NvmeWal, EmptyPayload) {
  auto rec = Record(1, "only a header", {}, 4096);
  auto view = DecodeWalRecord(rec);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_EQ(view->payload.size(), 0u);
  EXPECT_EQ(view->request_header, "only a header");
}

TEST(NvmeWal, CorruptionIsDetected) {
  const std::string header = "request header byte";  // 19 bytes: one byte of padding behind it
  const auto payload = Payload(8192, 3);
  WalRecordInfo info;
  const auto good = Record(5, header, payload, 4096, &info);
  ASSERT_TRUE(DecodeWalRecord(good).ok());
  const size_t req = WalRequestOffset(info);

  struct Flip {
    const char* what;
    size_t at;
  };
  const Flip flips[] = {
      {"magic", 0},         {"version", 4},        {"block size", 8},   {"header length", 12},
      {"sequence", 16},     {"payload length", 24}, {"record length", 32}, {"header crc", 40},
      {"payload crc", 44},  {"meta crc", 60},       {"request size", req},
      {"request header", req + 4 + 3},               {"padding after the meta", 64 + 10},
      {"padding after the request", 4095},           {"payload first byte", 4096},
      {"payload last byte", 4096 + 8191},
  };
  for (const Flip& f : flips) {
    SCOPED_TRACE(f.what);
    auto bad = good;
    bad[f.at] ^= 0x5a;
    auto r = DecodeWalRecord(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
  }
  // Zeroed space (the end of a log) and a truncated record.
  std::vector<char> zeros(8192, 0);
  EXPECT_EQ(DecodeWalRecord(zeros).status().code(), StatusCode::kDataLoss);
  std::vector<char> truncated(good.begin(), good.end() - 4096);
  EXPECT_EQ(DecodeWalRecord(truncated).status().code(), StatusCode::kDataLoss);
  std::vector<char> tiny(10, 0);
  EXPECT_EQ(DecodeWalRecord(tiny).status().code(), StatusCode::kInvalidArgument);
}

// Found while writing the WAL fuzz target (tests/fuzz/corpus/wal/crash-payload-length-wraps):
// a payload length near 2^64 made header block + payload wrap to a small
// record length that matched, and decoding read far past the record.
TEST(NvmeWal, PayloadLengthThatWrapsTheRecordLengthIsRefused) {
  std::vector<char> rec(512, 0);
  auto put = [&](size_t off, auto v) { std::memcpy(rec.data() + off, &v, sizeof v); };
  put(0, kWalMagic);
  put(4, kWalVersion);
  put(6, static_cast<uint16_t>(kWalMetaBytes));
  put(8, uint32_t{512});                 // block
  put(12, uint32_t{0});                  // request header bytes: header block = 512
  put(16, uint64_t{7});                  // sequence
  put(24, UINT64_MAX - 511);             // payload bytes: 512 + this wraps to 0
  put(32, uint64_t{0});                  // record bytes
  put(40, Crc32c(rec.data(), 0));        // crc of the empty request header
  put(44, uint32_t{0});
  put(60, Crc32c(rec.data(), 60));       // meta crc
  auto meta = ParseWalMeta(rec);
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(meta.status().message().find("inconsistent lengths"), std::string_view::npos) << meta.status().ToString();
  EXPECT_EQ(DecodeWalRecord(rec).status().code(), StatusCode::kDataLoss);
}

TEST(NvmeWal, EncoderRejectsUnpaddablePayloads) {
  std::vector<char> block(4096);
  EXPECT_EQ(EncodeWalHeaderBlock(block, 1, "h", 1000, 0, 4096).status().code(),
            StatusCode::kInvalidArgument);  // payload tail would need a copy
  EXPECT_EQ(EncodeWalHeaderBlock(block, 1, "h", 4096, 0, 1000).status().code(),
            StatusCode::kInvalidArgument);  // block not a power of two
  std::vector<char> small(512);
  EXPECT_EQ(EncodeWalHeaderBlock(small, 1, "h", 4096, 0, 4096).status().code(),
            StatusCode::kInvalidArgument);  // wrong buffer size
}

TEST(NvmeWal, PoolRecordPassesPayloadThrough) {
  mempool::PoolOptions o;
  o.arena_bytes = 8 * mempool::kMiB;
  o.max_class_bytes = 1 * mempool::kMiB;
  o.max_arenas = 1;
  o.best_page_mode = mempool::PageMode::kSmallPages;
  auto pool = mempool::Pool::Create(o);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();

  // A payload as it arrives from the network: two page-aligned slabs.
  auto a = (*pool)->Allocate(16384), b = (*pool)->Allocate(8192);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < 16384; ++i) a->data()[i] = static_cast<char>(i * 3);
  for (size_t i = 0; i < 8192; ++i) b->data()[i] = static_cast<char>(i * 5 + 1);
  mempool::IoBuf payload(*a);
  payload.Append(*b);
  const uint32_t crc = payload.Crc32c();

  for (uint32_t block : {512u, 4096u}) {
    SCOPED_TRACE(block);
    mempool::ResetCopiedBytesThisThread();
    WalRecordInfo info;
    auto rec = EncodeWalRecord(**pool, 99, std::string(200, 'x'), payload.Share(), block,
                               std::nullopt, &info);
    ASSERT_TRUE(rec.ok()) << rec.status().ToString();
    EXPECT_EQ(mempool::CopiedBytesThisThread(), 0u);  // no payload byte copied
    ASSERT_EQ(rec->num_slices(), 3u);
    EXPECT_EQ(rec->slice(1).data(), a->data());  // the slabs themselves
    EXPECT_EQ(rec->slice(2).data(), b->data());
    EXPECT_EQ(rec->size(), info.record_bytes);
    EXPECT_EQ(info.payload_crc, crc);
    EXPECT_EQ(rec->slice(0).size(), info.header_block_bytes());
    // The record is a legal O_DIRECT + PRP scatter list at any block offset.
    DeviceRules rules;
    rules.logical_block = block;
    rules.segment_align = block;
    rules.mem_align = 512;
    EXPECT_TRUE(CheckScatterList(rec->Iovecs(), 10 * block, rules).ok())
        << CheckScatterList(rec->Iovecs(), 10 * block, rules).ToString();
    // Read back as one contiguous record (what recovery reads from disk).
    std::vector<char> flat(rec->size());
    rec->CopyTo(flat.data(), 0, flat.size());
    auto view = DecodeWalRecord(flat);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    EXPECT_EQ(view->request_header, std::string(200, 'x'));
    EXPECT_EQ(Crc32c(view->payload.data(), view->payload.size()), crc);
  }
}

}  // namespace
}  // namespace hrpc::nvme
