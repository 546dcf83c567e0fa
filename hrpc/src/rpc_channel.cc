#include "hrpc/rpc/rpc_channel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <thread>
#include <unordered_map>
#include <utility>

#include <spdlog/spdlog.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/wire.h"
#include "runtime_internal.h"

namespace hrpc {

using Clock = std::chrono::steady_clock;
using internal::SerializedMessage;

namespace {

struct Link;

// One call in flight. Owned by the channel from StartCall until Complete.
struct Call {
  uint64_t txn = 0;
  uint32_t service_id = 0;
  uint32_t method_id = 0;
  std::string_view name;
  ClientContext* ctx = nullptr;
  google::protobuf::MessageLite* response = nullptr;  // or:
  std::string* raw_response = nullptr;
  DoneCallback done;
  SerializedMessage msg;
  Clock::time_point start;
  MethodCounters* stats = nullptr;
  uint64_t bytes_out = 0;
  std::vector<transport::RemoteDescriptor> exposed;  // revoked on completion
  std::vector<mempool::Buffer> push_room;            // room for the pushed response attachment
  std::vector<mempool::Buffer> held;                 // request attachment blocks (copies, if any)
  coro::Scheduler::TimerId timer = 0;
  bool has_timer = false;
  std::shared_ptr<Link> link;
};

struct Slot;

// One transport connection (a slot reconnects by making a new Link).
struct Link {
  std::unique_ptr<transport::Connection> conn;
  std::unordered_map<uint64_t, Call*> calls;
  bool dead = false;
  Slot* slot = nullptr;
  std::string peer;
};

// A connection slot on one worker; touched only on that worker.
struct Slot {
  size_t worker = 0;
  std::shared_ptr<Link> link;
  bool connecting = false;
  std::shared_ptr<coro::Event> connect_done;
  Status last_connect_error;
  uint64_t next_txn = 1;
};

size_t MaxClass(mempool::Pool& pool) { return pool.options().max_class_bytes; }

size_t Pieces(size_t bytes, size_t piece) { return bytes == 0 ? 0 : (bytes + piece - 1) / piece; }

}  // namespace

class RpcChannel::Impl {
 public:
  RpcChannelOptions options;
  std::string uri;
  std::string scheme;
  std::unique_ptr<internal::WorkerSet> workers;
  std::vector<std::unique_ptr<Slot>> slots;  // connections_per_worker per worker, worker-major
  std::atomic<uint64_t> rr{0};
  std::atomic<int64_t> live_links{0};
  StatsRegistry stats;

  Slot& PickSlot() {
    const size_t per = options.connections_per_worker;
    const int cur = workers->CurrentIndex();
    const uint64_t n = rr.fetch_add(1, std::memory_order_relaxed);
    if (cur >= 0) return *slots[static_cast<size_t>(cur) * per + n % per];
    return *slots[n % slots.size()];
  }

  // --- connection management (on the slot's worker) --------------------------
  Result<std::shared_ptr<Link>> EnsureLink(Slot& slot) {
    for (;;) {
      if (slot.link && !slot.link->dead) return slot.link;
      if (slot.connecting) {
        auto ev = slot.connect_done;
        HRPC_TRY(ev->Wait());
        if (slot.link && !slot.link->dead) return slot.link;
        return slot.last_connect_error;
      }
      slot.connecting = true;
      auto ev = std::make_shared<coro::Event>();
      slot.connect_done = ev;
      Status err;
      auto transport = workers->TransportFor(slot.worker, scheme);
      if (!transport.ok()) {
        err = transport.status();
      } else {
        auto conn = (*transport)->Connect(uri);
        if (!conn.ok()) {
          err = conn.status().code() == StatusCode::kUnavailable
                    ? conn.status()
                    : Status(StatusCode::kUnavailable, conn.status().ToString());
          err = err.WithContext("connect to " + uri);
        } else {
          auto link = std::make_shared<Link>();
          link->conn = std::move(*conn);
          link->slot = &slot;
          link->peer = std::string(link->conn->peer());
          slot.link = link;
          live_links.fetch_add(1, std::memory_order_relaxed);
          workers->scheduler(slot.worker).Spawn([this, link] { ReadLoop(link); }, "hrpc-client-rx");
        }
      }
      slot.connecting = false;
      slot.last_connect_error = err;
      ev->Set();
      if (!err.ok()) return err;
    }
  }

