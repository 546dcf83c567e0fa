// throughput_client: N connections x concurrency x payload against
// throughput_server; a live progress line, then a table of rps, MB/s,
// p50/p99/p999 and CPU% of both processes.
#include <cstdio>
#include <sstream>

#include "common/cli.h"

#include <spdlog/spdlog.h>
#include "common/load.h"

int main(int argc, char** argv) {
  std::string uri = "127.0.0.1:7100", cpus;
  uint64_t connections = 1, workers = 1, concurrency = 32, payload = 4096, spin_us = 50;
  double duration = 5, warmup = 1;
  bool echo = false, progress = true;
  CLI::App app("Closed-loop load against throughput_server: --connections connections (spread over --workers\n"
               "threads), --concurrency calls in flight on each, each call carrying --payload bytes as its\n"
               "request attachment (inline up to 16 KiB, else pulled by the server with one-sided READs).\n"
               "With --echo the server sends the payload back (pushed by one-sided WRITE when large).\n"
               "MB/s counts payload bytes (both directions with --echo); CPU% is of one core (100 = one core busy).",
               "throughput_client");
  app.add_option("--uri", uri, "server: host:port (transport auto), tcp://host:port, rdma://host:port")
      ->capture_default_str();
  app.add_option("--connections", connections, "connections (a multiple of --workers)")->capture_default_str();
  app.add_option("--workers", workers, "client worker threads")->capture_default_str();
  app.add_option("--cpus", cpus, "comma-separated cpus to pin the client workers to")->capture_default_str();
  app.add_option("--concurrency", concurrency, "calls in flight per connection")->capture_default_str();
  hrpc::examples::AddSize(app, "--payload", &payload, "attachment bytes per call (e.g. 64, 4K, 1M)");
  app.add_flag("--echo", echo, "server echoes the payload back");
  app.add_option("--duration", duration, "seconds to measure")->capture_default_str();
  app.add_option("--warmup", warmup, "seconds of load before measuring")->capture_default_str();
  app.add_option("--spin_us", spin_us, "idle workers busy-poll this long before sleeping")->capture_default_str();
  app.add_flag("--progress", progress, "live progress line on stderr (on by default; --progress=false turns it off)");
  std::string log_level = "warn";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;
  if (workers == 0 || connections == 0 || connections % workers != 0) {
    std::fprintf(stderr, "throughput_client: --connections must be a positive multiple of --workers\n");
    return 2;
  }

  hrpc::RpcChannelOptions co;
  co.runtime.workers = workers;
  co.runtime.spin_budget = std::chrono::microseconds(spin_us);
  std::stringstream ss(cpus);
  for (std::string c; std::getline(ss, c, ',');) co.runtime.cpus.push_back(std::stoi(c));
  co.connections_per_worker = connections / workers;
  auto channel = hrpc::RpcChannel::Create(uri, co);
  if (!channel.ok()) {
    std::fprintf(stderr, "throughput_client: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  if (auto s = (*channel)->Connect(); !s.ok()) {
    std::fprintf(stderr, "throughput_client: %s\n", s.ToString().c_str());
    return 1;
  }
  const std::string transport = (*channel)->uri().substr(0, (*channel)->uri().find("://"));
  hrpc::examples::LoadOptions lo;
  lo.coroutines_per_worker = co.connections_per_worker * concurrency;
  lo.payload = payload;
  lo.echo = echo;
  lo.warmup = std::chrono::duration<double>(warmup);
  lo.duration = std::chrono::duration<double>(duration);
  lo.progress = progress;
  lo.label = "[" + (*channel)->uri() + "]";
  hrpc::examples::LoadResult r = hrpc::examples::RunLoad(**channel, lo);

  std::printf("\n%-9s %5s %5s %9s %5s %11s %9s %9s %9s %9s %9s %7s %7s %7s\n", "transport", "conns", "conc",
              "payload", "echo", "calls", "rps", "MB/s", "p50_us", "p99_us", "p999_us", "cli%", "srv%", "errors");
  std::printf("%-9s %5llu %5llu %9llu %5s %11llu %9.0f %9.1f %9.1f %9.1f %9.1f %7.0f %7.0f %7llu\n",
              transport.c_str(), static_cast<unsigned long long>(connections),
              static_cast<unsigned long long>(concurrency), static_cast<unsigned long long>(payload),
              echo ? "yes" : "no", static_cast<unsigned long long>(r.calls), r.rps, r.mbps, r.p50_us, r.p99_us,
              r.p999_us, r.client_cpu_pct, r.server_cpu_pct, static_cast<unsigned long long>(r.errors));
  if (!r.first_error.empty()) std::printf("first error: %s\n", r.first_error.c_str());
  std::printf("\nclient per-method stats (whole run, incl. warmup):\n%s",
              hrpc::FormatStatsTable((*channel)->Stats()).c_str());
  return r.errors == 0 && r.calls > 0 ? 0 : 1;
}
