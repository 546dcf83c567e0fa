// blockstore_server: serves hrpc_blockstore.BlockStore over one file or block
// device opened O_DIRECT through hrpc::nvme::Sink.
//
// The data path of a write: the runtime pulls the request attachment by
// one-sided READ (TCP: its emulation) into 4 KiB-aligned slabs of the server
// pool (ServerContext::pool()) before the handler runs; the sink is opened on
// that same pool, so its arenas are the sink's io_uring fixed buffers and the
// handler hands the pulled slabs to Sink::Write as WRITE_FIXED — no CPU copy,
// no per-I/O page pinning. A read: Sink::Read lands in page-aligned slabs of
// the same pool, which become the response attachment and are pushed by
// one-sided WRITE into the buffer the client offered. Only an attachment
// whose slices break the O_DIRECT/PRP rules (e.g. a small one that came
// inline, unaligned in the receive buffer) is copied into one aligned slab —
// through CountedCopy, so Stat reports it. Stat also reports how many slices
// went to the disk as WRITE_FIXED/READ_FIXED and how many as WRITEV/READV.
//
// Replication (--role=leader --followers=URI,... / --role=follower): writes go
// through the replicated path of replication.h (WAL on every node, records
// forwarded to the followers as attachments, --ack=majority|all); without
// --role the server is the single node described above, with no log.
//
// Threads: the server runs ONE worker (--workers is not offered); the sink is
// opened lazily by the first handler on that worker and attached to its
// scheduler, so disk I/O suspends only the handler's coroutine.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "blockstore/blockstore.hrpc.h"
#include "blockstore_streams.h"
#include "blockstore/replication.h"
#include "common/cli.h"
#include "common/signals.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/nvme/alignment.h"
#include "hrpc/nvme/sink.h"
#include "hrpc/rpc/server.h"
#include "hrpc/rpc/server_context.h"

#include <spdlog/spdlog.h>

namespace {

class BlockStoreImpl final : public hrpc_blockstore::BlockStore::Service {
 public:
  BlockStoreImpl(hrpc::nvme::SinkOptions opts, std::string durability_name)
      : opts_(std::move(opts)), durability_name_(std::move(durability_name)),
        copied_at_start_(hrpc::mempool::CopiedBytesTotal()) {}

  void set_replication(hrpc_blockstore::Replication* r) { repl_ = r; }

  hrpc::Status WriteBlocks(hrpc::ServerContext& ctx, const hrpc_blockstore::WriteBlocksRequest& req,
                           hrpc_blockstore::WriteBlocksResponse* resp) override {
    HRPC_ASSIGN_OR_RETURN(hrpc::nvme::Sink * sink, SinkForThisWorker(ctx));
    hrpc::mempool::IoBuf data = std::move(ctx.request_attachment());
    if (repl_ != nullptr && repl_->role() == hrpc_blockstore::Role::kFollower) {
      return hrpc::FailedPreconditionError("WriteBlocks: this server is a follower; write to the leader");
    }
    HRPC_TRY(CheckRange(*sink, req.offset(), data.size(), "WriteBlocks"));
    std::vector<iovec> iov = data.Iovecs();
    if (!hrpc::nvme::CheckScatterList(iov, req.offset(), sink->rules()).ok()) {
      // Range aligned, memory not (an inline attachment): one counted copy into an aligned slab.
      HRPC_ASSIGN_OR_RETURN(hrpc::mempool::Buffer slab, ctx.pool()->Allocate(data.size()));
      data.CopyTo(slab.data(), 0, data.size());
      data = hrpc::mempool::IoBuf(slab.Slice(0, data.size()));
    }
    const size_t n = data.size();
    if (repl_ != nullptr) {
      HRPC_TRY(repl_->Write(ctx, req.offset(), std::move(data)));
      bytes_written_.fetch_add(n, std::memory_order_relaxed);
      writes_.fetch_add(1, std::memory_order_relaxed);
      resp->set_bytes(n);
      return hrpc::Status::Ok();
    }
    HRPC_TRY(sink->Write(req.offset(), data));
    bytes_written_.fetch_add(data.size(), std::memory_order_relaxed);
    writes_.fetch_add(1, std::memory_order_relaxed);
    resp->set_bytes(data.size());
    return hrpc::Status::Ok();
  }

