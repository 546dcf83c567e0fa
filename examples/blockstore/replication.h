// Replication for examples/blockstore: the CurveBS write path with fixed
// roles (one leader given its followers on the command line; no election,
// no catch-up of a follower that missed writes — out of scope for the sample).
//
// Leader, per WriteBlocks (on its one worker):
//   1. the WAL record is built: a fresh 4 KiB head block (meta | zero padding |
//      request size + request), then the pulled payload slabs as they are;
//   2. its room in the leader's own log is reserved (fallocate): a record the
//      leader's disk cannot take fails the write before any follower sees it;
//   3. the record goes as the attachment of BlockReplica.Replicate to every
//      follower (channels on the server's own runtime: the slabs are sent
//      from where they lie), while
//   4. the leader appends it to its own log (one O_DIRECT write) and then
//      writes the payload to the chunk file at the request's offset;
//   5. the client is answered once the record is written on the leader and
//      on enough followers: --ack=majority (leader + followers > half of the
//      nodes) or --ack=all. A follower that fails or misses the deadline
//      counts as a no; when the acks can no longer be met the write fails
//      with UNAVAILABLE (RESOURCE_EXHAUSTED when a replica's disk is full).
// Follower, per Replicate: the received record (head block + payload, in
// page-aligned slabs) is appended to its log unchanged, then the payload is
// written to its chunk file. Neither role copies a payload byte; only the
// leader builds a head block. --copy-payload is the baseline: each hop first
// copies the payload into a fresh aligned buffer (CountedCopy).
// At start (both roles) the log is recovered: each record is written again to
// the chunk file in log order, a torn or corrupt tail is cut off.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "blockstore/blockstore.hrpc.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/sink.h"
#include "hrpc/nvme/wal_log.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server_context.h"

namespace hrpc_blockstore {

// The volume's size for CheckVolumeRange: the chunk sink's size when it is a
// block device or the file was made with a size (`size_flag`, --size); else 0.
inline uint64_t VolumeBytes(const hrpc::nvme::Sink& chunk, uint64_t size_flag) {
  return chunk.is_block_device() || size_flag > 0 ? chunk.device_bytes() : 0;
}

// A write's range on the volume: [offset, offset + len) non-empty, both
// multiples of `block`, inside what a file offset can address, and inside the
// volume when it has a size (`volume_bytes` > 0: a block device, or a chunk
// file made with --size; without one, a file grows with its writes).
// OUT_OF_RANGE otherwise. Checked before anything is logged: a record the
// chunk file cannot take would fail its replay at every restart.
inline hrpc::Status CheckVolumeRange(uint64_t volume_bytes, uint64_t offset, uint64_t len, uint64_t block,
                                     const char* what) {
  if (len == 0 || offset % block != 0 || len % block != 0) {
    return hrpc::InvalidArgumentError(std::string(what) + ": offset " + std::to_string(offset) + " and length " +
                                      std::to_string(len) + " must be non-zero multiples of the block size " +
                                      std::to_string(block));
  }
  const uint64_t limit = volume_bytes > 0 ? volume_bytes : uint64_t{INT64_MAX};
  if (offset > limit || len > limit - offset) {
    return hrpc::OutOfRangeError(std::string(what) + ": [" + std::to_string(offset) + ", +" + std::to_string(len) +
                                 ") is beyond the volume (" +
                                 (volume_bytes > 0 ? std::to_string(volume_bytes) + " bytes" : "a file offset") + ")");
  }
  return hrpc::Status::Ok();
}

enum class Role : uint8_t { kSingle, kLeader, kFollower };
enum class AckPolicy : uint8_t { kMajority, kAll };

struct ReplicationOptions {
  Role role = Role::kSingle;
  AckPolicy ack = AckPolicy::kMajority;
  std::vector<std::string> followers;  // leader: follower URIs
  std::string log_path;                // the write-ahead log file
  hrpc::nvme::SinkOptions chunk;       // the chunk file (path, durability, engine)
  std::chrono::milliseconds replicate_timeout{2000};  // per follower call (capped by the client's deadline)
  bool copy_payload = false;           // the copying baseline
};

// The replicated write path of one server process. Create() (main thread,
// blocking) recovers the log into the chunk file; the rest runs on the
// server's worker. `chunk_sink` gives the worker's chunk sink (the server's
// own, attached to that worker).
class Replication final : public BlockReplica::Service {
 public:
  using ChunkSinkFn = std::function<hrpc::Result<hrpc::nvme::Sink*>(hrpc::ServerContext&)>;

