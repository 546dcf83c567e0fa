#include "peer_table.h"

#include <algorithm>
#include <utility>

#include <spdlog/spdlog.h>

#include "hrpc/rpc/wire.h"
#include "stream_core.h"
#include "txn_map.h"

namespace hrpc::internal {

using Clock = std::chrono::steady_clock;

// One transport connection of a worker to a peer (an entry reconnects by
// making a new Link).
struct Link {
  std::unique_ptr<transport::Connection> conn;
  TxnMap<Call*> calls;
  struct Stream {
    std::shared_ptr<StreamCore> core;
    std::shared_ptr<ChannelState> channel;
  };
  std::unordered_map<uint64_t, Stream> streams;  // open streams (until the server's close or a cancel)
  bool dead = false;
  std::string key;  // in the table
  std::shared_ptr<const std::string> peer;  // shared with the calls' contexts
  // Idle sweeps in a row that found it unused (reset by every call); no
  // clock read on the call path.
  uint32_t idle_sweeps = 0;
  uint32_t pulling = 0;  // responses being READ from the server (PullResponse)
  uint32_t starting = 0;  // calls that picked it and are not in `calls` yet (StartCall)
  // What calls that ended without the server's answer (deadline, cancel)
  // exposed: the server may still READ or WRITE it, and on RDMA revoking it
  // under such an op would fail this connection. Revoked when the server's
  // (late) response for the txn arrives: the server answers only once its
  // ops are over.
  std::unordered_map<uint64_t, Exposed> lingering;
  std::shared_ptr<ConnectionInfo> info;  // for /status
};

namespace {
// The channel whose call's done callback runs on this thread now, if any.
thread_local const ChannelState* tls_completing = nullptr;
// Pieces of a response attachment READ from the server's memory in flight at once.
constexpr size_t kResponsePullWindow = 4;
}  // namespace

MethodCounters& ChannelState::CountersFor(StatsRegistry& registry, uint32_t service_id, uint32_t method_id,
                                          std::string_view name) {
  const uint64_t key = ((uint64_t{service_id} << 32) | method_id) + 1;
  const size_t n = std::min(methods_cached.load(std::memory_order_acquire), kCachedMethods);
  for (size_t i = 0; i < n; ++i) {
    if (method_keys[i].load(std::memory_order_acquire) == key) {
      return *method_counters[i].load(std::memory_order_relaxed);
    }
  }
  MethodCounters& c = registry.For(service_id, method_id, name);
  const size_t slot = methods_cached.load(std::memory_order_relaxed);
  if (slot < kCachedMethods) {
    size_t expected = slot;
    // Claim the slot, publish the pointer, then the key; a lost race just skips caching.
    if (methods_cached.compare_exchange_strong(expected, slot + 1, std::memory_order_acq_rel)) {
      method_counters[slot].store(&c, std::memory_order_relaxed);
      method_keys[slot].store(key, std::memory_order_release);
    }
  }
  return c;
}

PeerTable::~PeerTable() {
  for (auto& [key, e] : table_) {
    if (e.link) {
      e.link->calls.clear();
      e.link->streams.clear();
    }
  }
}

Result<std::shared_ptr<Link>> PeerTable::EnsureLink(const ChannelState& channel, size_t index,
                                                    coro::Clock::time_point deadline) {
  const std::string& uri = channel.uri;
  if (closed_) return CancelledError("runtime stopped");
  const std::string& key = channel.link_keys[index];
  if (hot_entry_ != nullptr && hot_entry_->link && !hot_entry_->link->dead && hot_key_ == key) {
    return hot_entry_->link;
  }
  for (;;) {
    if (closed_) return CancelledError("runtime stopped");
    Entry& e = table_[key];
    if (e.link && !e.link->dead) {
      hot_entry_ = &e;
      hot_key_ = key;
      return e.link;
    }
    if (e.connecting) {
      // Every call waits for the connect only until its own deadline: the
      // connect (bounded by connect_timeout) goes on for the calls after it.
      auto ev = e.connect_done;
      if (deadline == coro::Clock::time_point::max()) {
        HRPC_TRY(ev->Wait());
      } else if (!ev->WaitUntil(deadline).ok() && !ev->IsSet()) {
        return DeadlineExceededError("deadline exceeded while connecting to " + uri);
      }
      Entry& again = table_[key];  // the table may have rehashed
      if (again.link && !again.link->dead) return again.link;
      if (!again.last_error.ok()) return again.last_error;
      continue;  // connected and already lost, or swept: connect again
    }
    e.connecting = true;
    auto ev = std::make_shared<coro::Event>();
    e.connect_done = ev;
    // In a coroutine of its own, counted with the readers: the runtime keeps
    // the table while one runs (WorkerSet::CloseConnections).
    live_.fetch_add(1, std::memory_order_relaxed);
    workers_.scheduler(worker_).Spawn(
        [this, key, uri, scheme = std::string(channel.scheme), ev] {
          ConnectLink(key, uri, scheme, *ev);
          live_.fetch_sub(1, std::memory_order_relaxed);
        },
        "hrpc-connect");
  }
}

void PeerTable::ConnectLink(const std::string& key, const std::string& uri, const std::string& scheme,
                            coro::Event& ev) {
  Status err;
  std::shared_ptr<Link> made;
  auto transport = workers_.TransportFor(worker_, scheme);
  if (!transport.ok()) {
    err = transport.status();
  } else {
    const auto& tls = workers_.options().tls;
    auto conn = tls ? (*transport)->ConnectTls(uri, tls) : (*transport)->Connect(uri);  // suspends this coroutine
    if (conn.ok() && workers_.options().authenticator && !closed_) {
      const Status auth = transport::AuthenticateWithin(
          *workers_.options().authenticator, **conn, workers_.pool(worker_), transport::AuthRole::kClient,
          workers_.options().transport.connect_timeout);
      if (!auth.ok()) {
        transport::CloseAfter(**conn, std::chrono::milliseconds(500));  // our refusal reaches the server
        // A refusal; a connection lost or silent meanwhile is UNAVAILABLE (below).
        if (auth.code() == StatusCode::kUnauthenticated) counters_.auth_failures.Add();
        conn = auth.WithContext("connect to " + uri);
      }
    }
    if (closed_) {  // the runtime stops: whatever the connect gave goes
      if (conn.ok()) (*conn)->Close();
      err = CancelledError("runtime stopped");
    } else if (!conn.ok() && conn.status().code() == StatusCode::kUnauthenticated) {
      counters_.connect_failures.Add();
      err = conn.status();
    } else if (!conn.ok()) {
      counters_.connect_failures.Add();
      err = conn.status().code() == StatusCode::kUnavailable
                ? conn.status()
                : Status(StatusCode::kUnavailable, conn.status().ToString());
      err = err.WithContext("connect to " + uri);
    } else {
      made = std::make_shared<Link>();
      made->conn = std::move(*conn);
      made->key = key;
      made->peer = std::make_shared<const std::string>(made->conn->peer());
      made->info = std::make_shared<ConnectionInfo>();
      made->info->peer = *made->peer;
      made->info->scheme = std::string(scheme);
      made->info->worker = worker_;
      made->info->opened = std::chrono::system_clock::now();
      {
        std::lock_guard lock(links_mu_);
        link_infos_.push_back(made->info);
      }
      counters_.connects.Add();
      if (table_[key].replaces_failed) {
        counters_.reconnects.Add();
        table_[key].replaces_failed = false;
      }
      open_.fetch_add(1, std::memory_order_relaxed);
      live_.fetch_add(1, std::memory_order_relaxed);
      workers_.scheduler(worker_).Spawn([this, made] { ReadLoop(made); }, "hrpc-client-rx");
      if (!sweeping_ && workers_.options().idle_timeout.count() > 0) {
        sweeping_ = true;
        live_.fetch_add(1, std::memory_order_relaxed);
        workers_.scheduler(worker_).Spawn([this] { SweepIdle(); }, "hrpc-idle-sweep");
      }
    }
  }
  Entry& done = table_[key];
  done.connecting = false;
  done.link = made;
  done.last_error = err;
  ev.Set();
}

Status PeerTable::Connect(const ChannelState& channel, size_t index) {
  auto l = EnsureLink(channel, index);
  return l.ok() ? Status::Ok() : l.status();
}

void PeerTable::FailLink(const std::shared_ptr<Link>& link, const Status& why) {
  const bool failed = why.code() != StatusCode::kCancelled;
  if (!link->dead) {
    link->dead = true;
    link->conn->Close();
    open_.fetch_sub(1, std::memory_order_relaxed);
    if (failed) counters_.lost.Add();
    std::lock_guard lock(links_mu_);
    std::erase(link_infos_, link->info);
  }
  auto it = table_.find(link->key);
  if (it != table_.end() && it->second.link == link) {
    it->second.link.reset();
    if (failed) it->second.replaces_failed = true;
  }
  link->lingering.clear();  // the peer can no longer reach them
  // One at a time, each out of the map before it completes: a done callback
  // that destroys its channel finds that channel's other calls here
  // (AbortChannel) instead of waiting for this loop to reach them.
  failing_.push_back(link);
  while (!link->calls.empty()) {
    auto first = link->calls.begin();
    Call* call = first->second;
    link->calls.Erase(first);
    Complete(call, why, nullptr);
  }
  std::erase(failing_, link);
  std::vector<uint64_t> streams;
  for (auto& [txn, st] : link->streams) streams.push_back(txn);
  for (uint64_t txn : streams) {
    link->streams[txn].core->End(why);
    ForgetStream(*link, txn);
  }
}

void PeerTable::ReadLoop(std::shared_ptr<Link> link) {
  for (;;) {
    auto msg = link->conn->Recv();
    if (!msg.ok()) {
      Status why = msg.status();
      if (why.code() != StatusCode::kCancelled) {
        why = Status(StatusCode::kUnavailable, "connection to " + *link->peer + " lost: " + why.ToString());
      }
      FailLink(link, why);
      break;
    }
    OnMessage(link, *msg);
  }
  link.reset();
  live_.fetch_sub(1, std::memory_order_relaxed);
}

void PeerTable::OnMessage(const std::shared_ptr<Link>& link, mempool::IoBuf& raw) {
  mempool::Pool& pool = workers_.pool(worker_);
  auto rx = ReadFrame(pool, raw);
  if (!rx.ok()) {
    SPDLOG_WARN("hrpc client: closing connection to {}: {}", *link->peer, rx.status().ToString());
    FailLink(link, rx.status().WithContext("bad frame from " + *link->peer));
    return;
  }
  const wire::FrameHeader& h = rx->frame.header();
  switch (h.kind) {
    case wire::FrameKind::kResponse: {
      auto it = link->calls.find(h.txn_id);
      if (it == link->calls.end()) return LateResponse(link, rx->frame);  // timed out or cancelled
      Call* call = it->second;
      link->calls.Erase(it);
      if (rx->frame.status().ok() && HasPullRegions(rx->frame)) {
        // The attachment waits in the server's memory: READ it off this reader.
        auto frame = std::make_shared<ReceivedFrame>(std::move(*rx));
        ++link->pulling;
        workers_.scheduler(worker_).Spawn([this, link, call, frame] { PullResponse(link, call, *frame); },
                                          "hrpc-pull-response");
        return;
      }
      Complete(call, rx->frame.status(), &*rx);
      return;
    }
    case wire::FrameKind::kStreamMessage:
    case wire::FrameKind::kStreamWindow:
    case wire::FrameKind::kStreamClose:
      return OnStreamFrame(link, std::move(*rx));
    case wire::FrameKind::kPing: {
      wire::FrameHeader pong;
      pong.kind = wire::FrameKind::kPong;
      pong.txn_id = h.txn_id;
      if (auto f = SmallFrame(pool, pong, {}); f.ok()) link->conn->Send(std::move(*f)).IgnoreError();
      return;
    }
    default:
      return;  // credit frames: the transport does flow control
  }
}

void PeerTable::Complete(Call* call, Status status, ReceivedFrame* rx) {
  coro::Scheduler* sched = coro::Scheduler::Current();
  if (call->has_timer && sched != nullptr) sched->CancelTimer(call->timer);
  call->ctx->ClearCancelHook();
  if (call->link && !call->bulk.exposed.empty()) {
    for (const auto& d : call->bulk.exposed) {
      if (call->link->dead) break;
      call->link->conn->Revoke(d).IgnoreError();
    }
  }
  uint64_t bytes_in = 0;
  if (status.ok() && rx != nullptr) status = FillResponse(*call, *rx, &bytes_in);
  if (call->link && call->txn != 0) call->link->info->finished.Add();
  if (call->stats != nullptr) call->stats->End(coro::SteadyNow() - call->start, status.code(), bytes_in, call->bytes_out);
  FinishCall(call, std::move(status));
}

void FinishCall(Call* call, Status status) {
  DoneCallback done = std::move(call->done);
  std::shared_ptr<ChannelState> channel = std::move(call->channel);
  delete call;
  const ChannelState* outer = tls_completing;
  tls_completing = channel.get();  // the callback may destroy its own channel
  done(std::move(status));
  tls_completing = outer;
  channel->in_flight.fetch_sub(1, std::memory_order_acq_rel);
}

bool CompletingCallOf(const ChannelState* channel) noexcept { return tls_completing == channel; }

void PeerTable::SendRelease(Link& link, uint64_t txn) {
  if (link.dead) return;
  wire::FrameHeader h;
  h.kind = wire::FrameKind::kRelease;
  h.txn_id = txn;
  if (auto f = SmallFrame(workers_.pool(worker_), h, {}); f.ok()) link.conn->Send(std::move(*f)).IgnoreError();
}

void PeerTable::LateResponse(const std::shared_ptr<Link>& link, const wire::Frame& frame) {
  const uint64_t txn = frame.header().txn_id;
  // The server holds an attachment it exposed for this call: nobody reads it.
  if (frame.status().ok() && HasPullRegions(frame)) SendRelease(*link, txn);
  auto it = link->lingering.find(txn);
  if (it == link->lingering.end()) return;
  Exposed gone = std::move(it->second);
  link->lingering.erase(it);
  if (!link->dead) RevokeAll(*link->conn, gone);
}

std::vector<std::shared_ptr<const ConnectionInfo>> PeerTable::Links() const {
  std::lock_guard lock(links_mu_);
  return {link_infos_.begin(), link_infos_.end()};
}

Status PeerTable::FillResponse(Call& call, ReceivedFrame& rx, uint64_t* bytes_in) {
  const wire::Frame& frame = rx.frame;
  const wire::FrameHeader& h = frame.header();
  const char* msg = reinterpret_cast<const char*>(frame.message().data());
  if (call.response != nullptr) {
    if (!call.response->ParseFromArray(msg, static_cast<int>(h.message_len))) {
      return DataLossError("malformed response payload for " + std::string(call.name));
    }
  } else if (call.raw_response != nullptr) {
    call.raw_response->assign(msg, h.message_len);
  }
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf att, CollectResponseAttachment(frame, std::move(rx.attachment),
                                                                     call.bulk.push_room, std::move(call.pulled)));
  *bytes_in = h.message_len + att.size();
  call.ctx->response_attachment() = std::move(att);
  return Status::Ok();
}

