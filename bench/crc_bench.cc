// crc_bench: hrpc::Crc32c (ISA-L) against the single-stream SSE4.2 loop hrpc
// used before, measured in the same run on the same buffers. One line per size:
//
//   crc_bench size=<bytes> impl=isal GBps=.. baseline_GBps=.. ratio=..
//
// GBps = 1e9 bytes checksummed per second, the median of --rounds rounds; each
// round times both implementations back to back (alternating which goes first)
// for --seconds each. ratio = GBps / baseline_GBps. Pin it (taskset -c N) for
// stable numbers.
//
// Usage: crc_bench [--seconds=S] [--rounds=N]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "common/cli.h"
#include "hrpc/base/crc32c.h"

namespace {

using Clock = std::chrono::steady_clock;

#if defined(__x86_64__)
// Baseline: hrpc's previous hand-written CRC32C, one dependent chain of 8-byte
// crc32 instructions. Kept here only to measure against.
__attribute__((target("sse4.2"))) uint32_t BaselineCrc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return ~c32;
}
#endif

// Bytes per second of f over buf, run for about `seconds`.
template <typename F>
double Rate(F f, const std::vector<unsigned char>& buf, double seconds) {
  const auto budget = std::chrono::duration<double>(seconds);
  uint64_t bytes = 0;
  uint32_t crc = 0;
  const auto t0 = Clock::now();
  auto now = t0;
  while (now - t0 < budget) {
    for (int i = 0; i < 16; ++i) crc = f(buf.data(), buf.size(), crc);
    bytes += 16 * buf.size();
    now = Clock::now();
  }
  benchmark::DoNotOptimize(crc);
  return static_cast<double>(bytes) / std::chrono::duration<double>(now - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 0.25;
  int rounds = 5;
  CLI::App app("hrpc::Crc32c (ISA-L) against the former single-stream SSE4.2 loop, one crc_bench line per size\n"
               "(GBps: the median of --rounds rounds of --seconds per implementation). Pin it: taskset -c N.",
               "crc_bench");
  app.add_option("--seconds", seconds, "seconds per implementation and round")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds per size (at least 1)")->capture_default_str();
  int code = 0;
  if (!hrpc::examples::Parse(app, argc, argv, &code)) return code;
  rounds = std::max(1, rounds);
#if !defined(__x86_64__)
  std::printf("crc_bench error=baseline-needs-x86_64\n");
  return 0;
#else
  if (!__builtin_cpu_supports("sse4.2")) {
    std::printf("crc_bench error=baseline-needs-sse4.2\n");
    return 0;
  }
  for (size_t size : {size_t{4096}, size_t{1} << 20}) {
    std::vector<unsigned char> buf(size);
    for (size_t i = 0; i < size; ++i) buf[i] = static_cast<unsigned char>(i * 131 + 7);
    if (hrpc::Crc32c(buf.data(), size) != BaselineCrc32c(buf.data(), size, 0)) {
      std::printf("crc_bench size=%zu error=mismatch\n", size);
      return 1;
    }
    std::vector<double> isal, base;
    for (int r = 0; r < rounds; ++r) {
      auto run_isal = [&] { isal.push_back(Rate(hrpc::Crc32c, buf, seconds)); };
      auto run_base = [&] { base.push_back(Rate(BaselineCrc32c, buf, seconds)); };
      if (r % 2 == 0) {
        run_isal();
        run_base();
      } else {
        run_base();
        run_isal();
      }
    }
    const double g = Median(isal) / 1e9, b = Median(base) / 1e9;
    std::printf("crc_bench size=%zu impl=isal GBps=%.2f baseline_GBps=%.2f ratio=%.2f\n", size, g, b, g / b);
    std::fflush(stdout);
  }
  return 0;
#endif
}
