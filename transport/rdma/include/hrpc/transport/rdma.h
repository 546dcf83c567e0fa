// hrpc::transport over RDMA: ibverbs RC queue pairs, connected with rdmacm.
//
// Control messages are RDMA SEND_WITH_IMM into receive buffers pre-posted from
// the pool (the immediate carries returned credits); payloads are RDMA READ /
// WRITE straight between registered arenas. Nothing is copied by the CPU except
// a control message with more slices than the device's max_sge (coalesced
// through CountedCopy) — inline sends are copied by the provider at post time.
//
// Resources (docs/rdma.md has the full picture):
//  * RdmaDomain — one per device per network group (share it between the
//    group's workers): the verbs context (librdmacm's), one protection domain,
//    and a mempool Registrar that calls ibv_reg_mr ONCE per arena: with
//    memory windows LOCAL_WRITE | MW_BIND only (the arena's rkey opens
//    nothing remotely), without them LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE.
//    Holds the pool's registrar slot until destroyed.
//  * Transport (one per worker): an rdmacm event channel, one CQ with a
//    completion channel (both driven by the worker's scheduler through
//    coro::Poller hooks), optionally one shared receive queue.
//  * Connection: one RC QP + its rdma_cm_id; receive slots, credits, the
//    memory windows it exposed.
//
// Exposure: with memory windows (type 2, bound on the connection's QP) a
// descriptor's rkey reaches exactly the exposed range with the exposed access,
// only from that connection's peer, until Revoke() invalidates it; the arena
// MRs carry no remote access, so a peer that learns an arena's rkey reaches
// nothing with it. Without
// them (device lacks MW type 2, or use_memory_windows=false) the descriptor
// carries the arena MR's rkey: the peer can then read and write the WHOLE
// arena the buffer lives in, and Revoke() only forgets the exposure locally.
//
// Refusals differ from TCP: on RDMA a bad key, an out-of-range address or a
// wrong access is detected by the TARGET's device, which NAKs; the requester's
// op completes with PERMISSION_DENIED, but the RC QP is then in the error state
// on both sides, so the connection fails (status() becomes UNAVAILABLE). This
// is verbs semantics and cannot be hidden without a reconnect.
//
// Threading: as transport.h — everything on the transport's worker.
//
// Built with HRPC_WITH_RDMA=OFF, this API is still there and links no verbs
// library: no devices are listed, and opening a domain or a transport returns
// UNIMPLEMENTED.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/mempool/registrar.h"
#include "hrpc/transport/transport.h"

struct ibv_context;
struct ibv_pd;

namespace hrpc::transport {

// What a device offers (from ibv_query_device / ibv_query_port), for logs,
// tests and docs.
struct RdmaDeviceInfo {
  std::string name;
  int numa_node = -1;          // sysfs device/numa_node; -1 for soft devices
  bool port_active = false;    // port 1
  uint32_t max_qp_wr = 0;
  uint32_t max_sge = 0;
  uint32_t max_sge_rd = 0;
  uint32_t max_cqe = 0;
  uint32_t max_srq_wr = 0;
  uint32_t max_qp_rd_atom = 0;
  uint32_t max_msg_bytes = 0;  // port max_msg_sz: larger one-sided ops are split
  uint32_t max_mw = 0;
  bool mw_type2 = false;       // IBV_DEVICE_MEM_WINDOW_TYPE_2A/2B
};

// Every RDMA device on this machine (empty when there is none or no rdma-core).
std::vector<RdmaDeviceInfo> ListRdmaDevices();

// True when some RDMA device has an active port.
bool RdmaDeviceAvailable();

struct RdmaDomainOptions {
  std::string device;  // by name ("rxe0", "mlx5_0"); "" = pick by NUMA node
  int numa_node = -1;  // prefer a device on this node (-1: the pool's node)
  // Register arenas with IBV_ACCESS_MW_BIND and expose through type-2 memory
  // windows when the device supports them.
  bool use_memory_windows = true;
};

// Device context + protection domain + the pool's registration. Create one per
// device per network group and share it (shared_ptr) between that group's
// worker transports. Must outlive them; `pool` must outlive the domain.
class RdmaDomain {
 public:
  virtual ~RdmaDomain() = default;
  // NOT_FOUND when no (matching) device exists; the verbs error otherwise;
  // UNIMPLEMENTED in a build without RDMA.
  static Result<std::shared_ptr<RdmaDomain>> Open(mempool::Pool& pool, RdmaDomainOptions options = {});

