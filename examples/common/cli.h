// Command-line flags of the samples and benchmarks, through CLI11. Each
// program owns its CLI::App (no global flag registry). --help prints the
// flags and exits 0; an unknown flag, a bad value or a stray argument exits 2.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

namespace hrpc::examples {

// A byte count: "64", "4K", "1M", "2GiB" (K, KB and KiB are all 1024).
inline CLI::Option* AddSize(CLI::App& app, const std::string& name, uint64_t* v, const std::string& help) {
  return app.add_option(name, *v, help)->transform(CLI::AsSizeValue(false))->capture_default_str();
}

// --log=trace|debug|info|warn|err|critical|off, applied by Parse().
inline CLI::Option* AddLogLevel(CLI::App& app, std::string* level) {
  return app.add_option("--log", *level, "log level")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "err", "critical", "off"}))
      ->capture_default_str();
}

// Parses argv. Returns true to go on; false with *code the exit code (0 after
// --help, 2 for bad flags, with CLI11's message on stderr). Applies --log.
inline bool Parse(CLI::App& app, int argc, char** argv, int* code, const std::string* log_level = nullptr) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    *code = app.exit(e) == 0 ? 0 : 2;  // --help is a ParseError with exit code 0
    return false;
  }
  if (log_level != nullptr) spdlog::set_level(spdlog::level::from_str(*log_level));
  return true;
}

}  // namespace hrpc::examples
