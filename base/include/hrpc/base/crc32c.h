// CRC32C (Castagnoli), the checksum carried in bulk descriptors and WAL records.
// Computed by ISA-L (libisal), which picks its fastest kernel for the CPU at
// run time (on x86: crc32 instructions over interleaved streams, combined with
// carry-less multiplies).
// Standard convention (initial and final inversion), so CRC32C("123456789") is
// 0xE3069283 and calls chain: Crc32c(b, nb, Crc32c(a, na)) == Crc32c(a||b).
// Any length, including 0 (data may then be null); thread-safe, no allocation.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hrpc {

uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0) noexcept;

// ISA-L's portable (table) kernel, same results: lets tests check the
// dispatched kernel against a second implementation.
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc = 0) noexcept;

}  // namespace hrpc
