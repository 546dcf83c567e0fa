// Prometheus metrics of a runtime and a server: hrpc's own counters turned
// into prometheus-cpp MetricFamily objects at scrape time, serialized with
// prometheus-cpp's TextSerializer. The data path records into hrpc's counters
// only (relaxed atomics, OwnerCounters, LatencyHistogram): nothing here is on
// it. Metric names and meanings: docs/observability.md.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>

#include <prometheus/client_metric.h>
#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>

#include "hrpc/mempool/copy.h"
#include "observability.h"
#include "peer_table.h"
#include "runtime_internal.h"

namespace hrpc::internal {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

namespace {

// Histogram bounds of hrpc_rpc_latency_seconds, in nanoseconds.
constexpr std::array<uint64_t, 21> kLatencyBoundsNs = {
    2'500,       5'000,       10'000,      25'000,        50'000,        100'000,       250'000,
    500'000,     1'000'000,   2'500'000,   5'000'000,     10'000'000,    25'000'000,    50'000'000,
    100'000'000, 250'000'000, 500'000'000, 1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};

// Families in the order they are first used; a family keeps its samples together.
class Families {
 public:
  MetricFamily& Family(std::string_view name, std::string_view help, MetricType type) {
    auto it = index_.find(std::string(name));
    if (it != index_.end()) return out_[it->second];
    index_.emplace(std::string(name), out_.size());
    MetricFamily f;
    f.name = std::string(name);
    f.help = std::string(help);
    f.type = type;
    out_.push_back(std::move(f));
    return out_.back();
  }
  void Counter(std::string_view name, std::string_view help, Labels labels, double v) {
    ClientMetric m;
    m.label = std::move(labels);
    m.counter.value = v;
    Family(name, help, MetricType::Counter).metric.push_back(std::move(m));
  }
  void Gauge(std::string_view name, std::string_view help, Labels labels, double v) {
    ClientMetric m;
    m.label = std::move(labels);
    m.gauge.value = v;
    Family(name, help, MetricType::Gauge).metric.push_back(std::move(m));
  }
  void Untyped(std::string_view name, std::string_view help, Labels labels, double v) {
    ClientMetric m;
    m.label = std::move(labels);
    m.untyped.value = v;
    Family(name, help, MetricType::Untyped).metric.push_back(std::move(m));
  }
  void Histogram(std::string_view name, std::string_view help, Labels labels, const LatencyHistogram& h) {
    std::array<uint64_t, kLatencyBoundsNs.size()> cum{};
    ClientMetric m;
    m.label = std::move(labels);
    m.histogram.sample_count = h.CumulativeCounts(kLatencyBoundsNs, cum);
    m.histogram.sample_sum = static_cast<double>(h.sum_ns()) / 1e9;
    for (size_t i = 0; i < kLatencyBoundsNs.size(); ++i) {
      m.histogram.bucket.push_back({cum[i], static_cast<double>(kLatencyBoundsNs[i]) / 1e9});
    }
    m.histogram.bucket.push_back({m.histogram.sample_count, std::numeric_limits<double>::infinity()});
    Family(name, help, MetricType::Histogram).metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> Take() { return std::move(out_); }

 private:
  std::vector<MetricFamily> out_;
  std::unordered_map<std::string, size_t> index_;
};

std::string Str(size_t v) { return std::to_string(v); }

double Seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// "pkg.Service.Method" -> ("pkg.Service", "Method"); "<sid>/<mid>" (a method
// the server does not know) -> ("<sid>", "<mid>").
std::pair<std::string, std::string> SplitMethod(const std::string& full) {
  size_t cut = full.rfind('.');
  if (cut == std::string::npos) cut = full.rfind('/');
  if (cut == std::string::npos) return {"", full};
  return {full.substr(0, cut), full.substr(cut + 1)};
}

void RpcFamilies(Families& f, const StatsRegistry& registry, const char* side) {
  registry.ForEach([&](const MethodCounters& m) {
    const auto [service, method] = SplitMethod(m.name);
    const Labels base = {{"side", side}, {"service", service}, {"method", method}};
    auto with = [&base](std::string name, std::string value) {
      Labels l = base;
      l.push_back({std::move(name), std::move(value)});
      return l;
    };
    constexpr const char* kCalls =
        "Completed calls by status code (server: from the request's arrival to its response sent; client: end to end).";
    f.Counter("hrpc_rpc_calls_total", kCalls, with("code", "OK"), static_cast<double>(m.ok.load(std::memory_order_relaxed)));
    for (size_t c = 1; c < m.errors_by_code.size(); ++c) {
      if (uint64_t n = m.errors_by_code[c].load(std::memory_order_relaxed)) {
        f.Counter("hrpc_rpc_calls_total", kCalls, with("code", std::string(StatusCodeName(static_cast<StatusCode>(c)))),
                  static_cast<double>(n));
      }
    }
    f.Gauge("hrpc_rpc_in_flight", "Calls started and not finished.", base,
            static_cast<double>(m.in_flight.load(std::memory_order_relaxed)));
    f.Histogram("hrpc_rpc_latency_seconds",
                "Latency of completed calls (server: arrival to response sent; client: end to end).", base, m.latency);
    f.Counter("hrpc_rpc_received_bytes_total",
              "Bytes received: requests on the server, responses on the client (message + attachment).", base,
              static_cast<double>(m.bytes_in.load(std::memory_order_relaxed)));
    f.Counter("hrpc_rpc_sent_bytes_total",
              "Bytes sent: responses on the server, requests on the client (message + attachment).", base,
              static_cast<double>(m.bytes_out.load(std::memory_order_relaxed)));
  });
}

void TransportFamilies(Families& f, const WorkerSet::TransportEntry& e) {
  const transport::TransportCounters& c = *e.counters;
  const Labels base = {{"transport", e.scheme}, {"worker", Str(e.worker)}};
  auto with = [&base](std::string name, std::string value) {
    Labels l = base;
    l.push_back({std::move(name), std::move(value)});
    return l;
  };
  auto d = [](const OwnerCounter& v) { return static_cast<double>(v.Get()); };
  f.Gauge("hrpc_transport_connections", "Open connections.", base, static_cast<double>(c.open()));
  constexpr const char* kOpened = "Connections that completed the handshake: in = accepted, out = connected.";
  f.Counter("hrpc_transport_connections_opened_total", kOpened, with("direction", "in"), d(c.accepted));
  f.Counter("hrpc_transport_connections_opened_total", kOpened, with("direction", "out"), d(c.connected));
  constexpr const char* kClosed =
      "Open connections that ended: closed on this side (local), by the peer (peer), or failed (error).";
  f.Counter("hrpc_transport_connections_closed_total", kClosed, with("reason", "local"), d(c.closed_local));
  f.Counter("hrpc_transport_connections_closed_total", kClosed, with("reason", "peer"), d(c.closed_by_peer));
  f.Counter("hrpc_transport_connections_closed_total", kClosed, with("reason", "error"), d(c.failed));
  constexpr const char* kFailures =
      "Connection attempts that never opened: out = connects, in = accepted handshakes refused or timed out.";
  f.Counter("hrpc_transport_connect_failures_total", kFailures, with("direction", "out"), d(c.connect_failures));
  f.Counter("hrpc_transport_connect_failures_total", kFailures, with("direction", "in"), d(c.handshake_failures));
  constexpr const char* kMsgs = "Control messages (two-sided frames carrying requests, responses, cancels, pings).";
  f.Counter("hrpc_transport_messages_total", kMsgs, with("direction", "sent"), d(c.messages_sent));
  f.Counter("hrpc_transport_messages_total", kMsgs, with("direction", "received"), d(c.messages_received));
  constexpr const char* kMsgBytes = "Bytes of control messages.";
  f.Counter("hrpc_transport_message_bytes_total", kMsgBytes, with("direction", "sent"), d(c.message_bytes_sent));
  f.Counter("hrpc_transport_message_bytes_total", kMsgBytes, with("direction", "received"), d(c.message_bytes_received));
  constexpr const char* kPayload = "Bytes of payloads streamed behind a message (TCP).";
  f.Counter("hrpc_transport_payload_bytes_total", kPayload, with("direction", "sent"), d(c.payload_bytes_sent));
  f.Counter("hrpc_transport_payload_bytes_total", kPayload, with("direction", "received"), d(c.payload_bytes_received));
  constexpr const char* kOps = "One-sided operations this side requested (RDMA READ/WRITE, or their emulation).";
  f.Counter("hrpc_transport_one_sided_ops_total", kOps, with("op", "read"), d(c.reads));
  f.Counter("hrpc_transport_one_sided_ops_total", kOps, with("op", "write"), d(c.writes));
  constexpr const char* kOpBytes = "Bytes of the one-sided operations this side requested.";
  f.Counter("hrpc_transport_one_sided_bytes_total", kOpBytes, with("op", "read"), d(c.read_bytes));
  f.Counter("hrpc_transport_one_sided_bytes_total", kOpBytes, with("op", "write"), d(c.write_bytes));
  if (e.scheme != "rdma") {  // the NIC serves the peer's ops on RDMA: the CPU never sees them
    constexpr const char* kServed = "The peer's one-sided operations this side served (TCP, loopback).";
    f.Counter("hrpc_transport_one_sided_served_total", kServed, with("op", "read"), d(c.reads_served));
    f.Counter("hrpc_transport_one_sided_served_total", kServed, with("op", "write"), d(c.writes_served));
  }
  constexpr const char* kRefusals =
      "Refused one-sided operations: side=requester, this side's ops the peer refused; side=target, the peer's ops "
      "refused here (bad key, range or access).";
  f.Counter("hrpc_transport_refusals_total", kRefusals, with("side", "requester"), d(c.refused_by_peer));
  if (e.scheme != "rdma") {
    f.Counter("hrpc_transport_refusals_total", kRefusals, with("side", "target"), d(c.refused_here));
  }
  constexpr const char* kStalls =
      "Callers parked: credits = a message waited for the peer's receive slots; send_queue = for the send queue "
      "(TCP: unsent bytes over the high water mark; RDMA: no send WQE); op_slots = at max_outstanding_ops; "
      "memory = a connection stopped reading until the pool had a receive buffer for it (TCP).";
  f.Counter("hrpc_transport_stalls_total", kStalls, with("reason", "credits"), d(c.credit_stalls));
  f.Counter("hrpc_transport_stalls_total", kStalls, with("reason", "send_queue"), d(c.send_queue_stalls));
  f.Counter("hrpc_transport_stalls_total", kStalls, with("reason", "op_slots"), d(c.op_slot_stalls));
  if (e.scheme == "tcp") {
    f.Counter("hrpc_transport_stalls_total", kStalls, with("reason", "memory"), d(c.receive_memory_stalls));
  }
  constexpr const char* kChecks =
      "Control messages the receiver's checks caught: check=crc, corrupted or truncated (the connection failed with "
      "DATA_LOSS); check=duplicate, a copy of a message already delivered (discarded).";
  f.Counter("hrpc_transport_message_check_failures_total", kChecks, with("check", "crc"), d(c.corrupt_messages));
  f.Counter("hrpc_transport_message_check_failures_total", kChecks, with("check", "duplicate"),
            d(c.duplicates_discarded));
  constexpr const char* kFaults = "Faults this transport injected (TransportOptions::faults, for testing).";
  const std::pair<const char*, const OwnerCounter*> faults[] = {
      {"drop", &c.faults_dropped},         {"duplicate", &c.faults_duplicated},
      {"truncate", &c.faults_truncated},   {"corrupt", &c.faults_corrupted},
      {"delay", &c.faults_delayed},        {"refused_allocation", &c.faults_refused_allocations},
      {"disconnect", &c.faults_disconnects}, {"qp_error", &c.faults_qp_errors},
  };
  for (const auto& [name, counter] : faults) {
    f.Counter("hrpc_transport_faults_injected_total", kFaults, with("fault", name), d(*counter));
  }
  if (e.scheme == "rdma") {
    const Labels w = {{"worker", Str(e.worker)}};
    f.Counter("hrpc_rdma_completion_errors_total", "Work completions that failed (flushes of a dead QP not counted).",
              w, d(c.completion_errors));
    f.Counter("hrpc_rdma_rnr_retry_exceeded_total",
              "Completions failed with RNR retry exceeded (the peer had no receive WQE, rnr_retry times).", w,
              d(c.rnr_retry_exceeded));
    f.Counter("hrpc_rdma_retry_exceeded_total",
              "Completions failed with transport retry exceeded (the peer stopped acknowledging).", w,
              d(c.retry_exceeded));
    f.Counter("hrpc_rdma_receive_refill_failures_total",
              "Receive slots the pool could not refill at once (the peer's credit waits; on an SRQ RNR may follow).",
              w, d(c.receive_refill_failures));
    f.Counter("hrpc_rdma_inline_sends_total", "Messages sent inline (copied into the WQE by the provider).", w,
              d(c.inline_sends));
    f.Counter("hrpc_rdma_credit_messages_total", "Credit-only messages sent.", w, d(c.credit_messages));
    f.Counter("hrpc_rdma_mw_binds_total", "Memory windows bound to expose a buffer.", w, d(c.mw_binds));
  }
}

// The device's hardware counters (RNR NAKs, retries, sequence errors, ...)
// from sysfs, for the RDMA devices the runtime uses.
void RdmaHwFamilies(Families& f, const std::vector<std::string>& devices) {
  namespace fs = std::filesystem;
  for (const std::string& dev : devices) {
    std::error_code ec;
    const fs::path ports = fs::path("/sys/class/infiniband") / dev / "ports";
    for (const auto& port : fs::directory_iterator(ports, ec)) {
      std::error_code ec2;
      for (const auto& file : fs::directory_iterator(port.path() / "hw_counters", ec2)) {
        std::ifstream in(file.path());
        double v = 0;
        if (!(in >> v)) continue;
        f.Untyped("hrpc_rdma_hw_counter",
                  "The RDMA device's hardware counters (sysfs ports/N/hw_counters), e.g. rnr_nak_retry_err, "
                  "local_ack_timeout_err, out_of_sequence.",
                  {{"device", dev}, {"port", port.path().filename().string()}, {"counter", file.path().filename().string()}},
                  v);
      }
    }
  }
}

void PoolFamilies(Families& f, const std::vector<const mempool::Pool*>& pools) {
  for (size_t p = 0; p < pools.size(); ++p) {
    const mempool::Pool& pool = *pools[p];
    const Labels base = {{"pool", Str(p)}};
    f.Gauge("hrpc_pool_info", "A pool of registered memory: its NUMA node and page mode (value 1).",
            {{"pool", Str(p)},
             {"numa_node", std::to_string(pool.numa_node())},
             {"page_mode", std::string(mempool::PageModeName(pool.page_mode()))}},
            1);
    const size_t arenas = pool.num_arenas();
    f.Gauge("hrpc_pool_arenas", "Arenas mapped.", base, static_cast<double>(arenas));
    f.Gauge("hrpc_pool_max_arenas", "Arenas the pool may map (PoolOptions.max_arenas).", base,
            static_cast<double>(pool.options().max_arenas));
    f.Gauge("hrpc_pool_mapped_bytes", "Bytes of the mapped arenas.", base,
            static_cast<double>(arenas * pool.options().arena_bytes));
    for (const mempool::Pool::ClassStats& c : pool.Stats()) {
      if (c.carved == 0 && c.failures == 0) continue;
      const Labels l = {{"pool", Str(p)}, {"class", Str(c.block_bytes)}};
      f.Gauge("hrpc_pool_in_use_bytes", "Bytes of blocks held by Buffers, by size class.", l,
              static_cast<double>(c.in_use * c.block_bytes));
      f.Gauge("hrpc_pool_free_bytes", "Bytes of carved blocks free (shared lists and thread caches), by size class.", l,
              static_cast<double>(c.free * c.block_bytes));
      f.Gauge("hrpc_pool_high_water_bytes", "Peak bytes of blocks out of the shared free list, by size class.", l,
              static_cast<double>(c.high_water * c.block_bytes));
      f.Counter("hrpc_pool_allocation_failures_total",
                "Allocations refused (RESOURCE_EXHAUSTED: the class was empty and no arena could be carved).", l,
                static_cast<double>(c.failures));
    }
  }
}

}  // namespace

MetricsCollector::MetricsCollector(WorkerSet& workers, const ServerView* server)
    : workers_(workers), server_(server), samples_(workers.size()) {}

void MetricsCollector::Add(std::weak_ptr<prometheus::Collectable> c) {
  std::lock_guard lock(mu_);
  extra_.push_back(std::move(c));
}

// Against the newest earlier sample at least 1 s old (else the oldest one):
// the ratio does not jump when two scrapers poll close together.
double MetricsCollector::BusyRatio(size_t worker, std::chrono::nanoseconds busy, std::chrono::nanoseconds idle) const {
  using Clock = std::chrono::steady_clock;
  std::lock_guard lock(mu_);
  const Sample now{Clock::now(), busy.count(), idle.count()};
  auto& q = samples_[worker];
  const Sample* base = nullptr;
  while (q.size() >= 2 && now.t - q[1].t >= std::chrono::seconds(1)) q.pop_front();
  if (!q.empty()) base = &q.front();
  double ratio;
  if (base != nullptr && now.busy_ns + now.idle_ns > base->busy_ns + base->idle_ns) {
    const double b = static_cast<double>(now.busy_ns - base->busy_ns);
    const double i = static_cast<double>(now.idle_ns - base->idle_ns);
    ratio = b / (b + i);
  } else {
    const double total = static_cast<double>(now.busy_ns + now.idle_ns);
    ratio = total > 0 ? static_cast<double>(now.busy_ns) / total : 0.0;
  }
  q.push_back(now);
  if (q.size() > 64) q.pop_front();
  return std::clamp(ratio, 0.0, 1.0);
}

std::vector<MetricFamily> MetricsCollector::Collect() const {
  Families f;
  WorkerSet& ws = workers_;
  // Calls: this server's, then the runtime's channels'.
  if (server_ != nullptr) RpcFamilies(f, server_->server_stats(), "server");
  RpcFamilies(f, ws.client_stats(), "client");
  if (server_ != nullptr) {
    f.Gauge("hrpc_server_connections", "Connections the server has open.", {},
            static_cast<double>(server_->connections().size()));
    f.Gauge("hrpc_server_requests_running", "Requests between arrival and response (handlers, pulls, replies).", {},
            static_cast<double>(server_->requests_running()));
    f.Gauge("hrpc_server_max_concurrent_requests", "ServerOptions.max_concurrent_requests.", {},
            static_cast<double>(server_->max_concurrent_requests()));
    f.Counter("hrpc_server_quota_waits_total",
              "Requests that waited (their connection not read meanwhile) for the connection's quota of requests "
              "or request bytes.",
              {}, static_cast<double>(server_->quota_waits()));
    f.Gauge("hrpc_server_start_time_seconds", "When the server started (Unix time).", {}, Seconds(server_->start_time()));
    if (!server_->authenticator().empty()) {
      const Labels a = {{"authenticator", std::string(server_->authenticator())}};
      f.Counter("hrpc_server_authenticated_total", "Accepted connections whose peer passed authentication.", a,
                static_cast<double>(server_->auth_successes()));
      f.Counter("hrpc_server_auth_failures_total",
                "Accepted connections refused and closed because the peer failed authentication.", a,
                static_cast<double>(server_->auth_failure_count()));
    }
  }
  // Outgoing connections of the runtime, per worker.
  for (size_t w = 0; w < ws.size(); ++w) {
    const PeerTable* pt = ws.peer_table(w);
    if (pt == nullptr) continue;
    const Labels l = {{"worker", Str(w)}};
    const PeerTable::Counters& c = pt->counters();
    f.Gauge("hrpc_client_connections", "Outgoing connections open (shared by every channel of the runtime).", l,
            static_cast<double>(pt->open_links()));
    f.Counter("hrpc_client_connects_total", "Outgoing connections made.", l, static_cast<double>(c.connects.Get()));
    f.Counter("hrpc_client_connect_failures_total", "Outgoing connection attempts that failed.", l,
              static_cast<double>(c.connect_failures.Get()));
    f.Counter("hrpc_client_auth_failures_total",
              "Outgoing connections closed because authentication failed (RuntimeOptions.authenticator).", l,
              static_cast<double>(c.auth_failures.Get()));
    f.Counter("hrpc_client_reconnects_total", "Outgoing connections made to replace one that failed.", l,
              static_cast<double>(c.reconnects.Get()));
    f.Counter("hrpc_client_connections_lost_total",
              "Outgoing connections that failed (not closed idle or at shutdown); their calls got UNAVAILABLE.", l,
              static_cast<double>(c.lost.Get()));
  }
  for (const WorkerSet::TransportEntry& e : ws.TransportEntries()) TransportFamilies(f, e);
  RdmaHwFamilies(f, ws.RdmaDevices());
  PoolFamilies(f, ws.Pools());
  for (size_t w = 0; w < ws.size(); ++w) {
    const Labels l = {{"worker", Str(w)}};
    coro::Worker& worker = ws.worker(w);
    const coro::Scheduler::Load load = ws.scheduler(w).load();
    f.Gauge("hrpc_worker_info", "A worker thread: its name, cpu (-1: not pinned), network group and pool (value 1).",
            {{"worker", Str(w)},
             {"name", std::string(ws.scheduler(w).name())},
             {"cpu", std::to_string(worker.cpu())},
             {"group", Str(ws.group_of(w))},
             {"pool", Str(ws.pool_index(w))}},
            1);
    f.Counter("hrpc_worker_busy_seconds_total", "Time the worker's loop found work (coroutines, timers, I/O).", l,
              std::chrono::duration<double>(load.busy).count());
    f.Gauge("hrpc_worker_busy_ratio",
            "Busy fraction over the last second or more (since an earlier scrape of this endpoint).", l,
            BusyRatio(w, load.busy, load.idle));
    f.Counter("hrpc_worker_cpu_seconds_total", "CPU time of the worker thread (spinning included).", l,
              std::chrono::duration<double>(worker.CpuTime()).count());
    f.Gauge("hrpc_worker_run_queue", "Coroutines ready to run.", l, static_cast<double>(load.run_queue));
    f.Gauge("hrpc_worker_coroutines", "Coroutines alive (running, ready or suspended).", l,
            static_cast<double>(load.alive));
    f.Counter("hrpc_worker_context_switches_total", "Coroutine switches.", l,
              static_cast<double>(load.context_switches));
    f.Counter("hrpc_worker_sleeps_total", "Times the worker blocked in epoll_wait after spin_budget.", l,
              static_cast<double>(load.sleeps));
  }
  f.Counter("hrpc_copied_bytes_total", "Payload bytes the CPU copied (CountedCopy) in this process.", {},
            static_cast<double>(mempool::CopiedBytesTotal()));
  f.Gauge("hrpc_runtime_start_time_seconds", "When the runtime was created (Unix time).", {}, Seconds(ws.created()));

  std::vector<MetricFamily> out = f.Take();
  std::vector<std::weak_ptr<prometheus::Collectable>> extra;
  {
    std::lock_guard lock(mu_);
    extra = extra_;
  }
  for (auto& weak : extra) {
    if (auto c = weak.lock()) {
      auto more = c->Collect();
      out.insert(out.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
    }
  }
  return out;
}

std::string SerializeMetrics(const std::vector<MetricFamily>& families) {
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace hrpc::internal