  void FailLink(const std::shared_ptr<Link>& link, const Status& why) {
    if (!link->dead) {
      link->dead = true;
      link->conn->Close();
    }
    if (link->slot->link == link) link->slot->link.reset();
    auto calls = std::move(link->calls);
    link->calls.clear();
    for (auto& [txn, call] : calls) Complete(call, why, nullptr);
  }

  void ReadLoop(std::shared_ptr<Link> link) {
    for (;;) {
      auto msg = link->conn->Recv();
      if (!msg.ok()) {
        Status why = msg.status();
        if (why.code() != StatusCode::kCancelled) {
          why = Status(StatusCode::kUnavailable, "connection to " + link->peer + " lost: " + why.ToString());
        }
        FailLink(link, why);
        break;
      }
      OnMessage(link, *msg);
    }
    link.reset();
    live_links.fetch_sub(1, std::memory_order_relaxed);
  }

  void OnMessage(const std::shared_ptr<Link>& link, mempool::IoBuf& raw) {
    mempool::Pool& pool = workers->pool(link->slot->worker);
    auto rx = internal::ReadFrame(pool, raw);
    if (!rx.ok()) {
      SPDLOG_WARN("hrpc client: closing connection to {}: {}", link->peer, rx.status().ToString());
      FailLink(link, rx.status().WithContext("bad frame from " + link->peer));
      return;
    }
    const wire::FrameHeader& h = rx->frame.header();
    switch (h.kind) {
      case wire::FrameKind::kResponse: {
        auto it = link->calls.find(h.txn_id);
        if (it == link->calls.end()) return;  // late: timed out or cancelled
        Call* call = it->second;
        link->calls.erase(it);
        Complete(call, rx->frame.status(), &*rx);
        return;
      }
      case wire::FrameKind::kPing: {
        wire::FrameHeader pong;
        pong.kind = wire::FrameKind::kPing;
        pong.txn_id = h.txn_id;
        if (auto f = internal::SmallFrame(pool, pong, {}); f.ok()) link->conn->Send(std::move(*f)).IgnoreError();
        return;
      }
      default:
        return;  // credit frames: the transport does flow control
    }
  }

  // --- calls ------------------------------------------------------------------

  // Ends `call` (already out of its link's table): revokes exposures, fills the
  // response, records stats, runs done. On the call's worker, in a coroutine.
  void Complete(Call* call, Status status, internal::ReceivedFrame* rx) {
    coro::Scheduler* sched = coro::Scheduler::Current();
    if (call->has_timer && sched != nullptr) sched->CancelTimer(call->timer);
    call->ctx->ClearCancelHook();
    if (call->link && !call->exposed.empty()) {
      for (const auto& d : call->exposed) {
        if (call->link->dead) break;
        call->link->conn->Revoke(d).IgnoreError();
      }
    }
    uint64_t bytes_in = 0;
    if (status.ok() && rx != nullptr) status = FillResponse(*call, *rx, &bytes_in);
    if (call->stats != nullptr) call->stats->End(Clock::now() - call->start, status.ok(), bytes_in, call->bytes_out);
    DoneCallback done = std::move(call->done);
    delete call;
    done(std::move(status));
  }