  hrpc::Status ReadBlocks(hrpc::ServerContext& ctx, const hrpc_blockstore::ReadBlocksRequest& req,
                          hrpc_blockstore::ReadBlocksResponse* resp) override {
    HRPC_ASSIGN_OR_RETURN(hrpc::nvme::Sink * sink, SinkForThisWorker(ctx));
    HRPC_TRY(CheckRange(*sink, req.offset(), req.length(), "ReadBlocks", false));
    HRPC_ASSIGN_OR_RETURN(hrpc::mempool::IoBuf data, sink->Read(req.offset(), req.length()));
    bytes_read_.fetch_add(data.size(), std::memory_order_relaxed);
    reads_.fetch_add(1, std::memory_order_relaxed);
    resp->set_bytes(data.size());
    resp->set_crc32c(data.Crc32c());
    ctx.response_attachment() = std::move(data);
    return hrpc::Status::Ok();
  }

  hrpc::Status Flush(hrpc::ServerContext& ctx, const hrpc_blockstore::FlushRequest&,
                     hrpc_blockstore::FlushResponse*) override {
    HRPC_ASSIGN_OR_RETURN(hrpc::nvme::Sink * sink, SinkForThisWorker(ctx));
    return sink->Flush();
  }

  hrpc::Status Stat(hrpc::ServerContext& ctx, const hrpc_blockstore::StatRequest&,
                    hrpc_blockstore::StatResponse* resp) override {
    HRPC_ASSIGN_OR_RETURN(hrpc::nvme::Sink * sink, SinkForThisWorker(ctx));
    resp->set_bytes_written(bytes_written_.load(std::memory_order_relaxed));
    resp->set_bytes_read(bytes_read_.load(std::memory_order_relaxed));
    resp->set_writes(writes_.load(std::memory_order_relaxed));
    resp->set_reads(reads_.load(std::memory_order_relaxed));
    resp->set_copied_bytes(hrpc::mempool::CopiedBytesTotal() - copied_at_start_);
    resp->set_block_size(sink->rules().logical_block);
    resp->set_engine(std::string(hrpc::nvme::EngineKindName(sink->engine())));
    resp->set_durability(durability_name_);
    resp->set_fixed_slices(sink->stats().fixed_slices);
    resp->set_vectored_slices(sink->stats().vectored_slices);
    resp->set_fixed_buffers(sink->fixed_buffers());
    if (repl_ != nullptr) repl_->FillStat(resp->mutable_replication());
    return hrpc::Status::Ok();
  }

  // One sink per worker scheduler, opened on (and attached to) that worker,
  // over the pool the runtime pulls that worker's payloads into.
  hrpc::Result<hrpc::nvme::Sink*> SinkForThisWorker(hrpc::ServerContext& ctx) {
    hrpc::coro::Scheduler* sched = hrpc::coro::Scheduler::Current();
    if (sched == nullptr) return hrpc::FailedPreconditionError("blockstore: handler not on a worker");
    if (ctx.pool() == nullptr) return hrpc::FailedPreconditionError("blockstore: call without a server pool");
    std::lock_guard<std::mutex> lock(mu_);  // never held across a suspension
    for (auto& [s, sink] : sinks_) {
      if (s == sched) return sink.get();
    }
    hrpc::nvme::SinkOptions o = opts_;
    o.size_bytes = 0;  // main() already sized the file
    o.pool = ctx.pool();
    HRPC_ASSIGN_OR_RETURN(std::unique_ptr<hrpc::nvme::Sink> sink, hrpc::nvme::Sink::Open(o));
    HRPC_TRY(sink->AttachTo(*sched));
    SPDLOG_INFO("blockstore: sink on {} attached to this worker (engine {}, fixed buffers {}, rules {})", o.path,
                hrpc::nvme::EngineKindName(sink->engine()), sink->fixed_buffers(), sink->rules().ToString());
    sinks_.emplace_back(sched, std::move(sink));
    return sinks_.back().second.get();
  }

 private:
  // Replicated writes are records of a log with 4 KiB blocks: their length
  // must be a multiple of that too (else the record's tail would need a copy).
  hrpc::Status CheckRange(const hrpc::nvme::Sink& sink, uint64_t offset, uint64_t len, const char* what,
                          bool write = true) const {
    uint64_t block = sink.rules().logical_block;
    if (write && repl_ != nullptr) block = std::max<uint64_t>(block, kLogBlock);
    return hrpc_blockstore::CheckVolumeRange(hrpc_blockstore::VolumeBytes(sink, opts_.size_bytes), offset, len, block,
                                             what);
  }

