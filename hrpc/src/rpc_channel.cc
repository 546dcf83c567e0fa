#include "hrpc/rpc/rpc_channel.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/wire.h"
#include "bulk.h"
#include "client_stream.h"
#include "peer_table.h"
#include "runtime_internal.h"

namespace hrpc {

using Clock = std::chrono::steady_clock;
using internal::Call;
using internal::ChannelState;
using internal::SerializedMessage;

class RpcChannel::Impl {
 public:
  std::shared_ptr<internal::WorkerSet> workers;
  std::shared_ptr<ChannelState> state;

  // The worker a call runs on: the caller's own when it is one of the
  // runtime's, else round robin.
  size_t PickWorker() const {
    const int cur = workers->CurrentIndex();
    return cur >= 0 ? static_cast<size_t>(cur) : workers->NextWorker();
  }

  // Serializes, then runs StartCall on the right worker.
  void Begin(Call* call, const google::protobuf::MessageLite* request, std::string_view raw, bool may_block) {
    const size_t worker = PickWorker();
    call->connection = state->rr.fetch_add(1, std::memory_order_relaxed) % state->connections_per_worker;
    call->channel = state;
    state->in_flight.fetch_add(1, std::memory_order_acq_rel);
    call->start = coro::SteadyNow();
    call->stats->Begin();
    mempool::Pool& pool = workers->pool(worker);
    // Room in front of the message for every descriptor the call may need
    // (the connection, and so the attachment's path, is known only later).
    const mempool::IoBuf& att = call->ctx->request_attachment();
    const size_t cap = call->ctx->response_attachment_capacity();
    const size_t ndesc = internal::PlannedDescriptors(att, cap > state->eager_threshold ? cap : 0,
                                                      pool.options().max_class_bytes);
    const size_t room = wire::PrefixSize(std::min(ndesc, wire::kMaxDescriptors), call->ctx->request_id() != 0);
    Result<SerializedMessage> m = [&]() -> Result<SerializedMessage> {
      if (request == nullptr) return internal::RawWithRoom(pool, raw, room);
      if (!request->IsInitialized()) {
        return InvalidArgumentError("request for " + std::string(call->name) +
                                    " lacks required fields: " + request->InitializationErrorString());
      }
      return internal::SerializeWithRoom(pool, *request, room);
    }();
    if (!m.ok()) {
      call->ctx->request_attachment() = mempool::IoBuf();
      call->stats->End(coro::SteadyNow() - call->start, m.status().code(), 0, 0);
      internal::FinishCall(call, m.status());  // `this` may be gone after it
      return;
    }
    call->msg = std::move(*m);
    internal::WorkerSet* ws = workers.get();
    coro::Scheduler& sched = ws->scheduler(worker);
    auto start = [ws, worker, call] { ws->peers(worker).StartCall(call); };
    if (coro::Scheduler::Current() == &sched) {
      if (may_block && coro::this_coro::InCoroutine()) {
        start();
      } else {
        sched.Spawn(std::move(start), "hrpc-call");
      }
    } else {
      sched.Post(std::move(start), "hrpc-call");
    }
  }

  Status CallSync(Call* call, const google::protobuf::MessageLite* request, std::string_view raw) {
    // A coroutine of the runtime's workers runs its call on its own worker,
    // where every completion of the call happens too (its connection, timer
    // and cancel all live there): it waits on a LocalEvent, without a lock.
    if (coro::this_coro::InCoroutine() && workers->CurrentIndex() >= 0) {
      return WaitFor<coro::LocalEvent>(call, request, raw);
    }
    return WaitFor<coro::Event>(call, request, raw);
  }

  template <class Ev>
  Status WaitFor(Call* call, const google::protobuf::MessageLite* request, std::string_view raw) {
    // On this stack: Set() touches the event only before it wakes the waiter
    // (Event resumes waiters after its unlock; LocalEvent only queues it), so
    // the waiter may return while Set() is still returning on the completing
    // thread. The callback captures one pointer, which std::function keeps
    // without a heap block.
    struct Wait {
      Ev ev;
      Status status;
    } w;
    call->done = [wp = &w](Status s) {
      wp->status = std::move(s);
      wp->ev.Set();
    };
    Begin(call, request, raw, /*may_block=*/true);
    w.ev.Wait().IgnoreError();
    return std::move(w.status);
  }

  Call* NewCall(uint32_t service_id, uint32_t method_id, std::string_view name, ClientContext& ctx) {
    auto* call = new Call;
    call->service_id = service_id;
    call->method_id = method_id;
    call->name = name;
    call->ctx = &ctx;
    call->stats = &state->CountersFor(workers->client_stats(), service_id, method_id, name);
    return call;
  }

