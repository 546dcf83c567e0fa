// CRC32C (Castagnoli), the checksum carried in bulk descriptors and WAL records.
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at run
// time), else a table. Chainable: Crc32c(b, nb, Crc32c(a, na)) == Crc32c(a||b).
#pragma once

#include <cstddef>
#include <cstdint>

namespace hrpc {

uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0) noexcept;

// The table implementation, exposed so tests can check the fast path against it.
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc = 0) noexcept;

}  // namespace hrpc
