// Network groups: the machine split by NUMA node (default) or by core. Each
// group owns pinned workers on its cpus and a mempool::Pool bound to its node,
// so the data path never crosses a NUMA node.
//
// NetworkGroups owns everything in it; groups live until it is destroyed
// (workers are stopped first, then pools).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/worker.h"
#include "hrpc/groups/topology.h"
#include "hrpc/mempool/pool.h"

namespace hrpc::groups {

enum class GroupPolicy : uint8_t { kPerNumaNode, kPerCore };
std::string_view GroupPolicyName(GroupPolicy p) noexcept;

struct GroupOptions {
  GroupPolicy policy = GroupPolicy::kPerNumaNode;
  // Workers per group, each pinned to one cpu of the group (cpus are reused
  // round-robin if there are more workers than cpus). 0: one per cpu.
  size_t workers_per_group = 1;
  coro::SchedulerOptions sched;  // name is suffixed with "-g<id>w<n>"
  mempool::PoolOptions pool;  // numa_node is overridden by the group's node
  bool start_workers = true;  // false: plan + pools only (e.g. synthetic topologies)
  bool create_pools = true;
};

// What a group will contain; computed without side effects.
struct GroupSpec {
  int id = 0;
  int numa_node = 0;
  std::vector<int> cpus;         // all cpus of the group
  std::vector<int> worker_cpus;  // one entry per worker
};

// Pure: the group layout a policy gives on a topology.
std::vector<GroupSpec> PlanGroups(const Topology& topo, const GroupOptions& options);

// Spreads `instances` business instances over `groups` groups as evenly as
// possible (counts differ by at most one); result[i] is instance i's group.
std::vector<int> SpreadInstances(size_t instances, size_t groups);

class NetworkGroup final {
 public:
  int id() const noexcept { return spec_.id; }
  int numa_node() const noexcept { return spec_.numa_node; }
  const std::vector<int>& cpus() const noexcept { return spec_.cpus; }
  const GroupSpec& spec() const noexcept { return spec_; }

  size_t num_workers() const noexcept { return workers_.size(); }
  coro::Worker& worker(size_t i) { return *workers_.at(i); }
  // Precondition: create_pools was true.
  mempool::Pool& pool() { return *pool_; }
  bool has_pool() const noexcept { return pool_ != nullptr; }

  explicit NetworkGroup(GroupSpec spec) : spec_(std::move(spec)) {}
  ~NetworkGroup();
  NetworkGroup(const NetworkGroup&) = delete;
  NetworkGroup& operator=(const NetworkGroup&) = delete;

 private:
  friend class NetworkGroups;
  GroupSpec spec_;
  std::unique_ptr<mempool::Pool> pool_;
  std::vector<std::unique_ptr<coro::Worker>> workers_;  // destroyed first (declared last)
};

class NetworkGroups final {
 public:
  // Plans groups, creates pools and starts pinned workers. Logs the topology and
  // the layout (one line each). Errors: FAILED_PRECONDITION when workers would be
  // pinned to cpus this process may not use (e.g. a synthetic XML topology with
  // start_workers = true), the pool's or the worker's error otherwise.
  static Result<std::unique_ptr<NetworkGroups>> Create(const Topology& topo, GroupOptions options);
  // Same, on Topology::FromMachine().
  static Result<std::unique_ptr<NetworkGroups>> Create(GroupOptions options);

  size_t size() const noexcept { return groups_.size(); }
  NetworkGroup& group(size_t i) { return *groups_.at(i); }
  const Topology& topology() const noexcept { return topo_; }
  // "per-numa: g0{node0 cpus 0-3 workers[0]} g1{...}"
  std::string DescribeLayout() const;
  // Group index for each of `instances` business instances (SpreadInstances).
  std::vector<int> Spread(size_t instances) const { return SpreadInstances(instances, size()); }

 private:
  NetworkGroups(Topology topo, GroupOptions options) : topo_(std::move(topo)), options_(std::move(options)) {}
  Topology topo_;
  GroupOptions options_;
  std::vector<std::unique_ptr<NetworkGroup>> groups_;
};

}  // namespace hrpc::groups
