// Private to the RPC runtime: how attachments travel, in one place for the
// client (request attachments, response room) and the server (pulls, pushes,
// response attachments).
//
// An attachment takes one of three paths, chosen by ChooseAttachmentPath from
// its size and the connection's limits:
//  * inline: inside the control message (at most eager_threshold and it fits);
//  * stream: behind the control message in the same byte stream
//    (Connection::SendWithPayload, TCP): no extra round trip, and the
//    receiving transport reads it straight into aligned pool blocks;
//  * descriptors: exposed memory the peer moves with one-sided READ (request
//    attachments; response attachments the client gave too little room for,
//    which the client READs and then RELEASEs) or WRITE (response attachments
//    into room the client offered): RDMA and the loopback.
// Every one-sided move is checked against its descriptor (length, CRC32C)
// by wire::CheckBulkCrc; streamed and inline bytes are the transport's to
// protect.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/buffer.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/server_context.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/transport.h"

namespace hrpc::internal {

enum class AttachmentPath : uint8_t { kInline, kStream, kDescriptors };

// Pure: the path of an attachment of `attachment` bytes behind a control
// part of `control` bytes on a connection with `limits`.
AttachmentPath ChooseAttachmentPath(size_t attachment, size_t control, size_t eager_threshold,
                                    const transport::Limits& limits) noexcept;

// Pure: the bulk descriptors a request needs when its attachment goes by
// descriptors (one per slice, or per max_class piece of a slice that must be
// copied into the pool first) plus `room` bytes of response room (one per
// max_class piece). The client reserves space for this many in front of the
// serialized request, so the frame is built without moving the message.
size_t PlannedDescriptors(const mempool::IoBuf& attachment, size_t room, size_t max_class) noexcept;

// What one side exposed for one call: revoke `exposed` when it ends.
struct Exposed {
  std::vector<transport::RemoteDescriptor> exposed;
  std::vector<wire::BulkDescriptor> descriptors;
  std::vector<mempool::Buffer> push_room;  // where the peer writes (response room)
  std::vector<mempool::Buffer> held;       // blocks (and copies) the peer may still read
};

// Exposes `attachment` for READ (memory from outside `pool` is first copied
// into it through CountedCopy) and appends the kPull descriptors. Takes the
// attachment's blocks into `out.held`.
Status ExposeForRead(transport::Connection& conn, mempool::Pool& pool, mempool::IoBuf attachment, Exposed& out);
// Exposes `bytes` of `pool` for WRITE as kPush descriptors (response room).
Status ExposeForWrite(transport::Connection& conn, mempool::Pool& pool, size_t bytes, Exposed& out);
// Ends every exposure of `what` (while the connection lives).
void RevokeAll(transport::Connection& conn, const Exposed& what);

// The one-sided ops of one call, each run on a coroutine of its own whose
// closure holds its buffers (and whatever keeps its connection alive). The
// call waits for them only until its deadline passes or it is cancelled, and
// then ends: the ops it stopped waiting for still run to completion (or fail
// with their connection), and only then may the peer be told that its memory
// is free (the server's response, the client's RELEASE): Drain(). On RDMA,
// memory revoked under a READ or WRITE still in flight NAKs it and fails the
// whole connection, every other call on it included. Copies made after the
// first Run() share the ops. A call that runs none allocates nothing.
class BulkOps {
 public:
  // How often a wait looks at `live` (cancellation needs no wake-up of its own).
  static constexpr std::chrono::milliseconds kLivePoll{20};

  // Runs every op of `ops` at once and waits until all finished (their first
  // error, else OK), `deadline` passed or `live` returned an error (that error;
  // DEADLINE_EXCEEDED at the deadline): the ops still running are left to
  // finish on their own. Outside a coroutine the ops run one after the other.
  Status Run(std::vector<std::function<Status()>> ops, std::chrono::steady_clock::time_point deadline,
             const std::function<Status()>& live);
  // Suspends until every op Run() started has finished.
  void Drain() const;
  bool idle() const { return all_ == nullptr || all_->count() == 0; }