  Status FillResponse(Call& call, internal::ReceivedFrame& rx, uint64_t* bytes_in) {
    const wire::Frame& frame = rx.frame;
    const wire::FrameHeader& h = frame.header();
    *bytes_in = h.message_len + rx.attachment.size();
    const char* msg = reinterpret_cast<const char*>(frame.message().data());
    if (call.response != nullptr) {
      if (!call.response->ParseFromArray(msg, static_cast<int>(h.message_len))) {
        return DataLossError("malformed response payload for " + std::string(call.name));
      }
    } else if (call.raw_response != nullptr) {
      call.raw_response->assign(msg, h.message_len);
    }
    mempool::IoBuf att = std::move(rx.attachment);
    size_t room_index = 0;
    for (size_t i = 0; i < frame.num_descriptors(); ++i) {
      const wire::BulkDescriptor d = frame.descriptor(i);
      if (d.direction != wire::BulkDirection::kPush) continue;
      if (room_index >= call.push_room.size()) return DataLossError("response names more push regions than offered");
      const mempool::Buffer& room = call.push_room[room_index++];
      if (d.len > room.size()) return DataLossError("response claims more pushed bytes than the region holds");
      if (d.len == 0) continue;
      mempool::Buffer got = room.Slice(0, d.len);
      HRPC_TRY(wire::CheckBulkCrc(d, std::as_bytes(std::span<const char>(got.data(), got.size()))));
      *bytes_in += d.len;
      att.Append(std::move(got));
    }
    call.ctx->response_attachment() = std::move(att);
    return Status::Ok();
  }

