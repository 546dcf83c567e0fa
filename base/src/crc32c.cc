#include "hrpc/base/crc32c.h"

#include <isa-l/crc.h>

#include <climits>

namespace hrpc {
namespace {

// ISA-L's crc32_iscsi family computes the raw CRC register: no inversion on
// the way in or out. The usual CRC32C convention (and ours, which makes
// Crc32c(b, Crc32c(a)) == Crc32c(a||b)) inverts both, so ~f(p, n, ~crc).
// ISA-L takes an int length; longer buffers are fed in INT_MAX-sized pieces.
template <unsigned (*F)(unsigned char*, int, unsigned)>
uint32_t Chunked(const void* data, size_t n, uint32_t crc) noexcept {
  // ISA-L does not write through the pointer; its prototype just lacks const.
  auto* p = static_cast<unsigned char*>(const_cast<void*>(data));
  unsigned reg = ~crc;
  while (n > 0) {
    const int piece = n > static_cast<size_t>(INT_MAX) ? INT_MAX : static_cast<int>(n);
    reg = F(p, piece, reg);
    p += piece;
    n -= static_cast<size_t>(piece);
  }
  return ~reg;
}

}  // namespace

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) noexcept {
  return Chunked<crc32_iscsi>(data, n, crc);
}

uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc) noexcept {
  return Chunked<crc32_iscsi_base>(data, n, crc);
}

}  // namespace hrpc