void PeerTable::PullResponse(std::shared_ptr<Link> link, Call* call, ReceivedFrame& rx) {
  mempool::Pool& pool = workers_.pool(worker_);
  const ClientContext& ctx = *call->ctx;
  const ChannelState& ch = *call->channel;
  auto live = [&ctx, &ch]() -> Status {
    if (ch.closed.load(std::memory_order_acquire)) return CancelledError("channel destroyed");
    if (ctx.IsCancelled()) return CancelledError("call cancelled while reading the response attachment");
    if (ctx.DeadlineExpired()) return DeadlineExceededError("deadline expired while reading the response attachment");
    return Status::Ok();
  };
  Status status;
  // The call ends at its deadline or cancel even with READs in flight; those
  // finish on their own before the RELEASE lets the server revoke the memory.
  BulkOps ops;
  for (size_t i = 0; i < rx.frame.num_descriptors() && status.ok(); ++i) {
    const wire::BulkDescriptor d = rx.frame.descriptor(i);
    if (d.direction != wire::BulkDirection::kPull) continue;
    const size_t chunk = std::min(kDefaultBulkChunkBytes, pool.options().max_class_bytes);
    auto got = PullRegion(*link->conn, pool, d, chunk, kResponsePullWindow, live, &ops, ctx.deadline(), link);
    if (got.ok()) {
      call->pulled.Append(std::move(*got));
    } else {
      status = got.status();
    }
  }
  // The server may let go of the attachment once no READ of it is in flight,
  // whatever happened.
  if (ops.idle()) {
    SendRelease(*link, call->txn);
  } else {
    workers_.scheduler(worker_).Spawn(
        [this, link, ops, txn = call->txn] {
          ops.Drain();
          SendRelease(*link, txn);
        },
        "hrpc-release");
  }
  --link->pulling;
  Complete(call, status, status.ok() ? &rx : nullptr);
}

