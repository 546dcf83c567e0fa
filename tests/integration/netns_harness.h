// Multi-host tests on one machine: a client and a server "host", each a
// network namespace, joined by one veth pair that the test creates and
// removes. Faults are made with the kernel's own tools: nftables (loss,
// partition) on any kernel with nf_tables, tc netem (delay) where the kernel
// has sch_netem (the Soft-RoCE guest's does, the development host's does not).
//
// Addresses exist only inside the namespaces (10.77.0.1 client, 10.77.0.2
// server); no interface of the host is touched. Namespace names carry the test
// process's pid and a sequence number, so parallel runs do not collide, and a
// run first removes what a crashed run left behind (namespaces named after a
// pid that no longer exists, and the processes still inside them).
//
// Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and the `ip` and `nft` programs
// (iproute2, nftables); NetnsPair::Create() says why when it cannot run, and
// the tests skip with that reason.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/child_process.h"
#include "hrpc/base/status.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/rpc_channel.h"

namespace hrpc::netns {

// Runs argv (argv[0] looked up in PATH, then /usr/sbin and /sbin) with
// `input` on its stdin and waits for it. OK when it exits with 0; otherwise
// INTERNAL with the command line and what it printed. NOT_FOUND when the
// program does not exist.
Status RunTool(const std::vector<std::string>& argv, std::string_view input = {});

// Full path of a program as RunTool finds it; empty when there is none.
std::string FindTool(const std::string& name);

class NetnsPair {
 public:
  static constexpr const char* kClientAddr = "10.77.0.1";
  static constexpr const char* kServerAddr = "10.77.0.2";

  // Both namespaces with the veth pair up and addressed. FAILED_PRECONDITION
  // (with the reason) when namespaces cannot be made here: not root, no `ip`
  // or `nft`, or the kernel refused.
  static Result<std::unique_ptr<NetnsPair>> Create();
  // Kills the servers it started that are still running, deletes both
  // namespaces (their veth ends go with them). Never fails.
  ~NetnsPair();
  NetnsPair(const NetnsPair&) = delete;
  NetnsPair& operator=(const NetnsPair&) = delete;

  const std::string& client_ns() const { return client_; }
  const std::string& server_ns() const { return server_; }
  // "tcp://10.77.0.2:<port>".
  static std::string ServerUri(int port);

  // Drops `percent`% of the packets entering and leaving the server's veth,
  // at random (nftables `numgen random`). 0 removes the rule.
  Status SetLoss(int percent);
  // Packets the SetLoss rule dropped so far (its nftables counters).
  Result<uint64_t> DroppedPackets();
  // Drops every packet between the hosts until Heal().
  Status Partition();
  Status Heal();
  // tc netem on both veth ends: `delay` each way and `loss_percent`% loss each
  // way. FAILED_PRECONDITION when the kernel has no netem.
  Status SetNetem(std::chrono::milliseconds delay, int loss_percent);

  // The server host powers off: its link is cut first (so no FIN or RST
  // reaches the client), then every process in its namespace is killed and
  // the namespace deleted.
  Status PowerOffServerHost();
  // The server host comes back: a fresh namespace with the same name and
  // address, and a new veth pair to the client.
  Status BootServerHost();

  // Starts `binary args...` inside the server namespace (ip netns exec; one
  // server at a time, a running one is killed first), waits for its
  // "READY <uri>" line and returns the uri. UNAVAILABLE when it exited
  // without one. The server lives until KillServer(), PowerOffServerHost()
  // or the destructor.
  Result<std::string> StartServer(const std::string& binary, const std::vector<std::string>& args);
  void KillServer();

  // Runs fn on a new thread that first joins the client namespace, and waits
  // for it. Threads started by fn (a Runtime's workers) stay in the client
  // namespace, and so do the sockets they open.
  Status RunInClientNs(const std::function<void()>& fn);

 private:
  NetnsPair(std::string client, std::string server) : client_(std::move(client)), server_(std::move(server)) {}
  Status AddServerLink();
  Status Nft(const std::string& ns, const std::string& script);

  std::string client_, server_;
  examples::Child server_child_;
};

// A client runtime for the tests: TCP, whose sockets live in the client
// namespace, with the given keepalive interval and dead-peer timeout; `adjust`
// may change the other options.
Result<std::unique_ptr<Runtime>> ClientRuntime(NetnsPair& net, std::chrono::milliseconds keepalive,
                                               std::chrono::milliseconds dead_peer,
                                               const std::function<void(RuntimeOptions&)>& adjust = {});

// What a batch of calls ended with.
struct Tally {
  int made = 0;
  int ok = 0;        // answered with the right text and the right payload (CRC32C both ways)
  int wrong = 0;     // answered, but with other bytes than were sent: never acceptable
  int failed = 0;    // ended with an error
  std::string first_error;
  double seconds = 0;
};

// Makes `calls` calls of rpctest.Test.Call on `ch`, `in_flight` at a time,
// each echoing an attachment of `attachment_bytes` (from `pool`, a pattern
// per call) and checking text, size and CRC32C of what came back. `timeout`
// is each call's deadline.
Tally RunEchoCalls(RpcChannel& ch, mempool::Pool& pool, int calls, size_t attachment_bytes, int in_flight,
                   std::chrono::milliseconds timeout);

}  // namespace hrpc::netns
