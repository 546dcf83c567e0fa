// Pool levels for tests that check memory goes back to the pool.
#pragma once

#include <chrono>
#include <cstddef>
#include <thread>

#include "hrpc/mempool/pool.h"

namespace hrpc::mempool::testing {

// Bytes of pool blocks held by Buffers.
inline size_t BytesInUse(const Pool& pool) {
  size_t n = 0;
  for (const auto& c : pool.Stats()) n += c.in_use * c.block_bytes;
  return n;
}

// Waits (polling, at most `within`) until at most `level` bytes are in use;
// returns the bytes in use then.
inline size_t WaitForBytesInUseAtMost(const Pool& pool, size_t level,
                                      std::chrono::milliseconds within = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  size_t now = BytesInUse(pool);
  while (now > level && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    now = BytesInUse(pool);
  }
  return now;
}

}  // namespace hrpc::mempool::testing
