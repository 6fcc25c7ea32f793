// The engine under concurrency, without Node: the thread pool, several models sharing the
// machine, concurrent callers of Transformer::run (served one call at a time), requests batched by an
// engine thread as the addon's, the KV-cache pool, and models made and destroyed while others
// compute. Built by CMake with MICROGPT_TESTS=ON and run by CTest;
// scripts/sanitize.sh runs it under ThreadSanitizer and under AddressSanitizer + UBSan, which is
// why it is small: it must finish in seconds even when every memory access is instrumented.
//
// Every check is on results, not only on the absence of sanitizer reports: whatever the grouping,
// the thread count or the other callers, each request's logits must be bit for bit those of the
// same request run alone on a one-thread model (the engine's promise, native/README.md).
//
// Not covered: the Engine of addon_engine.cpp (it is built on Node-API's thread-safe functions);
// engine_thread() below drives Transformer::run the way it does, from one thread fed by others.
//
// Usage: engine_stress [isa ...]   (scalar, avx2, avx512, neon or best; default: every one this
// CPU runs)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "compute_budget.h"
#include "cpu.h"
#include "transformer.h"
#include "thread_pool.h"

namespace microgpt {
namespace {

// A failed check ends the program at once, from whichever thread found it.
#define CHECK(cond, ...)                                                         \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "engine_stress: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                         \
      std::fprintf(stderr, "\n");                                                \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

using Clock = std::chrono::steady_clock;
using Logits = std::vector<float>;

// ---- the compute budget ----------------------------------------------------------------------

// Members of 1..4 threads leasing from one budget on 6 threads at once, with random wants and
// random pass lengths: the threads leased at once never exceed the budget (the largest member's
// threads), every lease is within its member's threads and its want, and some leases are shared.
void test_compute_budget() {
  ComputeBudget budget(1);  // one core: the budget is the largest member's threads, 4
  constexpr int kMembers = 6, kLeases = 400;
  std::atomic<int> leased{0}, most{0}, shared{0};
  std::vector<std::thread> threads;
  for (int m = 0; m < kMembers; m++) {
    threads.emplace_back([&, m] {
      const int mine = 1 + m % 4;
      ComputeBudget::Member member(budget, mine);
      uint32_t state = 77u + static_cast<uint32_t>(m);
      for (int i = 0; i < kLeases; i++) {
        state = state * 1664525u + 1013904223u;
        const int wanted = 1 + static_cast<int>(state >> 28) % 4;
        ComputeBudget::Lease lease(member, wanted);
        CHECK(lease.width() >= 1 && lease.width() <= std::min(wanted, mine), "lease of %d for want %d, threads %d",
              lease.width(), wanted, mine);
        if (lease.shared()) shared++;
        const int now = leased.fetch_add(lease.width()) + lease.width();
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        CHECK(now <= 4, "%d threads leased at once, budget 4", now);
        if ((state >> 20) % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
        leased.fetch_sub(lease.width());
      }
    });
  }
  for (auto& t : threads) t.join();
  const ComputeBudget::Snapshot s = budget.snapshot();
  // The test's own count rises after a grant and falls before a release: never above the budget's.
  CHECK(s.in_use == 0 && s.members == 0 && s.peak <= 4 && s.peak >= most.load(), "budget after: in use %d, members %d, peak %d (seen %d)",
        s.in_use, s.members, s.peak, most.load());
  CHECK(shared.load() > 0, "no lease was shared among %d members", kMembers);
  // Alone, a member gets what it wants.
  {
    ComputeBudget::Member alone(budget, 3);
    ComputeBudget::Lease lease(alone, 3);
    CHECK(lease.width() == 3 && !lease.shared(), "alone: %d threads, shared %d", lease.width(), lease.shared());
  }
  std::printf("compute budget: ok (peak %d of 4)\n", s.peak);
}

// ---- the thread pool --------------------------------------------------------------------------

// `runs` runs over `pool` of every width, inside and outside Busy scopes, with pauses long
// enough for the workers to go to sleep: each index of each run must be called exactly once,
// and its write must be seen by the caller once run() returns.
void pool_runs(ThreadPool& pool, int runs, uint32_t seed) {
  const int size = pool.size();
  std::vector<int> hits(size);
  uint32_t s = seed;
  auto next = [&] { return s = s * 1664525u + 1013904223u; };
  for (int r = 0; r < runs;) {
    const int width = 1 + static_cast<int>(next() % size);
    ThreadPool::Busy busy(pool, width);
    const int burst = 1 + static_cast<int>(next() % 40);
    for (int b = 0; b < burst && r < runs; b++, r++) {
      const int n = 1 + static_cast<int>(next() % size);
      std::fill(hits.begin(), hits.end(), 0);
      pool.run(n, [&](int i) { hits[i] += 1 + r; });  // plain writes: run() must order them
      for (int i = 0; i < size; i++) {
        CHECK(hits[i] == (i < n ? 1 + r : 0), "pool of %d, run %d over %d: index %d got %d", size, r, n, i, hits[i]);
      }
    }
    if (next() % 8 == 0) pool.calibrate(4);
    // Past the idle spin (250 us), so the next run has to wake sleeping workers.
    if (next() % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(400));
  }
}

void test_thread_pool() {
  // Pools of every size up to more threads than this machine has cores, one at a time.
  for (int size = 1; size <= 4; size++) {
    ThreadPool pool(size);
    CHECK(pool.size() == size, "pool of %d has size %d", size, pool.size());
    CHECK(size == 1 || pool.barrier_seconds() > 0, "pool of %d: barrier %g s", size, pool.barrier_seconds());
    pool_runs(pool, 300, 7u * size);
  }
  // Several pools at once, as several models' are, each driven by its own thread.
  {
    std::vector<std::thread> drivers;
    for (int d = 0; d < 3; d++) {
      drivers.emplace_back([d] {
        ThreadPool pool(2 + d % 2);
        pool_runs(pool, 300, 100u + d);
      });
    }
    for (auto& t : drivers) t.join();
  }
  // Made and destroyed at once, right after a run (workers still spinning) or never run.
  for (int i = 0; i < 40; i++) {
    ThreadPool pool(1 + i % 4);
    if (i % 3 != 0) {
      std::atomic<int> sum{0};
      pool.run(pool.size(), [&](int j) { sum += j + 1; });
      CHECK(sum == pool.size() * (pool.size() + 1) / 2, "pool %d: sum %d", i, sum.load());
    }
  }
  std::printf("thread pool: ok\n");
}

// ---- models -----------------------------------------------------------------------------------

struct Spec {
  const char* name;
  Config config;
  Precision precision;
};

// Shapes chosen for tails: a vocabulary that is no whole number of 32-feature panels, and (in the
// second) a head size of 25, so attention's masked loads and every GEMM edge run.
const Spec kSpecs[] = {
    {"C192-bias-f32", {67, 48, 2, 6, 192, true}, Precision::f32},
    {"C100-nobias-f16", {50, 40, 2, 4, 100, false}, Precision::f16},
};

// Every tensor of `c`, uniform in [-scale, scale) from a seeded generator; LayerNorm weights
// around 1 so activations keep their size through the layers.
std::vector<std::vector<float>> random_tensors(const Config& c, uint32_t seed) {
  std::vector<std::vector<float>> tensors;
  uint32_t s = seed;
  for (const TensorSpec& spec : tensor_layout(c)) {
    const bool norm_weight = spec.role == TensorRole::lnf_weight || spec.role == TensorRole::ln1_weight ||
                             spec.role == TensorRole::ln2_weight;
    std::vector<float> t(spec.size());
    for (float& v : t) {
      s = s * 1664525u + 1013904223u;
      const float u = static_cast<float>(s >> 8) / 16777216.0f * 2.0f - 1.0f;
      v = norm_weight ? 1.0f + 0.1f * u : 0.2f * u;
    }
    tensors.push_back(std::move(t));
  }
  return tensors;
}

struct TestWeights {
  std::vector<std::vector<float>> storage;
  std::vector<const float*> pointers;  // in tensor_layout() order
};

TestWeights weights_for(const Config& c, uint32_t seed) {
  TestWeights w;
  w.storage = random_tensors(c, seed);
  for (const auto& t : w.storage) w.pointers.push_back(t.data());
  return w;
}

std::unique_ptr<Transformer> make_model(const Spec& spec, const TestWeights& w, Isa isa, int threads) {
  return std::make_unique<Transformer>(spec.config, w.pointers, isa, threads, spec.precision);
}

// Session i's tokens: a prompt of 1 to 5 ids, then one id per decode step; all different.
int token_at(const Config& c, int i, int j) { return (i * 7 + j * 13 + 3) % c.vocab_size; }
std::vector<int> prompt_of(const Config& c, int i) {
  std::vector<int> p(1 + i % 5);
  for (size_t j = 0; j < p.size(); j++) p[j] = token_at(c, i, 100 + static_cast<int>(j));
  return p;
}
// The whole sequence session i has seen after `steps` decode steps.
std::vector<int> sequence_of(const Config& c, int i, int steps) {
  std::vector<int> seq = prompt_of(c, i);
  for (int j = 1; j <= steps; j++) seq.push_back(token_at(c, i, j));
  return seq;
}

ForwardRequest request(KVCache* cache, int start, const std::vector<int>& ids, float* logits, bool all_positions) {
  return ForwardRequest{cache, start, ids.data(), static_cast<int>(ids.size()), logits, all_positions, std::string()};
}

void run_one(Transformer& model, ForwardRequest& r) {
  ForwardRequest* p = &r;
  model.run(&p, 1);
  CHECK(r.error.empty(), "a request failed: %s", r.error.c_str());
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// What each session must get: its logits after the prompt and after each decode step, computed
// one request at a time on a one-thread model; and one-off forward passes of whole sequences.
struct Reference {
  std::vector<std::vector<Logits>> steps;  // [session][step] (vocab)
  std::vector<Logits> forward;             // [session] (positions, vocab) of sequence_of(i, steps)
};

Reference reference(const Spec& spec, const TestWeights& w, Isa isa, int sessions, int steps) {
  const Config& c = spec.config;
  const size_t V = c.vocab_size;
  std::unique_ptr<Transformer> model = make_model(spec, w, isa, 1);
  Reference ref;
  for (int i = 0; i < sessions; i++) {
    PooledKVCache cache = model->kv_cache();
    std::vector<Logits> rows;
    int length = 0;
    for (int j = 0; j <= steps; j++) {
      const std::vector<int> ids = j == 0 ? prompt_of(c, i) : std::vector<int>{token_at(c, i, j)};
      Logits logits(V);
      ForwardRequest r = request(cache.get(), length, ids, logits.data(), false);
      run_one(*model, r);
      length += static_cast<int>(ids.size());
      rows.push_back(std::move(logits));
    }
    ref.steps.push_back(std::move(rows));

    const std::vector<int> seq = sequence_of(c, i, steps);
    PooledKVCache scratch = model->kv_cache();
    Logits all(seq.size() * V);
    ForwardRequest r = request(scratch.get(), 0, seq, all.data(), true);
    run_one(*model, r);
    // A prefill gives the bits of the decode steps it replaces.
    const size_t prompt = prompt_of(c, i).size();
    for (int j = 0; j <= steps; j++) {
      CHECK(same_bits(all.data() + (prompt - 1 + j) * V, ref.steps[i][j].data(), V),
            "%s %s: session %d: the prefill's logits at step %d differ from the decode step's", spec.name, isa_name(isa),
            i, j);
    }
    ref.forward.push_back(std::move(all));
  }
  return ref;
}

// Sessions first..first+count-1 stepping together: a prompt, then `steps` decode steps, each step
// one group handed to run_group(group), which runs it; every logit must match the reference bit
// for bit. `caches[s]` is session s's cache, or null where run_group supplies the caches.
template <typename RunGroup>
void step_together(const Spec& spec, const Reference& ref, const char* who, int first, int count, int steps,
                   const std::vector<KVCache*>& caches, const RunGroup& run_group) {
  const Config& c = spec.config;
  const size_t V = c.vocab_size;
  std::vector<int> lengths(count, 0);
  std::vector<Logits> logits(count, Logits(V));
  for (int j = 0; j <= steps; j++) {
    std::vector<std::vector<int>> ids(count);
    std::vector<ForwardRequest> requests;
    std::vector<ForwardRequest*> group;
    requests.reserve(count);
    for (int s = 0; s < count; s++) {
      ids[s] = j == 0 ? prompt_of(c, first + s) : std::vector<int>{token_at(c, first + s, j)};
      requests.push_back(request(caches[s], lengths[s], ids[s], logits[s].data(), false));
      group.push_back(&requests.back());
    }
    run_group(group);
    for (int s = 0; s < count; s++) {
      CHECK(requests[s].error.empty(), "request failed: %s", requests[s].error.c_str());
      CHECK(same_bits(logits[s].data(), ref.steps[first + s][j].data(), V),
            "%s: %s session %d, step %d: logits differ from the one-at-a-time reference", spec.name, who, first + s, j);
      lengths[s] += static_cast<int>(ids[s].size());
    }
  }
}

// One caller of Transformer::run: its sessions step together, one group (one batched run() call) per
// step, while other callers do the same.
void caller(Transformer& model, const Spec& spec, const Reference& ref, int first, int count, int steps) {
  std::vector<PooledKVCache> owned;
  std::vector<KVCache*> caches;
  for (int s = 0; s < count; s++) {
    owned.push_back(model.kv_cache());
    caches.push_back(owned.back().get());
  }
  step_together(spec, ref, "batched", first, count, steps, caches,
                [&](std::vector<ForwardRequest*>& group) { model.run(group.data(), static_cast<int>(group.size())); });
  // The caches go back to the pool here, on this thread.
}

// One-off forward passes (every position's logits, each alone in its pass) between the batches.
void forwarder(Transformer& model, const Spec& spec, const Reference& ref, int sessions, int steps, int passes) {
  const size_t V = spec.config.vocab_size;
  for (int p = 0; p < passes; p++) {
    const int i = p % sessions;
    const std::vector<int> seq = sequence_of(spec.config, i, steps);
    PooledKVCache scratch = model.kv_cache();
    Logits all(seq.size() * V);
    ForwardRequest r = request(scratch.get(), 0, seq, all.data(), true);
    run_one(model, r);
    CHECK(same_bits(all.data(), ref.forward[i].data(), all.size()), "%s: forward pass %d differs from the reference",
          spec.name, p);
  }
}

// The addon's Engine in miniature: one thread runs whatever groups are waiting through
// Transformer::run, taking the sessions' caches from the model on that thread; the submitting threads
// wait for their group and drop the caches afterwards, on their own threads.
class MiniEngine {
 public:
  explicit MiniEngine(Transformer& model) : model_(model), thread_([this] { loop(); }) {}
  ~MiniEngine() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  // Runs the requests (their caches taken from the model on the engine thread, if null).
  void submit_and_wait(std::vector<ForwardRequest*> group, std::vector<PooledKVCache>* caches) {
    std::promise<void> done;
    std::future<void> settled = done.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      inbox_.push_back(Group{std::move(group), caches, std::move(done)});
    }
    wake_.notify_one();
    settled.get();
  }

 private:
  struct Group {
    std::vector<ForwardRequest*> requests;
    std::vector<PooledKVCache>* caches;
    std::promise<void> done;
  };
  void loop() {
    for (;;) {
      std::deque<Group> groups;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stop_ || !inbox_.empty(); });
        if (stop_ && inbox_.empty()) return;
        groups.swap(inbox_);
      }
      std::vector<ForwardRequest*> ready;
      for (Group& g : groups) {
        for (size_t i = 0; i < g.requests.size(); i++) {
          PooledKVCache& cache = (*g.caches)[i];
          if (!cache) cache = model_.kv_cache();
          g.requests[i]->cache = cache.get();
          ready.push_back(g.requests[i]);
        }
      }
      model_.run(ready.data(), static_cast<int>(ready.size()));
      for (Group& g : groups) g.done.set_value();
    }
  }

