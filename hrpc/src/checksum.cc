#include "checksum.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "hrpc/coroutine/scheduler.h"
#include "hrpc/coroutine/sync.h"

namespace hrpc::internal {
namespace {

std::atomic<size_t> g_passes{0};

struct Job {
  const std::function<void()>* pass;
  coro::Event done;
};

// One thread per process, started at the first large pass and never stopped:
// it only ever blocks on its queue. Its state is never destroyed, so a pass
// queued during static destruction still finds it. A forked child starts its own.
class ChecksumThread {
 public:
  static ChecksumThread& Get() {
    static std::mutex mu;
    static ChecksumThread* current = nullptr;
    std::lock_guard lock(mu);
    if (current == nullptr || current->pid_ != ::getpid()) {
      current = new ChecksumThread;  // never destroyed (see above)
      std::thread([t = current] { t->Run(); }).detach();
    }
    return *current;
  }

  void Add(Job* job) {
    std::lock_guard lock(mu_);
    queue_.push_back(job);
    cv_.notify_one();
  }

 private:
  void Run() {
    ::pthread_setname_np(::pthread_self(), "hrpc-crc");
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty(); });
      Job* job = queue_.front();
      queue_.pop_front();
      lock.unlock();
      (*job->pass)();
      g_passes.fetch_add(1, std::memory_order_relaxed);
      job->done.Set();  // the waiter may destroy the job now
      lock.lock();
    }
  }

  const pid_t pid_ = ::getpid();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
};

}  // namespace

void OffWorker(size_t bytes, const std::function<void()>& pass) {
  if (bytes < kChecksumOffWorkerBytes || coro::Scheduler::Current() == nullptr || !coro::this_coro::InCoroutine()) {
    pass();
    return;
  }
  Job job{&pass, {}};
  ChecksumThread::Get().Add(&job);
  job.done.Wait().IgnoreError();
}

size_t OffWorkerPasses() noexcept { return g_passes.load(std::memory_order_relaxed); }

}  // namespace hrpc::internal
