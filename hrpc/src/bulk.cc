#include "bulk.h"

#include <algorithm>
#include <memory>
#include <string>

#include "checksum.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"

namespace hrpc::internal {

using Clock = std::chrono::steady_clock;

namespace {
size_t Pieces(size_t bytes, size_t piece) { return bytes == 0 ? 0 : (bytes + piece - 1) / piece; }
}  // namespace

AttachmentPath ChooseAttachmentPath(size_t attachment, size_t control, size_t eager_threshold,
                                    const transport::Limits& limits) noexcept {
  if (attachment <= eager_threshold && control + attachment <= limits.max_message_bytes) {
    return AttachmentPath::kInline;
  }
  if (attachment <= limits.max_payload_bytes && attachment <= UINT32_MAX) return AttachmentPath::kStream;
  return AttachmentPath::kDescriptors;
}

size_t PlannedDescriptors(const mempool::IoBuf& attachment, size_t room, size_t max_class) noexcept {
  size_t n = Pieces(room, max_class);
  for (size_t i = 0; i < attachment.num_slices(); ++i) n += Pieces(attachment.slice(i).size(), max_class);
  return n;
}

Status ExposeForRead(transport::Connection& conn, mempool::Pool& pool, mempool::IoBuf attachment, Exposed& out) {
  const size_t max_class = pool.options().max_class_bytes;
  const size_t first = out.descriptors.size();
  for (size_t i = 0; i < attachment.num_slices(); ++i) {
    const mempool::Buffer& s = attachment.slice(i);
    auto exp = conn.Expose(s, transport::Access::kRead);
    if (exp.ok()) {
      out.exposed.push_back(*exp);
      out.descriptors.push_back(
          {exp->addr, exp->len, exp->key, 0, wire::BulkDirection::kPull});
      out.held.push_back(s);
      continue;
    }
    if (exp.status().code() != StatusCode::kFailedPrecondition) {
      return exp.status().WithContext("expose attachment for READ");
    }
    // Not from this transport's pool: copy into it (counted).
    for (size_t off = 0; off < s.size(); off += max_class) {
      const size_t n = std::min(max_class, s.size() - off);
      HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(n));
      mempool::IoBuf(s.Slice(off, n)).CopyTo(b.data(), 0, n);
      auto e = conn.Expose(b, transport::Access::kRead);
      if (!e.ok()) return e.status().WithContext("expose attachment for READ");
      out.exposed.push_back(*e);
      out.descriptors.push_back({e->addr, e->len, e->key, 0, wire::BulkDirection::kPull});
      out.held.push_back(std::move(b));
    }
  }
  // out.held[i] backs out.descriptors[first + i] (held and descriptors grow together).
  const size_t held0 = out.held.size() - (out.descriptors.size() - first);
  OffWorker(attachment.size(), [&] {
    for (size_t i = first; i < out.descriptors.size(); ++i) {
      const mempool::Buffer& b = out.held[held0 + (i - first)];
      out.descriptors[i].crc32c = Crc32c(b.data(), b.size());
    }
  });
  return Status::Ok();
}

Status ExposeForWrite(transport::Connection& conn, mempool::Pool& pool, size_t bytes, Exposed& out) {
  const size_t max_class = pool.options().max_class_bytes;
  for (size_t off = 0; off < bytes; off += max_class) {
    const size_t n = std::min(max_class, bytes - off);
    HRPC_ASSIGN_OR_RETURN(mempool::Buffer b, pool.Allocate(n));
    auto e = conn.Expose(b, transport::Access::kWrite);
    if (!e.ok()) return e.status().WithContext("expose response room");
    out.exposed.push_back(*e);
    out.descriptors.push_back({e->addr, e->len, e->key, 0, wire::BulkDirection::kPush});
    out.push_room.push_back(std::move(b));
  }
  return Status::Ok();
}

void RevokeAll(transport::Connection& conn, const Exposed& what) {
  for (const auto& d : what.exposed) {
    if (!conn.status().ok()) return;
    conn.Revoke(d).IgnoreError();
  }
}

Status BulkOps::Run(std::vector<std::function<Status()>> ops, Clock::time_point deadline,
                    const std::function<Status()>& live) {
  coro::Scheduler* sched = coro::Scheduler::Current();
  if (sched == nullptr || !coro::this_coro::InCoroutine()) {
    for (auto& op : ops) HRPC_TRY(op());
    return Status::Ok();
  }
  struct Group {
    coro::WaitGroup wg;
    std::vector<Status> status;
  };
  auto g = std::make_shared<Group>();
  g->status.resize(ops.size());
  g->wg.Add(static_cast<int64_t>(ops.size()));
  if (all_ == nullptr) all_ = std::make_shared<coro::WaitGroup>();
  all_->Add(static_cast<int64_t>(ops.size()));
  for (size_t i = 0; i < ops.size(); ++i) {
    sched->Spawn(
        [g, all = all_, i, op = std::move(ops[i])] {
          g->status[i] = op();
          g->wg.Done();
          all->Done();
        },
        "hrpc-bulk-op");
  }
  for (;;) {
    if (g->wg.WaitUntil(std::min(deadline, Clock::now() + kLivePoll)).ok()) break;
    HRPC_TRY(live());  // stop waiting: the ops finish on their own
    if (Clock::now() >= deadline) return DeadlineExceededError("deadline expired during a one-sided transfer");
  }
  for (const Status& s : g->status) HRPC_TRY(s);
  return Status::Ok();
}

