// team_for: a parallel_for for short, frequent regions that never waits on a thread that has not started.
//
// at::parallel_for (OpenMP here) ends every region at a barrier that all team threads must reach. When the
// machine has more runnable threads than cores (a second process busy on one core of two), a team thread
// is often descheduled, and each region then waits for it to get a time slice again: a decode loop with one
// region per image row ran 10x slower at 2 threads than at 1. Here the work is split into chunks that any
// thread claims from a shared counter; the calling thread claims too, so when the helpers are late it
// simply does every chunk itself and waits only for chunks a helper has actually started. Helpers spin
// briefly for the next region (the regions come back to back), then sleep on a condition variable, so
// they never burn a core that another process needs.
//
// Same contract as at::parallel_for(begin, end, grain, f): f(b, e) over disjoint sub-ranges covering
// [begin, end); inside another parallel region, or with one thread, the whole range runs in this thread.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace arkern_team {

class Team {
 public:
  static Team& get() {
    static Team* team = new Team();  // never destroyed: helpers may still sleep at exit
    return *team;
  }

  // Runs chunk(i) for i in [0, n) on the caller and up to `helpers` helper threads.
  void run(int64_t n, int64_t helpers, const std::function<void(int64_t)>& chunk) {
    std::lock_guard<std::mutex> one_region(region_);  // regions from different callers take turns
    grow(helpers);
    job_ = &chunk;
    n_.store(n);
    done_.store(0);
    error_ = nullptr;
    // The epoch in the high 32 bits, the next chunk in the low 32: a claim is one CAS, which fails for a
    // helper still holding an older epoch, so no helper can take a chunk of a region it did not see open.
    epoch_ += 1;
    next_.store(epoch_ << 32);  // seq_cst, like sleeping_: a helper going to sleep sees it, or is woken
    if (sleeping_.load() > 0) {
      std::lock_guard<std::mutex> lock(wake_m_);
      wake_cv_.notify_all();
    }
    in_team() = true;
    work(epoch_);
    in_team() = false;
    while (done_.load() < n) std::this_thread::yield();  // only chunks a helper has started
    next_.store((epoch_ << 32) | kClosed);  // a late helper's claim on this epoch now fails
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  // True on a thread running a chunk: nested team_for calls run inline there.
  static bool& in_team() {
    thread_local bool inside = false;
    return inside;
  }

 private:
  Team() = default;
  static constexpr uint64_t kClosed = 0xffffffffu;

  void grow(int64_t helpers) {
    while (static_cast<int64_t>(threads_) < helpers) {
      std::thread([this] { helper(); }).detach();
      threads_ += 1;
    }
  }

  // Claims and runs chunks of region `epoch` until none are left.
  void work(uint64_t epoch) {
    uint64_t cur = next_.load();
    while ((cur >> 32) == epoch && static_cast<int64_t>(cur & 0xffffffffu) < n_.load()) {
      if (!next_.compare_exchange_weak(cur, cur + 1)) continue;
      try {
        (*job_)(static_cast<int64_t>(cur & 0xffffffffu));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_m_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1);
      cur = next_.load();
    }
  }

  void helper() {
    in_team() = true;
    uint64_t seen = 0;
    for (;;) {
      // spin ~50 us for the next region (decode regions come back to back), then sleep until one opens
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
      uint64_t cur = next_.load();
      while ((cur >> 32) == seen && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
        cur = next_.load();
      }
      if ((cur >> 32) == seen) {
        std::unique_lock<std::mutex> lock(wake_m_);
        sleeping_.fetch_add(1);
        wake_cv_.wait(lock, [&] { return (next_.load() >> 32) != seen; });
        sleeping_.fetch_sub(1);
        cur = next_.load();
      }
      seen = cur >> 32;
      work(seen);
    }
  }

  std::mutex region_, wake_m_, error_m_;
  std::condition_variable wake_cv_;
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleeping_{0};
  const std::function<void(int64_t)>* job_ = nullptr;
  std::atomic<int64_t> n_{0};
  uint64_t epoch_ = 0;
  size_t threads_ = 0;
  std::exception_ptr error_;
};

template <typename F>
void team_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  const int64_t threads = at::get_num_threads();
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = std::min<int64_t>((end - begin + grain - 1) / grain, threads);
  if (chunks <= 1 || at::in_parallel_region() || Team::in_team()) {
    f(begin, end);
    return;
  }
  const int64_t size = (end - begin + chunks - 1) / chunks;
  const std::function<void(int64_t)> chunk = [&](int64_t i) {
    const int64_t b = begin + i * size;
    if (b < end) f(b, std::min(end, b + size));
  };
  Team::get().run(chunks, threads - 1, chunk);
}

}  // namespace arkern_team