void PeerTable::StartCall(Call* call) {
  ClientContext& ctx = *call->ctx;
  const ChannelState& ch = *call->channel;
  if (ch.closed.load(std::memory_order_acquire)) return Complete(call, CancelledError("channel destroyed"), nullptr);
  if (ctx.IsCancelled()) return Complete(call, CancelledError("call cancelled before it started"), nullptr);
  if (ctx.DeadlineExpired()) {
    return Complete(call, DeadlineExceededError("deadline expired before the call started"), nullptr);
  }
  auto link_or = EnsureLink(ch, call->connection, ctx.deadline());
  if (!link_or.ok()) return Complete(call, link_or.status(), nullptr);
  if (ch.closed.load(std::memory_order_acquire)) return Complete(call, CancelledError("channel destroyed"), nullptr);
  // It may have waited for a connect: a call cancelled or out of time meanwhile is not sent.
  if (ctx.IsCancelled()) return Complete(call, CancelledError("call cancelled while connecting"), nullptr);
  if (ctx.DeadlineExpired()) {
    return Complete(call, DeadlineExceededError("deadline expired while connecting"), nullptr);
  }
  std::shared_ptr<Link> link = std::move(*link_or);
  // Not idle while the call is on its way to `calls` (exposing its
  // attachment may suspend for the checksum).
  ++link->starting;
  struct Starting {
    Link& link;
    ~Starting() { --link.starting; }
  } starting{*link};
  call->link = link;
  ctx.set_peer(link->peer);
  mempool::Pool& pool = workers_.pool(worker_);
  transport::Connection& conn = *link->conn;

  mempool::IoBuf att = std::move(ctx.request_attachment());
  ctx.request_attachment() = mempool::IoBuf();
  call->bytes_out = call->msg.message_len + att.size();
  const transport::Limits& limits = conn.limits();
  const size_t limit = limits.max_message_bytes;
  const bool rid = ctx.request_id() != 0;
  const AttachmentPath path =
      ChooseAttachmentPath(att.size(), wire::PrefixSize(0, rid) + call->msg.message_len, ch.eager_threshold, limits);
  if (path == AttachmentPath::kDescriptors) {
    if (Status s = ExposeForRead(conn, pool, std::move(att), call->bulk); !s.ok()) {
      return Complete(call, std::move(s), nullptr);
    }
    att = mempool::IoBuf();
  }
  // Room for a large response attachment, unless the connection streams one
  // that large behind the response.
  const size_t cap = ctx.response_attachment_capacity();
  if (cap > ch.eager_threshold && cap > limits.max_payload_bytes) {
    if (Status s = ExposeForWrite(conn, pool, cap, call->bulk); !s.ok()) {
      return Complete(call, std::move(s), nullptr);
    }
  }
  const std::vector<wire::BulkDescriptor>& descs = call->bulk.descriptors;
  if (descs.size() > wire::kMaxDescriptors) {
    return Complete(call,
                    InvalidArgumentError("call needs " + std::to_string(descs.size()) +
                                         " bulk descriptors (max " + std::to_string(wire::kMaxDescriptors) +
                                         "): attachment too fragmented or too large"),
                    nullptr);
  }
  // The room in front of the message was planned for every descriptor this
  // call can need (PlannedDescriptors), so the prefix fits (FinishFrame
  // checks).
  if (wire::PrefixSize(descs.size(), rid) + call->msg.message_len > limit ||
      (path == AttachmentPath::kInline &&
       wire::PrefixSize(descs.size(), rid) + call->msg.message_len + att.size() > limit)) {
    return Complete(call,
                    ResourceExhaustedError("request message of " + std::to_string(call->msg.message_len) +
                                           " bytes does not fit a control message of " + std::to_string(limit) +
                                           " bytes: send bulk data as an attachment"),
                    nullptr);
  }

  wire::FrameHeader h;
  h.kind = wire::FrameKind::kRequest;
  h.txn_id = next_txn_++;
  h.service_id = call->service_id;
  h.method_id = call->method_id;
  h.deadline_us = ctx.DeadlineBudgetMicros();
  h.request_id = ctx.request_id();
  h.attachment_len = static_cast<uint32_t>(att.size());
  auto frame = FinishFrame(call->msg, h, descs);
  if (!frame.ok()) return Complete(call, frame.status(), nullptr);
  call->msg.buf.Reset();
  call->txn = h.txn_id;

  link->calls.Insert(call->txn, call);
  link->info->started.Add();
  link->idle_sweeps = 0;
  const uint64_t txn = call->txn;
  coro::Scheduler& sched = workers_.scheduler(worker_);
  // Both hooks capture two words, which std::function keeps without a heap
  // block; the txn finds the call's connection (AbortTxn).
  if (ctx.has_deadline()) {
    call->timer = sched.AddTimer(ctx.deadline(), [this, txn] {
      AbortTxn(txn, DeadlineExceededError("deadline exceeded"));
    });
    call->has_timer = true;
  }
  ctx.SetCancelHook([this, txn] {
    workers_.scheduler(worker_).Post([this, txn] { AbortTxn(txn, CancelledError("call cancelled")); },
                                     "hrpc-cancel");
  });
  Status sent;
  if (path == AttachmentPath::kStream) {
    sent = conn.SendWithPayload(std::move(*frame), std::move(att));
  } else {
    frame->Append(std::move(att));
    sent = conn.Send(std::move(*frame));
  }
  if (!sent.ok()) {
    if (link->calls.Erase(txn)) {
      // The connection's own failure (whatever its code) is UNAVAILABLE to
      // the call; a refusal of this message alone keeps its code.
      const bool lost = sent.code() == StatusCode::kUnavailable || sent.code() == StatusCode::kCancelled ||
                        !conn.status().ok();
      Status why = lost ? Status(StatusCode::kUnavailable, "send to " + *link->peer + ": " + sent.ToString()) : sent;
      Complete(call, std::move(why), nullptr);
    }
  }
}

