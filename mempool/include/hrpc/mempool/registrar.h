// Registrar: the seam through which a transport registers pool memory with its
// hardware (ibv_reg_mr, io_uring fixed buffers, the TCP key table) once per
// arena, never per I/O. Tests attach a fake one.
//
// A Pool calls Register exactly once per arena for every attached registrar —
// for the arenas that exist when the registrar is attached and for each arena
// added later — and Unregister exactly once for each successful Register, when
// the registrar is detached or the pool is destroyed. Calls come from whatever
// thread attaches, grows or destroys the pool, under the pool's growth lock, so
// a registrar never sees two calls at once from the same pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "hrpc/base/status.h"

namespace hrpc::mempool {

// What a registrar hands back for one arena. The meaning is per registrar:
// ibverbs lkey/rkey (+ the ibv_mr* in handle); io_uring: handle = fixed-buffer
// index; TCP: rkey = key-table id. A plain value: copy it freely.
struct RegionKey {
  uint32_t lkey = 0;
  uint32_t rkey = 0;
  uint64_t handle = 0;
};

class Registrar {
 public:
  virtual ~Registrar() = default;
  virtual std::string_view name() const = 0;
  // Registers [base, base+len) (one whole arena) on `numa_node` (-1: unbound).
  // An error makes the pool operation that triggered it fail with that Status.
  virtual Result<RegionKey> Register(void* base, size_t len, int numa_node) = 0;
  virtual void Unregister(void* base, size_t len, const RegionKey& key) = 0;
};

// Index of an attached registrar within one pool.
using RegistrarSlot = uint8_t;
inline constexpr int kMaxRegistrars = 4;

}  // namespace hrpc::mempool
