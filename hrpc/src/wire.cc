#include "hrpc/rpc/wire.h"

#include <cstring>
#include <functional>
#include <string>

#include "hrpc/base/crc32c.h"

namespace hrpc::wire {
namespace {

// Byte offsets of the version-1 fixed header (docs/protocol.md, "Header").
enum : size_t {
  kOffMagic = 0,
  kOffVersion = 4,
  kOffKind = 5,
  kOffHeaderLen = 6,
  kOffFlags = 8,
  kOffCredits = 10,
  kOffNumDescriptors = 12,
  kOffStatus = 14,
  kOffReserved0 = 15,
  kOffTxnId = 16,
  kOffServiceId = 24,
  kOffMethodId = 28,
  kOffDeadline = 32,
  kOffMessageLen = 40,
  kOffAttachmentLen = 44,
  kOffStatusMessageLen = 48,
  kOffReserved1 = 52,
};
static_assert(kOffReserved1 + 4 == kHeaderSize);

// Descriptor offsets.
enum : size_t { kDescAddr = 0, kDescLen = 8, kDescRkey = 12, kDescCrc = 16, kDescDirection = 20 };

// Explicit little-endian stores/loads: correct on any host, a plain mov on x86.
template <typename T>
void Store(std::byte* p, T v) noexcept {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::byte>(static_cast<uint64_t>(v) >> (8 * i));
}
template <typename T>
T Load(const std::byte* p) noexcept {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return static_cast<T>(v);
}

Status Corrupt(const std::string& what) { return DataLossError("hrpc wire: " + what); }

bool KnownKind(uint8_t k) noexcept {
  return k >= static_cast<uint8_t>(FrameKind::kRequest) && k <= static_cast<uint8_t>(FrameKind::kStreamClose);
}

// Message and status message: the body without the attachment.
uint64_t ControlBodyLength(const FrameHeader& h) noexcept { return uint64_t{h.message_len} + h.status_message_len; }

}  // namespace

std::string_view FrameKindName(FrameKind kind) noexcept {
  switch (kind) {
    case FrameKind::kRequest: return "request";
    case FrameKind::kResponse: return "response";
    case FrameKind::kCredit: return "credit";
    case FrameKind::kCancel: return "cancel";
    case FrameKind::kPing: return "ping";
    case FrameKind::kRelease: return "release";
    case FrameKind::kPong: return "pong";
    case FrameKind::kStreamOpen: return "stream_open";
    case FrameKind::kStreamMessage: return "stream_message";
    case FrameKind::kStreamWindow: return "stream_window";
    case FrameKind::kStreamClose: return "stream_close";
  }
  return "unknown";
}

namespace {
Status CheckBulk(const BulkDescriptor& d, size_t len, const std::function<uint32_t()>& crc_of) {
  if (len != d.len) {
    return Corrupt("bulk length mismatch: descriptor says " + std::to_string(d.len) + " bytes, got " +
                   std::to_string(len));
  }
  const uint32_t crc = crc_of();
  if (crc != d.crc32c) {
    return Corrupt("bulk crc32c mismatch: descriptor says " + std::to_string(d.crc32c) + ", data has " +
                   std::to_string(crc));
  }
  return Status::Ok();
}
}  // namespace

Status CheckBulkCrc(const BulkDescriptor& d, std::span<const std::byte> bytes) {
  return CheckBulk(d, bytes.size(), [&] { return Crc32c(bytes.data(), bytes.size()); });
}

Status CheckBulkCrc(const BulkDescriptor& d, const mempool::IoBuf& bytes) {
  return CheckBulk(d, bytes.size(), [&] { return bytes.Crc32c(); });
}

uint64_t FrameLength(const FrameHeader& h) noexcept {
  return uint64_t{h.header_len} + uint64_t{h.num_descriptors} * kDescriptorSize + ControlBodyLength(h) +
         h.attachment_len;
}

Result<size_t> EncodePrefix(const FrameHeader& header, std::span<const BulkDescriptor> descriptors,
                            std::span<std::byte> out) {
  if (descriptors.size() > kMaxDescriptors) {
    return InvalidArgumentError("hrpc wire: " + std::to_string(descriptors.size()) +
                                " bulk descriptors, at most " + std::to_string(kMaxDescriptors));
  }
  if (header.status_message_len > kMaxStatusMessage) {
    return InvalidArgumentError("hrpc wire: status message longer than " + std::to_string(kMaxStatusMessage));
  }
  const bool has_request_id = header.request_id != 0;
  const size_t header_len = HeaderSize(has_request_id);
  const size_t prefix = PrefixSize(descriptors.size(), has_request_id);
  if (prefix + ControlBodyLength(header) > kMaxFrameBytes) {
    return InvalidArgumentError("hrpc wire: control frame of " + std::to_string(prefix + ControlBodyLength(header)) +
                                " bytes exceeds the limit of " + std::to_string(kMaxFrameBytes));
  }
  if (out.size() < prefix) {
    return InvalidArgumentError("hrpc wire: encode buffer of " + std::to_string(out.size()) +
                                " bytes, need " + std::to_string(prefix));
  }
  std::byte* p = out.data();
  std::memset(p, 0, prefix);
  Store<uint32_t>(p + kOffMagic, kMagic);
  Store<uint8_t>(p + kOffVersion, kVersion);
  Store<uint8_t>(p + kOffKind, static_cast<uint8_t>(header.kind));
  Store<uint16_t>(p + kOffHeaderLen, static_cast<uint16_t>(header_len));
  Store<uint16_t>(p + kOffFlags, has_request_id ? (header.flags | kFlagRequestId)
                                                : static_cast<uint16_t>(header.flags & ~kFlagRequestId));
  Store<uint16_t>(p + kOffCredits, header.credits);
  Store<uint16_t>(p + kOffNumDescriptors, static_cast<uint16_t>(descriptors.size()));
  Store<uint8_t>(p + kOffStatus, static_cast<uint8_t>(header.status));
  Store<uint64_t>(p + kOffTxnId, header.txn_id);
  Store<uint32_t>(p + kOffServiceId, header.service_id);
  Store<uint32_t>(p + kOffMethodId, header.method_id);
  Store<uint64_t>(p + kOffDeadline, header.deadline_us);
  Store<uint32_t>(p + kOffMessageLen, header.message_len);
  Store<uint32_t>(p + kOffAttachmentLen, header.attachment_len);
  Store<uint32_t>(p + kOffStatusMessageLen, header.status_message_len);
  if (has_request_id) Store<uint64_t>(p + kHeaderSize, header.request_id);
  std::byte* d = p + header_len;
  for (const BulkDescriptor& desc : descriptors) {
    Store<uint64_t>(d + kDescAddr, desc.addr);
    Store<uint32_t>(d + kDescLen, desc.len);
    Store<uint32_t>(d + kDescRkey, desc.rkey);
    Store<uint32_t>(d + kDescCrc, desc.crc32c);
    Store<uint8_t>(d + kDescDirection, static_cast<uint8_t>(desc.direction));
    d += kDescriptorSize;
  }
  return prefix;
}

Result<size_t> EncodeFrame(FrameHeader header, std::span<const BulkDescriptor> descriptors,
                           std::span<const std::byte> message, std::span<const std::byte> attachment,
                           std::string_view status_message, std::span<std::byte> out) {
  if (message.size() > UINT32_MAX || attachment.size() > UINT32_MAX) {
    return InvalidArgumentError("hrpc wire: message or attachment longer than 4 GiB");
  }
  header.message_len = static_cast<uint32_t>(message.size());
  header.attachment_len = static_cast<uint32_t>(attachment.size());
  header.status_message_len = static_cast<uint32_t>(std::min<size_t>(status_message.size(), UINT32_MAX));
  HRPC_ASSIGN_OR_RETURN(size_t prefix, EncodePrefix(header, descriptors, out));
  const size_t total = prefix + message.size() + attachment.size() + status_message.size();
  if (out.size() < total) {
    return InvalidArgumentError("hrpc wire: encode buffer of " + std::to_string(out.size()) +
                                " bytes, need " + std::to_string(total));
  }
  std::byte* p = out.data() + prefix;
  if (!message.empty()) std::memcpy(p, message.data(), message.size());
  p += message.size();
  if (!attachment.empty()) std::memcpy(p, attachment.data(), attachment.size());
  p += attachment.size();
  if (!status_message.empty()) std::memcpy(p, status_message.data(), status_message.size());
  return total;
}

Result<FrameHeader> DecodeHeader(std::span<const std::byte> prefix) {
  const std::byte* p = prefix.data();
  if (prefix.size() < kHeaderSize) {
    return Corrupt("truncated frame: " + std::to_string(prefix.size()) + " bytes, the header alone is " +
                   std::to_string(kHeaderSize));
  }
  if (const uint32_t magic = Load<uint32_t>(p + kOffMagic); magic != kMagic) {
    return Corrupt("bad magic " + std::to_string(magic) + ", not an hrpc frame");
  }
  if (const uint8_t version = Load<uint8_t>(p + kOffVersion); version != kVersion) {
    return FailedPreconditionError("hrpc wire: version mismatch: peer speaks version " +
                                   std::to_string(version) + ", this side speaks " +
                                   std::to_string(kVersion));
  }
  FrameHeader h;
  h.header_len = Load<uint16_t>(p + kOffHeaderLen);
  if (h.header_len < kHeaderSize || h.header_len > kMaxHeaderSize || h.header_len % 8 != 0) {
    return Corrupt("bad header length " + std::to_string(h.header_len) + " (must be a multiple of 8 in [" +
                   std::to_string(kHeaderSize) + ", " + std::to_string(kMaxHeaderSize) + "])");
  }
  const uint8_t kind = Load<uint8_t>(p + kOffKind);
  if (!KnownKind(kind)) return Corrupt("unknown frame kind " + std::to_string(kind));
  h.kind = static_cast<FrameKind>(kind);
  const uint8_t status = Load<uint8_t>(p + kOffStatus);
  if (status >= kStatusCodeCount) return Corrupt("unknown status code " + std::to_string(status));
  h.status = static_cast<StatusCode>(status);
  if (h.status != StatusCode::kOk && h.kind != FrameKind::kResponse && h.kind != FrameKind::kStreamClose) {
    return Corrupt("status " + std::to_string(status) + " on a " + std::string(FrameKindName(h.kind)) +
                   " frame (only responses and stream_close carry one)");
  }
  h.flags = Load<uint16_t>(p + kOffFlags);
  h.credits = Load<uint16_t>(p + kOffCredits);
  h.num_descriptors = Load<uint16_t>(p + kOffNumDescriptors);
  if (h.num_descriptors > kMaxDescriptors) {
    return Corrupt("too many bulk descriptors: " + std::to_string(h.num_descriptors) + ", at most " +
                   std::to_string(kMaxDescriptors));
  }
  if ((h.flags & kFlagRequestId) != 0) {
    if (h.header_len < kRequestIdHeaderSize) {
      return Corrupt("request id flag on a header of " + std::to_string(h.header_len) + " bytes (needs " +
                     std::to_string(kRequestIdHeaderSize) + ")");
    }
    if (prefix.size() >= kRequestIdHeaderSize) h.request_id = Load<uint64_t>(p + kHeaderSize);
  }
  h.txn_id = Load<uint64_t>(p + kOffTxnId);
  h.service_id = Load<uint32_t>(p + kOffServiceId);
  h.method_id = Load<uint32_t>(p + kOffMethodId);
  h.deadline_us = Load<uint64_t>(p + kOffDeadline);
  h.message_len = Load<uint32_t>(p + kOffMessageLen);
  h.attachment_len = Load<uint32_t>(p + kOffAttachmentLen);
  h.status_message_len = Load<uint32_t>(p + kOffStatusMessageLen);
  if (h.status_message_len > kMaxStatusMessage) {
    return Corrupt("status message length " + std::to_string(h.status_message_len) + " exceeds " +
                   std::to_string(kMaxStatusMessage));
  }
  const bool carries_status = h.kind == FrameKind::kResponse || h.kind == FrameKind::kStreamClose;
  if (h.status_message_len != 0 && (!carries_status || h.status == StatusCode::kOk)) {
    return Corrupt("status message on a frame that is not an error response");
  }
  if (FrameLength(h) - h.attachment_len > kMaxFrameBytes) {
    return Corrupt("declared lengths overflow the frame limit: control part of " +
                   std::to_string(FrameLength(h) - h.attachment_len) + " bytes > " + std::to_string(kMaxFrameBytes));
  }
  return h;
}

BulkDescriptor Frame::descriptor(size_t i) const noexcept {
  const std::byte* d = descriptors_ + i * kDescriptorSize;
  BulkDescriptor out;
  out.addr = Load<uint64_t>(d + kDescAddr);
  out.len = Load<uint32_t>(d + kDescLen);
  out.rkey = Load<uint32_t>(d + kDescRkey);
  out.crc32c = Load<uint32_t>(d + kDescCrc);
  out.direction = static_cast<BulkDirection>(Load<uint8_t>(d + kDescDirection));
  return out;
}

void EncodeStreamWindow(const StreamWindow& w, std::span<std::byte, kStreamWindowSize> out) noexcept {
  Store<uint64_t>(out.data(), w.consumed_messages);
  Store<uint64_t>(out.data() + 8, w.consumed_bytes);
  Store<uint32_t>(out.data() + 16, w.window_messages);
  Store<uint32_t>(out.data() + 20, w.window_bytes);
}

Result<StreamWindow> DecodeStreamWindow(std::span<const std::byte> body) {
  if (body.size() != kStreamWindowSize) {
    return Corrupt("stream window of " + std::to_string(body.size()) + " bytes, expected " +
                   std::to_string(kStreamWindowSize));
  }
  StreamWindow w;
  w.consumed_messages = Load<uint64_t>(body.data());
  w.consumed_bytes = Load<uint64_t>(body.data() + 8);
  w.window_messages = Load<uint32_t>(body.data() + 16);
  w.window_bytes = Load<uint32_t>(body.data() + 20);
  if (w.window_messages < kInitialStreamWindowMessages || w.window_bytes < kInitialStreamWindowBytes) {
    return Corrupt("stream window of " + std::to_string(w.window_messages) + " messages / " +
                   std::to_string(w.window_bytes) + " bytes is below the initial window");
  }
  return w;
}

Status Frame::status() const {
  if (header_.status == StatusCode::kOk) return Status::Ok();
  return Status(header_.status, status_message_);
}

Result<Frame> Decode(std::span<const std::byte> bytes) {
  HRPC_ASSIGN_OR_RETURN(FrameHeader h, DecodeHeader(bytes));
  const uint64_t prefix = uint64_t{h.header_len} + uint64_t{h.num_descriptors} * kDescriptorSize;
  if (bytes.size() < prefix) {
    return Corrupt("truncated frame: header and " + std::to_string(h.num_descriptors) +
                   " descriptors need " + std::to_string(prefix) + " bytes, got " + std::to_string(bytes.size()));
  }
  const uint64_t total = FrameLength(h);
  if (bytes.size() < total) {
    return Corrupt("declared payload lengths exceed the frame: message " + std::to_string(h.message_len) +
                   " + attachment " + std::to_string(h.attachment_len) + " + status message " +
                   std::to_string(h.status_message_len) + " bytes, only " + std::to_string(bytes.size() - prefix) +
                   " follow the descriptors");
  }
  if (bytes.size() > total) {
    return Corrupt("trailing bytes: frame declares " + std::to_string(total) + " bytes, got " +
                   std::to_string(bytes.size()));
  }
  Frame f;
  f.header_ = h;
  f.descriptors_ = bytes.data() + h.header_len;
  for (size_t i = 0; i < h.num_descriptors; ++i) {
    const uint8_t dir = Load<uint8_t>(f.descriptors_ + i * kDescriptorSize + kDescDirection);
    if (dir != static_cast<uint8_t>(BulkDirection::kPull) && dir != static_cast<uint8_t>(BulkDirection::kPush)) {
      return Corrupt("bulk descriptor " + std::to_string(i) + " has unknown direction " + std::to_string(dir));
    }
  }
  const std::byte* body = bytes.data() + prefix;
  f.message_ = {body, h.message_len};
  f.attachment_ = {body + h.message_len, h.attachment_len};
  f.status_message_ = {reinterpret_cast<const char*>(body + h.message_len + h.attachment_len),
                       h.status_message_len};
  return f;
}

}  // namespace hrpc::wire
