// Streaming RPCs end to end (Server + RpcChannel over loop:// and
// tcp://127.0.0.1): every stream kind, attachments per message, flow control,
// cancellation from either side, deadlines, a server process killed
// mid-stream, many streams on one connection; and the generated mock.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/loopback.h"
#include "checksum.h"
#include "stream_test.hrpc.h"
#include "stream_test.hrpc.mock.h"
#include "../mempool/pool_test_util.h"
#include "once_poller.h"
#include "raw_peer_util.h"
#include "stream_test_util.h"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::ServerContext;
using hrpc::Status;
using hrpc::StatusCode;
using hrpc::mempool::IoBuf;
using streamtest::Chunk;
using streamtest::Describe;
using streamtest::Matches;
using streamtest::Payload;
using streamtest::Range;
using streamtest::StreamerImpl;
using streamtest::Summary;
using Clock = std::chrono::steady_clock;
using hrpc::mempool::testing::BytesInUse;

struct Env {
  std::shared_ptr<hrpc::transport::LoopbackNetwork> net = hrpc::transport::LoopbackNetwork::Create();
  StreamerImpl service;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;

  void Start(const std::string& kind, hrpc::ServerOptions so = {}, hrpc::RpcChannelOptions co = {}) {
    static std::atomic<int> seq{0};
    so.listen = {kind == "loop" ? "loop://stream-test-" + std::to_string(seq.fetch_add(1)) : "tcp://127.0.0.1:0"};
    so.runtime.loopback = net;
    so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
    auto s = hrpc::Server::Create(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(*s);
    ASSERT_TRUE(server->RegisterService(&service).ok());
    ASSERT_TRUE(server->Start().ok());
    std::string uri = server->listen_uris().at(0);
    if (kind == "tcp") uri = "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1);
    co.runtime.loopback = net;
    auto c = hrpc::RpcChannel::Create(uri, co);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channel = std::move(*c);
  }
  void OnWorker(const std::function<void()>& fn) { streamtest::OnWorker(*channel, fn); }
  ~Env() {
    server.reset();
    channel.reset();
  }
};

template <class Pred>
bool Eventually(Pred pred, std::chrono::milliseconds within = 5000ms) {
  const auto until = Clock::now() + within;
  while (!pred()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

class StreamTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StreamTest, EveryKindWith0And1And10000Messages) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{10000}}) {
    SCOPED_TRACE("messages " + std::to_string(n));
    env.OnWorker([&] {
      {  // client streaming
        ClientContext ctx;
        Summary summary;
        auto writer = stub.Upload(ctx, &summary);
        for (uint64_t i = 0; i < n; ++i) {
          Chunk c;
          c.set_seq(i);
          ASSERT_TRUE(writer->Write(c)) << i;
        }
        ASSERT_TRUE(writer->WritesDone());
        Status s = writer->Finish();
        ASSERT_TRUE(s.ok()) << s.ToString();
        EXPECT_EQ(summary.messages(), n);
      }
      {  // server streaming
        ClientContext ctx;
        Range range;
        range.set_count(n);
        auto reader = stub.Download(ctx, range);
        Chunk c;
        uint64_t got = 0;
        while (reader->Read(&c)) {
          EXPECT_EQ(c.seq(), got);
          ++got;
        }
        Status s = reader->Finish();
        ASSERT_TRUE(s.ok()) << s.ToString();
        EXPECT_EQ(got, n);
      }
      {  // bidirectional: a writer coroutine and this one reading
        ClientContext ctx;
        auto stream = stub.Chat(ctx);
        hrpc::coro::WaitGroup wg;
        wg.Add(1);
        hrpc::coro::Scheduler::Current()->Spawn([&] {
          for (uint64_t i = 0; i < n; ++i) {
            Chunk c;
            c.set_seq(i);
            if (!stream->Write(c)) break;
          }
          stream->WritesDone();
          wg.Done();
        });
        Chunk c;
        uint64_t got = 0;
        while (stream->Read(&c)) {
          EXPECT_EQ(c.seq(), got);
          EXPECT_EQ(c.text(), "ok");
          ++got;
        }
        wg.Wait().IgnoreError();
        Status s = stream->Finish();
        ASSERT_TRUE(s.ok()) << s.ToString();
        EXPECT_EQ(got, n);
      }
    });
  }
  // Each stream counts once in the stats, on both sides.
  uint64_t calls = 0;
  for (const auto& m : env.channel->Stats()) calls += m.count;
  EXPECT_EQ(calls, 9u);
}

