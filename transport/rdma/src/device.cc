// Device discovery, transport selection, and RdmaDomain (context + PD + the
// pool's ibv_reg_mr registration, once per arena: local access and MW_BIND
// only when memory windows are used, remote READ/WRITE otherwise).
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include <spdlog/spdlog.h>

#include "hrpc/transport/rdma.h"
#include "verbs.h"

namespace hrpc::transport {
namespace {

int SysfsNumaNode(const std::string& dev) {
  std::ifstream f("/sys/class/infiniband/" + dev + "/device/numa_node");
  int node = -1;
  if (f >> node) return node;
  return -1;
}

RdmaDeviceInfo QueryDevice(ibv_context* ctx) {
  RdmaDeviceInfo info;
  info.name = ibv_get_device_name(ctx->device);
  info.numa_node = SysfsNumaNode(info.name);
  ibv_device_attr_ex ax{};
  if (ibv_query_device_ex(ctx, nullptr, &ax) == 0) {
    const ibv_device_attr& a = ax.orig_attr;
    info.max_qp_wr = static_cast<uint32_t>(a.max_qp_wr);
    info.max_sge = static_cast<uint32_t>(a.max_sge);
    info.max_sge_rd = static_cast<uint32_t>(a.max_sge_rd);
    info.max_cqe = static_cast<uint32_t>(a.max_cqe);
    info.max_srq_wr = static_cast<uint32_t>(a.max_srq_wr);
    info.max_qp_rd_atom = static_cast<uint32_t>(a.max_qp_rd_atom);
    info.max_mw = static_cast<uint32_t>(a.max_mw);
    info.mw_type2 = (a.device_cap_flags & (IBV_DEVICE_MEM_WINDOW_TYPE_2A | IBV_DEVICE_MEM_WINDOW_TYPE_2B)) != 0 &&
                    a.max_mw > 0;
  }
  ibv_port_attr p{};
  if (ibv_query_port(ctx, 1, &p) == 0) {
    info.port_active = p.state == IBV_PORT_ACTIVE;
    info.max_msg_bytes = p.max_msg_sz;
  }
  if (info.max_sge_rd == 0) info.max_sge_rd = info.max_sge;
  if (info.max_msg_bytes == 0) info.max_msg_bytes = 1u << 30;
  return info;
}

// CAP_IPC_LOCK in the process's effective set (CapEff of /proc/self/status):
// pinned memory is then not held to RLIMIT_MEMLOCK.
bool HasIpcLockCapability() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    const unsigned long long eff = std::strtoull(line.c_str() + 7, nullptr, 16);
    return (eff >> 14) & 1;  // CAP_IPC_LOCK
  }
  return false;
}

// ibv_reg_mr once per arena; the handle keeps the ibv_mr*.
class VerbsRegistrar final : public mempool::Registrar {
 public:
  VerbsRegistrar(ibv_pd* pd, int access) : pd_(pd), access_(access) {}
  std::string_view name() const override { return "ibverbs"; }
  Result<mempool::RegionKey> Register(void* base, size_t len, [[maybe_unused]] int numa_node) override {
    ibv_mr* mr = ibv_reg_mr(pd_, base, len, access_);
    if (mr == nullptr) {
      const int err = errno;
      std::string what = "ibv_reg_mr(arena of " + std::to_string(len) + " bytes)";
      // Registering pins the arena, and pinned memory counts against
      // RLIMIT_MEMLOCK for a process without CAP_IPC_LOCK: the usual reason
      // a registration is refused, which ENOMEM alone does not say.
      rlimit lim{};
      if ((err == ENOMEM || err == EPERM || err == EAGAIN) && !HasIpcLockCapability() &&
          getrlimit(RLIMIT_MEMLOCK, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
        what += "; this process may lock " + std::to_string(lim.rlim_cur) +
                " bytes (RLIMIT_MEMLOCK) and every registered arena counts: raise it (ulimit -l unlimited, "
                "systemd LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK";
      }
      return ErrnoStatus(err, what);
    }
    SPDLOG_DEBUG("rdma: registered arena {} (+{}) node {}: lkey {:#x} rkey {:#x}", base, len, numa_node, mr->lkey,
                 mr->rkey);
    return mempool::RegionKey{mr->lkey, mr->rkey, reinterpret_cast<uint64_t>(mr)};
  }
  void Unregister(void*, size_t, const mempool::RegionKey& key) override {
    ibv_dereg_mr(reinterpret_cast<ibv_mr*>(key.handle));
  }

 private:
  ibv_pd* pd_;
  int access_;
};

class DomainImpl final : public RdmaDomain {
 public:
  DomainImpl(mempool::Pool& pool, rdma::DeviceListPtr list, ibv_context* ctx, RdmaDeviceInfo info)
      : pool_(pool), list_(std::move(list)), ctx_(ctx), info_(std::move(info)) {}
  ~DomainImpl() override {
    if (attached_) pool_.DetachRegistrar(slot_);  // ibv_dereg_mr of every arena, before the PD goes
  }

