#include "client_stream.h"

#include <chrono>
#include <functional>
#include <utility>

#include "hrpc/coroutine/scheduler.h"
#include "stream_core.h"

namespace hrpc::internal {
namespace {

using Clock = std::chrono::steady_clock;

class FailedClientStream final : public ClientStreamBase {
 public:
  explicit FailedClientStream(Status why) : why_(std::move(why)) {}
  bool Write(const google::protobuf::MessageLite&, mempool::IoBuf) override { return false; }
  bool WritesDone() override { return false; }
  bool Read(google::protobuf::MessageLite*, mempool::IoBuf*) override { return false; }
  Status Finish() override { return why_; }

 private:
  Status why_;
};

class RpcClientStream final : public ClientStreamBase {
 public:
  RpcClientStream(std::shared_ptr<WorkerSet> workers, std::shared_ptr<ChannelState> channel, size_t worker,
                  const MethodDescriptor& method, ClientContext& ctx)
      : workers_(std::move(workers)), channel_(std::move(channel)), worker_(worker), method_(method), ctx_(ctx) {
    stats_ = &channel_->CountersFor(workers_->client_stats(), method.service_id, method.method_id, method.full_name);
  }

  ~RpcClientStream() override {
    if (finished_) return;
    const Status ran = Run([this] {
      if (opened_.core) {
        // Ended first: unread messages whose attachments the server exposed
        // are owed a release, also after the server's close. Cancelled then:
        // what the server may still READ lingers until its close.
        opened_.core->End(CancelledError("stream destroyed before Finish()"));
        peers().CancelStream(opened_.link, opened_.core->txn(), CancelledError("stream destroyed before Finish()"),
                             opened_.core);
        opened_.core->ReleaseExposures();
      }
      return Status::Ok();
    });
    if (!ran.ok()) EndOnWorkerLater(CancelledError("stream destroyed before Finish()"));
    Done(CancelledError("stream destroyed before Finish()"));
  }

  Status Open() {
    stats_->Begin();
    start_ = Clock::now();
    const size_t index = channel_->rr.fetch_add(1, std::memory_order_relaxed) % channel_->connections_per_worker;
    Status s = Run([this, index]() -> Status {
      auto opened = peers().OpenStream(channel_, index, method_.service_id, method_.method_id, ctx_);
      if (!opened.ok()) return opened.status();
      opened_ = std::move(*opened);
      std::weak_ptr<Link> weak = opened_.link;
      const uint64_t txn = opened_.core->txn();
      PeerTable* table = &peers();
      coro::Scheduler* sched = &workers_->scheduler(worker_);
      ctx_.SetCancelHook([table, sched, weak, txn] {
        sched->Post([table, weak, txn] {
          if (auto l = weak.lock()) table->CancelStream(l, txn, CancelledError("stream cancelled"));
        }, "hrpc-stream-cancel");
      });
      return Status::Ok();
    });
    if (!s.ok()) open_error_ = s;
    return s;
  }

  bool Write(const google::protobuf::MessageLite& message, mempool::IoBuf attachment) override {
    if (!opened_.core) return false;
    return Check(Run([&] { return opened_.core->Write(message, std::move(attachment), ctx_.deadline()); }));
  }

  bool WritesDone() override {
    if (!opened_.core) return false;
    return Check(Run([&]() -> Status {
      if (opened_.core->ended()) return opened_.core->end_status();
      if (opened_.core->peer_closed()) return AbortedError("hrpc stream: the server has finished the stream");
      if (opened_.core->local_closed()) return Status::Ok();
      return opened_.core->SendClose(Status::Ok());
    }));
  }

  bool Read(google::protobuf::MessageLite* message, mempool::IoBuf* attachment) override {
    if (!opened_.core) return false;
    bool got = false;
    const bool ok = Check(Run([&]() -> Status {
      auto r = opened_.core->Read(message, attachment, ctx_.deadline());
      if (!r.ok()) return r.status();
      got = *r;
      return Status::Ok();
    }));
    return ok && got;
  }

  Status Finish() override {
    if (finished_) return final_;
    if (!opened_.core) {
      Done(open_error_);
      return final_;
    }
    Status s;
    const Status ran = Run([&]() -> Status {
      StreamCore& core = *opened_.core;
      for (;;) {
        auto r = core.Read(nullptr, nullptr, ctx_.deadline());
        if (!r.ok() || !*r) break;
      }
      // The server's error wins over what its end did here (a message it
      // exposed and revoked on the way out, say).
      const bool server_error = core.peer_closed() && !core.peer_status().ok();
      s = server_error ? core.peer_status() : core.ended() ? core.end_status() : core.peer_status();
      // Ended here (deadline, a bad message): the server hears of it, and
      // what it may still READ lingers until its close.
      peers().CancelStream(opened_.link, core.txn(), s, opened_.core);
      core.ReleaseExposures();
      return Status::Ok();
    });
    if (!ran.ok()) {
      // Not waited for here (a worker's own thread outside a coroutine): the
      // stream ends on its worker, and the caller hears why.
      s = ran;
      EndOnWorkerLater(s);
    }
    Done(s);
    return final_;
  }

 private:
  PeerTable& peers() { return workers_->peers(worker_); }

  Status Run(const std::function<Status()>& fn) {
    if (workers_->CurrentIndex() == static_cast<int>(worker_) && coro::this_coro::InCoroutine()) return fn();
    return workers_->RunOn(worker_, fn);
  }

  // The end of Finish() or the destructor, posted to the stream's worker when
  // they cannot wait for it there.
  void EndOnWorkerLater(const Status& why) {
    if (!opened_.core) return;
    workers_->scheduler(worker_).Post(
        [table = &peers(), link = opened_.link, core = opened_.core, why] {
          core->End(why);
          table->CancelStream(link, core->txn(), why, core);
          core->ReleaseExposures();
        },
        "hrpc-stream-end");
  }

  // A failed operation ends the stream here and tells the server.
  bool Check(const Status& s) {
    if (s.ok()) return true;
    Run([&] {
      peers().CancelStream(opened_.link, opened_.core->txn(), s, opened_.core);
      return Status::Ok();
    }).IgnoreError();
    return false;
  }

  void Done(Status s) {
    finished_ = true;
    final_ = std::move(s);
    ctx_.ClearCancelHook();
    const uint64_t in = opened_.core ? opened_.core->bytes_in() : 0;
    const uint64_t out = opened_.core ? opened_.core->bytes_out() : 0;
    stats_->End(Clock::now() - start_, final_.code(), in, out);
  }

  std::shared_ptr<WorkerSet> workers_;
  std::shared_ptr<ChannelState> channel_;
  size_t worker_;
  const MethodDescriptor method_;
  ClientContext& ctx_;
  MethodCounters* stats_ = nullptr;
  Clock::time_point start_;
  OpenedStream opened_;
  Status open_error_;
  bool finished_ = false;
  Status final_;
};

}  // namespace

std::unique_ptr<ClientStreamBase> OpenClientStream(const std::shared_ptr<WorkerSet>& workers,
                                                   const std::shared_ptr<ChannelState>& channel, size_t worker,
                                                   const MethodDescriptor& method, ClientContext& ctx) {
  auto s = std::make_unique<RpcClientStream>(workers, channel, worker, method, ctx);
  s->Open().IgnoreError();  // a failed open fails the stream's operations; Finish() says why
  return s;
}

std::unique_ptr<ClientStreamBase> FailedStream(Status why) {
  return std::make_unique<FailedClientStream>(std::move(why));
}

}  // namespace hrpc::internal
