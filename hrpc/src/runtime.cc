#include <unistd.h>

#include <cstdlib>
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <string>

#include <spdlog/spdlog.h>

#include "hrpc/coroutine/sync.h"
#include "hrpc/groups/group.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/transport/rdma.h"
#include "hrpc/transport/loopback.h"
#include "hrpc/transport/tcp.h"
#include "observability.h"
#include "peer_table.h"
#include "runtime_internal.h"

namespace hrpc {

std::string_view TransportChoiceName(TransportChoice c) noexcept {
  switch (c) {
    case TransportChoice::kAuto: return "auto";
    case TransportChoice::kTcp: return "tcp";
    case TransportChoice::kRdma: return "rdma";
  }
  return "?";
}

RuntimeOptions RuntimeOptions::FromEnv() {
  RuntimeOptions o;
  const char* v = std::getenv("HRPC_TRANSPORT");
  if (v == nullptr || *v == '\0') return o;
  std::string_view s(v);
  if (s == "tcp") {
    o.transport_choice = TransportChoice::kTcp;
  } else if (s == "rdma") {
    o.transport_choice = TransportChoice::kRdma;
  } else if (s != "auto") {
    SPDLOG_WARN("hrpc: ignoring HRPC_TRANSPORT={} (want tcp|rdma|auto)", s);
  }
  return o;
}

bool RdmaDeviceProbe() { return transport::RdmaDeviceAvailable(); }

Result<std::string> ResolveUri(std::string_view uri, TransportChoice choice) {
  if (uri.find("://") == std::string_view::npos) {
    std::string scheme;
    switch (choice) {
      case TransportChoice::kTcp: scheme = "tcp"; break;
      case TransportChoice::kRdma: scheme = "rdma"; break;
      case TransportChoice::kAuto: scheme = RdmaDeviceProbe() ? "rdma" : "tcp"; break;
    }
    std::string full = scheme + "://" + std::string(uri);
    HRPC_TRY(transport::ParseUri(full));
    return full;
  }
  HRPC_ASSIGN_OR_RETURN(transport::Uri u, transport::ParseUri(uri));
  return u.ToString();
}

// --- Runtime -----------------------------------------------------------------

Result<std::unique_ptr<Runtime>> Runtime::Create(RuntimeOptions options) {
  HRPC_ASSIGN_OR_RETURN(auto core, internal::WorkerSet::Create(options));
  return std::unique_ptr<Runtime>(new Runtime(std::move(core)));
}

Runtime::~Runtime() = default;

const RuntimeOptions& Runtime::options() const noexcept { return core_->options(); }
size_t Runtime::num_workers() const noexcept { return core_->size(); }
coro::Scheduler& Runtime::scheduler(size_t worker) { return core_->scheduler(worker); }
mempool::Pool& Runtime::pool(size_t worker) { return core_->pool(worker); }
size_t Runtime::num_groups() const noexcept { return core_->num_groups(); }
size_t Runtime::group_of(size_t worker) const { return core_->group_of(worker); }
std::vector<size_t> Runtime::workers_of_group(size_t group) const {
  std::vector<size_t> out;
  for (size_t w = 0; w < core_->size(); ++w) {
    if (core_->group_of(w) == group) out.push_back(w);
  }
  return out;
}
std::vector<int> Runtime::SpreadInstances(size_t instances) const {
  return groups::SpreadInstances(instances, core_->num_groups());
}
int Runtime::CurrentWorker() const noexcept { return core_->CurrentIndex(); }
RuntimeStats Runtime::stats() const { return core_->Stats(); }
std::vector<MethodStats> Runtime::ClientStats() const { return core_->client_stats().Snapshot(); }
std::string Runtime::MetricsText() const { return internal::SerializeMetrics(core_->runtime_metrics().Collect()); }

namespace internal {
namespace {

// The thread behind ReapLater().
class Reaper {
 public:
  static Reaper& Get() {
    static Reaper* r = [] {
      // The log registry is built first, so it is destroyed after
      // WaitAtExit() has run: handlers run in the reverse order of
      // registration, interleaved with static destructors.
      spdlog::default_logger_raw();
      auto* reaper = new Reaper;  // never destroyed
      reaper->thread_ = std::thread([reaper] { reaper->Run(); });
      std::atexit(&Reaper::WaitAtExit);
      return reaper;
    }();
    return *r;
  }

  void Add(std::function<void()> task) {
    {
      std::lock_guard lock(mu_);
      if (!exiting_) {
        queue_.push_back(std::move(task));
        cv_.notify_all();
        return;
      }
    }
    std::thread(std::move(task)).detach();  // the process is already exiting
  }

