#include "hrpc/nvme/wal.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "hrpc/base/crc32c.h"

namespace hrpc::nvme {

static_assert(std::endian::native == std::endian::little, "the WAL meta is little-endian");

namespace {

// Field offsets in the meta (see the header comment).
constexpr size_t kOffMagic = 0, kOffVersion = 4, kOffMetaBytes = 6, kOffBlock = 8,
                 kOffHeaderBytes = 12, kOffSequence = 16, kOffPayloadBytes = 24,
                 kOffRecordBytes = 32, kOffHeaderCrc = 40, kOffPayloadCrc = 44, kOffFlags = 48,
                 kOffMetaCrc = 60;
static_assert(kOffMetaCrc + 4 == kWalMetaBytes);

template <class T>
void Put(char* base, size_t off, T v) {
  std::memcpy(base + off, &v, sizeof v);
}
template <class T>
T Get(const char* base, size_t off) {
  T v;
  std::memcpy(&v, base + off, sizeof v);
  return v;
}

bool ValidBlock(uint32_t b) { return b >= 512 && std::has_single_bit(b); }

size_t RoundUp4(size_t n) { return (n + 3) & ~size_t{3}; }

}  // namespace

size_t WalHeaderBlockBytes(size_t header_bytes, uint32_t block) noexcept {
  const size_t n = kWalMetaBytes + 4 + RoundUp4(header_bytes);
  return block == 0 ? n : (n + block - 1) / block * block;
}

uint32_t Crc32cOf(std::span<const iovec> iov) noexcept {
  uint32_t crc = 0;
  for (const iovec& v : iov) crc = Crc32c(v.iov_base, v.iov_len, crc);
  return crc;
}

Result<WalRecordInfo> EncodeWalHeaderBlock(std::span<char> out, uint64_t sequence,
                                           std::string_view request_header,
                                           uint64_t payload_bytes, uint32_t payload_crc,
                                           uint32_t block) {
  if (!ValidBlock(block)) {
    return InvalidArgumentError(fmt::format("WAL block size {} is not a power of two >= 512", block));
  }
  if (payload_bytes % block != 0) {
    return InvalidArgumentError(fmt::format(
        "WAL payload of {} bytes is not a multiple of the block ({}): its tail would need a copy",
        payload_bytes, block));
  }
  if (request_header.size() > kWalMaxHeaderBytes) {
    return InvalidArgumentError(fmt::format("WAL request header of {} bytes exceeds {}",
                                            request_header.size(), kWalMaxHeaderBytes));
  }
  const size_t hb = WalHeaderBlockBytes(request_header.size(), block);
  if (out.size() != hb) {
    return InvalidArgumentError(
        fmt::format("WAL header block buffer is {} bytes, need {}", out.size(), hb));
  }
  WalRecordInfo info;
  info.sequence = sequence;
  info.block_bytes = block;
  info.header_bytes = static_cast<uint32_t>(request_header.size());
  info.payload_bytes = payload_bytes;
  info.record_bytes = hb + payload_bytes;
  info.header_crc = Crc32c(request_header.data(), request_header.size());
  info.payload_crc = payload_crc;

  char* p = out.data();
  std::memset(p, 0, kWalMetaBytes);
  Put<uint32_t>(p, kOffMagic, kWalMagic);
  Put<uint16_t>(p, kOffVersion, kWalVersion);
  Put<uint16_t>(p, kOffMetaBytes, static_cast<uint16_t>(kWalMetaBytes));
  Put<uint32_t>(p, kOffBlock, block);
  Put<uint32_t>(p, kOffHeaderBytes, info.header_bytes);
  Put<uint64_t>(p, kOffSequence, sequence);
  Put<uint64_t>(p, kOffPayloadBytes, payload_bytes);
  Put<uint64_t>(p, kOffRecordBytes, info.record_bytes);
  Put<uint32_t>(p, kOffHeaderCrc, info.header_crc);
  Put<uint32_t>(p, kOffPayloadCrc, payload_crc);
  Put<uint32_t>(p, kOffFlags, 0);
  Put<uint32_t>(p, kOffMetaCrc, Crc32c(p, kOffMetaCrc));
  // Zero padding, then the request with its size at the end of the block.
  // Control data, not payload, so a plain memcpy.
  const size_t req_off = WalRequestOffset(info);
  std::memset(p + kWalMetaBytes, 0, hb - kWalMetaBytes);
  Put<uint32_t>(p, req_off, info.header_bytes);
  if (!request_header.empty()) std::memcpy(p + req_off + 4, request_header.data(), request_header.size());
  return info;
}

Result<WalRecordInfo> ParseWalMeta(std::span<const char> bytes) {
  if (bytes.size() < kWalMetaBytes) {
    return InvalidArgumentError(
        fmt::format("WAL meta needs {} bytes, got {}", kWalMetaBytes, bytes.size()));
  }
  const char* p = bytes.data();
  const uint32_t magic = Get<uint32_t>(p, kOffMagic);
  if (magic != kWalMagic) {
    return DataLossError(fmt::format("WAL record: bad magic {:#010x}", magic));
  }
  const uint32_t meta_crc = Get<uint32_t>(p, kOffMetaCrc);
  const uint32_t want_crc = Crc32c(p, kOffMetaCrc);
  if (meta_crc != want_crc) {
    return DataLossError(
        fmt::format("WAL record: meta crc {:#010x} != computed {:#010x}", meta_crc, want_crc));
  }
  const uint16_t version = Get<uint16_t>(p, kOffVersion);
  if (version != kWalVersion) {
    return DataLossError(fmt::format("WAL record: unknown version {}", version));
  }
  if (Get<uint16_t>(p, kOffMetaBytes) != kWalMetaBytes) {
    return DataLossError("WAL record: unexpected meta size");
  }
  WalRecordInfo info;
  info.block_bytes = Get<uint32_t>(p, kOffBlock);
  info.header_bytes = Get<uint32_t>(p, kOffHeaderBytes);
  info.sequence = Get<uint64_t>(p, kOffSequence);
  info.payload_bytes = Get<uint64_t>(p, kOffPayloadBytes);
  info.record_bytes = Get<uint64_t>(p, kOffRecordBytes);
  info.header_crc = Get<uint32_t>(p, kOffHeaderCrc);
  info.payload_crc = Get<uint32_t>(p, kOffPayloadCrc);
  if (!ValidBlock(info.block_bytes) || info.header_bytes > kWalMaxHeaderBytes ||
      info.payload_bytes % info.block_bytes != 0 ||
      // A payload length near 2^64 would wrap the sum below and pass.
      info.payload_bytes > UINT64_MAX - WalHeaderBlockBytes(info.header_bytes, info.block_bytes) ||
      info.record_bytes != WalHeaderBlockBytes(info.header_bytes, info.block_bytes) + info.payload_bytes) {
    return DataLossError(fmt::format(
        "WAL record: inconsistent lengths (block {}, header {}, payload {}, record {})",
        info.block_bytes, info.header_bytes, info.payload_bytes, info.record_bytes));
  }
  return info;
}

size_t WalRequestOffset(const WalRecordInfo& info) noexcept {
  return info.header_block_bytes() - 4 - RoundUp4(info.header_bytes);
}

Result<std::string_view> VerifyWalHeaderBlock(const WalRecordInfo& info,
                                              std::span<const char> block) {
  const size_t hb = info.header_block_bytes();
  if (block.size() < hb) {
    return InvalidArgumentError(
        fmt::format("WAL header block needs {} bytes, got {}", hb, block.size()));
  }
  const size_t req_off = WalRequestOffset(info);
  if (Get<uint32_t>(block.data(), req_off) != info.header_bytes) {
    return DataLossError(fmt::format("WAL record {}: request size field {} != meta's {}", info.sequence,
                                     Get<uint32_t>(block.data(), req_off), info.header_bytes));
  }
  std::string_view header(block.data() + req_off + 4, info.header_bytes);
  const uint32_t crc = Crc32c(header.data(), header.size());
  if (crc != info.header_crc) {
    return DataLossError(fmt::format("WAL record {}: request header crc {:#010x} != recorded {:#010x}",
                                     info.sequence, crc, info.header_crc));
  }
  auto nonzero = [](const char* b, const char* e) { return std::any_of(b, e, [](char c) { return c != 0; }); };
  if (nonzero(block.data() + kWalMetaBytes, block.data() + req_off) ||
      nonzero(header.data() + header.size(), block.data() + hb)) {
    return DataLossError(fmt::format("WAL record {}: non-zero padding", info.sequence));
  }
  return header;
}

Status VerifyWalPayload(const WalRecordInfo& info, std::span<const iovec> payload) {
  uint64_t n = 0;
  for (const iovec& v : payload) n += v.iov_len;
  if (n != info.payload_bytes) {
    return DataLossError(fmt::format("WAL record {}: payload is {} bytes, recorded {}",
                                     info.sequence, n, info.payload_bytes));
  }
  const uint32_t crc = Crc32cOf(payload);
  if (crc != info.payload_crc) {
    return DataLossError(fmt::format("WAL record {}: payload crc {:#010x} != recorded {:#010x}",
                                     info.sequence, crc, info.payload_crc));
  }
  return Status::Ok();
}

Result<WalRecordView> DecodeWalRecord(std::span<const char> record) {
  HRPC_ASSIGN_OR_RETURN(WalRecordInfo info, ParseWalMeta(record));
  if (record.size() < info.record_bytes) {
    return DataLossError(fmt::format("WAL record {}: truncated ({} of {} bytes)", info.sequence,
                                     record.size(), info.record_bytes));
  }
  HRPC_ASSIGN_OR_RETURN(std::string_view header, VerifyWalHeaderBlock(info, record));
  std::span<const char> payload = record.subspan(info.header_block_bytes(), info.payload_bytes);
  const iovec v{const_cast<char*>(payload.data()), payload.size()};
  HRPC_TRY(VerifyWalPayload(info, std::span<const iovec>(&v, 1)));
  return WalRecordView{info, header, payload};
}

Result<mempool::IoBuf> EncodeWalRecord(mempool::Pool& pool, uint64_t sequence,
                                       std::string_view request_header, mempool::IoBuf payload,
                                       uint32_t block, std::optional<uint32_t> payload_crc,
                                       WalRecordInfo* info_out) {
  const size_t hb = WalHeaderBlockBytes(request_header.size(), block);
  // The header block is the first element of the record's scatter list, so
  // (PRP) it must end on a page boundary: place it at the end of a page-aligned
  // page-class slab. Its start is then block-aligned because hb is.
  constexpr size_t kPage = mempool::Pool::kPageClassMin;
  const size_t slab_bytes = (hb + kPage - 1) / kPage * kPage;
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer slab, pool.Allocate(slab_bytes));
  mempool::Buffer header = slab.Slice(slab_bytes - hb, hb);
  const uint32_t crc = payload_crc ? *payload_crc : payload.Crc32c();
  HRPC_ASSIGN_OR_RETURN(WalRecordInfo info,
                        EncodeWalHeaderBlock(std::span<char>(header.data(), hb), sequence,
                                             request_header, payload.size(), crc, block));
  if (info_out != nullptr) *info_out = info;
  mempool::IoBuf record(std::move(header));
  record.Append(std::move(payload));
  return record;
}

}  // namespace hrpc::nvme
