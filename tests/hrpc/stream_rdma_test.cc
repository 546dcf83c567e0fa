// Streams over the RDMA transport (label rdma): attachments READ by the
// receiver from the sender's registered memory, the window bounding what
// stays exposed, cancellation. Runs for real inside the Soft-RoCE guest
// (scripts/rdma-tests.sh); skips with the reason elsewhere.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server.h"
#include "stream_test_util.h"
#include "../transport/rdma_test_util.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using hrpc::Status;
using hrpc::StatusCode;
using hrpc::mempool::IoBuf;
using hrpc::transport::testing::RdmaSkipReason;
using hrpc::transport::testing::RdmaTestAddr;
using streamtest::Chunk;
using streamtest::Describe;
using streamtest::Matches;
using streamtest::Payload;

class StreamRdmaTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }
  void Start(hrpc::ServerOptions so, hrpc::RpcChannelOptions co = {}) {
    const std::string why = RdmaSkipReason();
    if (!why.empty()) GTEST_SKIP() << why;
    so.listen = {"rdma://" + RdmaTestAddr() + ":0"};
    so.stream_window = {16, 4u << 20};
    auto s = hrpc::Server::Create(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(*s);
    ASSERT_TRUE(server_->RegisterService(&service_).ok());
    ASSERT_TRUE(server_->Start().ok());
    const std::string bound = server_->listen_uris().at(0);
    auto c = hrpc::RpcChannel::Create("rdma://" + RdmaTestAddr() + ":" + bound.substr(bound.rfind(':') + 1), co);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channel_ = std::move(*c);
    ASSERT_TRUE(channel_->Connect().ok());
  }
  void TearDown() override {
    server_.reset();
    channel_.reset();
  }
  void OnWorker(const std::function<void()>& fn) { streamtest::OnWorker(*channel_, fn); }

  streamtest::StreamerImpl service_;
  std::unique_ptr<hrpc::Server> server_;
  std::unique_ptr<hrpc::RpcChannel> channel_;
};

// Attachments above the eager threshold go by one-sided READ of the sender's
// memory, both ways, CRC-checked, not copied by the CPU.
TEST_F(StreamRdmaTest, BidiAttachmentsByReadWithoutCopies) {
  streamtest::Streamer::Stub stub(channel_.get());
  const std::vector<size_t> sizes = {0, 1, 4096, 64 * 1024, 1 << 20, 16 << 20};
  OnWorker([&] {
    ClientContext ctx;
    ctx.set_timeout(120s);
    auto chat = stub.Chat(ctx);
    for (size_t i = 0; i < sizes.size(); ++i) {
      IoBuf att = Payload(channel_->pool(), sizes[i], static_cast<uint32_t>(i + 3));
      const Chunk c = Describe(i, att);
      const uint64_t copied0 = hrpc::mempool::CopiedBytesTotal();
      ASSERT_TRUE(chat->Write(c, std::move(att)));
      Chunk back;
      IoBuf got;
      ASSERT_TRUE(chat->Read(&back, &got));
      EXPECT_EQ(back.text(), "ok") << sizes[i];
      EXPECT_TRUE(Matches(c, got)) << sizes[i];
      if (sizes[i] % 4096 == 0) {
        EXPECT_EQ(hrpc::mempool::CopiedBytesTotal() - copied0, 0u) << sizes[i];
      }
    }
    ASSERT_TRUE(chat->WritesDone());
    Status s = chat->Finish();
    EXPECT_TRUE(s.ok()) << s.ToString();
  });
}

// A server stream of 200 x 256 KiB: every message READ by the client, the
// server's exposures bounded by the client's window and all released.
TEST_F(StreamRdmaTest, ServerStreamOfLargeMessages) {
  streamtest::Streamer::Stub stub(channel_.get());
  OnWorker([&] {
    ClientContext ctx;
    ctx.set_timeout(120s);
    streamtest::Range range;
    range.set_count(200);
    range.set_attachment_bytes(256 << 10);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    IoBuf got;
    int n = 0;
    while (reader->Read(&c, &got)) {
      EXPECT_TRUE(Matches(c, got)) << n;
      ++n;
    }
    Status s = reader->Finish();
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(n, 200);
  });
}