  Transformer& model_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Group> inbox_;
  bool stop_ = false;
  std::thread thread_;
};

void engine_client(MiniEngine& engine, const Spec& spec, const Reference& ref, int first, int count, int steps) {
  std::vector<PooledKVCache> caches(count);  // taken by the engine thread at the first step
  step_together(spec, ref, "engine", first, count, steps, std::vector<KVCache*>(count, nullptr),
                [&](std::vector<ForwardRequest*>& group) { engine.submit_and_wait(group, &caches); });
}

constexpr int kCallers = 3;
constexpr int kSessionsPerCaller = 3;
constexpr int kSessions = kCallers * kSessionsPerCaller;
constexpr int kSteps = 12;

// One model, several callers at once, twice (the second round reuses the first round's caches).
void batching(const Spec& spec, const TestWeights& w, const Reference& ref, Isa isa, int threads) {
  std::unique_ptr<Transformer> model = make_model(spec, w, isa, threads);
  uint64_t allocated_after_first = 0;
  for (int round = 0; round < 2; round++) {
    std::vector<std::thread> callers;
    for (int k = 0; k < kCallers; k++) {
      callers.emplace_back([&, k] { caller(*model, spec, ref, k * kSessionsPerCaller, kSessionsPerCaller, kSteps); });
    }
    callers.emplace_back([&] { forwarder(*model, spec, ref, kSessions, kSteps, 4); });
    for (auto& t : callers) t.join();
    const BatchStats stats = model->stats();
    if (round == 0) {
      allocated_after_first = stats.caches_allocated;
      CHECK(stats.requests == static_cast<uint64_t>(kSessions * (kSteps + 1) + 4), "%s: %llu requests", spec.name,
            static_cast<unsigned long long>(stats.requests));
      CHECK(stats.largest_batch >= kSessionsPerCaller, "%s: largest batch %llu", spec.name,
            static_cast<unsigned long long>(stats.largest_batch));
      CHECK(stats.passes < stats.requests, "%s: %llu passes for %llu requests: nothing batched", spec.name,
            static_cast<unsigned long long>(stats.passes), static_cast<unsigned long long>(stats.requests));
    } else {
      // Every cache went back to the pool and the second round reused them: a cache is made only
      // when more are in use at once than ever before, and at most every session's and the
      // forwarder's are (without reuse the second round would make its own). How many overlap in
      // each round depends on timing, so the first round's count is no bound for the second's.
      CHECK(stats.caches_allocated <= static_cast<uint64_t>(kSessions + 1),
            "%s: %llu caches after the first round, %llu after the second, for %d in use at most", spec.name,
            static_cast<unsigned long long>(allocated_after_first), static_cast<unsigned long long>(stats.caches_allocated),
            kSessions + 1);
    }
  }

  // Through an engine thread, as the addon runs it.
  {
    MiniEngine engine(*model);
    std::vector<std::thread> clients;
    for (int k = 0; k < kCallers; k++) {
      clients.emplace_back([&, k] { engine_client(engine, spec, ref, k * kSessionsPerCaller, kSessionsPerCaller, kSteps); });
    }
    for (auto& t : clients) t.join();
  }

  // A cache on loan outlives its model: dropping it afterwards frees it (the pool is closed).
  PooledKVCache survivor = model->kv_cache();
  {
    std::vector<int> ids = prompt_of(spec.config, 0);
    Logits logits(spec.config.vocab_size);
    ForwardRequest r = request(survivor.get(), 0, ids, logits.data(), false);
    run_one(*model, r);
  }
  model.reset();
  std::thread([cache = std::move(survivor)]() mutable { cache.reset(); }).join();
}

