// Private to the RPC runtime: the outgoing side of one worker.
//
// A PeerTable belongs to one worker of a runtime and is touched only on that
// worker's thread. It holds that worker's connections to peers, keyed by
// (uri, index), shared by every channel of the runtime; a connection carries
// the calls of any channel that picked it. It sends calls (StartCall), reads
// responses (one reader coroutine per connection), ends calls (response,
// deadline, cancel, connection loss, channel destroyed) and closes connections
// that stayed idle for the runtime's idle_timeout.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <google/protobuf/message_lite.h>

#include "hrpc/base/counter.h"
#include "hrpc/base/status.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "hrpc/mempool/buffer.h"
#include "hrpc/rpc/channel.h"
#include "hrpc/rpc/client_context.h"
#include "hrpc/rpc/stats.h"
#include "hrpc/transport/transport.h"
#include "bulk.h"
#include "runtime_internal.h"

namespace hrpc::internal {

// What a call needs of the channel it was made on. Shared by the channel and
// its calls, so a call that outlives the channel object never dangles.
struct ChannelState {
  std::string uri;     // resolved, with scheme
  std::string scheme;  // "tcp", "rdma", "loop"
  size_t eager_threshold = 0;
  size_t connections_per_worker = 1;
  StreamWindowOptions stream_window;
  // Keys of its connections in the peer tables, one per index ("uri#i"),
  // made once so that a call builds no string.
  std::vector<std::string> link_keys;
  std::atomic<bool> closed{false};
  std::atomic<int64_t> in_flight{0};  // from Begin to Complete
  std::atomic<uint64_t> rr{0};

  // The runtime's counters of the methods this channel called, found without
  // the registry's lock after the first call: slots are filled once (pointer,
  // then key with release) and never change. A channel calling more methods
  // looks the others up under the lock (held briefly: not during scrapes).
  static constexpr size_t kCachedMethods = 32;
  std::array<std::atomic<uint64_t>, kCachedMethods> method_keys{};  // (service << 32 | method) + 1; 0 = free
  std::array<std::atomic<MethodCounters*>, kCachedMethods> method_counters{};
  std::atomic<size_t> methods_cached{0};
  MethodCounters& CountersFor(StatsRegistry& registry, uint32_t service_id, uint32_t method_id, std::string_view name);
};

struct Link;
class StreamCore;

// A stream opened on a connection of this worker (OpenStream).
struct OpenedStream {
  std::shared_ptr<Link> link;
  std::shared_ptr<StreamCore> core;
};

// A call in flight: allocated by RpcChannel::Impl::Begin, deleted by
// PeerTable::Complete, which then runs its done callback.
struct Call {
  uint64_t txn = 0;
  uint32_t service_id = 0;
  uint32_t method_id = 0;
  std::string_view name;
  ClientContext* ctx = nullptr;
  google::protobuf::MessageLite* response = nullptr;  // or:
  std::string* raw_response = nullptr;
  DoneCallback done;
  SerializedMessage msg;
  std::chrono::steady_clock::time_point start;
  MethodCounters* stats = nullptr;
  uint64_t bytes_out = 0;
  Exposed bulk;           // what the call exposed (revoked on completion)
  mempool::IoBuf pulled;  // a response attachment read from the server's memory
  coro::Scheduler::TimerId timer = 0;
  bool has_timer = false;
  std::shared_ptr<ChannelState> channel;
  size_t connection = 0;  // index among the channel's connections_per_worker
  std::shared_ptr<Link> link;
};

// True while a done callback of a call of `channel` runs on this thread (the
// callback may destroy the channel: it then waits for the others only).
bool CompletingCallOf(const ChannelState* channel) noexcept;

// The end of every call: deletes `call`, runs its done callback with
// `status`, then uncounts it from its channel's calls in flight (so the
// callback may destroy the channel, CompletingCallOf).
void FinishCall(Call* call, Status status);

class PeerTable {
 public:
  PeerTable(WorkerSet& workers, size_t worker) : workers_(workers), worker_(worker) {}
  ~PeerTable();
  PeerTable(const PeerTable&) = delete;
  PeerTable& operator=(const PeerTable&) = delete;