 private:
  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty() || exiting_; });
      if (queue_.empty()) return;
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      task();
      task = nullptr;  // what it holds goes here too, not under the lock
      lock.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }

  static void WaitAtExit() {
    Reaper& r = Get();
    if (getpid() != r.pid_) return;  // a forked child: the reaper thread is not in it
    std::unique_lock lock(r.mu_);
    r.exiting_ = true;
    r.cv_.notify_all();
    // exit() called on a worker that a queued stop waits for would wait forever.
    const bool drained = r.cv_.wait_for(lock, std::chrono::seconds(10), [&] { return r.queue_.empty() && !r.busy_; });
    lock.unlock();
    if (drained) {
      r.thread_.join();
    } else {
      SPDLOG_WARN("hrpc: process exits while a released runtime is still stopping");
      r.thread_.detach();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false;
  bool exiting_ = false;
  const pid_t pid_ = getpid();
  std::thread thread_;
};

}  // namespace

void ReapLater(std::function<void()> task) { Reaper::Get().Add(std::move(task)); }

WorkerSet::WorkerSet(const RuntimeOptions& o) : options_(o) {}

Result<std::shared_ptr<WorkerSet>> WorkerSet::Create(const RuntimeOptions& options) {
  // The last reference may drop on one of the set's own workers (the last
  // channel destroyed in a handler, or a stream ending after its channel):
  // the reaper thread stops and deletes that set.
  std::shared_ptr<WorkerSet> set(new WorkerSet(options), [](WorkerSet* ws) {
    if (ws->CurrentIndex() >= 0) {
      ReapLater([ws] { delete ws; });
    } else {
      delete ws;
    }
  });
  if (options.groups != nullptr) {
    set->num_groups_ = options.groups->size();
    for (size_t g = 0; g < options.groups->size(); ++g) {
      groups::NetworkGroup& group = options.groups->group(g);
      if (!group.has_pool()) return FailedPreconditionError("network group without a pool");
      for (size_t w = 0; w < group.num_workers(); ++w) {
        set->slots_.push_back(Slot{&group.worker(w), &group.pool(), g, {}, nullptr});
      }
    }
    if (set->slots_.empty()) return InvalidArgumentError("network groups have no workers");
  } else {
    if (options.workers == 0) return InvalidArgumentError("RuntimeOptions.workers must be >= 1");
    HRPC_ASSIGN_OR_RETURN(auto pool, mempool::Pool::Create(options.pool));
    set->own_pools_.push_back(std::move(pool));
    for (size_t i = 0; i < options.workers; ++i) {
      coro::WorkerOptions wo;
      wo.sched.name = options.name + "-w" + std::to_string(i);
      wo.sched.spin_budget = options.spin_budget;
      wo.sched.stack_bytes = options.stack_bytes;
      wo.cpu = options.cpus.empty() ? -1 : options.cpus[i % options.cpus.size()];
      HRPC_ASSIGN_OR_RETURN(auto worker, coro::Worker::Start(wo));
      set->slots_.push_back(Slot{worker.get(), set->own_pools_.back().get(), 0, {}, nullptr});
      set->own_workers_.push_back(std::move(worker));
    }
  }
  for (size_t i = 0; i < set->slots_.size(); ++i) set->slots_[i].peers = std::make_unique<PeerTable>(*set, i);
  return set;
}

WorkerSet::~WorkerSet() {
  CloseConnections();
  DestroyTransports();
  for (size_t i = 0; i < own_workers_.size(); ++i) {
    RunOn(i, [this, i] {
      const auto st = scheduler(i).stats();
      if (st.alive > 1) {  // this coroutine itself is alive
        SPDLOG_WARN("hrpc: worker {} stops with {} coroutines still suspended", i, st.alive - 1);
      }
      return Status::Ok();
    }).IgnoreError();
  }
  own_workers_.clear();  // stop + join
  for (auto& [pool, reg] : regs_) {
    if (reg.attached) pool->DetachRegistrar(reg.tcp_slot);
  }
  regs_.clear();
  own_pools_.clear();
}

void WorkerSet::CloseConnections() {
  // A set whose Create failed part way gave its workers no client tables.
  if (slots_.empty() || !slots_.back().peers) return;
  for (size_t i = 0; i < slots_.size(); ++i) {
    RunOn(i, [this, i] {
      slots_[i].peers->CloseAll(CancelledError("runtime stopped"));
      return Status::Ok();
    }).IgnoreError();
  }
  // Readers notice their closed connections and leave; a connect in progress
  // ends within its timeouts (resolve, handshake, authentication).
  const auto until =
      std::chrono::steady_clock::now() + 3 * options_.transport.connect_timeout + std::chrono::seconds(5);
  for (size_t i = 0; i < slots_.size(); ++i) {
    while (slots_[i].peers->live_links() > 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    RunOn(i, [this, i] {
      if (const int64_t live = slots_[i].peers->live_links(); live > 0) {
        // A coroutine still running would resume in a freed table: kept.
        SPDLOG_WARN("hrpc: worker {} stops with {} client connections or connects still alive; their table is "
                    "left allocated",
                    i, live);
        (void)slots_[i].peers.release();
      } else {
        slots_[i].peers.reset();
      }
      return Status::Ok();
    }).IgnoreError();
  }
}

int WorkerSet::CurrentIndex() const noexcept {
  coro::Scheduler* cur = coro::Scheduler::Current();
  if (cur == nullptr) return -1;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (&slots_[i].worker->scheduler() == cur) return static_cast<int>(i);
  }
  return -1;
}

WorkerSet::PoolReg& WorkerSet::RegFor(mempool::Pool* pool) { return regs_[pool]; }

Result<transport::Transport*> WorkerSet::TransportFor(size_t i, std::string_view scheme) {
  Slot& slot = slots_[i];
  auto it = slot.transports.find(scheme);
  if (it != slot.transports.end()) return it->second.get();
  std::unique_ptr<transport::Transport> t;
  coro::Scheduler& sched = slot.worker->scheduler();
  if (scheme == "tcp") {
    transport::TcpOptions to = options_.tcp;
    {
      std::lock_guard lock(regs_mu_);
      PoolReg& reg = RegFor(slot.pool);
      if (!reg.attached) {
        reg.tcp_registrar = transport::MakeTcpRegistrar();
        HRPC_ASSIGN_OR_RETURN(reg.tcp_slot, slot.pool->AttachRegistrar(reg.tcp_registrar.get()));
        reg.attached = true;
      }
      to.registrar_slot = reg.tcp_slot;
    }
    to.common = options_.transport;
    to.reuse_port = true;
    HRPC_ASSIGN_OR_RETURN(t, transport::CreateTcpTransport(sched, *slot.pool, to));
  } else if (scheme == "loop") {
    if (!options_.loopback) return FailedPreconditionError("loop:// needs RuntimeOptions.loopback (a LoopbackNetwork)");
    HRPC_ASSIGN_OR_RETURN(t, transport::CreateLoopbackTransport(options_.loopback, sched, *slot.pool,
                                                                options_.transport));
  } else if (scheme == "rdma") {
    // One RdmaDomain (device context, PD, one ibv_reg_mr per arena) per pool,
    // shared by the transports of every worker that allocates from that pool.
    transport::RdmaOptions ro = options_.rdma;
    {
      std::lock_guard lock(regs_mu_);
      PoolReg& reg = RegFor(slot.pool);
      if (!reg.rdma_domain) {
        HRPC_ASSIGN_OR_RETURN(reg.rdma_domain, transport::RdmaDomain::Open(*slot.pool, options_.rdma.domain_options));
      }
      ro.domain = reg.rdma_domain;
    }
    ro.common = options_.transport;
    HRPC_ASSIGN_OR_RETURN(t, transport::CreateRdmaTransport(sched, *slot.pool, std::move(ro)));
  } else {
    return InvalidArgumentError("unknown transport scheme '" + std::string(scheme) + "'");
  }
  transport::Transport* raw = t.get();
  {
    std::lock_guard lock(transports_mu_);
    transport_entries_.push_back(TransportEntry{i, std::string(scheme), t->counters()});
  }
  slot.transports.emplace(std::string(scheme), std::move(t));
  transports_.fetch_add(1, std::memory_order_relaxed);
  return raw;
}

Status WorkerSet::RunOn(size_t i, std::function<Status()> fn) {
  if (CurrentIndex() == static_cast<int>(i) && !coro::this_coro::InCoroutine()) {
    return FailedPreconditionError("worker " + std::to_string(i) +
                                   " cannot wait for itself outside a coroutine (in a poller or callback)");
  }
  return coro::Async(scheduler(i), std::move(fn), "hrpc-runon").Get();
}

Status WorkerSet::CheckMayBlock(std::string_view what, std::string_view name) const {
  if (coro::this_coro::InCoroutine() || CurrentIndex() < 0) return Status::Ok();
  return FailedPreconditionError(std::string(what) + (name.empty() ? "" : " ") + std::string(name) +
                                 " would block a worker of its runtime outside a coroutine (in a poller or callback), "
                                 "which may be the worker that has to finish it: use the async form there");
}

void WorkerSet::DestroyTransports() {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].transports.empty()) continue;
    RunOn(i, [this, i] {
      slots_[i].transports.clear();
      return Status::Ok();
    }).IgnoreError();
  }
  transports_.store(0, std::memory_order_relaxed);
}