TEST_F(StreamRdmaTest, ClientCancelsMidStream) {
  streamtest::Streamer::Stub stub(channel_.get());
  OnWorker([&] {
    ClientContext ctx;
    streamtest::Range range;
    range.set_forever(true);
    range.set_attachment_bytes(64 << 10);
    auto reader = stub.Download(ctx, range);
    Chunk c;
    IoBuf got;
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(reader->Read(&c, &got));
    ctx.Cancel();
    while (reader->Read(&c, &got)) {
    }
    EXPECT_EQ(reader->Finish().code(), StatusCode::kCancelled);
  });
  for (int i = 0; i < 5000 && service_.handlers_done.load() == 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(service_.handlers_done.load(), 1);
}

// The client READs a message's attachment from the server's memory. The
// server keeps it exposed until the client's window says it was consumed or
// the client cancels, and a client cancels only once its READs in flight are
// over: revoking the memory under a READ would put the queue pair in error
// and fail every call and stream sharing the connection. The client's pool
// has 64 KiB blocks at most, so it READs a 32 MiB attachment in 512 pieces,
// 4 at a time; the stream ends (by its deadline, by a cancel) meanwhile, and a
// chat on the same connection goes on.
class StreamRdmaEndWhileReadingTest : public StreamRdmaTest {
 protected:
  static constexpr size_t kBig = 32u << 20;

  void SetUp() override {
    hrpc::RpcChannelOptions co;
    co.runtime.pool.max_class_bytes = 64u << 10;
    Start({}, co);
  }

  // Runs `fn` on the channel's worker between two exchanges of a chat on the
  // same connection: one message each way before, and after (the connection
  // is still up), then the chat ends OK.
  void AroundAChat(streamtest::Streamer::Stub& stub, const std::function<void()>& fn) {
    OnWorker([&] {
      ClientContext cctx;
      cctx.set_timeout(120s);
      auto chat = stub.Chat(cctx);
      for (uint64_t seq : {1, 2}) {
        if (seq == 2) fn();
        ASSERT_TRUE(chat->Write(Describe(seq, IoBuf{}), IoBuf{})) << "the chat on the same connection, message " << seq;
        Chunk back;
        ASSERT_TRUE(chat->Read(&back)) << "the chat on the same connection, message " << seq;
        EXPECT_EQ(back.seq(), seq);
      }
      ASSERT_TRUE(chat->WritesDone());
      Status s = chat->Finish();
      EXPECT_TRUE(s.ok()) << "the chat on the same connection: " << s.ToString();
    });
  }

  // Starts a download of `count` kBig messages and waits until the server has
  // sent the first.
  std::unique_ptr<hrpc::ClientReader<Chunk>> SentDownload(streamtest::Streamer::Stub& stub, ClientContext& ctx,
                                                          uint64_t count) {
    streamtest::Range range;
    range.set_count(count);
    range.set_attachment_bytes(kBig);
    const int written0 = service_.downloads_written.load();
    auto download = stub.Download(ctx, range);
    const auto start = std::chrono::steady_clock::now();
    while (service_.downloads_written.load() == written0 && std::chrono::steady_clock::now() - start < 30s) {
      hrpc::coro::this_coro::SleepFor(1ms);
    }
    EXPECT_GT(service_.downloads_written.load(), written0) << "the server did not send the message";
    return download;
  }
};

// The server's deadline (its own clock from the open's arrival) passes while
// the client is READing: the server keeps the memory until the client, its
// READ over, cancels.
TEST_F(StreamRdmaEndWhileReadingTest, ADeadlinePassingDuringTheReadLeavesTheConnectionUp) {
  streamtest::Streamer::Stub stub(channel_.get());
  AroundAChat(stub, [&] {
    ClientContext dctx;
    dctx.set_timeout(5s);
    auto download = SentDownload(stub, dctx, 1);
    ASSERT_LT(std::chrono::steady_clock::now(), dctx.deadline() - 100ms) << "no time left to start the Read";
    hrpc::coro::this_coro::SleepUntil(dctx.deadline() - 10ms);
    Chunk c;
    IoBuf got;
    EXPECT_FALSE(download->Read(&c, &got)) << "the 32 MiB READ finished within 10 ms: the deadline came after it";
    EXPECT_EQ(download->Finish().code(), StatusCode::kDeadlineExceeded);
  });
  // The client's cancel (its READ over) releases the server's memory then,
  // not after release_timeout (30 s): the stream is over on the server.
  auto downloads_running = [&] {
    for (const auto& m : server_->Stats()) {
      if (m.method.find("Download") != std::string::npos) return m.in_flight;
    }
    return int64_t{-1};
  };
  for (int i = 0; i < 5000 && downloads_running() != 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(downloads_running(), 0) << "the server still holds the stream the client dropped";
}

// A cancel while the Read is READing goes out once that Read's READs are over:
// the server, blocked in the next Write, hears it and ends.
TEST_F(StreamRdmaEndWhileReadingTest, ACancelDuringTheReadReachesTheServerAfterIt) {
  streamtest::Streamer::Stub stub(channel_.get());
  AroundAChat(stub, [&] {
    ClientContext dctx;
    dctx.set_timeout(120s);
    auto download = SentDownload(stub, dctx, 2);
    hrpc::coro::WaitGroup cancelled;
    cancelled.Add(1);
    hrpc::coro::Scheduler::Current()->Spawn([&] {
      hrpc::coro::this_coro::SleepFor(3ms);  // the Read below is READing by then
      dctx.Cancel();
      cancelled.Done();
    });
    Chunk c;
    IoBuf got;
    const bool read = download->Read(&c, &got);  // the READ in flight completes (or stops)
    cancelled.Wait().IgnoreError();
    if (read) {
      EXPECT_TRUE(Matches(c, got));
    }
    EXPECT_EQ(download->Finish().code(), StatusCode::kCancelled);
  });
  // Both handlers end: the download's by the cancel (without it, it would
  // wait in Write for a window that never opens, until its 120 s deadline).
  for (int i = 0; i < 20000 && service_.handlers_done.load() < 2; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(service_.handlers_done.load(), 2);
  EXPECT_EQ(service_.write_failures.load(), 1);
}

// A client that cancels an upload while the server is READing a message's
// attachment keeps that memory exposed until the server's close (sent once its
// READs are over): revoking it under a READ would put the queue pair in error
// and fail every call and stream sharing the connection.
class StreamRdmaSlowPullTest : public StreamRdmaTest {
 protected:
  void SetUp() override {
    hrpc::ServerOptions so;
    so.bulk_chunk_bytes = 4096;  // one 4 KiB READ at a time: a pull takes a while
    so.bulk_window = 1;
    Start(so);
  }
};

TEST_F(StreamRdmaSlowPullTest, CancellingAnUploadTheServerIsReadingLeavesTheConnectionUp) {
  streamtest::Streamer::Stub stub(channel_.get());
  OnWorker([&] {
    // Another stream on the same connection, running through the cancel.
    ClientContext dctx;
    dctx.set_timeout(60s);
    streamtest::Range range;
    range.set_count(20);
    range.set_interval_us(10'000);
    auto download = stub.Download(dctx, range);
    Chunk c;
    ASSERT_TRUE(download->Read(&c));
    int downloaded = 1;
    {
      ClientContext uctx;
      streamtest::Summary summary;
      auto upload = stub.Upload(uctx, &summary);
      IoBuf att = Payload(channel_->pool(), 8u << 20, 7);
      const Chunk m = Describe(0, att);
      ASSERT_TRUE(upload->Write(m, std::move(att)));
      // The server is READing it now (2048 pieces, one at a time).
      hrpc::coro::this_coro::SleepFor(30ms);
    }  // destroyed unfinished: a cancel
    while (download->Read(&c)) ++downloaded;
    Status s = download->Finish();
    EXPECT_TRUE(s.ok()) << "the other stream on the connection: " << s.ToString();
    EXPECT_EQ(downloaded, 20);
    // And unary calls on it.
    ClientContext pctx;
    Chunk ping, pong;
    ping.set_seq(9);
    Status p = stub.Ping(pctx, ping, &pong);
    EXPECT_TRUE(p.ok()) << p.ToString();
  });
  for (int i = 0; i < 5000 && service_.handlers_done.load() < 2; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(service_.handlers_done.load(), 2);
}

}  // namespace
