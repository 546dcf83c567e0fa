// Topology: hwloc -> plain values.
#include "hrpc/groups/topology.h"

#include <hwloc.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

namespace hrpc::groups {

namespace {

std::vector<int> BitmapToVector(hwloc_const_bitmap_t b) {
  std::vector<int> out;
  if (!b) return out;
  unsigned i;
  hwloc_bitmap_foreach_begin(i, b) { out.push_back(static_cast<int>(i)); }
  hwloc_bitmap_foreach_end();
  return out;
}

std::string Ranges(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!s.empty()) s += ',';
    s += std::to_string(v[i]);
    if (j > i) s += '-' + std::to_string(v[j]);
    i = j + 1;
  }
  return s;
}

struct HwlocTopo {
  hwloc_topology_t t = nullptr;
  ~HwlocTopo() {
    if (t) hwloc_topology_destroy(t);
  }
};

}  // namespace

Result<Topology> Topology::FromMachine() {
  HwlocTopo h;
  if (hwloc_topology_init(&h.t) != 0) return InternalError("hwloc_topology_init failed");
  if (hwloc_topology_load(h.t) != 0) return InternalError("hwloc_topology_load failed");
  return Build(h.t, false);
}

Result<Topology> Topology::FromXml(const std::string& path) {
  HwlocTopo h;
  if (hwloc_topology_init(&h.t) != 0) return InternalError("hwloc_topology_init failed");
  if (hwloc_topology_set_xml(h.t, path.c_str()) != 0) {
    return InvalidArgumentError("hwloc cannot read topology XML '" + path + "'");
  }
  if (hwloc_topology_load(h.t) != 0) return InvalidArgumentError("hwloc_topology_load failed for '" + path + "'");
  return Build(h.t, true);
}

Result<Topology> Topology::Build(void* hwloc_topology, bool from_xml) {
  auto t = static_cast<hwloc_topology_t>(hwloc_topology);
  Topology topo;
  auto& nodes = topo.nodes_;
  auto& cores = topo.cores_;
  std::map<int, size_t> node_pos;  // os index -> position in nodes
  int nnodes = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < nnodes; ++i) {
    hwloc_obj_t n = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(i));
    NumaNodeInfo info;
    info.os_index = static_cast<int>(n->os_index);
    node_pos[info.os_index] = nodes.size();
    nodes.push_back(std::move(info));
  }
  if (nodes.empty()) {
    nodes.push_back(NumaNodeInfo{});
    node_pos[0] = 0;
  }
  // Cores; machines (or XML) without core objects fall back to one "core" per PU.
  hwloc_obj_type_t unit = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  int ncores = hwloc_get_nbobjs_by_type(t, unit);
  for (int i = 0; i < ncores; ++i) {
    hwloc_obj_t c = hwloc_get_obj_by_type(t, unit, static_cast<unsigned>(i));
    CoreInfo core;
    core.index = i;
    core.cpus = BitmapToVector(c->cpuset);
    if (core.cpus.empty()) continue;  // disallowed by our cpuset
    int node = c->nodeset ? hwloc_bitmap_first(c->nodeset) : -1;
    if (node < 0 || !node_pos.count(node)) node = nodes.front().os_index;
    core.numa_node = node;
    NumaNodeInfo& n = nodes[node_pos[node]];
    n.cores.push_back(static_cast<int>(cores.size()));
    n.cpus.insert(n.cpus.end(), core.cpus.begin(), core.cpus.end());
    cores.push_back(std::move(core));
  }
  for (auto& n : nodes) std::sort(n.cpus.begin(), n.cpus.end());
  if (cores.empty()) return InternalError("hwloc topology has no usable cpus");

  topo.from_xml_ = from_xml;
  return topo;
}

size_t Topology::num_cpus() const noexcept {
  size_t n = 0;
  for (const auto& c : cores_) n += c.cpus.size();
  return n;
}

int Topology::NumaNodeOfCpu(int cpu) const noexcept {
  for (const auto& c : cores_) {
    if (std::find(c.cpus.begin(), c.cpus.end(), cpu) != c.cpus.end()) return c.numa_node;
  }
  return -1;
}

int Topology::NumaNodeOfDevice(std::string_view device_name) const {
  if (from_xml_ || device_name.empty() || device_name.find('/') != std::string_view::npos) return -1;
  const std::string name(device_name);
  // The PCI function itself, or (virtio, nvme namespaces) the PCI parent of the device node.
  for (const char* fmt : {"/sys/class/infiniband/%s/device/numa_node", "/sys/class/net/%s/device/numa_node",
                          "/sys/block/%s/device/numa_node", "/sys/block/%s/device/device/numa_node",
                          "/sys/class/net/%s/device/../numa_node", "/sys/block/%s/device/../numa_node"}) {
    char path[256];
    std::snprintf(path, sizeof path, fmt, name.c_str());
    if (std::FILE* f = std::fopen(path, "re")) {
      int node = -1;
      int n = std::fscanf(f, "%d", &node);
      std::fclose(f);
      if (n == 1) return node >= 0 ? node : -1;
    }
  }
  return -1;
}

std::string Topology::Describe() const {
  std::string s = std::string("topology (") + (from_xml_ ? "xml" : "machine") + "): " +
                  std::to_string(nodes_.size()) + " NUMA nodes, " + std::to_string(cores_.size()) + " cores, " +
                  std::to_string(num_cpus()) + " cpus:";
  for (const auto& n : nodes_) {
    s += " node" + std::to_string(n.os_index) + "{cores " + std::to_string(n.cores.size()) + " cpus " +
         Ranges(n.cpus) + "}";
  }
  return s;
}

}  // namespace hrpc::groups
