#include "hrpc/nvme/fixup.h"

#include <algorithm>
#include <vector>

namespace hrpc::nvme {
namespace {

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Copies stream bytes [from, from+n) of `src` into fresh page-aligned slabs of
// at most `chunk` bytes (a multiple of the page) and appends them to `out`.
// head=true: the first slab's bytes end on a page boundary (unless they are
// the whole list, `whole`), the rest are whole chunks; head=false: every slab
// starts on a page, all but the last are whole chunks.
Status CopyRegion(mempool::Pool& pool, const mempool::IoBuf& src, size_t from, size_t n,
                  size_t chunk, uint32_t page, bool head, bool whole, mempool::IoBuf& out) {
  size_t pos = from;
  size_t left = n;
  while (left > 0) {
    size_t take = std::min(left, chunk);
    if (head && left == n) take = left - (left - 1) / chunk * chunk;  // the odd part first
    const size_t slab_bytes = std::max<size_t>(RoundUp(take, page), mempool::Pool::kPageClassMin);
    HRPC_ASSIGN_OR_RETURN(mempool::Buffer slab, pool.Allocate(slab_bytes));
    const size_t place = head && left == n && !(whole && take == n) ? RoundUp(take, page) - take : 0;
    mempool::Buffer piece = slab.Slice(place, take);
    src.CopyTo(piece.data(), pos, take);  // CountedCopy inside
    out.Append(std::move(piece));
    pos += take;
    left -= take;
  }
  return Status::Ok();
}

}  // namespace

Result<mempool::IoBuf> FixupForDirectIo(mempool::Pool& pool, const mempool::IoBuf& data,
                                        uint64_t offset, const DeviceRules& rules,
                                        FixupPlan* plan_out) {
  const std::vector<iovec> iov = data.Iovecs();
  HRPC_ASSIGN_OR_RETURN(FixupPlan plan, PlanFixup(iov, offset, rules));
  if (plan_out != nullptr) *plan_out = plan;
  if (!plan.needed()) return data.Share();

  const size_t total = data.size();
  // Largest slab a copy may use: the pool's biggest class, in whole pages.
  const size_t chunk = std::max<size_t>(pool.options().max_class_bytes / rules.page * rules.page,
                                        rules.page);
  mempool::IoBuf out;
  if (plan.head_bytes > 0) {
    HRPC_TRY(CopyRegion(pool, data, 0, plan.head_bytes, chunk, rules.page, /*head=*/true,
                        /*whole=*/plan.head_bytes == total, out));
  }
  const size_t keep = total - plan.head_bytes - plan.tail_bytes;
  if (keep > 0) {
    mempool::IoBuf middle = data.Share();
    middle.TrimFront(plan.head_bytes);
    middle.TrimBack(plan.tail_bytes);
    out.Append(std::move(middle));
  }
  if (plan.tail_bytes > 0) {
    HRPC_TRY(CopyRegion(pool, data, total - plan.tail_bytes, plan.tail_bytes, chunk, rules.page,
                        /*head=*/false, /*whole=*/false, out));
  }
  return out;
}

}  // namespace hrpc::nvme
