// The hrpc wire format: one control frame per message, version 1.
//
//   [ fixed header (header_len bytes, >= 56) ]
//   [ num_descriptors x BulkDescriptor (24 bytes each) ]
//   [ message_len bytes: the serialized protobuf ]
//   [ attachment_len bytes: the inline attachment ]
//   [ status_message_len bytes: UTF-8 status message (error responses only) ]
//
// All integers are little-endian. docs/protocol.md is the byte-exact description
// and must change together with this file.
//
// Encoding writes only the header and the descriptors into a caller buffer
// (EncodePrefix); the caller serializes the protobuf and places the attachment
// and status message right behind it, so the bytes land in the pool buffer that
// is sent, without an intermediate copy. Decoding validates everything it
// returns: a frame that Decode() accepts can be indexed without further checks.
//
// Error codes of Decode / DecodeHeader (each case has its own message, all
// starting with "hrpc wire: "):
//   FAILED_PRECONDITION  version mismatch (the peer speaks another protocol
//                        version; retrying the same frame can never succeed).
//   DATA_LOSS            everything else that makes the frame unusable: bad
//                        magic, truncated frame, bad header length, declared
//                        lengths beyond the frame or the frame limit, trailing
//                        bytes, too many descriptors, unknown kind, unknown
//                        status code, a status on a frame that is not a
//                        response, unknown bulk direction, status message on
//                        a frame that is not an error response.
// INVALID_ARGUMENT is reserved for encode-side misuse by the local caller (and,
// one layer up, for a request payload that is not a valid protobuf).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"

namespace hrpc::wire {

// 'H' 'R' 'P' 'C' as bytes on the wire; 0x43505248 read as a little-endian u32.
inline constexpr uint32_t kMagic = 0x43505248u;
inline constexpr uint8_t kVersion = 1;
// Size of the version-1 fixed header. A peer may send a longer header
// (header_len > kHeaderSize, multiple of 8, <= kMaxHeaderSize); the extra bytes
// are reserved for extensions and skipped.
inline constexpr size_t kHeaderSize = 56;
inline constexpr size_t kMaxHeaderSize = 256;
// Header flags. kFlagRequestId: the header is at least kRequestIdHeaderSize
// bytes and carries the request id (a u64) at offset 56.
inline constexpr uint16_t kFlagRequestId = 0x1;
inline constexpr size_t kRequestIdHeaderSize = 64;
inline constexpr size_t kDescriptorSize = 24;
inline constexpr size_t kMaxDescriptors = 64;
// Largest control part (header, descriptors, message, status message) a
// receiver accepts. The attachment is not counted: an inline one is bounded
// by the transport's message size, one streamed behind the frame (TCP) by the
// transport's payload limit, and attachment_len by 32 bits.
inline constexpr uint64_t kMaxFrameBytes = 16u << 20;
inline constexpr size_t kMaxStatusMessage = 4096;
// deadline_us value meaning "no deadline".
inline constexpr uint64_t kNoDeadline = std::numeric_limits<uint64_t>::max();

static_assert(kHeaderSize % 8 == 0 && kMaxHeaderSize % 8 == 0 && kDescriptorSize % 8 == 0);
static_assert(kHeaderSize <= kMaxHeaderSize);
static_assert(kMaxHeaderSize + kMaxDescriptors * kDescriptorSize + kMaxStatusMessage < kMaxFrameBytes);

enum class FrameKind : uint8_t {
  kRequest = 1,
  kResponse = 2,
  kCredit = 3,   // credits only (credits also ride on every other frame)
  kCancel = 4,   // cancel the transaction txn_id
  kPing = 5,     // liveness probe; answered by a pong with the same txn_id
  kRelease = 6,  // client -> server: the response attachment exposed for txn_id was read
  kPong = 7,     // the answer to a ping; never answered
  // Streams (docs/protocol.md, "Streams"): txn_id names the stream.
  kStreamOpen = 8,     // client -> server: opens a stream; body = StreamWindow (the client's receive window)
  kStreamMessage = 9,  // either way: one message of the stream (message + attachment, like a request)
  kStreamWindow = 10,  // either way: the receiver's consumption so far and its window; body = StreamWindow
  kStreamClose = 11,   // half-close: client -> server, no more messages; server -> client, the final status
};
std::string_view FrameKindName(FrameKind kind) noexcept;

// Whether the receiver of the descriptor READs from it (kPull: the payload of a
// request, client -> server, or of a response the client gave no room for,
// server -> client) or WRITEs into it (kPush: room for the payload of a
// response, server -> client).
enum class BulkDirection : uint8_t { kPull = 1, kPush = 2 };

// A region of registered memory the peer may access for this transaction.
// A plain value: copy it, store it, send it.
struct BulkDescriptor {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint32_t rkey = 0;
  uint32_t crc32c = 0;  // of the len bytes (kPull); 0 and ignored for kPush
  BulkDirection direction = BulkDirection::kPull;

