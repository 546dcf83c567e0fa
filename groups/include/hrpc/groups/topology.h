// Topology: the machine's NUMA nodes and cores as read by hwloc, copied into
// plain values (no hwloc handle is kept), so it can be logged, compared and
// built from an XML description in tests.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"

namespace hrpc::groups {

struct CoreInfo {
  int index = 0;          // hwloc logical index among cores
  int numa_node = 0;      // OS index of the NUMA node holding the core
  std::vector<int> cpus;  // OS indexes of its hardware threads (what affinity masks use)
};

struct NumaNodeInfo {
  int os_index = 0;
  std::vector<int> cores;  // indexes into Topology::cores()
  std::vector<int> cpus;   // all hardware threads of the node, ascending
};

class Topology final {
 public:
  // The machine this process runs on (restricted to the cpus it may use).
  static Result<Topology> FromMachine();
  // An hwloc XML file (e.g. `lstopo --input "node:2 core:4 pu:1" --of xml`).
  static Result<Topology> FromXml(const std::string& path);

  const std::vector<NumaNodeInfo>& nodes() const noexcept { return nodes_; }
  const std::vector<CoreInfo>& cores() const noexcept { return cores_; }
  size_t num_cpus() const noexcept;
  bool synthetic() const noexcept { return from_xml_; }  // true: not this machine
  // NUMA node of an OS cpu index, or -1.
  int NumaNodeOfCpu(int cpu) const noexcept;
  // NUMA node of a device of this machine (RDMA "mlx5_0"/"rxe0", NIC "eth0",
  // disk "nvme0n1"), from its PCI device's sysfs numa_node; -1 if unknown or
  // virtual, and always -1 for a synthetic (XML) topology. ADDITION to the contract.
  // (sysfs rather than hwloc I/O discovery: that loads libpciaccess, which costs
  // seconds and leaks its PCI database.)
  int NumaNodeOfDevice(std::string_view device_name) const;
  // One line: "2 NUMA nodes, 8 cores, 8 cpus: node0{cpus 0-3} node1{cpus 4-7}".
  std::string Describe() const;

 private:
  static Result<Topology> Build(void* hwloc_topology, bool from_xml);  // hwloc_topology_t
  std::vector<NumaNodeInfo> nodes_;
  std::vector<CoreInfo> cores_;
  bool from_xml_ = false;
};

}  // namespace hrpc::groups
