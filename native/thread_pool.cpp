#include "thread_pool.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

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

// Outside a Busy scope a waiting thread spins this long before it sleeps: about the gap between
// two decode steps of a generation (the result's trip to the main thread, sampling, the next
// request's trip back: a few hundred microseconds at most), so a worker is still up when the next pass
// starts instead of paying a wake-up at its first split. After kYieldAfter it yields at every
// check, so it only spins on a core nobody else wants.
constexpr auto kIdleSpin = std::chrono::microseconds(250);
// Inside one, this long: longer than the one-thread stretches of a pass (the layers too small to
// split take a few microseconds), short enough that a thread whose partner was descheduled soon
// gives its core back.
constexpr auto kBusySpin = std::chrono::microseconds(300);

// Idle workers of a pool whose model shares the cores with others do not linger (set_linger).
constexpr auto kNoSpin = std::chrono::microseconds(0);

constexpr auto kYieldAfter = std::chrono::microseconds(50);

constexpr uint64_t kThreadsMask = 0xffff;

}  // namespace

template <typename Done>
bool ThreadPool::spin_until(const Done& done, bool busy) const {
  const auto started = std::chrono::steady_clock::now();
  for (int i = 0;; i++) {
    if (done()) return true;
    MICROGPT_CPU_RELAX();
    if ((i & 63) == 63) {
      const auto spun = std::chrono::steady_clock::now() - started;
      if (spun > (busy ? kBusySpin : linger_.load(std::memory_order_relaxed) ? kIdleSpin : kNoSpin)) return done();
      // Waiting this long, the thread we wait for may be waiting for this very core (more
      // threads than cores): let it run. Not sooner: a yield hands the core to any ready thread
      // (in Node: V8's helpers) for a whole time slice, which made every pass twice as slow.
      if (spun > kYieldAfter) std::this_thread::yield();
    }
  }
}

static_assert(ThreadPool::kMaxThreads <= static_cast<int>(kThreadsMask), "a run's thread count fits its field");

ThreadPool::ThreadPool(int n_threads)
    : n_threads_(std::max(1, std::min(n_threads, kMaxThreads))), width_(n_threads_), sleepers_(new Sleeper[n_threads_]) {
  workers_.reserve(n_threads_ - 1);
  // A worker that started uses this object's members: stop and join it before they go, or an
  // unwinding constructor would destroy joinable threads (std::terminate) and free what they use.
  try {
    for (int i = 1; i < n_threads_; i++) workers_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {
    const int running = static_cast<int>(workers_.size()) + 1;  // the caller is one of them
    stop_workers();
    throw std::system_error(e.code(), "could not start compute thread " + std::to_string(running + 1) + " of " +
                                          std::to_string(n_threads_));
  } catch (...) {
    stop_workers();
    throw;
  }
  if (n_threads_ > 1) {
    barrier_seconds_ = std::numeric_limits<double>::infinity();
    calibrate(64);
  }
}

void ThreadPool::calibrate(int runs) {
  if (n_threads_ <= 1) return;
  Busy busy(*this, n_threads_);
  auto nothing = [](int) {};
  for (int i = 0; i < 16; i++) run(n_threads_, nothing);  // every worker is up and spinning
  std::vector<double> seconds(std::max(1, runs));
  for (double& s : seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    run(n_threads_, nothing);
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::nth_element(seconds.begin(), seconds.begin() + seconds.size() / 2, seconds.end());
  barrier_seconds_ = std::min(barrier_seconds_, seconds[seconds.size() / 2]);
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  for (int i = 1; i < n_threads_; i++) sleepers_[i].ready.notify_one();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::wake(int n) {
  bool any = false;
  for (int i = 1; i < n && !any; i++) any = sleepers_[i].sleeping.load();  // seq_cst: after the change
  if (!any) return;
  { std::lock_guard<std::mutex> lock(mutex_); }  // a worker between its check and its wait finishes waiting first
  for (int i = 1; i < n; i++) {
    if (sleepers_[i].sleeping.load()) sleepers_[i].ready.notify_one();
  }
}

void ThreadPool::set_busy(int width) {
  width = std::min(width, n_threads_);
  busy_width_.store(width, std::memory_order_relaxed);
  if (width > 1) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (int i = 1; i < width; i++) sleepers_[i].wake_epoch++;
    }
    wake(width);
  }
}

void ThreadPool::run_erased(int n, Task task, void* ctx) {
  n = std::min(n, n_threads_);
  task_ = task;
  ctx_ = ctx;
  pending_.store(n - 1, std::memory_order_relaxed);
  const uint64_t number = (run_.load(std::memory_order_relaxed) >> 16) + 1;
  run_.store((number << 16) | static_cast<uint64_t>(n));  // seq_cst: before the look at sleepers
  wake(n);
  task(ctx, 0);
  auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, busy_width_.load(std::memory_order_relaxed) > 0)) {
    std::unique_lock<std::mutex> lock(mutex_);
    caller_sleeping_.store(true);
    work_done_.wait(lock, [this] { return pending_.load() == 0; });  // seq_cst: after the flag
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
}

void ThreadPool::worker(int index) {
  Sleeper& me = sleepers_[index];
  uint64_t seen = 0;
  uint64_t epoch = 0;
  // A run this worker takes part in and has not done yet.
  const auto wanted = [&](uint64_t run) { return run != seen && index < static_cast<int>(run & kThreadsMask); };
  for (;;) {
    const bool busy = index < busy_width_.load(std::memory_order_relaxed);
    if (!spin_until([&] { return wanted(run_.load(std::memory_order_acquire)) || stop_.load(std::memory_order_relaxed); }, busy)) {
      std::unique_lock<std::mutex> lock(mutex_);
      me.sleeping.store(true);  // seq_cst: before the last look at run_
      me.ready.wait(lock, [&] { return stop_.load() || wanted(run_.load()) || me.wake_epoch != epoch; });
      me.sleeping.store(false);
      epoch = me.wake_epoch;
    }
    if (stop_.load()) return;
    const uint64_t run = run_.load(std::memory_order_acquire);
    if (!wanted(run)) continue;  // woken because the pool became busy: spin for the first run
    seen = run;
    task_(ctx_, index);
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {  // seq_cst: after the count
      { std::lock_guard<std::mutex> lock(mutex_); }
      work_done_.notify_one();
    }
  }
}

}  // namespace microgpt
