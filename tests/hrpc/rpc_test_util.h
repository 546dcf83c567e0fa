// Shared by the RPC runtime tests: the test service and payload helpers.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "hrpc/base/crc32c.h"
#include "hrpc/coroutine/scheduler.h"
#include "hrpc/mempool/iobuf.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"
#include "hrpc/rpc/rpc_channel.h"
#include "hrpc/rpc/runtime.h"
#include "hrpc/rpc/server.h"
#include "rpc_test.hrpc.h"

namespace rpctest {

// Fills [p, p+n) with a pattern that depends on `seed` and the offset.
inline void FillPattern(char* p, size_t n, uint32_t seed) {
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = static_cast<char>(x);
  }
}

// An attachment of n bytes from `pool` in blocks of at most `block` bytes.
inline hrpc::mempool::IoBuf MakePayload(hrpc::mempool::Pool& pool, size_t n, uint32_t seed,
                                        size_t block = 16u << 20) {
  hrpc::mempool::IoBuf out;
  size_t off = 0;
  while (off < n) {
    const size_t k = std::min(block, n - off);
    auto b = pool.Allocate(k);
    if (!b.ok()) return hrpc::mempool::IoBuf();
    FillPattern(b->data(), k, seed + static_cast<uint32_t>(off));
    out.Append(std::move(*b));
    off += k;
  }
  return out;
}

class TestService final : public Test::Service {
 public:
  std::atomic<int> calls{0};
  std::atomic<int> saw_cancel{0};
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};  // most calls ever running at once
  hrpc::mempool::Pool* pool = nullptr;  // for response_bytes
  // What ctx.pool() was on the last call, and how many request attachment
  // slices lay in an arena of it (checked by KeyFor through registrar slot
  // `check_slot`, when >= 0).
  std::atomic<hrpc::mempool::Pool*> seen_pool{nullptr};
  int check_slot = -1;
  std::atomic<int> slices_total{0}, slices_in_pool{0};

  hrpc::Status Call(hrpc::ServerContext& ctx, const Req& req, Resp* resp) override {
    calls.fetch_add(1);
    const int now = running.fetch_add(1) + 1;
    for (int m = max_running.load(); now > m && !max_running.compare_exchange_weak(m, now);) {
    }
    struct Dec {
      std::atomic<int>& r;
      ~Dec() { r.fetch_sub(1); }
    } dec{running};
    resp->set_text(req.response_text_bytes() > 0 ? std::string(req.response_text_bytes(), 'r') : req.text());
    resp->set_peer(std::string(ctx.peer()));
    resp->set_coroutine(std::string(hrpc::coro::this_coro::Name()));
    resp->set_attachment_bytes(ctx.request_attachment().size());
    resp->set_attachment_crc32c(ctx.request_attachment().Crc32c());
    seen_pool.store(ctx.pool());
    if (check_slot >= 0 && ctx.pool() != nullptr) {
      const hrpc::mempool::IoBuf& att = ctx.request_attachment();
      for (size_t i = 0; i < att.num_slices(); ++i) {
        slices_total.fetch_add(1);
        auto key = ctx.pool()->KeyFor(static_cast<hrpc::mempool::RegistrarSlot>(check_slot), att.slice(i).data());
        if (key.ok()) slices_in_pool.fetch_add(1);
      }
    }
    if (req.hold_ms() > 0) hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(req.hold_ms()));
    for (uint32_t i = 0; i < req.sleep_ms(); ++i) {
      if (ctx.IsCancelled()) {
        saw_cancel.fetch_add(1);
        return hrpc::CancelledError("handler saw the cancel");
      }
      hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(1));
    }
    if (req.wait_for_cancel()) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!ctx.IsCancelled() && std::chrono::steady_clock::now() < until) {
        hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(1));
      }
      if (ctx.IsCancelled()) saw_cancel.fetch_add(1);
      return hrpc::CancelledError("handler saw the cancel");
    }
    if (!req.throw_message().empty()) throw std::runtime_error(req.throw_message());
    if (req.fail_code() != 0) {
      return hrpc::Status(static_cast<hrpc::StatusCode>(req.fail_code()), req.fail_message());
    }
    if (req.echo_attachment()) ctx.response_attachment() = std::move(ctx.request_attachment());
    if (req.response_bytes() > 0 && pool != nullptr) {
      ctx.response_attachment() = MakePayload(*pool, req.response_bytes(), 7);
    }
    return hrpc::Status::Ok();
  }
};

