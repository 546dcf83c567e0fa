// cluster_bench: a ClusterChannel in front of echo servers in processes of
// their own (this program re-run with --serve), on TCP loopback.
//
//   case=slow_server  three servers, one answering every call `--delay-ms`
//                     late; round robin, calls idempotent. Without backup
//                     requests (the same-run baseline) a third of the calls
//                     wait out the delay; with --backup-ms they go to another
//                     server after that long, so p99 drops below the delay.
//   case=failover     five servers; two are SIGKILLed a second into the
//                     measured window. Calls are idempotent: failed calls
//                     must be 0; p99/max show what the failover cost against
//                     the same run without kills (case=steady).
//
// One line per case, key=value. Pinning: servers on --server-cpu, the
// client's worker on --client-cpu (-1: not pinned); CPU% is the client's.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "common/child_process.h"
#include "common/cli.h"
#include "common/echo_service.h"
#include "common/signals.h"
#include "hrpc/rpc/cluster_channel.h"
#include "hrpc/rpc/load.h"
#include "hrpc/rpc/server.h"

namespace {

using namespace std::chrono_literals;

// Echo that answers `delay` late (the coroutine sleeps; the worker serves others).
class DelayedEcho final : public hrpc_examples::Echo::Service {
 public:
  explicit DelayedEcho(std::chrono::milliseconds delay) : delay_(delay) {}
  hrpc::Status Echo(hrpc::ServerContext& ctx, const hrpc_examples::EchoRequest& req,
                    hrpc_examples::EchoResponse* resp) override {
    if (delay_.count() > 0) hrpc::coro::this_coro::SleepFor(delay_);
    if (ctx.IsCancelled()) return hrpc::CancelledError("cancelled");
    resp->set_text(req.text());
    return hrpc::Status::Ok();
  }
  hrpc::Status ServerStats(hrpc::ServerContext&, const hrpc_examples::StatsRequest&,
                           hrpc_examples::StatsResponse* resp) override {
    resp->set_cpu_ns(hrpc::examples::SelfCpuNs());
    return hrpc::Status::Ok();
  }

 private:
  std::chrono::milliseconds delay_;
};

int Serve(const std::string& listen, int delay_ms, int cpu) {
  const sigset_t set = hrpc::examples::BlockStopSignals();
  hrpc::ServerOptions so;
  so.listen = {listen};
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  if (cpu >= 0) so.runtime.cpus = {cpu};
  DelayedEcho service{std::chrono::milliseconds(delay_ms)};
  auto server = hrpc::Server::Create(so);
  if (!server.ok() || !(*server)->RegisterService(&service).ok() || !(*server)->Start().ok()) {
    std::fprintf(stderr, "cluster_bench --serve: cannot start on %s\n", listen.c_str());
    return 1;
  }
  std::printf("READY %s\n", (*server)->listen_uris().at(0).c_str());
  std::fflush(stdout);
  hrpc::examples::WaitForStopSignal(set);
  (*server)->Shutdown();
  return 0;
}

struct Options {
  double seconds = 2;
  int delay_ms = 20;
  int backup_ms = 5;
  int inflight = 8;
  int server_cpu = 0;
  int client_cpu = 1;
  std::string self;
};

std::vector<hrpc::examples::Child> StartServers(const Options& o, int n, int slow) {
  std::vector<hrpc::examples::Child> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(hrpc::examples::StartChild(
        o.self, {"--serve", "--listen=tcp://127.0.0.1:0", "--delay-ms=" + std::to_string(i < slow ? o.delay_ms : 0),
                 "--server-cpu=" + std::to_string(o.server_cpu)}));
  }
  return out;
}

std::string ListOf(const std::vector<hrpc::examples::Child>& servers) {
  std::string list = "list://";
  for (size_t i = 0; i < servers.size(); ++i) list += (i ? "," : "") + hrpc::examples::LoopbackUri(servers[i]);
  return list;
}

struct Run {
  hrpc::LoadResult load;
  hrpc::ClusterStats stats;
};

Run Measure(const Options& o, hrpc::Runtime& rt, const std::string& list, hrpc::ClusterChannelOptions co,
            const std::function<void()>& on_start = {}) {
  auto ch = hrpc::ClusterChannel::Create(rt, list, co);
  if (!ch.ok()) {
    std::fprintf(stderr, "cluster_bench: %s\n", ch.status().ToString().c_str());
    std::exit(1);
  }
  hrpc::LoadOptions lo;
  lo.coroutines_per_worker = static_cast<size_t>(o.inflight);
  lo.duration = std::chrono::duration<double>(o.seconds);
  lo.warmup = std::chrono::duration<double>(0.3);
  lo.on_window_start = on_start;
  hrpc::ClusterChannel* channel = ch->get();
  Run r;
  r.load = hrpc::RunLoad(rt, lo, [channel](hrpc::ClientContext& ctx) {
    hrpc_examples::EchoRequest req;
    req.set_text("x");
    hrpc_examples::EchoResponse resp;
    ctx.set_timeout(5s);
    ctx.set_idempotent(true);
    return hrpc_examples::Echo::Stub(channel).Echo(ctx, req, &resp);
  });
  r.stats = (*ch)->stats();
  return r;
}

