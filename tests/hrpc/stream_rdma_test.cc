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
  void Start(hrpc::ServerOptions so) {
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
    auto c = hrpc::RpcChannel::Create("rdma://" + RdmaTestAddr() + ":" + bound.substr(bound.rfind(':') + 1));
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