 private:
  std::shared_ptr<coro::WaitGroup> all_;  // made by the first Run() that starts ops
};

// READs one kPull region into blocks of `pool`, in pieces of at most `chunk`
// bytes with up to `window` of them in flight at once, calling `live` before
// each group of pieces (it returns why to stop), and checks length and
// CRC32C (off the worker when large, see checksum.h). Call from a coroutine (the window needs one; elsewhere pieces go
// one at a time). With `ops`, the READs run there and the pull stops waiting
// for them at `deadline` or when `live` fails (see BulkOps); `keep` is held by
// every READ until it finishes (the owner of `conn`). Without, every READ is
// waited for.
Result<mempool::IoBuf> PullRegion(transport::Connection& conn, mempool::Pool& pool, const wire::BulkDescriptor& d,
                                  size_t chunk, size_t window, const std::function<Status()>& live,
                                  BulkOps* ops = nullptr,
                                  std::chrono::steady_clock::time_point deadline =
                                      std::chrono::steady_clock::time_point::max(),
                                  std::shared_ptr<const void> keep = nullptr);
// PullRegion without the length and CRC32C check, for a caller that checks.
Result<mempool::IoBuf> PullRegionUnchecked(transport::Connection& conn, mempool::Pool& pool,
                                           const wire::BulkDescriptor& d, size_t chunk, size_t window,
                                           const std::function<Status()>& live, BulkOps* ops,
                                           std::chrono::steady_clock::time_point deadline,
                                           std::shared_ptr<const void> keep);
// wire::CheckBulkCrc, off the worker when `data` is large (see checksum.h).
Status CheckBulkCrcOffWorker(const wire::BulkDescriptor& d, const mempool::IoBuf& data);

// Whether a response carries kPull descriptors: an attachment the server
// exposed for the client to READ (the client offered too little room).
bool HasPullRegions(const wire::Frame& frame) noexcept;

// The client's side of a response: the attachment that came inline or
// streamed, then what the server wrote into the push room (checked against
// each descriptor's length and CRC32C), then what the client pulled.
Result<mempool::IoBuf> CollectResponseAttachment(const wire::Frame& frame, mempool::IoBuf received,
                                                 const std::vector<mempool::Buffer>& push_room, mempool::IoBuf pulled);

// ServerContext's bulk seam over one connection: READ into aligned blocks
// (`window` pieces in flight), WRITE from the response attachment, in pieces
// of `chunk` bytes, checking the call's deadline and cancellation between them
// and while waiting for them (BulkOps: a pull or push ends at the deadline or
// cancel; the server answers only after Drain()). `keep` owns `conn`.
class ConnBulk final : public BulkTransfer {
 public:
  ConnBulk(transport::Connection& conn, mempool::Pool& pool, size_t chunk, size_t window, const ServerContext& ctx,
           std::shared_ptr<const void> keep = nullptr)
      : conn_(conn), pool_(pool), chunk_(chunk), window_(window), ctx_(ctx), keep_(std::move(keep)) {}

  Result<mempool::IoBuf> Pull(const wire::BulkDescriptor& remote, std::chrono::steady_clock::time_point deadline) override;
  Status Push(const wire::BulkDescriptor& remote, const mempool::IoBuf& data,
              std::chrono::steady_clock::time_point deadline) override;
  // Bytes and CRC32C a handler pushed into region `d` itself (PushBulk), if any.
  bool Pushed(const wire::BulkDescriptor& d, uint32_t* len, uint32_t* crc) const;
  // The ops this call stopped waiting for: wait for them before answering.
  const BulkOps& ops() const { return ops_; }

 private:
  static uint64_t RegionKey(const wire::BulkDescriptor& d) { return d.addr ^ (uint64_t{d.rkey} << 32); }
  Status Live(std::chrono::steady_clock::time_point deadline, const char* what) const;

  transport::Connection& conn_;
  mempool::Pool& pool_;
  size_t chunk_;
  size_t window_;
  const ServerContext& ctx_;
  std::shared_ptr<const void> keep_;
  BulkOps ops_;
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> pushed_;
};

// The server's side of a response attachment: how it goes back.
struct ResponseAttachment {
  AttachmentPath path = AttachmentPath::kInline;
  mempool::IoBuf attachment;  // kInline / kStream: sent with the frame
  // The response's descriptors: the client's push regions with the bytes
  // written there, or kPull regions exposed for the client to READ.
  std::vector<wire::BulkDescriptor> descriptors;
  uint64_t pushed_bytes = 0;
  // kPull regions: hold them until the client's RELEASE (or the deadline),
  // then RevokeAll.
  Exposed for_read;
};
// Places `attachment` (the handler's response attachment): inline or streamed
// when it fits; else written into the push regions among
// `request_descriptors` when the client offered room enough; else exposed for
// the client to READ. Push regions are echoed with the bytes written there (0
// when unused). Memory outside `pool` is copied into it (counted) to be exposed.
Result<ResponseAttachment> PlaceResponseAttachment(mempool::IoBuf attachment, size_t control, size_t eager_threshold,
                                                   transport::Connection& conn, mempool::Pool& pool,
                                                   std::span<const wire::BulkDescriptor> request_descriptors,
                                                   ServerContext& ctx, const ConnBulk& bulk);

}  // namespace hrpc::internal