  virtual const RdmaDeviceInfo& device() const = 0;
  virtual mempool::Pool& pool() const = 0;
  virtual mempool::RegistrarSlot registrar_slot() const = 0;
  virtual bool memory_windows() const = 0;  // exposures use MWs
  virtual ibv_context* context() const = 0;
  virtual ibv_pd* pd() const = 0;
};

enum class CompletionMode : uint8_t {
  // Poll the CQ on every scheduler iteration; when it is empty arm it
  // (ibv_req_notify_cq, then poll once more to close the race) and let the
  // worker sleep on the completion channel after its spin_budget.
  kBlocking,
  // Never sleep: the worker busy-polls the CQ (burns its core; lowest latency).
  kPolling,
};

struct RdmaOptions {
  TransportOptions common;  // max_message_bytes, recv_depth (credits), timeouts
  // Shared domain of the network group; when null the transport opens its own
  // (with `domain_options`), which takes one of the pool's registrar slots.
  std::shared_ptr<RdmaDomain> domain;
  RdmaDomainOptions domain_options;
  CompletionMode completion = CompletionMode::kBlocking;
  uint32_t cq_depth = 4096;
  uint32_t sq_depth = 256;        // send WQEs per QP (one is kept for draining)
  uint32_t signal_interval = 16;  // at least every Nth send WQE is signaled
  // Inline sends up to this many bytes (capped by the QP's max_inline_data);
  // 0 disables inlining.
  uint32_t max_inline = 256;
  // Shared receive queue per transport (many connections): receive slots come
  // from one queue of srq_depth buffers instead of recv_depth per connection.
  // Credits still bound each peer to recv_depth; RNR-free only while
  // srq_depth >= connections * (recv_depth + control slots) — rnr_retry is the
  // backstop beyond that.
  bool use_srq = false;
  uint32_t srq_depth = 1024;
  uint8_t rnr_retry = 7;    // 7 = retry forever (RNR should not happen: credits)
  uint8_t retry_count = 7;  // transport retries before a dead peer fails the QP
  uint8_t max_rd_atomic = 16;  // outstanding RDMA READs per QP (capped by device)
};

// Counters of one RDMA connection, for tests and monitoring.
struct RdmaConnectionStats {
  uint64_t sends = 0, inline_sends = 0, signaled_sends = 0, coalesced_sends = 0;
  uint64_t credit_messages = 0;  // credit-only messages sent
  // Credits given back to the peer (on credit-only and data messages), credits
  // received from it, and the sends this side may post now.
  uint64_t credits_granted = 0, credits_received = 0;
  uint32_t send_credits = 0;
  uint64_t recvs = 0;
  // Receive slots whose message the application holds and that wait for a
  // fresh pool block (their credits wait with them); refills the pool refused.
  uint32_t slots_awaiting_refill = 0;
  uint64_t refill_refusals = 0;
  uint64_t one_sided_ops = 0, one_sided_wrs = 0;
  uint32_t sq_waiters = 0;  // one-sided ops and exposures waiting for a send-queue slot now
  uint64_t mw_binds = 0, mw_invalidates = 0;
  // Keepalive: PINGs sent on an idle connection, PONGs answering the peer's,
  // and whether this connection was failed by the dead-peer timeout (0 or 1).
  uint64_t pings_sent = 0, pongs_sent = 0, dead_peer_timeouts = 0;
  uint32_t inline_threshold = 0;  // effective (min of option and QP max_inline_data)
  uint32_t max_send_sge = 0;
  uint32_t qp_num = 0;
};
// Stats of `c` when it is an RDMA connection, else nullopt.
std::optional<RdmaConnectionStats> RdmaStatsOf(const Connection& c);
// A transport's resources: the connections it keeps (open, in a listener's
// queue, or draining before they are freed) and its completion queue's
// entries, those reserved by the connections and those it has (it grows up to
// the device's max_cqe; a worker has no room for more connections past it).
struct RdmaTransportStats {
  uint32_t connections = 0;
  uint32_t cq_entries_reserved = 0, cq_entries = 0;
};
// Call on the transport's scheduler thread. nullopt unless `t` is an RDMA transport.
std::optional<RdmaTransportStats> RdmaTransportStatsOf(const Transport& t);
// The domain `t` uses when it is an RDMA transport, else null (its registrar
// slot gives a buffer's arena MR keys: Buffer::key(slot)).
std::shared_ptr<RdmaDomain> RdmaDomainOf(const Transport& t);

// Call on `scheduler`'s thread; `scheduler` and `pool` must outlive it.
// NOT_FOUND when there is no RDMA device; FAILED_PRECONDITION when a given
// domain belongs to another pool; UNIMPLEMENTED in a build without RDMA.
Result<std::unique_ptr<Transport>> CreateRdmaTransport(coro::Scheduler& scheduler, mempool::Pool& pool,
                                                       RdmaOptions options = {});

}  // namespace hrpc::transport