void PeerTable::Abort(const std::shared_ptr<Link>& link, uint64_t txn, Status why) {
  auto it = link->calls.find(txn);
  if (it == link->calls.end()) return;
  Call* call = it->second;
  link->calls.Erase(it);
  call->has_timer = call->has_timer && why.code() != StatusCode::kDeadlineExceeded;
  if (!link->dead && !call->bulk.exposed.empty()) {
    // The server may be READing or WRITING these now: they stay exposed until it answers.
    link->lingering[txn] = std::move(call->bulk);
    call->bulk = Exposed();
  }
  if (!link->dead) {
    wire::FrameHeader h;
    h.kind = wire::FrameKind::kCancel;
    h.txn_id = txn;
    if (auto f = SmallFrame(workers_.pool(worker_), h, {}); f.ok()) link->conn->Send(std::move(*f)).IgnoreError();
  }
  Complete(call, std::move(why), nullptr);
}

void PeerTable::AbortTxn(uint64_t txn, Status why) {
  // Not on the call path: a deadline or a cancel. A call in flight is in the
  // calls of a link in the table (a link leaves it failed or idle), or of a
  // lost one whose calls FailLink is completing.
  for (auto& [key, e] : table_) {
    if (e.link && e.link->calls.contains(txn)) return Abort(e.link, txn, std::move(why));
  }
  for (const auto& link : failing_) {
    if (link->calls.contains(txn)) return Abort(link, txn, std::move(why));
  }
}

