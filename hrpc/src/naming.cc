// Naming sources: list://, file:// (inotify), dns:// (c-ares); etcd:// lives
// in naming_etcd.cc.
#include "hrpc/rpc/naming.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <stop_token>
#include <thread>

#include <spdlog/spdlog.h>

#include "hrpc/transport/resolver.h"
#include "naming_internal.h"

namespace hrpc {
namespace {

// Sorted, without duplicates: the form every watcher delivers.
void Normalize(NamingUpdate& u) {
  std::sort(u.servers.begin(), u.servers.end());
  u.servers.erase(std::unique(u.servers.begin(), u.servers.end()), u.servers.end());
}

// Entries separated by `sep`; blank ones and '#' comments skipped, bad ones
// reported in problems.
NamingUpdate ParseEntries(std::string_view text, char sep) {
  NamingUpdate u;
  size_t line_no = 0;
  while (!text.empty()) {
    const size_t end = text.find(sep);
    std::string_view entry = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    ++line_no;
    if (const size_t hash = entry.find('#'); hash != std::string_view::npos) entry = entry.substr(0, hash);
    if (entry.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto node = ParseServerNode(entry);
    if (node.ok()) {
      u.servers.push_back(std::move(*node));
    } else {
      u.problems.push_back((sep == '\n' ? "line " + std::to_string(line_no) + ": " : std::string()) +
                           std::string(node.status().message()));
    }
  }
  Normalize(u);
  return u;
}

// A watcher that delivers from a thread of its own: holds the callback, the
// last set delivered (to deliver changes only) and the stop signal.
class ThreadedWatcher : public NamingWatcher {
 public:
  ~ThreadedWatcher() override { Stop(); }

  Status Start(Callback on_update) override {
    if (thread_.joinable() || stopped_) return FailedPreconditionError("naming watcher already started");
    on_update_ = std::move(on_update);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return ErrnoStatus(errno, "eventfd");
    if (Status s = Prepare(); !s.ok()) {
      on_update_(s);  // the channel sees (and counts) why it has no servers
      return s;
    }
    Status first = Poll(/*force=*/true);
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "hrpc-naming");
      Run();
    });
    return first;
  }

  void Stop() override {
    if (stopped_) return;
    stopped_ = true;
    stop_.store(true, std::memory_order_release);
    Interrupt();
    if (wake_fd_ >= 0) {
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof one);
    }
    if (thread_.joinable()) thread_.join();
    if (wake_fd_ >= 0) close(wake_fd_);
    wake_fd_ = -1;
  }

 protected:
  // Set up what Run() waits on (before the first Poll()).
  virtual Status Prepare() { return Status::Ok(); }
  // Cuts a Read() in progress short; Stop() calls it once stopping() holds.
  virtual void Interrupt() {}
  // Reads the source once.
  virtual Result<NamingUpdate> Read() = 0;
  // Waits for the next reason to read, returns false when stopped.
  virtual bool WaitForChange() = 0;

  bool stopping() const noexcept { return stop_.load(std::memory_order_acquire); }
  int wake_fd() const noexcept { return wake_fd_; }

  // Waits on `fd` (or only the stop signal when fd < 0) up to `timeout`;
  // false when stopped.
  bool WaitFd(int fd, std::chrono::milliseconds timeout) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {fd, POLLIN, 0}};
    const int rc = poll(fds, fd >= 0 ? 2 : 1, static_cast<int>(timeout.count()));
    if (rc < 0 && errno != EINTR) return false;
    return !stopping();
  }

 private:
  // Reads and delivers a changed set or an error.
  Status Poll(bool force) {
    Result<NamingUpdate> u = Read();
    if (!u.ok()) {
      if (stopping()) return u.status();  // cut short by Stop(): not the source's failure
      on_update_(u.status());
      have_last_ = false;
      return u.status();
    }
    if (!force && have_last_ && u->servers == last_.servers && u->problems == last_.problems) return Status::Ok();
    last_ = *u;
    have_last_ = true;
    on_update_(std::move(u));
    return Status::Ok();
  }

  void Run() {
    while (!stopping()) {
      if (!WaitForChange()) break;
      Poll(/*force=*/false).IgnoreError();
    }
  }

  Callback on_update_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  bool stopped_ = false;
  int wake_fd_ = -1;
  NamingUpdate last_;
  bool have_last_ = false;
};