RuntimeStats WorkerSet::Stats() const {
  RuntimeStats s;
  s.workers = slots_.size();
  s.threads_started = own_workers_.size();
  std::vector<const mempool::Pool*> pools;
  for (const Slot& slot : slots_) {
    if (std::find(pools.begin(), pools.end(), slot.pool) == pools.end()) pools.push_back(slot.pool);
    const size_t open = slot.peers ? slot.peers->open_links() : 0;
    s.client_connections += open;
    s.client_connections_per_worker.push_back(open);
  }
  s.pools = pools.size();
  {
    std::lock_guard lock(regs_mu_);
    for (const auto& [pool, reg] : regs_) {
      s.tcp_registrations += reg.attached ? 1 : 0;
      s.rdma_domains += reg.rdma_domain ? 1 : 0;
    }
  }
  s.transports = transports_.load(std::memory_order_relaxed);
  s.servers = servers.load(std::memory_order_relaxed);
  s.channels = channels.load(std::memory_order_relaxed);
  return s;
}

MetricsCollector& WorkerSet::runtime_metrics() {
  std::lock_guard lock(metrics_mu_);
  if (!runtime_metrics_) runtime_metrics_ = std::make_unique<MetricsCollector>(*this, nullptr);
  return *runtime_metrics_;
}

