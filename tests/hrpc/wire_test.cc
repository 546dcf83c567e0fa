#include "hrpc/rpc/wire.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "hrpc/base/crc32c.h"

namespace hrpc::wire {
namespace {

std::span<const std::byte> AsBytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

// Little-endian field writers for hand-corrupting frames (offsets per docs/protocol.md).
void Put16(std::vector<std::byte>& f, size_t off, uint16_t v) {
  f[off] = std::byte(v & 0xff);
  f[off + 1] = std::byte(v >> 8);
}
void Put32(std::vector<std::byte>& f, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) f[off + i] = std::byte((v >> (8 * i)) & 0xff);
}

FrameHeader RequestHeader() {
  FrameHeader h;
  h.kind = FrameKind::kRequest;
  h.credits = 7;
  h.txn_id = 0x0123456789abcdefull;
  h.service_id = 0xdeadbeef;
  h.method_id = 0x01020304;
  h.deadline_us = 1'500'000;
  h.flags = 0;
  return h;
}

std::vector<std::byte> Encode(FrameHeader h, std::span<const BulkDescriptor> descs, std::string_view msg,
                              std::string_view att, std::string_view status_msg = {}) {
  std::vector<std::byte> buf(PrefixSize(descs.size(), h.request_id != 0) + msg.size() + att.size() +
                             status_msg.size());
  auto n = EncodeFrame(h, descs, AsBytes(msg), AsBytes(att), status_msg, buf);
  EXPECT_TRUE(n.ok()) << n.status().ToString();
  if (n.ok()) {
    EXPECT_EQ(*n, buf.size());
  }
  return buf;
}

std::string ToString(std::span<const std::byte> b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

TEST(WireTest, HeaderLayoutIsPinned) {
  std::vector<std::byte> f = Encode(RequestHeader(), {}, "", "");
  ASSERT_EQ(f.size(), kHeaderSize);
  // "HRPC", version 1, kind request, header length 56.
  EXPECT_EQ(std::memcmp(f.data(), "HRPC", 4), 0);
  EXPECT_EQ(f[4], std::byte{1});
  EXPECT_EQ(f[5], std::byte{1});
  EXPECT_EQ(f[6], std::byte{56});
  EXPECT_EQ(f[7], std::byte{0});
  // txn id little-endian at 16.
  EXPECT_EQ(f[16], std::byte{0xef});
  EXPECT_EQ(f[23], std::byte{0x01});
  // service id at 24.
  EXPECT_EQ(f[24], std::byte{0xef});
  EXPECT_EQ(f[27], std::byte{0xde});
}

TEST(WireTest, RequestIdTravelsInTheHeaderExtension) {
  FrameHeader h = RequestHeader();
  h.request_id = 0x1122334455667788ull;
  const std::vector<BulkDescriptor> descs = {{0x1000, 64, 9, 0, BulkDirection::kPush}};
  std::vector<std::byte> f = Encode(h, descs, "msg", "");
  ASSERT_EQ(f.size(), kRequestIdHeaderSize + kDescriptorSize + 3);
  EXPECT_EQ(f[6], std::byte{64});                          // header_len
  EXPECT_EQ(f[8], std::byte{kFlagRequestId});              // flags
  EXPECT_EQ(f[56], std::byte{0x88});                       // the id, little-endian at 56
  EXPECT_EQ(f[63], std::byte{0x11});
  auto frame = Decode(f);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(frame->header().request_id, h.request_id);
  EXPECT_EQ(frame->header().header_len, kRequestIdHeaderSize);
  EXPECT_EQ(frame->descriptor(0), descs[0]);
  EXPECT_EQ(ToString(frame->message()), "msg");
  // Without an id: the version-1 header, flag clear.
  h.request_id = 0;
  h.flags = kFlagRequestId;  // a stale flag is not sent
  std::vector<std::byte> plain = Encode(h, {}, "", "");
  EXPECT_EQ(plain.size(), kHeaderSize);
  EXPECT_EQ(plain[8], std::byte{0});
  // The flag on a 56-byte header is a corrupt frame.
  plain[8] = std::byte{kFlagRequestId};
  EXPECT_EQ(Decode(plain).status().code(), StatusCode::kDataLoss);
}

TEST(WireTest, RoundTripRequestWithDescriptors) {
  const std::string payload(10000, 'p');
  std::vector<BulkDescriptor> descs = {
      {0x7f0000001000ull, static_cast<uint32_t>(payload.size()), 0x1234, Crc32c(payload.data(), payload.size()),
       BulkDirection::kPull},
      {0x7f0000800000ull, 1u << 20, 0x5678, 0, BulkDirection::kPush},
  };
  FrameHeader h = RequestHeader();
  std::vector<std::byte> buf = Encode(h, descs, "protobuf-bytes", "inline-attachment");
  EXPECT_EQ(buf.size(), PrefixSize(2) + 14 + 17);

  auto frame = Decode(buf);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  const FrameHeader& d = frame->header();
  EXPECT_EQ(d.kind, FrameKind::kRequest);
  EXPECT_EQ(d.credits, 7);
  EXPECT_EQ(d.txn_id, h.txn_id);
  EXPECT_EQ(d.service_id, h.service_id);
  EXPECT_EQ(d.method_id, h.method_id);
  EXPECT_EQ(d.deadline_us, 1'500'000u);
  EXPECT_EQ(d.message_len, 14u);
  EXPECT_EQ(d.attachment_len, 17u);
  EXPECT_EQ(d.header_len, kHeaderSize);
  ASSERT_EQ(frame->num_descriptors(), 2u);
  EXPECT_EQ(frame->descriptor(0), descs[0]);
  EXPECT_EQ(frame->descriptor(1), descs[1]);
  EXPECT_EQ(ToString(frame->message()), "protobuf-bytes");
  EXPECT_EQ(ToString(frame->attachment()), "inline-attachment");
  EXPECT_TRUE(frame->status().ok());
  EXPECT_TRUE(CheckBulkCrc(frame->descriptor(0), AsBytes(payload)).ok());
  std::string corrupted = payload;
  corrupted[5000] ^= 1;
  Status bad = CheckBulkCrc(frame->descriptor(0), AsBytes(corrupted));
  EXPECT_EQ(bad.code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.message().find("crc32c mismatch"), std::string_view::npos);
  EXPECT_EQ(CheckBulkCrc(frame->descriptor(0), AsBytes("short")).code(), StatusCode::kDataLoss);
}

TEST(WireTest, RoundTripErrorResponseCarriesStatusMessage) {
  FrameHeader h;
  h.kind = FrameKind::kResponse;
  h.txn_id = 42;
  h.status = StatusCode::kResourceExhausted;
  std::vector<std::byte> buf = Encode(h, {}, "", "", "disk full on /dev/nvme0");
  auto frame = Decode(buf);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(frame->status(), Status(StatusCode::kResourceExhausted, "disk full on /dev/nvme0"));
  EXPECT_EQ(frame->status_message(), "disk full on /dev/nvme0");
}

TEST(WireTest, EveryKindRoundTrips) {
  for (FrameKind k : {FrameKind::kRequest, FrameKind::kResponse, FrameKind::kCredit, FrameKind::kCancel,
                      FrameKind::kPing, FrameKind::kRelease, FrameKind::kPong, FrameKind::kStreamOpen,
                      FrameKind::kStreamMessage, FrameKind::kStreamWindow, FrameKind::kStreamClose}) {
    FrameHeader h;
    h.kind = k;
    h.credits = 3;
    auto frame = Decode(Encode(h, {}, "", ""));
    ASSERT_TRUE(frame.ok()) << FrameKindName(k);
    EXPECT_EQ(frame->header().kind, k);
    EXPECT_EQ(frame->header().deadline_us, kNoDeadline);
  }
}

// A stream's final status travels in its close frame, as a response's does.
TEST(WireTest, StreamCloseCarriesTheFinalStatus) {
  FrameHeader h;
  h.kind = FrameKind::kStreamClose;
  h.txn_id = 9;
  h.status = StatusCode::kAborted;
  const std::vector<std::byte> buf = Encode(h, {}, "", "", "lease lost");
  auto frame = Decode(buf);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(frame->status(), Status(StatusCode::kAborted, "lease lost"));
}

TEST(WireTest, StreamWindowLayoutIsPinned) {
  StreamWindow w{0x0102030405060708ull, 0x1112131415161718ull, 64, 8u << 20};
  std::array<std::byte, kStreamWindowSize> b{};
  EncodeStreamWindow(w, b);
  EXPECT_EQ(b[0], std::byte{0x08});
  EXPECT_EQ(b[7], std::byte{0x01});
  EXPECT_EQ(b[8], std::byte{0x18});
  EXPECT_EQ(b[16], std::byte{64});
  EXPECT_EQ(b[22], std::byte{0x80});
  auto back = DecodeStreamWindow(b);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, w);
  auto short_body = DecodeStreamWindow(std::span(b).first(20));
  EXPECT_EQ(short_body.status().code(), StatusCode::kDataLoss);
  w.window_messages = kInitialStreamWindowMessages - 1;
  EncodeStreamWindow(w, b);
  auto small = DecodeStreamWindow(b);
  EXPECT_EQ(small.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(small.status().message().find("below the initial window"), std::string::npos);
}

TEST(WireTest, DecodeHeaderGivesFrameLengthForStreamReaders) {
  std::vector<BulkDescriptor> descs(3);
  std::vector<std::byte> buf = Encode(RequestHeader(), descs, "abc", "defgh");
  auto h = DecodeHeader(std::span(buf).first(kHeaderSize));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(FrameLength(*h), buf.size());
}

TEST(WireTest, EncodePrefixLeavesRoomForCallerBytes) {
  FrameHeader h = RequestHeader();
  h.message_len = 5;
  std::vector<std::byte> buf(PrefixSize(0) + 5);
  auto n = EncodePrefix(h, {}, buf);
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, PrefixSize(0));
  std::memcpy(buf.data() + *n, "hello", 5);  // the caller serializes in place
  auto frame = Decode(buf);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(ToString(frame->message()), "hello");
}

TEST(WireTest, EncodeRejectsMisuse) {
  std::vector<std::byte> small(10);
  EXPECT_EQ(EncodePrefix(RequestHeader(), {}, small).status().code(), StatusCode::kInvalidArgument);
  std::vector<BulkDescriptor> many(kMaxDescriptors + 1);
  std::vector<std::byte> big(PrefixSize(many.size()));
  EXPECT_EQ(EncodePrefix(RequestHeader(), many, big).status().code(), StatusCode::kInvalidArgument);
  FrameHeader h = RequestHeader();
  h.message_len = static_cast<uint32_t>(kMaxFrameBytes);
  std::vector<std::byte> hdr(kHeaderSize);
  EXPECT_EQ(EncodePrefix(h, {}, hdr).status().code(), StatusCode::kInvalidArgument);
}

// --- Malformed frames: each its own Status ---------------------------------

void ExpectDecodeError(std::span<const std::byte> frame, StatusCode code, std::string_view part) {
  auto r = Decode(frame);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_NE(r.status().message().find(part), std::string_view::npos) << r.status().ToString();
}

class WireMalformedTest : public ::testing::Test {
 protected:
  std::vector<std::byte> good_ = Encode(RequestHeader(), std::vector<BulkDescriptor>(2), "msg", "att");
};

TEST_F(WireMalformedTest, BadMagic) {
  auto f = good_;
  f[0] = std::byte{'X'};
  ExpectDecodeError(f, StatusCode::kDataLoss, "bad magic");
}

TEST_F(WireMalformedTest, VersionMismatch) {
  auto f = good_;
  f[4] = std::byte{2};
  ExpectDecodeError(f, StatusCode::kFailedPrecondition, "version mismatch: peer speaks version 2");
}

TEST_F(WireMalformedTest, TruncatedHeader) {
  ExpectDecodeError(std::span(good_).first(20), StatusCode::kDataLoss, "truncated frame: 20 bytes");
  ExpectDecodeError({}, StatusCode::kDataLoss, "truncated frame: 0 bytes");
}

TEST_F(WireMalformedTest, TruncatedDescriptors) {
  ExpectDecodeError(std::span(good_).first(kHeaderSize + 10), StatusCode::kDataLoss,
                    "truncated frame: header and 2 descriptors");
}

TEST_F(WireMalformedTest, PayloadLengthsExceedFrame) {
  ExpectDecodeError(std::span(good_).first(good_.size() - 1), StatusCode::kDataLoss,
                    "declared payload lengths exceed the frame");
  auto f = good_;
  Put32(f, 40, 1000);  // message_len
  ExpectDecodeError(f, StatusCode::kDataLoss, "declared payload lengths exceed the frame");
}

TEST_F(WireMalformedTest, LengthsOverflowTheFrameLimit) {
  auto f = good_;
  Put32(f, 40, 0xffffffffu);  // message_len
  Put32(f, 44, 0xffffffffu);  // attachment_len
  ExpectDecodeError(f, StatusCode::kDataLoss, "declared lengths overflow the frame limit");
}

// The frame limit bounds the control part; an attachment streamed behind the
// frame is bounded by the transport, not by it.
TEST(WireTest, LargeAttachmentLengthIsNotAgainstTheFrameLimit) {
  FrameHeader h = RequestHeader();
  h.attachment_len = static_cast<uint32_t>(kMaxFrameBytes * 8);
  std::vector<std::byte> hdr(kHeaderSize);
  ASSERT_TRUE(EncodePrefix(h, {}, hdr).ok());
  auto back = DecodeHeader(hdr);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->attachment_len, kMaxFrameBytes * 8);
}

