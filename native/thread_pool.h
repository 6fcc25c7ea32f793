// A persistent pool of compute threads. The thread calling run() takes part as thread 0, so a
// pool of n threads starts n - 1 workers.
//
// Waiting is the whole game on a machine with few, shared cores. A sleeping worker takes tens of
// microseconds to wake (measured on a 2-vCPU VM: 3 to 60 us per run()), while two spinning
// threads hand over work in well under a microsecond. But a thread that spins while there is no
// work steals the very core the thread we wait for (Node's main thread, libuv's) needs. So
// workers spin freely only while the pool is busy, i.e. inside a Busy scope (one forward pass,
// which calls run() some fifty times in a row); between passes they spin about one decode step's
// gap, yielding their core, then sleep: a pass pays at most one wake-up, not one per layer.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace microgpt {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Seconds one empty run() over every thread takes inside a Busy scope, measured when the pool
  // starts: what a split costs on this machine (well under a microsecond where the threads get
  // their cores; more where vCPUs are time-shared).
  double barrier_seconds() const { return barrier_seconds_; }

  // While one is alive, waiting threads spin (up to kBusySpin at a time) instead of going to
  // sleep between run()s, and sleeping workers are woken at once, so they are up by the first
  // run(). One per forward pass. Not reentrant, like run().
  // With active false it does nothing (a pass too small to split wakes no one).
  class Busy {
   public:
    explicit Busy(ThreadPool& pool, bool active = true) : pool_(pool), active_(active) {
      if (active_) pool_.set_busy(true);
    }
    ~Busy() {
      if (active_) pool_.set_busy(false);
    }
    Busy(const Busy&) = delete;
    Busy& operator=(const Busy&) = delete;

   private:
    ThreadPool& pool_;
    const bool active_;
  };

  // Calls fn(i) for i in [0, n), n <= size(), each on its own thread (i = 0 on the caller), and
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
  void set_busy(bool busy);
  template <typename Done>
  bool spin_until(const Done& done) const;

  const int n_threads_;
  std::vector<std::thread> workers_;

  // A run is published by bumping `run_`, which holds (run number << 16) | threads taking part.
  // task_ and ctx_ are written before and read after that bump (release/acquire), and not
  // rewritten before every worker taking part has counted itself out of pending_.
  std::atomic<uint64_t> run_{0};
  std::atomic<int> pending_{0};  // workers of the current run still working
  Task task_ = nullptr;
  void* ctx_ = nullptr;

  std::atomic<bool> busy_{false};
  std::atomic<bool> stop_{false};
  // Sleeping. The sleeper announces itself (sequentially consistent) before its last look at
  // the condition, the waker after changing it, so either the sleeper sees the change or the
  // waker sees the sleeper and notifies under the mutex.
  std::mutex mutex_;
  std::condition_variable work_ready_;  // workers sleep here
  std::condition_variable work_done_;   // the caller sleeps here
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  uint64_t wake_epoch_ = 0;  // bumped under mutex_ by set_busy(true): sleeping workers get up

  double barrier_seconds_ = 0;
};

}  // namespace microgpt
