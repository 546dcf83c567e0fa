// The RPC frame decoder (hrpc/rpc/wire.h) on arbitrary bytes: Decode and
// DecodeHeader never read outside the input, and a frame Decode accepts is
// self-consistent: every view lies inside the input, and encoding its header,
// descriptors and parts again gives a frame that decodes to the same values
// (with the header length and request-id flag the encoder picks).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "fuzz_util.h"
#include "hrpc/rpc/wire.h"

using namespace hrpc;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  auto header = wire::DecodeHeader(in);
  auto frame = wire::Decode(in);
  if (!frame.ok()) {
    HRPC_FUZZ_CHECK(frame.status().code() == StatusCode::kDataLoss ||
                        frame.status().code() == StatusCode::kFailedPrecondition,
                    "%s", frame.status().ToString().c_str());
    return 0;
  }
  HRPC_FUZZ_CHECK(header.ok(), "Decode accepted a frame whose header DecodeHeader refuses: %s",
                  header.status().ToString().c_str());
  const wire::FrameHeader& h = frame->header();
  HRPC_FUZZ_CHECK(wire::FrameLength(h) == size, "frame length %llu != %zu",
                  static_cast<unsigned long long>(wire::FrameLength(h)), size);
  auto inside = [&](std::span<const std::byte> s) {
    return s.empty() || (s.data() >= in.data() && s.data() + s.size() <= in.data() + in.size());
  };
  HRPC_FUZZ_CHECK(inside(frame->message()) && inside(frame->attachment()), "view outside the input");
  HRPC_FUZZ_CHECK(inside(std::as_bytes(std::span(frame->status_message()))), "status message outside the input");
  std::vector<wire::BulkDescriptor> descs;
  for (size_t i = 0; i < frame->num_descriptors(); ++i) descs.push_back(frame->descriptor(i));
  const Status st = frame->status();
  const bool carries_status = h.kind == wire::FrameKind::kResponse || h.kind == wire::FrameKind::kStreamClose;
  HRPC_FUZZ_CHECK(st.code() == (carries_status ? h.status : StatusCode::kOk), "status %s for kind %d",
                  st.ToString().c_str(), static_cast<int>(h.kind));

  // Encode again and decode: the same header (with the v1 header length) and parts.
  std::vector<std::byte> out(size + wire::kMaxHeaderSize);
  auto n = wire::EncodeFrame(h, descs, frame->message(), frame->attachment(), frame->status_message(), out);
  HRPC_FUZZ_CHECK(n.ok(), "re-encoding a decoded frame: %s", n.status().ToString().c_str());
  auto again = wire::Decode(std::span<const std::byte>(out.data(), *n));
  HRPC_FUZZ_CHECK(again.ok(), "decoding a re-encoded frame: %s", again.status().ToString().c_str());
  // The encoder writes the shortest header that holds what is set: the request
  // id (and its flag) only when the id is not 0.
  wire::FrameHeader want = h;
  want.header_len = static_cast<uint16_t>(wire::HeaderSize(h.request_id != 0));
  want.flags = h.request_id != 0 ? static_cast<uint16_t>(h.flags | wire::kFlagRequestId)
                                 : static_cast<uint16_t>(h.flags & ~wire::kFlagRequestId);
  HRPC_FUZZ_CHECK(again->header() == want, "header changed in a round trip");
  for (size_t i = 0; i < descs.size(); ++i) {
    HRPC_FUZZ_CHECK(again->descriptor(i) == descs[i], "descriptor %zu changed in a round trip", i);
  }
  auto same = [](std::span<const std::byte> a, std::span<const std::byte> b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
  };
  HRPC_FUZZ_CHECK(same(again->message(), frame->message()) && same(again->attachment(), frame->attachment()) &&
                      again->status_message() == frame->status_message(),
                  "parts changed in a round trip");
  return 0;
}
