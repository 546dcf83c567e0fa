// A real etcd for the naming tests: Debian's etcd (package etcd-server) run
// as child processes (one member, or a cluster) on 127.0.0.1 with ports of
// their own and temporary data dirs, killed and removed at the end. EtcdTest skips (with the reason) when
// etcd is not installed or does not come up.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>

#include "hrpc/base/status.h"

namespace etcdtest {

// A port nobody listens on right now (the kernel's pick for 127.0.0.1:0).
inline uint16_t FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

inline std::string FindEtcd() {
  if (const char* env = std::getenv("HRPC_ETCD"); env != nullptr && *env != '\0') return env;
  std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  path += ":/usr/bin:/usr/local/bin";
  std::stringstream dirs(path);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/etcd";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

class EtcdProcess {
 public:
  // Starts a one-member etcd serving clients on 127.0.0.1:client_port (0: a
  // free one).
  static hrpc::Result<std::unique_ptr<EtcdProcess>> Start(uint16_t client_port = 0) {
    // A port picked free may be taken before etcd binds it: a few tries.
    hrpc::Status last;
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto members = StartCluster(1, client_port);
      if (members.ok()) return std::move(members->front());
      last = members.status();
      if (client_port != 0 || last.code() == hrpc::StatusCode::kNotFound) break;
    }
    return last;
  }

  // Starts a cluster of n members, each on its own free ports.
  static hrpc::Result<std::vector<std::unique_ptr<EtcdProcess>>> StartCluster(size_t n, uint16_t client_port = 0) {
    const std::string binary = FindEtcd();
    if (binary.empty()) return hrpc::NotFoundError("etcd is not installed (Debian: apt-get install etcd-server)");
    std::vector<std::unique_ptr<EtcdProcess>> members;
    std::string initial;
    for (size_t i = 0; i < n; ++i) {
      // In memory where there is a tmpfs: etcd fsyncs its log on every write,
      // and a disk busy with a build would stretch the lease and watch
      // timings the tests check.
      char shm[] = "/dev/shm/hrpc-etcd-XXXXXX";
      char tmp[] = "/tmp/hrpc-etcd-XXXXXX";
      char* tmpl = ::mkdtemp(shm) != nullptr ? shm : tmp;
      if (tmpl == tmp && ::mkdtemp(tmp) == nullptr) return hrpc::ErrnoStatus(errno, "mkdtemp");
      auto m = std::unique_ptr<EtcdProcess>(new EtcdProcess(binary, tmpl, "m" + std::to_string(i)));
      m->port_ = client_port != 0 && n == 1 ? client_port : FreePort();
      m->peer_port_ = FreePort();
      initial += (initial.empty() ? "" : ",") + m->name_ + "=" + m->PeerUrl();
      members.push_back(std::move(m));
    }
    for (auto& m : members) {
      m->initial_cluster_ = initial;
      HRPC_TRY(m->Spawn());
    }
    for (auto& m : members) HRPC_TRY(m->WaitHealthy());
    return members;
  }

  ~EtcdProcess() {
    Kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  uint16_t port() const { return port_; }
  // "127.0.0.1:<port>"
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }
  // "etcd://127.0.0.1:<port><prefix>"
  std::string Uri(const std::string& prefix) const { return "etcd://" + Address() + prefix; }

  // SIGKILL and reap (the data stays; Restart() brings it back).
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  // Starts etcd again on the same ports and data.
  hrpc::Status Restart() {
    Kill();
    HRPC_TRY(Spawn());
    return WaitHealthy();
  }

 private:
  EtcdProcess(std::string binary, std::string dir, std::string name)
      : binary_(std::move(binary)), dir_(std::move(dir)), name_(std::move(name)) {}

  std::string PeerUrl() const { return "http://127.0.0.1:" + std::to_string(peer_port_); }

  hrpc::Status Spawn() {
    const std::string client = "http://" + Address();
    std::vector<std::string> args = {binary_,
                                     "--name=" + name_,
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + PeerUrl(),
                                     "--initial-advertise-peer-urls=" + PeerUrl(),
                                     "--initial-cluster=" + initial_cluster_,
                                     "--log-level=warn"};
    const std::string log = dir_ + "/etcd.log";
    const pid_t pid = ::fork();
    if (pid < 0) return hrpc::ErrnoStatus(errno, "fork");
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    return hrpc::Status::Ok();
  }

  hrpc::Status WaitHealthy() {
    const std::string log = dir_ + "/etcd.log";
    httplib::Client cli("127.0.0.1", port_);
    cli.set_connection_timeout(std::chrono::milliseconds(200));
    cli.set_read_timeout(std::chrono::milliseconds(1000));
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return hrpc::UnavailableError("etcd exited at start: " + Tail(log));
      }
      if (auto res = cli.Get("/health"); res && res->status == 200 && res->body.find("true") != std::string::npos) {
        return hrpc::Status::Ok();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    Kill();
    return hrpc::UnavailableError("etcd did not answer /health within 15 s: " + Tail(log));
  }

  static std::string Tail(const std::string& path) {
    std::ifstream in(path);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return all.size() > 800 ? all.substr(all.size() - 800) : all;
  }

  const std::string binary_;
  const std::string dir_;
  const std::string name_;
  std::string initial_cluster_;
  uint16_t port_ = 0;
  uint16_t peer_port_ = 0;
  pid_t pid_ = -1;
};

// A fixture with its own etcd; skips when etcd cannot run here.
class EtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = EtcdProcess::Start();
    if (!e.ok()) GTEST_SKIP() << "no etcd: " << e.status().ToString();
    etcd_ = std::move(*e);
  }
  std::unique_ptr<EtcdProcess> etcd_;
};

}  // namespace etcdtest