TEST_F(WireMalformedTest, TrailingBytes) {
  auto f = good_;
  f.push_back(std::byte{0});
  ExpectDecodeError(f, StatusCode::kDataLoss, "trailing bytes");
}

TEST_F(WireMalformedTest, BadHeaderLength) {
  for (uint16_t len : {uint16_t{0}, uint16_t{48}, uint16_t{57}, uint16_t{264}}) {
    auto f = good_;
    Put16(f, 6, len);
    ExpectDecodeError(f, StatusCode::kDataLoss, "bad header length " + std::to_string(len));
  }
}

TEST_F(WireMalformedTest, LongerHeaderFromAFutureMinorRevisionIsSkipped) {
  // header_len 64: 8 extension bytes after the fixed header are ignored.
  std::vector<std::byte> f(good_.begin(), good_.begin() + kHeaderSize);
  f.insert(f.end(), 8, std::byte{0xaa});
  f.insert(f.end(), good_.begin() + kHeaderSize, good_.end());
  Put16(f, 6, 64);
  auto frame = Decode(f);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(ToString(frame->message()), "msg");
  EXPECT_EQ(frame->header().header_len, 64);
}

TEST_F(WireMalformedTest, TooManyDescriptors) {
  auto f = good_;
  Put16(f, 12, kMaxDescriptors + 1);
  ExpectDecodeError(f, StatusCode::kDataLoss, "too many bulk descriptors: 65");
}