// Attachments of 0 B .. 16 MiB on every message, each way, CRC-checked; on
// TCP the aligned ones are not copied by the CPU.
TEST_P(StreamTest, AttachmentsOfEverySizeEachWay) {
  Env env;
  env.Start(GetParam());
  ASSERT_TRUE(env.channel->Connect().ok());
  streamtest::Streamer::Stub stub(env.channel.get());
  const std::vector<size_t> sizes = {0, 1, 4096, 16 * 1024 + 1, 64 * 1024, 1 << 20, 16 << 20};
  env.OnWorker([&] {
    hrpc::mempool::Pool& pool = env.channel->pool();
    ClientContext ctx;
    auto chat = stub.Chat(ctx);
    for (size_t i = 0; i < sizes.size(); ++i) {
      const size_t n = sizes[i];
      SCOPED_TRACE("size " + std::to_string(n));
      IoBuf att = Payload(pool, n, static_cast<uint32_t>(n + 7));
      ASSERT_EQ(att.size(), n);
      const Chunk c = Describe(i, att);
      const uint64_t copied0 = hrpc::mempool::CopiedBytesTotal();
      ASSERT_TRUE(chat->Write(c, std::move(att)));
      Chunk back;
      IoBuf got;
      ASSERT_TRUE(chat->Read(&back, &got));
      const uint64_t copied = hrpc::mempool::CopiedBytesTotal() - copied0;
      EXPECT_EQ(back.text(), "ok") << "the server saw another attachment than was sent";
      EXPECT_TRUE(Matches(c, got)) << got.size();
      if (GetParam() == "tcp" && n % 4096 == 0) {
        EXPECT_EQ(copied, 0u) << "payload bytes copied by the CPU";
      }
    }
    ASSERT_TRUE(chat->WritesDone());
    Status s = chat->Finish();
    EXPECT_TRUE(s.ok()) << s.ToString();

    // Client -> server only, and server -> client only.
    ClientContext uctx;
    Summary summary;
    auto up = stub.Upload(uctx, &summary);
    uint64_t total = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      IoBuf att = Payload(pool, sizes[i], static_cast<uint32_t>(i));
      total += att.size();
      const Chunk c = Describe(i, att);
      ASSERT_TRUE(up->Write(c, std::move(att)));
    }
    s = up->Finish();
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(summary.messages(), sizes.size());
    EXPECT_EQ(summary.attachment_bytes(), total);
    EXPECT_EQ(summary.bad_crcs(), 0u);
    for (size_t n : sizes) {
      ClientContext dctx;
      Range range;
      range.set_count(2);
      range.set_attachment_bytes(n);
      auto down = stub.Download(dctx, range);
      Chunk c;
      IoBuf got;
      int messages = 0;
      while (down->Read(&c, &got)) {
        EXPECT_TRUE(Matches(c, got)) << "size " << n;
        ++messages;
      }
      s = down->Finish();
      EXPECT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(messages, 2);
    }
  });
}

