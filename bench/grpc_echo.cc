// grpc_echo: the gRPC baseline of echo_bench. One program, two roles, each
// driving one completion queue from one thread (gRPC adds its own internal
// threads: timers, resolver; they run on the process's cpus):
//
//   grpc_echo --role=server
//     async unary Echo server on 127.0.0.1, an ephemeral port; prints
//     "READY port=<p>", then serves until SIGTERM. The reply takes the request's
//     bytes (swapped, not copied).
//   grpc_echo --role=client --port=P --payload=B --concurrency=N --duration=S
//             [--warmup=S] [--server_pid=PID]
//     keeps N calls in flight on one channel, each echoing B bytes; prints
//     grpc_echo calls=.. errors=.. seconds=.. rps=.. p50_us=.. p99_us=.. cpu=C/S
//     cpu: this process and the server process (from /proc/PID/stat, -1 without
//     --server_pid) in % of one core over the measured window.
//
// Pinning is left to the caller (echo_bench sets the affinity before exec).
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "grpc_echo.grpc.pb.h"
#include "common/cli.h"
#include "common/proc_cpu.h"

namespace {

using Clock = std::chrono::steady_clock;

using hrpc::examples::ProcCpuNs;
using hrpc::examples::SelfCpuNs;

// --- server -------------------------------------------------------------------

// One call: waits for a request, answers it with the same bytes, then frees itself.
class ServerCall {
 public:
  ServerCall(hrpc_bench::GrpcEcho::AsyncService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), responder_(&ctx_) {
    service_->RequestEcho(&ctx_, &request_, &responder_, cq_, cq_, this);
  }

  void Proceed(bool ok) {
    if (finishing_ || !ok) {
      delete this;
      return;
    }
    new ServerCall(service_, cq_);  // the next request
    reply_.mutable_data()->swap(*request_.mutable_data());
    finishing_ = true;
    responder_.Finish(reply_, grpc::Status::OK, this);
  }

 private:
  hrpc_bench::GrpcEcho::AsyncService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  hrpc_bench::EchoPayload request_, reply_;
  grpc::ServerAsyncResponseWriter<hrpc_bench::EchoPayload> responder_;
  bool finishing_ = false;
};

std::atomic<bool> g_stop{false};  // set by the SIGTERM handler of this program only
void OnTerm(int) { g_stop.store(true); }

int ServerMain() {
  hrpc_bench::GrpcEcho::AsyncService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::ServerCompletionQueue> cq = builder.AddCompletionQueue();
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "grpc_echo: server did not start\n");
    return 1;
  }
  signal(SIGTERM, OnTerm);
  new ServerCall(&service, cq.get());
  std::printf("READY port=%d\n", port);
  std::fflush(stdout);
  void* tag;
  bool ok;
  while (!g_stop.load()) {
    const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(200);
    const auto r = cq->AsyncNext(&tag, &ok, deadline);
    if (r == grpc::CompletionQueue::SHUTDOWN) break;
    if (r == grpc::CompletionQueue::GOT_EVENT) static_cast<ServerCall*>(tag)->Proceed(ok);
  }
  server->Shutdown(std::chrono::system_clock::now());
  cq->Shutdown();
  while (cq->Next(&tag, &ok)) static_cast<ServerCall*>(tag)->Proceed(false);
  return 0;
}

// --- client -------------------------------------------------------------------

struct ClientCall {
  grpc::ClientContext ctx;
  hrpc_bench::EchoPayload reply;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<hrpc_bench::EchoPayload>> reader;
  Clock::time_point start;
};

struct ClientArgs {
  int port = 0;
  size_t payload = 64;
  size_t concurrency = 1;
  double duration = 1.0;
  double warmup = 0.3;
  pid_t server_pid = 0;
};

