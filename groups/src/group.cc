// Network groups: plan (pure), then pools bound to the group's node and
// workers pinned to the group's cpus.
#include "hrpc/groups/group.h"

#include <numa.h>
#include <unistd.h>

#include <string>

#include <spdlog/spdlog.h>

namespace hrpc::groups {

namespace {

std::string CpuList(const std::vector<int>& v) {
  std::string s;
  for (int c : v) {
    if (!s.empty()) s += ',';
    s += std::to_string(c);
  }
  return s;
}

// cpus this process may run on. Not sched_getaffinity(0): the calling thread
// may itself be pinned to one cpu. libnuma reads the process's Cpus_allowed.
bool CpuUsable(int cpu) {
  if (cpu < 0) return false;
  if (::numa_available() >= 0 && numa_all_cpus_ptr != nullptr) {
    return static_cast<unsigned>(cpu) < numa_all_cpus_ptr->size &&
           ::numa_bitmask_isbitset(numa_all_cpus_ptr, static_cast<unsigned>(cpu));
  }
  return cpu < ::sysconf(_SC_NPROCESSORS_ONLN);
}

// The node to bind a pool to, or -1 if this machine has no such node with memory
// (a synthetic topology describing another machine).
int BindableNode(int node) {
  if (::numa_available() < 0) return -1;
  if (node < 0 || node > ::numa_max_node()) return -1;
  struct bitmask* mems = ::numa_get_mems_allowed();
  bool ok = mems && ::numa_bitmask_isbitset(mems, static_cast<unsigned>(node));
  if (mems) ::numa_bitmask_free(mems);
  return ok ? node : -1;
}

}  // namespace

std::string_view GroupPolicyName(GroupPolicy p) noexcept {
  switch (p) {
    case GroupPolicy::kPerNumaNode:
      return "per-numa";
    case GroupPolicy::kPerCore:
      return "per-core";
  }
  return "?";
}

std::vector<GroupSpec> PlanGroups(const Topology& topo, const GroupOptions& options) {
  std::vector<GroupSpec> groups;
  auto add = [&](int node, const std::vector<int>& cpus) {
    if (cpus.empty()) return;
    GroupSpec g;
    g.id = static_cast<int>(groups.size());
    g.numa_node = node;
    g.cpus = cpus;
    size_t n = options.workers_per_group == 0 ? cpus.size() : options.workers_per_group;
    for (size_t i = 0; i < n; ++i) g.worker_cpus.push_back(cpus[i % cpus.size()]);
    groups.push_back(std::move(g));
  };
  if (options.policy == GroupPolicy::kPerCore) {
    for (const auto& c : topo.cores()) add(c.numa_node, c.cpus);
  } else {
    for (const auto& n : topo.nodes()) add(n.os_index, n.cpus);
  }
  return groups;
}

std::vector<int> SpreadInstances(size_t instances, size_t groups) {
  std::vector<int> out(instances, 0);
  if (groups == 0) return out;
  for (size_t i = 0; i < instances; ++i) out[i] = static_cast<int>(i % groups);
  return out;
}

NetworkGroup::~NetworkGroup() {
  workers_.clear();  // stop the threads that may use the pool
  pool_.reset();
}

Result<std::unique_ptr<NetworkGroups>> NetworkGroups::Create(const Topology& topo, GroupOptions options) {
  std::unique_ptr<NetworkGroups> gs(new NetworkGroups(topo, options));
  std::vector<GroupSpec> plan = PlanGroups(topo, options);
  if (plan.empty()) return FailedPreconditionError("topology yields no groups");
  if (options.start_workers) {
    for (const auto& g : plan) {
      for (int cpu : g.worker_cpus) {
        if (!CpuUsable(cpu)) {
          return FailedPreconditionError("group " + std::to_string(g.id) + " would pin a worker to cpu " +
                                         std::to_string(cpu) + ", which this process cannot use" +
                                         (topo.synthetic() ? " (synthetic topology: set start_workers=false)" : ""));
        }
      }
    }
  }
  SPDLOG_INFO("hrpc {}", topo.Describe());
  for (auto& spec : plan) {
    auto g = std::make_unique<NetworkGroup>(spec);
    if (options.create_pools) {
      mempool::PoolOptions po = options.pool;
      po.numa_node = BindableNode(spec.numa_node);
      auto pool = mempool::Pool::Create(po);
      if (!pool.ok()) return pool.status().WithContext("group " + std::to_string(spec.id) + " pool");
      g->pool_ = std::move(pool).value();
    }
    if (options.start_workers) {
      for (size_t i = 0; i < spec.worker_cpus.size(); ++i) {
        coro::WorkerOptions wo;
        wo.sched = options.sched;
        wo.sched.name = (options.sched.name.empty() ? std::string("hrpc") : options.sched.name) + "-g" +
                        std::to_string(spec.id) + "w" + std::to_string(i);
        wo.cpu = spec.worker_cpus[i];
        auto w = coro::Worker::Start(std::move(wo));
        if (!w.ok()) return w.status().WithContext("group " + std::to_string(spec.id) + " worker");
        g->workers_.push_back(std::move(w).value());
      }
    }
    gs->groups_.push_back(std::move(g));
  }
  SPDLOG_INFO("hrpc network groups {}", gs->DescribeLayout());
  return gs;
}

Result<std::unique_ptr<NetworkGroups>> NetworkGroups::Create(GroupOptions options) {
  HRPC_ASSIGN_OR_RETURN(Topology topo, Topology::FromMachine());
  return Create(topo, std::move(options));
}

std::string NetworkGroups::DescribeLayout() const {
  std::string s(GroupPolicyName(options_.policy));
  s += ':';
  for (const auto& g : groups_) {
    s += " g" + std::to_string(g->id()) + "{node" + std::to_string(g->numa_node()) + " cpus " + CpuList(g->cpus()) +
         " workers[" + CpuList(g->spec().worker_cpus) + "]" + (g->num_workers() ? "" : " (not started)") +
         (g->has_pool() ? " pool" + (g->pool().numa_node() >= 0 ? "@node" + std::to_string(g->pool().numa_node()) : std::string("(unbound)")) : std::string()) +
         "}";
  }
  return s;
}

}  // namespace hrpc::groups