class ListWatcher final : public NamingWatcher {
 public:
  explicit ListWatcher(NamingUpdate set) : set_(std::move(set)) {}
  std::string_view scheme() const override { return "list"; }
  Status Start(Callback on_update) override {
    on_update(set_);
    return Status::Ok();
  }
  void Stop() override {}

 private:
  NamingUpdate set_;
};

// file:///path: one entry per line. Watches the directory, so that an editor
// that replaces the file (write to a temp file, rename over) is seen too, and
// so is a Kubernetes ConfigMap volume (the file is a symlink through "..data",
// which an update swaps by renaming a new "..data" into place). A directory
// that does not exist (yet, or any more) is looked for again every second.
// Where inotify cannot watch it (no instance or watch left, no permission),
// the file is looked at every second instead (stat: identity, size, times)
// and read again when that changed.
class FileWatcher final : public ThreadedWatcher {
 public:
  FileWatcher(std::string path, bool inotify) : path_(std::move(path)), inotify_(inotify) {
    const size_t slash = path_.rfind('/');
    dir_ = slash == 0 ? "/" : path_.substr(0, slash);
    name_ = path_.substr(slash + 1);
  }
  ~FileWatcher() override {
    Stop();
    if (ino_ >= 0) close(ino_);
  }
  std::string_view scheme() const override { return "file"; }

 protected:
  Status Prepare() override {
    ino_ = inotify_ ? inotify_init1(IN_NONBLOCK | IN_CLOEXEC) : -1;
    if (inotify_ && ino_ < 0) {
      SPDLOG_WARN("hrpc naming: cannot watch {}: {}; looking at it every second", path_,
                  ErrnoStatus(errno, "inotify_init1").ToString());
    }
    Watch();  // a directory that is not there yet is watched once it is
    seen_ = Look();
    return Status::Ok();
  }

  Result<NamingUpdate> Read() override {
    std::ifstream in(path_);
    if (!in) return NotFoundError("naming file " + path_ + ": " + std::strerror(errno));
    std::stringstream ss;
    ss << in.rdbuf();
    return ParseEntries(ss.str(), '\n');
  }

  bool WaitForChange() override {
    while (!stopping()) {
      if (wd_ < 0) {
        if (!WaitFd(-1, std::chrono::seconds(1))) return false;
        const bool watched = Watch();
        const Seen now = Look();
        if (watched) {  // the directory is (back) there and watched: read what it holds
          seen_ = now;
          changing_.reset();
          return true;
        }
        // Not watched: read a change once the file looked the same twice
        // in a row (a file rewritten in place may be half-written).
        if (now == seen_) {
          changing_.reset();
        } else if (changing_ && *changing_ == now) {
          seen_ = now;
          changing_.reset();
          return true;
        } else {
          changing_ = now;
        }
        continue;
      }
      if (!WaitFd(ino_, std::chrono::milliseconds(-1))) return false;
      alignas(inotify_event) char buf[4096];
      bool ours = false;
      for (;;) {
        const ssize_t n = read(ino_, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t off = 0; off < n;) {
          const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
          off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
          if ((ev->mask & IN_Q_OVERFLOW) != 0) ours = true;
          if (ev->wd != wd_) continue;
          if ((ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) != 0) {
            // The directory went (or moved away): read (the file is gone),
            // then look for it again.
            if ((ev->mask & IN_IGNORED) == 0) inotify_rm_watch(ino_, wd_);
            wd_ = -1;
            ours = true;
          } else if (ev->len > 0) {
            const std::string_view name(ev->name);
            if (name == name_ || name.rfind("..", 0) == 0) ours = true;
          }
        }
      }
      if (ours) {
        seen_ = Look();
        return true;
      }
    }
    return false;
  }

 private:
  // What stat() says of the file (through symlinks): read again when it
  // changes. All zero while it is not there.
  struct Seen {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    bool operator==(const Seen&) const = default;
  };
  Seen Look() const {
    struct stat st;
    if (stat(path_.c_str(), &st) != 0) return {};
    return {st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec,
            st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec};
  }

  bool Watch() {
    if (ino_ < 0) return false;
    // A file is read once it is complete: closed after writing, or renamed
    // into place; not on every write (a truncate would read as empty).
    wd_ = inotify_add_watch(ino_, dir_.c_str(),
                            IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF |
                                IN_MOVE_SELF);
    if (wd_ < 0 && errno != ENOENT && errno != ENOTDIR && !warned_) {
      warned_ = true;
      SPDLOG_WARN("hrpc naming: cannot watch {}: {}; looking at {} every second", dir_,
                  ErrnoStatus(errno, "inotify_add_watch").ToString(), path_);
    }
    return wd_ >= 0;
  }

