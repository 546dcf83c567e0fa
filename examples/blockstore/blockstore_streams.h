// The streaming side of the block store: hrpc_blockstore.BlockStreams over the
// same per-worker sink as BlockStore (the server passes in how to get it).
// Both act on this node's chunk file only: CopyChunk is how a chunk is copied
// to a new replica, not a replicated write (no WAL record, no forwarding).
#pragma once

#include <functional>

#include "blockstore/blockstore.hrpc.h"
#include "hrpc/nvme/sink.h"
#include "hrpc/rpc/server_context.h"

namespace hrpc::examples {

class BlockStreamsImpl final : public hrpc_blockstore::BlockStreams::Service {
 public:
  using SinkFor = std::function<Result<nvme::Sink*>(ServerContext&)>;
  // `replicated`: the node keeps its writes in a replication log (a leader or
  // a follower), and CopyChunk, which writes the chunk file directly, is
  // refused there (the next restart would replay the log over its bytes).
  BlockStreamsImpl(SinkFor sink_for, bool replicated) : sink_for_(std::move(sink_for)), replicated_(replicated) {}

  // Reads [offset, offset + length) chunk by chunk (each read from the disk
  // into page-aligned slabs and sent as they are: no copy), so the client
  // needs no size in advance and holds at most the stream's window.
  Status ReadStream(ServerContext& ctx, const hrpc_blockstore::ReadStreamRequest& req,
                    ServerWriter<hrpc_blockstore::ReadStreamChunk>* writer) override;
  // Writes the pieces at offset, offset + piece 1, ... as they arrive (at
  // offsets a file can address; a file grows with them; not on a replicated
  // node: FAILED_PRECONDITION).
  Status CopyChunk(ServerContext& ctx, ServerReader<hrpc_blockstore::CopyChunkRequest>* reader,
                   hrpc_blockstore::CopyChunkResponse* response) override;

 private:
  SinkFor sink_for_;
  bool replicated_ = false;
};

}  // namespace hrpc::examples
