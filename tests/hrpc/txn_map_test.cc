// TxnMap (an internal part of the library): the calls in flight on a connection.
#include "txn_map.h"

#include <memory>

#include <gtest/gtest.h>

namespace hrpc::internal {
namespace {

TEST(TxnMapTest, InsertFindErase) {
  TxnMap<int> m;
  EXPECT_TRUE(m.Insert(1, 10));
  EXPECT_TRUE(m.Insert(2, 20));
  EXPECT_FALSE(m.Insert(1, 11));  // present: unchanged
  ASSERT_NE(m.find(1), m.end());
  EXPECT_EQ(m.find(1)->second, 10);
  EXPECT_TRUE(m.contains(2));
  EXPECT_EQ(m.size(), 2u);
  EXPECT_TRUE(m.Erase(1));
  EXPECT_FALSE(m.Erase(1));
  EXPECT_FALSE(m.contains(1));
  m.Erase(m.find(2));
  EXPECT_TRUE(m.empty());
  // A refused insert that took a spare node gives it back.
  EXPECT_TRUE(m.Insert(3, 30));
  EXPECT_FALSE(m.Insert(3, 31));
  EXPECT_TRUE(m.Insert(4, 40));
  EXPECT_EQ(m.find(3)->second, 30);
  EXPECT_EQ(m.find(4)->second, 40);
}

TEST(TxnMapTest, ReusesTheNodeOfAnErasedEntry) {
  TxnMap<int> m;
  ASSERT_TRUE(m.Insert(1, 10));
  const int* first = &m.find(1)->second;
  m.Erase(1);
  ASSERT_TRUE(m.Insert(2, 20));
  EXPECT_EQ(&m.find(2)->second, first);  // same node, so no allocation
  EXPECT_EQ(m.find(2)->second, 20);
}

TEST(TxnMapTest, AnErasedEntryHoldsNothing) {
  auto held = std::make_shared<int>(1);
  TxnMap<std::shared_ptr<int>> m;
  ASSERT_TRUE(m.Insert(7, held));
  EXPECT_EQ(held.use_count(), 2);
  m.Erase(7);
  EXPECT_EQ(held.use_count(), 1);
}

TEST(TxnMapTest, MovedMapKeepsItsEntries) {
  TxnMap<int> m;
  for (uint64_t t = 1; t <= 100; ++t) ASSERT_TRUE(m.Insert(t, static_cast<int>(t)));
  for (uint64_t t = 1; t <= 50; ++t) ASSERT_TRUE(m.Erase(t));
  TxnMap<int> moved = std::move(m);
  EXPECT_EQ(moved.size(), 50u);
  int sum = 0;
  for (auto& [txn, v] : moved) sum += v;
  EXPECT_EQ(sum, (51 + 100) * 50 / 2);
  for (uint64_t t = 101; t <= 200; ++t) ASSERT_TRUE(moved.Insert(t, 1));
  EXPECT_EQ(moved.size(), 150u);
}

}  // namespace
}  // namespace hrpc::internal
