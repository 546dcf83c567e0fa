// blockstore_client: writes a range of a blockstore_server with a pattern,
// reads it back, verifies CRC32C, and prints bandwidth, latency (p50/p99) and
// the payload bytes the server's CPU copied (Stat). --concurrency N keeps N
// requests in flight (sequential offsets; each waited for in issue order).
// --nodes=URI,... (a replicated store: the leader and its followers) adds one
// line per node for the write phase: MB/s applied to its chunk file, payload
// bytes its CPU copied, head bytes it built per write, and its CPU time.
#include <algorithm>
#include <chrono>
#include <deque>
#include <sstream>
#include <memory>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "blockstore/blockstore.hrpc.h"
#include "common/cli.h"
#include "hrpc/base/crc32c.h"
#include "hrpc/rpc/rpc_channel.h"

#include <spdlog/spdlog.h>

namespace {

// The pattern of byte range [off, off+n): 8-byte words holding their own file offset ^ seed.
void FillPattern(char* p, uint64_t off, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t w = (off + i) ^ seed;
    std::memcpy(p + i, &w, std::min<size_t>(8, n - i));
  }
}

struct Latencies {
  std::vector<double> us;
  double Pct(double p) {
    if (us.empty()) return 0;
    std::sort(us.begin(), us.end());
    return us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))];
  }
};

struct Result {
  const char* op;
  uint64_t bytes;
  double mbps;
};

Result Report(const char* op, uint64_t bytes, double secs, Latencies& lat, uint64_t bs) {
  std::printf("%s: %llu bytes in %zu ops of %llu: %.1f MB/s, latency p50 %.1f us p99 %.1f us\n", op,
              static_cast<unsigned long long>(bytes), lat.us.size(), static_cast<unsigned long long>(bs),
              secs > 0 ? bytes / secs / 1e6 : 0.0, lat.Pct(0.50), lat.Pct(0.99));
  return {op, bytes, secs > 0 ? bytes / secs / 1e6 : 0.0};
}

// One call in flight: its context (which must outlive the call), its future
// and the range it covers.
template <typename Resp>
struct Call {
  hrpc::ClientContext ctx;
  hrpc::coro::Future<Resp> done;
  uint64_t off = 0, n = 0;
  std::chrono::steady_clock::time_point start;
};

// Covers [offset, offset+size) in block_size pieces with up to `concurrency`
// calls in flight, waited for in issue order. start(call) fills ctx and starts
// the call (false: stop issuing); finish(call, result) consumes a completed one.
template <typename Resp, typename Start, typename Finish>
void RunWindow(uint64_t offset, uint64_t size, uint64_t block_size, uint64_t concurrency, Latencies& lat,
               Start start, Finish finish) {
  std::deque<std::unique_ptr<Call<Resp>>> window;
  auto finish_oldest = [&] {
    std::unique_ptr<Call<Resp>> c = std::move(window.front());
    window.pop_front();
    auto r = c->done.Get();
    lat.us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - c->start).count());
    finish(*c, r);
  };
  for (uint64_t off = offset; off < offset + size; off += block_size) {
    if (window.size() >= concurrency) finish_oldest();
    auto c = std::make_unique<Call<Resp>>();
    c->off = off;
    c->n = std::min(block_size, offset + size - off);
    c->start = std::chrono::steady_clock::now();
    if (!start(*c)) break;
    window.push_back(std::move(c));
  }
  while (!window.empty()) finish_oldest();
}

}  // namespace

