#include "hrpc/rpc/server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include <spdlog/spdlog.h>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/cycle_clock.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/rpc/naming.h"
#include "hrpc/rpc/server_context.h"
#include "hrpc/rpc/wire.h"
#include "hrpc/transport/auth.h"
#include "bulk.h"
#include "dedup.h"
#include "observability.h"
#include "reflection.h"
#include "stream_core.h"
#include "rpcz.h"
#include "runtime_internal.h"
#include "txn_map.h"

namespace hrpc {

using Clock = std::chrono::steady_clock;
using internal::SerializedMessage;

// How long a refused peer is given to read why before its connection closes.
constexpr std::chrono::milliseconds kRefusalLinger{500};

namespace {

struct ServerConn {
  std::unique_ptr<transport::Connection> conn;
  size_t worker = 0;
  std::shared_ptr<const std::string> peer;  // shared with the requests' contexts
  internal::TxnMap<ServerContext*> active;  // txn -> running request or stream
  std::unordered_map<uint64_t, std::shared_ptr<internal::StreamCore>> streams;  // txn -> open stream
  std::unordered_map<uint64_t, coro::LocalEvent*> releases;  // txn -> response held for the client's READ
  bool closed = false;
  std::shared_ptr<internal::ConnectionInfo> info;  // what /status shows of it
  // Quota (ServerOptions::max_requests_per_connection and
  // max_request_bytes_per_connection): unary requests admitted and not
  // finished, their attachment bytes; the read loop parks on quota_waiter
  // while the next request does not fit.
  size_t requests = 0;
  uint64_t request_bytes = 0;
  coro::LocalEvent* quota_waiter = nullptr;
};

// Bytes of a request's attachment that the server holds while it runs:
// received with the frame (inline or streamed) and to be pulled.
uint64_t RequestBytes(const internal::ReceivedFrame& rx) {
  uint64_t n = rx.attachment.size();
  for (size_t i = 0; i < rx.frame.num_descriptors(); ++i) {
    const wire::BulkDescriptor d = rx.frame.descriptor(i);
    if (d.direction == wire::BulkDirection::kPull) n += d.len;
  }
  return n;
}

// What tells a retry from another call under a reused request id: the
// message's CRC32C, chained with the attachment's length, then its CRC32C
// when it came with the frame and is at most kFingerprintedAttachment bytes
// (larger streamed bytes are not read twice: only their length counts), and
// each pulled region's length and CRC32C (its descriptor carries them).
uint32_t RequestFingerprint(const internal::ReceivedFrame& rx) {
  constexpr size_t kFingerprintedAttachment = 64 * 1024;
  uint32_t crc = Crc32c(rx.frame.message().data(), rx.frame.message().size());
  const uint64_t in_frame = rx.attachment.size();
  crc = Crc32c(&in_frame, sizeof in_frame, crc);
  if (in_frame <= kFingerprintedAttachment) {
    const uint32_t att = rx.attachment.Crc32c();
    crc = Crc32c(&att, sizeof att, crc);
  }
  for (size_t i = 0; i < rx.frame.num_descriptors(); ++i) {
    const wire::BulkDescriptor d = rx.frame.descriptor(i);
    if (d.direction != wire::BulkDirection::kPull) continue;
    const uint32_t region[2] = {d.len, d.crc32c};
    crc = Crc32c(region, sizeof region, crc);
  }
  return crc;
}

// Serializes the handler's response behind room for the response prefix:
// the echoed push regions, and the regions the response attachment (final
// once the handler returned, when the dispatch calls Write) may be exposed in.
class FrameWriter final : public ResponseWriter {
 public:
  FrameWriter(mempool::Pool& pool, size_t num_push, ServerContext& ctx)
      : pool_(pool), num_push_(num_push), ctx_(ctx) {}
  Status Write(const google::protobuf::MessageLite& response) override {
    if (!response.IsInitialized()) {
      return InternalError("response lacks required fields: " + response.InitializationErrorString());
    }
    const mempool::IoBuf& att = ctx_.response_attachment();
    const size_t exposed = internal::PlannedDescriptors(att, 0, pool_.options().max_class_bytes);
    const size_t room = wire::PrefixSize(std::min(num_push_ + exposed, wire::kMaxDescriptors));
    auto m = internal::SerializeWithRoom(pool_, response, room);
    if (!m.ok()) return m.status();
    msg = std::move(*m);
    written = true;
    return Status::Ok();
  }
  SerializedMessage msg;
  bool written = false;

