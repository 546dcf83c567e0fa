// A tiny --name=value flag parser for the samples (no global flag registry:
// each program owns its Flags object). Sizes accept K/M/G suffixes (KiB...).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

namespace hrpc::examples {

class Flags {
 public:
  Flags(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  void Add(const char* name, std::string* v, const char* help) {
    Register(name, help, *v, [v](const char* s) { *v = s; return true; });
  }
  void Add(const char* name, bool* v, const char* help) {
    Register(name, help, *v ? "true" : "false", [v](const char* s) {
      if (!std::strcmp(s, "true") || !std::strcmp(s, "1") || !*s) { *v = true; return true; }
      if (!std::strcmp(s, "false") || !std::strcmp(s, "0")) { *v = false; return true; }
      return false;
    });
  }
  void Add(const char* name, double* v, const char* help) {
    Register(name, help, std::to_string(*v), [v](const char* s) {
      char* end = nullptr;
      *v = std::strtod(s, &end);
      return end != s && *end == '\0';
    });
  }
  // --log=trace|debug|info|warn|err|critical|off, applied by a successful Parse().
  void AddLogLevel(std::string def) {
    log_level_ = std::move(def);
    apply_log_ = true;
    Register("log", "log level: trace|debug|info|warn|err|critical|off", log_level_, [this](const char* s) {
      if (spdlog::level::from_str(s) == spdlog::level::off && std::strcmp(s, "off") != 0) return false;
      log_level_ = s;
      return true;
    });
  }
  // Integers and sizes ("64K", "1M").
  void AddSize(const char* name, uint64_t* v, const char* help) {
    Register(name, help, std::to_string(*v), [v](const char* s) { return ParseSize(s, v); });
  }

  // false: exit with *code (0 after --help, 2 on a bad flag).
  bool Parse(int argc, char** argv, int* code) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        PrintHelp(stdout);
        *code = 0;
        return false;
      }
      if (a.rfind("--", 0) != 0) return Bad("unexpected argument '" + a + "'", code);
      const size_t eq = a.find('=');
      const std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      const std::string value = eq == std::string::npos ? "" : a.substr(eq + 1);
      bool found = false;
      for (auto& f : flags_) {
        if (f.name != name) continue;
        found = true;
        if (!f.set(value.c_str())) return Bad("bad value for --" + name + ": '" + value + "'", code);
      }
      if (!found) return Bad("unknown flag --" + name, code);
    }
    if (apply_log_) spdlog::set_level(spdlog::level::from_str(log_level_));
    return true;
  }

  static bool ParseSize(const char* s, uint64_t* v) {
    char* end = nullptr;
    const unsigned long long n = std::strtoull(s, &end, 10);
    if (end == s) return false;
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ull << 10, ++end;
    else if (*end == 'M' || *end == 'm') mul = 1ull << 20, ++end;
    else if (*end == 'G' || *end == 'g') mul = 1ull << 30, ++end;
    if (*end == 'i' && end[1] == 'B') end += 2;
    else if (*end == 'B') ++end;
    if (*end != '\0') return false;
    *v = n * mul;
    return true;
  }

 private:
  std::string log_level_;
  bool apply_log_ = false;
  struct Flag {
    std::string name, help, def;
    std::function<bool(const char*)> set;
  };
  void Register(const char* name, const char* help, std::string def, std::function<bool(const char*)> set) {
    flags_.push_back({name, help, std::move(def), std::move(set)});
  }
  bool Bad(const std::string& why, int* code) {
    std::fprintf(stderr, "%s: %s (see --help)\n", program_.c_str(), why.c_str());
    *code = 2;
    return false;
  }
  void PrintHelp(FILE* out) const {
    std::fprintf(out, "usage: %s [--flag=value ...]\n\n%s\n\nflags:\n", program_.c_str(), summary_.c_str());
    for (const auto& f : flags_) {
      std::fprintf(out, "  --%-18s %s (default: %s)\n", f.name.c_str(), f.help.c_str(), f.def.c_str());
    }
    std::fprintf(out, "  --%-18s %s\n", "help", "print this and exit");
  }

  std::string program_, summary_;
  std::vector<Flag> flags_;
};

}  // namespace hrpc::examples