int ClientMain(const ClientArgs& a) {
  grpc::ChannelArguments ca;
  ca.SetMaxReceiveMessageSize(64 << 20);
  ca.SetMaxSendMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(a.port), grpc::InsecureChannelCredentials(), ca);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
    std::printf("grpc_echo error=connect\n");
    return 1;
  }
  auto stub = hrpc_bench::GrpcEcho::NewStub(channel);
  grpc::CompletionQueue cq;
  hrpc_bench::EchoPayload request;
  request.mutable_data()->assign(a.payload, 'x');
  for (size_t i = 0; i < a.payload; ++i) (*request.mutable_data())[i] = static_cast<char>(i * 131);

  auto start_call = [&] {
    auto* c = new ClientCall;
    c->start = Clock::now();
    c->reader = stub->AsyncEcho(&c->ctx, request, &cq);
    c->reader->Finish(&c->reply, &c->status, c);
  };
  for (size_t i = 0; i < a.concurrency; ++i) start_call();

  std::vector<uint64_t> lat_ns;
  lat_ns.reserve(1 << 20);
  uint64_t calls = 0, errors = 0;
  const auto t_warm = Clock::now();
  const auto t0 = t_warm + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.warmup));
  const auto t_end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.duration));
  bool measuring = false, done = false;
  uint64_t c0 = 0, s0 = 0, c1 = 0, s1 = 0;
  Clock::time_point t_start, t_stop;
  size_t in_flight = a.concurrency;
  void* tag;
  bool ok;
  while (in_flight > 0 && cq.Next(&tag, &ok)) {
    auto* c = static_cast<ClientCall*>(tag);
    --in_flight;
    const auto now = Clock::now();
    if (!measuring && !done && now >= t0) {
      measuring = true;
      t_start = now;
      c0 = SelfCpuNs();
      s0 = a.server_pid > 0 ? ProcCpuNs(a.server_pid) : 0;
    }
    if (measuring && now >= t_end) {
      measuring = false;
      done = true;
      t_stop = now;
      c1 = SelfCpuNs();
      s1 = a.server_pid > 0 ? ProcCpuNs(a.server_pid) : 0;
    }
    if (measuring) {
      if (ok && c->status.ok() && c->reply.data().size() == a.payload) {
        ++calls;
        lat_ns.push_back(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - c->start).count()));
      } else {
        ++errors;
      }
    }
    delete c;
    if (!done) {
      start_call();
      ++in_flight;
    }
  }
  if (!done) {
    std::printf("grpc_echo error=stopped-early\n");
    return 1;
  }
  const double secs = std::chrono::duration<double>(t_stop - t_start).count();
  auto q = [&](double p) {
    if (lat_ns.empty()) return 0.0;
    const size_t k = std::min(lat_ns.size() - 1, static_cast<size_t>(p * static_cast<double>(lat_ns.size())));
    std::nth_element(lat_ns.begin(), lat_ns.begin() + static_cast<long>(k), lat_ns.end());
    return static_cast<double>(lat_ns[k]) / 1e3;
  };
  const double p50 = q(0.50), p99 = q(0.99);
  const double server_cpu = a.server_pid > 0 && s0 > 0 ? static_cast<double>(s1 - s0) / 1e9 / secs * 100 : -1;
  std::printf("grpc_echo calls=%llu errors=%llu seconds=%.3f rps=%.0f p50_us=%.1f p99_us=%.1f cpu=%.0f/%.0f\n",
              static_cast<unsigned long long>(calls), static_cast<unsigned long long>(errors), secs,
              static_cast<double>(calls) / secs, p50, p99, static_cast<double>(c1 - c0) / 1e9 / secs * 100,
              server_cpu);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string role;
  ClientArgs a;
  CLI::App app("The gRPC baseline of echo_bench: an async echo server (--role=server prints READY port=P)\n"
               "or a client keeping --concurrency calls of --payload bytes in flight (--role=client).",
               "grpc_echo");
  app.add_option("--role", role, "server: serve until SIGTERM; client: measure, print one line")
      ->check(CLI::IsMember({"server", "client"}));
  app.add_option("--port", a.port, "client: the server's port")->capture_default_str();
  app.add_option("--payload", a.payload, "client: bytes per call")->capture_default_str();
  app.add_option("--concurrency", a.concurrency, "client: calls in flight")->capture_default_str();
  app.add_option("--duration", a.duration, "client: seconds measured")->capture_default_str();
  app.add_option("--warmup", a.warmup, "client: seconds before measuring")->capture_default_str();
  app.add_option("--server_pid", a.server_pid, "client: the server process, for its cpu (0: not measured)")
      ->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  a.concurrency = std::max<size_t>(1, a.concurrency);
  if (role == "server") return ServerMain();
  if (role == "client" && a.port > 0) return ClientMain(a);
  std::fprintf(stderr, "grpc_echo: --role=server, or --role=client with --port\n");
  return 2;
}