// A reader that stops reading: the writer blocks once the window is full,
// the server holds no more than the window, and a unary call on the same
// connection still completes.
TEST_P(StreamTest, SlowReaderBlocksTheWriterAtTheWindow) {
  Env env;
  hrpc::ServerOptions so;
  so.stream_window = {16, 4u << 20};
  env.Start(GetParam(), so);
  ASSERT_TRUE(env.channel->Connect().ok());
  env.service.hold_uploads = true;
  streamtest::Streamer::Stub stub(env.channel.get());
  const size_t server_before = BytesInUse(env.server->pool(0));
  const size_t client_before = BytesInUse(env.channel->pool());
  constexpr int kMessages = 40;
  constexpr size_t kBytes = 1 << 20;
  std::atomic<int> written{0};
  ClientContext ctx;
  Summary summary;
  hrpc::coro::Event upload_done;
  Status upload_status;
  env.channel->scheduler(0).Post([&] {
    {
      auto up = stub.Upload(ctx, &summary);
      for (int i = 0; i < kMessages; ++i) {
        IoBuf att = Payload(env.channel->pool(), kBytes, static_cast<uint32_t>(i));
        const Chunk c = Describe(static_cast<uint64_t>(i), att);
        if (!up->Write(c, std::move(att))) break;
        written.fetch_add(1);
      }
      upload_status = up->Finish();
    }  // the stream is gone before the test goes on to tear the channel down
    upload_done.Set();
  });
  // The window is 4 MiB: four 1 MiB messages are in flight, the fifth waits.
  ASSERT_TRUE(Eventually([&] { return written.load() >= 4; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(written.load(), 4) << "the writer went beyond the server's window";
  const size_t server_growth = BytesInUse(env.server->pool(0)) - std::min(server_before, BytesInUse(env.server->pool(0)));
  const size_t client_growth = BytesInUse(env.channel->pool()) - std::min(client_before, BytesInUse(env.channel->pool()));
  // The window's messages wait in the server's pool (TCP: streamed there) or
  // exposed in the client's (loopback, RDMA: the server READs them when it
  // reads); beyond them only the message being written.
  EXPECT_LE(server_growth + client_growth, (4u << 20) + 2 * kBytes + (1u << 20))
      << "the pools grew beyond the window: server " << server_growth << ", client " << client_growth;
  {
    streamtest::Streamer::Stub unary(env.channel.get());
    ClientContext pctx;
    pctx.set_timeout(5s);
    Chunk req, resp;
    req.set_text("still moving");
    Status s = unary.Ping(pctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(resp.text(), "still moving");
  }
  env.service.release_uploads.Set();
  ASSERT_TRUE(upload_done.WaitFor(30s).ok());
  EXPECT_TRUE(upload_status.ok()) << upload_status.ToString();
  EXPECT_EQ(written.load(), kMessages);
  EXPECT_EQ(summary.messages(), static_cast<uint64_t>(kMessages));
  EXPECT_EQ(summary.bad_crcs(), 0u);
}

TEST_P(StreamTest, ClientCancelsMidStream) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  env.OnWorker([&] {
    ClientContext ctx;
    Range range;
    range.set_forever(true);
    range.set_interval_us(500);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(reader->Read(&c));
    ctx.Cancel();
    int more = 0;
    while (reader->Read(&c)) ++more;
    EXPECT_LT(more, 1000);
    EXPECT_EQ(reader->Finish().code(), StatusCode::kCancelled);
  });
  // The handler's next Write fails and it returns.
  EXPECT_TRUE(Eventually([&] { return env.service.write_failures.load() == 1; }));
  EXPECT_TRUE(Eventually([&] { return env.service.handlers_done.load() == 1; }));
}

// A Write whose attachment is being exposed (its CRC runs off the worker) when
// the stream ends and Finish() runs fails, and gives the attachment back: it
// does not keep it exposed on the shared connection.
TEST_P(StreamTest, AWriteThatFinishOvertookGivesItsAttachmentBack) {
  if (GetParam() != "loop") GTEST_SKIP() << "tcp streams attachments behind the frame: nothing is exposed";
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  hrpc::mempool::Pool& pool = env.channel->pool();
  ASSERT_TRUE(env.channel->Connect().ok());
  const size_t base = hrpc::mempool::testing::WaitForBytesInUseAtMost(pool, 0, 300ms);
  bool wrote = true;
  Status finished;
  bool in_write = false;
  env.OnWorker([&] {
    ClientContext ctx;
    ctx.set_timeout(300ms);
    auto stream = stub.Chat(ctx);
    // The checksum thread is kept busy by another pass, so the writer's CRC
    // waits behind it, and the writer with it, until the stream has ended.
    std::atomic<bool> release_checksums{false};
    hrpc::coro::LocalEvent blocker_done, writer_done;
    hrpc::coro::Scheduler::Current()->Spawn(
        [&] {
          hrpc::internal::OffWorker(hrpc::internal::kChecksumOffWorkerBytes, [&] {
            while (!release_checksums.load()) std::this_thread::sleep_for(1ms);
          });
          blocker_done.Set();
        },
        "checksum-blocker");
    hrpc::coro::Scheduler::Current()->Spawn(
        [&] {
          IoBuf att = Payload(pool, 1u << 20, 1);  // >= 256 KiB: its CRC runs off the worker
          Chunk c = Describe(0, att);
          in_write = true;
          wrote = stream->Write(c, std::move(att));
          in_write = false;
          writer_done.Set();
        },
        "writer");
    hrpc::coro::this_coro::Yield();  // both run until they wait for the checksum thread
    EXPECT_TRUE(in_write) << "the writer did not wait for its CRC";
    // Holding the worker past the deadline: Finish() ends the stream (the
    // deadline) and releases its exposures while the writer still waits.
    std::this_thread::sleep_for(400ms);
    finished = stream->Finish();
    release_checksums.store(true);
    blocker_done.Wait().IgnoreError();
    writer_done.Wait().IgnoreError();
  });
  ASSERT_FALSE(in_write);
  EXPECT_EQ(finished.code(), StatusCode::kDeadlineExceeded) << finished.ToString();
  EXPECT_FALSE(wrote) << "a Write that ended after Finish() reported success";
  // The channel (and its connection) lives on: nothing of the stream stays in its pool.
  const size_t after = hrpc::mempool::testing::WaitForBytesInUseAtMost(pool, base, 2s);
  EXPECT_LE(after, base) << "the attachment stayed exposed after the stream ended";
}

TEST_P(StreamTest, ServerEndsTheStreamMidway) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  env.OnWorker([&] {
    // Messages sent before the handler failed are still read, attachments
    // included (on loop and RDMA they wait exposed in the server's memory
    // until the client has read them), then the handler's status.
    ClientContext ctx;
    Range range;
    range.set_count(100);
    range.set_fail_after(5);
    range.set_attachment_bytes(64 * 1024);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    IoBuf att;
    int got = 0, bad = 0;
    while (reader->Read(&c, &att)) {
      ++got;
      if (!Matches(c, att)) ++bad;
    }
    EXPECT_EQ(got, 5);
    EXPECT_EQ(bad, 0);
    Status s = reader->Finish();
    EXPECT_EQ(s.code(), StatusCode::kAborted);
    EXPECT_EQ(s.message(), "gave up after 5 messages");

    // A client still writing learns it from Write(), then Finish().
    ClientContext bctx;
    auto chat = stub.Chat(bctx);
    bctx.Cancel();
    Chunk m;
    EXPECT_FALSE(chat->Write(m) && chat->Write(m) && chat->Read(&m));
    EXPECT_EQ(chat->Finish().code(), StatusCode::kCancelled);
  });
}

// A server shutting down ends its open streams with a close that says so:
// the client reads UNAVAILABLE "server shutting down", not a bare lost
// connection, and the handler's own status does not hide it.
TEST_P(StreamTest, AServerShuttingDownEndsItsStreamsWithAClose) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  std::thread shutdown;
  env.OnWorker([&] {
    ClientContext ctx;
    auto chat = stub.Chat(ctx);
    Chunk m, got;
    IoBuf att;
    ASSERT_TRUE(chat->Write(m));
    ASSERT_TRUE(chat->Read(&got, &att));  // the handler runs
    shutdown = std::thread([&] { env.server->Shutdown(); });
    EXPECT_FALSE(chat->Read(&got, &att));
    Status s = chat->Finish();
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_NE(s.message().find("server shutting down"), std::string::npos) << s.ToString();
  });
  shutdown.join();
  EXPECT_EQ(env.service.handlers_done.load(), 1);
}

// A stream opened while shutdown waits for a handler is refused without
// running: its close says UNAVAILABLE "server shutting down".
TEST_P(StreamTest, AStreamOpenedDuringShutdownIsRefusedUnrun) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  std::thread shutdown;
  env.OnWorker([&] {
    // A handler that sleeps 1.5 s after its first message, not looking at
    // the cancel: shutdown waits for it.
    ClientContext slow_ctx;
    Range range;
    range.set_count(2);
    range.set_interval_us(1'500'000);
    auto slow = stub.Download(slow_ctx, range);
    Chunk c;
    IoBuf att;
    ASSERT_TRUE(slow->Read(&c, &att));
    shutdown = std::thread([&] { env.server->Shutdown(); });
    // Shutdown has begun once a unary call is refused.
    Chunk pong;
    for (int i = 0; i < 5000; ++i) {
      ClientContext pctx;
      if (stub.Ping(pctx, Chunk(), &pong).code() == StatusCode::kUnavailable) break;
      hrpc::coro::this_coro::SleepFor(1ms);
    }
    ClientContext ctx;
    auto chat = stub.Chat(ctx);
    Chunk m;
    chat->Write(m);  // may fail once the close is in
    EXPECT_FALSE(chat->Read(&m, &att));
    Status s = chat->Finish();
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_EQ(s.message(), "server shutting down") << s.ToString();
    EXPECT_EQ(env.service.handlers_done.load(), 0) << "a stream opened during shutdown ran its handler";
    slow_ctx.Cancel();
  });
  shutdown.join();
}