  // Ends the calls still in flight and waits for them (including those still
  // connecting or queued for a worker).
  void Close() {
    state->closed.store(true, std::memory_order_release);
    // Destroyed in the done callback of one of its own calls: that call is
    // still counted until the callback returns.
    const int64_t own = internal::CompletingCallOf(state.get()) ? 1 : 0;
    if (state->in_flight.load(std::memory_order_acquire) <= own) return;
    const int here = workers->CurrentIndex();
    for (size_t w = 0; w < workers->size(); ++w) {
      auto abort = [this, w] {
        workers->peers(w).AbortChannel(state.get(), CancelledError("channel destroyed"));
        return Status::Ok();
      };
      if (static_cast<int>(w) == here) {
        abort().IgnoreError();  // on that worker already (maybe not in a coroutine)
      } else {
        workers->RunOn(w, abort).IgnoreError();
      }
    }
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (state->in_flight.load(std::memory_order_acquire) > own && Clock::now() < until) {
      if (coro::this_coro::InCoroutine()) {
        coro::this_coro::SleepFor(std::chrono::milliseconds(1));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    if (state->in_flight.load() > own) {
      SPDLOG_WARN("hrpc client: channel to {} destroyed with {} calls still connecting or reading a response",
                  state->uri, state->in_flight.load() - own);
    }
  }
};

Result<std::unique_ptr<RpcChannel>> RpcChannel::Create(Runtime& runtime, std::string_view uri,
                                                       RpcChannelOptions options) {
  return CreateOn(runtime.core(), uri, std::move(options));
}

Result<std::unique_ptr<RpcChannel>> RpcChannel::CreateOn(std::shared_ptr<internal::WorkerSet> workers,
                                                         std::string_view uri, RpcChannelOptions options) {
  if (options.connections_per_worker == 0) return InvalidArgumentError("connections_per_worker must be >= 1");
  auto impl = std::make_unique<Impl>();
  impl->workers = std::move(workers);
  impl->state = std::make_shared<ChannelState>();
  HRPC_ASSIGN_OR_RETURN(impl->state->uri, ResolveUri(uri, impl->workers->options().transport_choice));
  impl->state->scheme = impl->state->uri.substr(0, impl->state->uri.find("://"));
  impl->state->eager_threshold = options.eager_threshold;
  impl->state->connections_per_worker = options.connections_per_worker;
  if (options.stream_window.messages < wire::kInitialStreamWindowMessages ||
      options.stream_window.bytes < wire::kInitialStreamWindowBytes) {
    return InvalidArgumentError("stream_window must be at least 16 messages and 256 KiB");
  }
  impl->state->stream_window = options.stream_window;
  for (size_t i = 0; i < options.connections_per_worker; ++i) {
    impl->state->link_keys.push_back(impl->state->uri + "#" + std::to_string(i));
  }
  impl->workers->channels.fetch_add(1, std::memory_order_relaxed);
  return std::unique_ptr<RpcChannel>(new RpcChannel(std::move(impl)));
}

Result<std::unique_ptr<RpcChannel>> RpcChannel::Create(std::string_view uri, RpcChannelOptions options) {
  if (options.runtime.name == "hrpc") options.runtime.name = "hrpc-cli";
  // Fail on a bad URI before starting a worker.
  HRPC_TRY(ResolveUri(uri, options.runtime.transport_choice));
  HRPC_ASSIGN_OR_RETURN(auto runtime, Runtime::Create(options.runtime));
  return Create(*runtime, uri, std::move(options));
}

RpcChannel::RpcChannel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RpcChannel::~RpcChannel() {
  impl_->Close();
  impl_->workers->channels.fetch_sub(1, std::memory_order_relaxed);
}

Status RpcChannel::CallMethod(const MethodDescriptor& method, ClientContext& ctx,
                              const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response) {
  HRPC_TRY(impl_->workers->CheckMayBlock("synchronous call", method.full_name));
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
  HRPC_TRY(impl_->workers->CheckMayBlock("synchronous call", name));
  Call* call = impl_->NewCall(service_id, method_id, name, ctx);
  call->raw_response = response;
  return impl_->CallSync(call, nullptr, request);
}

std::unique_ptr<ClientStreamBase> RpcChannel::OpenStream(const MethodDescriptor& method, ClientContext& ctx) {
  return internal::OpenClientStream(impl_->workers, impl_->state, impl_->PickWorker(), method, ctx);
}

Status RpcChannel::Connect() {
  internal::WorkerSet& ws = *impl_->workers;
  HRPC_TRY(ws.CheckMayBlock("Connect"));
  const ChannelState& st = *impl_->state;
  for (size_t w = 0; w < ws.size(); ++w) {
    for (size_t c = 0; c < st.connections_per_worker; ++c) {
      HRPC_TRY(ws.RunOn(w, [&ws, &st, w, c] { return ws.peers(w).Connect(st, c); }));
    }
  }
  return Status::Ok();
}

const std::string& RpcChannel::uri() const noexcept { return impl_->state->uri; }
mempool::Pool& RpcChannel::pool() noexcept { return impl_->workers->pool(0); }
size_t RpcChannel::num_workers() const noexcept { return impl_->workers->size(); }
coro::Scheduler& RpcChannel::scheduler(size_t worker) noexcept { return impl_->workers->scheduler(worker); }
std::vector<MethodStats> RpcChannel::Stats() const { return impl_->workers->client_stats().Snapshot(); }

}  // namespace hrpc