void Print(const char* kase, const std::string& extra, const Options& o, const Run& r) {
  std::printf(
      "cluster_bench case=%s %s inflight=%d rps=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f calls=%llu "
      "errors=%llu retries=%llu backups=%llu backup_wins=%llu client_cpu_pct=%.0f pin=server:%d,client:%d%s%s\n",
      kase, extra.c_str(), o.inflight, r.load.rps, r.load.p50_us, r.load.p99_us, r.load.p999_us, r.load.max_us,
      static_cast<unsigned long long>(r.load.calls), static_cast<unsigned long long>(r.load.errors),
      static_cast<unsigned long long>(r.stats.retries), static_cast<unsigned long long>(r.stats.backup_requests),
      static_cast<unsigned long long>(r.stats.backup_wins), r.load.client_cpu_pct, o.server_cpu, o.client_cpu,
      r.load.first_error.empty() ? "" : " first_error=", r.load.first_error.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cluster_bench: backup requests against a slow server, and failover with two of five servers killed"};
  Options o;
  bool serve = false;
  std::string listen;
  std::string cases = "slow_server,failover";
  app.add_flag("--serve", serve, "run as one of the echo servers (used by the benchmark itself)");
  app.add_option("--listen", listen, "--serve: listen URI");
  app.add_option("--seconds", o.seconds, "measured seconds per case")->capture_default_str();
  app.add_option("--delay-ms", o.delay_ms, "how late the slow server answers")->capture_default_str();
  app.add_option("--backup-ms", o.backup_ms, "backup request delay of the slow_server case")->capture_default_str();
  app.add_option("--inflight", o.inflight, "calls in flight")->capture_default_str();
  app.add_option("--server-cpu", o.server_cpu, "cpu of the servers (-1: not pinned)")->capture_default_str();
  app.add_option("--client-cpu", o.client_cpu, "cpu of the client's worker (-1: not pinned)")->capture_default_str();
  app.add_option("--cases", cases, "slow_server,failover")->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  if (serve) return Serve(listen, o.delay_ms, o.server_cpu);
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  o.self.assign(self, static_cast<size_t>(n));

  hrpc::RuntimeOptions ro;
  ro.workers = 1;
  ro.transport_choice = hrpc::TransportChoice::kTcp;
  if (o.client_cpu >= 0) ro.cpus = {o.client_cpu};
  auto rt = hrpc::Runtime::Create(ro).value();

  if (cases.find("slow_server") != std::string::npos) {
    auto servers = StartServers(o, 3, 1);
    const std::string list = ListOf(servers);
    const std::string extra = "servers=3 slow=1 delay_ms=" + std::to_string(o.delay_ms);
    hrpc::ClusterChannelOptions off;
    Run base = Measure(o, *rt, list, off);
    Print("slow_server", extra + " backup=off", o, base);
    hrpc::ClusterChannelOptions on;
    on.backup_request_delay = std::chrono::milliseconds(o.backup_ms);
    Run with = Measure(o, *rt, list, on);
    char ratio[128];
    std::snprintf(ratio, sizeof ratio, " p99_vs_delay=%.2f p99_vs_off=%.2f", with.load.p99_us / (o.delay_ms * 1e3),
                  with.load.p99_us / base.load.p99_us);
    Print("slow_server", extra + " backup=" + std::to_string(o.backup_ms) + "ms" + ratio, o, with);
    for (auto& s : servers) hrpc::examples::KillChild(s, SIGTERM);
  }
  if (cases.find("failover") != std::string::npos) {
    auto saved = o.delay_ms;
    o.delay_ms = 0;
    auto steady_servers = StartServers(o, 5, 0);
    Run steady = Measure(o, *rt, ListOf(steady_servers), {});
    Print("steady", "servers=5 killed=0", o, steady);
    for (auto& s : steady_servers) hrpc::examples::KillChild(s, SIGTERM);
    auto servers = StartServers(o, 5, 0);
    std::thread killer;
    Run failover = Measure(o, *rt, ListOf(servers), {}, [&] {
      killer = std::thread([&] {
        std::this_thread::sleep_for(1s);
        hrpc::examples::KillChild(servers[1]);
        hrpc::examples::KillChild(servers[3]);
      });
    });
    if (killer.joinable()) killer.join();
    char ratio[96];
    std::snprintf(ratio, sizeof ratio, " p99_vs_steady=%.2f rps_vs_steady=%.2f", failover.load.p99_us / steady.load.p99_us,
                  failover.load.rps / steady.load.rps);
    Print("failover", std::string("servers=5 killed=2 kill_at_s=1") + ratio, o, failover);
    for (auto& s : servers) hrpc::examples::KillChild(s, SIGTERM);
    o.delay_ms = saved;
  }
  return 0;
}
