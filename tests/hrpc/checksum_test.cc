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

// A 1 MiB attachment over the loopback transport (one-sided pull and push,
// each region CRC32C-checked): the passes over it run off the worker, the
// bytes arrive intact, and a 64 KiB call stays inline.
TEST(ChecksumOffWorker, PulledAndPushedMegabyteIsCheckedOffTheWorker) {
  auto net = hrpc::transport::LoopbackNetwork::Create();
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {"loop://checksum-test"};
  so.runtime.loopback = net;
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  hrpc::RpcChannelOptions co;
  co.runtime.loopback = net;
  co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto channel = hrpc::RpcChannel::Create((*server)->listen_uris().at(0), co);
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  rpctest::Test::Stub stub(channel->get());
  for (size_t n : {size_t{64} << 10, size_t{1} << 20}) {
    SCOPED_TRACE("size " + std::to_string(n));
    hrpc::mempool::IoBuf payload = rpctest::MakePayload((*channel)->pool(), n, 5);
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
  server->reset();
  channel->reset();
}

}  // namespace
