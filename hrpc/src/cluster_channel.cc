#include "hrpc/rpc/cluster_channel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"
#include "runtime_internal.h"

namespace hrpc {
namespace {

using Clock = std::chrono::steady_clock;

enum class Balancer { kRoundRobin, kLeastLoaded, kConsistentHash };

// splitmix64's finalizer: spreads hashes and keys over the ring.
uint64_t Mix64(uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Request ids come from here: seeded with 256 bits, so that two threads (of
// any clients) that share a seed, and so a sequence of ids, are not a matter
// of a 32-bit birthday.
uint64_t RandomU64() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seed);
  }();
  return rng();
}

// One server of the set. Shared by the set and by the attempts running on it,
// so a server that leaves the set finishes its calls first.
struct Node {
  ServerNode node;
  std::unique_ptr<RpcChannel> channel;
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> ejections{0};
  std::atomic<int64_t> in_flight{0};
  std::atomic<double> latency_us{0};
  std::atomic<int> consecutive_failures{0};
  std::atomic<bool> ejected{false};
};

struct NodeSet {
  std::vector<std::shared_ptr<Node>> nodes;
  std::vector<std::pair<uint64_t, uint32_t>> ring;  // (point, index into nodes), sorted
};

// One send of a call to one server.
struct Attempt {
  std::shared_ptr<Node> node;
  ClientContext ctx;
  std::string response;
  Status status;
};

// The attempts of one round (the first send, and its backup request if any):
// the first OK answer wins, or the round ends when every attempt failed.
struct Race {
  std::mutex mu;
  coro::Event done;
  int outstanding = 0;
  std::shared_ptr<Attempt> winner;
  std::shared_ptr<Attempt> failed;  // the last attempt that failed
  std::vector<std::shared_ptr<Attempt>> running;

  void CancelAll() {
    std::vector<std::shared_ptr<Attempt>> all;
    {
      std::lock_guard lock(mu);
      all = running;
    }
    for (auto& a : all) a->ctx.Cancel();
  }
};

}  // namespace

class ClusterChannel::Impl : public std::enable_shared_from_this<Impl> {
 public:
  struct Call {
    const MethodDescriptor* method = nullptr;
    ClientContext* ctx = nullptr;
    google::protobuf::MessageLite* response = nullptr;
    DoneCallback done;
    std::string request;
    mempool::IoBuf attachment;
    bool idempotent = false;
    int max_attempts = 1;
    uint64_t request_id = 0;
    std::shared_ptr<Race> race;  // the round in flight (for Cancel and shutdown)
    std::mutex mu;               // guards race
  };

  std::shared_ptr<internal::WorkerSet> workers;
  ClusterChannelOptions options;
  std::string uri;
  Balancer balancer = Balancer::kRoundRobin;
  std::unique_ptr<NamingWatcher> watcher;

  mutable std::mutex mu;
  std::shared_ptr<const NodeSet> set = std::make_shared<NodeSet>();
  Status naming = UnavailableError("no naming result yet");
  std::unordered_set<Call*> active;  // calls in flight, for shutdown

  std::atomic<uint64_t> rr{0};
  std::atomic<uint64_t> calls{0}, failed_calls{0}, retries{0}, backups{0}, backup_wins{0};
  std::atomic<uint64_t> naming_updates{0}, naming_errors{0};
  std::atomic<bool> closed{false};

  std::thread health;
  std::mutex health_mu;
  std::condition_variable health_cv;
  bool health_stop = false;

  std::shared_ptr<const NodeSet> Current() const {
    std::lock_guard lock(mu);
    return set;
  }

