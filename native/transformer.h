// The engine's model (Transformer): what is configured (Config, config.h), what is learned
// (Weights, weights.h) and what is scratch (RunState, forward.h; KVCache, kv_cache.h), kept apart
// as in llama2.c. Weights belong to a Transformer and are shared by all its sessions; each session
// owns a KVCache; the scratch RunState belongs to the Transformer and is used by one batched
// forward pass at a time (Transformer::run).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "compute_budget.h"
#include "config.h"
#include "cuda_model.h"
#include "forward.h"
#include "kernels.h"
#include "kv_cache.h"
#include "thread_pool.h"
#include "weights.h"

namespace microgpt {

// What Transformer::run has done, for tests and diagnostics: proof that requests were batched.
struct BatchStats {
  uint64_t passes = 0;         // batched forward passes run
  uint64_t requests = 0;       // requests they served
  uint64_t decode_rows = 0;    // of which single-token steps (T = 1)
  uint64_t largest_batch = 0;  // most requests in one pass
  double busy_seconds = 0;     // time spent in passes (wall clock)
  uint64_t shared_passes = 0;  // passes run while another model was active (a share of the budget)
  uint64_t widest_lease = 0;   // the most threads a pass was granted
  bool profiled = false;       // whether phase_seconds is kept (MICROGPT_PROFILE=1 at load)
  double phase_seconds[kPhases] = {};  // time in each step of the passes (forward.h's Phase)
  uint64_t caches_allocated = 0;  // KV caches made (the others were reused from the pool)
  // A CUDA model's (device >= 0): its device bytes (weights, scratch, graphs and the KV caches
  // that exist), decode passes replayed from a CUDA graph, graphs captured, and when profiled,
  // host seconds of the passes outside the kernels (phase_seconds is then device time).
  int device = -1;
  uint64_t device_bytes = 0;
  uint64_t graph_launches = 0;
  uint64_t graphs = 0;
  uint64_t selected_rows = 0;  // rows whose top-k candidates came back instead of their logits
  double host_seconds = 0;
};

class Transformer {
 public:
  // `tensors`: one pointer per tensor_layout(config) entry, in its order, each to that tensor's
  // size() floats; copied and packed here.
  // Throws std::invalid_argument when Precision::f16 is asked of weights beyond float16's range.
  // `threads`: the most a pass uses; passes lease theirs from `budget` (compute_budget.h).
  // `profile`: every pass times its steps (BatchStats::phase_seconds).
  Transformer(const Config& config, const std::vector<const float*>& tensors, Isa isa, int threads,
              Precision precision = Precision::f32, bool profile = false,
              ComputeBudget& budget = ComputeBudget::process());
  // The CUDA engine's model: the weights go to `options.device` through `api` (nothing is packed
  // or kept on the host), each cache lives on the device, and every pass is the module's
  // (CudaModel::run) instead of forward(). Its pool is the calling thread alone, and its passes
  // lease nothing from the compute budget: they wait on the device, they do not compute.
  // Throws CudaLoadError when the module refuses the model (out of device memory), and
  // std::invalid_argument as the CPU constructor does.
  Transformer(const Config& config, const std::vector<const float*>& tensors, const CudaApi& api,
              const CudaOptions& options, Precision precision = Precision::f32);

  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const Config& config() const { return config_; }
  const Kernels& kernels() const { return *kernels_; }
  int threads() const { return pool_.size(); }
  // The CUDA device the model runs on, or -1 for the CPU engine.
  int device() const { return cuda_ ? cuda_->device() : -1; }
  // The precision the matrices are kept in (f32 or f16, never automatic).
  Precision precision() const { return w_.f16 ? Precision::f16 : Precision::f32; }
  // Native memory the model holds: its weights and the KV caches it has made that still exist.
  // (Scratch is left out: it is committed only as passes use it.) Host memory only: a CUDA
  // model's weights and caches are on its device (BatchStats::device_bytes). Thread-safe.
  size_t memory_bytes() const {
    return w_.storage.size() * sizeof(float) + w_.half_storage.size() * sizeof(uint16_t) +
           (cuda_ ? 0 : cache_pool_->live_bytes());
  }

  // A cache for positions 0..block_size-1, reused from an earlier session where one was freed.
  // Its contents are stale: a pass reads positions below its request's start only, which that
  // request's cache owner wrote. Thread-safe.
  PooledKVCache kv_cache();

  // Most requests in one batched pass.
  static constexpr int kMaxBatch = 64;

  // Runs `requests` (each within blockSize) in order, as few batched passes as fit (up to
  // kMaxBatch requests and block_size + kMaxBatch rows each; a request for every position's
  // logits runs alone), and returns when each has its logits written or its error set. A pass
  // stacks the rows of all its requests, so the matmuls stream the weights once for all of them;
  // every row is computed exactly as it would be alone (see forward()), so results do not depend
  // on grouping. Batching happens upstream: the addon's Engine (addon_engine.h) hands over every
  // request waiting when it is free. One call at a time: a second caller waits for the first.
  void run(ForwardRequest* const* requests, int n);

  BatchStats stats();

 private:
  // What one pass did, for the stats.
  struct PassOutcome {
    std::string error;
    bool shared = false;  // the CPU pass's lease was a share of the budget
    int width = 0;        // the CPU pass's threads
  };
  PassOutcome cpu_pass(ForwardRequest* const* batch, int count, int rows, int out_rows);
  void record_cuda_stats();

  Config config_;
  const Kernels* kernels_;
  Weights w_;  // the CPU engine's (a CUDA model's are on its device: only w_.f16 is set)
  ThreadPool pool_;
  std::unique_ptr<ComputeBudget::Member> budget_;  // each CPU pass leases its threads from the process's budget
  std::unique_ptr<CudaModel> cuda_;  // the CUDA engine's model, else null
  RunState s_;
  int max_rows_;  // R: rows the RunState holds (a CUDA model's scratch is on the device)

  std::mutex run_mutex_;    // held by run(): one caller at a time owns pool_ and s_
  uint64_t passes_ = 0;     // passes run (under run_mutex_)
  bool calibration_due_ = false;  // the barrier is to be measured again at the next full-width pass
  std::mutex stats_mutex_;  // guards stats_, which stats() reads during a pass
  BatchStats stats_;
  std::atomic<uint64_t> caches_allocated_{0};
  std::shared_ptr<KVCachePool> cache_pool_;  // shared with the caches on loan, which may outlive us
};

}  // namespace microgpt