void PeerTable::AbortChannel(const ChannelState* channel, const Status& why) {
  std::vector<std::pair<std::shared_ptr<Link>, uint64_t>> doomed, streams;
  auto collect = [&](const std::shared_ptr<Link>& link) {
    for (auto& [txn, call] : link->calls) {
      if (call->channel.get() == channel) doomed.emplace_back(link, txn);
    }
    for (auto& [txn, st] : link->streams) {
      if (st.channel.get() == channel) streams.emplace_back(link, txn);
    }
  };
  for (auto& [key, e] : table_) {
    if (e.link) collect(e.link);
  }
  for (const auto& link : failing_) collect(link);  // lost, their calls being completed (FailLink)
  for (auto& [link, txn] : doomed) Abort(link, txn, why);
  for (auto& [link, txn] : streams) CancelStream(link, txn, why);
}

Result<OpenedStream> PeerTable::OpenStream(const std::shared_ptr<ChannelState>& channel, size_t index,
                                           uint32_t service_id, uint32_t method_id, ClientContext& ctx) {
  if (channel->closed.load(std::memory_order_acquire)) return CancelledError("channel destroyed");
  if (ctx.IsCancelled()) return CancelledError("stream cancelled before it started");
  if (ctx.DeadlineExpired()) return DeadlineExceededError("deadline expired before the stream started");
  HRPC_ASSIGN_OR_RETURN(std::shared_ptr<Link> link,
                        EnsureLink(*channel, index, ctx.deadline()));
  if (channel->closed.load(std::memory_order_acquire)) return CancelledError("channel destroyed");
  if (ctx.IsCancelled()) return CancelledError("stream cancelled while connecting");
  if (ctx.DeadlineExpired()) return DeadlineExceededError("deadline expired while connecting");
  ctx.set_peer(link->peer);
  StreamSettings settings;
  settings.receive_window = channel->stream_window;
  settings.eager_threshold = channel->eager_threshold;
  mempool::Pool& pool = workers_.pool(worker_);
  settings.pull_chunk = std::min(kDefaultBulkChunkBytes, pool.options().max_class_bytes);
  settings.pull_window = kResponsePullWindow;
  const uint64_t txn = next_txn_++;
  auto core = std::make_shared<StreamCore>(*link->conn, pool, txn, settings);
  link->streams.emplace(txn, Link::Stream{core, channel});
  channel->in_flight.fetch_add(1, std::memory_order_acq_rel);
  link->info->started.Add();
  link->idle_sweeps = 0;
  if (Status s = core->SendOpen(service_id, method_id, ctx.DeadlineBudgetMicros()); !s.ok()) {
    Status why = Status(StatusCode::kUnavailable, "open stream to " + *link->peer + ": " + s.ToString());
    core->End(why);
    ForgetStream(*link, txn);
    return why;
  }
  return OpenedStream{std::move(link), std::move(core)};
}