  // A naming result: a new set (servers kept by URI keep their channel and
  // stats), or an error (the last good set stays).
  void Apply(Result<NamingUpdate> update) {
    if (!update.ok()) {
      SPDLOG_WARN("hrpc cluster {}: naming failed, keeping {} servers: {}", uri, Current()->nodes.size(),
                  update.status().ToString());
      {
        std::lock_guard lock(mu);
        naming = update.status();
      }
      naming_errors.fetch_add(1, std::memory_order_release);
      return;
    }
    for (const auto& p : update->problems) SPDLOG_WARN("hrpc cluster {}: naming entry skipped: {}", uri, p);
    auto old = Current();
    std::unordered_map<std::string, std::shared_ptr<Node>> by_uri;
    for (const auto& n : old->nodes) by_uri[n->node.uri] = n;
    auto next = std::make_shared<NodeSet>();
    for (const auto& s : update->servers) {
      if (auto it = by_uri.find(s.uri); it != by_uri.end()) {
        if (it->second->node.tag == s.tag) {
          next->nodes.push_back(it->second);
          continue;
        }
      }
      auto ch = RpcChannel::CreateOn(workers, s.uri, options.channel);
      if (!ch.ok()) {
        SPDLOG_WARN("hrpc cluster {}: server {} skipped: {}", uri, s.uri, ch.status().ToString());
        continue;
      }
      auto n = std::make_shared<Node>();
      n->node = s;
      n->channel = std::move(*ch);
      next->nodes.push_back(std::move(n));
    }
    if (balancer == Balancer::kConsistentHash) {
      for (uint32_t i = 0; i < next->nodes.size(); ++i) {
        const uint64_t base = Fnv1a64(next->nodes[i]->node.uri);
        for (size_t p = 0; p < options.hash_points; ++p) next->ring.emplace_back(Mix64(base + Mix64(p)), i);
      }
      std::sort(next->ring.begin(), next->ring.end());
    }
    std::shared_ptr<const NodeSet> dropped;
    {
      std::lock_guard lock(mu);
      dropped = std::exchange(set, std::move(next));
      naming = Status::Ok();
    }
    naming_updates.fetch_add(1, std::memory_order_release);
    SPDLOG_INFO("hrpc cluster {}: {} servers", uri, Current()->nodes.size());
  }

  // The server for the next attempt: not ejected and not in `exclude` if
  // any; else not excluded; else any.
  std::shared_ptr<Node> Pick(const NodeSet& s, const ClientContext& ctx, const std::vector<const Node*>& exclude) {
    if (s.nodes.empty()) return nullptr;
    auto excluded = [&](const Node* n) { return std::find(exclude.begin(), exclude.end(), n) != exclude.end(); };
    for (int pass = 0; pass < 3; ++pass) {
      auto ok = [&](const Node* n) {
        if (pass == 2) return true;
        if (excluded(n)) return false;
        return pass == 1 || !n->ejected.load(std::memory_order_relaxed);
      };
      if (balancer == Balancer::kConsistentHash && ctx.has_request_key() && !s.ring.empty()) {
        const uint64_t h = Mix64(ctx.request_key());
        auto it = std::lower_bound(s.ring.begin(), s.ring.end(), std::make_pair(h, uint32_t{0}));
        for (size_t k = 0; k < s.ring.size(); ++k, ++it) {
          if (it == s.ring.end()) it = s.ring.begin();
          if (ok(s.nodes[it->second].get())) return s.nodes[it->second];
        }
        continue;
      }
      if (balancer == Balancer::kLeastLoaded) {
        // A server with no latency yet (new to the set) counts as the fastest
        // of the others: it gets tried at once, and is not flooded (as a zero
        // would) until it has answered.
        double fastest = 0;
        for (const auto& n : s.nodes) {
          const double l = n->latency_us.load(std::memory_order_relaxed);
          if (l > 0 && (fastest == 0 || l < fastest)) fastest = l;
        }
        const double unknown = fastest > 0 ? fastest : 1.0;
        std::shared_ptr<Node> best;
        double best_score = 0;
        const size_t start = rr.fetch_add(1, std::memory_order_relaxed);  // ties go round robin
        for (size_t k = 0; k < s.nodes.size(); ++k) {
          const auto& n = s.nodes[(start + k) % s.nodes.size()];
          if (!ok(n.get())) continue;
          const double l = n->latency_us.load(std::memory_order_relaxed);
          const double score =
              static_cast<double>(n->in_flight.load(std::memory_order_relaxed) + 1) * std::max(1.0, l > 0 ? l : unknown);
          if (!best || score < best_score) {
            best = n;
            best_score = score;
          }
        }
        if (best) return best;
        continue;
      }
      const size_t start = rr.fetch_add(1, std::memory_order_relaxed);
      for (size_t k = 0; k < s.nodes.size(); ++k) {
        const auto& n = s.nodes[(start + k) % s.nodes.size()];
        if (ok(n.get())) return n;
      }
    }
    return nullptr;
  }

