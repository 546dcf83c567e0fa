// Request dispatch: bytes that a client sends as one control message reach a
// real Server (loopback transport, one worker) that serves hrpcfuzz.Fuzz and
// the built-in hrpc.Reflection: frame decode, service and method lookup,
// deadline, bulk descriptors (pulled from a client that exposed nothing),
// protobuf parse, handler, response. After the input the client sends a ping
// and waits for its pong (or for the server to close the connection, which a
// malformed frame must cause): the server is still serving, in order. A
// closed connection is replaced by a new one for the next input.
#include <cstdint>
#include <cstring>
#include <memory>

#include <spdlog/spdlog.h>

#include "fuzz.hrpc.h"
#include "fuzz_util.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/loopback.h"

using namespace hrpc;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kPingTxn = 0x70696e67'70696e67ull;

class FuzzService final : public hrpcfuzz::Fuzz::Service {
 public:
  Status Echo(ServerContext& ctx, const hrpcfuzz::Req& req, hrpcfuzz::Req* resp) override {
    if (req.fail()) return InvalidArgumentError("asked to fail");
    *resp = req;
    resp->set_blob(resp->blob() + std::to_string(ctx.request_attachment().size()));
    return Status::Ok();
  }
  Status Count(ServerContext& ctx, const hrpcfuzz::Req& req, hrpcfuzz::Resp* resp) override {
    uint64_t n = req.text().size() + req.blob().size() + ctx.request_attachment().size();
    for (const auto& i : req.items()) n += i.s().size() + static_cast<uint64_t>(i.f_size()) + i.packed_size();
    for (const auto& [k, v] : req.tags()) n += k.size() + static_cast<uint32_t>(v);
    resp->set_bytes(n);
    resp->set_items(static_cast<uint32_t>(req.items_size()));
    return Status::Ok();
  }
};

struct Env {
  std::shared_ptr<transport::LoopbackNetwork> net = transport::LoopbackNetwork::Create();
  std::unique_ptr<Runtime> runtime;
  FuzzService service;
  std::unique_ptr<Server> server;
  std::unique_ptr<mempool::Pool> pool;
  std::unique_ptr<coro::Worker> worker;
  std::unique_ptr<transport::Transport> transport;
  std::unique_ptr<transport::Connection> conn;
};

Env* Start() {
  spdlog::set_level(spdlog::level::off);  // malformed frames are logged by design
  auto* e = new Env;  // lives until exit, reachable (not a leak)
  RuntimeOptions ro;
  ro.workers = 1;
  ro.loopback = e->net;
  ro.transport.recv_depth = 16;
  e->runtime = std::move(Runtime::Create(ro)).value();
  ServerOptions so;
  so.listen = {"loop://fuzz"};
  so.release_timeout = 1000ms;
  e->server = std::move(Server::Create(*e->runtime, so)).value();
  HRPC_FUZZ_CHECK(e->server->RegisterService(&e->service).ok(), "register");
  const Status started = e->server->Start();
  HRPC_FUZZ_CHECK(started.ok(), "%s", started.ToString().c_str());

  e->pool = MakeFuzzPool();
  e->worker = std::move(coro::Worker::Start({.sched = {.name = "fuzz-client"}})).value();
  const Status made = coro::Async(e->worker->scheduler(), [e]() -> Status {
                        transport::TransportOptions o;
                        o.recv_depth = 16;
                        HRPC_ASSIGN_OR_RETURN(e->transport, transport::CreateLoopbackTransport(
                                                                e->net, e->worker->scheduler(), *e->pool, o));
                        return Status::Ok();
                      }).Get();
  HRPC_FUZZ_CHECK(made.ok(), "%s", made.ToString().c_str());
  return e;
}

Result<mempool::IoBuf> Copy(mempool::Pool& pool, const void* p, size_t n) {
  mempool::IoBuf out;
  if (n == 0) return out;
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(n));
  std::memcpy(b.data(), p, n);
  out.Append(std::move(b));
  return out;
}

// Sends the input, then a ping; OK once the pong arrived, the connection's
// error when the server closed it.
Status Exchange(Env& e, const uint8_t* data, size_t size) {
  if (!e.conn || !e.conn->status().ok()) {
    e.conn.reset();
    HRPC_ASSIGN_OR_RETURN(e.conn, e.transport->Connect("loop://fuzz"));
  }
  transport::Connection& c = *e.conn;
  if (size <= c.limits().max_message_bytes) {
    HRPC_ASSIGN_OR_RETURN(mempool::IoBuf msg, Copy(*e.pool, data, size));
    HRPC_TRY(c.Send(std::move(msg)));
  }
  wire::FrameHeader ping;
  ping.kind = wire::FrameKind::kPing;
  ping.txn_id = kPingTxn;
  std::byte frame[wire::kHeaderSize];
  HRPC_ASSIGN_OR_RETURN(size_t n, wire::EncodeFrame(ping, {}, {}, {}, {}, frame));
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf msg, Copy(*e.pool, frame, n));
  HRPC_TRY(c.Send(std::move(msg)));
  for (;;) {
    HRPC_ASSIGN_OR_RETURN(mempool::IoBuf got, c.Recv());
    if (got.size() < wire::kHeaderSize || got.num_slices() == 0 || got.slice(0).size() < wire::kHeaderSize) continue;
    auto h = wire::DecodeHeader(std::span<const std::byte>(
        reinterpret_cast<const std::byte*>(got.slice(0).data()), got.slice(0).size()));
    HRPC_FUZZ_CHECK(h.ok(), "the server sent a frame that does not decode: %s", h.status().ToString().c_str());
    if (h->kind == wire::FrameKind::kPong && h->txn_id == kPingTxn) return Status::Ok();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env* env = Start();
  // A server that neither answers the ping nor closes hangs here: libFuzzer's
  // -timeout reports it.
  coro::Async(env->worker->scheduler(), [&]() { return Exchange(*env, data, size); }).Get().IgnoreError();
  return 0;
}