  friend bool operator==(const BulkDescriptor&, const BulkDescriptor&) = default;
};

// DATA_LOSS "hrpc wire: bulk crc32c mismatch ..." unless Crc32c(bytes) == d.crc32c
// and bytes.size() == d.len ("hrpc wire: bulk length mismatch ...").
Status CheckBulkCrc(const BulkDescriptor& d, std::span<const std::byte> bytes);
// The same for bytes in a chain of buffers (what a pull or push moved).
Status CheckBulkCrc(const BulkDescriptor& d, const mempool::IoBuf& bytes);

// The decoded fixed header. num_descriptors is filled by Decode; EncodePrefix
// takes it from the descriptor span it is given.
struct FrameHeader {
  FrameKind kind = FrameKind::kRequest;
  uint16_t flags = 0;    // kFlag*; EncodePrefix sets kFlagRequestId from request_id, receivers ignore unknown bits
  uint16_t credits = 0;  // receive buffers the sender has re-posted for the peer
  uint16_t num_descriptors = 0;
  StatusCode status = StatusCode::kOk;  // responses only
  uint64_t txn_id = 0;
  uint32_t service_id = 0;
  uint32_t method_id = 0;
  uint64_t deadline_us = kNoDeadline;  // remaining budget when sent, microseconds
  uint32_t message_len = 0;
  uint32_t attachment_len = 0;
  uint32_t status_message_len = 0;
  uint16_t header_len = kHeaderSize;   // as received; EncodePrefix writes HeaderSize(request_id != 0)
  // One logical call across its retries (requests only; 0 = none): a
  // server's dedup window answers a retry with the first answer.
  uint64_t request_id = 0;

  friend bool operator==(const FrameHeader&, const FrameHeader&) = default;
};

// Bytes of header + descriptors for `num_descriptors` descriptors.
constexpr size_t HeaderSize(bool request_id) noexcept { return request_id ? kRequestIdHeaderSize : kHeaderSize; }
constexpr size_t PrefixSize(size_t num_descriptors, bool request_id = false) noexcept {
  return HeaderSize(request_id) + num_descriptors * kDescriptorSize;
}
// Total frame length the header declares.
uint64_t FrameLength(const FrameHeader& h) noexcept;

// Writes header + descriptors into `out`; returns the bytes written
// (PrefixSize(descriptors.size(), header.request_id != 0)). INVALID_ARGUMENT if out is too small, there
// are more than kMaxDescriptors descriptors, the status message is longer than
// kMaxStatusMessage or the frame would exceed kMaxFrameBytes.
Result<size_t> EncodePrefix(const FrameHeader& header, std::span<const BulkDescriptor> descriptors,
                            std::span<std::byte> out);

// Convenience for small frames and tests: header, descriptors, then copies of
// message, attachment and status message. Returns the frame length.
Result<size_t> EncodeFrame(FrameHeader header, std::span<const BulkDescriptor> descriptors,
                           std::span<const std::byte> message, std::span<const std::byte> attachment,
                           std::string_view status_message, std::span<std::byte> out);

// Validates and decodes the fixed header only. Needs at least kHeaderSize
// bytes; `prefix` may be shorter than the whole frame (stream transports read
// the header, then FrameLength(header) bytes). Does not check descriptors.
Result<FrameHeader> DecodeHeader(std::span<const std::byte> prefix);

// A validated frame. Views into the decoded buffer: valid while it is.
class Frame {
 public:
  const FrameHeader& header() const noexcept { return header_; }
  size_t num_descriptors() const noexcept { return header_.num_descriptors; }
  BulkDescriptor descriptor(size_t i) const noexcept;  // i < num_descriptors()
  std::span<const std::byte> message() const noexcept { return message_; }
  std::span<const std::byte> attachment() const noexcept { return attachment_; }
  std::string_view status_message() const noexcept { return status_message_; }
  // The response status as a Status (code + message); OK for non-responses.
  Status status() const;

 private:
  friend Result<Frame> Decode(std::span<const std::byte> frame);
  FrameHeader header_;
  const std::byte* descriptors_ = nullptr;
  std::span<const std::byte> message_;
  std::span<const std::byte> attachment_;
  std::string_view status_message_;
};

// Validates and decodes a whole frame; `frame` must be exactly one frame.
Result<Frame> Decode(std::span<const std::byte> frame);

// --- streams ------------------------------------------------------------------

// Flow control of one direction of a stream, as its receiver states it: how
// many messages and bytes (message + attachment) it has consumed since the
// stream opened, and how many more than that it lets the sender have in
// flight. The sender may send while sent_messages - consumed_messages <
// window_messages and sent_bytes - consumed_bytes < window_bytes (so one
// message larger than the byte window still goes, alone). Cumulative counts
// make a lost or reordered update harmless and tell the sender which messages
// are done (it may revoke their exposures).
struct StreamWindow {
  uint64_t consumed_messages = 0;
  uint64_t consumed_bytes = 0;
  uint32_t window_messages = 0;
  uint32_t window_bytes = 0;

  friend bool operator==(const StreamWindow&, const StreamWindow&) = default;
};
inline constexpr size_t kStreamWindowSize = 24;
// The window a sender assumes until the receiver's first StreamWindow
// arrives; a receiver's window is at least this.
inline constexpr uint32_t kInitialStreamWindowMessages = 16;
inline constexpr uint32_t kInitialStreamWindowBytes = 256u << 10;

void EncodeStreamWindow(const StreamWindow& w, std::span<std::byte, kStreamWindowSize> out) noexcept;
// DATA_LOSS unless `body` is exactly kStreamWindowSize bytes and the window is
// at least the initial one.
Result<StreamWindow> DecodeStreamWindow(std::span<const std::byte> body);

}  // namespace hrpc::wire