// What a Download handler sent before shutdown stopped it is still read whole,
// then the close. On loop the 64 KiB attachments are read while the server
// waits, from its memory, which stays exposed until then. On TCP they are
// read once Shutdown() has returned, from what arrived (what the server had
// queued went out before its connections closed); the client's window
// updates can no longer go out.
TEST_P(StreamTest, MessagesSentBeforeShutdownAreStillRead) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  std::thread shutdown;
  std::atomic<bool> shut{false};  // set by the shutdown thread, which may outlive the block below
  env.OnWorker([&] {
    ClientContext ctx;
    Range range;
    range.set_forever(true);
    range.set_attachment_bytes(64 * 1024);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    IoBuf att;
    ASSERT_TRUE(reader->Read(&c, &att));
    const auto until = Clock::now() + 5s;
    while (env.service.downloads_written.load() < static_cast<int>(hrpc::wire::kInitialStreamWindowMessages) &&
           Clock::now() < until) {
      hrpc::coro::this_coro::SleepFor(1ms);
    }
    shutdown = std::thread([&] {
      env.server->Shutdown();
      shut.store(true);
    });
    if (GetParam() == "loop") {
      // Read while the server waits for it, its handler over.
      while (env.service.handlers_done.load() == 0 && Clock::now() < until) hrpc::coro::this_coro::SleepFor(1ms);
    } else {
      // Read once the server is gone (this worker keeps receiving meanwhile).
      while (!shut.load() && Clock::now() < until) hrpc::coro::this_coro::SleepFor(1ms);
    }
    int got = 1, bad = Matches(c, att) ? 0 : 1;
    while (reader->Read(&c, &att)) {
      ++got;
      if (!Matches(c, att)) ++bad;
    }
    EXPECT_GE(got, env.service.downloads_written.load());
    EXPECT_LE(got, env.service.downloads_written.load() + 1);
    EXPECT_EQ(bad, 0);
    Status s = reader->Finish();
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_EQ(s.message(), "server shutting down") << s.ToString();
  });
  shutdown.join();
}