 private:
  mempool::Pool& pool_;
  size_t num_push_;
  ServerContext& ctx_;
};

// Polls `done` every millisecond until it holds or `until` passes: suspending
// the calling coroutine (Shutdown from a handler of the runtime), else
// sleeping the thread.
void WaitFor(const std::function<bool()>& done, Clock::time_point until) {
  while (!done() && Clock::now() < until) {
    if (coro::this_coro::InCoroutine()) {
      coro::this_coro::SleepFor(std::chrono::milliseconds(1));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

// A handler's view of its stream: operations bounded by the call's deadline.
class HandlerStream final : public ServerStreamBase {
 public:
  HandlerStream(internal::StreamCore& core, const ServerContext& ctx) : core_(core), ctx_(ctx) {}
  bool Read(google::protobuf::MessageLite* message, mempool::IoBuf* attachment) override {
    auto r = core_.Read(message, attachment, ctx_.deadline());
    return r.ok() && *r;
  }
  bool Write(const google::protobuf::MessageLite& message, mempool::IoBuf attachment) override {
    Status s = core_.Write(message, std::move(attachment), ctx_.deadline());
    if (!s.ok()) core_.End(std::move(s));
    return core_.end_status().ok();
  }

 private:
  internal::StreamCore& core_;
  const ServerContext& ctx_;
};

// ServerOptions::etcd_register: the registration of a server listening on `bound`.
Result<std::unique_ptr<EtcdRegistration>> RegisterInEtcd(const ServerOptions& options, const std::string& bound) {
  EtcdRegistrationOptions reg;
  reg.etcd = options.etcd_register;
  reg.address = options.advertise;
  reg.tag = options.etcd_tag;
  reg.ttl = options.etcd_ttl;
  if (reg.address.empty()) {
    HRPC_ASSIGN_OR_RETURN(transport::Uri uri, transport::ParseUri(bound));
    if (uri.scheme != "loop" && (uri.host == "0.0.0.0" || uri.host == "::")) {
      return InvalidArgumentError("ServerOptions.etcd_register: the server listens on " + bound +
                                  "; set ServerOptions.advertise to the address clients connect to");
    }
    reg.address = bound;
  }
  auto registration = EtcdRegistration::Create(std::move(reg));
  if (!registration.ok()) return registration.status().WithContext("registering in " + options.etcd_register);
  SPDLOG_INFO("hrpc server: registered in {} as {}", options.etcd_register, (*registration)->key());
  return registration;
}

}  // namespace

class Server::Impl : public std::enable_shared_from_this<Server::Impl>, public internal::ServerView {
 public:
  ServerOptions options;
  std::shared_ptr<internal::WorkerSet> workers;
  std::unordered_map<uint32_t, Service*> services_by_id;
  // (service<<32|method) -> counters of registered methods; read-only after Start.
  std::unordered_map<uint64_t, MethodCounters*> registered;
  StatsRegistry stats;
  std::vector<std::string> bound;  // one per options.listen entry
  std::vector<std::vector<std::unique_ptr<transport::Listener>>> listeners;  // per worker
  std::vector<std::vector<std::shared_ptr<ServerConn>>> conns;              // per worker (touched on it)
  std::vector<std::vector<transport::Connection*>> authenticating;          // per worker: not admitted yet
  std::atomic<int64_t> running{0};        // requests in handlers/bulk
  std::atomic<uint64_t> quota_waits_{0};  // requests that waited for their connection's quota
  std::atomic<int64_t> live_conns{0};
  std::atomic<int64_t> accept_loops{0};
  // Connections that passed options.authenticator, and that failed it.
  std::atomic<uint64_t> authenticated{0}, auth_failures{0};
  std::atomic<bool> started{false};
  std::atomic<bool> serving{false};  // Start() bound every listener and returned OK
  std::atomic<bool> stopping{false};
  bool shut_down = false;
  mutable std::mutex mu;
  // hrpc.Reflection, registered on every server; its calls are counted apart
  // from the application's (not in Stats()).
  std::unique_ptr<Service> reflection;
  StatsRegistry reflection_stats;
  // Observability: the connections /status lists (changed on accept and
  // close only), rpcz rings per worker (only with the HTTP endpoint), the
  // metrics collector and the endpoint.
  mutable std::mutex conn_infos_mu;
  // /health's probe of each worker: when the one in flight was posted (ns of
  // SteadyNow), 0 when none is. One at a time per worker: a stuck worker gets
  // no pile of probes, and a probe older than a second answers at once.
  mutable std::mutex probes_mu;
  mutable std::vector<std::shared_ptr<std::atomic<int64_t>>> probes;
  std::vector<std::shared_ptr<internal::ConnectionInfo>> conn_infos;
  std::vector<std::unique_ptr<internal::RpczRing>> rpcz;
  const coro::CycleClock* clock = &coro::CycleClock::Get();
  std::chrono::system_clock::time_point started_at;
  std::unique_ptr<internal::MetricsCollector> metrics;
  std::unique_ptr<internal::HttpEndpoint> http;
  std::string http_addr;  // under mu: the endpoint serves /status while Start() sets it
  std::string HttpAddress() const {
    std::lock_guard lock(mu);
    return http_addr;
  }
  std::unique_ptr<internal::DedupWindow> dedup;  // null when ServerOptions::dedup_window is 0
  std::unique_ptr<EtcdRegistration> registration;  // with options.etcd_register

  // --- ServerView (the endpoint's thread)
  const StatsRegistry& server_stats() const override { return stats; }
  std::vector<std::string> bound_uris() const override {
    std::lock_guard lock(mu);
    return bound;
  }
  std::vector<ServiceInfo> services() const override {
    std::vector<ServiceInfo> out;
    for (const auto& [id, svc] : services_by_id) {
      ServiceInfo si;
      si.name = std::string(svc->service_name());
      for (const MethodDescriptor& m : svc->methods()) si.methods.push_back(std::string(m.full_name));
      out.push_back(std::move(si));
    }
    std::sort(out.begin(), out.end(), [](const ServiceInfo& a, const ServiceInfo& b) { return a.name < b.name; });
    return out;
  }
  std::vector<std::shared_ptr<const internal::ConnectionInfo>> connections() const override {
    std::lock_guard lock(conn_infos_mu);
    return {conn_infos.begin(), conn_infos.end()};
  }
  int64_t requests_running() const override { return running.load(std::memory_order_relaxed); }
  size_t max_concurrent_requests() const override { return options.max_concurrent_requests; }
  uint64_t quota_waits() const override { return quota_waits_.load(std::memory_order_relaxed); }
  std::string_view authenticator() const override {
    return options.authenticator ? options.authenticator->name() : std::string_view();
  }
  uint64_t auth_successes() const override { return authenticated.load(std::memory_order_relaxed); }
  uint64_t auth_failure_count() const override { return auth_failures.load(std::memory_order_relaxed); }
  std::chrono::system_clock::time_point start_time() const override { return started_at; }
  void ReadRpcz(std::vector<internal::RpczRecord>* slow, std::vector<internal::RpczRecord>* failed) const override {
    for (const auto& r : rpcz) r->Read(slow, failed);
  }
  Status Health() const override {
    if (stopping.load()) return UnavailableError("shutting down");
    if (!started.load()) return UnavailableError("not started");
    if (!serving.load()) return UnavailableError("not serving: Start() has not finished, or failed");
    // Every worker runs a posted coroutine within a second, or it is stuck
    // (a handler that never yields).
    std::vector<std::shared_ptr<std::atomic<int64_t>>> mine;
    {
      std::lock_guard lock(probes_mu);
      while (probes.size() < workers->size()) probes.push_back(std::make_shared<std::atomic<int64_t>>(0));
      mine = probes;
    }
    auto now_ns = [] { return coro::SteadyNow().time_since_epoch().count(); };
    for (size_t w = 0; w < mine.size(); ++w) {
      int64_t none = 0;
      if (mine[w]->compare_exchange_strong(none, now_ns())) {
        workers->scheduler(w).Post([probe = mine[w]] { probe->store(0); }, "hrpc-health");
      }
    }
    constexpr int64_t kAnswerWithin = 1'000'000'000;
    for (size_t w = 0; w < mine.size(); ++w) {
      for (;;) {
        const int64_t posted = mine[w]->load();
        if (posted == 0) break;
        if (now_ns() - posted >= kAnswerWithin) {
          return UnavailableError("worker " + std::to_string(w) + " did not answer within 1 s");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    return Status::Ok();
  }

  // The endpoint's pages.
  std::map<std::string, internal::HttpEndpoint::Handler> HttpRoutes() {
    using internal::HttpEndpoint;
    std::map<std::string, HttpEndpoint::Handler> r;
    r["/metrics"] = [this](const HttpEndpoint::Request&) {
      return HttpEndpoint::Response{200, "text/plain; version=0.0.4; charset=utf-8",
                                    internal::SerializeMetrics(metrics->Collect())};
    };
    r["/status"] = [this](const HttpEndpoint::Request& q) {
      return HttpEndpoint::Response{200, q.wants_html ? "text/html; charset=utf-8" : "text/plain; charset=utf-8",
                                    internal::RenderStatus(*workers, this, *metrics, q.wants_html, HttpAddress())};
    };
    r["/rpcz"] = [this](const HttpEndpoint::Request& q) {
      size_t n = 20;
      if (auto it = q.params.find("n"); it != q.params.end()) {
        n = std::clamp<size_t>(std::strtoul(it->second.c_str(), nullptr, 10), 1, 1000);
      }
      return HttpEndpoint::Response{200, q.wants_html ? "text/html; charset=utf-8" : "text/plain; charset=utf-8",
                                    internal::RenderRpcz(*this, n, q.wants_html)};
    };
    r["/health"] = [this](const HttpEndpoint::Request&) {
      Status s = Health();
      return s.ok() ? HttpEndpoint::Response{200, "text/plain; charset=utf-8", "OK\n"}
                    : HttpEndpoint::Response{503, "text/plain; charset=utf-8", s.ToString() + "\n"};
    };
    r["/"] = [](const HttpEndpoint::Request& q) {
      if (q.wants_html) {
        return HttpEndpoint::Response{200, "text/html; charset=utf-8",
                                      "<!DOCTYPE html><html><body><h1>hrpc</h1><ul><li><a href=\"/status\">status</a>"
                                      "</li><li><a href=\"/rpcz\">rpcz</a></li><li><a href=\"/metrics\">metrics</a>"
                                      "</li><li><a href=\"/health\">health</a></li></ul></body></html>\n"};
      }
      return HttpEndpoint::Response{200, "text/plain; charset=utf-8",
                                    "hrpc: /metrics (Prometheus) /status /rpcz /health\n"};
    };
    return r;
  }

  // Ids no registered service has (a peer may send any) share one row: a row
  // per made-up id would grow the table, and /metrics, without bound.
  MethodCounters& CountersFor(uint32_t sid, uint32_t mid) {
    auto it = registered.find((uint64_t{sid} << 32) | mid);
    if (it != registered.end()) return *it->second;
    // Found once under the registry's lock (a scrape holds it a while), then
    // without it.
    if (MethodCounters* u = unknown_counters.load(std::memory_order_acquire)) return *u;
    constexpr uint32_t kUnknown = std::numeric_limits<uint32_t>::max();
    MethodCounters& u = stats.For(kUnknown, kUnknown, "(unknown method)");
    unknown_counters.store(&u, std::memory_order_release);
    return u;
  }
  std::atomic<MethodCounters*> unknown_counters{nullptr};

  void AcceptLoop(size_t w, transport::Listener* listener) {
    for (;;) {
      auto c = listener->Accept();
      if (!c.ok()) {
        if (c.status().code() != StatusCode::kCancelled) {
          SPDLOG_WARN("hrpc server: accept on {}: {}", listener->uri(), c.status().ToString());
          coro::this_coro::SleepFor(std::chrono::milliseconds(10));
          continue;
        }
        break;
      }
      if (stopping.load()) {
        (*c)->Close();
        continue;
      }
      std::string scheme = listener->uri().substr(0, listener->uri().find("://"));
      if (!options.authenticator) {
        Admit(w, std::move(*c), std::move(scheme));
        continue;
      }
      // Authenticated apart from the accept loop, so that a slow or silent
      // peer holds up only its own connection.
      auto pending = std::make_shared<std::unique_ptr<transport::Connection>>(std::move(*c));
      live_conns.fetch_add(1);  // until admitted or refused: Shutdown waits for it
      workers->scheduler(w).Spawn(
          [self = shared_from_this(), w, pending, scheme = std::move(scheme)]() mutable {
            self->AuthenticateAndAdmit(w, std::move(*pending), std::move(scheme));
          },
          "hrpc-server-auth");
    }
    accept_loops.fetch_sub(1);
  }

  // A connection that passed authentication (or needed none) joins the server:
  // from here on its requests are dispatched.
  void Admit(size_t w, std::unique_ptr<transport::Connection> conn, std::string scheme) {
    auto sc = std::make_shared<ServerConn>();
    sc->conn = std::move(conn);
    sc->worker = w;
    sc->peer = std::make_shared<const std::string>(sc->conn->peer());
    sc->info = std::make_shared<internal::ConnectionInfo>();
    sc->info->peer = *sc->peer;
    sc->info->scheme = std::move(scheme);
    sc->info->worker = w;
    sc->info->opened = std::chrono::system_clock::now();
    {
      std::lock_guard lock(conn_infos_mu);
      conn_infos.push_back(sc->info);
    }
    live_conns.fetch_add(1);
    conns[w].push_back(sc);
    SpawnReader(sc);
  }

  void SpawnReader(const std::shared_ptr<ServerConn>& sc) {
    workers->scheduler(sc->worker).Spawn([self = shared_from_this(), sc] { self->ReadLoop(sc); }, "hrpc-server-rx");
  }

  // A reader serving a request in place hands the connection's reading to a
  // new reader coroutine when the handler suspends (this_coro::OnNextSuspend).
  struct ReaderHandoff {
    Impl* self;
    const std::shared_ptr<ServerConn>* sc;
  };
  static void HandOffReading(void* arg) noexcept {
    auto* h = static_cast<ReaderHandoff*>(arg);
    h->self->SpawnReader(*h->sc);
  }

  // Runs options.authenticator on a fresh connection; one that fails is
  // answered (an RPC request from a client that skipped authentication gets
  // UNAUTHENTICATED as its response), counted and closed, never admitted.
  void AuthenticateAndAdmit(size_t w, std::unique_ptr<transport::Connection> conn, std::string scheme) {
    struct Done {
      std::atomic<int64_t>& n;
      ~Done() { n.fetch_sub(1); }
    } done{live_conns};
    mempool::Pool& pool = workers->pool(w);
    mempool::IoBuf first;
    authenticating[w].push_back(conn.get());
    const Status s = transport::AuthenticateWithin(*options.authenticator, *conn, pool, transport::AuthRole::kServer,
                                                   workers->options().transport.handshake_timeout, &first);
    std::erase(authenticating[w], conn.get());
    if (s.ok() && !stopping.load()) {
      authenticated.fetch_add(1, std::memory_order_relaxed);
      conn->Admit();
      return Admit(w, std::move(conn), std::move(scheme));
    }
    if (s.ok()) return conn->Close();
    auth_failures.fetch_add(1, std::memory_order_relaxed);
    SPDLOG_WARN("hrpc server: closing connection {}: {}", conn->peer(), s.ToString());
    if (!first.empty()) {
      // Its header only: the transport may have dropped the attachment of a
      // first message (docs/transport.md, "Authentication").
      auto req = internal::PeekHeader(first);
      if (req.ok() && req->kind == wire::FrameKind::kRequest) {
        wire::FrameHeader h;
        h.kind = wire::FrameKind::kResponse;
        h.txn_id = req->txn_id;
        h.service_id = req->service_id;
        h.method_id = req->method_id;
        h.status = StatusCode::kUnauthenticated;
        auto f = internal::SmallFrame(pool, h, "this server requires authentication (" +
                                                   std::string(options.authenticator->name()) + ")");
        if (f.ok()) conn->Send(std::move(*f)).IgnoreError();
      }
    }
    transport::CloseAfter(*conn, kRefusalLinger);
  }

  void CloseConn(const std::shared_ptr<ServerConn>& sc) {
    if (sc->closed) return;
    sc->closed = true;
    sc->conn->Close();
    if (auto* w = std::exchange(sc->quota_waiter, nullptr)) w->Set();
    for (auto& [txn, ctx] : sc->active) ctx->MarkCancelled();
    for (auto& [txn, ev] : sc->releases) ev->Set();
    for (auto& [txn, core] : sc->streams) core->OnPeerGone(UnavailableError("connection closed"));
  }

  bool QuotaFits(const ServerConn& sc, uint64_t bytes) const {
    const size_t max_requests = options.max_requests_per_connection;
    const uint64_t max_bytes = options.max_request_bytes_per_connection;
    if (max_requests != 0 && sc.requests >= max_requests) return false;
    return max_bytes == 0 || sc.request_bytes == 0 || sc.request_bytes + bytes <= max_bytes;
  }

  // Admits a request of `bytes` on `sc`, first waiting (the connection is not
  // read meanwhile) until it fits its quota. False when the connection closed.
  bool AwaitQuota(ServerConn& sc, uint64_t bytes) {
    if (!QuotaFits(sc, bytes)) {
      quota_waits_.fetch_add(1, std::memory_order_relaxed);
      while (!sc.closed && !QuotaFits(sc, bytes)) {
        coro::LocalEvent freed;
        sc.quota_waiter = &freed;
        freed.Wait().IgnoreError();
      }
    }
    if (sc.closed) return false;
    ++sc.requests;
    sc.request_bytes += bytes;
    return true;
  }

  // A request admitted by AwaitQuota finished (its handler returned).
  void ReleaseQuota(ServerConn& sc, uint64_t bytes) {
    --sc.requests;
    sc.request_bytes -= bytes;
    if (auto* w = std::exchange(sc.quota_waiter, nullptr)) w->Set();
  }

  void ReadLoop(std::shared_ptr<ServerConn> sc) {
    mempool::Pool& pool = workers->pool(sc->worker);
    for (;;) {
      auto msg = sc->conn->Recv();
      if (!msg.ok()) {
        if (msg.status().code() != StatusCode::kCancelled && msg.status().code() != StatusCode::kUnavailable) {
          SPDLOG_WARN("hrpc server: connection {} failed: {}", *sc->peer, msg.status().ToString());
        }
        break;
      }
      auto rx = internal::ReadFrame(pool, *msg);
      if (!rx.ok() && !options.authenticator && sc->info->started.Get() == 0 &&
          transport::RefuseAuthenticationHello(
              *sc->conn, pool, *msg,
              Status(StatusCode::kUnauthenticated, "this server does not authenticate clients"))) {
        SPDLOG_WARN("hrpc server: closing connection {}: the client authenticates, this server does not",
                    *sc->peer);
        *msg = mempool::IoBuf();
        transport::CloseAfter(*sc->conn, std::chrono::milliseconds(500));  // the refusal reaches the client
        break;
      }
      // The frame holds what it needs (a share of the block, or a copy of the
      // control part and shares of the payload): the attachment's memory goes
      // back as soon as the request is done with it.
      *msg = mempool::IoBuf();
      if (!rx.ok()) {
        SPDLOG_WARN("hrpc server: closing connection {}: malformed frame: {}", *sc->peer, rx.status().ToString());
        break;
      }
      const wire::FrameHeader& h = rx->frame.header();
      if (h.kind == wire::FrameKind::kRequest || h.kind == wire::FrameKind::kStreamOpen) {
        if (sc->active.contains(h.txn_id) || sc->streams.count(h.txn_id) != 0 || sc->releases.count(h.txn_id) != 0) {
          SPDLOG_WARN("hrpc server: closing connection {}: duplicate txn id {}", *sc->peer, h.txn_id);
          break;
        }
        if (h.kind == wire::FrameKind::kStreamOpen &&
            (!rx->attachment.empty() || rx->frame.num_descriptors() != 0 || h.message_len != wire::kStreamWindowSize)) {
          // Its body is the client's window and nothing else; the stream's
          // messages carry its data (and count against its window).
          SPDLOG_WARN("hrpc server: closing connection {}: stream_open {} carries {} message bytes, an attachment of {} "
                      "and {} descriptors (the {}-byte window only)",
                      *sc->peer, h.txn_id, h.message_len, rx->attachment.size(), rx->frame.num_descriptors(),
                      wire::kStreamWindowSize);
          break;
        }
        // Its deadline counts from here: a request that waits for the
        // connection's quota keeps it.
        const Clock::time_point arrival = coro::SteadyNow();
        const uint64_t arrival_tick = rpcz.empty() ? 0 : clock->Now();
        const uint64_t quota_bytes = h.kind == wire::FrameKind::kRequest ? RequestBytes(*rx) : 0;
        if (h.kind == wire::FrameKind::kRequest && !AwaitQuota(*sc, quota_bytes)) break;
        sc->info->started.Add();
        if (h.kind == wire::FrameKind::kStreamOpen) {
          // The header and the window are kept, not the received block.
          StreamOpen open{h, {}};
          std::memcpy(open.window.data(), rx->frame.message().data(), open.window.size());
          // Registered now, so that its messages, which may follow at once, find it.
          internal::StreamSettings st;
          st.receive_window = options.stream_window;
          st.eager_threshold = options.eager_threshold;
          st.pull_chunk = options.bulk_chunk_bytes;
          st.pull_window = options.bulk_window;
          st.server_side = true;
          auto core = std::make_shared<internal::StreamCore>(*sc->conn, pool, h.txn_id, st);
          sc->streams.emplace(h.txn_id, core);
          workers->scheduler(sc->worker).Spawn(
              [self = shared_from_this(), sc, open, core, arrival] { self->HandleStream(sc, open, core, arrival); },
              "hrpc-stream");
          continue;
        }
        // Served in place, with the frame where it was read: no coroutine to
        // start and no copy of the frame. A handler that suspends (waits for
        // bulk data, a timer, another call) first starts a new reader, so the
        // connection keeps being read; this coroutine then ends with it.
        ReaderHandoff handoff{this, &sc};
        coro::this_coro::OnNextSuspend(&HandOffReading, &handoff);
        try {
          HandleRequest(sc, *rx, arrival, arrival_tick, quota_bytes);
        } catch (const std::exception& e) {
          // Not the handler's (that one is an error response): the server's
          // own state for the request is unknown, so the connection ends.
          SPDLOG_ERROR("hrpc server: closing connection {}: exception while serving txn {}: {}", *sc->peer,
                       h.txn_id, e.what());
          if (coro::this_coro::CancelOnNextSuspend()) break;
          sc->conn->Close();  // the new reader ends it
          return;
        }
        if (!coro::this_coro::CancelOnNextSuspend()) return;  // the new reader has the connection
      } else if (h.kind == wire::FrameKind::kCancel) {
        auto it = sc->active.find(h.txn_id);
        if (it != sc->active.end()) it->second->MarkCancelled();
        if (auto st = sc->streams.find(h.txn_id); st != sc->streams.end()) {
          st->second->OnPeerGone(CancelledError("stream cancelled by the client"));
        }
      } else if (h.kind == wire::FrameKind::kStreamMessage || h.kind == wire::FrameKind::kStreamWindow ||
                 h.kind == wire::FrameKind::kStreamClose) {
        auto it = sc->streams.find(h.txn_id);
        if (it == sc->streams.end()) continue;  // ended here: late frames are dropped
        std::shared_ptr<internal::StreamCore> core = it->second;
        Status bad;
        if (h.kind == wire::FrameKind::kStreamMessage) {
          bad = core->OnMessage(std::move(*rx));
        } else if (h.kind == wire::FrameKind::kStreamWindow) {
          bad = core->OnWindow(rx->frame.message());
        } else {
          core->OnClose(Status::Ok());
        }
        if (!bad.ok()) {
          SPDLOG_WARN("hrpc server: ending stream {} of {}: {}", h.txn_id, *sc->peer, bad.ToString());
          core->End(std::move(bad));
        }
      } else if (h.kind == wire::FrameKind::kPing) {
        wire::FrameHeader pong;
        pong.kind = wire::FrameKind::kPong;
        pong.txn_id = h.txn_id;
        if (auto f = internal::SmallFrame(pool, pong, {}); f.ok()) sc->conn->Send(std::move(*f)).IgnoreError();
      } else if (h.kind == wire::FrameKind::kRelease) {
        auto it = sc->releases.find(h.txn_id);
        if (it != sc->releases.end()) it->second->Set();
      } else if (h.kind == wire::FrameKind::kResponse) {
        SPDLOG_WARN("hrpc server: closing connection {}: a client sent a response frame", *sc->peer);
        break;
      }
    }
    CloseConn(sc);
    {
      std::lock_guard lock(conn_infos_mu);
      std::erase(conn_infos, sc->info);
    }
    auto& list = conns[sc->worker];
    list.erase(std::remove(list.begin(), list.end(), sc), list.end());
    sc.reset();
    live_conns.fetch_sub(1);
  }

  // Finishes (or abandons, when the handler did not run) a dedup entry when
  // HandleRequest returns, after the response was sent.
  class DedupGuard {
   public:
    DedupGuard() = default;
    DedupGuard(internal::DedupWindow* w, uint64_t id, std::shared_ptr<internal::DedupEntry> e)
        : window_(w), id_(id), entry_(std::move(e)) {}
    DedupGuard(DedupGuard&& o) noexcept { *this = std::move(o); }
    DedupGuard& operator=(DedupGuard&& o) noexcept {
      window_ = std::exchange(o.window_, nullptr);
      id_ = o.id_;
      entry_ = std::move(o.entry_);
      ran_ = o.ran_;
      status_ = std::move(o.status_);
      response_ = std::move(o.response_);
      attachment_ = o.attachment_;
      return *this;
    }
    ~DedupGuard() {
      if (window_ == nullptr) return;
      if (ran_) {
        window_->Finish(id_, entry_, std::move(status_), std::move(response_), attachment_);
      } else {
        window_->Abandon(id_, entry_);
      }
    }
    void Ran(const Status& s, std::string_view response, bool attachment) {
      if (window_ == nullptr) return;
      ran_ = true;
      status_ = s;
      if (!attachment) response_.assign(response);  // a response with an attachment is not kept
      attachment_ = attachment;
    }

   private:
    internal::DedupWindow* window_ = nullptr;
    uint64_t id_ = 0;
    std::shared_ptr<internal::DedupEntry> entry_;
    bool ran_ = false;
    Status status_;
    std::string response_;
    bool attachment_ = false;
  };

  // Answers a retry of request h.request_id with what its first run answered.
  Status AnswerRetry(ServerConn& sc, const wire::FrameHeader& h, internal::DedupEntry& e, Clock::time_point deadline) {
    Status s;
    // Bounded by the window too: a retry never waits longer than the first
    // run's answer would be kept.
    const auto until = std::min(deadline, Clock::now() + options.dedup_window);
    if (!e.done.IsSet() && !e.done.WaitUntil(until).ok() && !e.done.IsSet()) {
      s = DeadlineExceededError("gave up waiting for the first run of this request (a retry)");
    } else if (!e.ran) {
      s = UnavailableError("the first run of this request (a retry) did not complete: retry");
    } else if (!e.status.ok()) {
      s = e.status;
    } else if (!e.kept) {
      s = AbortedError("request already executed; its response is not kept (it had an attachment or was too large)");
    } else {
      s = ResponseFits(*sc.conn, wire::PrefixSize(0) + e.response.size());
    }
    if (!s.ok()) {
      SendError(sc, h, s);
      return s;
    }
    wire::FrameHeader rh;
    rh.kind = wire::FrameKind::kResponse;
    rh.txn_id = h.txn_id;
    rh.service_id = h.service_id;
    rh.method_id = h.method_id;
    auto m = internal::RawWithRoom(workers->pool(sc.worker), e.response, wire::PrefixSize(0));
    if (!m.ok()) {
      SendError(sc, h, m.status());
      return m.status();
    }
    auto f = internal::FinishFrame(*m, rh, {});
    if (!f.ok()) {
      SendError(sc, h, f.status());
      return f.status();
    }
    if (!sc.closed) sc.conn->Send(std::move(*f)).IgnoreError();
    return Status::Ok();
  }

  // A response message travels as one control message: one larger than the
  // connection takes is refused (the client's side of the rule: StartCall).
  static Status ResponseFits(const transport::Connection& conn, size_t bytes) {
    const size_t limit = conn.limits().max_message_bytes;
    if (bytes <= limit) return Status::Ok();
    return ResourceExhaustedError("response message of " + std::to_string(bytes) +
                                  " bytes does not fit a control message of " + std::to_string(limit) +
                                  " bytes: send bulk data as the response attachment");
  }

  void SendError(ServerConn& sc, const wire::FrameHeader& req, const Status& s) {
    wire::FrameHeader h;
    h.kind = wire::FrameKind::kResponse;
    h.txn_id = req.txn_id;
    h.service_id = req.service_id;
    h.method_id = req.method_id;
    h.status = s.code();
    auto f = internal::SmallFrame(workers->pool(sc.worker), h, s.message());
    if (f.ok() && !sc.closed) sc.conn->Send(std::move(*f)).IgnoreError();
  }

  void HandleRequest(const std::shared_ptr<ServerConn>& sc, internal::ReceivedFrame& rx, Clock::time_point arrival,
                     uint64_t arrival_tick, uint64_t quota_bytes) {
    // The connection's quota is given back once the response is handed to the
    // transport (before a response waits for the client's release): a client
    // that does not read its responses holds at most its quota's worth of
    // requests, their responses waiting for its credits.
    struct Quota {
      Impl& im;
      ServerConn& sc;
      uint64_t bytes;
      bool held = true;
      void Release() {
        if (std::exchange(held, false)) im.ReleaseQuota(sc, bytes);
      }
      ~Quota() { Release(); }
    } quota{*this, *sc, quota_bytes};
    const wire::Frame& frame = rx.frame;
    const wire::FrameHeader& h = frame.header();
    mempool::Pool& pool = workers->pool(sc->worker);
    MethodCounters& mc = CountersFor(h.service_id, h.method_id);
    mc.Begin();
    uint64_t bytes_in = h.message_len + rx.attachment.size();
    uint64_t bytes_out = 0;
    // Phase ticks for /rpcz (CycleClock reads only while the endpoint is on).
    internal::RpczRing* const ring = rpcz.empty() ? nullptr : rpcz[sc->worker].get();
    internal::RpczTicks ticks;
    auto mark = [&](uint64_t& t) {
      if (ring != nullptr) t = clock->Now();
    };
    ticks.arrival = arrival_tick;
    mark(ticks.start);
    auto finish = [&](const Status& s) {
      mc.End(coro::SteadyNow() - arrival, s.code(), bytes_in, bytes_out);
      sc->info->finished.Add();
      if (ring != nullptr) ring->Finish(&mc, *sc->peer, s.code(), ticks, clock->Now(), bytes_in, bytes_out, h.txn_id);
    };

    // In the connection's map of calls in flight from here until its answer
    // is sent (a cancel finds it, a second request with its txn_id is a
    // protocol error); counted as running once admitted below. Both end on
    // every way out, an exception included.
    ServerContext ctx;
    sc->active.Insert(h.txn_id, &ctx);
    struct Running {
      Impl& im;
      ServerConn& sc;
      uint64_t txn;
      bool listed = true;
      bool counted = false;
      void End() {
        if (std::exchange(listed, false)) sc.active.Erase(txn);
        if (std::exchange(counted, false)) im.running.fetch_sub(1);
      }
      ~Running() { End(); }
    } run{*this, *sc, h.txn_id};
    auto svc_it = services_by_id.find(h.service_id);
    if (svc_it == services_by_id.end()) {
      Status s = UnimplementedError("unknown service id " + std::to_string(h.service_id));
      SendError(*sc, h, s);
      return finish(s);
    }
    ctx.set_deadline_budget_us(h.deadline_us, arrival);
    if (ctx.DeadlineExpired()) {
      Status s = DeadlineExceededError("deadline expired before the request was served");
      SendError(*sc, h, s);
      return finish(s);
    }
    // A retry of a request this server ran (or runs) gets the first answer.
    DedupGuard dedup_guard;
    if (h.request_id != 0 && dedup != nullptr) {
      auto [entry, first] = dedup->Begin(h.request_id, h.service_id, h.method_id, RequestFingerprint(rx));
      if (entry != nullptr && !first) {
        Status s = AnswerRetry(*sc, h, *entry, ctx.deadline());
        return finish(s);
      }
      if (first) dedup_guard = DedupGuard(dedup.get(), h.request_id, std::move(entry));
    }
    if (stopping.load()) {
      // Shutting down: a call that has not started is refused without running
      // (its client may send it elsewhere); a retry of one that ran got the
      // first answer above.
      Status s = UnavailableError("server shutting down");
      SendError(*sc, h, s);
      return finish(s);
    }
    if (running.fetch_add(1) >= static_cast<int64_t>(options.max_concurrent_requests)) {
      running.fetch_sub(1);
      Status s = ResourceExhaustedError("server is at max_concurrent_requests (" +
                                        std::to_string(options.max_concurrent_requests) + ")");
      SendError(*sc, h, s);
      return finish(s);
    }
    run.counted = true;
    ctx.set_peer(sc->peer);
    ctx.set_pool(&pool);
    ctx.request_attachment() = std::move(rx.attachment);
    std::vector<wire::BulkDescriptor> descs;
    size_t num_push = 0;
    for (size_t i = 0; i < frame.num_descriptors(); ++i) {
      descs.push_back(frame.descriptor(i));
      if (descs.back().direction == wire::BulkDirection::kPush) ++num_push;
    }
    internal::ConnBulk bulk(*sc->conn, pool, options.bulk_chunk_bytes, options.bulk_window, ctx, sc);
    ctx.set_bulk(descs, &bulk);

    Status status;
    if (options.auto_pull) {
      auto pulled = ctx.PullAllBulk();
      if (pulled.ok()) {
        bytes_in += *pulled;
      } else {
        status = pulled.status();
      }
    }
    mark(ticks.pulled);
    FrameWriter writer(pool, num_push, ctx);
    const bool handler_ran = status.ok();
    if (handler_ran) {
      // Generated services guard each handler themselves; this guards a
      // service written by hand.
      status = internal::GuardHandler(svc_it->second->service_name(), [&] {
        return svc_it->second->CallMethod(
            h.method_id, ctx,
            std::string_view(reinterpret_cast<const char*>(frame.message().data()), frame.message().size()), writer);
      });
    }
    mark(ticks.handled);
    // Shutdown cancels the calls running too: those are answered with what
    // their handler made of it (the answer a retry then gets from the dedup
    // window, but for a CANCELLED: that run did not happen), not dropped like
    // the calls their client cancelled.
    const bool client_cancelled = ctx.IsCancelled() && !ctx.DeadlineExpired() && !stopping.load();
    if (status.ok() && !writer.written) status = InternalError("handler returned OK without a response");
    if (handler_ran) {
      // The handler's own answer, also when it came after the deadline: a
      // retry gets what the call did, not that the first caller gave up.
      dedup_guard.Ran(status, writer.written ? std::string_view(writer.msg.buf.data() + writer.msg.room,
                                                                writer.msg.message_len)
                                             : std::string_view(),
                      ctx.response_attachment().size() > 0);
    }
    if (status.ok() && ctx.DeadlineExpired()) status = DeadlineExceededError("deadline expired while serving");
    // After the dedup window has the answer: a retry of the call meets the
    // same refusal there, its handler not run again.
    if (status.ok()) status = ResponseFits(*sc->conn, wire::PrefixSize(num_push) + writer.msg.message_len);

    internal::ResponseAttachment placed;
    if (status.ok()) {
      const size_t control = wire::PrefixSize(num_push) + writer.msg.message_len;
      auto r = internal::PlaceResponseAttachment(std::move(ctx.response_attachment()), control,
                                                 options.eager_threshold, *sc->conn, pool, descs, ctx, bulk);
      if (r.ok()) {
        placed = std::move(*r);
        bytes_out += placed.pushed_bytes;
      } else {
        status = r.status();
      }
    }
    mark(ticks.pushed);
    // READs and WRITEs the call stopped waiting for (deadline, cancel) end
    // before the answer: the client frees its exposed memory when it hears.
    bulk.ops().Drain();

    ctx.request_attachment() = mempool::IoBuf();
    if (client_cancelled) {
      // The client has completed the call already; nobody reads a response.
      // One that exposed memory for this call holds it until it hears that
      // the server is done with it.
      internal::RevokeAll(*sc->conn, placed.for_read);
      const Status why = status.ok() ? CancelledError("cancelled") : status;
      if (!descs.empty()) SendError(*sc, h, CancelledError("cancelled by the client"));
      return finish(why);
    }
    if (!status.ok()) {
      SendError(*sc, h, status);
      return finish(status);
    }
    wire::FrameHeader rh;
    rh.kind = wire::FrameKind::kResponse;
    rh.txn_id = h.txn_id;
    rh.service_id = h.service_id;
    rh.method_id = h.method_id;
    rh.attachment_len = static_cast<uint32_t>(placed.attachment.size());
    auto f = internal::FinishFrame(writer.msg, rh, placed.descriptors);
    if (!f.ok()) {
      internal::RevokeAll(*sc->conn, placed.for_read);
      SendError(*sc, h, f.status());
      return finish(f.status());
    }
    bytes_out += writer.msg.message_len + placed.attachment.size();
    if (!sc->closed) {
      // A response the client READs from here: listen for its release before
      // sending (the release may come back before Send returns).
      const bool hold = !placed.for_read.exposed.empty();
      coro::LocalEvent released;
      if (hold) {
        sc->releases[h.txn_id] = &released;
        running.fetch_add(1);
      }
      Status sent;
      if (placed.path == internal::AttachmentPath::kStream) {
        sent = sc->conn->SendWithPayload(std::move(*f), std::move(placed.attachment));
      } else {
        f->Append(std::move(placed.attachment));
        sent = sc->conn->Send(std::move(*f));
      }
      if (!sent.ok()) SPDLOG_DEBUG("hrpc server: response to {} not sent: {}", *sc->peer, sent.ToString());
      run.End();
      quota.Release();
      if (hold) {
        // Exposed until the client releases it, release_timeout passes, or
        // the connection closes. Not only until the call's deadline: a client
        // whose deadline passed during its READs releases once they finished,
        // and revoking under them would fail the whole RDMA connection.
        const auto until = Clock::now() + options.release_timeout;
        if (sent.ok() && !sc->closed && !released.IsSet() && !released.WaitUntil(until).ok()) {
          SPDLOG_DEBUG("hrpc server: {} did not release the response of txn {} in time", *sc->peer, h.txn_id);
        }
        sc->releases.erase(h.txn_id);
        running.fetch_sub(1);
      }
    }
    internal::RevokeAll(*sc->conn, placed.for_read);
    finish(Status::Ok());
  }

  // One stream, from its open frame to the close frame with the handler's
  // Status (not sent when the client cancelled: it has ended the stream).
  struct StreamOpen {
    wire::FrameHeader header;
    std::array<std::byte, wire::kStreamWindowSize> window;
  };

  void HandleStream(const std::shared_ptr<ServerConn>& sc, const StreamOpen& open,
                    const std::shared_ptr<internal::StreamCore>& core, Clock::time_point arrival) {
    const wire::FrameHeader& h = open.header;
    MethodCounters& mc = CountersFor(h.service_id, h.method_id);
    mc.Begin();
    ServerContext ctx;
    ctx.set_deadline_budget_us(h.deadline_us, arrival);
    bool counted = false;
    Status status = [&]() -> Status {
      auto svc_it = services_by_id.find(h.service_id);
      if (svc_it == services_by_id.end()) return UnimplementedError("unknown service id " + std::to_string(h.service_id));
      if (ctx.DeadlineExpired()) return DeadlineExceededError("deadline expired before the stream was served");
      // Opened during shutdown: refused without running, like a call.
      if (stopping.load()) return UnavailableError("server shutting down");
      if (running.fetch_add(1) >= static_cast<int64_t>(options.max_concurrent_requests)) {
        running.fetch_sub(1);
        return ResourceExhaustedError("server is at max_concurrent_requests (" +
                                      std::to_string(options.max_concurrent_requests) + ")");
      }
      counted = true;
      HRPC_TRY(core->OnWindow(open.window).WithContext("stream open"));
      sc->active.Insert(h.txn_id, &ctx);
      if (core->ended()) {
        // Cancelled (or its connection closed) before this coroutine ran:
        // the handler does not run. A client's cancel gets no close.
        if (core->end_status().code() == StatusCode::kCancelled) ctx.MarkCancelled();
        return core->end_status();
      }
      ctx.set_peer(sc->peer);
      ctx.set_pool(&workers->pool(sc->worker));
      if (Status s = core->SendInitialWindow(); !s.ok()) return s;
      HandlerStream stream(*core, ctx);
      // Generated services guard each handler themselves; this guards a
      // service written by hand (an exception must not skip the stream's end).
      Service* svc = svc_it->second;
      return internal::GuardHandler(svc->service_name(), [&] { return svc->CallStream(h.method_id, ctx, stream); });
    }();
    // A stream that broke (cancelled, deadline, connection, a bad message)
    // ends with why, whatever the handler made of it.
    if (core->ended()) status = core->end_status();
    if (status.ok() && ctx.DeadlineExpired()) status = DeadlineExceededError("deadline expired while serving");
    // Shutdown's cancel gets a close (saying so), a client's does not.
    const bool client_cancelled = ctx.IsCancelled() && !ctx.DeadlineExpired() && !stopping.load();
    if (!sc->closed) {
      // A cancelled stream gets no close, unless the client sent messages whose
      // attachments this side READs: it keeps those exposed until this close,
      // sent now that the handler (and so every READ of them) is over.
      if (!client_cancelled || core->received_pull()) {
        if (Status s = core->SendClose(status); !s.ok()) {
          SPDLOG_DEBUG("hrpc server: close of stream {} to {} not sent: {}", h.txn_id, *sc->peer, s.ToString());
        }
      }
      // The close goes first (a client blocked in Write() learns the stream is
      // over), then the client reads what is still queued on its side, its
      // attachments from this side's memory: that stays exposed until the
      // client's windows say it was consumed, it cancels (once its READs in
      // flight are over), the connection ends or release_timeout passes,
      // whatever the status. Not only until the deadline: a client whose
      // deadline passed during a READ cancels when that READ is over (also
      // after this close, for the messages it dropped), and revoking under
      // it would fail the whole RDMA connection.
      core->AwaitConsumed(Clock::now() + options.release_timeout);
    }
    sc->active.Erase(h.txn_id);
    core->ReleaseExposures();
    sc->streams.erase(h.txn_id);
    if (counted) running.fetch_sub(1);
    mc.End(coro::SteadyNow() - arrival, status.code(), core->bytes_in(), core->bytes_out());
    sc->info->finished.Add();
  }
};

Result<std::unique_ptr<Server>> Server::Create(Runtime& runtime, ServerOptions options) {
  if (options.listen.empty()) return InvalidArgumentError("ServerOptions.listen is empty");
  if (options.bulk_chunk_bytes == 0) return InvalidArgumentError("bulk_chunk_bytes must be > 0");
  if (options.bulk_window == 0) return InvalidArgumentError("bulk_window must be > 0");
  if (options.stream_window.messages < wire::kInitialStreamWindowMessages ||
      options.stream_window.bytes < wire::kInitialStreamWindowBytes) {
    return InvalidArgumentError("stream_window must be at least 16 messages and 256 KiB");
  }
  auto impl = std::make_shared<Impl>();
  impl->workers = runtime.core();
  options.bulk_chunk_bytes = std::min(options.bulk_chunk_bytes, runtime.pool(0).options().max_class_bytes);
  impl->options = std::move(options);
  impl->listeners.resize(impl->workers->size());
  impl->conns.resize(impl->workers->size());
  impl->authenticating.resize(impl->workers->size());
  impl->reflection = internal::MakeReflectionService(impl->services_by_id, impl->stats);
  impl->services_by_id.emplace(impl->reflection->service_id(), impl->reflection.get());
  for (const MethodDescriptor& m : impl->reflection->methods()) {
    impl->registered[(uint64_t{m.service_id} << 32) | m.method_id] =
        &impl->reflection_stats.For(m.service_id, m.method_id, m.full_name);
  }
  if (impl->options.dedup_window.count() > 0) {
    impl->dedup = std::make_unique<internal::DedupWindow>(impl->options.dedup_window, impl->options.dedup_max_entries,
                                                          impl->options.dedup_max_bytes);
  }
  impl->metrics = std::make_unique<internal::MetricsCollector>(*impl->workers, impl.get());
  impl->workers->servers.fetch_add(1, std::memory_order_relaxed);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Result<std::unique_ptr<Server>> Server::Create(ServerOptions options) {
  if (options.listen.empty()) return InvalidArgumentError("ServerOptions.listen is empty");
  if (options.runtime.name == "hrpc") options.runtime.name = "hrpc-srv";
  HRPC_ASSIGN_OR_RETURN(auto runtime, Runtime::Create(options.runtime));
  return Create(*runtime, std::move(options));
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  Shutdown();
  impl_->workers->servers.fetch_sub(1, std::memory_order_relaxed);
}

Status Server::RegisterService(Service* service) {
  if (impl_->started.load()) return FailedPreconditionError("RegisterService after Start()");
  auto [it, inserted] = impl_->services_by_id.emplace(service->service_id(), service);
  if (!inserted) {
    return AlreadyExistsError("service id " + std::to_string(service->service_id()) + " (" +
                              std::string(service->service_name()) + ") already registered as " +
                              std::string(it->second->service_name()));
  }
  for (const MethodDescriptor& m : service->methods()) {
    impl_->registered[(uint64_t{m.service_id} << 32) | m.method_id] =
        &impl_->stats.For(m.service_id, m.method_id, m.full_name);
  }
  return Status::Ok();
}

Status Server::Start() {
  if (impl_->started.exchange(true)) return FailedPreconditionError("Server::Start called twice");
  Impl& im = *impl_;
  im.started_at = std::chrono::system_clock::now();
  if (!im.options.http_listen.empty()) {
    // Before any connection: the request path reads `rpcz` unlocked.
    for (size_t w = 0; w < im.workers->size(); ++w) im.rpcz.push_back(std::make_unique<internal::RpczRing>(w));
    HRPC_ASSIGN_OR_RETURN(im.http, internal::HttpEndpoint::Start(im.options.http_listen, im.HttpRoutes()));
    {
      std::lock_guard lock(im.mu);
      im.http_addr = im.http->address();
    }
    SPDLOG_INFO("hrpc server: HTTP endpoint on http://{} (/metrics /status /rpcz /health)", im.http->address());
  }
  for (const std::string& raw : im.options.listen) {
    HRPC_ASSIGN_OR_RETURN(std::string uri, ResolveUri(raw, im.workers->options().transport_choice));
    const std::string scheme = uri.substr(0, uri.find("://"));
    std::string bound_uri;
    // TCP: every worker listens on the port (SO_REUSEPORT). rdmacm and the
    // loopback network have no port sharing: one listener, on worker 0.
    const size_t nworkers = scheme == "tcp" ? im.workers->size() : 1;
    for (size_t w = 0; w < nworkers; ++w) {
      const std::string target = w == 0 ? uri : bound_uri;
      HRPC_TRY(im.workers->RunOn(w, [&im, w, &scheme, &target, &bound_uri]() -> Status {
        HRPC_ASSIGN_OR_RETURN(transport::Transport * t, im.workers->TransportFor(w, scheme));
        HRPC_ASSIGN_OR_RETURN(auto listener, im.options.tls ? t->ListenTls(target, im.options.tls) : t->Listen(target));
        // A peer that has not authenticated makes the server hold little memory.
        if (im.options.authenticator) listener->HoldUntilAdmitted(im.options.authenticator->ClientSpeaksFirst());
        if (w == 0) bound_uri = listener->uri();
        transport::Listener* raw_listener = listener.get();
        im.listeners[w].push_back(std::move(listener));
        im.accept_loops.fetch_add(1);
        im.workers->scheduler(w).Spawn([self = im.shared_from_this(), w, raw_listener] { self->AcceptLoop(w, raw_listener); },
                                       "hrpc-accept");
        return Status::Ok();
      }));
    }
    std::lock_guard lock(im.mu);
    im.bound.push_back(bound_uri);
    SPDLOG_INFO("hrpc server: listening on {} ({} worker{})", bound_uri, nworkers, nworkers == 1 ? "" : "s");
  }
  if (!im.options.etcd_register.empty()) {
    HRPC_ASSIGN_OR_RETURN(im.registration, RegisterInEtcd(im.options, im.bound.front()));
  }
  im.serving.store(true);
  return Status::Ok();
}

void Server::Shutdown() {
  Impl& im = *impl_;
  if (im.shut_down || !im.workers) return;
  im.shut_down = true;
  if (im.registration) im.registration->Stop();  // clients stop picking it before it closes
  im.stopping.store(true);
  for (size_t w = 0; w < im.workers->size(); ++w) {
    im.workers->RunOn(w, [&im, w] {
      for (auto& l : im.listeners[w]) l->Close();
      for (auto& sc : im.conns[w]) {
        for (auto& [txn, ctx] : sc->active) ctx->MarkCancelled();
        // Ended for the handler only: what it already sent stays exposed for
        // the client to read until it has, and so does a response held for
        // the client's READs (or the grace ends and the connections close).
        for (auto& [txn, core] : sc->streams) core->End(UnavailableError("server shutting down"));
      }
      return Status::Ok();
    }).IgnoreError();
  }
  const Clock::time_point grace_end = Clock::now() + im.options.shutdown_grace;
  WaitFor([&im] { return im.running.load() == 0; }, grace_end);
  for (size_t w = 0; w < im.workers->size(); ++w) {
    im.workers->RunOn(w, [&im, w, grace_end] {
      auto list = im.conns[w];
      // Answers still queued for clients that have not taken them yet (TCP)
      // go out first: Close() would drop them.
      WaitFor(
          [&list] {
            return std::all_of(list.begin(), list.end(),
                               [](const auto& sc) { return sc->closed || sc->conn->unsent_bytes() == 0; });
          },
          grace_end);
      for (auto& sc : list) im.CloseConn(sc);
      for (transport::Connection* c : im.authenticating[w]) c->Close();
      return Status::Ok();
    }).IgnoreError();
  }
  WaitFor([&im] { return im.live_conns.load() == 0 && im.accept_loops.load() == 0; },
          Clock::now() + std::chrono::seconds(5));
  if (im.live_conns.load() > 0 || im.running.load() > 0) {
    SPDLOG_WARN("hrpc server: shutdown with {} connections / {} requests still alive", im.live_conns.load(),
                im.running.load());
  }
  for (size_t w = 0; w < im.workers->size(); ++w) {
    im.workers->RunOn(w, [&im, w] {
      im.listeners[w].clear();
      return Status::Ok();
    }).IgnoreError();
  }
  if (im.http) im.http->Stop();  // /health said "shutting down" until here
}

std::vector<std::string> Server::listen_uris() const {
  std::lock_guard lock(impl_->mu);
  return impl_->bound;
}

std::vector<MethodStats> Server::Stats() const { return impl_->stats.Snapshot(); }

size_t Server::num_workers() const noexcept { return impl_->workers->size(); }

mempool::Pool& Server::pool(size_t worker) { return impl_->workers->pool(worker); }

size_t Server::num_connections() const { return static_cast<size_t>(std::max<int64_t>(0, impl_->live_conns.load())); }

uint64_t Server::deduplicated_requests() const { return impl_->dedup ? impl_->dedup->hits() : 0; }

std::string Server::http_address() const { return impl_->HttpAddress(); }

std::string Server::MetricsText() const { return internal::SerializeMetrics(impl_->metrics->Collect()); }

void Server::AddCollectable(std::weak_ptr<prometheus::Collectable> collectable) {
  impl_->metrics->Add(std::move(collectable));
}

}  // namespace hrpc