  // Runs on the slot's worker, in a coroutine. Takes ownership of `call`.
  void StartCall(Slot& slot, Call* call) {
    ClientContext& ctx = *call->ctx;
    if (ctx.IsCancelled()) return Complete(call, CancelledError("call cancelled before it started"), nullptr);
    if (ctx.DeadlineExpired()) {
      return Complete(call, DeadlineExceededError("deadline expired before the call started"), nullptr);
    }
    auto link_or = EnsureLink(slot);
    if (!link_or.ok()) return Complete(call, link_or.status(), nullptr);
    std::shared_ptr<Link> link = std::move(*link_or);
    call->link = link;
    ctx.set_peer(link->peer);
    mempool::Pool& pool = workers->pool(slot.worker);
    transport::Connection& conn = *link->conn;

    // Attachment: inline or exposed for READ.
    mempool::IoBuf att = std::move(ctx.request_attachment());
    ctx.request_attachment() = mempool::IoBuf();
    call->bytes_out = call->msg.message_len + att.size();
    std::vector<wire::BulkDescriptor> descs;
    const size_t limit = conn.limits().max_message_bytes;
    const bool inline_att = att.size() <= options.eager_threshold &&
                            wire::PrefixSize(0) + call->msg.message_len + att.size() <= limit;
    const size_t max_class = MaxClass(pool);
    if (!inline_att) {
      for (size_t i = 0; i < att.num_slices(); ++i) {
        const mempool::Buffer& s = att.slice(i);
        std::vector<mempool::Buffer> pieces;
        auto exp = conn.Expose(s, transport::Access::kRead);
        if (exp.ok()) {
          call->exposed.push_back(*exp);
          descs.push_back({exp->addr, exp->len, exp->key, Crc32c(s.data(), s.size()), wire::BulkDirection::kPull});
          continue;
        }
        if (exp.status().code() != StatusCode::kFailedPrecondition) {
          return Complete(call, exp.status().WithContext("expose request attachment"), nullptr);
        }
        // Not from this transport's pool: copy into it (counted).
        for (size_t off = 0; off < s.size(); off += max_class) {
          const size_t n = std::min(max_class, s.size() - off);
          auto b = pool.Allocate(n);
          if (!b.ok()) return Complete(call, b.status().WithContext("copy request attachment"), nullptr);
          mempool::IoBuf(s.Slice(off, n)).CopyTo(b->data(), 0, n);
          auto e2 = conn.Expose(*b, transport::Access::kRead);
          if (!e2.ok()) return Complete(call, e2.status().WithContext("expose request attachment"), nullptr);
          call->exposed.push_back(*e2);
          descs.push_back({e2->addr, e2->len, e2->key, Crc32c(b->data(), n), wire::BulkDirection::kPull});
          call->held.push_back(std::move(*b));
        }
      }
      // The exposures hold their blocks; keep the attachment alive with the call too.
      for (size_t i = 0; i < att.num_slices(); ++i) call->held.push_back(att.slice(i));
      att = mempool::IoBuf();
    }
    // Room for a large response attachment.
    const size_t cap = ctx.response_attachment_capacity();
    if (cap > options.eager_threshold) {
      for (size_t off = 0; off < cap; off += max_class) {
        const size_t n = std::min(max_class, cap - off);
        auto b = pool.Allocate(n);
        if (!b.ok()) return Complete(call, b.status().WithContext("response attachment room"), nullptr);
        auto e = conn.Expose(*b, transport::Access::kWrite);
        if (!e.ok()) return Complete(call, e.status().WithContext("expose response room"), nullptr);
        call->exposed.push_back(*e);
        descs.push_back({e->addr, e->len, e->key, 0, wire::BulkDirection::kPush});
        call->push_room.push_back(std::move(*b));
      }
    }
    if (descs.size() > wire::kMaxDescriptors) {
      return Complete(call, InvalidArgumentError("call needs " + std::to_string(descs.size()) +
                                                 " bulk descriptors (max " + std::to_string(wire::kMaxDescriptors) +
                                                 "): attachment too fragmented or too large"),
                      nullptr);
    }
    if (wire::PrefixSize(descs.size()) > call->msg.room) {
      // More descriptors than planned (a foreign attachment got split): re-frame.
      auto m = internal::RawWithRoom(pool,
                                     std::string_view(call->msg.buf.data() + call->msg.room, call->msg.message_len),
                                     wire::PrefixSize(descs.size()));
      if (!m.ok()) return Complete(call, m.status(), nullptr);
      call->msg = std::move(*m);
    }
    if (wire::PrefixSize(descs.size()) + call->msg.message_len + att.size() > limit) {
      return Complete(call, ResourceExhaustedError("request message of " + std::to_string(call->msg.message_len) +
                                                   " bytes does not fit a control message of " +
                                                   std::to_string(limit) + " bytes: send bulk data as an attachment"),
                      nullptr);
    }

    wire::FrameHeader h;
    h.kind = wire::FrameKind::kRequest;
    h.txn_id = slot.next_txn++;
    h.service_id = call->service_id;
    h.method_id = call->method_id;
    h.deadline_us = ctx.DeadlineBudgetMicros();
    h.attachment_len = static_cast<uint32_t>(att.size());
    auto frame = internal::FinishFrame(call->msg, h, descs);
    if (!frame.ok()) return Complete(call, frame.status(), nullptr);
    frame->Append(std::move(att));
    call->msg.buf.Reset();
    call->txn = h.txn_id;

    link->calls.emplace(call->txn, call);
    const uint64_t txn = call->txn;
    std::weak_ptr<Link> weak = link;
    coro::Scheduler& sched = workers->scheduler(slot.worker);
    if (ctx.has_deadline()) {
      call->timer = sched.AddTimer(ctx.deadline(), [this, weak, txn] {
        if (auto l = weak.lock()) Abort(l, txn, DeadlineExceededError("deadline exceeded"));
      });
      call->has_timer = true;
    }
    ctx.SetCancelHook([this, weak, txn, &sched] {
      sched.Post([this, weak, txn] {
        if (auto l = weak.lock()) Abort(l, txn, CancelledError("call cancelled"));
      }, "hrpc-cancel");
    });
    Status sent = conn.Send(std::move(*frame));
    if (!sent.ok()) {
      if (link->calls.erase(txn) > 0) {
        Status why = sent.code() == StatusCode::kUnavailable || sent.code() == StatusCode::kCancelled
                         ? Status(StatusCode::kUnavailable, "send to " + link->peer + ": " + sent.ToString())
                         : sent;
        Complete(call, std::move(why), nullptr);
      }
    }
  }

