// Shared by the stream tests (loop/tcp and RDMA): the Streamer service and
// payload helpers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/server_context.h"
#include "rpc_test_util.h"
#include "stream_test.hrpc.h"

namespace streamtest {

using hrpc::ServerContext;
using hrpc::Status;
using hrpc::mempool::IoBuf;

// n bytes of `pool` with rpctest's pattern, in blocks of the pool's largest class.
inline IoBuf Payload(hrpc::mempool::Pool& pool, size_t n, uint32_t seed) {
  return rpctest::MakePayload(pool, n, seed, pool.options().max_class_bytes);
}

// Runs fn in a coroutine on the channel's worker 0 (streams run in place
// there) and waits for it.
inline void OnWorker(hrpc::RpcChannel& channel, const std::function<void()>& fn) {
  hrpc::coro::Event done;
  channel.scheduler(0).Post([&] {
    fn();
    done.Set();
  }, "stream-test");
  ASSERT_TRUE(done.WaitFor(std::chrono::seconds(300)).ok()) << "test coroutine did not finish";
}

inline Chunk Describe(uint64_t seq, const IoBuf& att) {
  Chunk c;
  c.set_seq(seq);
  c.set_attachment_bytes(att.size());
  c.set_attachment_crc32c(att.Crc32c());
  return c;
}

inline bool Matches(const Chunk& c, const IoBuf& att) {
  return att.size() == c.attachment_bytes() && att.Crc32c() == c.attachment_crc32c();
}

class StreamerImpl final : public streamtest::Streamer::Service {
 public:
  std::atomic<bool> hold_uploads{false};
  hrpc::coro::Event release_uploads;
  std::atomic<int> write_failures{0};  // a handler's Write() returned false
  std::atomic<bool> chat_reply_once{false};  // Chat echoes the first message, then returns OK
  std::atomic<int> handlers_done{0};
  std::atomic<int> downloads_written{0};  // messages Download's Write() took

  Status Upload(ServerContext& ctx, hrpc::ServerReader<Chunk>* reader, Summary* summary) override {
    Done done{handlers_done};
    if (hold_uploads.load()) release_uploads.Wait().IgnoreError();
    Chunk c;
    IoBuf att;
    while (reader->Read(&c, &att)) {
      summary->set_messages(summary->messages() + 1);
      summary->set_attachment_bytes(summary->attachment_bytes() + att.size());
      if (!Matches(c, att)) summary->set_bad_crcs(summary->bad_crcs() + 1);
    }
    if (ctx.IsCancelled()) return hrpc::CancelledError("upload cancelled");
    return Status::Ok();
  }

  Status Download(ServerContext& ctx, const Range& range, hrpc::ServerWriter<Chunk>* writer) override {
    Done done{handlers_done};
    for (uint64_t i = 0; range.forever() || i < range.count(); ++i) {
      if (range.fail_after() > 0 && i == range.fail_after()) {
        return hrpc::AbortedError("gave up after " + std::to_string(i) + " messages");
      }
      IoBuf att = Payload(*ctx.pool(), range.attachment_bytes(), range.seed() + static_cast<uint32_t>(i));
      Chunk c = Describe(i, att);
      if (!writer->Write(c, std::move(att))) {
        write_failures.fetch_add(1);
        return hrpc::CancelledError("the client went away");
      }
      downloads_written.fetch_add(1);
      if (range.interval_us() > 0) hrpc::coro::this_coro::SleepFor(std::chrono::microseconds(range.interval_us()));
    }
    return Status::Ok();
  }

  Status Chat(ServerContext&, hrpc::ServerReaderWriter<Chunk, Chunk>* stream) override {
    Done done{handlers_done};
    Chunk c;
    IoBuf att;
    while (stream->Read(&c, &att)) {
      c.set_text(Matches(c, att) ? "ok" : "bad crc");
      if (!stream->Write(c, std::move(att))) {
        write_failures.fetch_add(1);
        break;
      }
      if (chat_reply_once.load()) break;
    }
    return Status::Ok();
  }

  Status Ping(ServerContext&, const Chunk& req, Chunk* resp) override {
    *resp = req;
    return Status::Ok();
  }

 private:
  struct Done {
    std::atomic<int>& n;
    ~Done() { n.fetch_add(1); }
  };
};

}  // namespace streamtest
