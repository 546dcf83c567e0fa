// The HTTP endpoint of a Server (/metrics /status /rpcz /health) scraped by a
// real HTTP client (cpp-httplib), its Prometheus text parsed; and that the
// endpoint is off by default (no extra port, no thread).
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "rpc_test_util.h"

namespace {

using namespace std::chrono_literals;
using hrpc::ClientContext;
using rpctest::Req;
using rpctest::Resp;

// One parsed exposition: "# TYPE" per family and every sample.
struct Exposition {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|untyped
  struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;
    double value = 0;
  };
  std::vector<Sample> samples;

  // Whether sample `s` is of `name` and its labels include `want`.
  static bool Matches(const Sample& s, const std::string& name, const std::map<std::string, std::string>& want) {
    if (s.name != name) return false;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) return false;
    }
    return true;
  }
  // The value of the one sample of `name` whose labels include `want`; NaN if none.
  double Value(const std::string& name, const std::map<std::string, std::string>& want) const {
    for (const Sample& s : samples) {
      if (Matches(s, name, want)) return s.value;
    }
    return std::nan("");
  }
  double Sum(const std::string& name, const std::map<std::string, std::string>& want = {}) const {
    double total = 0;
    for (const Sample& s : samples) {
      if (Matches(s, name, want)) total += s.value;
    }
    return total;
  }
};

// Parses the Prometheus text format 0.0.4; fails the test on a malformed line.
Exposition Parse(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, type;
      t >> name >> type;
      EXPECT_TRUE(e.types.emplace(name, type).second) << "family declared twice: " << name;
      continue;
    }
    if (line[0] == '#') continue;
    Exposition::Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        EXPECT_NE(eq, std::string::npos) << line;
        if (eq == std::string::npos) return e;
        std::string key = line.substr(i, eq - i);
        EXPECT_EQ(line[eq + 1], '"') << line;
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    const std::string v = line.substr(i);
    s.value = v.find("+Inf") != std::string::npos ? INFINITY : std::stod(v);
    e.samples.push_back(std::move(s));
  }
  return e;
}

std::pair<std::string, int> HostPort(const std::string& addr) {
  const size_t colon = addr.rfind(':');
  return {addr.substr(0, colon), std::stoi(addr.substr(colon + 1))};
}

struct Get {
  int status = 0;
  std::string body;
  std::string content_type;
};
Get HttpGet(const std::string& addr, const std::string& path, const httplib::Headers& headers = {}) {
  auto [host, port] = HostPort(addr);
  httplib::Client cli(host, port);
  cli.set_read_timeout(10, 0);
  auto res = cli.Get(path, headers);
  if (!res) return {};
  return {res->status, res->body, res->get_header_value("Content-Type")};
}

// A server and a channel on one runtime, over TCP loopback.
struct Env {
  std::unique_ptr<hrpc::Runtime> runtime;
  rpctest::TestService service;
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;

