// Private to the RPC runtime: what the HTTP endpoint serves
// (docs/observability.md). Everything here runs on the endpoint's thread, or
// on whichever thread calls Server::MetricsText() / Runtime::MetricsText():
// never on a worker. It only reads what the data path records (relaxed
// counters, histograms, the rpcz rings) and takes locks the data path does
// not hold per call.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "hrpc/base/counter.h"
#include "hrpc/base/status.h"
#include "hrpc/rpc/stats.h"
#include "rpcz.h"
#include "runtime_internal.h"

namespace hrpc::internal {

class WorkerSet;

// What a Server shows besides its runtime. Implemented by Server::Impl.
class ServerView {
 public:
  struct ServiceInfo {
    std::string name;
    std::vector<std::string> methods;  // full names
  };
  virtual ~ServerView() = default;
  virtual const StatsRegistry& server_stats() const = 0;
  virtual std::vector<std::string> bound_uris() const = 0;
  virtual std::vector<ServiceInfo> services() const = 0;
  virtual std::vector<std::shared_ptr<const ConnectionInfo>> connections() const = 0;
  virtual int64_t requests_running() const = 0;
  virtual size_t max_concurrent_requests() const = 0;
  // Requests that waited for their connection's quota (ServerOptions::
  // max_requests_per_connection / max_request_bytes_per_connection).
  virtual uint64_t quota_waits() const = 0;
  // ServerOptions::authenticator's name ("" without one), the connections that
  // passed it and those that failed it (refused and closed).
  virtual std::string_view authenticator() const = 0;
  virtual uint64_t auth_successes() const = 0;
  virtual uint64_t auth_failure_count() const = 0;
  virtual std::chrono::system_clock::time_point start_time() const = 0;
  // The rpcz rings of every worker (empty when rpcz is off).
  virtual void ReadRpcz(std::vector<RpczRecord>* slow, std::vector<RpczRecord>* failed) const = 0;
  // OK when serving; the reason otherwise (not started, shutting down, a
  // worker that does not answer).
  virtual Status Health() const = 0;
};

// The Prometheus families of a runtime and, optionally, of one server on it.
// Keeps what the busy ratio needs between scrapes.
class MetricsCollector final : public prometheus::Collectable {
 public:
  // `workers` and `server` must outlive the collector.
  MetricsCollector(WorkerSet& workers, const ServerView* server);
  std::vector<prometheus::MetricFamily> Collect() const override;
  // Families of other collectables (the application's), appended to Collect().
  void Add(std::weak_ptr<prometheus::Collectable> c);

  // Busy fraction of worker i over the last second or more (see .cc).
  double BusyRatio(size_t worker, std::chrono::nanoseconds busy, std::chrono::nanoseconds idle) const;

 private:
  struct Sample {
    std::chrono::steady_clock::time_point t;
    int64_t busy_ns, idle_ns;
  };
  WorkerSet& workers_;
  const ServerView* server_;
  mutable std::mutex mu_;
  mutable std::vector<std::deque<Sample>> samples_;  // per worker
  std::vector<std::weak_ptr<prometheus::Collectable>> extra_;
};

// The Prometheus text exposition format (version 0.0.4) of `families`.
std::string SerializeMetrics(const std::vector<prometheus::MetricFamily>& families);

// The /status and /rpcz pages: plain text, or HTML.
std::string RenderStatus(WorkerSet& workers, const ServerView* server, const MetricsCollector& metrics, bool html,
                         const std::string& http_address);
std::string RenderRpcz(const ServerView& server, size_t max_rows, bool html);

// The built-in HTTP endpoint: a cpp-httplib server on a thread of its own (and
// one for the requests), never on a worker.
class HttpEndpoint {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };
  struct Request {
    std::string path;
    std::map<std::string, std::string> params;
    bool wants_html = false;  // a browser (Accept: text/html) or ?format=html
  };
  using Handler = std::function<Response(const Request&)>;

  // Binds `listen` ("host:port", port 0 picks one; "http://" optional) and
  // starts serving `routes` (path -> handler). INVALID_ARGUMENT for a bad
  // address; UNAVAILABLE when it cannot bind.
  static Result<std::unique_ptr<HttpEndpoint>> Start(const std::string& listen, std::map<std::string, Handler> routes);
  ~HttpEndpoint();  // Stop()
  void Stop();
  // "127.0.0.1:41234"
  const std::string& address() const noexcept { return address_; }

  class Impl;

 private:
  HttpEndpoint() = default;
  std::unique_ptr<Impl> impl_;
  std::string address_;
};

}  // namespace hrpc::internal