  // Ends a call early (deadline, cancel) and tells the server.
  void Abort(const std::shared_ptr<Link>& link, uint64_t txn, Status why) {
    auto it = link->calls.find(txn);
    if (it == link->calls.end()) return;
    Call* call = it->second;
    link->calls.erase(it);
    call->has_timer = call->has_timer && why.code() != StatusCode::kDeadlineExceeded;
    if (!link->dead) {
      wire::FrameHeader h;
      h.kind = wire::FrameKind::kCancel;
      h.txn_id = txn;
      if (auto f = internal::SmallFrame(workers->pool(link->slot->worker), h, {}); f.ok()) {
        link->conn->Send(std::move(*f)).IgnoreError();
      }
    }
    Complete(call, std::move(why), nullptr);
  }

  // Serializes, then runs StartCall on the right worker.
  void Begin(Call* call, const google::protobuf::MessageLite* request, std::string_view raw, bool may_block) {
    Slot& slot = PickSlot();
    call->start = Clock::now();
    call->stats->Begin();
    mempool::Pool& pool = workers->pool(slot.worker);
    // Plan the descriptors now, to reserve the room for them in front of the message.
    const size_t max_class = MaxClass(pool);
    size_t ndesc = 0;
    const mempool::IoBuf& att = call->ctx->request_attachment();
    if (att.size() > options.eager_threshold) {
      for (size_t i = 0; i < att.num_slices(); ++i) ndesc += Pieces(att.slice(i).size(), max_class);
    }
    const size_t cap = call->ctx->response_attachment_capacity();
    if (cap > options.eager_threshold) ndesc += Pieces(cap, max_class);
    const size_t room = wire::PrefixSize(std::min(ndesc, wire::kMaxDescriptors));
    Result<SerializedMessage> m = InternalError("unset");
    if (request != nullptr) {
      if (!request->IsInitialized()) {
        m = InvalidArgumentError("request for " + std::string(call->name) +
                                 " lacks required fields: " + request->InitializationErrorString());
      } else {
        m = internal::SerializeWithRoom(pool, *request, room);
      }
    } else {
      m = internal::RawWithRoom(pool, raw, room);
    }
    if (!m.ok()) {
      call->ctx->request_attachment() = mempool::IoBuf();
      call->stats->End(Clock::now() - call->start, false, 0, 0);
      DoneCallback done = std::move(call->done);
      delete call;
      done(m.status());
      return;
    }
    call->msg = std::move(*m);
    coro::Scheduler& sched = workers->scheduler(slot.worker);
    if (coro::Scheduler::Current() == &sched) {
      if (may_block && coro::this_coro::InCoroutine()) {
        StartCall(slot, call);
      } else {
        sched.Spawn([this, &slot, call] { StartCall(slot, call); }, "hrpc-call");
      }
    } else {
      sched.Post([this, &slot, call] { StartCall(slot, call); }, "hrpc-call");
    }
  }

  Status CallSync(Call* call, const google::protobuf::MessageLite* request, std::string_view raw) {
    // Shared: Set() may still be returning on the completing thread when the
    // waiter wakes up and leaves.
    struct Wait {
      coro::Event ev;
      Status status;
    };
    auto w = std::make_shared<Wait>();
    call->done = [w](Status s) {
      w->status = std::move(s);
      w->ev.Set();
    };
    Begin(call, request, raw, /*may_block=*/true);
    w->ev.Wait().IgnoreError();
    return std::move(w->status);
  }

  Call* NewCall(uint32_t service_id, uint32_t method_id, std::string_view name, ClientContext& ctx) {
    auto* call = new Call;
    call->service_id = service_id;
    call->method_id = method_id;
    call->name = name;
    call->ctx = &ctx;
    call->stats = &stats.For(service_id, method_id, name);
    return call;
  }

