// The TCP transport's wire format (docs/transport.md is the prose version and
// must change together with this file). Little-endian throughout.
//
// Every frame is a fixed 32-byte header followed by `length` body bytes:
//
//   off size field
//    0   1   magic    0xA7 (cheap resync check: garbage is caught early)
//    1   1   type     FrameType
//    2   2   credits  receive slots the sender grants back (rides on every frame)
//    4   4   length   body bytes after the header
//    8   8   op_id    requester's op id (one-sided ops and their answers);
//                     MESSAGE / MESSAGE_PAYLOAD on a checked connection: the
//                     message's sequence number (1, 2, ... per direction)
//   16   8   addr     WRITE / READ_REQ: target address in the peer's memory;
//                     MESSAGE_PAYLOAD: payload bytes after the message
//   24   4   key      WRITE / READ_REQ: exposure key;
//                     MESSAGE_PAYLOAD: how many frames right behind this one
//                     are MESSAGE_PAYLOADs of the same `length` and `addr`
//                     (the receiver reads them with one readv; a frame that
//                     is not what was announced is a protocol error)
//   28   4   aux      READ_REQ: bytes to read; ERROR: StatusCode;
//                     MESSAGE / MESSAGE_PAYLOAD on a checked connection:
//                     CRC32C of the message bytes (not of a payload)
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace hrpc::transport::tcp {

static_assert(std::endian::native == std::endian::little,
              "the TCP frame codec assumes a little-endian host");

inline constexpr uint8_t kFrameMagic = 0xA7;
inline constexpr size_t kHeaderBytes = 32;

enum class FrameType : uint8_t {
  kHello = 1,      // body: Hello. First frame from the connecting side.
  kHelloAck = 2,   // body: Hello. The accepting side's answer.
  kMessage = 3,    // body: one control message (consumes one credit)
  kWrite = 4,      // body: kPayloadPad zeros + payload to place at (key, addr)
  kWriteAck = 5,   // no body: op_id was placed
  kReadReq = 6,    // no body: send aux bytes at (key, addr)
  kReadResp = 7,   // body: kPayloadPad zeros + the bytes of op_id
  kError = 8,      // body: reason text; aux = StatusCode; op_id 0 = connection-level
  kCredit = 9,     // no body: credits only
  kPing = 10,      // no body: keepalive
  // body: `length` message bytes, kPayloadPad zeros, then `addr` payload
  // bytes (not counted in `length`) that the receiver reads straight into
  // aligned pool slabs; one credit, delivered as one message (message slices
  // followed by the payload slabs). Only to a peer whose hello set
  // kHelloPayloads.
  kMessagePayload = 11,
};
inline constexpr uint8_t kMaxFrameType = 11;

struct FrameHeader {
  uint8_t magic = kFrameMagic;
  FrameType type = FrameType::kPing;
  uint16_t credits = 0;
  uint32_t length = 0;
  uint64_t op_id = 0;
  uint64_t addr = 0;
  uint32_t key = 0;
  uint32_t aux = 0;
};
static_assert(sizeof(FrameHeader) == kHeaderBytes);
static_assert(offsetof(FrameHeader, length) == 4 && offsetof(FrameHeader, op_id) == 8 &&
              offsetof(FrameHeader, addr) == 16 && offsetof(FrameHeader, key) == 24 &&
              offsetof(FrameHeader, aux) == 28);

inline void EncodeHeader(const FrameHeader& h, uint8_t* out) { std::memcpy(out, &h, kHeaderBytes); }
inline FrameHeader DecodeHeader(const uint8_t* in) {
  FrameHeader h;
  std::memcpy(&h, in, kHeaderBytes);
  return h;
}

// Body of HELLO / HELLO_ACK.
inline constexpr uint64_t kHelloMagic = 0x3150435450524831ull;  // "1HRPTCP1" read LE
inline constexpr uint16_t kProtocolVersion = 3;  // 3: 992 bytes of payload padding (was 224)
// Hello flags.
inline constexpr uint16_t kHelloPayloads = 1;  // accepts MESSAGE_PAYLOAD up to max_payload_pages * 4096 bytes
// Numbers and checksums its messages (op_id, aux) and checks the peer's; a
// connection is checked when both hellos set it.
inline constexpr uint16_t kHelloChecked = 2;
struct Hello {
  uint64_t magic = kHelloMagic;
  uint16_t version = kProtocolVersion;
  uint16_t flags = 0;
  uint32_t max_message_bytes = 0;
  uint32_t recv_depth = 0;
  uint32_t keepalive_ms = 0;
  uint32_t dead_peer_ms = 0;
  uint32_t max_payload_pages = 0;  // with kHelloPayloads
};
static_assert(sizeof(Hello) == 32);

// Receive-side prefetch: when a connection reads past the frame it is
// filling, it reads at most kPrefetchBytes into a small pool buffer; headers,
// small bodies and control messages are taken from there (messages as slices:
// no copy). So that one-sided payload never lands in that buffer (it must go
// straight into its target), WRITE and READ_RESP bodies start with
// kPayloadPad zero bytes, not counted in `length`; a MESSAGE_PAYLOAD has them
// between its message and its payload (a prefetch that starts at its header
// ends inside message + padding, and its message is never read together with
// bytes beyond it).
//
// Announced frames (a MESSAGE_PAYLOAD's `key`) are read without that limit:
// the receiver knows where each one's header, message and padding end and its
// payload starts, so one readv takes the current payload, then for each
// announced frame its header + message + padding (into one pool buffer,
// parsed like a prefetch) and its payload (into its own pool blocks), then a
// prefetch that starts at the next header. A header found there that is not
// the announced one closes the connection before any byte behind it is used.
inline constexpr size_t kPrefetchBytes = 1024;
inline constexpr uint32_t kPayloadPad = 992;
static_assert(kHeaderBytes + kPayloadPad >= kPrefetchBytes,
              "a prefetch that starts at a WRITE header must end inside its padding");

// Longest reason text an ERROR frame may carry.
inline constexpr uint32_t kMaxErrorText = 1024;
// Credits field is 16 bits; recv_depth must fit.
inline constexpr uint32_t kMaxRecvDepth = 65535;

}  // namespace hrpc::transport::tcp