void PeerTable::ForgetStream(Link& link, uint64_t txn) {
  auto it = link.streams.find(txn);
  if (it == link.streams.end()) return;
  std::shared_ptr<ChannelState> channel = std::move(it->second.channel);
  link.streams.erase(it);
  link.info->finished.Add();
  channel->in_flight.fetch_sub(1, std::memory_order_acq_rel);
}

void PeerTable::CancelStream(const std::shared_ptr<Link>& link, uint64_t txn, Status why,
                             const std::shared_ptr<StreamCore>& ended) {
  auto it = link->streams.find(txn);
  if (it == link->streams.end()) {
    // Closed by the server, which keeps what it exposed for the messages
    // this side dropped until it hears of it (its handler is over: the
    // cancel only releases that memory).
    if (ended && ended->TakeOwedRelease() && !link->dead) SendStreamCancel(link, txn, *ended);
    return;
  }
  std::shared_ptr<StreamCore> core = it->second.core;
  core->End(why);
  core->TakeOwedRelease();  // the cancel below releases it
  ForgetStream(*link, txn);
  if (!link->dead && core->holds_exposures()) {
    // The server may be READing them now (revoking one under a READ would
    // fail this connection on RDMA): they stay exposed until its close.
    link->lingering[txn] = core->TakeExposures();
  }
  SendStreamCancel(link, txn, *core);
}