// Models made, used and destroyed over and over on one thread while others compute.
void churn(const Spec& spec, const TestWeights& w, const Reference& ref, Isa isa, const std::atomic<bool>& stop) {
  const size_t V = spec.config.vocab_size;
  for (int n = 0; n < 3 || !stop.load(); n++) {
    std::unique_ptr<Transformer> model = make_model(spec, w, isa, 1 + n % 3);
    std::vector<PooledKVCache> caches;
    for (int i = 0; i < 1 + n % 3; i++) caches.push_back(model->kv_cache());
    std::vector<int> ids = prompt_of(spec.config, n % kSessions);
    Logits logits(V);
    ForwardRequest r = request(caches[0].get(), 0, ids, logits.data(), false);
    run_one(*model, r);
    CHECK(same_bits(logits.data(), ref.steps[n % kSessions][0].data(), V), "%s: churned model %d differs", spec.name, n);
    if (n % 2 == 0) model.reset();  // the caches outlive it half the time
  }
}

void test_models(Isa isa) {
  const auto started = Clock::now();
  std::vector<TestWeights> weights;
  std::vector<Reference> refs;
  for (const Spec& spec : kSpecs) {
    weights.push_back(weights_for(spec.config, 11 + static_cast<uint32_t>(weights.size())));
    refs.push_back(reference(spec, weights.back(), isa, kSessions, kSteps));
  }
  // Both models batching at once on pools of 2 and 3 threads, while a third thread churns models.
  std::atomic<bool> stop{false};
  std::thread churner([&] { churn(kSpecs[0], weights[0], refs[0], isa, stop); });
  std::vector<std::thread> models;
  for (size_t m = 0; m < std::size(kSpecs); m++) {
    models.emplace_back([&, m] { batching(kSpecs[m], weights[m], refs[m], isa, 2 + static_cast<int>(m)); });
  }
  for (auto& t : models) t.join();
  stop = true;
  churner.join();
  // The models shared the process's budget: never more than it at once (the cores, or the widest
  // model's 3 threads where more).
  const ComputeBudget::Snapshot budget = ComputeBudget::process().snapshot();
  const int capacity = std::max(3, ComputeBudget::available_cores());
  CHECK(budget.peak <= capacity && budget.members == 0, "process budget: peak %d of %d, %d members left", budget.peak,
        capacity, budget.members);
  std::printf("models (%s): ok in %.1f s\n", isa_name(isa),
              std::chrono::duration<double>(Clock::now() - started).count());
}

}  // namespace
}  // namespace microgpt

int main(int argc, char** argv) {
  using namespace microgpt;
  std::vector<Isa> isas;
  for (int a = 1; a < argc; a++) {
    Isa isa = isa_best();
    if (std::strcmp(argv[a], "best") != 0 && (!isa_from_name(argv[a], &isa) || !isa_supported(isa))) {
      std::fprintf(stderr, "engine_stress: '%s' is not an instruction set this CPU and build run\n", argv[a]);
      return 2;
    }
    isas.push_back(isa);
  }
  if (isas.empty()) {
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
      if (isa_supported(isa)) isas.push_back(isa);
    }
  }
  test_compute_budget();
  test_thread_pool();
  for (Isa isa : isas) test_models(isa);
  std::printf("engine_stress: ok\n");
  return 0;
}
