// CountedCopy: the one place hrpc copies payload bytes with the CPU.
//
// Every payload copy (alignment head/tail fix-ups, CopyFrom of unaligned user
// data, CopyTo into caller memory) goes through CountedCopy, which adds the
// byte count to a per-thread counter and to a relaxed process-wide total. Tests
// reset the thread counter, run an operation, and assert how many payload bytes
// were copied — zero on the aligned path.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hrpc::mempool {

// memcpy(dst, src, n) and count n bytes. Regions must not overlap.
void CountedCopy(void* dst, const void* src, size_t n) noexcept;

// Bytes copied by CountedCopy on the calling thread since it started or since
// the last ResetCopiedBytesThisThread().
uint64_t CopiedBytesThisThread() noexcept;
void ResetCopiedBytesThisThread() noexcept;

// Bytes copied by CountedCopy on all threads since process start (relaxed; for
// server-wide reports, not for exact per-operation assertions).
uint64_t CopiedBytesTotal() noexcept;

}  // namespace hrpc::mempool
