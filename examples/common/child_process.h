// Servers in processes of their own, so a test or a benchmark can SIGKILL
// (or SIGSTOP) them.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace hrpc::examples {

struct Child {
  pid_t pid = -1;
  std::string uri;      // from its "READY <uri>" line
  FILE* out = nullptr;  // the child's stdout: kept open so its later log lines do not hit SIGPIPE
};

// Runs `binary args...` and waits for its "READY <uri>" line on stdout.
inline Child StartChild(const std::string& binary, const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  std::vector<char*> argv;  // built before fork(): no allocation in the child
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  Child c;
  c.pid = pid;
  FILE* f = fdopen(fds[0], "r");
  char line[512];
  while (f != nullptr && fgets(line, sizeof line, f) != nullptr) {  // skips log lines
    std::string s(line);
    if (s.rfind("READY ", 0) == 0) {
      c.uri = s.substr(6, s.find_last_not_of("\r\n") - 5);
      break;
    }
  }
  c.out = f;
  return c;
}

inline void KillChild(Child& c, int sig = SIGKILL) {
  if (c.pid <= 0) return;
  kill(c.pid, sig);
  int st = 0;
  waitpid(c.pid, &st, 0);
  c.pid = -1;
  if (c.out != nullptr) fclose(c.out);
  c.out = nullptr;
}

// "tcp://127.0.0.1:PORT" for a child that listened on tcp://127.0.0.1:0.
inline std::string LoopbackUri(const Child& c) { return "tcp://127.0.0.1:" + c.uri.substr(c.uri.rfind(':') + 1); }

}  // namespace hrpc::examples
