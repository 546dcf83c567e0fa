// Tests for groups/src/topology.cc and group.cc: grouping on the real
// machine and on a synthetic 2 NUMA nodes x 4 cores hwloc XML topology.
#include "hrpc/groups/group.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sched.h>

#include <map>
#include <set>
#include <thread>

#include "hrpc/coroutine/sync.h"

namespace hrpc::groups {
namespace {

using namespace std::chrono_literals;

mempool::PoolOptions SmallPool() {
  mempool::PoolOptions p;
  p.arena_bytes = 4 * 1024 * 1024;
  p.max_class_bytes = 1024 * 1024;
  p.max_arenas = 1;
  p.best_page_mode = mempool::PageMode::kSmallPages;
  p.thread_cache_bytes = 256 * 1024;
  return p;
}

TEST(TopologyTest, SyntheticXmlHasTwoNodesOfFourCores) {
  auto t = Topology::FromXml(HRPC_TEST_TOPOLOGY_XML);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(t->synthetic());
  ASSERT_EQ(t->nodes().size(), 2u);
  EXPECT_EQ(t->cores().size(), 8u);
  EXPECT_EQ(t->num_cpus(), 8u);
  EXPECT_THAT(t->nodes()[0].cpus, ::testing::ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(t->nodes()[1].cpus, ::testing::ElementsAre(4, 5, 6, 7));
  EXPECT_EQ(t->NumaNodeOfCpu(5), 1);
  EXPECT_EQ(t->NumaNodeOfCpu(99), -1);
  EXPECT_EQ(t->Describe(), "topology (xml): 2 NUMA nodes, 8 cores, 8 cpus: node0{cores 4 cpus 0-3} node1{cores 4 cpus 4-7}");
}

TEST(TopologyTest, DeviceNumaNodes) {
  auto xml = Topology::FromXml(HRPC_TEST_TOPOLOGY_XML).value();
  EXPECT_EQ(xml.NumaNodeOfDevice("eth0"), -1);  // synthetic: not this machine
  auto t = Topology::FromMachine().value();
  EXPECT_EQ(t.NumaNodeOfDevice("no-such-device"), -1);
  EXPECT_EQ(t.NumaNodeOfDevice("lo"), -1);  // virtual: no PCI device
  EXPECT_EQ(t.NumaNodeOfDevice("../../etc"), -1);
  for (const char* dev : {"eth0", "vda", "rxe0"}) {
    int node = t.NumaNodeOfDevice(dev);
    bool known = node == -1;
    for (const auto& n : t.nodes()) known |= n.os_index == node;
    EXPECT_TRUE(known) << dev << " -> node " << node;
  }
}

TEST(TopologyTest, MissingXmlIsAnError) {
  auto t = Topology::FromXml("/nonexistent/topology.xml");
  EXPECT_FALSE(t.ok());
}

TEST(GroupTest, PlanOnSyntheticTopology) {
  auto t = Topology::FromXml(HRPC_TEST_TOPOLOGY_XML).value();
  GroupOptions o;
  o.workers_per_group = 0;  // one per cpu
  auto per_numa = PlanGroups(t, o);
  ASSERT_EQ(per_numa.size(), 2u);
  for (int g = 0; g < 2; ++g) {
    EXPECT_EQ(per_numa[g].id, g);
    EXPECT_EQ(per_numa[g].numa_node, g);
    EXPECT_EQ(per_numa[g].cpus.size(), 4u);
    EXPECT_EQ(per_numa[g].worker_cpus, per_numa[g].cpus);
  }
  o.policy = GroupPolicy::kPerCore;
  o.workers_per_group = 2;  // more workers than cpus: round-robin over its one cpu
  auto per_core = PlanGroups(t, o);
  ASSERT_EQ(per_core.size(), 8u);
  for (int g = 0; g < 8; ++g) {
    EXPECT_THAT(per_core[g].cpus, ::testing::ElementsAre(g));
    EXPECT_THAT(per_core[g].worker_cpus, ::testing::ElementsAre(g, g));
    EXPECT_EQ(per_core[g].numa_node, g / 4);
  }
}

TEST(GroupTest, SyntheticGroupsWithPoolsButNoWorkers) {
  auto t = Topology::FromXml(HRPC_TEST_TOPOLOGY_XML).value();
  GroupOptions o;
  o.pool = SmallPool();
  // Starting workers would pin threads to cpus 2..7, which this machine may lack.
  auto refused = NetworkGroups::Create(t, o);
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  if (CPU_COUNT(&set) < 8) {
    EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  }
  refused = Status(StatusCode::kCancelled, "released");  // free any groups before the next Create
  o.start_workers = false;
  auto gs = NetworkGroups::Create(t, o);
  ASSERT_TRUE(gs.ok()) << gs.status().ToString();
  ASSERT_EQ((*gs)->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    auto& g = (*gs)->group(i);
    EXPECT_EQ(g.cpus().size(), 4u);
    EXPECT_EQ(g.num_workers(), 0u);
    ASSERT_TRUE(g.has_pool());
    auto buf = g.pool().Allocate(4096);
    EXPECT_TRUE(buf.ok());
  }
  EXPECT_THAT((*gs)->DescribeLayout(), ::testing::StartsWith("per-numa: g0{node0 cpus 0,1,2,3"));

  GroupOptions pc = o;
  pc.policy = GroupPolicy::kPerCore;
  pc.create_pools = false;
  auto per_core = NetworkGroups::Create(t, pc);
  ASSERT_TRUE(per_core.ok());
  EXPECT_EQ((*per_core)->size(), 8u);
}

TEST(GroupTest, SpreadInstancesEvenly) {
  auto s = SpreadInstances(10, 4);
  std::map<int, int> count;
  for (int g : s) count[g]++;
  ASSERT_EQ(count.size(), 4u);
  int mn = 100, mx = 0;
  for (auto [g, n] : count) {
    mn = std::min(mn, n);
    mx = std::max(mx, n);
  }
  EXPECT_LE(mx - mn, 1);
  EXPECT_EQ(SpreadInstances(3, 8), (std::vector<int>{0, 1, 2}));
}

TEST(GroupTest, CreateWithoutTopologyReadsTheMachine) {
  GroupOptions o;
  o.workers_per_group = 0;  // one worker per cpu
  o.create_pools = false;
  auto gs = NetworkGroups::Create(o);
  ASSERT_TRUE(gs.ok()) << gs.status().ToString();
  EXPECT_FALSE((*gs)->topology().synthetic());
  size_t workers = 0;
  for (size_t i = 0; i < (*gs)->size(); ++i) workers += (*gs)->group(i).num_workers();
  EXPECT_EQ(workers, (*gs)->topology().num_cpus());
}

TEST(GroupTest, RealMachineGroupsRunPinnedWorkers) {
  auto t = Topology::FromMachine();
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_FALSE(t->synthetic());
  EXPECT_GE(t->nodes().size(), 1u);
  EXPECT_GE(t->num_cpus(), 1u);
  for (GroupPolicy policy : {GroupPolicy::kPerNumaNode, GroupPolicy::kPerCore}) {
    GroupOptions o;
    o.policy = policy;
    o.pool = SmallPool();
    auto gs = NetworkGroups::Create(*t, o);
    ASSERT_TRUE(gs.ok()) << gs.status().ToString();
    size_t expect = policy == GroupPolicy::kPerCore ? t->cores().size() : t->nodes().size();
    ASSERT_EQ((*gs)->size(), expect);
    for (size_t i = 0; i < (*gs)->size(); ++i) {
      auto& g = (*gs)->group(i);
      ASSERT_EQ(g.num_workers(), 1u);
      int want_cpu = g.spec().worker_cpus[0];
      auto on_cpu = coro::Async(g.worker(0).scheduler(), [] { return sched_getcpu(); });
      auto r = on_cpu.WaitFor(10s);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(*r, want_cpu) << "worker of group " << i << " is not pinned";
      auto b = g.pool().Allocate(8192);
      EXPECT_TRUE(b.ok());
    }
  }
}

}  // namespace
}  // namespace hrpc::groups
