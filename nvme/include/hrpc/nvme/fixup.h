// The head/tail fix-up: make an IoBuf legal for O_DIRECT + NVMe PRP by copying
// only its misaligned ends (alignment.h's PlanFixup) into fresh pool slabs.
#pragma once

#include <cstdint>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/alignment.h"

namespace hrpc::nvme {

// Returns an IoBuf with the same bytes as `data` that passes
// CheckScatterList(…, offset, rules):
//  - `data` itself (shared, no copy) when it already passes;
//  - else [head copy][the untouched middle slices of `data`][tail copy], where
//    the head and tail are copied through mempool::CountedCopy into fresh
//    page-aligned slabs from `pool` (the head placed to end on a page
//    boundary). Exactly plan->copied() payload bytes are copied.
// INVALID_ARGUMENT when offset or length are not multiples of the logical
// block (that needs read-modify-write, which the sink never does);
// RESOURCE_EXHAUSTED when the pool has no slab for the copy. `plan`, if not
// null, receives what was copied.
Result<mempool::IoBuf> FixupForDirectIo(mempool::Pool& pool, const mempool::IoBuf& data,
                                        uint64_t offset, const DeviceRules& rules,
                                        FixupPlan* plan = nullptr);

}  // namespace hrpc::nvme