  Status Init(bool want_mw) {
    pd_.reset(ibv_alloc_pd(ctx_));
    if (!pd_) return ErrnoStatus(errno, "ibv_alloc_pd(" + info_.name + ")");
    mw_ = want_mw && info_.mw_type2;
    // With windows the arena MR grants no remote access at all: its rkey opens
    // nothing, only a window bound over an exposed range does. (Binding a
    // window with remote write needs LOCAL_WRITE on the MR, which the receive
    // buffers and READ targets need anyway.)
    const int access = mw_ ? IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_MW_BIND
                           : IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
    registrar_ = std::make_unique<VerbsRegistrar>(pd_.get(), access);
    HRPC_ASSIGN_OR_RETURN(slot_, pool_.AttachRegistrar(registrar_.get()));
    attached_ = true;
    SPDLOG_INFO("rdma: domain on {} (numa {}): max_sge {} max_msg {} mw_type2 {} -> exposure by {}", info_.name,
                info_.numa_node, info_.max_sge, info_.max_msg_bytes, info_.mw_type2,
                mw_ ? "memory windows" : "arena MR rkey");
    return Status::Ok();
  }

  const RdmaDeviceInfo& device() const override { return info_; }
  mempool::Pool& pool() const override { return pool_; }
  mempool::RegistrarSlot registrar_slot() const override { return slot_; }
  bool memory_windows() const override { return mw_; }
  ibv_context* context() const override { return ctx_; }
  ibv_pd* pd() const override { return pd_.get(); }

 private:
  mempool::Pool& pool_;
  // Dependency order: device list (contexts) -> PD -> registrar -> attachment.
  rdma::DeviceListPtr list_;
  ibv_context* ctx_;
  RdmaDeviceInfo info_;
  rdma::PdPtr pd_;
  std::unique_ptr<VerbsRegistrar> registrar_;
  mempool::RegistrarSlot slot_ = 0;
  bool attached_ = false;
  bool mw_ = false;
};

}  // namespace

std::vector<RdmaDeviceInfo> ListRdmaDevices() {
  std::vector<RdmaDeviceInfo> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return out;
  for (int i = 0; i < n; ++i) {
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx == nullptr) continue;
    out.push_back(QueryDevice(ctx));
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
  return out;
}

bool RdmaDeviceAvailable() {
  for (const auto& d : ListRdmaDevices()) {
    if (d.port_active) return true;
  }
  return false;
}

Result<std::shared_ptr<RdmaDomain>> RdmaDomain::Open(mempool::Pool& pool, RdmaDomainOptions options) {
  // librdmacm's contexts: a QP made on an rdma_cm_id must use a PD of the very
  // context rdmacm opened for that device.
  int n = 0;
  rdma::DeviceListPtr list(rdma_get_devices(&n));
  if (!list || n == 0) return NotFoundError("no RDMA device (rdma_get_devices found none)");
  const int want_node = options.numa_node >= 0 ? options.numa_node : pool.numa_node();
  ibv_context* pick = nullptr;
  RdmaDeviceInfo pick_info;
  int best = -1;
  for (int i = 0; i < n; ++i) {
    ibv_context* ctx = list.get()[i];
    RdmaDeviceInfo info = QueryDevice(ctx);
    if (!options.device.empty()) {
      if (info.name == options.device) {
        pick = ctx;
        pick_info = std::move(info);
        break;
      }
      continue;
    }
    // Score: active port first, then the wanted NUMA node.
    const int score = (info.port_active ? 2 : 0) + (want_node >= 0 && info.numa_node == want_node ? 1 : 0);
    if (score > best) {
      best = score;
      pick = ctx;
      pick_info = std::move(info);
    }
  }
  if (pick == nullptr) return NotFoundError("no RDMA device named '" + options.device + "'");
  auto d = std::make_shared<DomainImpl>(pool, std::move(list), pick, std::move(pick_info));
  HRPC_TRY(d->Init(options.use_memory_windows));
  return std::shared_ptr<RdmaDomain>(std::move(d));
}

}  // namespace hrpc::transport