std::vector<WorkerSet::TransportEntry> WorkerSet::TransportEntries() const {
  std::lock_guard lock(transports_mu_);
  return transport_entries_;
}

std::vector<std::string> WorkerSet::RdmaDevices() const {
  std::vector<std::string> out;
  std::lock_guard lock(regs_mu_);
  for (const auto& [pool, reg] : regs_) {
    if (!reg.rdma_domain) continue;
    const std::string& name = reg.rdma_domain->device().name;
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

std::vector<const mempool::Pool*> WorkerSet::Pools() const {
  std::vector<const mempool::Pool*> out;
  for (const Slot& slot : slots_) {
    if (std::find(out.begin(), out.end(), slot.pool) == out.end()) out.push_back(slot.pool);
  }
  return out;
}

size_t WorkerSet::pool_index(size_t i) const {
  const auto pools = Pools();
  return static_cast<size_t>(std::find(pools.begin(), pools.end(), slots_[i].pool) - pools.begin());
}

// --- frames -----------------------------------------------------------------

Result<SerializedMessage> SerializeWithRoom(mempool::Pool& pool, const google::protobuf::MessageLite& msg,
                                            size_t room) {
  const size_t len = msg.ByteSizeLong();
  if (len > wire::kMaxFrameBytes) return ResourceExhaustedError("message of " + std::to_string(len) + " bytes");
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer buf, pool.Allocate(room + len));
  if (len > 0) {
    msg.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(buf.data() + room));
  }
  return SerializedMessage{std::move(buf), room, len};
}

Result<SerializedMessage> RawWithRoom(mempool::Pool& pool, std::string_view bytes, size_t room) {
  if (bytes.size() > wire::kMaxFrameBytes) {
    return ResourceExhaustedError("message of " + std::to_string(bytes.size()) + " bytes");
  }
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer buf, pool.Allocate(room + bytes.size()));
  if (!bytes.empty()) std::memcpy(buf.data() + room, bytes.data(), bytes.size());  // a message, not payload
  return SerializedMessage{std::move(buf), room, bytes.size()};
}

Result<mempool::IoBuf> FinishFrame(SerializedMessage& m, wire::FrameHeader header,
                                   std::span<const wire::BulkDescriptor> descriptors) {
  const size_t prefix = wire::PrefixSize(descriptors.size(), header.request_id != 0);
  if (prefix > m.room) return InternalError("frame prefix does not fit the room reserved for it");
  header.message_len = static_cast<uint32_t>(m.message_len);
  const size_t start = m.room - prefix;
  auto out = std::as_writable_bytes(std::span<char>(m.buf.data() + start, prefix));
  HRPC_TRY(wire::EncodePrefix(header, descriptors, out));
  return mempool::IoBuf(m.buf.Slice(start, prefix + m.message_len));
}