// A reader destroyed without Finish() after the server's close, with messages
// it did not read: the server hears of it and lets go of what it exposed for
// them (on loop; TCP carries them in the stream) at once, not after
// release_timeout.
TEST_P(StreamTest, AStreamDestroyedAfterTheServersCloseReleasesWhatItDidNotRead) {
  Env env;
  hrpc::ServerOptions so;
  so.release_timeout = 20s;  // what the server would otherwise hold them for
  env.Start(GetParam(), so);
  streamtest::Streamer::Stub stub(env.channel.get());
  env.OnWorker([&] {
    ClientContext ctx;
    Range range;
    range.set_count(3);
    range.set_attachment_bytes(64 * 1024);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    IoBuf att;
    ASSERT_TRUE(reader->Read(&c, &att));
    EXPECT_TRUE(Matches(c, att));
    const auto until = Clock::now() + 5s;
    while (env.service.handlers_done.load() == 0 && Clock::now() < until) hrpc::coro::this_coro::SleepFor(1ms);
    ASSERT_EQ(env.service.handlers_done.load(), 1);
    hrpc::coro::this_coro::SleepFor(100ms);  // the server's close arrives
    reader.reset();
  });
  auto ended = [&] {
    uint64_t n = 0;
    for (const auto& m : env.server->Stats()) {
      if (m.method.find("Download") != std::string::npos) n += m.count;
    }
    return n;
  };
  const auto t0 = Clock::now();
  while (ended() == 0 && Clock::now() - t0 < 10s) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(ended(), 1u);
  EXPECT_LT(Clock::now() - t0, 5s) << "the server held the unread messages' attachments for release_timeout";
}

// Finish() in a poller of the stream's worker (outside any coroutine) cannot
// wait for the server there: it says so (FAILED_PRECONDITION), and the
// stream still ends on its worker, the server's handler with it.
TEST_P(StreamTest, FinishOnItsWorkerOutsideACoroutineIsRefusedAndStillEndsTheStream) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  ClientContext ctx;
  decltype(stub.Chat(ctx)) chat;
  env.OnWorker([&] {
    chat = stub.Chat(ctx);
    Chunk c;
    c.set_text("hello");
    ASSERT_TRUE(chat->Write(c, IoBuf()));
    IoBuf att;
    ASSERT_TRUE(chat->Read(&c, &att));
  });
  ASSERT_TRUE(chat);
  rpctest::OncePoller poller;
  std::atomic<bool> done{false};
  hrpc::Status finished;
  poller.once = [&] {
    finished = chat->Finish();
    done.store(true);
  };
  hrpc::coro::Scheduler& sched = env.channel->scheduler(0);
  sched.Post([&] { hrpc::coro::Scheduler::Current()->AddPoller(&poller); });
  ASSERT_TRUE(Eventually([&] { return done.load(); }));
  env.OnWorker([&] {
    hrpc::coro::Scheduler::Current()->RemovePoller(&poller);
    chat.reset();
  });
  EXPECT_EQ(finished.code(), StatusCode::kFailedPrecondition) << finished.ToString();
  EXPECT_TRUE(Eventually([&] { return env.service.handlers_done.load() == 1; }, 3000ms))
      << "the server's handler did not end";
}

// A handler that returns while the client is blocked in Write() (its window
// full: the handler reads no more) ends the client's Write at once; the
// client then reads what the handler wrote, and the handler's status.
TEST_P(StreamTest, AHandlerThatReturnsEarlyEndsTheClientsWriteAndItsMessagesAreStillRead) {
  Env env;
  env.service.chat_reply_once = true;
  hrpc::ServerOptions so;
  so.release_timeout = 20s;  // what the client would otherwise wait for
  env.Start(GetParam(), so);
  streamtest::Streamer::Stub stub(env.channel.get());
  hrpc::mempool::Pool& pool = env.channel->pool();
  env.OnWorker([&] {
    ClientContext ctx;
    auto chat = stub.Chat(ctx);
    const auto t0 = Clock::now();
    int written = 0;
    for (; written < 1000; ++written) {
      IoBuf att = Payload(pool, 64 * 1024, static_cast<uint32_t>(written));
      const Chunk c = Describe(written, att);
      if (!chat->Write(c, std::move(att))) break;
    }
    const auto took = Clock::now() - t0;
    EXPECT_LT(written, 1000);
    EXPECT_LT(took, 5s) << "Write() waited for the server's release_timeout";
    Chunk c;
    IoBuf att;
    ASSERT_TRUE(chat->Read(&c, &att)) << "the handler's reply was lost";
    EXPECT_EQ(c.seq(), 0u);
    EXPECT_TRUE(Matches(c, att));
    EXPECT_EQ(c.text(), "ok");
    EXPECT_FALSE(chat->Read(&c, &att));
    Status s = chat->Finish();
    EXPECT_TRUE(s.ok()) << s.ToString();
  });
}

