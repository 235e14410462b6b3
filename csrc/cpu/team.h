// The decode team: a persistent team of threads for the fused samplers' steps (wavenet_decode.cpp,
// pixelcnn_decode.cpp, pixelcnnpp_decode.cpp).
//
// at::parallel_for (OpenMP here) ends every region at a barrier that all its threads must reach. When the
// machine has more runnable threads than cores (a second process busy on one core of two), a thread is
// often descheduled, and each region then waits for it to get a time slice again: a decode loop with one
// region per image row ran 10x slower at 2 threads than at 1. The Crew below never waits on a thread that
// has not started its work.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

namespace arkern_team {

// ---------------------------------------------------------------- Crew: a persistent team for decode steps
//
// A decode step at batch 1 is a chain of short dependent phases (one per layer: ~1-2 us of mat-vec work).
// A phase is a list of chunks (output tiles of the weight matrices) that may run in any order; chunk c
// belongs to worker c * P / n, the same worker every step, so that each worker's weight slice stays in its
// own L2. The caller is worker 0 and drives the steps; helpers are started once and reused.
//
// Nothing waits on a descheduled peer: a worker that has finished its own chunks watches the others' claim
// counters and takes the chunks that are left, one at a time: at once from a peer that was asleep when the
// phase opened, after kGrace from one that has not arrived in the phase (descheduled), after kPatience from
// one that has arrived but made no progress. Only a chunk that a peer has actually started is waited for.
// Helpers spin ~50 us for the next phase, then sleep. The caller reports a miss when a peer that was awake
// had to be replaced or kept it waiting for more than kStall; the Session then runs the rest of the step
// alone and counts the window as lost. On top, the Session compares the step rate of the team with the
// rate of the caller alone (measured in alternating windows, per workload) and runs the caller alone while
// the team is slower or missing, e.g. next to another busy process on a 2-core machine, trying the team
// again after exponentially more windows.
//
// Results never depend on who ran a chunk: chunks write disjoint outputs, each computed in one fixed order.
namespace detail {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace detail

class Crew {
 public:
  static constexpr int kMaxWorkers = 16;
  static constexpr int64_t kMaxChunks = 0xffff;  // chunks per phase (16-bit claim counters)
  static constexpr int64_t kPatience = 4000;      // ns without progress before a peer's chunks are taken
  static constexpr int64_t kGrace = 2000;         // ns after the opening before an absent peer's are taken
  static constexpr int64_t kStall = 20000;        // ns waiting for a peer's started chunk: a miss
  using Job = void (*)(const void* ctx, int worker, int64_t chunk);

  static Crew& get() {
    static Crew* crew = new Crew();  // never destroyed: helpers may still sleep at exit
    return *crew;
  }

  // One decode call at a time owns the crew; another caller meanwhile runs alone (returns false).
  bool try_acquire(int workers) {
    if (!session_.try_lock()) return false;
    grow(workers - 1);
    return true;
  }
  void release() { session_.unlock(); }

  // True on a crew helper thread: a decode call made from a chunk runs alone.
  static bool& in_crew() {
    thread_local bool inside = false;
    return inside;
  }

  // Runs job(ctx, w, c) for c in [0, n) on `workers` workers (the caller is worker 0); returns when all ran,
  // true when a peer missed (it was awake at the opening, yet the caller had to take chunks it had not
  // started, or waited more than kStall for one it had). Worker w owns chunks [bounds[w], bounds[w + 1])
  // (default: w * n / workers ...); a present peer's chunks are taken after `patience` ns without progress,
  // an absent one's after min(patience, kGrace) from the opening.
  bool phase(int workers, int64_t n, Job job, const void* ctx, const int64_t* bounds = nullptr,
             int64_t patience = kPatience) {
    TORCH_CHECK(n <= kMaxChunks && workers <= kMaxWorkers, "Crew::phase: too many chunks or workers");
    job_ = job;
    ctx_ = ctx;
    workers_ = workers;
    patience_ = patience;
    n_ = n;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t e = ++epoch_count_;
    for (int w = 0; w < workers; ++w) {
      const int64_t b = bounds ? bounds[w] : w * n / workers, end = bounds ? bounds[w + 1] : (w + 1) * n / workers;
      next_[w].v.store(pack(e, end, b), std::memory_order_relaxed);
    }
    arrived_[0].v.store(e, std::memory_order_relaxed);
    epoch_.store(e);  // seq_cst, like sleeping_: a helper going to sleep sees it, or is woken
    asleep_ = sleeping_.load() > 0;
    if (asleep_ && !woken_.exchange(true)) {  // one wake-up call per sleep
      std::lock_guard<std::mutex> lock(wake_m_);
      wake_cv_.notify_all();
    }
    opened_ = detail::now_ns();
    missed_ = false;
    work(0, e);
    // only chunks a peer has started are waited for: spin, then yield the core (the peer may need it)
    if (done_.load(std::memory_order_acquire) < n) {
      const int64_t since = detail::now_ns();
      for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins) {
        if ((spins & 63) == 0 && detail::now_ns() - since > kStall) {
          missed_ = true;
          std::this_thread::yield();
        } else {
          detail::cpu_relax();
        }
      }
    }
    if (error_) {
      std::exception_ptr err = error_;
      error_ = nullptr;
      std::rethrow_exception(err);
    }
    return missed_ && !asleep_;
  }

