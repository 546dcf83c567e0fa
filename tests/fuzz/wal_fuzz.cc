// The WAL record decoder (hrpc/nvme/wal.h) on arbitrary bytes, as recovery
// reads them from a torn or corrupt log. The first input byte is a mode:
// with bit 0 set the target first writes correct CRCs into the meta (over the
// lengths it declares), so that the fuzzer reaches the length checks and the
// views behind the meta CRC instead of stopping there. A record that decodes
// lies inside the input and encodes again to the same header block.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "fuzz_util.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/nvme/wal.h"

using namespace hrpc;

namespace {
template <class T>
T Get(const std::vector<char>& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <class T>
void Put(std::vector<char>& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}

// Meta offsets (wal.h).
constexpr size_t kBlock = 8, kHeaderBytes = 12, kPayloadBytes = 24, kRecordBytes = 32, kHeaderCrc = 40,
                 kPayloadCrc = 44, kMetaCrc = 60;

void FixCrcs(std::vector<char>& rec) {
  if (rec.size() < nvme::kWalMetaBytes) return;
  const uint32_t header_bytes = Get<uint32_t>(rec, kHeaderBytes);
  if (header_bytes <= rec.size() - nvme::kWalMetaBytes) {
    Put(rec, kHeaderCrc, Crc32c(rec.data() + nvme::kWalMetaBytes, header_bytes));
  }
  const uint64_t payload = Get<uint64_t>(rec, kPayloadBytes);
  const uint64_t record = Get<uint64_t>(rec, kRecordBytes);
  if (record >= payload) {
    const uint64_t start = record - payload;
    if (start <= rec.size() && payload <= rec.size() - start) {
      Put(rec, kPayloadCrc, Crc32c(rec.data() + start, payload));
    }
  }
  Put(rec, kMetaCrc, Crc32c(rec.data(), kMetaCrc));
  (void)kBlock;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  std::vector<char> rec(reinterpret_cast<const char*>(data) + 1, reinterpret_cast<const char*>(data) + size);
  if (mode & 1) FixCrcs(rec);
  const std::span<const char> in(rec.data(), rec.size());

  auto meta = nvme::ParseWalMeta(in);
  auto view = nvme::DecodeWalRecord(in);
  if (!view.ok()) {
    HRPC_FUZZ_CHECK(view.status().code() == StatusCode::kDataLoss ||
                        view.status().code() == StatusCode::kInvalidArgument,
                    "%s", view.status().ToString().c_str());
    return 0;
  }
  HRPC_FUZZ_CHECK(meta.ok(), "DecodeWalRecord accepted a record whose meta ParseWalMeta refuses");
  const nvme::WalRecordInfo& info = view->info;
  HRPC_FUZZ_CHECK(info.record_bytes <= in.size(), "record of %llu bytes in %zu",
                  static_cast<unsigned long long>(info.record_bytes), in.size());
  auto inside = [&](const char* p, size_t n) { return p >= in.data() && n <= in.size() && p - in.data() <= static_cast<ptrdiff_t>(in.size() - n); };
  HRPC_FUZZ_CHECK(inside(view->request_header.data(), view->request_header.size()), "header outside the input");
  HRPC_FUZZ_CHECK(inside(view->payload.data(), view->payload.size()), "payload outside the input");
  HRPC_FUZZ_CHECK(view->payload.size() == info.payload_bytes, "payload size");

  // Encoding the same record gives the same header block, byte for byte, but
  // for the flags and reserved words (ignored by readers) and the meta CRC over them.
  const size_t hb = nvme::WalHeaderBlockBytes(info.header_bytes, info.block_bytes);
  HRPC_FUZZ_CHECK(hb == info.header_block_bytes(), "header block of %zu bytes, meta says %zu", hb,
                  info.header_block_bytes());
  std::vector<char> again(hb);
  auto enc = nvme::EncodeWalHeaderBlock(again, info.sequence, view->request_header, info.payload_bytes,
                                        info.payload_crc, info.block_bytes);
  HRPC_FUZZ_CHECK(enc.ok(), "re-encoding: %s", enc.status().ToString().c_str());
  HRPC_FUZZ_CHECK(std::equal(again.begin(), again.begin() + 48, rec.begin()) &&
                      std::equal(again.begin() + nvme::kWalMetaBytes, again.end(), rec.begin() + nvme::kWalMetaBytes),
                  "header block differs when encoded again");
  return 0;
}