void PeerTable::SendStreamCancel(const std::shared_ptr<Link>& link, uint64_t txn, StreamCore& core) {
  // The cancel waits for this side's READs of the server's memory in flight
  // (a Read() stops before its next group of pieces): the server revokes that
  // memory when the cancel arrives.
  core.AfterPulls([this, link, txn] {
    if (link->dead) return;
    wire::FrameHeader h;
    h.kind = wire::FrameKind::kCancel;
    h.txn_id = txn;
    if (auto f = SmallFrame(workers_.pool(worker_), h, {}); f.ok()) link->conn->Send(std::move(*f)).IgnoreError();
  });
}

void PeerTable::OnStreamFrame(const std::shared_ptr<Link>& link, ReceivedFrame rx) {
  const wire::FrameHeader h = rx.frame.header();
  auto it = link->streams.find(h.txn_id);
  if (it == link->streams.end()) {
    // Cancelled or ended here: late frames are dropped. The server's close
    // for a cancelled stream comes once it READs nothing more of it.
    if (h.kind == wire::FrameKind::kStreamClose) {
      if (auto l = link->lingering.find(h.txn_id); l != link->lingering.end()) {
        Exposed gone = std::move(l->second);
        link->lingering.erase(l);
        RevokeAll(*link->conn, gone);
      }
    }
    return;
  }
  std::shared_ptr<StreamCore> core = it->second.core;
  Status bad;
  switch (h.kind) {
    case wire::FrameKind::kStreamMessage:
      bad = core->OnMessage(std::move(rx));
      break;
    case wire::FrameKind::kStreamWindow:
      bad = core->OnWindow(rx.frame.message());
      break;
    default:  // kStreamClose: the server's final status; nothing more comes
      core->OnClose(rx.frame.status());
      ForgetStream(*link, h.txn_id);
      return;
  }
  if (!bad.ok()) {
    SPDLOG_WARN("hrpc client: ending stream {} to {}: {}", h.txn_id, *link->peer, bad.ToString());
    CancelStream(link, h.txn_id, std::move(bad));
  }
}