 private:
  Crew() = default;
  struct alignas(64) Counter {
    std::atomic<uint64_t> v{0};
  };
  // A claim counter: the phase (32 bits), the end of the owner's range and the next chunk (16 bits each).
  // A claim is one CAS, which fails for a worker still holding an older phase.
  static uint64_t pack(uint64_t e, int64_t end, int64_t next) {
    return (e << 32) | (static_cast<uint64_t>(end) << 16) | static_cast<uint64_t>(next);
  }
  static uint32_t tag(uint64_t v) { return static_cast<uint32_t>(v >> 32); }
  static int64_t end_of(uint64_t v) { return static_cast<int64_t>((v >> 16) & 0xffff); }
  static int64_t next_of(uint64_t v) { return static_cast<int64_t>(v & 0xffff); }

  void grow(int helpers) {
    while (threads_ < helpers) {
      threads_ += 1;
      const int id = threads_;
      std::thread([this, id] { helper(id); }).detach();
    }
  }

  // Claims one chunk of worker v's range in phase e; returns it, or -1 when none is left.
  int64_t claim(int v, uint32_t e, uint64_t& cur) {
    while (tag(cur) == e && next_of(cur) < end_of(cur)) {
      if (next_[v].v.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) return next_of(cur);
    }
    return -1;
  }

  void run_chunk(int w, int64_t c) {
    try {
      job_(ctx_, w, c);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_m_);
      if (!error_) error_ = std::current_exception();
    }
    done_.fetch_add(1, std::memory_order_acq_rel);
  }

  // Worker w in phase e: its own chunks, then whatever the others leave unclaimed (see the top).
  void work(int w, uint64_t e64) {
    const uint32_t e = static_cast<uint32_t>(e64);
    uint64_t cur = next_[w].v.load(std::memory_order_acquire);
    if (tag(cur) != e) return;
    if (w > 0) arrived_[w].v.store(e64, std::memory_order_release);
    const int workers = workers_;
    for (int64_t c; (c = claim(w, e, cur)) >= 0; cur = next_[w].v.load(std::memory_order_acquire)) run_chunk(w, c);
    for (int k = 1; k < workers; ++k) {
      const int v = (w + k) % workers;
      uint64_t last = next_[v].v.load(std::memory_order_acquire);
      int64_t since = detail::now_ns();
      for (int spins = 0;; ++spins) {
        cur = next_[v].v.load(std::memory_order_acquire);
        if (tag(cur) != e || next_of(cur) >= end_of(cur)) break;
        bool take = false;
        if (cur != last) {  // the owner is making progress
          last = cur;
          since = detail::now_ns();
        } else if (w == 0 && arrived_[v].v.load(std::memory_order_acquire) != e64) {  // not (yet) in this phase
          take = asleep_ || ((spins & 15) == 0 && detail::now_ns() - opened_ > std::min(patience_, kGrace));
        } else {
          take = (spins & 15) == 0 && detail::now_ns() - since > patience_;
        }
        if (take) {
          const int64_t c = claim(v, e, cur);
          if (c >= 0) {
            if (w == 0) missed_ = true;
            run_chunk(w, c);
          }
          last = next_[v].v.load(std::memory_order_acquire);
          since = detail::now_ns();
        }
        detail::cpu_relax();
      }
    }
  }

  void helper(int id) {
    in_crew() = true;
    uint64_t seen = epoch_.load();
    for (;;) {
      // spin ~50 us for the next phase (phases come back to back), then sleep until one opens
      const int64_t until = detail::now_ns() + 50000;
      uint64_t e = epoch_.load(std::memory_order_acquire);
      for (int spins = 0; e == seen; ++spins) {
        detail::cpu_relax();
        if ((spins & 63) == 0 && detail::now_ns() > until) break;
        e = epoch_.load(std::memory_order_acquire);
      }
      if (e == seen) {
        std::unique_lock<std::mutex> lock(wake_m_);
        woken_.store(false);
        sleeping_.fetch_add(1);
        wake_cv_.wait(lock, [&] { return epoch_.load() != seen; });
        sleeping_.fetch_sub(1);
        e = epoch_.load(std::memory_order_acquire);
      }
      seen = e;
      if (id < workers_) work(id, e);  // a worker beyond this phase's team size just waits for the next
    }
  }

  std::mutex session_, wake_m_, error_m_;
  std::condition_variable wake_cv_;
  alignas(64) std::atomic<uint64_t> epoch_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  Counter next_[kMaxWorkers];
  Counter arrived_[kMaxWorkers];  // the last phase each worker started
  alignas(64) std::atomic<int> sleeping_{0};
  std::atomic<bool> woken_{false};
  // the caller's view of this phase: a helper was asleep at the opening, a peer missed, the opening time
  bool asleep_ = false, missed_ = false;
  int64_t opened_ = 0;
  Job job_ = nullptr;
  const void* ctx_ = nullptr;
  std::atomic<int> workers_{1};
  int64_t n_ = 0, patience_ = kPatience;
  uint64_t epoch_count_ = 0;
  int threads_ = 0;
  std::exception_ptr error_;
};

