// Shared by the RPC tests that speak the wire format by hand over a bare
// transport connection (a peer that breaks the protocol on purpose).
#pragma once

#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/tcp.h"
#include "hrpc/transport/transport.h"

namespace rpctest {

// A frame of header `h` and `message` (no descriptors). The attachment is not
// included: `h.attachment_len` announces one the caller sends behind the frame
// (Connection::SendWithPayload), or is 0.
inline hrpc::Result<hrpc::mempool::IoBuf> RawFrame(hrpc::mempool::Pool& pool, hrpc::wire::FrameHeader h,
                                                   std::string_view message = {}) {
  h.message_len = static_cast<uint32_t>(message.size());
  HRPC_ASSIGN_OR_RETURN(auto b, pool.Allocate(hrpc::wire::kMaxHeaderSize + message.size()));
  std::span<std::byte> out(reinterpret_cast<std::byte*>(b.data()), b.size());
  HRPC_ASSIGN_OR_RETURN(size_t n, hrpc::wire::EncodePrefix(h, {}, out));
  if (!message.empty()) std::memcpy(b.data() + n, message.data(), message.size());
  return hrpc::mempool::IoBuf(b.Slice(0, n + message.size()));
}

// An empty frame of `kind` for transaction `txn` (ping, pong, cancel, ...).
inline hrpc::Result<hrpc::mempool::IoBuf> ControlFrame(hrpc::mempool::Pool& pool, hrpc::wire::FrameKind kind,
                                                       uint64_t txn, hrpc::StatusCode code = hrpc::StatusCode::kOk) {
  hrpc::wire::FrameHeader h;
  h.kind = kind;
  h.txn_id = txn;
  h.status = code;
  return RawFrame(pool, h);
}

// A request for method `method_id` of service `service_id` with `message`
// (serialized), announcing `attachment_len` bytes streamed behind it.
inline hrpc::Result<hrpc::mempool::IoBuf> RequestFrame(hrpc::mempool::Pool& pool, uint64_t txn, uint32_t service_id,
                                                       uint32_t method_id, std::string_view message,
                                                       size_t attachment_len = 0) {
  hrpc::wire::FrameHeader h;
  h.kind = hrpc::wire::FrameKind::kRequest;
  h.txn_id = txn;
  h.service_id = service_id;
  h.method_id = method_id;
  h.attachment_len = static_cast<uint32_t>(attachment_len);
  return RawFrame(pool, h, message);
}

// The next frame on `conn`, decoded to its header.
inline hrpc::Result<hrpc::wire::FrameHeader> RecvHeader(hrpc::transport::Connection& conn) {
  HRPC_ASSIGN_OR_RETURN(auto m, conn.Recv());
  std::vector<std::byte> bytes(m.size());
  m.CopyTo(bytes.data(), 0, bytes.size());
  HRPC_ASSIGN_OR_RETURN(auto f, hrpc::wire::Decode(bytes));
  return f.header();
}

// A bare TCP transport connection to an hrpc server, on a worker of the
// test's (`sched`), with a pool of its own: the test speaks the wire format
// by hand through it. Send/Recv/Close run on the worker and wait; a test
// that needs more in one coroutine batch uses `conn` from coro::Async itself.
struct RawTcpPeer {
  std::unique_ptr<hrpc::mempool::Pool> pool;
  hrpc::coro::Scheduler* sched = nullptr;
  std::unique_ptr<hrpc::transport::Transport> transport;
  std::unique_ptr<hrpc::transport::Connection> conn;

  // `server_uri`: as the server reports it; the peer connects to its port on 127.0.0.1.
  hrpc::Status Connect(hrpc::coro::Scheduler& s, const std::string& server_uri, hrpc::transport::TcpOptions to = {},
                       size_t pool_bytes = size_t{16} << 20) {
    HRPC_ASSIGN_OR_RETURN(pool, hrpc::mempool::Pool::Create(
                                    {.arena_bytes = pool_bytes, .max_class_bytes = 1u << 20, .prefault = false}));
    sched = &s;
    const std::string uri = "tcp://127.0.0.1:" + server_uri.substr(server_uri.rfind(':') + 1);
    return hrpc::coro::Async(s, [&]() -> hrpc::Status {
             HRPC_ASSIGN_OR_RETURN(transport, hrpc::transport::CreateTcpTransport(s, *pool, to));
             HRPC_ASSIGN_OR_RETURN(conn, transport->Connect(uri));
             return hrpc::Status::Ok();
           }).Get();
  }
  // `frame` (RawFrame, ControlFrame), with `payload` streamed behind it when not empty.
  hrpc::Status Send(hrpc::Result<hrpc::mempool::IoBuf> frame, hrpc::mempool::IoBuf payload = {}) {
    HRPC_TRY(frame.status());
    return hrpc::coro::Async(*sched, [&]() -> hrpc::Status {
             if (payload.empty()) return conn->Send(std::move(*frame));
             return conn->SendWithPayload(std::move(*frame), std::move(payload));
           }).Get();
  }
  hrpc::Result<hrpc::wire::FrameHeader> Recv() {
    return hrpc::coro::Async(*sched, [&] { return RecvHeader(*conn); }).Get();
  }
  void Close() {
    if (sched == nullptr) return;
    (void)hrpc::coro::Async(*sched, [&] {
      conn.reset();
      transport.reset();
    }).Get();
  }
  ~RawTcpPeer() { Close(); }
};

}  // namespace rpctest