TEST_P(StreamTest, DeadlineCoversTheWholeStream) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  env.OnWorker([&] {
    const auto t0 = Clock::now();  // before the deadline is set from the clock
    ClientContext ctx;
    ctx.set_timeout(1s);
    Range range;
    range.set_forever(true);
    range.set_interval_us(20000);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    int got = 0;
    while (reader->Read(&c)) ++got;
    const auto took = Clock::now() - t0;
    EXPECT_GT(got, 3);
    EXPECT_GE(took, 980ms);
    EXPECT_LT(took, 5s);
    EXPECT_EQ(reader->Finish().code(), StatusCode::kDeadlineExceeded);
  });
  EXPECT_TRUE(Eventually([&] { return env.service.handlers_done.load() == 1; }));
}

TEST_P(StreamTest, ThousandConcurrentStreamsOnOneConnection) {
  Env env;
  env.Start(GetParam());
  streamtest::Streamer::Stub stub(env.channel.get());
  constexpr int kStreams = 1000;
  std::atomic<int> ok{0};
  env.OnWorker([&] {
    hrpc::coro::WaitGroup wg;
    for (int i = 0; i < kStreams; ++i) {
      wg.Add(1);
      hrpc::coro::Scheduler::Current()->Spawn([&, i] {
        ClientContext ctx;
        auto chat = stub.Chat(ctx);
        bool good = true;
        for (int k = 0; k < 3 && good; ++k) {
          Chunk c;
          c.set_seq(static_cast<uint64_t>(i * 10 + k));
          Chunk back;
          good = chat->Write(c) && chat->Read(&back) && back.seq() == c.seq();
        }
        good = good && chat->WritesDone();
        Chunk extra;
        good = good && !chat->Read(&extra) && chat->Finish().ok();
        if (good) ok.fetch_add(1);
        wg.Done();
      });
    }
    wg.Wait().IgnoreError();
  });
  EXPECT_EQ(ok.load(), kStreams);
  EXPECT_EQ(env.server->num_connections(), 1u);
}

// Methods called as the other kind get UNIMPLEMENTED naming them.
TEST_P(StreamTest, StreamingMethodCalledAsUnary) {
  Env env;
  env.Start(GetParam());
  ClientContext ctx;
  std::string resp;
  const auto& m = streamtest::Streamer::kMethods[1];
  Status s = env.channel->CallRaw(m.service_id, m.method_id, m.full_name, ctx, "", &resp);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("is a streaming method"), std::string::npos) << s.ToString();
  ClientContext sctx;
  auto stream = env.channel->OpenStream(streamtest::Streamer::kMethods[3], sctx);
  Chunk c;
  stream->Write(c, {});
  EXPECT_FALSE(stream->Read(&c, nullptr));
  Status f = stream->Finish();
  EXPECT_EQ(f.code(), StatusCode::kUnimplemented);
  EXPECT_NE(f.message().find("is a unary method"), std::string::npos) << f.ToString();
}

INSTANTIATE_TEST_SUITE_P(Transports, StreamTest, ::testing::Values("loop", "tcp"),
                         [](const auto& param_info) { return param_info.param; });

// --- a server in another process, killed mid-stream -------------------------

// Run by the test below in a child process: serves Streamer on TCP, prints
// the port, and serves until killed.
TEST(StreamServerProcess, DISABLED_ServeUntilKilled) {
  StreamerImpl service;
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE((*server)->RegisterService(&service).ok());
  ASSERT_TRUE((*server)->Start().ok());
  const std::string uri = (*server)->listen_uris().at(0);
  std::printf("PORT %s\n", uri.substr(uri.rfind(':') + 1).c_str());
  std::fflush(stdout);
  for (;;) std::this_thread::sleep_for(1s);
}