  std::string path_, dir_, name_;
  bool inotify_;
  int ino_ = -1;
  int wd_ = -1;
  bool warned_ = false;
  Seen seen_;
  std::optional<Seen> changing_;  // a change seen once, read when seen again
};

// dns://name:port: every address of the name, re-resolved every dns_refresh.
class DnsWatcher final : public ThreadedWatcher {
 public:
  DnsWatcher(std::string host, uint16_t port, std::unique_ptr<transport::Resolver> resolver,
             std::chrono::milliseconds refresh)
      : host_(std::move(host)), port_(port), resolver_(std::move(resolver)), refresh_(refresh) {}
  ~DnsWatcher() override { Stop(); }
  std::string_view scheme() const override { return "dns"; }

 protected:
  Result<NamingUpdate> Read() override {
    HRPC_ASSIGN_OR_RETURN(auto addrs, resolver_->Resolve(host_, port_, AF_UNSPEC,
                                                         std::chrono::steady_clock::now() + std::chrono::seconds(10),
                                                         stop_resolve_.get_token()));
    NamingUpdate u;
    for (const auto& a : addrs) u.servers.push_back(ServerNode{a.ToString(), ""});
    Normalize(u);
    return u;
  }
  bool WaitForChange() override { return WaitFd(-1, refresh_); }
  // A resolve in progress (the DNS server may not answer for seconds) ends at once.
  void Interrupt() override { stop_resolve_.request_stop(); }

 private:
  std::string host_;
  uint16_t port_;
  std::unique_ptr<transport::Resolver> resolver_;
  std::chrono::milliseconds refresh_;
  std::stop_source stop_resolve_;
};

}  // namespace

Result<std::unique_ptr<NamingWatcher>> MakeNamingWatcher(std::string_view uri, const NamingOptions& options) {
  const size_t sep = uri.find("://");
  if (sep == std::string_view::npos) {
    return InvalidArgumentError("naming URI '" + std::string(uri) + "': expected list://, file://, dns:// or etcd://");
  }
  const std::string_view scheme = uri.substr(0, sep);
  const std::string_view rest = uri.substr(sep + 3);
  if (scheme == "list") {
    NamingUpdate set = ParseEntries(rest, ',');
    if (!set.problems.empty()) {
      return InvalidArgumentError("naming URI '" + std::string(uri) + "': " + set.problems.front());
    }
    if (set.servers.empty()) return InvalidArgumentError("naming URI '" + std::string(uri) + "': no server");
    return std::unique_ptr<NamingWatcher>(new ListWatcher(std::move(set)));
  }
  if (scheme == "file") {
    if (rest.empty() || rest.front() != '/' || rest.back() == '/') {
      return InvalidArgumentError("naming URI '" + std::string(uri) + "': expected file:///absolute/path");
    }
    return std::unique_ptr<NamingWatcher>(new FileWatcher(std::string(rest), options.file_inotify));
  }
  if (scheme == "dns") {
    const size_t colon = rest.rfind(':');
    unsigned port = 0;
    const std::string_view ps = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
    auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
    if (colon == 0 || colon == std::string_view::npos || ps.empty() || ec != std::errc() ||
        p != ps.data() + ps.size() || port == 0 || port > 65535) {
      return InvalidArgumentError("naming URI '" + std::string(uri) + "': expected dns://name:port");
    }
    if (options.dns_refresh.count() <= 0) return InvalidArgumentError("dns_refresh must be positive");
    transport::ResolverOptions ro;
    ro.servers = options.dns_servers;
    HRPC_ASSIGN_OR_RETURN(auto resolver, transport::Resolver::Create(ro));
    return std::unique_ptr<NamingWatcher>(new DnsWatcher(std::string(rest.substr(0, colon)),
                                                         static_cast<uint16_t>(port), std::move(resolver),
                                                         options.dns_refresh));
  }
  if (scheme == "etcd") return internal::MakeEtcdWatcher(uri, options);
  return InvalidArgumentError("naming URI '" + std::string(uri) + "': unknown scheme '" + std::string(scheme) +
                              "' (list, file, dns, etcd)");
}

}  // namespace hrpc
