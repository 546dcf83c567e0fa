// CRC32C passes over large bulk regions, off the worker.
//
// The worker that drives a transport is the one thread every connection on it
// waits for. A CRC32C pass over a pulled MiB costs that worker a pass over the
// bytes (more than the transfer itself where RDMA is done in software, which
// runs on the posting thread). OffWorker runs such a pass on the process's
// checksum thread while the calling coroutine waits (its worker goes on
// serving); small regions, and callers outside a coroutine, run it inline.
#pragma once

#include <cstddef>
#include <functional>

namespace hrpc::internal {

// Regions from this size on are checksummed off the worker.
inline constexpr size_t kChecksumOffWorkerBytes = 256 * 1024;

// Runs `pass` (a checksum pass over `bytes` bytes that the caller keeps alive)
// on the checksum thread and waits for it, or inline: see above.
void OffWorker(size_t bytes, const std::function<void()>& pass);

// Passes run on the checksum thread so far (process-wide).
size_t OffWorkerPasses() noexcept;

}  // namespace hrpc::internal