void BulkOps::Drain() const {
  if (all_ != nullptr) all_->Wait().IgnoreError();
}

Result<mempool::IoBuf> PullRegionUnchecked(transport::Connection& conn, mempool::Pool& pool,
                                           const wire::BulkDescriptor& d, size_t chunk, size_t window,
                                           const std::function<Status()>& live, BulkOps* ops,
                                           Clock::time_point deadline, std::shared_ptr<const void> keep) {
  const transport::RemoteDescriptor src{d.addr, d.len, d.rkey};
  const size_t pieces = d.len == 0 ? 0 : (d.len + chunk - 1) / chunk;
  std::vector<mempool::Buffer> slabs(pieces);
  // Up to `window` READs in flight: the first of each group on this
  // coroutine, the others on coroutines of this worker. Blocks are taken a
  // group at a time, so a region that fails early holds little memory.
  window = std::max<size_t>(window, 1);
  std::vector<Status> status(pieces);
  coro::Scheduler* sched = coro::Scheduler::Current();
  for (size_t first = 0; first < pieces; first += window) {
    HRPC_TRY(live());
    const size_t last = std::min(pieces, first + window);
    for (size_t i = first; i < last; ++i) {
      HRPC_ASSIGN_OR_RETURN(slabs[i], pool.Allocate(std::min<size_t>(chunk, d.len - i * chunk)));
    }
    if (ops != nullptr) {
      std::vector<std::function<Status()>> group;
      for (size_t i = first; i < last; ++i) {
        group.push_back([&conn, keep, piece = src.Sub(i * chunk, static_cast<uint32_t>(slabs[i].size())),
                         slab = slabs[i]] { return conn.Read(piece, mempool::IoBuf(slab)); });
      }
      HRPC_TRY(ops->Run(std::move(group), deadline, live));
      continue;
    }
    auto read = [&](size_t i) { status[i] = conn.Read(src.Sub(i * chunk, static_cast<uint32_t>(slabs[i].size())), mempool::IoBuf(slabs[i])); };
    coro::WaitGroup wg;
    if (sched != nullptr && coro::this_coro::InCoroutine()) {
      for (size_t i = first + 1; i < last; ++i) {
        wg.Add(1);
        sched->Spawn([&read, &wg, i] {
          read(i);
          wg.Done();
        }, "hrpc-pull-piece");
      }
      read(first);
      wg.Wait().IgnoreError();
    } else {
      for (size_t i = first; i < last; ++i) read(i);
    }
    for (size_t i = first; i < last; ++i) HRPC_TRY(status[i]);
  }
  mempool::IoBuf out;
  for (auto& b : slabs) out.Append(std::move(b));
  return out;
}

Status CheckBulkCrcOffWorker(const wire::BulkDescriptor& d, const mempool::IoBuf& data) {
  Status crc;
  OffWorker(data.size(), [&] { crc = wire::CheckBulkCrc(d, data); });
  return crc;
}

Result<mempool::IoBuf> PullRegion(transport::Connection& conn, mempool::Pool& pool, const wire::BulkDescriptor& d,
                                  size_t chunk, size_t window, const std::function<Status()>& live, BulkOps* ops,
                                  Clock::time_point deadline, std::shared_ptr<const void> keep) {
  HRPC_ASSIGN_OR_RETURN(mempool::IoBuf out,
                        PullRegionUnchecked(conn, pool, d, chunk, window, live, ops, deadline, std::move(keep)));
  HRPC_TRY(CheckBulkCrcOffWorker(d, out));
  return out;
}

bool HasPullRegions(const wire::Frame& frame) noexcept {
  for (size_t i = 0; i < frame.num_descriptors(); ++i) {
    if (frame.descriptor(i).direction == wire::BulkDirection::kPull) return true;
  }
  return false;
}

Result<mempool::IoBuf> CollectResponseAttachment(const wire::Frame& frame, mempool::IoBuf received,
                                                 const std::vector<mempool::Buffer>& push_room, mempool::IoBuf pulled) {
  mempool::IoBuf att = std::move(received);
  size_t room_index = 0;
  for (size_t i = 0; i < frame.num_descriptors(); ++i) {
    const wire::BulkDescriptor d = frame.descriptor(i);
    if (d.direction != wire::BulkDirection::kPush) continue;
    if (room_index >= push_room.size()) return DataLossError("response names more push regions than offered");
    const mempool::Buffer& room = push_room[room_index++];
    if (d.len > room.size()) return DataLossError("response claims more pushed bytes than the region holds");
    if (d.len == 0) continue;
    mempool::IoBuf got(room.Slice(0, d.len));
    HRPC_TRY(CheckBulkCrcOffWorker(d, got));
    att.Append(std::move(got));
  }
  att.Append(std::move(pulled));
  return att;
}

