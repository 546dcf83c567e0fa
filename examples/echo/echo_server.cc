// echo_server: serves hrpc_examples.Echo until SIGINT/SIGTERM, then prints its
// per-method stats. With --forward=URI it is a relay: each Echo is passed on
// to the echo server at URI from the handler's own worker, through a channel
// on the same runtime as the server.
#include <signal.h>

#include <cstdio>

#include <memory>

#include "common/echo_service.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "common/cli.h"
#include "common/signals.h"

#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  std::string listen = "0.0.0.0:7000", forward, http;
  uint64_t workers = 1, eager = hrpc::kDefaultEagerThreshold, stats_interval = 0;
  CLI::App app("Serves hrpc_examples.Echo (echo text and attachments). A scheme-less address uses\n"
               "RDMA when a device exists, else TCP (HRPC_TRANSPORT=tcp|rdma overrides).\n"
               "Stops on SIGINT/SIGTERM and prints per-method stats.",
               "echo_server");
  app.add_option("--listen", listen, "address: host:port, tcp://host:port, rdma://host:port")->capture_default_str();
  app.add_option("--workers", workers, "worker threads (each owns the connections it accepts)")
      ->capture_default_str();
  app.add_option("--forward", forward, "relay every Echo to the echo server at this address (\"\": answer here)")
      ->capture_default_str();
  hrpc::examples::AddSize(app, "--eager", &eager, "attachments up to this size travel inline");
  app.add_option("--http", http, "serve /metrics /status /rpcz /health on this host:port (\"\": off)")
      ->capture_default_str();
  app.add_option("--stats_interval", stats_interval, "print the stats table every N seconds (0: only at exit)")
      ->capture_default_str();
  std::string log_level = "info";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;

  const sigset_t stop = hrpc::examples::BlockStopSignals();  // before the workers start: they inherit it

  // One runtime for the process: the server and the relay's channel share
  // its workers, pool and registrations.
  hrpc::RuntimeOptions ro = hrpc::RuntimeOptions::FromEnv();
  ro.workers = workers;
  ro.name = "echo";
  auto runtime = hrpc::Runtime::Create(ro);
  if (!runtime.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", runtime.status().ToString().c_str());
    return 1;
  }
  hrpc::ServerOptions so;
  so.listen = {listen};
  so.eager_threshold = eager;
  so.http_listen = http;
  auto server = hrpc::Server::Create(**runtime, so);
  if (!server.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  hrpc::examples::EchoServiceImpl service(server->get());
  std::unique_ptr<hrpc::RpcChannel> next;
  if (!forward.empty()) {
    hrpc::RpcChannelOptions co;
    co.eager_threshold = eager;
    auto c = hrpc::RpcChannel::Create(**runtime, forward, co);
    if (!c.ok()) {
      std::fprintf(stderr, "echo_server: --forward: %s\n", c.status().ToString().c_str());
      return 1;
    }
    next = std::move(*c);
    service.set_forward(next.get());
  }
  if (auto s = (*server)->RegisterService(&service); !s.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
    return 1;
  }
  if (auto s = (*server)->Start(); !s.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("echo_server: listening on %s%s%s\n", (*server)->listen_uris().at(0).c_str(),
              next ? ", relaying to " : "", next ? next->uri().c_str() : "");
  if (!http.empty()) std::printf("echo_server: status pages on http://%s/\n", (*server)->http_address().c_str());
  std::fflush(stdout);
  hrpc::examples::WaitForStopSignal(stop, stats_interval, [&] {
    std::printf("%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
    std::fflush(stdout);
  });
  (*server)->Shutdown();
  std::printf("echo_server: stopped\n%s", hrpc::FormatStatsTable((*server)->Stats()).c_str());
  return 0;
}