  void Start(std::string http_listen) {
    hrpc::RuntimeOptions ro;
    ro.transport_choice = hrpc::TransportChoice::kTcp;
    auto rt = hrpc::Runtime::Create(ro);
    ASSERT_TRUE(rt.ok()) << rt.status().ToString();
    runtime = std::move(*rt);
    hrpc::ServerOptions so;
    so.listen = {"tcp://127.0.0.1:0"};
    so.http_listen = std::move(http_listen);
    auto s = hrpc::Server::Create(*runtime, so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(*s);
    ASSERT_TRUE(server->RegisterService(&service).ok());
    auto st = server->Start();
    ASSERT_TRUE(st.ok()) << st.ToString();
    const std::string uri = server->listen_uris().at(0);
    auto c = hrpc::RpcChannel::Create(*runtime, "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    channel = std::move(*c);
  }
  hrpc::Status Call(Req req) {
    rpctest::Test::Stub stub(channel.get());
    ClientContext ctx;
    Resp resp;
    return stub.Call(ctx, req, &resp);
  }
  void Calls(int n) {
    for (int i = 0; i < n; ++i) {
      Req req;
      req.set_text("x" + std::to_string(i));
      ASSERT_TRUE(Call(req).ok());
    }
  }
  // The server counts a call once its response is out; the client may see
  // the response first.
  void WaitServerCount(uint64_t n) {
    for (int i = 0; i < 2000; ++i) {
      auto st = server->Stats();
      if (!st.empty() && st[0].count >= n) return;
      std::this_thread::sleep_for(1ms);
    }
  }
  ~Env() {
    channel.reset();
    server.reset();
  }
};

const std::map<std::string, std::string> kServerCall = {
    {"side", "server"}, {"service", "rpctest.Test"}, {"method", "Call"}};
const std::map<std::string, std::string> kClientCall = {
    {"side", "client"}, {"service", "rpctest.Test"}, {"method", "Call"}};

std::map<std::string, std::string> With(std::map<std::string, std::string> m, const std::string& k, const std::string& v) {
  m[k] = v;
  return m;
}

TEST(Observability, MetricsScrapedAndParsed) {
  Env env;
  env.Start("127.0.0.1:0");
  ASSERT_FALSE(env.server->http_address().empty());
  env.Calls(10);
  {
    Req bad;
    bad.set_fail_code(static_cast<int>(hrpc::StatusCode::kNotFound));
    EXPECT_EQ(env.Call(bad).code(), hrpc::StatusCode::kNotFound);
  }
  env.WaitServerCount(11);

  const Get g1 = HttpGet(env.server->http_address(), "/metrics");
  ASSERT_EQ(g1.status, 200);
  EXPECT_NE(g1.content_type.find("text/plain; version=0.0.4"), std::string::npos) << g1.content_type;
  const Exposition m1 = Parse(g1.body);

  // Every family, with its type.
  const std::map<std::string, std::string> families = {
      {"hrpc_rpc_calls_total", "counter"},
      {"hrpc_rpc_in_flight", "gauge"},
      {"hrpc_rpc_latency_seconds", "histogram"},
      {"hrpc_rpc_received_bytes_total", "counter"},
      {"hrpc_rpc_sent_bytes_total", "counter"},
      {"hrpc_server_connections", "gauge"},
      {"hrpc_server_requests_running", "gauge"},
      {"hrpc_server_max_concurrent_requests", "gauge"},
      {"hrpc_server_start_time_seconds", "gauge"},
      {"hrpc_client_connections", "gauge"},
      {"hrpc_client_connects_total", "counter"},
      {"hrpc_client_connect_failures_total", "counter"},
      {"hrpc_client_reconnects_total", "counter"},
      {"hrpc_client_connections_lost_total", "counter"},
      {"hrpc_transport_connections", "gauge"},
      {"hrpc_transport_connections_opened_total", "counter"},
      {"hrpc_transport_connections_closed_total", "counter"},
      {"hrpc_transport_connect_failures_total", "counter"},
      {"hrpc_transport_messages_total", "counter"},
      {"hrpc_transport_message_bytes_total", "counter"},
      {"hrpc_transport_payload_bytes_total", "counter"},
      {"hrpc_transport_one_sided_ops_total", "counter"},
      {"hrpc_transport_one_sided_bytes_total", "counter"},
      {"hrpc_transport_one_sided_served_total", "counter"},
      {"hrpc_transport_refusals_total", "counter"},
      {"hrpc_transport_stalls_total", "counter"},
      {"hrpc_transport_message_check_failures_total", "counter"},
      {"hrpc_transport_faults_injected_total", "counter"},
      {"hrpc_pool_info", "gauge"},
      {"hrpc_pool_arenas", "gauge"},
      {"hrpc_pool_max_arenas", "gauge"},
      {"hrpc_pool_mapped_bytes", "gauge"},
      {"hrpc_pool_in_use_bytes", "gauge"},
      {"hrpc_pool_free_bytes", "gauge"},
      {"hrpc_pool_high_water_bytes", "gauge"},
      {"hrpc_pool_allocation_failures_total", "counter"},
      {"hrpc_worker_info", "gauge"},
      {"hrpc_worker_busy_seconds_total", "counter"},
      {"hrpc_worker_busy_ratio", "gauge"},
      {"hrpc_worker_cpu_seconds_total", "counter"},
      {"hrpc_worker_run_queue", "gauge"},
      {"hrpc_worker_coroutines", "gauge"},
      {"hrpc_worker_context_switches_total", "counter"},
      {"hrpc_worker_sleeps_total", "counter"},
      {"hrpc_copied_bytes_total", "counter"},
      {"hrpc_runtime_start_time_seconds", "gauge"},
  };
  for (const auto& [name, type] : families) {
    auto it = m1.types.find(name);
    ASSERT_NE(it, m1.types.end()) << "missing family " << name;
    EXPECT_EQ(it->second, type) << name;
  }

  // Calls by side and code.
  EXPECT_EQ(m1.Value("hrpc_rpc_calls_total", With(kServerCall, "code", "OK")), 10);
  EXPECT_EQ(m1.Value("hrpc_rpc_calls_total", With(kServerCall, "code", "NOT_FOUND")), 1);
  EXPECT_EQ(m1.Value("hrpc_rpc_calls_total", With(kClientCall, "code", "OK")), 10);
  EXPECT_EQ(m1.Value("hrpc_rpc_calls_total", With(kClientCall, "code", "NOT_FOUND")), 1);
  EXPECT_EQ(m1.Value("hrpc_rpc_in_flight", kServerCall), 0);
  // The histogram: cumulative buckets, +Inf = _count = calls.
  EXPECT_EQ(m1.Value("hrpc_rpc_latency_seconds_count", kServerCall), 11);
  EXPECT_GT(m1.Value("hrpc_rpc_latency_seconds_sum", kServerCall), 0);
  double prev = 0;
  int buckets = 0;
  for (const auto& s : m1.samples) {
    if (s.name != "hrpc_rpc_latency_seconds_bucket" || s.labels.at("side") != "server") continue;
    EXPECT_GE(s.value, prev) << "le=" << s.labels.at("le");
    prev = s.value;
    ++buckets;
  }
  EXPECT_GT(buckets, 10);
  EXPECT_EQ(prev, 11);  // +Inf
  EXPECT_GT(m1.Value("hrpc_rpc_received_bytes_total", kServerCall), 0);
  EXPECT_GT(m1.Value("hrpc_rpc_sent_bytes_total", kClientCall), 0);
  // Connections: the channel's and the server's end of it, on the one worker.
  EXPECT_EQ(m1.Value("hrpc_server_connections", {}), 1);
  EXPECT_EQ(m1.Value("hrpc_client_connections", {{"worker", "0"}}), 1);
  EXPECT_EQ(m1.Value("hrpc_client_connects_total", {{"worker", "0"}}), 1);
  EXPECT_EQ(m1.Value("hrpc_transport_connections", {{"transport", "tcp"}, {"worker", "0"}}), 2);
  EXPECT_EQ(m1.Value("hrpc_transport_connections_opened_total", {{"transport", "tcp"}, {"direction", "in"}}), 1);
  EXPECT_EQ(m1.Value("hrpc_transport_connections_opened_total", {{"transport", "tcp"}, {"direction", "out"}}), 1);
  // 11 requests and 11 responses each way through the one transport.
  EXPECT_GE(m1.Value("hrpc_transport_messages_total", {{"transport", "tcp"}, {"direction", "sent"}}), 22);
  EXPECT_GE(m1.Value("hrpc_transport_messages_total", {{"transport", "tcp"}, {"direction", "received"}}), 22);
  EXPECT_GT(m1.Sum("hrpc_pool_in_use_bytes") + m1.Sum("hrpc_pool_free_bytes"), 0);
  EXPECT_GE(m1.Value("hrpc_pool_arenas", {{"pool", "0"}}), 1);
  EXPECT_GT(m1.Value("hrpc_worker_busy_seconds_total", {{"worker", "0"}}), 0);
  const double ratio = m1.Value("hrpc_worker_busy_ratio", {{"worker", "0"}});
  EXPECT_GE(ratio, 0);
  EXPECT_LE(ratio, 1);
  EXPECT_GT(m1.Value("hrpc_worker_context_switches_total", {{"worker", "0"}}), 0);

  // Counters increase across calls.
  env.Calls(5);
  env.WaitServerCount(16);
  const Get g2 = HttpGet(env.server->http_address(), "/metrics");
  ASSERT_EQ(g2.status, 200);
  const Exposition m2 = Parse(g2.body);
  EXPECT_EQ(m2.Value("hrpc_rpc_calls_total", With(kServerCall, "code", "OK")), 15);
  EXPECT_EQ(m2.Value("hrpc_rpc_calls_total", With(kClientCall, "code", "OK")), 15);
  EXPECT_EQ(m2.Value("hrpc_rpc_latency_seconds_count", kClientCall), 16);
  EXPECT_GE(m2.Value("hrpc_transport_messages_total", {{"transport", "tcp"}, {"direction", "sent"}}),
            m1.Value("hrpc_transport_messages_total", {{"transport", "tcp"}, {"direction", "sent"}}) + 10);
  EXPECT_GT(m2.Value("hrpc_rpc_received_bytes_total", kServerCall), m1.Value("hrpc_rpc_received_bytes_total", kServerCall));
  EXPECT_GE(m2.Value("hrpc_worker_context_switches_total", {{"worker", "0"}}),
            m1.Value("hrpc_worker_context_switches_total", {{"worker", "0"}}) + 5);
  // MetricsText() is what /metrics serves.
  const Exposition m3 = Parse(env.server->MetricsText());
  EXPECT_EQ(m3.Value("hrpc_rpc_calls_total", With(kServerCall, "code", "OK")), 15);
}

TEST(Observability, StatusRpczAndHealth) {
  Env env;
  env.Start("127.0.0.1:0");
  env.Calls(3);
  {
    Req slow;
    slow.set_sleep_ms(500);  // slower than a descheduled fast call
    ASSERT_TRUE(env.Call(slow).ok());
    Req bad;
    bad.set_fail_code(static_cast<int>(hrpc::StatusCode::kFailedPrecondition));
    bad.set_fail_message("no such volume");
    EXPECT_EQ(env.Call(bad).code(), hrpc::StatusCode::kFailedPrecondition);
  }
  env.WaitServerCount(5);
  const std::string addr = env.server->http_address();

  const Get status = HttpGet(addr, "/status");
  ASSERT_EQ(status.status, 200);
  EXPECT_NE(status.body.find("rpctest.Test.Call"), std::string::npos) << status.body;
  EXPECT_NE(status.body.find("rpctest.Test"), std::string::npos);
  EXPECT_NE(status.body.find("Server connections"), std::string::npos);
  EXPECT_NE(status.body.find("Pools"), std::string::npos);
  EXPECT_NE(status.body.find("Workers"), std::string::npos);
  const Get html = HttpGet(addr, "/status", {{"Accept", "text/html,application/xhtml+xml"}});
  ASSERT_EQ(html.status, 200);
  EXPECT_NE(html.content_type.find("text/html"), std::string::npos);
  EXPECT_NE(html.body.find("<table>"), std::string::npos);
  EXPECT_NE(html.body.find("rpctest.Test.Call"), std::string::npos);

  const Get rpcz = HttpGet(addr, "/rpcz");
  ASSERT_EQ(rpcz.status, 200);
  EXPECT_NE(rpcz.body.find("rpctest.Test.Call"), std::string::npos) << rpcz.body;
  const size_t slow_at = rpcz.body.find("Slowest recent calls");
  const size_t failed_at = rpcz.body.find("Failed recent calls");
  ASSERT_NE(slow_at, std::string::npos);
  ASSERT_NE(failed_at, std::string::npos);
  ASSERT_LT(slow_at, failed_at);
  // The failed call, with its status.
  EXPECT_NE(rpcz.body.find("FAILED_PRECONDITION", failed_at), std::string::npos) << rpcz.body;
  // The slowest call first: its handler phase holds the 500 ms sleep.
  {
    std::istringstream in(rpcz.body.substr(slow_at));
    std::string line;
    std::vector<std::string> head, row;
    while (std::getline(in, line)) {
      std::istringstream t(line);
      std::vector<std::string> tok;
      for (std::string w; t >> w;) tok.push_back(w);
      if (!tok.empty() && tok[0] == "time") {
        head = tok;
      } else if (!head.empty() && tok.size() == head.size() + 1) {  // the time column holds date and time
        row = tok;
        break;
      }
    }
    ASSERT_FALSE(row.empty()) << rpcz.body;
    size_t handler_col = 0;
    for (size_t i = 0; i < head.size(); ++i) {
      if (head[i] == "handler_us") handler_col = i + 1;
    }
    ASSERT_GT(handler_col, 0u);
    EXPECT_EQ(row[2], "rpctest.Test.Call");
    EXPECT_GE(std::stod(row[handler_col]), 500000.0) << rpcz.body;
  }

  const Get health = HttpGet(addr, "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "OK\n");
  EXPECT_EQ(HttpGet(addr, "/nope").status, 404);
}

// Listening TCP sockets of this process: their local ports (from the socket
// inodes among /proc/self/fd and /proc/net/tcp{,6} in state LISTEN).
std::multiset<int> ListeningPorts() {
  std::set<std::string> inodes;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d)) {
      char target[256];
      const std::string path = std::string("/proc/self/fd/") + e->d_name;
      const ssize_t n = readlink(path.c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      const std::string t(target);
      if (t.rfind("socket:[", 0) == 0) inodes.insert(t.substr(8, t.size() - 9));
    }
    closedir(d);
  }
  std::multiset<int> ports;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream f(table);
    std::string line;
    std::getline(f, line);  // header
    while (std::getline(f, line)) {
      std::istringstream in(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
      in >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (st != "0A" || inodes.count(inode) == 0) continue;
      ports.insert(std::stoi(local.substr(local.rfind(':') + 1), nullptr, 16));
    }
  }
  return ports;
}

bool HasThreadNamed(const std::string& name) {
  bool found = false;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/comm");
      std::string comm;
      if (std::getline(f, comm) && comm == name) found = true;
    }
    closedir(d);
  }
  return found;
}

