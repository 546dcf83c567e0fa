#include "blockstore/replication.h"

#include <algorithm>
#include <mutex>
#include <optional>

#include "common/proc_cpu.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/nvme/alignment.h"
#include "hrpc/nvme/wal.h"

#include <spdlog/spdlog.h>

namespace hrpc_blockstore {

namespace {

using hrpc::Status;
using hrpc::mempool::IoBuf;

// The outcome of one write's follower calls, shared with their callbacks
// (which may outlive the handler when it answers on a majority).
struct Acks {
  hrpc::coro::Semaphore arrived;
  std::mutex mu;
  int ok = 0;
  int failed = 0;
  Status first_error;
};

struct ReplicateCall {
  hrpc::ClientContext ctx;
  ReplicateRequest req;
  ReplicateResponse resp;
};

// A follower's failure as the client should see it: a full disk stays
// RESOURCE_EXHAUSTED; a replica that is gone, slow or broken is UNAVAILABLE.
Status ReplicaError(const std::string& uri, const Status& s) {
  const std::string what = "replica " + uri + ": " + s.ToString();
  switch (s.code()) {
    case hrpc::StatusCode::kResourceExhausted: return hrpc::ResourceExhaustedError(what);
    case hrpc::StatusCode::kInvalidArgument: return hrpc::InvalidArgumentError(what);
    default: return hrpc::UnavailableError(what);
  }
}

}  // namespace

std::string_view RoleName(Role r) noexcept {
  switch (r) {
    case Role::kLeader: return "leader";
    case Role::kFollower: return "follower";
    default: return "single";
  }
}

std::string_view AckName(AckPolicy a) noexcept { return a == AckPolicy::kAll ? "all" : "majority"; }

hrpc::Result<std::unique_ptr<Replication>> Replication::Create(hrpc::Runtime& runtime, hrpc::mempool::Pool& pool,
                                                               ReplicationOptions options, ChunkSinkFn chunk_sink) {
  if (options.role == Role::kSingle) return hrpc::InvalidArgumentError("replication: role must be leader or follower");
  if (options.role == Role::kLeader && options.followers.empty()) {
    return hrpc::InvalidArgumentError("replication: a leader needs --followers");
  }
  if (options.log_path.empty()) return hrpc::InvalidArgumentError("replication: --wal is required");
  std::unique_ptr<Replication> r(new Replication());
  r->opts_ = std::move(options);
  r->pool_ = &pool;
  r->chunk_sink_ = std::move(chunk_sink);
  r->cpu_at_start_ = hrpc::examples::SelfCpuNs();

  // Recovery: every good record is written again to the chunk file, in log order.
  hrpc::nvme::SinkOptions co = r->opts_.chunk;
  co.pool = &pool;
  co.size_bytes = 0;
  co.register_fixed_buffers = false;
  HRPC_ASSIGN_OR_RETURN(std::unique_ptr<hrpc::nvme::Sink> chunk, hrpc::nvme::Sink::Open(co));
  hrpc::nvme::WalLogOptions lo;
  lo.path = r->opts_.log_path;
  lo.pool = &pool;
  lo.durability = r->opts_.chunk.durability;
  lo.engine = r->opts_.chunk.engine;
  HRPC_ASSIGN_OR_RETURN(
      r->log_, hrpc::nvme::WalLog::Open(lo, [&](const hrpc::nvme::WalRecordInfo& info, std::string_view request,
                                                IoBuf payload) -> Status {
        WriteBlocksRequest req;
        if (!req.ParseFromArray(request.data(), static_cast<int>(request.size()))) {
          return hrpc::DataLossError("log record " + std::to_string(info.sequence) + ": unparsable request");
        }
        return chunk->Write(req.offset(), payload);
      }));
  HRPC_TRY(chunk->Flush());
  r->recovery_ = r->log_->recovery();

  for (const std::string& uri : r->opts_.followers) {
    hrpc::RpcChannelOptions ch;
    ch.eager_threshold = 0;  // records always travel as attachments: aligned slabs at the follower
    HRPC_ASSIGN_OR_RETURN(std::unique_ptr<hrpc::RpcChannel> c, hrpc::RpcChannel::Create(runtime, uri, ch));
    r->followers_.push_back({uri, std::move(c)});
  }
  return r;
}

hrpc::Result<hrpc::nvme::WalLog*> Replication::LogForThisWorker() {
  if (!log_attached_) {
    hrpc::coro::Scheduler* sched = hrpc::coro::Scheduler::Current();
    if (sched == nullptr) return hrpc::FailedPreconditionError("replication: not on a worker");
    HRPC_TRY(log_->AttachTo(*sched));
    log_attached_ = true;
  }
  return log_.get();
}

hrpc::Result<IoBuf> Replication::MaybeCopy(IoBuf data) {
  if (!opts_.copy_payload || data.empty()) return data;
  HRPC_ASSIGN_OR_RETURN(hrpc::mempool::Buffer fresh, pool_->Allocate(data.size()));
  data.CopyTo(fresh.data(), 0, data.size());  // CountedCopy: the baseline's copy shows in Stat
  return IoBuf(fresh.Slice(0, data.size()));
}

Status Replication::Apply(hrpc::ServerContext& ctx, uint64_t offset, IoBuf payload) {
  HRPC_ASSIGN_OR_RETURN(hrpc::nvme::Sink * chunk, chunk_sink_(ctx));
  const size_t n = payload.size();
  HRPC_TRY(chunk->Write(offset, payload));
  applied_bytes_.fetch_add(n, std::memory_order_relaxed);
  return Status::Ok();
}

Status Replication::Write(hrpc::ServerContext& ctx, uint64_t offset, IoBuf data) {
  if (opts_.role != Role::kLeader) return hrpc::FailedPreconditionError("replication: not the leader");
  HRPC_ASSIGN_OR_RETURN(hrpc::nvme::WalLog * log, LogForThisWorker());
  // A log that cannot take records refuses before the followers get one.
  if (!log->broken().ok()) return log->broken();
  HRPC_ASSIGN_OR_RETURN(data, MaybeCopy(std::move(data)));
  WriteBlocksRequest req;
  req.set_offset(offset);
  hrpc::nvme::WalRecordInfo info;
  HRPC_ASSIGN_OR_RETURN(IoBuf record, log->Encode(req.SerializeAsString(), std::move(data), std::nullopt, &info));
  // Room in the leader's own log first: a record it could not append must not
  // reach a follower, which would apply a write the client is told failed.
  HRPC_TRY(log->Reserve(record.size()));

  // Forward first, so the followers' writes overlap the leader's own.
  auto acks = std::make_shared<Acks>();
  const auto deadline = std::min(ctx.deadline(), hrpc::coro::Clock::now() + opts_.replicate_timeout);
  for (Follower& f : followers_) {
    auto call = std::make_shared<ReplicateCall>();
    call->ctx.set_deadline(deadline);
    call->ctx.request_attachment() = record.Share();
    call->req.set_sequence(info.sequence);
    BlockReplica::Stub stub(f.channel.get());
    stub.ReplicateAsync(call->ctx, call->req, &call->resp,
                        [this, call, acks, uri = f.uri](Status s) {
                          {
                            std::lock_guard<std::mutex> lock(acks->mu);
                            if (s.ok()) {
                              ++acks->ok;
                            } else {
                              ++acks->failed;
                              if (acks->first_error.ok()) acks->first_error = ReplicaError(uri, s);
                            }
                          }
                          if (!s.ok()) {
                            replicate_failures_.fetch_add(1, std::memory_order_relaxed);
                            SPDLOG_DEBUG("replicate to {}: {}", uri, s.ToString());
                          }
                          acks->arrived.Release();
                        });
  }

  Status local = log->Append(record);
  if (local.ok()) {
    IoBuf payload = std::move(record);
    payload.TrimFront(info.header_block_bytes());
    local = Apply(ctx, offset, std::move(payload));
  }

  // Leader + followers that must have the record.
  const int nodes = static_cast<int>(followers_.size()) + 1;
  const int need = opts_.ack == AckPolicy::kAll ? nodes - 1 : nodes / 2;  // followers
  for (int arrived = 0; arrived < static_cast<int>(followers_.size()); ++arrived) {
    {
      std::lock_guard<std::mutex> lock(acks->mu);
      if (acks->ok >= need) break;
      if (static_cast<int>(followers_.size()) - acks->failed < need) break;  // cannot be met any more
    }
    acks->arrived.Acquire();
  }
  HRPC_TRY(local);
  std::lock_guard<std::mutex> lock(acks->mu);
  if (acks->ok >= need) return Status::Ok();
  return acks->first_error;
}

Status Replication::Replicate(hrpc::ServerContext& ctx, const ReplicateRequest& req, ReplicateResponse* resp) {
  if (opts_.role != Role::kFollower) return hrpc::FailedPreconditionError("replication: not a follower");
  HRPC_ASSIGN_OR_RETURN(hrpc::nvme::WalLog * log, LogForThisWorker());
  IoBuf record = std::move(ctx.request_attachment());
  if (record.empty()) return hrpc::InvalidArgumentError("Replicate: no record attached");
  const hrpc::mempool::Buffer& head = record.slice(0);
  HRPC_ASSIGN_OR_RETURN(hrpc::nvme::WalRecordInfo info,
                        hrpc::nvme::ParseWalMeta(std::span<const char>(head.data(), head.size())));
  if (info.sequence != req.sequence()) {
    return hrpc::InvalidArgumentError("Replicate: request says sequence " + std::to_string(req.sequence()) +
                                      ", the record " + std::to_string(info.sequence));
  }
  if (head.size() < info.header_block_bytes() || record.size() != info.record_bytes) {
    return hrpc::InvalidArgumentError("Replicate: record of " + std::to_string(record.size()) +
                                      " bytes does not match its meta");
  }
  HRPC_ASSIGN_OR_RETURN(std::string_view request, hrpc::nvme::VerifyWalHeaderBlock(
                                                      info, std::span<const char>(head.data(), head.size())));
  WriteBlocksRequest wr;
  if (!wr.ParseFromArray(request.data(), static_cast<int>(request.size()))) {
    return hrpc::InvalidArgumentError("Replicate: unparsable request in the record");
  }
  {
    HRPC_ASSIGN_OR_RETURN(hrpc::nvme::Sink * chunk, chunk_sink_(ctx));
    HRPC_TRY(CheckVolumeRange(VolumeBytes(*chunk, opts_.chunk.size_bytes), wr.offset(), info.payload_bytes,
                              chunk->rules().logical_block, "Replicate"));
  }
  if (opts_.copy_payload) {
    IoBuf payload = record.Share();
    payload.TrimFront(info.header_block_bytes());
    HRPC_ASSIGN_OR_RETURN(payload, MaybeCopy(std::move(payload)));
    record.TrimBack(info.payload_bytes);
    record.Append(std::move(payload));
  }
  HRPC_TRY(log->Append(record));
  IoBuf payload = std::move(record);
  payload.TrimFront(info.header_block_bytes());
  HRPC_TRY(Apply(ctx, wr.offset(), std::move(payload)));
  resp->set_log_end(log->end_offset());
  return Status::Ok();
}

void Replication::FillStat(ReplicationStat* out) const {
  out->set_role(std::string(RoleName(opts_.role)));
  if (opts_.role == Role::kLeader) out->set_ack(std::string(AckName(opts_.ack)));
  out->set_followers(static_cast<uint32_t>(followers_.size()));
  out->set_log_records(log_->stats().records);
  out->set_log_bytes(log_->stats().bytes);
  out->set_log_end(log_->end_offset());
  out->set_head_bytes_built(log_->stats().head_bytes_built);
  out->set_replayed_records(recovery_.records);
  out->set_cut_bytes(recovery_.cut_bytes);
  out->set_replicate_failures(replicate_failures_.load(std::memory_order_relaxed));
  out->set_applied_bytes(applied_bytes_.load(std::memory_order_relaxed));
  out->set_cpu_ns(hrpc::examples::SelfCpuNs() - cpu_at_start_);
  out->set_copy_payload(opts_.copy_payload);
}

}  // namespace hrpc_blockstore