// One decode call on the crew. Usage:
//   Session team(key);                      // key: the workload (kernel, sizes, batch), for the rate memory
//   for (step ...) { team.phase(n, [&](int worker, int64_t chunk) {...}); ...; team.step_done(); }
// workers(): at most at::get_num_threads() (1 inside a parallel region, or while another call holds the
// crew); phase() runs every chunk in the caller when the team is off for this window. ARKERN_TEAM=always
// keeps the team on (no switching to the caller alone).
class Session {
 public:
  explicit Session(uint64_t key) {
    int64_t want = std::min<int64_t>(at::get_num_threads(), Crew::kMaxWorkers);
    if (at::in_parallel_region() || Crew::in_crew()) want = 1;
    if (want > 1 && Crew::get().try_acquire(static_cast<int>(want))) {
      workers_ = static_cast<int>(want);
      rates_ = &memory()[key];
      const char* mode = std::getenv("ARKERN_TEAM");  // "always": no switching (tests, team-only timings)
      always_ = mode != nullptr && std::string(mode) == "always";
      team_on_ = always_ || rates_->next_team;
      window_start_ = detail::now_ns();
    }
  }
  ~Session() {
    if (workers_ > 1) Crew::get().release();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The workers that may run a chunk (ids 0 .. workers() - 1, for per-worker scratch).
  int workers() const { return workers_; }

  // f(worker, chunk) for every chunk in [0, n); worker w owns chunks [bounds[w], bounds[w + 1]) when given
  // (workers() + 1 entries), else an equal share.
  template <typename F>
  void phase(int64_t n, const F& f, const int64_t* bounds = nullptr, int64_t patience = Crew::kPatience) {
    if (workers_ <= 1 || !team_on_ || n <= 1) {
      for (int64_t c = 0; c < n; ++c) f(0, c);
      return;
    }
    if (Crew::get().phase(workers_, n,
                          [](const void* ctx, int w, int64_t c) { (*static_cast<const F*>(ctx))(w, c); }, &f, bounds,
                          patience))
      missed();
  }

  // A peer missed a deadline (found by phase(), or by a caller that waits on its peer itself): the rest of
  // this step runs alone, and step_done() counts the window as lost. No effect with ARKERN_TEAM=always.
  void missed() {
    if (always_ || !team_on_) return;
    team_on_ = false;
    missed_ = true;
  }

  // Whether phases currently run on the team (for callers that split work differently when alone).
  bool active() const { return workers_ > 1 && team_on_; }

  // After every decode step: closes a measuring window every kWindow ns (or after a miss) and picks team or
  // alone for the next.
  void step_done() {
    if (workers_ <= 1 || always_) return;
    steps_ += 1;
    const int64_t now = detail::now_ns();
    if (!missed_ && now - window_start_ < kWindow) return;
    const double rate = static_cast<double>(steps_) / static_cast<double>(now - window_start_);
    rates_->update(team_on_ || missed_, rate, missed_);
    team_on_ = rates_->next_team;
    missed_ = false;
    steps_ = 0;
    window_start_ = detail::now_ns();
  }

 private:
  static constexpr int64_t kWindow = 3000000;  // 3 ms

  // Step rates of one workload, alone and as a team, and the choice for the next window. The team runs while
  // it is at least as fast as the caller alone and no peer misses. Alone is measured first and then every 32
  // team windows; while the team loses, it is tried again after 1, 2, 4, ... 1024 windows alone (a peer
  // kept from its core for a moment, e.g. by another thread's spin, costs little; a busy core, ever less).
  struct Rates {
    double team = 0, alone = 0;
    bool next_team = true, probe = false;
    int windows = 0, backoff = 1;
    void update(bool was_team, double rate, bool missed) {
      (was_team ? team : alone) = rate;
      windows += 1;
      if (was_team) {
        if (missed) {
          switch_to(false, false);
        } else {
          if (alone > 0 && team >= alone) backoff = 1;
          if (alone == 0 || windows >= 32) {
            switch_to(false, true);  // measure alone (first time, or a refresh)
          } else if (team < alone) {
            switch_to(false, false);
          }
        }
      } else if (team == 0 || (probe && team >= alone)) {
        switch_to(true, false);
      } else if (!probe && windows >= backoff) {
        backoff = std::min(2 * backoff, 1024);
        switch_to(true, false);  // try the team again
      } else {
        probe = false;
      }
    }
    void switch_to(bool team_next, bool probing) {
      next_team = team_next;
      probe = probing;
      windows = 0;
    }
  };
  static std::unordered_map<uint64_t, Rates>& memory() {  // guarded by the crew's session lock
    static auto* m = new std::unordered_map<uint64_t, Rates>();
    return *m;
  }

  int workers_ = 1;
  bool team_on_ = true, always_ = false, missed_ = false;
  Rates* rates_ = nullptr;
  int64_t steps_ = 0, window_start_ = 0;
};

}  // namespace arkern_team
