// CRC32C passes over large bulk regions run on the checksum thread while the
// worker goes on serving; small ones, and callers outside a coroutine, inline.
#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "checksum.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/server_context.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"
#include "hrpc/transport/loopback.h"
#include "rpc_test_util.h"

namespace {

using namespace std::chrono_literals;
using hrpc::internal::kChecksumOffWorkerBytes;
using hrpc::internal::OffWorker;
using hrpc::internal::OffWorkerPasses;

std::unique_ptr<hrpc::coro::Worker> StartWorker() {
  hrpc::coro::WorkerOptions wo;
  wo.sched.name = "crc-test";
  auto w = hrpc::coro::Worker::Start(wo);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return w.ok() ? std::move(*w) : nullptr;
}

TEST(ChecksumOffWorker, LargePassRunsOnAnotherThreadWhileTheWorkerServes) {
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  std::atomic<bool> other_ran{false};
  std::thread::id worker_id, pass_id;
  bool saw_other = false;
  const size_t passes0 = OffWorkerPasses();
  hrpc::coro::Event done;
  worker->Post([&] {
    worker_id = std::this_thread::get_id();
    // Queued behind this coroutine: it runs only if the worker is free while
    // the pass runs.
    worker->Post([&] { other_ran = true; });
    OffWorker(kChecksumOffWorkerBytes, [&] {
      pass_id = std::this_thread::get_id();
      const auto until = std::chrono::steady_clock::now() + 5s;
      while (!other_ran.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
      saw_other = other_ran.load();
    });
    done.Set();
  });
  ASSERT_TRUE(done.WaitFor(10s).ok());
  EXPECT_NE(pass_id, worker_id);
  EXPECT_TRUE(saw_other) << "the worker was held for the whole pass";
  EXPECT_EQ(OffWorkerPasses(), passes0 + 1);
}

TEST(ChecksumOffWorker, SmallPassesAndPlainThreadsRunInline) {
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  const size_t passes0 = OffWorkerPasses();
  std::thread::id worker_id, small_id;
  hrpc::coro::Event done;
  worker->Post([&] {
    worker_id = std::this_thread::get_id();
    OffWorker(kChecksumOffWorkerBytes - 1, [&] { small_id = std::this_thread::get_id(); });
    done.Set();
  });
  ASSERT_TRUE(done.WaitFor(10s).ok());
  EXPECT_EQ(small_id, worker_id);
  std::thread::id plain_id;
  OffWorker(64u << 20, [&] { plain_id = std::this_thread::get_id(); });
  EXPECT_EQ(plain_id, std::this_thread::get_id());
  EXPECT_EQ(OffWorkerPasses(), passes0);
}

// A server and a channel over the loopback transport (one-sided pull and
// push, each region CRC32C-checked).
struct LoopPair {
  std::shared_ptr<hrpc::transport::LoopbackNetwork> net = hrpc::transport::LoopbackNetwork::Create();
  rpctest::TestService service;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;

  explicit LoopPair(const std::string& name) {
    hrpc::ServerOptions so;
    so.listen = {"loop://" + name};
    so.runtime.loopback = net;
    so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
    auto s = hrpc::Server::Create(so);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return;
    server = std::move(*s);
    EXPECT_TRUE(server->RegisterService(&service).ok());
    EXPECT_TRUE(server->Start().ok());
    hrpc::RpcChannelOptions co;
    co.runtime.loopback = net;
    co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
    auto c = hrpc::RpcChannel::Create(server->listen_uris().at(0), co);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (c.ok()) channel = std::move(*c);
  }
  ~LoopPair() {
    server.reset();  // first: its connections close while the client still listens
    channel.reset();
  }
};

// A 1 MiB echo over the loopback transport: the passes over it run off the
// worker, the bytes arrive intact, and a 64 KiB call stays inline.
TEST(ChecksumOffWorker, PulledAndPushedMegabyteIsCheckedOffTheWorker) {
  LoopPair loop("checksum-test");
  ASSERT_NE(loop.channel, nullptr);
  rpctest::Test::Stub stub(loop.channel.get());
  for (size_t n : {size_t{64} << 10, size_t{1} << 20}) {
    SCOPED_TRACE("size " + std::to_string(n));
    hrpc::mempool::IoBuf payload = rpctest::MakePayload(loop.channel->pool(), n, 5);
    const uint32_t crc = payload.Crc32c();
    hrpc::ClientContext ctx;
    ctx.request_attachment() = std::move(payload);
    ctx.set_response_attachment_capacity(n);
    rpctest::Req req;
    req.set_echo_attachment(true);
    rpctest::Resp resp;
    const size_t passes0 = OffWorkerPasses();
    auto s = stub.Call(ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.attachment_crc32c(), crc);
    EXPECT_EQ(ctx.response_attachment().Crc32c(), crc);
    const size_t passes = OffWorkerPasses() - passes0;
    if (n < kChecksumOffWorkerBytes) {
      EXPECT_EQ(passes, 0u);
    } else {
      // The client's CRC of what it exposes, the server's check of what it
      // pulled, the server's CRC of what it pushed, the client's check of that.
      EXPECT_EQ(passes, 4u);
    }
  }
}

// An attachment from memory the transport cannot expose is copied into the
// channel's pool in pieces first; the CRC32C of each piece, taken off the
// worker, is the one the server checks what it pulls against.
TEST(ChecksumOffWorker, CopiedAttachmentPiecesCarryTheirOwnChecksums) {
  LoopPair loop("checksum-copied");
  ASSERT_NE(loop.channel, nullptr);
  auto other = hrpc::mempool::Pool::Create({.arena_bytes = 4 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  const size_t n = (size_t{1} << 20) + 12345;  // more than one piece of the channel pool's largest class
  hrpc::mempool::IoBuf payload = rpctest::MakePayload(**other, n, 9, 768u << 10);
  ASSERT_EQ(payload.size(), n);
  const uint32_t crc = payload.Crc32c();
  hrpc::ClientContext ctx;
  ctx.request_attachment() = std::move(payload);
  rpctest::Req req;
  rpctest::Resp resp;
  const uint64_t copied0 = hrpc::mempool::CopiedBytesTotal();
  const size_t passes0 = OffWorkerPasses();
  rpctest::Test::Stub stub(loop.channel.get());
  auto s = stub.Call(ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(resp.attachment_bytes(), n);
  EXPECT_EQ(resp.attachment_crc32c(), crc);
  EXPECT_GE(hrpc::mempool::CopiedBytesTotal() - copied0, n) << "the attachment was not copied";
  EXPECT_GE(OffWorkerPasses() - passes0, 1u);
}

// A large pulled region whose bytes do not match its CRC32C: the check, run
// off the worker, fails the pull with DATA_LOSS.
class CorruptBulk final : public hrpc::BulkTransfer {
 public:
  explicit CorruptBulk(hrpc::mempool::Pool& pool) : pool_(pool) {}
  hrpc::Result<hrpc::mempool::IoBuf> Pull(const hrpc::wire::BulkDescriptor& d,
                                          std::chrono::steady_clock::time_point) override {
    hrpc::mempool::IoBuf data = rpctest::MakePayload(pool_, d.len, 3);
    if (flip) data.slice(data.num_slices() - 1).data()[0] ^= 1;
    return data;
  }
  hrpc::Status Push(const hrpc::wire::BulkDescriptor&, const hrpc::mempool::IoBuf&,
                    std::chrono::steady_clock::time_point) override {
    return hrpc::Status::Ok();
  }
  bool flip = false;

 private:
  hrpc::mempool::Pool& pool_;
};

TEST(ChecksumOffWorker, LargeRegionThatFailsItsCheckOffTheWorkerIsDataLoss) {
  auto pool = hrpc::mempool::Pool::Create({.arena_bytes = 8 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  CorruptBulk bulk(**pool);
  const uint32_t len = 1u << 20;
  const uint32_t good_crc = rpctest::MakePayload(**pool, len, 3).Crc32c();
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  for (bool flip : {false, true}) {
    SCOPED_TRACE(flip ? "corrupted" : "intact");
    bulk.flip = flip;
    hrpc::ServerContext ctx;
    ctx.set_bulk({{0x1000, len, 7, good_crc, hrpc::wire::BulkDirection::kPull}}, &bulk);
    const size_t passes0 = OffWorkerPasses();
    hrpc::Status got;
    hrpc::coro::Event done;
    worker->Post([&] {
      got = ctx.PullBulk(0).status();
      done.Set();
    });
    ASSERT_TRUE(done.WaitFor(10s).ok());
    EXPECT_EQ(OffWorkerPasses(), passes0 + 1);
    if (flip) {
      EXPECT_EQ(got.code(), hrpc::StatusCode::kDataLoss) << got.ToString();
    } else {
      EXPECT_TRUE(got.ok()) << got.ToString();
    }
  }
}

// Regions of one request pulled one after another, each with its own payload
// (seed = its index), taking `pull_ms` per pull. Records how many checksum
// passes had finished when each pull began.
class RegionsBulk final : public hrpc::BulkTransfer {
 public:
  explicit RegionsBulk(hrpc::mempool::Pool& pool) : pool_(pool) {}
  hrpc::Result<hrpc::mempool::IoBuf> Pull(const hrpc::wire::BulkDescriptor& d,
                                          std::chrono::steady_clock::time_point) override {
    const uint32_t index = d.rkey;
    passes_at_pull.push_back(OffWorkerPasses());
    hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(pull_ms));
    if (index == fail) return hrpc::UnavailableError("peer went away during the pull");
    if (index == cancel_after && ctx != nullptr) ctx->MarkCancelled();
    hrpc::mempool::IoBuf data = rpctest::MakePayload(pool_, d.len, index);
    if (index == corrupt) data.slice(0).data()[0] ^= 1;
    return data;
  }
  hrpc::Status Push(const hrpc::wire::BulkDescriptor&, const hrpc::mempool::IoBuf&,
                    std::chrono::steady_clock::time_point) override {
    return hrpc::Status::Ok();
  }
  int pull_ms = 20;
  uint32_t corrupt = UINT32_MAX;
  uint32_t fail = UINT32_MAX;          // this region's pull fails
  uint32_t cancel_after = UINT32_MAX;  // the client cancels once this region has arrived
  hrpc::ServerContext* ctx = nullptr;
  std::vector<size_t> passes_at_pull;

 private:
  hrpc::mempool::Pool& pool_;
};

constexpr uint32_t kRegionBytes = 1u << 20;
constexpr uint32_t kRegions = 3;

// kRegions pull descriptors whose regions RegionsBulk fills (region i: seed i).
std::vector<hrpc::wire::BulkDescriptor> RegionDescriptors(hrpc::mempool::Pool& pool) {
  std::vector<hrpc::wire::BulkDescriptor> descs;
  for (uint32_t i = 0; i < kRegions; ++i) {
    descs.push_back({0x1000 + i * uint64_t{kRegionBytes}, kRegionBytes, i,
                     rpctest::MakePayload(pool, kRegionBytes, i).Crc32c(), hrpc::wire::BulkDirection::kPull});
  }
  return descs;
}

// ctx.PullAllBulk() in a coroutine of `worker`.
hrpc::Result<size_t> PullAllOn(hrpc::coro::Worker& worker, hrpc::ServerContext& ctx) {
  hrpc::Result<size_t> got = hrpc::InternalError("not run");
  hrpc::coro::Event done;
  worker.Post([&] {
    got = ctx.PullAllBulk();
    done.Set();
  });
  if (!done.WaitFor(10s).ok()) return hrpc::DeadlineExceededError("PullAllBulk did not return in 10 s");
  return got;
}

// The runtime's automatic pull of a request with several regions: a region's
// check runs while the next one is pulled; a corrupted region still fails the
// call with DATA_LOSS, and an intact request arrives whole, in order.
TEST(ChecksumOffWorker, EachRegionIsCheckedWhileTheNextIsPulled) {
  auto pool = hrpc::mempool::Pool::Create({.arena_bytes = 16 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  const std::vector<hrpc::wire::BulkDescriptor> descs = RegionDescriptors(**pool);
  uint32_t whole_crc = 0;
  {
    hrpc::mempool::IoBuf whole;
    for (uint32_t i = 0; i < kRegions; ++i) whole.Append(rpctest::MakePayload(**pool, kRegionBytes, i));
    whole_crc = whole.Crc32c();
  }
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  for (uint32_t corrupt : {UINT32_MAX, 1u}) {
    SCOPED_TRACE(corrupt == 1 ? "region 1 corrupted" : "intact");
    RegionsBulk bulk(**pool);
    bulk.corrupt = corrupt;
    hrpc::ServerContext ctx;
    ctx.set_bulk(descs, &bulk);
    const size_t passes0 = OffWorkerPasses();
    hrpc::Result<size_t> got = PullAllOn(*worker, ctx);
    ASSERT_NE(got.status().code(), hrpc::StatusCode::kDeadlineExceeded) << got.status().ToString();
    EXPECT_EQ(OffWorkerPasses(), passes0 + kRegions) << "one check per region, each off the worker";
    ASSERT_EQ(bulk.passes_at_pull.size(), kRegions);
    // Region 1's pull began before region 0's check had finished: they overlap.
    EXPECT_EQ(bulk.passes_at_pull[1], passes0);
    if (corrupt == 1) {
      EXPECT_EQ(got.status().code(), hrpc::StatusCode::kDataLoss) << got.status().ToString();
    } else {
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, size_t{kRegions} * kRegionBytes);
      EXPECT_EQ(ctx.request_attachment().size(), size_t{kRegions} * kRegionBytes);
      EXPECT_EQ(ctx.request_attachment().Crc32c(), whole_crc);
    }
  }
}

// A pull that fails part-way, or a call cancelled part-way, ends the
// automatic pull with that status, without pulling the regions after it;
// the checks already started are waited for (they hold the regions).
TEST(ChecksumOffWorker, APullThatFailsOrIsCancelledPartWayStopsThere) {
  auto pool = hrpc::mempool::Pool::Create({.arena_bytes = 16 << 20, .max_class_bytes = 1 << 20, .prefault = false});
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  const std::vector<hrpc::wire::BulkDescriptor> descs = RegionDescriptors(**pool);
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  for (bool cancel : {false, true}) {
    SCOPED_TRACE(cancel ? "cancelled after region 0" : "region 1's pull fails");
    RegionsBulk bulk(**pool);
    hrpc::ServerContext ctx;
    if (cancel) {
      bulk.cancel_after = 0;
      bulk.ctx = &ctx;
    } else {
      bulk.fail = 1;
    }
    ctx.set_bulk(descs, &bulk);
    const size_t passes0 = OffWorkerPasses();
    hrpc::Result<size_t> got = PullAllOn(*worker, ctx);
    EXPECT_EQ(got.status().code(), cancel ? hrpc::StatusCode::kCancelled : hrpc::StatusCode::kUnavailable)
        << got.status().ToString();
    EXPECT_EQ(bulk.passes_at_pull.size(), cancel ? 1u : 2u) << "no pull after the one that ended it";
    EXPECT_EQ(OffWorkerPasses(), passes0 + 1) << "region 0's check ran and was waited for";
  }
}

}  // namespace
