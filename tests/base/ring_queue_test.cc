#include "hrpc/base/ring_queue.h"

#include <memory>
#include <string>

#include <gtest/gtest.h>

namespace hrpc {
namespace {

TEST(RingQueueTest, KeepsFifoOrderThroughWrapAndGrowth) {
  RingQueue<int> q;
  int next_in = 0, next_out = 0;
  for (int i = 0; i < 5; ++i) q.emplace_back() = next_in++;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(q.front(), next_out++);
    q.pop_front();
  }
  // The head is now inside the ring: these wrap past its end, then grow it.
  for (int i = 0; i < 40; ++i) q.emplace_back() = next_in++;
  ASSERT_EQ(q.size(), 42u);
  EXPECT_EQ(q.back(), next_in - 1);
  for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(q[i], next_out + static_cast<int>(i));
  while (!q.empty()) {
    ASSERT_EQ(q.front(), next_out++);
    q.pop_front();
  }
  EXPECT_EQ(next_out, next_in);
}

TEST(RingQueueTest, ShortQueueNeverGrowsAgain) {
  RingQueue<std::string> q;
  q.emplace_back() = "a";
  q.emplace_back() = "b";
  const size_t cap = q.capacity();
  for (int i = 0; i < 10000; ++i) {
    q.emplace_back() = std::to_string(i);
    q.pop_front();
  }
  EXPECT_EQ(q.capacity(), cap);
  EXPECT_EQ(q.size(), 2u);
  EXPECT_EQ(q.front(), "9998");
}

TEST(RingQueueTest, PopReleasesAndSlotsComeBackDefault) {
  auto held = std::make_shared<int>(7);
  RingQueue<std::shared_ptr<int>> q;
  q.emplace_back() = held;
  EXPECT_EQ(held.use_count(), 2);
  q.pop_front();
  EXPECT_EQ(held.use_count(), 1);  // released at the pop, not when the slot is reused
  for (size_t i = 0; i < 2 * q.capacity(); ++i) {
    EXPECT_EQ(q.emplace_back(), nullptr);
    q.pop_front();
  }
  q.emplace_back() = held;
  q.emplace_back() = held;
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(held.use_count(), 1);
  int seen = 0;
  q.emplace_back() = held;
  q.ForEach([&](std::shared_ptr<int>& p) { seen += *p; });
  EXPECT_EQ(seen, 7);
}

}  // namespace
}  // namespace hrpc