TEST(StreamProcessTest, ServerKilledMidStreamIsUnavailable) {
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=StreamServerProcess.DISABLED_ServeUntilKilled";
  std::string disabled = "--gtest_also_run_disabled_tests";
  char* argv[] = {self.data(), filter.data(), disabled.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  FILE* in = ::fdopen(out[0], "r");
  char line[256];
  std::string port;
  while (std::fgets(line, sizeof line, in) != nullptr) {
    if (std::string(line).rfind("PORT ", 0) == 0) {
      port = std::string(line + 5);
      port.erase(port.find_last_not_of("\r\n") + 1);
      break;
    }
  }
  ASSERT_FALSE(port.empty()) << "the server process printed no port";
  hrpc::RpcChannelOptions co;
  co.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto channel = hrpc::RpcChannel::Create("tcp://127.0.0.1:" + port, co);
  ASSERT_TRUE(channel.ok());
  streamtest::Streamer::Stub stub(channel->get());
  ClientContext ctx;
  ctx.set_timeout(30s);
  Range range;
  range.set_forever(true);
  range.set_interval_us(1000);
  auto reader = stub.Download(ctx, range);
  Chunk c;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(reader->Read(&c)) << i;
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  const auto t0 = Clock::now();
  while (reader->Read(&c)) {
  }
  EXPECT_LT(Clock::now() - t0, 10s);
  Status s = reader->Finish();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  std::fclose(in);
}

// --- the generated mock -------------------------------------------------------

// A canned stream for a mocked stub: Read() hands out `messages`, Write()
// records.
class CannedStream final : public hrpc::ClientStreamBase {
 public:
  explicit CannedStream(std::vector<Chunk> messages, std::vector<Chunk>* written = nullptr)
      : messages_(std::move(messages)), written_(written) {}
  bool Write(const google::protobuf::MessageLite& m, IoBuf) override {
    if (written_ == nullptr) return false;
    written_->push_back(static_cast<const Chunk&>(m));
    return true;
  }
  bool WritesDone() override { return true; }
  bool Read(google::protobuf::MessageLite* m, IoBuf*) override {
    if (next_ >= messages_.size()) return false;
    static_cast<Chunk*>(m)->CopyFrom(messages_[next_++]);
    return true;
  }
  Status Finish() override { return Status::Ok(); }

 private:
  std::vector<Chunk> messages_;
  std::vector<Chunk>* written_;
  size_t next_ = 0;
};

// Code under test: sums the seqs a Download returns; uploads n chunks.
uint64_t SumOfSeqs(streamtest::Streamer::StubInterface& stub) {
  ClientContext ctx;
  Range range;
  auto reader = stub.Download(ctx, range);
  Chunk c;
  uint64_t sum = 0;
  while (reader->Read(&c)) sum += c.seq();
  return reader->Finish().ok() ? sum : 0;
}

// A stream_open of Upload for `txn` whose body is the initial window and
// `extra` bytes more; `attachment` bytes streamed behind it are announced.
hrpc::Result<IoBuf> OpenFrame(hrpc::mempool::Pool& pool, uint64_t txn, size_t extra = 0, size_t attachment = 0) {
  hrpc::wire::FrameHeader h;
  h.kind = hrpc::wire::FrameKind::kStreamOpen;
  h.txn_id = txn;
  h.service_id = streamtest::Streamer::kServiceId;
  h.method_id = hrpc::MethodIdOf("Upload");
  h.attachment_len = static_cast<uint32_t>(attachment);
  std::string body(hrpc::wire::kStreamWindowSize + extra, '\0');
  hrpc::wire::EncodeStreamWindow({.window_messages = hrpc::wire::kInitialStreamWindowMessages,
                                  .window_bytes = hrpc::wire::kInitialStreamWindowBytes},
                                 std::span<std::byte, hrpc::wire::kStreamWindowSize>(
                                     reinterpret_cast<std::byte*>(body.data()), hrpc::wire::kStreamWindowSize));
  return rpctest::RawFrame(pool, h, body);
}

// A stream_open's body is the client's window and nothing else. One that
// carries more (an attachment streamed behind it, a longer body) would be held
// for the stream's whole life outside every quota and window: the server
// closes that connection, runs no handler, and serves the others.
TEST(StreamWire, OpenCarryingMoreThanItsWindowClosesItsConnection) {
  Env env;
  env.Start("tcp");
  streamtest::Streamer::Stub stub(env.channel.get());
  {
    ClientContext ctx;
    Chunk in, out;
    ASSERT_TRUE(stub.Ping(ctx, in, &out).ok());  // the channel's connection is up
  }
  const size_t before = env.server->num_connections();
  struct Case {
    const char* what;
    size_t extra;
    size_t attachment;
  };
  for (const Case& c : {Case{"a 1 MiB attachment", 0, 1u << 20}, Case{"a 4 KiB attachment", 0, 4096},
                        Case{"one byte more than the window", 1, 0}}) {
    SCOPED_TRACE(c.what);
    rpctest::RawTcpPeer peer;
    ASSERT_TRUE(peer.Connect(env.channel->scheduler(0), env.server->listen_uris().at(0)).ok());
    ASSERT_TRUE(Eventually([&] { return env.server->num_connections() == before + 1; }));
    ASSERT_TRUE(peer.Send(OpenFrame(*peer.pool, 1, c.extra, c.attachment),
                          c.attachment > 0 ? Payload(*peer.pool, c.attachment, 3) : IoBuf())
                    .ok());
    EXPECT_TRUE(Eventually([&] { return env.server->num_connections() == before; }))
        << "the server kept the connection of a malformed stream_open";
    auto r = peer.Recv();
    EXPECT_FALSE(r.ok()) << "got a frame of kind " << static_cast<int>(r->kind);
  }
  EXPECT_EQ(env.service.handlers_done.load(), 0) << "a handler ran for a malformed stream_open";
  ClientContext ctx;
  Chunk in, out;
  in.set_text("still serving");
  ASSERT_TRUE(stub.Ping(ctx, in, &out).ok());
  EXPECT_EQ(out.text(), "still serving");
}

// A cancel that reaches the server before the stream's handler started: the
// stream ends there (no handler runs for it, or it sees the cancel) and, as
// for any stream the client cancelled, no stream_close is sent.
TEST(StreamWire, StreamCancelledBeforeItsHandlerRanGetsNoClose) {
  Env env;
  env.Start("tcp");
  rpctest::RawTcpPeer peer;
  ASSERT_TRUE(peer.Connect(env.channel->scheduler(0), env.server->listen_uris().at(0)).ok());
  for (uint64_t txn = 1; txn <= 20; ++txn) {
    // Queued back to back from one coroutine: they leave in one write.
    ASSERT_TRUE(hrpc::coro::Async(*peer.sched, [&]() -> hrpc::Status {
                  HRPC_ASSIGN_OR_RETURN(auto open, OpenFrame(*peer.pool, txn));
                  HRPC_ASSIGN_OR_RETURN(auto cancel, rpctest::ControlFrame(*peer.pool, hrpc::wire::FrameKind::kCancel, txn));
                  HRPC_TRY(peer.conn->Send(std::move(open)));
                  return peer.conn->Send(std::move(cancel));
                }).Get().ok());
  }
  // Whatever the server sends for the cancelled streams comes before the
  // answer to a ping sent once their handlers (if any ran) are done.
  std::this_thread::sleep_for(200ms);
  ASSERT_TRUE(peer.Send(rpctest::ControlFrame(*peer.pool, hrpc::wire::FrameKind::kPing, 99)).ok());
  auto h = peer.Recv();
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->kind, hrpc::wire::FrameKind::kPong)
      << "got " << hrpc::wire::FrameKindName(h->kind) << " for txn " << h->txn_id << " (status "
      << static_cast<int>(h->status) << ") before the pong";
  EXPECT_EQ(h->txn_id, 99u);
  std::printf("handlers that ran for the 20 cancelled streams: %d\n", env.service.handlers_done.load());
}