TEST(Observability, EndpointIsOffByDefault) {
  {
    Env env;
    env.Start("");  // the default
    EXPECT_EQ(env.server->http_address(), "");
    const std::string uri = env.server->listen_uris().at(0);
    const int rpc_port = std::stoi(uri.substr(uri.rfind(':') + 1));
    const std::multiset<int> ports = ListeningPorts();
    ASSERT_FALSE(ports.empty()) << "the RPC listener itself is not found: the check would prove nothing";
    for (int p : ports) EXPECT_EQ(p, rpc_port) << "a port other than the RPC port is open";
    EXPECT_FALSE(HasThreadNamed("MHD-worker"));
    // The metrics are still there for a program that exports them itself.
    env.Calls(2);
    env.WaitServerCount(2);
    EXPECT_EQ(Parse(env.server->MetricsText()).Value("hrpc_rpc_calls_total", With(kServerCall, "code", "OK")), 2);
  }
  // The same check sees the endpoint's port when it is on.
  Env env;
  env.Start("127.0.0.1:0");
  const int http_port = HostPort(env.server->http_address()).second;
  EXPECT_EQ(ListeningPorts().count(http_port), 1u);
  // libmicrohttpd's threads name themselves once they run.
  for (int i = 0; i < 2000 && !HasThreadNamed("MHD-worker"); ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(HasThreadNamed("MHD-worker"));
  env.server->Shutdown();
  EXPECT_EQ(ListeningPorts().count(http_port), 0u);
  EXPECT_FALSE(HasThreadNamed("MHD-worker"));
}

// A raw TCP client of the endpoint, for what an HTTP client library would not send.
class RawHttpClient {
 public:
  // `from`: the source address (another loopback address, as another host).
  explicit RawHttpClient(const std::string& addr, const char* from = nullptr) {
    auto [host, port] = HostPort(addr);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (from != nullptr) {
      sockaddr_in src{};
      src.sin_family = AF_INET;
      ::inet_pton(AF_INET, from, &src.sin_addr);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) return;
    }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &sa.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    timeval tv{2, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawHttpClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawHttpClient(const RawHttpClient&) = delete;
  RawHttpClient& operator=(const RawHttpClient&) = delete;
  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) { return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()); }
  // What the server sent until it closed the connection or 2 s passed without a byte.
  std::string ReadAll() {
    std::string got;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

size_t OpenFds() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n;
}

// Only GET and HEAD: a POST is answered 405 at once, its body never read (a
// peer announcing 100 GB gets no memory for it), and the connection closed.
TEST(Observability, EndpointAnswersAPostWithoutReadingItsBody) {
  Env env;
  env.Start("127.0.0.1:0");
  const std::string addr = env.server->http_address();
  RawHttpClient c(addr);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.Send("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n"));
  ASSERT_TRUE(c.Send(std::string(64 * 1024, 'x')));
  const std::string got = c.ReadAll();
  EXPECT_EQ(got.rfind("HTTP/1.1 405", 0), 0u) << "answer: " << got.substr(0, 200);
  EXPECT_NE(got.find("Allow: GET, HEAD"), std::string::npos) << got.substr(0, 200);
  EXPECT_EQ(HttpGet(addr, "/health").status, 200);
}