// Forwards every call, with the attachment it pulled, to `backend` (a channel
// on the same runtime as the server) and answers with the backend's response.
// Records whether the call stayed on the handler's worker and thread, and the
// payload bytes copied by the CPU (process-wide) while forwarding.
class ForwardService final : public Test::Service {
 public:
  hrpc::RpcChannel* backend = nullptr;
  hrpc::Runtime* runtime = nullptr;
  std::atomic<int> same_thread{0}, other_thread{0};
  std::atomic<int> worker{-1};
  std::atomic<uint64_t> copied{~uint64_t{0}};

  hrpc::Status Call(hrpc::ServerContext& ctx, const Req& req, Resp* resp) override {
    const pthread_t before = pthread_self();
    worker.store(runtime->CurrentWorker());
    const uint64_t copied_before = hrpc::mempool::CopiedBytesTotal();
    Test::Stub stub(backend);
    hrpc::ClientContext out;
    out.request_attachment() = std::move(ctx.request_attachment());
    Req fwd = req;
    fwd.set_text("fwd:" + req.text());
    Resp got;
    HRPC_TRY(stub.Call(out, fwd, &got));
    copied.store(hrpc::mempool::CopiedBytesTotal() - copied_before);
    const bool same = pthread_equal(before, pthread_self()) && runtime->CurrentWorker() == worker.load();
    (same ? same_thread : other_thread).fetch_add(1);
    *resp = got;
    return hrpc::Status::Ok();
  }
};

// A started server with one service, and a channel to it, connected, at
// "<scheme>://<host>:<the port the server bound>" (so.listen names the
// address to bind).
struct ServedChannel {
  std::unique_ptr<hrpc::Server> server;
  std::unique_ptr<hrpc::RpcChannel> channel;
};
// A server with a private runtime, serving `service`, started.
inline hrpc::Result<std::unique_ptr<hrpc::Server>> StartServer(hrpc::Service* service, hrpc::ServerOptions so) {
  HRPC_ASSIGN_OR_RETURN(std::unique_ptr<hrpc::Server> server, hrpc::Server::Create(std::move(so)));
  HRPC_TRY(server->RegisterService(service));
  HRPC_TRY(server->Start());
  return server;
}

inline hrpc::Result<ServedChannel> StartServed(hrpc::Service* service, hrpc::ServerOptions so,
                                               hrpc::RpcChannelOptions co, const std::string& scheme_host) {
  ServedChannel out;
  HRPC_ASSIGN_OR_RETURN(out.server, StartServer(service, std::move(so)));
  const std::string bound = out.server->listen_uris().at(0);
  HRPC_ASSIGN_OR_RETURN(out.channel,
                        hrpc::RpcChannel::Create(scheme_host + ":" + bound.substr(bound.rfind(':') + 1), std::move(co)));
  HRPC_TRY(out.channel->Connect());
  return out;
}

// Waits req.sleep_ms (without looking at cancellation), then pulls its
// request attachment itself (run the server with auto_pull off) and records
// how the pull ended and how long it took. Signals when a call started.
class PullLaterService final : public Test::Service {
 public:
  std::atomic<int> started{0}, pulls_started{0}, pulls{0}, pulls_cut_short{0};
  std::atomic<int64_t> last_pull_ms{-1};
  std::atomic<int> last_pull_code{-1};
  std::mutex mu;
  std::vector<std::string> failures;  // how the pulls that failed ended
  std::atomic<bool> pulls_allowed{true};  // while false, handlers wait before pulling

  hrpc::Status Call(hrpc::ServerContext& ctx, const Req& req, Resp* resp) override {
    started.fetch_add(1);
    hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(req.sleep_ms()));
    while (!pulls_allowed.load() && !ctx.IsCancelled()) hrpc::coro::this_coro::SleepFor(std::chrono::milliseconds(1));
    hrpc::mempool::IoBuf att = std::move(ctx.request_attachment());
    for (size_t i = 0; i < ctx.bulk().size(); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      pulls_started.fetch_add(1);
      auto got = ctx.PullBulk(i);
      last_pull_ms.store(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
                             .count());
      last_pull_code.store(static_cast<int>(got.status().code()));
      pulls.fetch_add(1);
      if (!got.ok()) {
        {
          std::lock_guard lock(mu);
          failures.push_back(got.status().ToString() + " after " + std::to_string(last_pull_ms.load()) + " ms");
        }
        // "during bulk pull": the deadline or cancel stopped READs in flight
        // (not the check before the pull began).
        if (got.status().message().find("during bulk pull") != std::string::npos) pulls_cut_short.fetch_add(1);
        return got.status();
      }
      att.Append(std::move(*got));
    }
    resp->set_text(req.text());
    resp->set_attachment_bytes(att.size());
    resp->set_attachment_crc32c(att.Crc32c());
    return hrpc::Status::Ok();
  }
};

}  // namespace rpctest