TEST_F(WireMalformedTest, UnknownKind) {
  for (uint8_t kind : {uint8_t{0}, uint8_t{12}, uint8_t{255}}) {
    auto f = good_;
    f[5] = std::byte{kind};
    ExpectDecodeError(f, StatusCode::kDataLoss, "unknown frame kind " + std::to_string(kind));
  }
}

TEST_F(WireMalformedTest, UnknownStatusCode) {
  auto f = good_;
  f[14] = std::byte{17};
  ExpectDecodeError(f, StatusCode::kDataLoss, "unknown status code 17");
}

// Found by fuzzing (tests/fuzz/corpus/wire/crash-status-on-request): a request
// with a status code decoded, and Frame::status() made it an error.
TEST_F(WireMalformedTest, StatusOnlyOnResponses) {
  auto f = good_;
  f[14] = std::byte{1};
  ExpectDecodeError(f, StatusCode::kDataLoss, "status 1 on a request frame (only responses and stream_close carry one)");
  FrameHeader ping;
  ping.kind = FrameKind::kPing;
  auto p = Encode(ping, {}, "", "");
  p[14] = std::byte{13};
  ExpectDecodeError(p, StatusCode::kDataLoss, "status 13 on a ping frame");
}

TEST_F(WireMalformedTest, UnknownBulkDirection) {
  auto f = good_;
  f[kHeaderSize + kDescriptorSize + 20] = std::byte{9};
  ExpectDecodeError(f, StatusCode::kDataLoss, "bulk descriptor 1 has unknown direction 9");
}