  void Shutdown() {
    for (size_t w = 0; w < workers->size(); ++w) {
      workers->RunOn(w, [this, w] {
        for (auto& slot : slots) {
          if (slot->worker != w || !slot->link) continue;
          auto link = slot->link;
          FailLink(link, CancelledError("channel destroyed"));
        }
        return Status::Ok();
      }).IgnoreError();
    }
    // Readers notice the closed connections and drop their links.
    const auto until = Clock::now() + std::chrono::seconds(5);
    while (live_links.load(std::memory_order_relaxed) > 0 && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (live_links.load() > 0) SPDLOG_WARN("hrpc client: {} connections still alive at shutdown", live_links.load());
    for (size_t w = 0; w < workers->size(); ++w) {
      workers->RunOn(w, [this, w] {
        for (auto& slot : slots) {
          if (slot->worker == w) slot->link.reset();
        }
        return Status::Ok();
      }).IgnoreError();
    }
    workers->DestroyTransports();
  }
};

Result<std::unique_ptr<RpcChannel>> RpcChannel::Create(std::string_view uri, RpcChannelOptions options) {
  if (options.connections_per_worker == 0) return InvalidArgumentError("connections_per_worker must be >= 1");
  auto impl = std::make_unique<Impl>();
  HRPC_ASSIGN_OR_RETURN(impl->uri, ResolveUri(uri, options.runtime.transport_choice));
  impl->scheme = impl->uri.substr(0, impl->uri.find("://"));
  if (options.runtime.name == "hrpc") options.runtime.name = "hrpc-cli";
  HRPC_ASSIGN_OR_RETURN(impl->workers, internal::WorkerSet::Create(options.runtime));
  impl->options = std::move(options);
  for (size_t w = 0; w < impl->workers->size(); ++w) {
    for (size_t c = 0; c < impl->options.connections_per_worker; ++c) {
      auto slot = std::make_unique<Slot>();
      slot->worker = w;
      impl->slots.push_back(std::move(slot));
    }
  }
  return std::unique_ptr<RpcChannel>(new RpcChannel(std::move(impl)));
}

RpcChannel::RpcChannel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RpcChannel::~RpcChannel() {
  impl_->Shutdown();
  impl_->workers.reset();
}

Status RpcChannel::CallMethod(const MethodDescriptor& method, ClientContext& ctx,
                              const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response) {
  Call* call = impl_->NewCall(method.service_id, method.method_id, method.full_name, ctx);
  call->response = response;
  return impl_->CallSync(call, &request, {});
}

void RpcChannel::CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                                 const google::protobuf::MessageLite& request,
                                 google::protobuf::MessageLite* response, DoneCallback done) {
  Call* call = impl_->NewCall(method.service_id, method.method_id, method.full_name, ctx);
  call->response = response;
  call->done = std::move(done);
  impl_->Begin(call, &request, {}, /*may_block=*/false);
}

Status RpcChannel::CallRaw(uint32_t service_id, uint32_t method_id, std::string_view name, ClientContext& ctx,
                           std::string_view request, std::string* response) {
  Call* call = impl_->NewCall(service_id, method_id, name, ctx);
  call->raw_response = response;
  return impl_->CallSync(call, nullptr, request);
}

Status RpcChannel::Connect() {
  for (auto& slot : impl_->slots) {
    Slot* s = slot.get();
    HRPC_TRY(impl_->workers->RunOn(s->worker, [this, s]() -> Status {
      auto l = impl_->EnsureLink(*s);
      return l.ok() ? Status::Ok() : l.status();
    }));
  }
  return Status::Ok();
}

const std::string& RpcChannel::uri() const noexcept { return impl_->uri; }
mempool::Pool& RpcChannel::pool() noexcept { return impl_->workers->pool(0); }
size_t RpcChannel::num_workers() const noexcept { return impl_->workers->size(); }
coro::Scheduler& RpcChannel::scheduler(size_t worker) noexcept { return impl_->workers->scheduler(worker); }
std::vector<MethodStats> RpcChannel::Stats() const { return impl_->stats.Snapshot(); }

}  // namespace hrpc
