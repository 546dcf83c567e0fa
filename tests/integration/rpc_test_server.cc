// rpc_test_server --listen=URI [--exec-log=PATH]: serves rpctest.Test until
// killed; prints "READY <bound uri>" on stdout once it accepts connections.
// With --exec-log, every call's request text is appended to PATH (one line,
// one write(2) on an O_APPEND file) before the call runs, so a test can tell
// which calls ran, and how often, even on a server it killed.
#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "hrpc/rpc/server.h"
#include "rpc_test_util.h"

namespace {

class LoggingService final : public rpctest::Test::Service {
 public:
  LoggingService(rpctest::Test::Service& inner, int fd) : inner_(inner), fd_(fd) {}
  hrpc::Status Call(hrpc::ServerContext& ctx, const rpctest::Req& req, rpctest::Resp* resp) override {
    const std::string line = req.text() + "\n";
    if (write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      return hrpc::InternalError("exec log write failed");
    }
    return inner_.Call(ctx, req, resp);
  }

 private:
  rpctest::Test::Service& inner_;
  int fd_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "tcp://127.0.0.1:0";
  std::string exec_log;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--listen=", 9) == 0) {
      listen = argv[i] + 9;
    } else if (std::strncmp(argv[i], "--exec-log=", 11) == 0) {
      exec_log = argv[i] + 11;
    } else {
      std::printf("usage: %s [--listen=tcp://127.0.0.1:PORT] [--exec-log=PATH]\n  Serves rpctest.Test until killed.\n",
                  argv[0]);
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  rpctest::TestService test_service;
  int log_fd = -1;
  if (!exec_log.empty()) {
    log_fd = open(exec_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      std::fprintf(stderr, "exec log %s: %s\n", exec_log.c_str(), std::strerror(errno));
      return 1;
    }
  }
  LoggingService logging(test_service, log_fd);
  rpctest::Test::Service& service = log_fd >= 0 ? static_cast<rpctest::Test::Service&>(logging) : test_service;
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