TEST(StreamMockTest, MockedStubServesEveryStreamKind) {
  using ::testing::_;
  using ::testing::ByMove;
  using ::testing::Return;
  streamtest::MockStreamerStub mock;
  std::vector<Chunk> canned(3);
  for (int i = 0; i < 3; ++i) canned[i].set_seq(static_cast<uint64_t>(i + 1));
  EXPECT_CALL(mock, Download(_, _))
      .WillOnce(Return(ByMove(std::make_unique<hrpc::ClientReader<Chunk>>(std::make_unique<CannedStream>(canned)))));
  EXPECT_EQ(SumOfSeqs(mock), 6u);

  std::vector<Chunk> written;
  Summary summary;
  EXPECT_CALL(mock, Upload(_, _))
      .WillOnce([&](ClientContext&, Summary* resp) {
        canned[0].set_seq(0);
        return std::make_unique<hrpc::ClientWriter<Chunk, Summary>>(
            std::make_unique<CannedStream>(std::vector<Chunk>{}, &written), resp, nullptr);
      });
  ClientContext ctx;
  auto up = mock.Upload(ctx, &summary);
  EXPECT_TRUE(up->Write(canned[1]));
  EXPECT_EQ(written.size(), 1u);
  EXPECT_EQ(up->Finish().code(), StatusCode::kInternal) << "OK without a response is an error";

  EXPECT_CALL(mock, Chat(_)).WillOnce(Return(ByMove(std::make_unique<hrpc::ClientReaderWriter<Chunk, Chunk>>(
      std::make_unique<CannedStream>(canned, &written)))));
  auto chat = mock.Chat(ctx);
  Chunk got;
  EXPECT_TRUE(chat->Write(got));
  EXPECT_TRUE(chat->Read(&got));
  EXPECT_TRUE(chat->Finish().ok());
}

}  // namespace
