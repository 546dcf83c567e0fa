// rpc_test_server --listen=URI: serves rpctest.Test until killed; prints
// "READY <bound uri>" on stdout once it accepts connections.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "hrpc/rpc/server.h"
#include "rpc_test_util.h"

int main(int argc, char** argv) {
  std::string listen = "tcp://127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--listen=", 9) == 0) {
      listen = argv[i] + 9;
    } else {
      std::printf("usage: %s [--listen=tcp://127.0.0.1:PORT]\n  Serves rpctest.Test until killed.\n", argv[0]);
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  rpctest::TestService service;
  hrpc::ServerOptions so;
  so.listen = {listen};
  auto server = hrpc::Server::Create(so);
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  if (auto s = (*server)->RegisterService(&service); !s.ok()) return 1;
  if (auto s = (*server)->Start(); !s.ok()) {
    std::fprintf(stderr, "start: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("READY %s\n", (*server)->listen_uris().at(0).c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  (*server)->Shutdown();
  return 0;
}