// --- server -------------------------------------------------------------------

Status ConnBulk::Live(Clock::time_point deadline, const char* what) const {
  if (ctx_.IsCancelled() && !ctx_.DeadlineExpired()) return CancelledError(std::string("call cancelled during bulk ") + what);
  if (Clock::now() >= deadline) return DeadlineExceededError(std::string("deadline expired during bulk ") + what);
  return Status::Ok();
}

Result<mempool::IoBuf> ConnBulk::Pull(const wire::BulkDescriptor& remote, Clock::time_point deadline) {
  // ServerContext::PullBulk checks the CRC.
  return PullRegionUnchecked(conn_, pool_, remote, chunk_, window_, [&] { return Live(deadline, "pull"); }, &ops_,
                             deadline, keep_);
}

Status ConnBulk::Push(const wire::BulkDescriptor& remote, const mempool::IoBuf& data, Clock::time_point deadline) {
  const transport::RemoteDescriptor dst{remote.addr, remote.len, remote.rkey};
  mempool::IoBuf rest = data.Share();
  size_t off = 0;
  while (!rest.empty()) {
    HRPC_TRY(Live(deadline, "push"));
    const size_t n = std::min(chunk_, rest.size());
    std::vector<std::function<Status()>> write;
    write.push_back([&conn = conn_, keep = keep_, piece = std::make_shared<mempool::IoBuf>(rest.CutFront(n)),
                     to = dst.Sub(off, static_cast<uint32_t>(n))] { return conn.Write(*piece, to); });
    HRPC_TRY(ops_.Run(std::move(write), deadline, [&] { return Live(deadline, "push"); }));
    off += n;
  }
  uint32_t crc = 0;
  OffWorker(data.size(), [&] { crc = data.Crc32c(); });
  pushed_[RegionKey(remote)] = {static_cast<uint32_t>(data.size()), crc};
  return Status::Ok();
}

bool ConnBulk::Pushed(const wire::BulkDescriptor& d, uint32_t* len, uint32_t* crc) const {
  auto it = pushed_.find(RegionKey(d));
  if (it == pushed_.end()) return false;
  *len = it->second.first;
  *crc = it->second.second;
  return true;
}

Result<ResponseAttachment> PlaceResponseAttachment(mempool::IoBuf attachment, size_t control, size_t eager_threshold,
                                                   transport::Connection& conn, mempool::Pool& pool,
                                                   std::span<const wire::BulkDescriptor> request_descriptors,
                                                   ServerContext& ctx, const ConnBulk& bulk) {
  ResponseAttachment out;
  size_t room = 0;
  for (const auto& d : request_descriptors) {
    if (d.direction == wire::BulkDirection::kPush) room += d.len;
  }
  out.path = ChooseAttachmentPath(attachment.size(), control, eager_threshold, conn.limits());
  if (out.path != AttachmentPath::kDescriptors || room < attachment.size()) {
    // Echo the push regions with what the handler pushed itself, if anything.
    for (const auto& d : request_descriptors) {
      if (d.direction != wire::BulkDirection::kPush) continue;
      wire::BulkDescriptor e = d;
      e.len = 0;
      e.crc32c = 0;
      uint32_t len = 0, crc = 0;
      if (bulk.Pushed(d, &len, &crc)) {
        e.len = len;
        e.crc32c = crc;
      }
      out.descriptors.push_back(e);
    }
    if (out.path != AttachmentPath::kDescriptors) {
      out.attachment = std::move(attachment);
      return out;
    }
    // Too little room: expose it for the client to READ.
    const size_t echoed = out.descriptors.size();
    if (Status s = ExposeForRead(conn, pool, std::move(attachment), out.for_read); !s.ok()) {
      RevokeAll(conn, out.for_read);
      return s;
    }
    out.descriptors.insert(out.descriptors.end(), out.for_read.descriptors.begin(), out.for_read.descriptors.end());
    if (out.descriptors.size() > wire::kMaxDescriptors) {
      RevokeAll(conn, out.for_read);
      return ResourceExhaustedError("response attachment needs " + std::to_string(out.descriptors.size() - echoed) +
                                    " regions to expose (max " + std::to_string(wire::kMaxDescriptors - echoed) +
                                    "): too fragmented");
    }
    return out;
  }
  for (size_t i = 0; i < request_descriptors.size(); ++i) {
    const wire::BulkDescriptor& d = request_descriptors[i];
    if (d.direction != wire::BulkDirection::kPush) continue;
    const size_t n = std::min<size_t>(d.len, attachment.size());
    mempool::IoBuf piece = attachment.CutFront(n);
    wire::BulkDescriptor e = d;
    e.len = static_cast<uint32_t>(n);
    e.crc32c = 0;
    if (n > 0) {
      HRPC_TRY(ctx.PushBulk(i, piece));
      uint32_t len = 0;
      bulk.Pushed(d, &len, &e.crc32c);  // computed once, by the push
    }
    out.pushed_bytes += n;
    out.descriptors.push_back(e);
  }
  return out;
}

}  // namespace hrpc::internal