  static hrpc::Result<std::unique_ptr<Replication>> Create(hrpc::Runtime& runtime, hrpc::mempool::Pool& pool,
                                                           ReplicationOptions options, ChunkSinkFn chunk_sink);

  // Leader: logs, forwards and applies one write of `data` (block-aligned,
  // in aligned memory) at `offset`; OK once the acks are met.
  hrpc::Status Write(hrpc::ServerContext& ctx, uint64_t offset, hrpc::mempool::IoBuf data);

  // Follower: the leader's record.
  hrpc::Status Replicate(hrpc::ServerContext& ctx, const ReplicateRequest& req, ReplicateResponse* resp) override;

  void FillStat(ReplicationStat* out) const;
  Role role() const noexcept { return opts_.role; }
  const hrpc::nvme::WalRecovery& recovery() const noexcept { return recovery_; }

 private:
  struct Follower {
    std::string uri;
    std::unique_ptr<hrpc::RpcChannel> channel;
  };
  Replication() = default;
  hrpc::Result<hrpc::nvme::WalLog*> LogForThisWorker();
  hrpc::Result<hrpc::mempool::IoBuf> MaybeCopy(hrpc::mempool::IoBuf data);
  hrpc::Status Apply(hrpc::ServerContext& ctx, uint64_t offset, hrpc::mempool::IoBuf payload);
  // Follower: waits for the record's turn (see Replicate) and takes it: the
  // ticket orders its chunk write after those of the records taken before.
  // FAILED_PRECONDITION for a record that a later one overtook, or whose
  // leader run a newer one replaced.
  hrpc::Result<uint64_t> TakeTurn(hrpc::ServerContext& ctx, const ReplicateRequest& req, uint64_t offset,
                                  uint64_t len);
  void EndApply(uint64_t ticket);
  // How long a record waits at most for the one forwarded before it.
  static constexpr std::chrono::seconds kOrderWait{1};

  ReplicationOptions opts_;
  hrpc::mempool::Pool* pool_ = nullptr;
  ChunkSinkFn chunk_sink_;
  std::vector<Follower> followers_;
  std::unique_ptr<hrpc::nvme::WalLog> log_;
  bool log_attached_ = false;
  hrpc::nvme::WalRecovery recovery_;
  uint64_t cpu_at_start_ = 0;
  std::atomic<uint64_t> applied_bytes_{0}, replicate_failures_{0};

  // Leader: records are numbered, reserved and forwarded one write at a
  // time, so they reach the followers in sequence order.
  hrpc::coro::Mutex forward_mu_;
  uint64_t run_ = 0;            // this process's leader run
  uint64_t last_forwarded_ = 0;  // the sequence forwarded last

  // Follower: the order of the current leader run, kept on the one worker.
  hrpc::coro::Mutex order_mu_;
  hrpc::coro::ConditionVariable order_cv_;
  uint64_t order_run_ = 0;     // the leader run being followed (0: none yet)
  uint64_t order_last_ = 0;    // the last record of that run taken
  struct Applying {
    uint64_t ticket, begin, end;  // in the order taken; chunk bytes [begin, end)
  };
  uint64_t order_tickets_ = 0;
  std::vector<Applying> applying_;  // records taken and not yet in the chunk file
  std::atomic<uint64_t> order_waits_{0}, order_gaps_{0}, order_refused_{0};
};

std::string_view RoleName(Role r) noexcept;
std::string_view AckName(AckPolicy a) noexcept;

}  // namespace hrpc_blockstore
