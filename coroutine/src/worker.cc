// Worker: a thread that owns one Scheduler, optionally pinned to a cpu.
#include "hrpc/coroutine/worker.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <cerrno>
#include <future>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

namespace hrpc::coro {

class Worker::Impl {
 public:
  WorkerOptions opts;
  std::unique_ptr<Scheduler> sched;
  std::thread thread;
};

Result<std::unique_ptr<Worker>> Worker::Start(WorkerOptions options) {
  if (options.cpu >= CPU_SETSIZE) return InvalidArgumentError("cpu " + std::to_string(options.cpu) + " out of range");
  auto impl = std::make_unique<Impl>();
  impl->opts = std::move(options);
  Impl* raw = impl.get();
  std::promise<Status> started;
  auto started_f = started.get_future();
  raw->thread = std::thread([raw, &started] {
    std::string tname = raw->opts.sched.name.empty() ? std::string("hrpc-worker") : raw->opts.sched.name;
    if (tname.size() > 15) tname.resize(15);
    ::pthread_setname_np(::pthread_self(), tname.c_str());
    if (raw->opts.cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(raw->opts.cpu, &set);
      int rc = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set);
      if (rc != 0) {  // EINVAL: the cpu is offline or outside our cpuset
        started.set_value(ErrnoStatus(rc, "pthread_setaffinity_np(cpu " + std::to_string(raw->opts.cpu) + ")"));
        return;
      }
    }
    auto s = Scheduler::Create(raw->opts.sched);
    if (!s.ok()) {
      started.set_value(s.status());
      return;
    }
    raw->sched = std::move(s).value();
    started.set_value(Status::Ok());
    raw->sched->Run();
    // The scheduler is destroyed by ~Worker after join (same memory, thread gone).
  });
  Status st = started_f.get();
  if (!st.ok()) {
    raw->thread.join();
    return st;
  }
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Worker::~Worker() {
  if (impl_->sched) impl_->sched->Stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

Scheduler& Worker::scheduler() noexcept { return *impl_->sched; }
void Worker::Post(std::function<void()> fn, std::string_view name) { impl_->sched->Post(std::move(fn), name); }
int Worker::cpu() const noexcept { return impl_->opts.cpu; }

std::chrono::nanoseconds Worker::CpuTime() const {
  clockid_t cid;
  if (::pthread_getcpuclockid(impl_->thread.native_handle(), &cid) != 0) return std::chrono::nanoseconds(0);
  timespec ts{};
  ::clock_gettime(cid, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

}  // namespace hrpc::coro
