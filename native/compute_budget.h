// The process's compute budget: how many threads all the models of a process may compute on at
// once. Every model (Transformer) keeps its own pool, sized by its `threads`, but a forward pass
// first leases its width from this budget, the process's one, and splits across at most that many
// threads (the engine thread that runs the pass counts as one). So N models loaded with `threads`
// = the core count never run more than that many compute threads together: without it, three
// models of a service each ran a full pool and their spinning workers took each other's cores.
//
// The budget is the cores this process may run on (its CPU affinity), or the largest `threads` of
// the models alive where that is more (a model loaded with more raises it for as long as it
// lives): models loaded with fewer threads each, to split the cores between them, all run. A pass is
// granted min(its widest split, its model's threads, a fair share, what is free), at least one:
// the fair share is the budget divided by the models active recently (leasing, waiting, or done
// with a pass within kRecent), so models generating together settle on equal parts and run side
// by side, instead of taking turns with the whole budget, which would cost a hand-off per pass.
// With nothing free a pass waits until a lease ends. In the manner of node-llama-cpp's
// ThreadsSplitter, which splits a maxThreads budget between contexts the same way.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>

namespace microgpt {

class ComputeBudget {
 public:
  using Clock = std::chrono::steady_clock;

  // A model lingers among the active this long after its last pass: longer than the gap between
  // two decode steps of a generation (sampling on the main thread, the next request's trip back),
  // short enough that a model alone again gets the whole budget within a few milliseconds.
  static constexpr Clock::duration kRecent = std::chrono::milliseconds(5);

  // The process's one budget (never destroyed: engine threads may still lease while the
  // process exits).
  static ComputeBudget& process();

  // One model's membership: joins with the model's `threads`, leaves when destroyed.
  class Member {
   public:
    Member(ComputeBudget& budget, int threads);
    ~Member();
    Member(const Member&) = delete;
    Member& operator=(const Member&) = delete;

   private:
    friend class ComputeBudget;
    struct State {
      int threads;
      int holding = 0;  // threads of the current lease, 0 between passes
      bool waiting = false;
      Clock::time_point last_pass{};
    };
    ComputeBudget& budget_;
    std::list<State>::iterator state_;
  };

  // One pass's threads, returned to the budget when it goes out of scope.
  class Lease {
   public:
    Lease(Member& member, int wanted);
    ~Lease();
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

    int width() const { return width_; }
    // Whether another model was active when the lease was granted: the pass's workers then go to
    // sleep when it ends instead of lingering for the next one on cores another model uses.
    bool shared() const { return shared_; }

   private:
    Member& member_;
    int width_ = 1;
    bool shared_ = false;
  };

  struct Snapshot {
    int capacity;  // the budget: the cores, or the largest `threads` of the members where more
    int in_use;    // threads leased now
    int peak;      // the most ever leased at once
    int members;
  };
  Snapshot snapshot();

  // A budget of its own over `cores`, for tests; models use process(), over available_cores().
  explicit ComputeBudget(int cores) : cores_(std::max(1, cores)) {}
  // The cores this process may run on: its CPU affinity where the OS tells, else the hardware's.
  static int available_cores();
  ComputeBudget(const ComputeBudget&) = delete;
  ComputeBudget& operator=(const ComputeBudget&) = delete;

 private:
  int capacity_locked() const;

  const int cores_;
  std::mutex mutex_;
  std::condition_variable freed_;
  std::list<Member::State> members_;
  int in_use_ = 0;
  int peak_ = 0;
};

}  // namespace microgpt
