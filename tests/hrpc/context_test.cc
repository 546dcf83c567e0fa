// ClientContext / ServerContext: deadline budgets, cancellation, bulk pull/push
// through a fake BulkTransfer backed by a real (small-page) pool.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/server_context.h"

namespace hrpc {
namespace {

using Clock = std::chrono::steady_clock;

TEST(ClientContextTest, DeadlineBudget) {
  ClientContext ctx;
  EXPECT_FALSE(ctx.has_deadline());
  EXPECT_EQ(ctx.DeadlineBudgetMicros(), wire::kNoDeadline);
  const auto now = Clock::now();
  ctx.set_deadline(now + std::chrono::milliseconds(250));
  EXPECT_EQ(ctx.DeadlineBudgetMicros(now), 250'000u);
  EXPECT_EQ(ctx.DeadlineBudgetMicros(now + std::chrono::seconds(1)), 0u);
  ctx.set_timeout(std::chrono::hours(1));
  EXPECT_TRUE(ctx.has_deadline());
  EXPECT_FALSE(ctx.DeadlineExpired());
}

TEST(ClientContextTest, CancelRunsHookOnceAndLateHooksImmediately) {
  ClientContext ctx;
  int fired = 0;
  ctx.SetCancelHook([&] { ++fired; });
  EXPECT_FALSE(ctx.IsCancelled());
  ctx.Cancel();
  ctx.Cancel();
  EXPECT_TRUE(ctx.IsCancelled());
  EXPECT_EQ(fired, 1);
  ctx.SetCancelHook([&] { fired += 10; });  // already cancelled: runs now
  EXPECT_EQ(fired, 11);
  ClientContext cleared;
  cleared.SetCancelHook([&] { fired += 100; });
  cleared.ClearCancelHook();
  cleared.Cancel();
  EXPECT_EQ(fired, 11);
}

TEST(ServerContextTest, DeadlineFromWireBudget) {
  ServerContext ctx;
  const auto now = Clock::now();
  ctx.set_deadline_budget_us(wire::kNoDeadline, now);
  EXPECT_FALSE(ctx.has_deadline());
  ctx.set_deadline_budget_us(5000, now);
  EXPECT_EQ(ctx.deadline(), now + std::chrono::microseconds(5000));
  ctx.set_deadline_budget_us(0, now);
  EXPECT_TRUE(ctx.DeadlineExpired());
  EXPECT_TRUE(ctx.IsCancelled());  // an expired deadline reads as cancelled
  ctx.set_deadline_budget_us(wire::kNoDeadline - 1, now);  // huge but finite: no overflow
  EXPECT_TRUE(ctx.has_deadline());
  EXPECT_FALSE(ctx.DeadlineExpired());
}

// Serves pulls from a local pool buffer and records pushes, as a transport would.
class FakeBulk final : public BulkTransfer {
 public:
  explicit FakeBulk(mempool::Pool& pool) : pool_(pool) {}
  Result<mempool::IoBuf> Pull(const wire::BulkDescriptor& remote, Clock::time_point) override {
    ++pulls;
    std::string data = source;
    if (corrupt) data[0] ^= 1;
    (void)remote;
    return mempool::IoBuf::CopyFrom(pool_, data.data(), data.size());
  }
  Status Push(const wire::BulkDescriptor&, const mempool::IoBuf& data, Clock::time_point) override {
    pushed.resize(data.size());
    data.CopyTo(pushed.data(), 0, data.size());
    return Status::Ok();
  }
  mempool::Pool& pool_;
  std::string source;
  std::string pushed;
  bool corrupt = false;
  int pulls = 0;
};

class BulkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mempool::PoolOptions opts;
    opts.arena_bytes = 4u << 20;
    opts.max_class_bytes = 1u << 20;
    opts.best_page_mode = mempool::PageMode::kSmallPages;
    opts.max_arenas = 1;
    auto pool = mempool::Pool::Create(opts);
    ASSERT_TRUE(pool.ok()) << pool.status().ToString();
    pool_ = std::move(*pool);
    bulk_ = std::make_unique<FakeBulk>(*pool_);
    bulk_->source = std::string(8192, 'q');
    wire::BulkDescriptor pull{0x1000, 8192, 7, Crc32c(bulk_->source.data(), 8192), wire::BulkDirection::kPull};
    wire::BulkDescriptor push{0x9000, 100, 8, 0, wire::BulkDirection::kPush};
    ctx_.set_bulk({pull, push}, bulk_.get());
  }
  std::unique_ptr<mempool::Pool> pool_;
  std::unique_ptr<FakeBulk> bulk_;
  ServerContext ctx_;
};

TEST_F(BulkTest, PullChecksCrc) {
  auto data = ctx_.PullBulk(0);
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(data->size(), 8192u);
  bulk_->corrupt = true;
  EXPECT_EQ(ctx_.PullBulk(0).status().code(), StatusCode::kDataLoss);
}

TEST_F(BulkTest, PushRespectsRegionSize) {
  auto small = mempool::IoBuf::CopyFrom(*pool_, "response", 8);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE(ctx_.PushBulk(1, *small).ok());
  EXPECT_EQ(bulk_->pushed, "response");
  std::string big(101, 'b');
  auto too_big = mempool::IoBuf::CopyFrom(*pool_, big.data(), big.size());
  ASSERT_TRUE(too_big.ok());
  EXPECT_EQ(ctx_.PushBulk(1, *too_big).code(), StatusCode::kOutOfRange);
}

TEST_F(BulkTest, WrongIndexDirectionCancelAndNoTransport) {
  EXPECT_EQ(ctx_.PullBulk(2).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(ctx_.PullBulk(1).status().code(), StatusCode::kFailedPrecondition);
  auto buf = mempool::IoBuf::CopyFrom(*pool_, "x", 1);
  ASSERT_TRUE(buf.ok());
  EXPECT_EQ(ctx_.PushBulk(0, *buf).code(), StatusCode::kFailedPrecondition);
  ctx_.MarkCancelled();
  EXPECT_EQ(ctx_.PullBulk(0).status().code(), StatusCode::kCancelled);
  EXPECT_EQ(bulk_->pulls, 0);

  ServerContext expired;
  expired.set_bulk({wire::BulkDescriptor{}}, bulk_.get());
  expired.set_deadline(Clock::now() - std::chrono::milliseconds(1));
  EXPECT_EQ(expired.PullBulk(0).status().code(), StatusCode::kDeadlineExceeded);

  ServerContext no_transport;
  no_transport.set_bulk({wire::BulkDescriptor{}}, nullptr);
  EXPECT_EQ(no_transport.PullBulk(0).status().code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace hrpc
