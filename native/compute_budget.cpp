#include "compute_budget.h"

#include <algorithm>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace microgpt {

ComputeBudget& ComputeBudget::process() {
  static ComputeBudget* budget = new ComputeBudget(available_cores());
  return *budget;
}

ComputeBudget::Member::Member(ComputeBudget& budget, int threads) : budget_(budget) {
  {
    std::lock_guard<std::mutex> lock(budget_.mutex_);
    budget_.members_.push_back(State{std::max(1, threads)});
    state_ = std::prev(budget_.members_.end());
  }
  budget_.freed_.notify_all();  // a larger budget may let a waiter in
}

ComputeBudget::Member::~Member() {
  {
    std::lock_guard<std::mutex> lock(budget_.mutex_);
    budget_.members_.erase(state_);
  }
  budget_.freed_.notify_all();  // a smaller budget may leave a waiter nothing; a larger one never shrinks a lease
}

int ComputeBudget::available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int ComputeBudget::capacity_locked() const {
  int capacity = cores_;
  for (const Member::State& m : members_) capacity = std::max(capacity, m.threads);
  return capacity;
}

ComputeBudget::Lease::Lease(Member& member, int wanted) : member_(member) {
  ComputeBudget& b = member.budget_;
  Member::State& me = *member.state_;
  std::unique_lock<std::mutex> lock(b.mutex_);
  me.waiting = true;
  for (;;) {
    const int capacity = b.capacity_locked();
    const int free = capacity - b.in_use_;
    if (free > 0) {
      const Clock::time_point now = Clock::now();
      int active = 0;
      for (const Member::State& m : b.members_) {
        if (&m == &me || m.holding > 0 || m.waiting || now - m.last_pass < kRecent) active++;
      }
      const int share = std::max(1, capacity / active);
      width_ = std::max(1, std::min({wanted, me.threads, share, free}));
      shared_ = active > 1;
      break;
    }
    b.freed_.wait(lock);
  }
  me.waiting = false;
  me.holding = width_;
  b.in_use_ += width_;
  b.peak_ = std::max(b.peak_, b.in_use_);
}

ComputeBudget::Lease::~Lease() {
  ComputeBudget& b = member_.budget_;
  {
    std::lock_guard<std::mutex> lock(b.mutex_);
    Member::State& me = *member_.state_;
    b.in_use_ -= me.holding;
    me.holding = 0;
    me.last_pass = Clock::now();
  }
  b.freed_.notify_all();
}

ComputeBudget::Snapshot ComputeBudget::snapshot() {
  std::lock_guard<std::mutex> lock(mutex_);
  return Snapshot{capacity_locked(), in_use_, peak_, static_cast<int>(members_.size())};
}

}  // namespace microgpt
