// The alignment contract of the NVMe sink, as code.
//
// A scatter list (iovec span) written at a file offset with O_DIRECT reaches
// the device by DMA only if it obeys two sets of rules:
//
//  O_DIRECT (Linux):   the file offset and the total length are multiples of
//                      the logical block size (no read-modify-write ever);
//                      every element's address is aligned to the direct-I/O
//                      memory alignment and every element's length is a
//                      multiple of the segment alignment (Linux block layer:
//                      the logical block size, up to at least 6.18).
//  NVMe PRP lists:     the first element starts 4-byte aligned and, when more
//                      elements follow, ends on a page boundary; middle
//                      elements are whole pages; the last element starts on a
//                      page and its length is a multiple of 4. (A single
//                      element only needs a 4-byte aligned start and length.)
//
// CheckScatterList() names the first element and rule that fails. PlanFixup()
// computes the minimal head/tail fix-up (the bytes that must be copied into
// fresh aligned slabs so that the untouched middle becomes legal); fixup.h
// applies it with the pool. Everything in this header is a pure function over
// iovecs except QueryDeviceRules(), which asks the kernel.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "hrpc/base/status.h"

namespace hrpc::nvme {

// NVMe memory page size with CC.MPS = 0 — what every controller supports and
// what PRP entries are counted in.
inline constexpr uint32_t kNvmePageBytes = 4096;
// PRP entries address dwords: the low two bits of the first entry must be 0.
inline constexpr uint32_t kPrpDwordBytes = 4;
static_assert(kNvmePageBytes % kPrpDwordBytes == 0);

// Where DeviceRules came from.
enum class RulesSource : uint8_t {
  kBlockDevice,  // ioctl BLKSSZGET (+ statx STATX_DIOALIGN for the memory alignment)
  kStatx,        // statx STATX_DIOALIGN on a regular file (kernel >= 6.1)
  kAssumed,      // file on a kernel/fs without STATX_DIOALIGN: the safe defaults below
  kCaller,       // given by the caller
};
std::string_view RulesSourceName(RulesSource s) noexcept;

// The rules one open file or device imposes. All values are powers of two.
// The defaults are the "assumed" rules for a file whose file system does not
// report STATX_DIOALIGN: 4096-byte offsets/lengths (safe on 512e and 4Kn
// disks) and 512-byte memory alignment (the historical O_DIRECT rule).
struct DeviceRules {
  uint32_t logical_block = 4096;  // offset and total length granularity
  uint32_t mem_align = 512;       // element address alignment (dio_mem_align)
  uint32_t segment_align = 4096;  // element length granularity (kernel; = logical_block)
  uint32_t page = kNvmePageBytes; // PRP page size
  bool prp = true;                // also enforce the NVMe PRP shape
  RulesSource source = RulesSource::kAssumed;

  std::string ToString() const;
};

// INVALID_ARGUMENT unless every value is a power of two, mem_align and
// segment_align divide page, and segment_align divides logical_block.
Status ValidateRules(const DeviceRules& rules);

// The rules of an fd opened with O_DIRECT: BLKSSZGET for block devices,
// STATX_DIOALIGN for files, else the assumed defaults. Never fails for a
// valid fd of a regular file or block device; INVALID_ARGUMENT for other types.
Result<DeviceRules> QueryDeviceRules(int fd);

// Which rule a scatter list breaks.
enum class AlignRule : uint8_t {
  kEmpty,            // no elements, or an element of length 0
  kOffset,           // file offset not a multiple of logical_block
  kTotalLength,      // total length not a multiple of logical_block
  kMemAlign,         // element address not aligned to mem_align (O_DIRECT)
  kSegmentLength,    // element length not a multiple of segment_align (O_DIRECT)
  kPrpFirstStart,    // first element not 4-byte aligned
  kPrpFirstEnd,      // first element (of several) does not end on a page boundary
  kPrpMiddleStart,   // middle element does not start on a page boundary
  kPrpMiddleLength,  // middle element is not a whole number of pages
  kPrpLastStart,     // last element (of several) does not start on a page boundary
  kPrpLastLength,    // last element length not a multiple of 4
};
std::string_view AlignRuleName(AlignRule r) noexcept;

struct AlignViolation {
  AlignRule rule;
  size_t element;  // index into the iovec span (0 for kOffset/kTotalLength/empty list)
};

// The first rule the list breaks (checked in the order: empty, offset, total
// length, then element by element: mem_align, segment length, PRP), or nullopt.
std::optional<AlignViolation> FindViolation(std::span<const iovec> iov, uint64_t offset,
                                            const DeviceRules& rules) noexcept;

// OK, or INVALID_ARGUMENT whose message names the element, its address and
// length, and the rule, e.g.
//   "element 2 of 3 (addr 0x7f..1200, len 4096): PRP middle element must start on a page boundary (page 4096)".
Status CheckScatterList(std::span<const iovec> iov, uint64_t offset, const DeviceRules& rules);

// The minimal fix-up: copy stream bytes [0, head_bytes) and
// [total - tail_bytes, total) into fresh page-aligned slabs (the head placed so
// it ends on a page boundary, the tail starting on one) and pass the middle
// through untouched. head_bytes + tail_bytes is the least number of bytes any
// head/tail-only fix-up must copy; it can be the whole list when no part of
// it can stay (e.g. one slice at an address that is misaligned for O_DIRECT).
struct FixupPlan {
  size_t head_bytes = 0;
  size_t tail_bytes = 0;
  size_t copied() const noexcept { return head_bytes + tail_bytes; }
  bool needed() const noexcept { return copied() != 0; }
};

// {0, 0} when the list already passes. INVALID_ARGUMENT when offset or total
// length break the logical-block rule (that would need read-modify-write,
// which the sink never does) or the list is empty. Cost: O(n^2) in the number
// of elements in the worst case, O(n) when only the ends are misaligned.
Result<FixupPlan> PlanFixup(std::span<const iovec> iov, uint64_t offset, const DeviceRules& rules);

}  // namespace hrpc::nvme