// Clients that hold connections open (idle, or sending their headers a byte at
// a time) hold no thread: a scrape is answered at once, connections beyond
// the limit are closed instead of kept, and Shutdown() does not wait for them.
TEST(Observability, SlowAndIdleClientsHoldBackNeitherScrapesNorShutdown) {
  Env env;
  env.Start("127.0.0.1:0");
  const std::string addr = env.server->http_address();
  // 4 clients sending a header byte every 100 ms: never idle, never done.
  struct Dribbler {
    std::vector<std::unique_ptr<RawHttpClient>> clients;
    std::atomic<bool> stop{false};
    std::thread thread;
    ~Dribbler() {
      stop.store(true);
      if (thread.joinable()) thread.join();
    }
  } slow;
  for (int i = 0; i < 4; ++i) {
    slow.clients.push_back(std::make_unique<RawHttpClient>(addr));
    ASSERT_TRUE(slow.clients.back()->Send("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "));
  }
  slow.thread = std::thread([&slow] {
    while (!slow.stop.load()) {
      for (auto& c : slow.clients) c->Send("a");
      std::this_thread::sleep_for(100ms);
    }
  });
  {
    auto [host, port] = HostPort(addr);
    httplib::Client cli(host, port);
    cli.set_read_timeout(1, 0);
    const auto t0 = std::chrono::steady_clock::now();
    auto res = cli.Get("/metrics");
    ASSERT_TRUE(res) << "no answer to a scrape within 1 s while 4 clients send their headers slowly";
    EXPECT_EQ(res->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  }
  // 200 more connections that send nothing: the endpoint keeps at most its
  // limit (64) of them; on this process's side each also has its client end.
  const size_t fds0 = OpenFds();
  std::vector<std::unique_ptr<RawHttpClient>> idle;
  for (int i = 0; i < 200; ++i) idle.push_back(std::make_unique<RawHttpClient>(addr));
  std::this_thread::sleep_for(300ms);  // the endpoint accepts (and closes what is beyond its limit)
  const size_t grown = OpenFds() - fds0;
  EXPECT_LE(grown, 200u + 64u) << "the endpoint keeps every connection it is offered";
  const auto t0 = std::chrono::steady_clock::now();
  env.server->Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s) << "Shutdown() waited for the slow clients";
}