Result<mempool::IoBuf> SmallFrame(mempool::Pool& pool, wire::FrameHeader header, std::string_view status_message) {
  if (status_message.size() > wire::kMaxStatusMessage) status_message = status_message.substr(0, wire::kMaxStatusMessage);
  header.status_message_len = static_cast<uint32_t>(status_message.size());
  header.message_len = 0;
  header.attachment_len = 0;
  const size_t len = wire::kHeaderSize + status_message.size();
  HRPC_ASSIGN_OR_RETURN(mempool::Buffer buf, pool.Allocate(len));
  auto out = std::as_writable_bytes(std::span<char>(buf.data(), len));
  HRPC_TRY(wire::EncodePrefix(header, {}, out));
  if (!status_message.empty()) std::memcpy(buf.data() + wire::kHeaderSize, status_message.data(), status_message.size());
  return mempool::IoBuf(std::move(buf));
}

namespace {
// memcpy of bytes [off, off+n) of `msg` (not payload: header, descriptors, message).
void GatherRange(const mempool::IoBuf& msg, size_t off, size_t n, char* dst) {
  for (size_t i = 0; i < msg.num_slices() && n > 0; ++i) {
    const mempool::Buffer& s = msg.slice(i);
    if (off >= s.size()) {
      off -= s.size();
      continue;
    }
    const size_t k = std::min(n, s.size() - off);
    std::memcpy(dst, s.data() + off, k);
    dst += k;
    n -= k;
    off = 0;
  }
}
}  // namespace

Result<wire::FrameHeader> PeekHeader(const mempool::IoBuf& msg) {
  std::byte head[wire::kHeaderSize];
  if (msg.size() < wire::kHeaderSize) {
    return DataLossError("hrpc wire: truncated frame: " + std::to_string(msg.size()) + " bytes");
  }
  GatherRange(msg, 0, wire::kHeaderSize, reinterpret_cast<char*>(head));
  return wire::DecodeHeader(std::span<const std::byte>(head, sizeof head));
}

Result<ReceivedFrame> ReadFrame(mempool::Pool& pool, mempool::IoBuf& msg) {
  ReceivedFrame r;
  if (msg.num_slices() == 1) {
    r.control = msg.slice(0);
    HRPC_ASSIGN_OR_RETURN(r.frame, wire::Decode(std::as_bytes(std::span<const char>(r.control.data(), r.control.size()))));
    const wire::FrameHeader& h = r.frame.header();
    if (h.attachment_len > 0) {
      const size_t off = h.header_len + r.frame.num_descriptors() * wire::kDescriptorSize + h.message_len;
      r.attachment = mempool::IoBuf(r.control.Slice(off, h.attachment_len));
    }
    return r;
  }
  HRPC_ASSIGN_OR_RETURN(wire::FrameHeader h, PeekHeader(msg));
  const uint64_t total = wire::FrameLength(h);
  const uint64_t att_off = uint64_t{h.header_len} + uint64_t{h.num_descriptors} * wire::kDescriptorSize + h.message_len;
  if (total != msg.size() || att_off + h.attachment_len > total) {
    // Let Decode name the problem precisely (on a bounded copy).
    if (msg.size() > wire::kMaxFrameBytes) return DataLossError("hrpc wire: frame exceeds the frame limit");
    HRPC_ASSIGN_OR_RETURN(mempool::Buffer all, pool.Allocate(msg.size()));
    GatherRange(msg, 0, msg.size(), all.data());
    auto f = wire::Decode(std::as_bytes(std::span<const char>(all.data(), all.size())));
    return f.ok() ? DataLossError("hrpc wire: frame length mismatch") : f.status();
  }
  const size_t control_len = static_cast<size_t>(total - h.attachment_len);
  HRPC_ASSIGN_OR_RETURN(r.control, pool.Allocate(std::max<size_t>(control_len, 1)));
  r.control = r.control.Slice(0, control_len);
  GatherRange(msg, 0, static_cast<size_t>(att_off), r.control.data());
  GatherRange(msg, static_cast<size_t>(att_off + h.attachment_len), static_cast<size_t>(total - att_off - h.attachment_len),
              r.control.data() + att_off);
  // The control copy carries no attachment: say so in its header (offset 44).
  std::memset(r.control.data() + 44, 0, 4);
  HRPC_ASSIGN_OR_RETURN(r.frame, wire::Decode(std::as_bytes(std::span<const char>(r.control.data(), r.control.size()))));
  if (h.attachment_len > 0) {
    r.attachment = msg.Share();
    r.attachment.TrimFront(static_cast<size_t>(att_off));
    r.attachment.TrimBack(static_cast<size_t>(total - att_off - h.attachment_len));
  }
  return r;
}

}  // namespace internal
}  // namespace hrpc
