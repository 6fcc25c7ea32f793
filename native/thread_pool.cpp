#include "thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MICROGPT_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define MICROGPT_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define MICROGPT_CPU_RELAX() ((void)0)
#endif

namespace microgpt {

namespace {

// How long a waiting thread spins before it sleeps. Short: where vCPUs are time-shared, the
// thread we wait for often cannot run while we spin (measured on a 2-vCPU VM: every extra
// microsecond of spin added two to each barrier), so a spin only pays when the partner is
// already running on its own core.
constexpr auto kSpin = std::chrono::microseconds(2);

template <typename Done>
bool spin_until(const Done& done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; i++) {
    if (done()) return true;
    MICROGPT_CPU_RELAX();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return done();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  workers_.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; i++) workers_.emplace_back([this, i] { worker(i); });
  if (n_threads_ > 1) {
    // The median of a few short batches, so one lucky or unlucky moment does not decide.
    auto nothing = [](int) {};
    for (int i = 0; i < 8; i++) run(n_threads_, nothing);  // the workers have started
    double batches[7];
    for (double& batch : batches) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 8; i++) run(n_threads_, nothing);
      batch = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 8;
    }
    std::sort(batches, batches + 7);
    barrier_seconds_ = batches[3];
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_ready_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_erased(int n, Task task, void* ctx) {
  if (n > n_threads_) n = n_threads_;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = task;
    ctx_ = ctx;
    n_tasks_ = n;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  work_ready_.notify_all();
  task(ctx, 0);
  if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lock(mutex_);
    work_done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
  }
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto started = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    if (!spin_until(started)) {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stop_ || started(); });
      if (stop_) return;
    }
    Task task;
    void* ctx;
    int n;
    {
      // The fields were written under the mutex before generation_ was bumped.
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      task = task_;
      ctx = ctx_;
      n = n_tasks_;
    }
    if (index < n) task(ctx, index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      work_done_.notify_one();
    }
  }
}

}  // namespace microgpt