  void Record(Node& n, const Status& s, Clock::duration took, bool lost_race) {
    n.in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (s.ok()) {
      // One answer weighs at most like one ten times slower than the recent
      // mean: a single stall (the caller descheduled, a page fault) must not
      // make a fast server look slower than a slow one, which `la` would then
      // stop calling and so never learn otherwise. A server that really
      // slows down gets there in a few answers.
      const double us = std::chrono::duration<double, std::micro>(took).count();
      const double old = n.latency_us.load(std::memory_order_relaxed);
      n.latency_us.store(old == 0 ? us : old * 0.8 + std::min(us, old * 10) * 0.2, std::memory_order_relaxed);
      n.consecutive_failures.store(0, std::memory_order_relaxed);
      return;
    }
    if (lost_race) return;  // cancelled because the other attempt answered
    n.errors.fetch_add(1, std::memory_order_relaxed);
    if (s.code() == StatusCode::kDeadlineExceeded) {
      // No answer within `took`: it would have taken longer. Weighed like an
      // answer that took that long, so a server that takes calls and answers
      // none does not keep the latency it had when it answered; never less
      // than the mean (an attempt with little of the deadline left, or none,
      // says nothing of a faster server).
      const double us = std::chrono::duration<double, std::micro>(took).count();
      const double old = n.latency_us.load(std::memory_order_relaxed);
      n.latency_us.store(old == 0 ? us : std::min(60e6, old * 0.8 + std::min(std::max(us, old), old * 10) * 0.2),
                         std::memory_order_relaxed);
    } else if (s.code() != StatusCode::kCancelled) {
      // A quick refusal must not make a server look fast to `la`: a failure
      // weighs like an answer ten times slower than its recent mean.
      // Capped (a minute): a server failing for long stays finite, and one
      // good answer brings it back by a fifth of the way.
      const double old = n.latency_us.load(std::memory_order_relaxed);
      n.latency_us.store(old == 0 ? 10'000 : std::min(60e6, old * 0.8 + old * 10 * 0.2), std::memory_order_relaxed);
    }
    if (s.code() != StatusCode::kUnavailable) {
      n.consecutive_failures.store(0, std::memory_order_relaxed);
      return;
    }
    if (n.consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1 >= options.eject_after_failures &&
        !n.ejected.exchange(true, std::memory_order_relaxed)) {
      n.ejections.fetch_add(1, std::memory_order_relaxed);
      SPDLOG_WARN("hrpc cluster {}: server {} ejected after {} failures: {}", uri, n.node.uri,
                  options.eject_after_failures, s.ToString());
    }
  }

  // Sends `call` to `node` as part of `race`, on a coroutine of this worker.
  void StartAttempt(const std::shared_ptr<Call>& call, const std::shared_ptr<Race>& race,
                    std::shared_ptr<Node> node) {
    auto a = std::make_shared<Attempt>();
    a->node = std::move(node);
    a->ctx.set_deadline(call->ctx->deadline());
    a->ctx.set_response_attachment_capacity(call->ctx->response_attachment_capacity());
    a->ctx.set_request_id(call->request_id);
    a->ctx.request_attachment() = call->attachment.Share();
    {
      std::lock_guard lock(race->mu);
      race->outstanding++;
      race->running.push_back(a);
    }
    a->node->calls.fetch_add(1, std::memory_order_relaxed);
    a->node->in_flight.fetch_add(1, std::memory_order_relaxed);
    auto self = shared_from_this();
    coro::Scheduler::Current()->Spawn(
        [self, call, race, a] {
          const auto t0 = Clock::now();
          a->status = a->node->channel->CallRaw(call->method->service_id, call->method->method_id,
                                                call->method->full_name, a->ctx, call->request, &a->response);
          bool lost;
          {
            std::lock_guard lock(race->mu);
            lost = race->winner != nullptr;
          }
          self->Record(*a->node, a->status, Clock::now() - t0, lost);
          std::vector<std::shared_ptr<Attempt>> losers;
          bool finished = false;
          {
            std::lock_guard lock(race->mu);
            race->outstanding--;
            if (a->status.ok() && race->winner == nullptr) {
              race->winner = a;
              for (auto& other : race->running) {
                if (other != a) losers.push_back(other);
              }
              finished = true;
            } else if (!a->status.ok() && race->winner == nullptr) {
              race->failed = a;
            }
            if (race->outstanding == 0) finished = true;
          }
          for (auto& l : losers) l->ctx.Cancel();
          if (finished) race->done.Set();
        },
        "hrpc-cluster-attempt");
  }

  bool Retryable(const Status& s) const {
    return std::find(options.retry.retry_on.begin(), options.retry.retry_on.end(), s.code()) !=
           options.retry.retry_on.end();
  }

  std::chrono::milliseconds Backoff(int retry) const {
    auto d = options.retry.backoff * (1 << std::min(retry - 1, 16));
    d = std::min(d, options.retry.max_backoff);
    if (d.count() > 1) d -= std::chrono::milliseconds(RandomU64() % (d.count() / 2 + 1));
    return d;
  }

  // The whole call, on a coroutine of one of the runtime's workers.
  Status Run(const std::shared_ptr<Call>& call) {
    ClientContext& ctx = *call->ctx;
    ctx.SetCancelHook([call] {
      std::shared_ptr<Race> r;
      {
        std::lock_guard lock(call->mu);
        r = call->race;
      }
      if (r) r->CancelAll();
    });
    std::vector<const Node*> tried;
    std::shared_ptr<Node> pinned;  // a non-idempotent call is resent only to its first server
    Status last = UnavailableError("cluster " + uri + ": no server");
    int attempts = 0;
    bool backup_sent = false;
    for (int round = 0;; ++round) {
      if (ctx.IsCancelled() || closed.load(std::memory_order_acquire)) {
        last = CancelledError(closed ? "cluster channel destroyed" : "call cancelled");
        break;
      }
      if (ctx.DeadlineExpired()) {
        last = DeadlineExceededError("cluster " + uri + ": deadline passed after " + std::to_string(attempts) +
                                     " attempts: " + last.ToString());
        break;
      }
      auto s = Current();
      std::shared_ptr<Node> node = pinned ? pinned : Pick(*s, ctx, tried);
      if (!node) {
        last = UnavailableError("cluster " + uri + ": no server in the set (naming: " + naming_status().ToString() +
                                ")");
        break;
      }
      if (!call->idempotent) pinned = node;
      auto race = std::make_shared<Race>();
      {
        std::lock_guard lock(call->mu);
        call->race = race;
      }
      StartAttempt(call, race, node);
      ++attempts;
      if (round > 0) retries.fetch_add(1, std::memory_order_relaxed);
      tried.push_back(node.get());
      const auto delay = options.backup_request_delay;
      if (call->idempotent && delay.count() > 0 && !backup_sent && attempts < call->max_attempts) {
        const auto until = std::min(Clock::now() + delay, ctx.deadline());
        if (!race->done.WaitUntil(until).ok() && !race->done.IsSet() && !ctx.DeadlineExpired()) {
          if (auto b = Pick(*s, ctx, tried); b && b != node) {
            StartAttempt(call, race, b);
            ++attempts;
            backup_sent = true;
            backups.fetch_add(1, std::memory_order_relaxed);
            tried.push_back(b.get());
          }
        }
      }
      if (ctx.IsCancelled()) race->CancelAll();  // Cancel() may have run before the race was visible
      race->done.Wait().IgnoreError();
      std::shared_ptr<Attempt> winner;
      std::shared_ptr<Attempt> failed;
      {
        std::lock_guard lock(race->mu);
        winner = race->winner;
        failed = race->failed;
      }
      if (winner) {
        if (winner->node != node) backup_wins.fetch_add(1, std::memory_order_relaxed);
        ctx.ClearCancelHook();
        ctx.set_attempts(attempts, backup_sent);
        ctx.set_peer(winner->node->node.uri);
        ctx.response_attachment() = std::move(winner->ctx.response_attachment());
        if (call->response != nullptr && !call->response->ParseFromString(winner->response)) {
          return DataLossError("cluster " + uri + ": response of " + std::string(call->method->full_name) +
                               " from " + winner->node->node.uri + " does not parse");
        }
        return Status::Ok();
      }
      last = failed ? failed->status : UnavailableError("cluster " + uri + ": attempt ended without a status");
      if (failed) ctx.set_peer(failed->node->node.uri);
      if (!Retryable(last) || attempts >= call->max_attempts) break;
      if (!call->idempotent && last.code() != StatusCode::kUnavailable) break;
      const auto pause = Backoff(round + 1);
      if (ctx.has_deadline() && Clock::now() + pause >= ctx.deadline()) break;
      coro::this_coro::SleepFor(pause);
    }
    ctx.ClearCancelHook();
    ctx.set_attempts(attempts, backup_sent);
    return last;
  }

  Status naming_status() const {
    std::lock_guard lock(mu);
    return naming;
  }

  // Builds the call: the request serialized once (every attempt sends these
  // bytes), the attachment taken from the context (each attempt shares it).
  Result<std::shared_ptr<Call>> NewCall(const MethodDescriptor& method, ClientContext& ctx,
                                        const google::protobuf::MessageLite& request,
                                        google::protobuf::MessageLite* response) {
    if (!request.IsInitialized()) {
      ctx.request_attachment() = mempool::IoBuf();
      return InvalidArgumentError("request for " + std::string(method.full_name) +
                                  " lacks required fields: " + request.InitializationErrorString());
    }
    auto call = std::make_shared<Call>();
    call->method = &method;
    call->ctx = &ctx;
    call->response = response;
    if (!request.SerializeToString(&call->request)) {
      ctx.request_attachment() = mempool::IoBuf();
      return InternalError("cannot serialize the request for " + std::string(method.full_name));
    }
    call->attachment = std::move(ctx.request_attachment());
    call->idempotent = ctx.idempotent_override() < 0 ? method.idempotent : ctx.idempotent_override() == 1;
    call->max_attempts = ctx.max_attempts() > 0 ? ctx.max_attempts() : options.retry.max_attempts;
    // Every attempt carries the same id; the caller's context keeps its own
    // (a context reused for the next call must not look like a retry).
    call->request_id = ctx.request_id() != 0 ? ctx.request_id() : (RandomU64() | 1);
    return call;
  }

  // Runs the call on a coroutine of the calling worker (or posts it to one)
  // and hands the result to `done`.
  void Launch(std::shared_ptr<Call> call) {
    calls.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(mu);
      active.insert(call.get());
    }
    const int cur = workers->CurrentIndex();
    const size_t w = cur >= 0 ? static_cast<size_t>(cur) : workers->NextWorker();
    coro::Scheduler& sched = workers->scheduler(w);
    auto self = shared_from_this();
    auto body = [self, call] {
      Status s = self->Run(call);
      if (!s.ok()) self->failed_calls.fetch_add(1, std::memory_order_relaxed);
      DoneCallback done = std::move(call->done);
      {
        std::lock_guard lock(self->mu);
        self->active.erase(call.get());
      }
      done(std::move(s));
    };
    if (coro::Scheduler::Current() == &sched) {
      sched.Spawn(std::move(body), "hrpc-cluster-call");
    } else {
      sched.Post(std::move(body), "hrpc-cluster-call");
    }
  }

