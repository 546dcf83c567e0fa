// Shared by the RPC tests that speak the wire format by hand over a bare
// transport connection (a peer that breaks the protocol on purpose).
#pragma once

#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/wire.h"
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

// The next frame on `conn`, decoded to its header.
inline hrpc::Result<hrpc::wire::FrameHeader> RecvHeader(hrpc::transport::Connection& conn) {
  HRPC_ASSIGN_OR_RETURN(auto m, conn.Recv());
  std::vector<std::byte> bytes(m.size());
  m.CopyTo(bytes.data(), 0, bytes.size());
  HRPC_ASSIGN_OR_RETURN(auto f, hrpc::wire::Decode(bytes));
  return f.header();
}

}  // namespace rpctest
