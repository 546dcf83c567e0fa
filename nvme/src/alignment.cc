#include "hrpc/nvme/alignment.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <vector>

#include <fmt/format.h>

namespace hrpc::nvme {

std::string_view RulesSourceName(RulesSource s) noexcept {
  switch (s) {
    case RulesSource::kBlockDevice: return "block-device";
    case RulesSource::kStatx: return "statx";
    case RulesSource::kAssumed: return "assumed";
    case RulesSource::kCaller: return "caller";
  }
  return "?";
}

std::string DeviceRules::ToString() const {
  return fmt::format("logical_block={} mem_align={} segment_align={} page={} prp={} ({})",
                     logical_block, mem_align, segment_align, page, prp ? "on" : "off",
                     RulesSourceName(source));
}

Status ValidateRules(const DeviceRules& r) {
  auto pow2 = [](uint32_t v) { return v != 0 && std::has_single_bit(v); };
  if (!pow2(r.logical_block) || !pow2(r.mem_align) || !pow2(r.segment_align) || !pow2(r.page)) {
    return InvalidArgumentError("device rules must be powers of two: " + r.ToString());
  }
  if (r.logical_block < kPrpDwordBytes || r.page < kPrpDwordBytes) {
    return InvalidArgumentError("logical_block and page must be >= 4: " + r.ToString());
  }
  if (r.mem_align > r.page || r.segment_align > r.page) {
    return InvalidArgumentError("mem_align and segment_align must divide page: " + r.ToString());
  }
  if (r.segment_align > r.logical_block) {
    return InvalidArgumentError("segment_align must divide logical_block: " + r.ToString());
  }
  return Status::Ok();
}

Result<DeviceRules> QueryDeviceRules(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat");
  DeviceRules rules;  // the assumed defaults
  struct statx sx {};
  const bool have_dio = statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
                        (sx.stx_mask & STATX_DIOALIGN) != 0 && sx.stx_dio_offset_align != 0 &&
                        sx.stx_dio_mem_align != 0;
  if (S_ISBLK(st.st_mode)) {
    int lbs = 0;
    if (ioctl(fd, BLKSSZGET, &lbs) != 0) return ErrnoStatus(errno, "ioctl(BLKSSZGET)");
    rules.logical_block = static_cast<uint32_t>(lbs);
    rules.segment_align = rules.logical_block;
    // The DMA alignment is only reported through statx; without it, assume the
    // conservative rule (address aligned like the length).
    rules.mem_align = have_dio ? sx.stx_dio_mem_align : rules.logical_block;
    rules.source = RulesSource::kBlockDevice;
  } else if (S_ISREG(st.st_mode)) {
    if (have_dio) {
      rules.logical_block = sx.stx_dio_offset_align;
      rules.segment_align = sx.stx_dio_offset_align;
      rules.mem_align = sx.stx_dio_mem_align;
      rules.source = RulesSource::kStatx;
    }
  } else {
    return InvalidArgumentError("not a regular file or block device");
  }
  // NVMe PRP: at least dword alignment whatever the kernel would accept.
  rules.mem_align = std::max(rules.mem_align, kPrpDwordBytes);
  rules.segment_align = std::min(rules.segment_align, rules.page);
  if (rules.logical_block > rules.page) {
    // Larger-than-page blocks are legal for O_DIRECT but out of this sink's model.
    return FailedPreconditionError("logical block larger than the NVMe page: " + rules.ToString());
  }
  HRPC_TRY(ValidateRules(rules));
  return rules;
}

std::string_view AlignRuleName(AlignRule r) noexcept {
  switch (r) {
    case AlignRule::kEmpty: return "scatter list and its elements must not be empty";
    case AlignRule::kOffset: return "file offset must be a multiple of the logical block size (no read-modify-write)";
    case AlignRule::kTotalLength: return "total length must be a multiple of the logical block size (no read-modify-write)";
    case AlignRule::kMemAlign: return "O_DIRECT: element address must be aligned to the direct-I/O memory alignment";
    case AlignRule::kSegmentLength: return "O_DIRECT: element length must be a multiple of the segment alignment";
    case AlignRule::kPrpFirstStart: return "PRP: first element must start 4-byte aligned";
    case AlignRule::kPrpFirstEnd: return "PRP: first element must end on a page boundary";
    case AlignRule::kPrpMiddleStart: return "PRP: middle element must start on a page boundary";
    case AlignRule::kPrpMiddleLength: return "PRP: middle element must be whole pages";
    case AlignRule::kPrpLastStart: return "PRP: last element must start on a page boundary";
    case AlignRule::kPrpLastLength: return "PRP: last element length must be a multiple of 4";
  }
  return "?";
}

namespace {

uintptr_t Addr(const iovec& v) { return reinterpret_cast<uintptr_t>(v.iov_base); }

std::optional<AlignRule> ElementViolation(const iovec& v, size_t i, size_t n,
                                          const DeviceRules& r) noexcept {
  const uintptr_t a = Addr(v);
  const size_t len = v.iov_len;
  if (len == 0) return AlignRule::kEmpty;
  if (a % r.mem_align != 0) return AlignRule::kMemAlign;
  if (len % r.segment_align != 0) return AlignRule::kSegmentLength;
  if (!r.prp) return std::nullopt;
  const bool first = i == 0;
  const bool last = i + 1 == n;
  if (first) {
    if (a % kPrpDwordBytes != 0) return AlignRule::kPrpFirstStart;
    if (last) {  // the only element: any length that is whole dwords
      if (len % kPrpDwordBytes != 0) return AlignRule::kPrpLastLength;
      return std::nullopt;
    }
    if ((a + len) % r.page != 0) return AlignRule::kPrpFirstEnd;
    return std::nullopt;
  }
  if (last) {
    if (a % r.page != 0) return AlignRule::kPrpLastStart;
    if (len % kPrpDwordBytes != 0) return AlignRule::kPrpLastLength;
    return std::nullopt;
  }
  if (a % r.page != 0) return AlignRule::kPrpMiddleStart;
  if (len % r.page != 0) return AlignRule::kPrpMiddleLength;
  return std::nullopt;
}

size_t TotalBytes(std::span<const iovec> iov) {
  size_t t = 0;
  for (const iovec& v : iov) t += v.iov_len;
  return t;
}

}  // namespace

std::optional<AlignViolation> FindViolation(std::span<const iovec> iov, uint64_t offset,
                                            const DeviceRules& r) noexcept {
  if (iov.empty()) return AlignViolation{AlignRule::kEmpty, 0};
  if (offset % r.logical_block != 0) return AlignViolation{AlignRule::kOffset, 0};
  if (TotalBytes(iov) % r.logical_block != 0) return AlignViolation{AlignRule::kTotalLength, 0};
  for (size_t i = 0; i < iov.size(); ++i) {
    if (auto rule = ElementViolation(iov[i], i, iov.size(), r)) return AlignViolation{*rule, i};
  }
  return std::nullopt;
}

Status CheckScatterList(std::span<const iovec> iov, uint64_t offset, const DeviceRules& r) {
  const auto v = FindViolation(iov, offset, r);
  if (!v) return Status::Ok();
  switch (v->rule) {
    case AlignRule::kOffset:
      return InvalidArgumentError(fmt::format("offset {}: {} ({})", offset, AlignRuleName(v->rule),
                                              r.logical_block));
    case AlignRule::kTotalLength:
      return InvalidArgumentError(fmt::format("total length {}: {} ({})", TotalBytes(iov),
                                              AlignRuleName(v->rule), r.logical_block));
    case AlignRule::kEmpty:
      if (iov.empty()) return InvalidArgumentError("empty scatter list");
      break;
    default: break;
  }
  const iovec& e = iov[v->element];
  uint32_t unit = 0;
  switch (v->rule) {
    case AlignRule::kMemAlign: unit = r.mem_align; break;
    case AlignRule::kSegmentLength: unit = r.segment_align; break;
    case AlignRule::kPrpFirstStart:
    case AlignRule::kPrpLastLength: unit = kPrpDwordBytes; break;
    default: unit = r.page; break;
  }
  return InvalidArgumentError(fmt::format("element {} of {} (addr {:#x}, len {}): {} ({})",
                                          v->element, iov.size(), Addr(e), e.iov_len,
                                          AlignRuleName(v->rule), unit));
}

// ---------------------------------------------------------------- fix-up plan

namespace {

// A fake page-aligned base for the slabs a fix-up would allocate; only the
// address modulo the page matters to the rules.
constexpr uintptr_t kFakeSlab = uintptr_t{1} << 40;

// The list the sink would submit for cut points (h, t): a head copy of h bytes
// placed to end on a page (at the slab start when it is everything), the
// untouched elements between h and t, a tail copy starting on a page.
void BuildCandidate(std::span<const iovec> iov, size_t total, size_t h, size_t t,
                    uint32_t page, std::vector<iovec>& out) {
  out.clear();
  if (h > 0) {
    const size_t placement = h == total ? 0 : (h + page - 1) / page * page - h;
    out.push_back({reinterpret_cast<void*>(kFakeSlab + placement), h});
  }
  size_t pos = 0;
  for (const iovec& v : iov) {
    const size_t s = pos, e = pos + v.iov_len;
    pos = e;
    const size_t lo = std::max(s, h), hi = std::min(e, t);
    if (lo >= hi) continue;
    out.push_back({static_cast<char*>(v.iov_base) + (lo - s), hi - lo});
  }
  if (t < total) out.push_back({reinterpret_cast<void*>(kFakeSlab), total - t});
}

}  // namespace

Result<FixupPlan> PlanFixup(std::span<const iovec> iov, uint64_t offset, const DeviceRules& r) {
  HRPC_TRY(ValidateRules(r));
  const auto v = FindViolation(iov, offset, r);
  if (!v) return FixupPlan{};
  if (v->rule == AlignRule::kOffset || v->rule == AlignRule::kTotalLength ||
      v->rule == AlignRule::kEmpty) {
    return CheckScatterList(iov, offset, r).WithContext("cannot fix up without read-modify-write");
  }
  const size_t total = TotalBytes(iov);

  // Cut candidates. Head cut h: the first position inside an element whose
  // address is page-aligned (all later page positions of that element only
  // copy more for the same shape). Tail cut t: the last such position.
  std::vector<size_t> heads{0}, tails{total};
  size_t pos = 0;
  for (const iovec& e : iov) {
    const uintptr_t a = Addr(e);
    const size_t to_page = (r.page - a % r.page) % r.page;
    if (to_page < e.iov_len && pos + to_page > 0) heads.push_back(pos + to_page);
    const size_t past_page = (a + e.iov_len) % r.page;  // bytes after the last page boundary
    if (past_page < e.iov_len && pos + e.iov_len - past_page < total) {
      tails.push_back(pos + e.iov_len - past_page);
    }
    pos += e.iov_len;
  }
  std::sort(heads.begin(), heads.end());
  heads.erase(std::unique(heads.begin(), heads.end()), heads.end());
  std::sort(tails.begin(), tails.end(), std::greater<>());
  tails.erase(std::unique(tails.begin(), tails.end()), tails.end());

  // Copying everything always works: one slab, page-aligned, total bytes.
  FixupPlan best{total, 0};
  std::vector<iovec> cand;
  cand.reserve(iov.size() + 2);
  for (size_t h : heads) {
    if (h >= best.copied()) break;
    for (size_t t : tails) {
      if (t <= h) break;
      const size_t cost = h + (total - t);
      if (cost >= best.copied()) break;
      BuildCandidate(iov, total, h, t, r.page, cand);
      if (!FindViolation(cand, offset, r)) {
        best = FixupPlan{h, total - t};
        break;  // tails are descending: this is the cheapest for this h
      }
    }
  }
  return best;
}

}  // namespace hrpc::nvme