  hrpc::nvme::SinkOptions opts_;
  std::string durability_name_;
  uint64_t copied_at_start_;
  std::mutex mu_;
  std::vector<std::pair<hrpc::coro::Scheduler*, std::unique_ptr<hrpc::nvme::Sink>>> sinks_;
  std::atomic<uint64_t> bytes_written_{0}, bytes_read_{0}, writes_{0}, reads_{0};
  hrpc_blockstore::Replication* repl_ = nullptr;
  static constexpr uint64_t kLogBlock = 4096;
};

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string file, listen = "tcp://0.0.0.0:7300", durability = "none", engine = "auto";
  uint64_t size = 0, eager = 0, pool_mib = 64;
  CLI::App app("Serves hrpc_blockstore.BlockStore over --file opened O_DIRECT (io_uring when available).\n"
               "Write payloads go from the pulled slabs to the disk without a CPU copy. Prints READY <uri>\n"
               "when it accepts connections; stops on SIGINT/SIGTERM.",
               "blockstore_server");
  app.add_option("--file", file, "file or block device (created when missing)")->capture_default_str();
  app.add_option("--listen", listen, "address: tcp://host:port, rdma://host:port, host:port")->capture_default_str();
  app.add_option("--durability", durability, "none | flush (fdatasync on Flush) | dsync (RWF_DSYNC per write)")
      ->capture_default_str();
  app.add_option("--engine", engine, "auto | io_uring | psync")->capture_default_str();
  hrpc::examples::AddSize(app, "--size", &size, "grow the file to at least this many bytes at start (0: as is)");
  hrpc::examples::AddSize(app, "--eager", &eager,
                          "response attachments up to this size travel inline (0: always pushed)");
  app.add_option("--pool_mib", pool_mib, "arena size of the server pool (pulled payloads, read slabs), MiB")
      ->capture_default_str();
  std::string role = "single", followers, ack = "majority", log_path;
  uint64_t replicate_timeout_ms = 2000;
  bool copy_payload = false;
  uint64_t spin_us = 50;
  app.add_option("--role", role, "single (no log) | leader (log, forward to --followers) | follower")
      ->capture_default_str();
  app.add_option("--followers", followers, "leader: comma-separated follower addresses");
  app.add_option("--ack", ack, "leader: answer a write once it is logged on the leader and a majority | all")
      ->capture_default_str();
  app.add_option("--wal", log_path, "leader/follower: the write-ahead log file (default: <file>.wal)");
  app.add_option("--replicate_timeout_ms", replicate_timeout_ms, "leader: deadline of a call to a follower")
      ->capture_default_str();
  app.add_flag("--copy-payload", copy_payload,
               "leader/follower: copy each payload into a fresh aligned buffer first (the copying baseline)");
  app.add_option("--spin_us", spin_us,
                 "how long the worker polls for more work before it blocks (0: block at once)")
      ->capture_default_str();
  std::string log_level = "info";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;
  if (file.empty()) {
    std::fprintf(stderr, "blockstore_server: --file is required\n");
    return 2;
  }
  hrpc::nvme::SinkOptions so;
  so.path = file;
  so.size_bytes = size;
  if (durability == "none") so.durability = hrpc::nvme::Durability::kNone;
  else if (durability == "flush") so.durability = hrpc::nvme::Durability::kFdatasyncOnFlush;
  else if (durability == "dsync") so.durability = hrpc::nvme::Durability::kDsyncPerWrite;
  else {
    std::fprintf(stderr, "blockstore_server: bad --durability '%s'\n", durability.c_str());
    return 2;
  }
  hrpc_blockstore::ReplicationOptions ro;
  if (role == "leader") ro.role = hrpc_blockstore::Role::kLeader;
  else if (role == "follower") ro.role = hrpc_blockstore::Role::kFollower;
  else if (role != "single") {
    std::fprintf(stderr, "blockstore_server: bad --role '%s'\n", role.c_str());
    return 2;
  }
  if (ack == "all") ro.ack = hrpc_blockstore::AckPolicy::kAll;
  else if (ack != "majority") {
    std::fprintf(stderr, "blockstore_server: bad --ack '%s'\n", ack.c_str());
    return 2;
  }
  ro.followers = SplitList(followers);
  if ((ro.role == hrpc_blockstore::Role::kLeader) != !ro.followers.empty()) {
    std::fprintf(stderr, "blockstore_server: --followers goes with --role=leader, and a leader needs it\n");
    return 2;
  }
  if (ro.role != hrpc_blockstore::Role::kSingle && so.durability == hrpc::nvme::Durability::kFdatasyncOnFlush) {
    // A write is acknowledged when its record is written on each node: durable there only with dsync.
    std::fprintf(stderr, "blockstore_server: a replicated server runs --durability=none or dsync\n");
    return 2;
  }
  ro.log_path = log_path.empty() ? file + ".wal" : log_path;
  ro.replicate_timeout = std::chrono::milliseconds(replicate_timeout_ms);
  ro.copy_payload = copy_payload;
  if (engine == "io_uring") so.engine = hrpc::nvme::EngineChoice::kIoUring;
  else if (engine == "psync") so.engine = hrpc::nvme::EngineChoice::kPsync;
  else if (engine != "auto") {
    std::fprintf(stderr, "blockstore_server: bad --engine '%s'\n", engine.c_str());
    return 2;
  }

