// main() of the Google Benchmark programs (mempool_bench, coroutine_bench).
// The library owns their flags (--benchmark_filter=REGEX, --benchmark_min_time=S,
// ...): --help prints them and exits 0; an unknown flag exits 2, as with the
// CLI11 programs (examples/common/cli.h).
#pragma once

#include <cstdio>
#include <string>

#include <benchmark/benchmark.h>

namespace hrpc::bench {

inline std::string& ProgramName() {
  static std::string name = "benchmark";
  return name;
}

inline void PrintBenchmarkHelp() {
  std::printf("Usage: %s [--help] [Google Benchmark flags]\n  --help  print this help and exit\n"
              "Google Benchmark flags:\n",
              ProgramName().c_str());
  benchmark::PrintDefaultHelp();
}

inline int BenchmarkMain(int argc, char** argv) {
  if (argc > 0) ProgramName() = argv[0];
  benchmark::Initialize(&argc, argv, PrintBenchmarkHelp);  // --help: prints, exits 0
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace hrpc::bench
