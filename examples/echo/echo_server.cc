// echo_server: serves hrpc_examples.Echo until SIGINT/SIGTERM, then prints its
// per-method stats.
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <cstdio>

#include "common/echo_service.h"
#include "common/flags.h"

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
  std::string log_level = "info";
  flags.Add("log", &log_level, "log level: trace|debug|info|warn|err|off");
  int code = 0;
  if (!flags.Parse(argc, argv, &code)) return code;
  spdlog::set_level(spdlog::level::from_str(log_level));

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the workers start: they inherit it

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
  for (;;) {
    int sig = 0;
    if (stats_interval > 0) {
      timespec ts{static_cast<time_t>(stats_interval), 0};
      siginfo_t info;
      sig = sigtimedwait(&set, &info, &ts);
      if (sig < 0) {
        std::printf("%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
        std::fflush(stdout);
        continue;
      }
    } else {
      sigwait(&set, &sig);
    }
    break;
  }
  (*server)->Shutdown();
  std::printf("echo_server: stopped\n%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
  return 0;
}