  // A disk-full write must come back as RESOURCE_EXHAUSTED, not kill us (RLIMIT_FSIZE).
  signal(SIGXFSZ, SIG_IGN);
  const sigset_t stop = hrpc::examples::BlockStopSignals();  // before the workers start: they inherit it

  // One runtime for the process: the server and a leader's channels to its
  // followers share its worker, pool and registrations.
  hrpc::RuntimeOptions rto = hrpc::RuntimeOptions::FromEnv();
  rto.workers = 1;  // one worker: one sink, attached to it
  rto.name = "blockstore";
  rto.spin_budget = std::chrono::microseconds(spin_us);
  rto.pool.arena_bytes = pool_mib << 20;
  rto.pool.max_class_bytes = std::min<size_t>(rto.pool.max_class_bytes, pool_mib << 20);
  auto runtime = hrpc::Runtime::Create(rto);
  if (!runtime.ok()) {
    std::fprintf(stderr, "blockstore_server: %s\n", runtime.status().ToString().c_str());
    return 1;
  }
  hrpc::ServerOptions opts;
  opts.listen = {listen};
  opts.eager_threshold = eager;
  auto server = hrpc::Server::Create(**runtime, opts);
  if (!server.ok()) {
    std::fprintf(stderr, "blockstore_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  {  // Create/size the file and fail early (O_DIRECT refused, bad path); this sink is not attached
     // and does not register the pool (the handlers' sink does, on the worker).
    hrpc::nvme::SinkOptions probe_opts = so;
    probe_opts.pool = &(*server)->pool();
    probe_opts.register_fixed_buffers = false;
    probe_opts.read_slab_bytes = hrpc::mempool::Pool::kPageClassMin;
    auto probe = hrpc::nvme::Sink::Open(probe_opts);
    if (!probe.ok()) {
      std::fprintf(stderr, "blockstore_server: %s: %s\n", file.c_str(), probe.status().ToString().c_str());
      return 1;
    }
  }
  // Leaked on purpose: the sink belongs to the worker thread and must not be torn down from main.
  auto* service = new BlockStoreImpl(so, durability);
  if (auto s = (*server)->RegisterService(service); !s.ok()) {
    std::fprintf(stderr, "blockstore_server: %s\n", s.ToString().c_str());
    return 1;
  }
  auto* streams = new hrpc::examples::BlockStreamsImpl(
      [service](hrpc::ServerContext& ctx) { return service->SinkForThisWorker(ctx); },
      ro.role != hrpc_blockstore::Role::kSingle);
  if (auto s = (*server)->RegisterService(streams); !s.ok()) {
    std::fprintf(stderr, "blockstore_server: %s\n", s.ToString().c_str());
    return 1;
  }
  if (ro.role != hrpc_blockstore::Role::kSingle) {
    ro.chunk = so;
    // Recovers the log into the chunk file before the server accepts anything.
    auto repl = hrpc_blockstore::Replication::Create(
        **runtime, (*server)->pool(), ro,
        [service](hrpc::ServerContext& ctx) { return service->SinkForThisWorker(ctx); });
    if (!repl.ok()) {
      std::fprintf(stderr, "blockstore_server: %s: %s\n", ro.log_path.c_str(), repl.status().ToString().c_str());
      return 1;
    }
    auto* r = repl->release();  // leaked like the service: its log belongs to the worker
    service->set_replication(r);
    if (auto s = (*server)->RegisterService(r); !s.ok()) {
      std::fprintf(stderr, "blockstore_server: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("%s: log %s, %llu records replayed, %llu bytes cut\n", std::string(RoleName(ro.role)).c_str(),
                ro.log_path.c_str(), static_cast<unsigned long long>(r->recovery().records),
                static_cast<unsigned long long>(r->recovery().cut_bytes));
  }
  if (auto s = (*server)->Start(); !s.ok()) {
    std::fprintf(stderr, "blockstore_server: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("READY %s\n", (*server)->listen_uris().at(0).c_str());
  std::fflush(stdout);
  hrpc::examples::WaitForStopSignal(stop);
  (*server)->Shutdown();
  std::printf("blockstore_server: stopped\n%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
  std::fflush(stdout);
  std::_Exit(0);  // skip destructors: the sink is owned by the (stopped) worker's thread
}
