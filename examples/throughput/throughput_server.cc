// throughput_server: the Echo service tuned for load: N workers (optionally
// pinned), prints the server-side stats every few seconds and at exit.
#include <signal.h>

#include <cstdio>
#include <sstream>

#include "common/echo_service.h"
#include "common/cli.h"
#include "common/signals.h"

#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  std::string listen = "0.0.0.0:7100", cpus;
  uint64_t workers = 1, eager = hrpc::kDefaultEagerThreshold, stats_interval = 0, spin_us = 50;
  CLI::App app("Serves hrpc_examples.Echo for throughput_client. Prints READY <uri> when it\n"
               "accepts connections; stops on SIGINT/SIGTERM and prints per-method stats.",
               "throughput_server");
  app.add_option("--listen", listen, "address: host:port (transport auto), tcp://host:port, rdma://host:port")
      ->capture_default_str();
  app.add_option("--workers", workers, "worker threads")->capture_default_str();
  app.add_option("--cpus", cpus, "comma-separated cpus to pin the workers to (empty: no pinning)")
      ->capture_default_str();
  hrpc::examples::AddSize(app, "--eager", &eager, "attachments up to this size travel inline");
  app.add_option("--spin_us", spin_us, "idle workers busy-poll this long before sleeping in epoll")
      ->capture_default_str();
  app.add_option("--stats_interval", stats_interval, "print the stats table every N seconds (0: only at exit)")
      ->capture_default_str();
  std::string log_level = "info";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;

  const sigset_t stop = hrpc::examples::BlockStopSignals();  // before the workers start: they inherit it

  hrpc::ServerOptions so;
  so.listen = {listen};
  so.runtime.workers = workers;
  so.runtime.spin_budget = std::chrono::microseconds(spin_us);
  std::stringstream ss(cpus);
  for (std::string c; std::getline(ss, c, ',');) so.runtime.cpus.push_back(std::stoi(c));
  so.eager_threshold = eager;
  auto server = hrpc::Server::Create(so);
  if (!server.ok()) {
    std::fprintf(stderr, "throughput_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  hrpc::examples::EchoServiceImpl service(server->get());
  if (auto s = (*server)->RegisterService(&service); !s.ok()) return 1;
  if (auto s = (*server)->Start(); !s.ok()) {
    std::fprintf(stderr, "throughput_server: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("READY %s\n", (*server)->listen_uris().at(0).c_str());
  std::fflush(stdout);
  hrpc::examples::WaitForStopSignal(stop, stats_interval, [&] {
    std::printf("%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
    std::fflush(stdout);
  });
  (*server)->Shutdown();
  std::printf("throughput_server: stopped\n%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
  return 0;
}