// One host that opens the endpoint's whole connection limit and sends its
// headers a byte at a time (each byte restarts the idle timeout) holds at
// most a few of them: a scrape from elsewhere is still answered.
TEST(Observability, OneSlowHostCannotTakeEveryConnection) {
  Env env;
  env.Start("127.0.0.1:0");
  const std::string addr = env.server->http_address();
  std::vector<std::unique_ptr<RawHttpClient>> slow;
  for (int i = 0; i < 64; ++i) {
    slow.push_back(std::make_unique<RawHttpClient>(addr, "127.0.0.2"));
    slow.back()->Send("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
  }
  std::this_thread::sleep_for(300ms);  // accepted (up to the limits) and reading headers
  for (auto& c : slow) c->Send("a");
  auto [host, port] = HostPort(addr);
  httplib::Client cli(host, port);
  cli.set_read_timeout(2, 0);
  auto res = cli.Get("/metrics");
  ASSERT_TRUE(res) << "no answer to a scrape while one host holds 64 connections";
  EXPECT_EQ(res->status, 200);
}

// A worker that does not come back (a handler that blocks its thread) makes
// /health 503 within a second; later probes answer at once instead of each
// holding one of the endpoint's two threads for a second, and /health is 200
// again once the worker is back.
TEST(Observability, HealthOfAStuckWorkerAnswersAtOnceAfterTheFirstSecond) {
  Env env;
  env.Start("127.0.0.1:0");
  const std::string addr = env.server->http_address();
  ASSERT_EQ(HttpGet(addr, "/health").status, 200);
  std::atomic<bool> blocked{false};
  env.channel->scheduler(0).Post([&] {
    blocked.store(true);
    std::this_thread::sleep_for(2500ms);  // the thread, not the coroutine
  });
  while (!blocked.load()) std::this_thread::yield();
  const Get first = HttpGet(addr, "/health");
  EXPECT_EQ(first.status, 503) << first.body;
  EXPECT_NE(first.body.find("did not answer within 1 s"), std::string::npos) << first.body;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const Get again = HttpGet(addr, "/health");
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(again.status, 503) << again.body;
    EXPECT_LT(took, 300ms) << "probe " << i << " took "
                           << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  }
  const auto until = std::chrono::steady_clock::now() + 5s;
  int status = 0;
  while ((status = HttpGet(addr, "/health").status) != 200 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(status, 200) << "the worker came back, /health did not";
}

// /health says 200 only once Start() has bound every listener: a Start() that
// failed (its RPC port taken) leaves the endpoint answering 503.
TEST(Observability, HealthIsNotOkWhenStartFailed) {
  const int taken = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(taken, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:" + std::to_string(ntohs(sa.sin_port))};
  so.http_listen = "127.0.0.1:0";
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto server = hrpc::Server::Create(so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const hrpc::Status st = (*server)->Start();
  EXPECT_FALSE(st.ok()) << "the RPC port was free after all: the check would prove nothing";
  const Get health = HttpGet((*server)->http_address(), "/health");
  EXPECT_EQ(health.status, 503) << health.body;
  EXPECT_NE(health.body.find("not serving"), std::string::npos) << health.body;
  ::close(taken);
}

TEST(Observability, BadHttpAddressFailsStart) {
  hrpc::ServerOptions so;
  so.listen = {"tcp://127.0.0.1:0"};
  so.http_listen = "127.0.0.1";  // no port
  so.runtime.transport_choice = hrpc::TransportChoice::kTcp;
  auto s = hrpc::Server::Create(so);
  ASSERT_TRUE(s.ok());
  rpctest::TestService service;
  ASSERT_TRUE((*s)->RegisterService(&service).ok());
  const hrpc::Status st = (*s)->Start();
  EXPECT_EQ(st.code(), hrpc::StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("http_listen"), std::string::npos) << st.ToString();
}

TEST(Observability, ApplicationMetricsAndClientOnlyRuntime) {
  Env env;
  env.Start("127.0.0.1:0");
  auto registry = std::make_shared<prometheus::Registry>();
  auto& family = prometheus::BuildCounter().Name("kv_puts_total").Help("Puts.").Register(*registry);
  family.Add({{"volume", "a"}}).Increment(3);
  env.server->AddCollectable(registry);
  const Exposition m = Parse(HttpGet(env.server->http_address(), "/metrics").body);
  EXPECT_EQ(m.Value("kv_puts_total", {{"volume", "a"}}), 3);
  registry.reset();  // gone: no longer exported
  EXPECT_TRUE(std::isnan(Parse(env.server->MetricsText()).Value("kv_puts_total", {{"volume", "a"}})));

  // A runtime with channels only: its client side.
  auto rt = hrpc::Runtime::Create();
  ASSERT_TRUE(rt.ok());
  const std::string uri = env.server->listen_uris().at(0);
  auto c = hrpc::RpcChannel::Create(**rt, "tcp://127.0.0.1:" + uri.substr(uri.rfind(':') + 1));
  ASSERT_TRUE(c.ok());
  rpctest::Test::Stub stub(c->get());
  for (int i = 0; i < 4; ++i) {
    ClientContext ctx;
    Req req;
    Resp resp;
    ASSERT_TRUE(stub.Call(ctx, req, &resp).ok());
  }
  const Exposition rm = Parse((*rt)->MetricsText());
  EXPECT_EQ(rm.Value("hrpc_rpc_calls_total", With(kClientCall, "code", "OK")), 4);
  EXPECT_TRUE(std::isnan(rm.Value("hrpc_rpc_calls_total", With(kServerCall, "code", "OK"))));
  EXPECT_EQ(rm.Sum("hrpc_client_connects_total"), 1);
  c->reset();
}

}  // namespace