  void HealthLoop() {
    pthread_setname_np(pthread_self(), "hrpc-health");
    std::unique_lock lock(health_mu);
    while (!health_stop) {
      health_cv.wait_for(lock, options.health_check_interval);
      if (health_stop) break;
      lock.unlock();
      auto s = Current();
      for (const auto& n : s->nodes) {
        if (!n->ejected.load(std::memory_order_relaxed)) continue;
        if (n->channel->Connect().ok()) {
          n->consecutive_failures.store(0, std::memory_order_relaxed);
          // Its mean is of the failures that ejected it: unknown again, `la`
          // scores it as the fastest server until its first answers.
          n->latency_us.store(0, std::memory_order_relaxed);
          n->ejected.store(false, std::memory_order_relaxed);
          SPDLOG_INFO("hrpc cluster {}: server {} is back", uri, n->node.uri);
        }
      }
      lock.lock();
    }
  }

  void Close() {
    if (watcher) watcher->Stop();
    {
      std::lock_guard lock(health_mu);
      health_stop = true;
    }
    health_cv.notify_all();
    if (health.joinable()) {
      // On one of the runtime's workers a join could wait on a probe that
      // waits on this very worker: the reaper joins it (the thread holds the
      // Impl alive until then).
      if (workers->CurrentIndex() >= 0) {
        internal::ReapLater([t = std::make_shared<std::thread>(std::move(health))] { t->join(); });
      } else {
        health.join();
      }
    }
    closed.store(true, std::memory_order_release);
    const auto until = Clock::now() + std::chrono::seconds(10);
    for (;;) {
      std::vector<std::shared_ptr<Race>> races;
      {
        std::lock_guard lock(mu);
        if (active.empty()) break;
        for (Call* c : active) {
          std::lock_guard cl(c->mu);
          if (c->race) races.push_back(c->race);
        }
      }
      for (auto& r : races) r->CancelAll();
      if (Clock::now() >= until) {
        SPDLOG_WARN("hrpc cluster {}: destroyed with calls still running", uri);
        break;
      }
      if (coro::this_coro::InCoroutine()) {
        coro::this_coro::SleepFor(std::chrono::milliseconds(1));
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }
};

Result<std::unique_ptr<ClusterChannel>> ClusterChannel::Create(Runtime& runtime, std::string_view naming_uri,
                                                               ClusterChannelOptions options) {
  auto impl = std::make_shared<Impl>();
  if (options.load_balancer == "rr") {
    impl->balancer = Balancer::kRoundRobin;
  } else if (options.load_balancer == "la") {
    impl->balancer = Balancer::kLeastLoaded;
  } else if (options.load_balancer == "c_hash") {
    impl->balancer = Balancer::kConsistentHash;
  } else {
    return InvalidArgumentError("load balancer '" + options.load_balancer + "': expected rr, la or c_hash");
  }
  if (options.retry.max_attempts < 1) return InvalidArgumentError("retry.max_attempts must be >= 1");
  if (options.eject_after_failures < 1) return InvalidArgumentError("eject_after_failures must be >= 1");
  if (options.hash_points == 0) return InvalidArgumentError("hash_points must be >= 1");
  if (options.health_check_interval.count() <= 0) return InvalidArgumentError("health_check_interval must be > 0");
  impl->workers = runtime.core();
  impl->uri = std::string(naming_uri);
  impl->options = std::move(options);
  HRPC_ASSIGN_OR_RETURN(impl->watcher, MakeNamingWatcher(naming_uri, impl->options.naming));
  std::weak_ptr<Impl> weak = impl;
  Status first = impl->watcher->Start([weak](Result<NamingUpdate> u) {
    if (auto self = weak.lock()) self->Apply(std::move(u));
  });
  if (impl->options.require_servers_at_start && (!first.ok() || impl->Current()->nodes.empty())) {
    impl->watcher->Stop();
    return first.ok() ? UnavailableError("cluster " + impl->uri + ": naming gave no server") : first;
  }
  impl->health = std::thread([self = impl] { self->HealthLoop(); });
  return std::unique_ptr<ClusterChannel>(new ClusterChannel(std::move(impl)));
}

ClusterChannel::ClusterChannel(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

ClusterChannel::~ClusterChannel() { impl_->Close(); }

Status ClusterChannel::CallMethod(const MethodDescriptor& method, ClientContext& ctx,
                                  const google::protobuf::MessageLite& request, google::protobuf::MessageLite* response) {
  HRPC_TRY(impl_->workers->CheckMayBlock("synchronous call", method.full_name));
  struct Wait {
    coro::Event ev;
    Status status;
  };
  auto w = std::make_shared<Wait>();
  CallMethodAsync(method, ctx, request, response, [w](Status s) {
    w->status = std::move(s);
    w->ev.Set();
  });
  w->ev.Wait().IgnoreError();
  return std::move(w->status);
}

void ClusterChannel::CallMethodAsync(const MethodDescriptor& method, ClientContext& ctx,
                                     const google::protobuf::MessageLite& request,
                                     google::protobuf::MessageLite* response, DoneCallback done) {
  auto call = impl_->NewCall(method, ctx, request, response);
  if (!call.ok()) {
    done(call.status());
    return;
  }
  (*call)->done = std::move(done);
  impl_->Launch(std::move(*call));
}

std::vector<ServerNode> ClusterChannel::servers() const {
  std::vector<ServerNode> out;
  for (const auto& n : impl_->Current()->nodes) out.push_back(n->node);
  return out;
}

std::vector<ClusterServerStats> ClusterChannel::ServerStats() const {
  std::vector<ClusterServerStats> out;
  for (const auto& n : impl_->Current()->nodes) {
    ClusterServerStats s;
    s.uri = n->node.uri;
    s.tag = n->node.tag;
    s.calls = n->calls.load(std::memory_order_relaxed);
    s.errors = n->errors.load(std::memory_order_relaxed);
    s.in_flight = n->in_flight.load(std::memory_order_relaxed);
    s.latency_us = n->latency_us.load(std::memory_order_relaxed);
    s.ejected = n->ejected.load(std::memory_order_relaxed);
    s.ejections = n->ejections.load(std::memory_order_relaxed);
    out.push_back(std::move(s));
  }
  return out;
}

ClusterStats ClusterChannel::stats() const {
  ClusterStats s;
  s.calls = impl_->calls.load();
  s.failed_calls = impl_->failed_calls.load();
  s.retries = impl_->retries.load();
  s.backup_requests = impl_->backups.load();
  s.backup_wins = impl_->backup_wins.load();
  s.naming_updates = impl_->naming_updates.load();
  s.naming_errors = impl_->naming_errors.load();
  return s;
}

Status ClusterChannel::naming_status() const { return impl_->naming_status(); }

}  // namespace hrpc
