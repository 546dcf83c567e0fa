// The hrpc.Reflection service (hrpc/proto/hrpc/reflection.proto) that every
// Server registers: the server's services and methods, the .proto files that
// define them (when their descriptors are linked into the process, i.e. the
// .proto was not compiled for the lite runtime), and its per-method stats.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>

#include "hrpc/rpc/service.h"
#include "hrpc/rpc/stats.h"

namespace hrpc::internal {

// `services` (the server's registered services by id, this one included) and
// `stats` (the server's counters) belong to the server and outlive the
// returned service. `services` must not change while a call runs: a server
// registers services only before Start(), before any call arrives.
std::unique_ptr<Service> MakeReflectionService(const std::unordered_map<uint32_t, Service*>& services,
                                               const StatsRegistry& stats);

}  // namespace hrpc::internal
