// A persistent pool of compute threads. The thread calling run() takes part as thread 0, so a
// pool of n threads starts n - 1 workers.
//
// Waiting is the whole game on a machine with few, shared cores. A sleeping worker takes tens of
// microseconds to wake, while two spinning threads hand over work in well under a microsecond
// (figures: docs/native-measurements.md). But a thread that spins while there is no
// work steals the very core the thread we wait for (Node's main thread, libuv's) needs. So
// workers spin freely only while the pool is busy, i.e. inside a Busy scope (one forward pass,
// which calls run() some fifty times in a row); between passes they spin about one decode step's
// gap, yielding their core, then sleep: a pass pays at most one wake-up, not one per layer.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace microgpt {

class ThreadPool {
 public:
  // The most threads a pool has (more are clamped; the binding refuses them): past a few dozen,
  // a split's barrier costs more than the threads add, and each thread reserves a stack (8 MB
  // of address space by default), so a mistyped count could exhaust a process.
  static constexpr int kMaxThreads = 256;

  // Starts n_threads - 1 workers. If one cannot be started (the OS is out of threads or of
  // address space), those already running are stopped and joined, and std::system_error is
  // thrown with what() naming the thread that failed and the count asked for.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // How many threads run() may use for now, 1..size(): the current pass's lease from the
  // process's compute budget (compute_budget.h). Set between passes, by the thread that calls
  // run(); run() never uses more.
  int width() const { return width_; }
  void set_width(int width) { width_ = std::max(1, std::min(width, n_threads_)); }

  // Whether idle workers linger after a pass (spin about kIdleSpin for the next one) or go to
  // sleep at once: they sleep while other models share the cores (compute_budget.h).
  void set_linger(bool linger) { linger_.store(linger, std::memory_order_relaxed); }

  // Seconds one empty run() over every thread takes inside a Busy scope (the median of a few
  // dozen), the lowest of the measurements so far: what a split costs on this machine when the
  // pool's threads have their cores: under a microsecond for 2 threads, several for 16
  // (docs/native-measurements.md). Measured when the pool starts and again by calibrate().
  double barrier_seconds() const { return barrier_seconds_; }

  // Measures the barrier again (`runs` empty runs) and keeps the lower value. Call it between
  // passes (it opens its own Busy scope), from time to time: one measurement can land in a busy
  // moment: measured while another thread computed, the barrier came out hundreds of times too
  // high, and the model then kept every decode matmul on one thread.
  void calibrate(int runs);

  // While one is alive, the first `width` threads (those the pass will use: its widest split)
  // spin between run()s (up to kBusySpin at a time) instead of going to sleep, and those of them
  // asleep are woken at once, so they are up by the first run(). The others stay asleep unless a
  // run() needs them. One per forward pass. Not reentrant, like run(). Width 1 does nothing.
  class Busy {
   public:
    Busy(ThreadPool& pool, int width) : pool_(pool), active_(width > 1) {
      if (active_) pool_.set_busy(width);
    }
    ~Busy() {
      if (active_) pool_.set_busy(0);
    }
    Busy(const Busy&) = delete;
    Busy& operator=(const Busy&) = delete;

   private:
    ThreadPool& pool_;
    const bool active_;
  };

  // Calls fn(i) for i in [0, n), n <= width(), each on its own thread (i = 0 on the caller), and
  // returns when all are done. Not reentrant: one run() at a time (callers serialise).
  template <typename Fn>
  void run(int n, const Fn& fn) {
    if (n <= 1) {
      fn(0);
      return;
    }
    run_erased(n, [](void* ctx, int i) { (*static_cast<const Fn*>(ctx))(i); }, const_cast<Fn*>(&fn));
  }

 private:
  using Task = void (*)(void* ctx, int i);
  void run_erased(int n, Task task, void* ctx);
  void worker(int index);
  void set_busy(int width);
  // Stops the workers started so far and joins them.
  void stop_workers();
  // Wakes the sleeping workers among [1, n) (the mutex is taken once, only if one sleeps).
  void wake(int n);
  template <typename Done>
  bool spin_until(const Done& done, bool busy) const;

  const int n_threads_;
  int width_;
  std::atomic<bool> linger_{true};
  std::vector<std::thread> workers_;

  // A run is published by bumping `run_`, which holds (run number << 16) | threads taking part.
  // task_ and ctx_ are written before and read after that bump (release/acquire), and not
  // rewritten before every worker taking part has counted itself out of pending_.
  std::atomic<uint64_t> run_{0};
  std::atomic<int> pending_{0};  // workers of the current run still working
  Task task_ = nullptr;
  void* ctx_ = nullptr;

  std::atomic<int> busy_width_{0};  // threads of the current Busy scope; 0 outside one
  std::atomic<bool> stop_{false};
  // Sleeping. The sleeper announces itself (sequentially consistent) before its last look at
  // the condition, the waker after changing it, so either the sleeper sees the change or the
  // waker sees the sleeper and notifies under the mutex. Each worker sleeps on its own condition
  // variable, so a run wakes only the workers it needs: with many threads, waking all of them
  // for every small split cost more than the split saved.
  struct Sleeper {
    std::condition_variable ready;
    std::atomic<bool> sleeping{false};
    uint64_t wake_epoch = 0;  // bumped under mutex_ by set_busy: the worker gets up
  };
  std::mutex mutex_;
  std::unique_ptr<Sleeper[]> sleepers_;  // by worker index (0, the caller, unused)
  std::condition_variable work_done_;    // the caller sleeps here
  std::atomic<bool> caller_sleeping_{false};

  double barrier_seconds_ = 0;
};

}  // namespace microgpt
