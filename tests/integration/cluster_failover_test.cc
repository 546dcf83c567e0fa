// Five server processes behind one ClusterChannel, load running, two of them
// SIGKILLed mid-run: no idempotent call fails; a non-idempotent call either
// succeeds or fails cleanly, and none runs twice (every server logs what it
// ran, so the test reads the truth from the servers, the killed ones too).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/child_process.h"
#include "hrpc/rpc/cluster_channel.h"
#include "hrpc/rpc/runtime.h"
#include "rpc_test.hrpc.h"

namespace {

using namespace std::chrono_literals;
using hrpc::StatusCode;
using hrpc::examples::Child;

TEST(ClusterFailover, TwoOfFiveServersKilledUnderLoad) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("hrpc-failover-" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);
  std::vector<Child> servers;
  std::vector<std::string> logs;
  std::string list = "list://";
  for (int i = 0; i < 5; ++i) {
    logs.push_back(dir + "/exec-" + std::to_string(i) + ".log");
    servers.push_back(hrpc::examples::StartChild(RPC_TEST_SERVER, {"--listen=tcp://127.0.0.1:0", "--exec-log=" + logs[i]}));
    ASSERT_FALSE(servers.back().uri.empty()) << "server " << i << " did not start";
    list += (i ? "," : "") + hrpc::examples::LoopbackUri(servers.back());
  }

  hrpc::RuntimeOptions ro;
  ro.workers = 1;
  ro.transport_choice = hrpc::TransportChoice::kTcp;
  auto runtime = hrpc::Runtime::Create(ro).value();
  hrpc::ClusterChannelOptions co;
  co.retry.max_attempts = 5;
  auto channel = hrpc::ClusterChannel::Create(*runtime, list, co).value();

  std::atomic<bool> stop{false};
  std::atomic<int> reads_ok{0}, reads_failed{0};
  std::mutex mu;
  std::set<std::string> writes_ok;
  std::map<std::string, hrpc::Status> writes_failed;
  std::vector<std::string> read_errors;
  const int kFibers = 16;
  hrpc::coro::WaitGroup wg;
  wg.Add(kFibers);
  for (int f = 0; f < kFibers; ++f) {
    runtime->scheduler(0).Post([&, f] {
      rpctest::Test::Stub stub(channel.get());
      for (int n = 0; !stop.load(); ++n) {
        const bool write = n % 2 == 1;
        rpctest::Req req;
        req.set_text((write ? "w:" : "r:") + std::to_string(f) + ":" + std::to_string(n));
        req.set_sleep_ms(1);
        rpctest::Resp resp;
        hrpc::ClientContext ctx;
        ctx.set_timeout(5s);
        ctx.set_idempotent(!write);
        hrpc::Status s = stub.Call(ctx, req, &resp);
        std::lock_guard lock(mu);
        if (write) {
          if (s.ok()) {
            writes_ok.insert(req.text());
          } else {
            writes_failed.emplace(req.text(), s);
          }
        } else if (s.ok() && resp.text() == req.text()) {
          reads_ok++;
        } else {
          reads_failed++;
          read_errors.push_back(s.ToString());
        }
      }
      wg.Done();
    });
  }
  std::this_thread::sleep_for(400ms);
  hrpc::examples::KillChild(servers[1]);
  hrpc::examples::KillChild(servers[3]);
  std::this_thread::sleep_for(800ms);
  stop = true;
  ASSERT_TRUE(wg.WaitFor(30s).ok());

  EXPECT_GT(reads_ok.load(), 100);
  EXPECT_EQ(reads_failed.load(), 0) << (read_errors.empty() ? "" : read_errors.front());
  for (const auto& [text, s] : writes_failed) {
    EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded)
        << text << ": " << s.ToString();
  }
  // What the servers ran, the killed ones included.
  std::map<std::string, int> runs;
  for (const auto& path : logs) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("w:", 0) == 0) runs[line]++;
    }
  }
  for (const auto& [text, n] : runs) EXPECT_EQ(n, 1) << text << " ran " << n << " times";
  for (const auto& text : writes_ok) EXPECT_EQ(runs[text], 1) << text << " acknowledged but not run once";
  EXPECT_GT(writes_ok.size(), 100u);

  auto stats = channel->ServerStats();
  int ejected = 0;
  for (const auto& s : stats) ejected += s.ejected ? 1 : 0;
  EXPECT_EQ(ejected, 2);
  std::printf("failover: reads ok %d failed %d; writes ok %zu failed %zu; retries %llu\n", reads_ok.load(),
              reads_failed.load(), writes_ok.size(), writes_failed.size(),
              static_cast<unsigned long long>(channel->stats().retries));
  channel.reset();
  for (auto& c : servers) hrpc::examples::KillChild(c);
  std::filesystem::remove_all(dir);
}

}  // namespace
