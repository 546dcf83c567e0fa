// CPU time of a process, for the benchmarks' cpu= fields: user + system time
// of all its threads, in nanoseconds. Header-only, standard library and POSIX
// only, so programs that do not link hrpc (bench/grpc_echo) can use it too.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace hrpc::examples {

// This process (getrusage).
inline uint64_t SelfCpuNs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto ns = [](const timeval& tv) { return uint64_t(tv.tv_sec) * 1000000000ull + uint64_t(tv.tv_usec) * 1000ull; };
  return ns(ru.ru_utime) + ns(ru.ru_stime);
}

// Another process, from /proc/<pid>/stat (clock-tick resolution); 0 when it
// cannot be read (gone, or not ours to read).
inline uint64_t ProcCpuNs(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t rp = s.rfind(')');  // the command name may hold spaces and ')'
  if (rp == std::string::npos) return 0;
  std::istringstream in(s.substr(rp + 2));
  std::string tok;
  uint64_t ut = 0, st = 0;
  for (int field = 3; in >> tok; ++field) {
    if (field == 14) ut = std::stoull(tok);
    if (field == 15) {
      st = std::stoull(tok);
      break;
    }
  }
  return (ut + st) * (1000000000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
}

}  // namespace hrpc::examples
