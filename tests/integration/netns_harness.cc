#include "netns_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "rpc_test_util.h"

namespace hrpc::netns {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kPrefix = "hrpcns-";
constexpr const char* kVeth = "veth0";  // one per namespace: the names are per namespace

bool Executable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

std::string Join(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Effective capability bit `cap` of this process (from /proc/self/status).
bool HasCapability(int cap) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      const uint64_t eff = std::strtoull(line.c_str() + 7, nullptr, 16);
      return (eff >> cap) & 1;
    }
  }
  return false;
}

// Runs argv, feeding `input`; returns exit status (-1: could not run) and output.
int Spawn(const std::vector<std::string>& argv, std::string_view input, std::string* output) {
  const std::string path = FindTool(argv.at(0));
  if (path.empty()) return -1;
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) return -1;
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]);
    close(in[1]);
    return -1;
  }
  std::vector<char*> args;  // built before fork(): no allocation in the child
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    execv(path.c_str(), args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  if (pid < 0) {
    close(in[1]);
    close(out[0]);
    return -1;
  }
  size_t off = 0;
  while (off < input.size()) {  // scripts are far smaller than a pipe's buffer
    const ssize_t n = write(in[1], input.data() + off, input.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  close(in[1]);
  char buf[4096];
  for (;;) {
    const ssize_t n = read(out[0], buf, sizeof buf);
    if (n > 0) {
      output->append(buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  close(out[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

Result<std::string> RunToolOutput(const std::vector<std::string>& argv, std::string_view input = {}) {
  if (FindTool(argv.at(0)).empty()) return NotFoundError(argv[0] + " is not installed");
  std::string output;
  const int rc = Spawn(argv, input, &output);
  if (rc != 0) {
    return InternalError("`" + Join(argv) + "` exited with " + std::to_string(rc) + ": " + output);
  }
  return output;
}

// Kills every process inside namespace `ns` (ip netns pids) and waits until
// they are gone (they may not be our children).
void KillProcessesIn(const std::string& ns) {
  auto pids = RunToolOutput({"ip", "netns", "pids", ns});
  if (!pids.ok()) return;
  std::istringstream in(*pids);
  pid_t pid = 0;
  while (in >> pid) {
    if (pid <= 0) continue;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, WNOHANG);
    for (int i = 0; i < 200 && kill(pid, 0) == 0; ++i) {
      waitpid(pid, nullptr, WNOHANG);
      usleep(5000);
    }
  }
}

void DeleteNs(const std::string& ns) {
  KillProcessesIn(ns);
  RunTool({"ip", "netns", "delete", ns}).IgnoreError();
}

// Namespaces named after a test process that is gone: a crashed or killed run.
void RemoveLeftovers() {
  DIR* d = opendir("/run/netns");
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(kPrefix, 0) != 0) continue;
    const pid_t owner = static_cast<pid_t>(std::atol(name.c_str() + std::strlen(kPrefix)));
    if (owner > 0 && kill(owner, 0) != 0 && errno == ESRCH) stale.push_back(name);
  }
  closedir(d);
  for (const auto& ns : stale) DeleteNs(ns);
}

}  // namespace

std::string FindTool(const std::string& name) {
  if (name.find('/') != std::string::npos) return Executable(name) ? name : std::string();
  std::string dirs = getenv("PATH") != nullptr ? getenv("PATH") : "";
  dirs += ":/usr/sbin:/sbin:/usr/bin:/bin";
  std::istringstream in(dirs);
  std::string dir;
  while (std::getline(in, dir, ':')) {
    if (dir.empty()) continue;
    const std::string p = dir + "/" + name;
    if (Executable(p)) return p;
  }
  return {};
}

Status RunTool(const std::vector<std::string>& argv, std::string_view input) {
  return RunToolOutput(argv, input).status();
}

Result<std::unique_ptr<NetnsPair>> NetnsPair::Create() {
  constexpr int kCapNetAdmin = 12, kCapSysAdmin = 21;
  if (!HasCapability(kCapSysAdmin) || !HasCapability(kCapNetAdmin)) {
    return FailedPreconditionError("creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN (run as root)");
  }
  for (const char* tool : {"ip", "nft"}) {
    if (FindTool(tool).empty()) {
      return FailedPreconditionError(std::string("`") + tool + "` is not installed (iproute2, nftables)");
    }
  }
  RemoveLeftovers();
  static std::atomic<int> seq{0};
  const std::string base = kPrefix + std::to_string(getpid()) + "-" + std::to_string(seq.fetch_add(1));
  std::unique_ptr<NetnsPair> p(new NetnsPair(base + "-c", base + "-s"));
  // Stale names of this very pid (a reused pid) go first.
  DeleteNs(p->client_);
  DeleteNs(p->server_);
  auto fail = [](const Status& s) { return FailedPreconditionError("cannot set up network namespaces: " + s.ToString()); };
  for (const std::string* ns : {&p->client_, &p->server_}) {
    if (auto s = RunTool({"ip", "netns", "add", *ns}); !s.ok()) return fail(s);
    if (auto s = RunTool({"ip", "-n", *ns, "link", "set", "lo", "up"}); !s.ok()) return fail(s);
  }
  if (auto s = p->AddServerLink(); !s.ok()) return fail(s);
  if (auto s = RunTool({"ip", "netns", "exec", p->client_, "nft", "list", "ruleset"}); !s.ok()) return fail(s);
  return p;
}

NetnsPair::~NetnsPair() {
  KillServer();
  DeleteNs(server_);
  DeleteNs(client_);
}

std::string NetnsPair::ServerUri(int port) { return std::string("tcp://") + kServerAddr + ":" + std::to_string(port); }

Status NetnsPair::AddServerLink() {
  // Created inside the namespaces: the veth never appears among the host's interfaces.
  HRPC_TRY(RunTool({"ip", "-n", server_, "link", "add", kVeth, "type", "veth", "peer", "name", kVeth, "netns", client_}));
  HRPC_TRY(RunTool({"ip", "-n", server_, "addr", "add", std::string(kServerAddr) + "/24", "dev", kVeth}));
  HRPC_TRY(RunTool({"ip", "-n", client_, "addr", "add", std::string(kClientAddr) + "/24", "dev", kVeth}));
  HRPC_TRY(RunTool({"ip", "-n", server_, "link", "set", kVeth, "up"}));
  return RunTool({"ip", "-n", client_, "link", "set", kVeth, "up"});
}

Status NetnsPair::Nft(const std::string& ns, const std::string& script) {
  return RunTool({"ip", "netns", "exec", ns, "nft", "-f", "-"}, script);
}

Status NetnsPair::SetLoss(int percent) {
  std::string script = "table inet hrpc_loss {}\ndelete table inet hrpc_loss\n";
  if (percent > 0) {
    const std::string p = std::to_string(percent);
    script += "table inet hrpc_loss {\n"
              "  chain in { type filter hook input priority 0; iifname \"" + std::string(kVeth) +
              "\" numgen random mod 100 < " + p + " counter drop; }\n"
              "  chain out { type filter hook output priority 0; oifname \"" + std::string(kVeth) +
              "\" numgen random mod 100 < " + p + " counter drop; }\n}\n";
  }
  return Nft(server_, script);
}

Result<uint64_t> NetnsPair::DroppedPackets() {
  HRPC_ASSIGN_OR_RETURN(std::string listing,
                        RunToolOutput({"ip", "netns", "exec", server_, "nft", "list", "table", "inet", "hrpc_loss"}));
  uint64_t total = 0;
  for (size_t at = listing.find("counter packets "); at != std::string::npos;
       at = listing.find("counter packets ", at + 1)) {
    total += std::strtoull(listing.c_str() + at + std::strlen("counter packets "), nullptr, 10);
  }
  return total;
}

Status NetnsPair::Partition() {
  return Nft(server_, "table inet hrpc_partition {\n"
                      "  chain in { type filter hook input priority -10; iifname \"" + std::string(kVeth) +
                      "\" drop; }\n"
                      "  chain out { type filter hook output priority -10; oifname \"" + std::string(kVeth) +
                      "\" drop; }\n}\n");
}

Status NetnsPair::Heal() { return Nft(server_, "table inet hrpc_partition {}\ndelete table inet hrpc_partition\n"); }

Status NetnsPair::SetNetem(std::chrono::milliseconds delay, int loss_percent) {
  RunTool({"modprobe", "sch_netem"}).IgnoreError();  // tc loads it too, where modprobe is allowed
  for (const std::string* ns : {&server_, &client_}) {
    auto s = RunTool({"tc", "-n", *ns, "qdisc", "replace", "dev", kVeth, "root", "netem", "delay",
                      std::to_string(delay.count()) + "ms", "loss", std::to_string(loss_percent) + "%"});
    if (!s.ok()) return FailedPreconditionError("this kernel has no netem (sch_netem): " + s.ToString());
  }
  return Status::Ok();
}

Status NetnsPair::PowerOffServerHost() {
  HRPC_TRY(RunTool({"ip", "-n", server_, "link", "del", kVeth}));  // takes the client's end with it
  KillServer();
  KillProcessesIn(server_);
  return RunTool({"ip", "netns", "delete", server_});
}

Status NetnsPair::BootServerHost() {
  HRPC_TRY(RunTool({"ip", "netns", "add", server_}));
  HRPC_TRY(RunTool({"ip", "-n", server_, "link", "set", "lo", "up"}));
  return AddServerLink();
}

Result<std::string> NetnsPair::StartServer(const std::string& binary, const std::vector<std::string>& args) {
  KillServer();
  std::vector<std::string> argv = {"netns", "exec", server_, binary};
  argv.insert(argv.end(), args.begin(), args.end());
  server_child_ = examples::StartChild(FindTool("ip"), argv);
  if (server_child_.pid <= 0) return InternalError("could not start " + binary);
  if (server_child_.uri.empty()) {
    KillServer();
    return UnavailableError(binary + " did not report READY in namespace " + server_);
  }
  return server_child_.uri;
}

void NetnsPair::KillServer() { examples::KillChild(server_child_); }

Status NetnsPair::RunInClientNs(const std::function<void()>& fn) {
  const std::string path = "/run/netns/" + client_;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return InternalError("open " + path + ": " + std::strerror(errno));
  Status result;
  std::thread t([&] {
    if (setns(fd, CLONE_NEWNET) != 0) {
      result = InternalError("setns " + path + ": " + std::strerror(errno));
      return;
    }
    fn();
  });
  t.join();
  close(fd);
  return result;
}

Result<std::unique_ptr<Runtime>> ClientRuntime(NetnsPair& net, std::chrono::milliseconds keepalive,
                                               std::chrono::milliseconds dead_peer,
                                               const std::function<void(RuntimeOptions&)>& adjust) {
  RuntimeOptions o;
  o.transport_choice = TransportChoice::kTcp;
  o.transport.keepalive_interval = keepalive;
  o.transport.dead_peer_timeout = dead_peer;
  o.transport.connect_timeout = std::chrono::seconds(2);
  if (adjust) adjust(o);
  Result<std::unique_ptr<Runtime>> rt = InternalError("not run");
  HRPC_TRY(net.RunInClientNs([&] { rt = Runtime::Create(o); }));
  return rt;
}

Tally RunEchoCalls(RpcChannel& ch, mempool::Pool& pool, int calls, size_t attachment_bytes, int in_flight,
                   std::chrono::milliseconds timeout) {
  struct One {
    ClientContext ctx;
    rpctest::Req req;
    rpctest::Resp resp;
    uint32_t crc = 0;
    Status status;
  };
  Tally t;
  const auto t0 = Clock::now();
  rpctest::Test::Stub stub(&ch);
  std::mutex mu;
  std::condition_variable cv;
  for (int first = 0; first < calls; first += in_flight) {
    const int n = std::min(in_flight, calls - first);
    std::vector<std::unique_ptr<One>> batch;
    int pending = n;
    for (int i = 0; i < n; ++i) {
      auto one = std::make_unique<One>();
      const int id = first + i;
      one->req.set_text("call " + std::to_string(id));
      if (attachment_bytes > 0) {
        one->ctx.request_attachment() = rpctest::MakePayload(pool, attachment_bytes, static_cast<uint32_t>(id));
        one->req.set_echo_attachment(true);
      }
      one->crc = one->ctx.request_attachment().Crc32c();
      one->ctx.set_timeout(timeout);
      batch.push_back(std::move(one));
    }
    for (auto& one : batch) {
      ++t.made;
      One* o = one.get();
      stub.CallAsync(o->ctx, o->req, &o->resp, [&, o](Status s) {
        std::lock_guard lock(mu);
        o->status = std::move(s);
        if (--pending == 0) cv.notify_all();
      });
    }
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return pending == 0; });  // every call ends by its deadline
    }
    for (auto& o : batch) {
      if (!o->status.ok()) {
        ++t.failed;
        if (t.first_error.empty()) t.first_error = o->status.ToString();
        continue;
      }
      const mempool::IoBuf& back = o->ctx.response_attachment();
      const bool right = o->resp.text() == o->req.text() && o->resp.attachment_bytes() == attachment_bytes &&
                         o->resp.attachment_crc32c() == o->crc && back.size() == attachment_bytes &&
                         (attachment_bytes == 0 || back.Crc32c() == o->crc);
      ++(right ? t.ok : t.wrong);
    }
  }
  t.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return t;
}

}  // namespace hrpc::netns
