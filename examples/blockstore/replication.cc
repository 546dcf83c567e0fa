#include "blockstore/replication.h"

#include <algorithm>
#include <mutex>
#include <optional>
#include <random>

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
  r->last_forwarded_ = r->recovery_.last_sequence;
  std::random_device rd;
  while (r->run_ == 0) r->run_ = (uint64_t{rd()} << 32) | rd();

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
  // Numbered, reserved and forwarded under one lock: the followers get the
  // records in sequence order (nothing here suspends today; the lock keeps it
  // so should a step come to).
  std::unique_lock forwarding(forward_mu_);
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
    call->req.set_prev_sequence(last_forwarded_);
    call->req.set_leader_run(run_);
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

  last_forwarded_ = info.sequence;
  forwarding.unlock();

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
  // From the turn to the Append nothing suspends: the log gets the records
  // in the leader's order.
  HRPC_ASSIGN_OR_RETURN(const uint64_t ticket, TakeTurn(ctx, req, wr.offset(), info.payload_bytes));
  struct TurnEnd {
    Replication* r;
    uint64_t ticket;
    ~TurnEnd() { r->EndApply(ticket); }
  } turn_end{this, ticket};
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
  {
    // An earlier record's chunk write to the same bytes goes first (the
    // device may complete two writes in flight in either order).
    const uint64_t begin = wr.offset(), end = wr.offset() + info.payload_bytes;
    std::unique_lock lock(order_mu_);
    order_cv_.Wait(order_mu_, [&] {
      return std::none_of(applying_.begin(), applying_.end(), [&](const Applying& a) {
        return a.ticket < ticket && a.begin < end && begin < a.end;
      });
    });
  }
  HRPC_TRY(Apply(ctx, wr.offset(), std::move(payload)));
  resp->set_log_end(log->end_offset());
  return Status::Ok();
}

hrpc::Result<uint64_t> Replication::TakeTurn(hrpc::ServerContext& ctx, const ReplicateRequest& req, uint64_t offset,
                                             uint64_t len) {
  std::unique_lock lock(order_mu_);
  if (req.leader_run() != order_run_) {
    // A leader's first record here since it (or this follower) started: its
    // predecessor is taken to be here (the logs end alike).
    order_run_ = req.leader_run();
    order_last_ = req.prev_sequence();
  }
  const uint64_t seq = req.sequence();
  auto overtaken = [&] {
    order_refused_.fetch_add(1, std::memory_order_relaxed);
    return hrpc::FailedPreconditionError("Replicate: record " + std::to_string(seq) + " arrived after record " +
                                         std::to_string(order_last_) +
                                         ", which the leader forwarded later: not applied over newer data");
  };
  if (seq <= order_last_) return overtaken();
  if (req.prev_sequence() > order_last_) {
    // Its predecessor is still on its way (a larger attachment, pulled
    // slower): wait for it, up to half the call's time left (the rest is
    // for this record's own append and write) and at most kOrderWait.
    order_waits_.fetch_add(1, std::memory_order_relaxed);
    const auto now = hrpc::coro::Clock::now();
    const auto left = ctx.deadline() > now ? ctx.deadline() - now : hrpc::coro::Clock::duration::zero();
    const auto until = now + std::min<hrpc::coro::Clock::duration>(left / 2, kOrderWait);
    while (order_last_ < req.prev_sequence() && req.leader_run() == order_run_ && !ctx.IsCancelled()) {
      if (!order_cv_.WaitUntil(order_mu_, until).ok() && hrpc::coro::Clock::now() >= until) break;
    }
    if (req.leader_run() != order_run_) {
      // The leader restarted meanwhile: this record's run is over.
      order_refused_.fetch_add(1, std::memory_order_relaxed);
      return hrpc::FailedPreconditionError("Replicate: record " + std::to_string(seq) +
                                           " is of a leader run that a newer one replaced");
    }
    if (ctx.IsCancelled()) return hrpc::CancelledError("Replicate: the leader gave up on record " + std::to_string(seq));
    if (seq <= order_last_) return overtaken();
    if (order_last_ < req.prev_sequence()) {
      // It never came (it failed here, or the leader's call to this follower
      // did): go on without it, as a follower that missed a write does.
      order_gaps_.fetch_add(1, std::memory_order_relaxed);
      SPDLOG_WARN("replication: record {} never arrived; taking {} after {}", req.prev_sequence(), seq, order_last_);
    }
  }
  order_last_ = seq;
  const uint64_t ticket = ++order_tickets_;
  applying_.push_back({ticket, offset, offset + len});
  order_cv_.NotifyAll();
  return ticket;
}

void Replication::EndApply(uint64_t ticket) {
  std::lock_guard lock(order_mu_);
  std::erase_if(applying_, [&](const Applying& a) { return a.ticket == ticket; });
  order_cv_.NotifyAll();
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
  out->set_order_waits(order_waits_.load(std::memory_order_relaxed));
  out->set_order_gaps(order_gaps_.load(std::memory_order_relaxed));
  out->set_order_refused(order_refused_.load(std::memory_order_relaxed));
}

}  // namespace hrpc_blockstore