void PeerTable::CloseAll(const Status& why) {
  closed_ = true;
  std::vector<std::shared_ptr<Link>> links;
  for (auto& [key, e] : table_) {
    if (e.link) links.push_back(e.link);
  }
  for (auto& link : links) FailLink(link, why);
  stop_sweeper_.Set();
}

void PeerTable::SweepIdle() {
  // A connection is closed once it had no call in flight and no new call for
  // kIdleSweeps sweeps in a row, i.e. for idle_timeout (to within a period).
  constexpr uint32_t kIdleSweeps = 4;
  const auto period = std::max<Clock::duration>(workers_.options().idle_timeout / kIdleSweeps,
                                                 std::chrono::milliseconds(1));
  while (!closed_) {
    if (stop_sweeper_.WaitUntil(Clock::now() + period).ok() || closed_) break;
    std::vector<std::shared_ptr<Link>> expired;
    for (auto it = table_.begin(); it != table_.end();) {
      Entry& e = it->second;
      if (e.link && !e.link->dead) {
        if (!e.link->calls.empty() || !e.link->streams.empty() || e.link->pulling > 0 || e.link->starting > 0) {
          e.link->idle_sweeps = 0;
        } else if (++e.link->idle_sweeps >= kIdleSweeps) {
          expired.push_back(e.link);
        }
      } else if (!e.link && !e.connecting) {
        if (hot_entry_ == &e) hot_entry_ = nullptr;
        it = table_.erase(it);
        continue;
      }
      ++it;
    }
    for (auto& link : expired) {
      SPDLOG_DEBUG("hrpc client: closing idle connection to {}", *link->peer);
      FailLink(link, CancelledError("idle connection closed"));
    }
  }
  live_.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace hrpc::internal