  // Sends `call` (takes ownership) on this worker's connection to its peer,
  // connecting first if needed. In a coroutine on this worker.
  void StartCall(Call* call);
  // Opens a stream for method (service_id, method_id) on this worker's
  // connection `index` to the channel's peer (connecting first if needed):
  // registers it, sends the open frame. In a coroutine on this worker.
  Result<OpenedStream> OpenStream(const std::shared_ptr<ChannelState>& channel, size_t index, uint32_t service_id,
                                  uint32_t method_id, ClientContext& ctx);
  // Ends stream `txn` of `link` on this side with `why` and, unless the
  // server has already closed it, tells the server (cancel frame). For a
  // stream already forgotten (the server closed it), only the cancel, and
  // only when `core` owes the server a release (messages with attachments in
  // the server's memory it will not consume). On this worker.
  void CancelStream(const std::shared_ptr<Link>& link, uint64_t txn, Status why,
                    const std::shared_ptr<StreamCore>& core = nullptr);
  // Ends every call and stream of `channel` with `why`. On this worker.
  void AbortChannel(const ChannelState* channel, const Status& why);
  // Closes every connection, failing its calls with `why`; stops the idle
  // sweeper. On this worker. Readers leave afterwards (live_links()).
  void CloseAll(const Status& why);
  // Connects (uri, index) now. In a coroutine on this worker.
  Status Connect(const ChannelState& channel, size_t index);

  size_t open_links() const noexcept { return open_.load(std::memory_order_relaxed); }
  int64_t live_links() const noexcept { return live_.load(std::memory_order_relaxed); }

  // Counters of this worker's outgoing connections (any thread reads).
  struct Counters {
    OwnerCounter connects;          // connections made
    OwnerCounter connect_failures;  // connection attempts that failed
    OwnerCounter reconnects;        // connections made to replace one that failed
    OwnerCounter lost;              // connections that failed (not closed idle or at shutdown)
    OwnerCounter auth_failures;     // of connect_failures: RuntimeOptions::authenticator failed
  };
  const Counters& counters() const noexcept { return counters_; }
  // The open connections, for /status (any thread).
  std::vector<std::shared_ptr<const ConnectionInfo>> Links() const;

 private:
  // A cancel frame for stream `txn`, once `core`'s READs in flight are over.
  void SendStreamCancel(const std::shared_ptr<Link>& link, uint64_t txn, StreamCore& core);
  struct Entry {
    std::shared_ptr<Link> link;
    bool connecting = false;
    std::shared_ptr<coro::Event> connect_done;
    Status last_error;
    bool replaces_failed = false;  // its last link failed: the next one is a reconnect
  };

  // The link for `channel`'s connection `index`, connecting it (in a coroutine
  // of its own) when there is none; waits for a connect until `deadline`
  // (DEADLINE_EXCEEDED), the connect itself going on for later calls.
  Result<std::shared_ptr<Link>> EnsureLink(const ChannelState& channel, size_t index,
                                           coro::Clock::time_point deadline = coro::Clock::time_point::max());
  void ConnectLink(const std::string& key, const std::string& uri, const std::string& scheme, coro::Event& ev);
  void FailLink(const std::shared_ptr<Link>& link, const Status& why);
  void ReadLoop(std::shared_ptr<Link> link);
  void OnMessage(const std::shared_ptr<Link>& link, mempool::IoBuf& raw);
  // READs a response attachment the server exposed, RELEASEs it, completes the call.
  void PullResponse(std::shared_ptr<Link> link, Call* call, ReceivedFrame& rx);
  // A response for a call that already ended: frees what the call left exposed.
  void LateResponse(const std::shared_ptr<Link>& link, const wire::Frame& frame);
  void SendRelease(Link& link, uint64_t txn);
  void Complete(Call* call, Status status, ReceivedFrame* rx);
  Status FillResponse(Call& call, ReceivedFrame& rx, uint64_t* bytes_in);
  void Abort(const std::shared_ptr<Link>& link, uint64_t txn, Status why);
  // Abort() of call txn, wherever it is in flight; no-op if it has ended.
  void AbortTxn(uint64_t txn, Status why);
  void OnStreamFrame(const std::shared_ptr<Link>& link, ReceivedFrame rx);
  void ForgetStream(Link& link, uint64_t txn);
  void SweepIdle();

  WorkerSet& workers_;
  size_t worker_;
  std::unordered_map<std::string, Entry> table_;  // "uri#index"
  // The entry the last lookup found (elements of the map stay where they are
  // until erased): a worker's calls mostly go to one peer, and comparing the
  // key costs less than hashing it.
  Entry* hot_entry_ = nullptr;
  std::string hot_key_;
  std::atomic<size_t> open_{0};                    // links not yet failed
  std::atomic<int64_t> live_{0};                   // reader coroutines running
  std::vector<std::shared_ptr<Link>> failing_;     // lost links whose calls FailLink is completing
  // Transaction ids of this worker's calls and streams, unique across its
  // connections (so that a txn alone names a call: AbortTxn).
  uint64_t next_txn_ = 1;
  bool sweeping_ = false;
  bool closed_ = false;
  coro::LocalEvent stop_sweeper_;
  Counters counters_;
  mutable std::mutex links_mu_;  // link_infos_ (connect and close only)
  std::vector<std::shared_ptr<ConnectionInfo>> link_infos_;
};

}  // namespace hrpc::internal