int main(int argc, char** argv) {
  std::string uri = "tcp://127.0.0.1:7300", ops = "write,read,verify";
  uint64_t offset = 0, size = 16 << 20, block_size = 1 << 20, seed = 0x5eed, timeout_ms = 10000, concurrency = 1;
  CLI::App app("Writes [offset, offset+size) of a blockstore_server in --block_size requests with a\n"
               "pattern, reads it back and verifies CRC32C; prints MB/s, p50/p99 latency and the\n"
               "server's copied payload bytes.",
               "blockstore_client");
  app.add_option("--server", uri, "server address (tcp://host:port, rdma://host:port, host:port)")
      ->capture_default_str();
  hrpc::examples::AddSize(app, "--offset", &offset, "first byte (a multiple of the device block size)");
  hrpc::examples::AddSize(app, "--size", &size, "bytes to write/read");
  hrpc::examples::AddSize(app, "--block_size", &block_size, "bytes per request");
  app.add_option("--seed", seed, "pattern seed")->capture_default_str();
  app.add_option("--timeout_ms", timeout_ms, "deadline per call")->capture_default_str();
  app.add_option("--concurrency", concurrency, "requests in flight")->capture_default_str();
  app.add_option("--ops", ops, "comma-separated: write, read, verify (read + compare CRCs with the pattern)")
      ->capture_default_str();
  std::string nodes;
  app.add_option("--nodes", nodes, "replicated store: every node's address, for a per-node line (Stat before/after)");
  std::string log_level = "warn";
  hrpc::examples::AddLogLevel(app, &log_level);
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code, &log_level)) return code;
  const bool do_write = ops.find("write") != std::string::npos;
  const bool do_verify = ops.find("verify") != std::string::npos;
  const bool do_read = do_verify || ops.find("read") != std::string::npos;
  if (block_size == 0 || size == 0 || concurrency == 0) {
    std::fprintf(stderr, "blockstore_client: --size, --block_size and --concurrency must be > 0\n");
    return 2;
  }

  hrpc::RpcChannelOptions co;
  co.eager_threshold = 0;  // every payload by one-sided READ/WRITE: page-aligned slabs at both ends
  auto channel = hrpc::RpcChannel::Create(uri, co);
  if (!channel.ok()) {
    std::fprintf(stderr, "blockstore_client: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  hrpc_blockstore::BlockStore::Stub stub(channel->get());
  int failures = 0;
  std::vector<char> expect;
  std::vector<Result> results;

  auto stat = [&](hrpc_blockstore::StatResponse* st) {
    hrpc::ClientContext ctx;
    ctx.set_timeout(std::chrono::milliseconds(timeout_ms));
    return stub.Stat(ctx, hrpc_blockstore::StatRequest(), st);
  };
  hrpc_blockstore::StatResponse before;
  if (auto s = stat(&before); !s.ok()) {
    std::fprintf(stderr, "blockstore_client: Stat: %s\n", s.ToString().c_str());
    return 1;
  }

  // Per-node Stat (replicated store), before and after the write phase.
  struct Node {
    std::string uri;
    std::unique_ptr<hrpc::RpcChannel> channel;
    hrpc_blockstore::StatResponse before, after;
  };
  std::vector<Node> node_list;
  {
    std::stringstream in(nodes);
    for (std::string u; std::getline(in, u, ',');) {
      if (u.empty()) continue;
      auto ch = hrpc::RpcChannel::Create(u, co);
      if (!ch.ok()) {
        std::fprintf(stderr, "blockstore_client: %s: %s\n", u.c_str(), ch.status().ToString().c_str());
        return 1;
      }
      node_list.push_back({u, std::move(*ch), {}, {}});
    }
  }
  auto node_stats = [&](bool after) {
    for (Node& n : node_list) {
      hrpc_blockstore::BlockStore::Stub ns(n.channel.get());
      hrpc::ClientContext ctx;
      ctx.set_timeout(std::chrono::milliseconds(timeout_ms));
      if (auto s = ns.Stat(ctx, hrpc_blockstore::StatRequest(), after ? &n.after : &n.before); !s.ok()) {
        std::fprintf(stderr, "blockstore_client: Stat %s: %s\n", n.uri.c_str(), s.ToString().c_str());
      }
    }
  };
  double write_secs = 0;
  uint64_t write_ops = 0;

  if (do_write) {
    node_stats(false);
    Latencies lat;
    uint64_t bytes = 0;
    bool alloc_failed = false;
    const auto t0 = std::chrono::steady_clock::now();
    RunWindow<hrpc_blockstore::WriteBlocksResponse>(
        offset, size, block_size, concurrency, lat,
        [&](Call<hrpc_blockstore::WriteBlocksResponse>& c) {
          auto buf = (*channel)->pool().Allocate(c.n);
          if (!buf.ok()) {
            std::fprintf(stderr, "blockstore_client: %s\n", buf.status().ToString().c_str());
            alloc_failed = true;
            return false;
          }
          FillPattern(buf->data(), c.off, c.n, seed);
          c.ctx.set_timeout(std::chrono::milliseconds(timeout_ms));
          c.ctx.request_attachment() = hrpc::mempool::IoBuf(buf->Slice(0, c.n));
          hrpc_blockstore::WriteBlocksRequest req;
          req.set_offset(c.off);
          c.start = std::chrono::steady_clock::now();
          c.done = stub.WriteBlocksFuture(c.ctx, req);
          return true;
        },
        [&](Call<hrpc_blockstore::WriteBlocksResponse>& c, auto& r) {
          if (!r.ok()) {
            std::printf("write %llu+%llu: %s\n", static_cast<unsigned long long>(c.off),
                        static_cast<unsigned long long>(c.n), r.status().ToString().c_str());
            ++failures;
            return;
          }
          bytes += r->bytes();
        });
    if (alloc_failed) return 1;
    {  // durability=flush: makes the writes durable (a no-op for none and dsync); timed with the writes
      hrpc::ClientContext ctx;
      ctx.set_timeout(std::chrono::milliseconds(timeout_ms));
      hrpc_blockstore::FlushResponse fr;
      if (hrpc::Status s = stub.Flush(ctx, hrpc_blockstore::FlushRequest(), &fr); !s.ok()) {
        std::printf("flush: %s\n", s.ToString().c_str());
        ++failures;
      }
    }
    write_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_ops = lat.us.size();
    results.push_back(Report("write", bytes, write_secs, lat, block_size));
    node_stats(true);
  }

  if (do_read) {
    Latencies lat;
    uint64_t bytes = 0, bad = 0;
    const auto t0 = std::chrono::steady_clock::now();
    RunWindow<hrpc_blockstore::ReadBlocksResponse>(
        offset, size, block_size, concurrency, lat,
        [&](Call<hrpc_blockstore::ReadBlocksResponse>& c) {
          c.ctx.set_timeout(std::chrono::milliseconds(timeout_ms));
          c.ctx.set_response_attachment_capacity(c.n);
          hrpc_blockstore::ReadBlocksRequest req;
          req.set_offset(c.off);
          req.set_length(c.n);
          c.done = stub.ReadBlocksFuture(c.ctx, req);
          return true;
        },
        [&](Call<hrpc_blockstore::ReadBlocksResponse>& c, auto& r) {
          if (!r.ok()) {
            std::printf("read %llu+%llu: %s\n", static_cast<unsigned long long>(c.off),
                        static_cast<unsigned long long>(c.n), r.status().ToString().c_str());
            ++failures;
            return;
          }
          const hrpc::mempool::IoBuf& data = c.ctx.response_attachment();
          bytes += data.size();
          if (!do_verify) return;
          expect.resize(c.n);
          FillPattern(expect.data(), c.off, c.n, seed);
          const uint32_t want = hrpc::Crc32c(expect.data(), c.n);
          const uint32_t got = data.Crc32c();
          if (data.size() != c.n || got != want || r->crc32c() != want) {
            std::printf("verify %llu+%llu: crc MISMATCH (got %08x, server said %08x, want %08x)\n",
                        static_cast<unsigned long long>(c.off), static_cast<unsigned long long>(c.n), got,
                        r->crc32c(), want);
            ++bad;
          }
        });
    results.push_back(Report("read", bytes, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), lat,
           block_size));
    if (do_verify) std::printf("verify: %s (%llu bad requests)\n", bad == 0 ? "ok" : "FAILED", static_cast<unsigned long long>(bad));
    failures += static_cast<int>(bad);
  }

  hrpc_blockstore::StatResponse after;
  if (auto s = stat(&after); !s.ok()) {
    std::fprintf(stderr, "blockstore_client: Stat: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("server: engine=%s durability=%s block=%u bytes_written=%llu bytes_read=%llu copied_bytes=%llu "
              "(this run: %llu)\n",
              after.engine().c_str(), after.durability().c_str(), after.block_size(),
              static_cast<unsigned long long>(after.bytes_written()), static_cast<unsigned long long>(after.bytes_read()),
              static_cast<unsigned long long>(after.copied_bytes()),
              static_cast<unsigned long long>(after.copied_bytes() - before.copied_bytes()));
  // One machine-readable line per op (the end-to-end line of bench/sink_bench's report).
  const std::string& resolved = (*channel)->uri();
  const std::string transport = resolved.substr(0, resolved.find(':'));
  for (const Result& r : results) {
    std::printf("blockstore_bench transport=%s op=%s bs=%llu concurrency=%llu bytes=%llu MBps=%.1f durability=%s "
                "copied_bytes=%llu fixed_slices=%llu vectored_slices=%llu\n",
                transport.c_str(), r.op, static_cast<unsigned long long>(block_size),
                static_cast<unsigned long long>(concurrency), static_cast<unsigned long long>(r.bytes), r.mbps,
                after.durability().c_str(), static_cast<unsigned long long>(after.copied_bytes() - before.copied_bytes()),
                static_cast<unsigned long long>(after.fixed_slices() - before.fixed_slices()),
                static_cast<unsigned long long>(after.vectored_slices() - before.vectored_slices()));
  }
  for (const Node& n : node_list) {
    const auto& a = n.after.replication();
    const auto& b = n.before.replication();
    const uint64_t applied = a.applied_bytes() - b.applied_bytes();
    const double cpu_s = (a.cpu_ns() - b.cpu_ns()) / 1e9;
    std::printf("replication node=%s role=%s bs=%llu concurrency=%llu MBps=%.1f copied_bytes=%llu "
                "head_bytes_per_write=%.0f cpu_s=%.3f cpu_s_per_GB=%.3f log_records=%llu\n",
                n.uri.c_str(), a.role().c_str(), static_cast<unsigned long long>(block_size),
                static_cast<unsigned long long>(concurrency), write_secs > 0 ? applied / write_secs / 1e6 : 0.0,
                static_cast<unsigned long long>(n.after.copied_bytes() - n.before.copied_bytes()),
                write_ops > 0 ? static_cast<double>(a.head_bytes_built() - b.head_bytes_built()) / write_ops : 0.0,
                cpu_s, applied > 0 ? cpu_s / (applied / 1e9) : 0.0,
                static_cast<unsigned long long>(a.log_records() - b.log_records()));
  }
  return failures == 0 ? 0 : 1;
}
