// A persistent pool of compute threads. The thread calling run() takes part as thread 0, so a
// pool of n threads starts n - 1 workers. Waiting workers spin only briefly, then sleep on a
// condition variable: on a machine with few, shared cores a long spin steals the very core the
// thread we wait for needs.
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

  // Seconds one empty run() over every thread takes, measured when the pool starts: what a split
  // costs on this machine (about 1 us where cores are real and idle, 10 us or more where vCPUs
  // are time-shared).
  double barrier_seconds() const { return barrier_seconds_; }

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

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  std::atomic<uint64_t> generation_{0};  // bumped once per run(): the workers' signal to start
  std::atomic<int> pending_{0};          // workers of the current run still working
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int n_tasks_ = 0;
  bool stop_ = false;
  double barrier_seconds_ = 0;
};

}  // namespace microgpt
