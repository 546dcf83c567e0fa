// WAL records laid out for zero-copy payloads (the layout Curve describes).
//
//   record = [ meta (64 B) | zero padding | u32 request bytes | request | pad to 4 ] [ payload ... ]
//            \________________ head block: a multiple of the block _______________/ \_ multiple of the block _/
//
// The head block is the only part written fresh (from a pool buffer); the
// payload slabs go to the disk exactly as they arrived from the network, so
// the payload starts on a block boundary of the file and in memory stays in
// its page-aligned slabs. The whole record is a multiple of the block size,
// so records can be appended back to back with O_DIRECT. The request sits at
// the END of the head block, right before the payload, with its 4-byte size
// in front and zero padding to a multiple of 4 behind: the "size + request +
// payload" tail of a record is one contiguous piece whose payload part stays
// 4-byte aligned (and page-aligned in memory), as Curve forwards it. A 12 KiB
// write with a 100-byte request makes a 4 KiB head block and a 16 KiB record.
//
// Meta (little-endian, 64 bytes):
//   0  u32 magic "HWAL"      4  u16 version (2)     6  u16 meta bytes (64)
//   8  u32 block bytes      12  u32 request header bytes
//  16  u64 sequence         24  u64 payload bytes
//  32  u64 record bytes     40  u32 crc32c(request header)
//  44  u32 crc32c(payload)  48  u32 flags (0)      52  u32 reserved (0)
//  56  u32 reserved (0)     60  u32 crc32c(meta bytes 0..59)
//
// Encode/decode functions here are pure (spans and iovecs); EncodeWalRecord()
// at the bottom is the pool-backed convenience the sink's users call.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"

namespace hrpc::nvme {

inline constexpr uint32_t kWalMagic = 0x4C415748;  // "HWAL" little-endian
inline constexpr uint16_t kWalVersion = 2;
inline constexpr size_t kWalMetaBytes = 64;
// Largest request header a record may carry (keeps a corrupt length from
// making recovery read gigabytes).
inline constexpr size_t kWalMaxHeaderBytes = 1 << 20;
static_assert(kWalMetaBytes % 8 == 0 && kWalMetaBytes <= 512);

// What a record's meta says (after validation).
struct WalRecordInfo {
  uint64_t sequence = 0;
  uint32_t block_bytes = 0;
  uint32_t header_bytes = 0;       // serialized request header
  uint64_t payload_bytes = 0;
  uint64_t record_bytes = 0;       // header block + payload
  uint32_t header_crc = 0;
  uint32_t payload_crc = 0;
  size_t header_block_bytes() const noexcept {
    return static_cast<size_t>(record_bytes - payload_bytes);
  }
};

// Bytes of the header block for a request header of `header_bytes`:
// round_up(64 + 4 + round_up(header_bytes, 4), block).
size_t WalHeaderBlockBytes(size_t header_bytes, uint32_t block_bytes) noexcept;

// CRC32C over a scatter list, chained in order.
uint32_t Crc32cOf(std::span<const iovec> iov) noexcept;

// Writes meta + zero padding + request size + request header + padding into `out`, which must be exactly
// WalHeaderBlockBytes(request_header.size(), block_bytes) bytes.
// INVALID_ARGUMENT when block_bytes is not a power of two >= 512, the payload
// length is not a multiple of block_bytes (its tail would need padding, i.e. a
// copy), `out` has the wrong size, or the header exceeds kWalMaxHeaderBytes.
// `payload_crc` is the CRC32C of the payload; callers that have it already
// (the transport verified the bulk descriptor's CRC) pass it in.
Result<WalRecordInfo> EncodeWalHeaderBlock(std::span<char> out, uint64_t sequence,
                                           std::string_view request_header,
                                           uint64_t payload_bytes, uint32_t payload_crc,
                                           uint32_t block_bytes);

// Validates the meta at the start of `bytes` (at least kWalMetaBytes): magic,
// version, meta CRC, and that the lengths are consistent. DATA_LOSS for a
// torn or corrupt record (also all-zero space: the end of a log);
// INVALID_ARGUMENT when `bytes` is shorter than the meta.
Result<WalRecordInfo> ParseWalMeta(std::span<const char> bytes);

// Where the 4-byte request size starts inside the head block: the forwarded
// "size + request" piece is head_block[WalRequestOffset(info) .. end).
size_t WalRequestOffset(const WalRecordInfo& info) noexcept;

// Checks the request size, its CRC and the zero padding of a header block (at
// least info.header_block_bytes() bytes) and returns the request header bytes
// (a view into `header_block`). DATA_LOSS on mismatch.
Result<std::string_view> VerifyWalHeaderBlock(const WalRecordInfo& info,
                                              std::span<const char> header_block);

// DATA_LOSS unless the payload has info.payload_bytes bytes with the recorded CRC.
Status VerifyWalPayload(const WalRecordInfo& info, std::span<const iovec> payload);

// A whole record, read back into contiguous memory, decoded and verified.
struct WalRecordView {
  WalRecordInfo info;
  std::string_view request_header;
  std::span<const char> payload;
};
Result<WalRecordView> DecodeWalRecord(std::span<const char> record);

// The record as the sink writes it: a fresh header block from `pool` (placed
// at the end of a page-aligned slab so that, as the first element, it ends on a
// page boundary as PRP requires) followed by the payload's own slices, moved in
// untouched. `payload_crc` as above; nullopt:
// computed here (a CPU read of the payload, not a copy).
Result<mempool::IoBuf> EncodeWalRecord(mempool::Pool& pool, uint64_t sequence,
                                       std::string_view request_header, mempool::IoBuf payload,
                                       uint32_t block_bytes,
                                       std::optional<uint32_t> payload_crc = std::nullopt,
                                       WalRecordInfo* info = nullptr);

}  // namespace hrpc::nvme
