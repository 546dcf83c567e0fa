// The per-connection building blocks every transport is made of
// (transport/src/conn_parts.h), driven by coroutines on a real scheduler:
// credits and parked senders, the inbox, the accept queue, and FailAll.
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "conn_parts.h"
#include "hrpc/coroutine/scheduler.h"
#include "transport_harness.h"

namespace hrpc::transport::internal {
namespace {

using mempool::IoBuf;

// Runs `main` as a coroutine on a fresh scheduler on this thread; returns
// when it does. Coroutines it spawns run whenever it yields.
void RunMain(std::function<void(coro::Scheduler&)> main) {
  coro::SchedulerOptions o;
  o.name = "conn-parts";
  auto s = coro::Scheduler::Create(std::move(o));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  coro::Scheduler& sched = **s;
  sched.Spawn([&] {
    main(sched);
    sched.Stop();
  }, "main");
  sched.Run();
}

// Lets every other ready coroutine run (and park) before going on.
void Settle() {
  for (int i = 0; i < 8; ++i) coro::this_coro::Yield();
}

struct SendWaiter : Parked {
  int id = 0;
};

TEST(CreditGate, ParkedSendersAreServedInFifoOrderAndNewSendersDoNotOvertakeThem) {
  RunMain([](coro::Scheduler& sched) {
    CreditGate<SendWaiter> gate;
    gate.Open(2);
    EXPECT_TRUE(gate.TryTake());
    EXPECT_TRUE(gate.TryTake());
    EXPECT_FALSE(gate.TryTake()) << "no credit left";
    std::vector<int> woke;
    std::vector<Status> results(3);
    for (int i = 0; i < 3; ++i) {
      sched.Spawn([&, i] {
        SendWaiter w;
        w.id = i;
        gate.Park(w);
        results[i] = w.Wait();
        woke.push_back(i);
      });
    }
    Settle();
    ASSERT_TRUE(gate.has_waiters());
    std::vector<int> sent;
    auto send = [&](SendWaiter& w) {
      sent.push_back(w.id);
      return w.id == 1 ? UnavailableError("send failed") : Status::Ok();
    };
    ASSERT_TRUE(gate.Grant(1).ok());
    EXPECT_FALSE(gate.TryTake()) << "a free credit belongs to the parked senders first";
    gate.Pump(send);
    Settle();
    EXPECT_EQ(sent, std::vector<int>{0});
    EXPECT_EQ(woke, std::vector<int>{0});
    EXPECT_EQ(gate.credits(), 0u);
    ASSERT_TRUE(gate.Grant(2).ok());
    gate.Pump(send);
    Settle();
    EXPECT_EQ(sent, (std::vector<int>{0, 1, 2}));
    EXPECT_EQ(woke, (std::vector<int>{0, 1, 2}));
    EXPECT_TRUE(results[0].ok());
    EXPECT_EQ(results[1].code(), StatusCode::kUnavailable) << "the sender wakes with its send's Status";
    EXPECT_TRUE(results[2].ok());
    EXPECT_FALSE(gate.has_waiters());
  });
}

TEST(CreditGate, PumpStopsWhileMoreIsFalseAndARefundKeepsItGoing) {
  RunMain([](coro::Scheduler& sched) {
    CreditGate<SendWaiter> gate;
    gate.Open(1);
    ASSERT_TRUE(gate.TryTake());
    int done = 0;
    for (int i = 0; i < 2; ++i) {
      sched.Spawn([&, i] {
        SendWaiter w;
        w.id = i;
        gate.Park(w);
        EXPECT_TRUE(w.Wait().ok());
        ++done;
      });
    }
    Settle();
    ASSERT_TRUE(gate.Grant(1).ok());
    std::vector<int> sent;
    bool room = false;
    gate.Pump([&](SendWaiter& w) { sent.push_back(w.id); return Status::Ok(); }, [&] { return room; });
    EXPECT_TRUE(sent.empty()) << "no send-queue room: nobody is served";
    EXPECT_EQ(gate.credits(), 1u);
    room = true;
    // The first message is dropped on the way (its credit comes back), so the
    // same Pump serves the second one with it.
    gate.Pump([&](SendWaiter& w) {
      sent.push_back(w.id);
      if (w.id == 0) gate.Refund();
      return Status::Ok();
    });
    Settle();
    EXPECT_EQ(sent, (std::vector<int>{0, 1}));
    EXPECT_EQ(done, 2);
    EXPECT_EQ(gate.credits(), 0u);
  });
}

TEST(CreditGate, ReturningMoreCreditsThanReceiveSlotsIsAnError) {
  CreditGate<SendWaiter> gate;
  gate.Open(4);
  ASSERT_TRUE(gate.TryTake());
  EXPECT_TRUE(gate.Grant(1).ok());
  EXPECT_EQ(gate.credits(), 4u);
  Status s = gate.Grant(1);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("5 > 4"), std::string_view::npos) << s.ToString();
  EXPECT_EQ(gate.credits(), 4u) << "a refused grant leaves the count alone";
  // A count that would wrap around 32 bits is refused too, not taken as small.
  s = gate.Grant(UINT32_MAX - 1);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_EQ(gate.credits(), 4u);
}

TEST(CreditGate, FailAllFinishesEveryParkedSenderWithoutSending) {
  RunMain([](coro::Scheduler& sched) {
    CreditGate<SendWaiter> gate;
    gate.Open(1);
    ASSERT_TRUE(gate.TryTake());
    std::vector<Status> results(3);
    for (int i = 0; i < 3; ++i) {
      sched.Spawn([&, i] {
        SendWaiter w;
        gate.Park(w);
        results[i] = w.Wait();
      });
    }
    Settle();
    gate.FailAll(UnavailableError("connection lost"));
    Settle();
    for (const Status& s : results) EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_FALSE(gate.has_waiters());
    ASSERT_TRUE(gate.Grant(1).ok());
    int sent = 0;
    gate.Pump([&](SendWaiter&) { ++sent; return Status::Ok(); });
    EXPECT_EQ(sent, 0) << "a failed sender's message never goes out";
  });
}

// A waiter that a Release() woke, but that runs only after the connection
// failed, must not go on with its op (nobody would ever answer it): it gets
// the failure, as does every later caller.
TEST(OpSlots, AWaiterWokenJustBeforeTheFailureGetsTheFailure) {
  RunMain([](coro::Scheduler& sched) {
    OpSlots slots(1);
    OwnerCounter stalls;
    ASSERT_TRUE(slots.Acquire(stalls).ok());
    Status woken = InternalError("not run");
    sched.Spawn([&] { woken = slots.Acquire(stalls); });
    Settle();
    EXPECT_EQ(stalls.Get(), 1u);
    slots.Release();                                 // hands the slot to the waiter...
    slots.FailAll(UnavailableError("peer gone"));  // ...which has not run yet
    Settle();
    EXPECT_EQ(woken.code(), StatusCode::kUnavailable) << woken.ToString();
    ASSERT_EQ(slots.outstanding(), 0u) << "the woken waiter took the slot of a failed connection";
    EXPECT_EQ(slots.Acquire(stalls).code(), StatusCode::kUnavailable);
  });
}

uint32_t IdOf(const IoBuf& m) {
  uint32_t id = 0;
  m.CopyTo(&id, 0, 4);
  return id;
}

IoBuf Msg(mempool::Pool& pool, uint32_t id) {
  mempool::Buffer b = testing::Filled(pool, 64, id);
  std::memcpy(b.data(), &id, 4);
  return IoBuf(std::move(b));
}

TEST(Inbox, QueuesWithoutReceiversAndHandsToParkedReceiversInFifoOrder) {
  auto pool = testing::MakeTestPool(4u << 20, 64u << 10);
  RunMain([&](coro::Scheduler& sched) {
    Inbox<Parked> inbox;
    EXPECT_FALSE(inbox.Put(Msg(*pool, 1)));
    EXPECT_FALSE(inbox.Put(Msg(*pool, 2)));
    ASSERT_FALSE(inbox.empty());
    EXPECT_EQ(IdOf(inbox.Take()), 1u);
    EXPECT_EQ(IdOf(inbox.Take()), 2u);
    EXPECT_TRUE(inbox.empty());
    std::vector<std::pair<int, uint32_t>> got;
    for (int i = 0; i < 2; ++i) {
      sched.Spawn([&, i] {
        auto m = inbox.Wait();
        ASSERT_TRUE(m.ok()) << m.status().ToString();
        got.emplace_back(i, IdOf(*m));
      });
    }
    Settle();
    EXPECT_TRUE(inbox.Put(Msg(*pool, 10)));
    EXPECT_TRUE(inbox.Put(Msg(*pool, 11)));
    EXPECT_FALSE(inbox.Put(Msg(*pool, 12))) << "nobody parked any more: queued";
    Settle();
    EXPECT_EQ(got, (std::vector<std::pair<int, uint32_t>>{{0, 10u}, {1, 11u}}));
    EXPECT_EQ(IdOf(inbox.Take()), 12u);
  });
}

TEST(Inbox, FailAllEndsParkedReceiversAndKeepsQueuedMessagesUntilTakenAll) {
  auto pool = testing::MakeTestPool(4u << 20, 64u << 10);
  RunMain([&](coro::Scheduler& sched) {
    Inbox<Parked> inbox;
    std::vector<Status> results(2);
    for (int i = 0; i < 2; ++i) {
      sched.Spawn([&, i] { results[i] = inbox.Wait().status(); });
    }
    Settle();
    inbox.FailAll(DataLossError("bad frame"));
    Settle();
    for (const Status& s : results) EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_FALSE(inbox.Put(Msg(*pool, 7))) << "the failed receivers are no longer parked";
    inbox.FailAll(DataLossError("bad frame"));
    ASSERT_FALSE(inbox.empty());
    auto left = inbox.TakeAll();
    ASSERT_EQ(left.size(), 1u);
    EXPECT_EQ(IdOf(left[0]), 7u);
    EXPECT_TRUE(inbox.empty());
  });
}

TEST(AcceptQueue, ReadyConnectionsGoToParkedAcceptorsInFifoOrderOrWait) {
  RunMain([](coro::Scheduler& sched) {
    AcceptQueue<std::shared_ptr<int>, Parked> q;
    EXPECT_FALSE(q.Push(std::make_shared<int>(1)));
    auto first = q.Pop();
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(**first, 1);
    std::vector<std::pair<int, int>> got;
    for (int i = 0; i < 2; ++i) {
      sched.Spawn([&, i] {
        auto c = q.Pop();
        ASSERT_TRUE(c.ok()) << c.status().ToString();
        got.emplace_back(i, **c);
      });
    }
    Settle();
    EXPECT_TRUE(got.empty());
    EXPECT_TRUE(q.Push(std::make_shared<int>(20)));
    EXPECT_TRUE(q.Push(std::make_shared<int>(21)));
    Settle();
    EXPECT_EQ(got, (std::vector<std::pair<int, int>>{{0, 20}, {1, 21}}));
  });
}

TEST(AcceptQueue, CloseWithAcceptorsParkedEndsThemAndHandsBackTheQueuedConnections) {
  RunMain([](coro::Scheduler& sched) {
    AcceptQueue<std::shared_ptr<int>, Parked> q;
    std::vector<Status> results(2);
    for (int i = 0; i < 2; ++i) {
      sched.Spawn([&, i] { results[i] = q.Pop().status(); });
    }
    Settle();
    auto queued = q.Close(CancelledError("listener closed"));
    EXPECT_TRUE(queued.empty());
    Settle();
    for (const Status& s : results) EXPECT_EQ(s.code(), StatusCode::kCancelled) << s.ToString();
    EXPECT_TRUE(q.closed());

    AcceptQueue<std::shared_ptr<int>, Parked> q2;
    q2.Push(std::make_shared<int>(5));
    q2.Push(std::make_shared<int>(6));
    auto left = q2.Close(CancelledError("listener closed"));
    ASSERT_EQ(left.size(), 2u);
    EXPECT_EQ(*left[0], 5);
    EXPECT_EQ(*left[1], 6);
    EXPECT_TRUE(q2.Close(CancelledError("again")).empty()) << "closing twice hands nothing back twice";
  });
}

}  // namespace
}  // namespace hrpc::transport::internal
