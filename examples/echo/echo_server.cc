// echo_server: serves hrpc_examples.Echo until SIGINT/SIGTERM, then prints its
// per-method stats.
#include <signal.h>

#include <cstdio>

#include "common/echo_service.h"
#include "common/flags.h"
#include "common/signals.h"

#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  std::string listen = "0.0.0.0:7000";
  uint64_t workers = 1, eager = hrpc::kDefaultEagerThreshold, stats_interval = 0;
  hrpc::examples::Flags flags("echo_server",
                              "Serves hrpc_examples.Echo (echo text and attachments). A scheme-less address uses\n"
                              "RDMA when a device exists, else TCP (HRPC_TRANSPORT=tcp|rdma overrides).\n"
                              "Stops on SIGINT/SIGTERM and prints per-method stats.");
  flags.Add("listen", &listen, "address: host:port, tcp://host:port, rdma://host:port");
  flags.AddSize("workers", &workers, "worker threads (each owns the connections it accepts)");
  flags.AddSize("eager", &eager, "attachments up to this size travel inline");
  flags.AddSize("stats_interval", &stats_interval, "print the stats table every N seconds (0: only at exit)");
  flags.AddLogLevel("info");
  int code = 0;
  if (!flags.Parse(argc, argv, &code)) return code;

  const sigset_t stop = hrpc::examples::BlockStopSignals();  // before the workers start: they inherit it

  hrpc::ServerOptions so;
  so.listen = {listen};
  so.runtime.workers = workers;
  so.eager_threshold = eager;
  auto server = hrpc::Server::Create(so);
  if (!server.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  hrpc::examples::EchoServiceImpl service(server->get());
  if (auto s = (*server)->RegisterService(&service); !s.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
    return 1;
  }
  if (auto s = (*server)->Start(); !s.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("echo_server: listening on %s\n", (*server)->listen_uris().at(0).c_str());
  std::fflush(stdout);
  hrpc::examples::WaitForStopSignal(stop, stats_interval, [&] {
    std::printf("%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
    std::fflush(stdout);
  });
  (*server)->Shutdown();
  std::printf("echo_server: stopped\n%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
  return 0;
}
