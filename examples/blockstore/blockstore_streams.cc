#include "blockstore_streams.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <sys/uio.h>
#include <vector>

#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/alignment.h"

namespace hrpc::examples {

namespace {
constexpr uint64_t kDefaultChunk = 1u << 20;
}  // namespace

Status BlockStreamsImpl::ReadStream(ServerContext& ctx, const hrpc_blockstore::ReadStreamRequest& req,
                                    ServerWriter<hrpc_blockstore::ReadStreamChunk>* writer) {
  HRPC_ASSIGN_OR_RETURN(nvme::Sink * sink, sink_for_(ctx));
  const uint64_t block = sink->rules().logical_block;
  const uint64_t chunk = req.chunk_bytes() == 0 ? kDefaultChunk : req.chunk_bytes();
  if (req.offset() % block != 0 || chunk % block != 0) {
    return InvalidArgumentError("ReadStream: offset " + std::to_string(req.offset()) + " and chunk_bytes " +
                                std::to_string(chunk) + " must be multiples of the block size " +
                                std::to_string(block));
  }
  for (uint64_t done = 0; done < req.length();) {
    if (ctx.IsCancelled()) return CancelledError("ReadStream cancelled");
    const uint64_t want = std::min(chunk, req.length() - done);
    const uint64_t rounded = (want + block - 1) / block * block;  // the disk reads whole blocks
    HRPC_ASSIGN_OR_RETURN(mempool::IoBuf data, sink->Read(req.offset() + done, rounded));
    if (data.size() > want) data.TrimBack(data.size() - want);
    hrpc_blockstore::ReadStreamChunk c;
    c.set_offset(req.offset() + done);
    c.set_crc32c(data.Crc32c());
    if (!writer->Write(c, std::move(data))) return CancelledError("ReadStream: the client went away");
    done += want;
  }
  return Status::Ok();
}

Status BlockStreamsImpl::CopyChunk(ServerContext& ctx, ServerReader<hrpc_blockstore::CopyChunkRequest>* reader,
                                   hrpc_blockstore::CopyChunkResponse* response) {
  if (replicated_) {
    return FailedPreconditionError(
        "CopyChunk writes the chunk file without the replication log: only on a node with --role=single");
  }
  HRPC_ASSIGN_OR_RETURN(nvme::Sink * sink, sink_for_(ctx));
  const uint64_t block = sink->rules().logical_block;
  hrpc_blockstore::CopyChunkRequest piece;
  mempool::IoBuf data;
  uint64_t offset = 0;
  uint32_t crc = 0;
  bool first = true;
  while (reader->Read(&piece, &data)) {
    if (first) {
      offset = piece.offset();
      first = false;
      if (offset % block != 0) {
        return InvalidArgumentError("CopyChunk: offset " + std::to_string(offset) +
                                    " must be a multiple of the block size " + std::to_string(block));
      }
    }
    if (data.size() % block != 0) {
      return InvalidArgumentError("CopyChunk: a piece of " + std::to_string(data.size()) +
                                  " bytes; pieces must be multiples of the block size " + std::to_string(block));
    }
    if (data.empty()) continue;
    if (offset > uint64_t{INT64_MAX} || data.size() > uint64_t{INT64_MAX} - offset) {
      return OutOfRangeError("CopyChunk: [" + std::to_string(offset) + ", +" + std::to_string(data.size()) +
                             ") is beyond what a file offset can address");
    }
    std::vector<iovec> iov = data.Iovecs();
    if (!nvme::CheckScatterList(iov, offset, sink->rules()).ok()) {
      // An inline piece, unaligned in its receive buffer: one counted copy.
      HRPC_ASSIGN_OR_RETURN(mempool::Buffer slab, ctx.pool()->Allocate(data.size()));
      data.CopyTo(slab.data(), 0, data.size());
      data = mempool::IoBuf(slab.Slice(0, data.size()));
    }
    HRPC_TRY(sink->Write(offset, data));
    for (size_t i = 0; i < data.num_slices(); ++i) crc = Crc32c(data.slice(i).data(), data.slice(i).size(), crc);
    offset += data.size();
    response->set_bytes(response->bytes() + data.size());
  }
  response->set_crc32c(crc);
  return Status::Ok();
}

}  // namespace hrpc::examples