TEST_F(WireMalformedTest, StatusMessageOnlyOnErrorResponses) {
  FrameHeader h;
  h.kind = FrameKind::kResponse;
  h.status = StatusCode::kInternal;
  auto f = Encode(h, {}, "", "", "boom");
  f[14] = std::byte{0};  // status OK but a status message follows
  ExpectDecodeError(f, StatusCode::kDataLoss, "status message on a frame that is not an error response");
  auto g = good_;
  Put32(g, 48, 5000);
  ExpectDecodeError(g, StatusCode::kDataLoss, "status message length 5000 exceeds");
}

TEST_F(WireMalformedTest, EveryErrorMessageIsDistinct) {
  std::vector<std::vector<std::byte>> frames;
  auto mut = [&](auto fn) {
    auto f = good_;
    fn(f);
    frames.push_back(f);
  };
  mut([](auto& f) { f[0] = std::byte{0}; });
  mut([](auto& f) { f[4] = std::byte{9}; });
  mut([](auto& f) { f.resize(10); });
  mut([](auto& f) { f.resize(kHeaderSize + 1); });
  mut([](auto& f) { f.pop_back(); });
  mut([](auto& f) { Put32(f, 40, 0xffffffffu); Put32(f, 44, 0xffffffffu); });
  mut([](auto& f) { f.push_back(std::byte{0}); });
  mut([](auto& f) { Put16(f, 6, 8); });
  mut([](auto& f) { Put16(f, 12, 1000); });
  mut([](auto& f) { f[5] = std::byte{77}; });
  mut([](auto& f) { f[14] = std::byte{99}; });
  mut([](auto& f) { f[14] = std::byte{1}; });
  mut([](auto& f) { f[kHeaderSize + 20] = std::byte{0}; });
  std::set<std::string> prefixes;
  for (const auto& f : frames) {
    auto r = Decode(f);
    ASSERT_FALSE(r.ok());
    // The part before the first number names the case.
    std::string m(r.status().message());
    prefixes.insert(m.substr(0, m.find_first_of("0123456789")));
  }
  EXPECT_EQ(prefixes.size(), frames.size());
}

}  // namespace
}  // namespace hrpc::wire
