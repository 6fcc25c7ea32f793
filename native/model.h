// A loaded model: what is configured (Config, config.h), what is learned (Weights, weights.h) and
// what is scratch (RunState, forward.h; KVCache, kv_cache.h), kept apart as in llama2.c. Weights
// belong to a Model and are shared by all its sessions; each session owns a KVCache; the scratch
// RunState belongs to the Model and is used by one batched forward pass at a time (Model::run).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "config.h"
#include "forward.h"
#include "kernels.h"
#include "kv_cache.h"
#include "thread_pool.h"
#include "weights.h"

namespace microgpt {

// What Model::run has done, for tests and diagnostics: proof that requests were batched.
struct BatchStats {
  uint64_t passes = 0;         // batched forward passes run
  uint64_t requests = 0;       // requests they served
  uint64_t decode_rows = 0;    // of which single-token steps (T = 1)
  uint64_t largest_batch = 0;  // most requests in one pass
  double busy_seconds = 0;     // time spent in passes (wall clock)
  uint64_t caches_allocated = 0;  // KV caches made (the others were reused from the pool)
};

class Model {
 public:
  // `tensors`: one pointer per tensor_layout(config) entry, in its order, each to that tensor's
  // size() floats; copied and packed here.
  // Throws std::invalid_argument when Precision::f16 is asked of weights beyond float16's range.
  Model(const Config& config, const std::vector<const float*>& tensors, Isa isa, int threads,
        Precision precision = Precision::f32);

  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Config& config() const { return config_; }
  const Kernels& kernels() const { return *kernels_; }
  int threads() const { return pool_.size(); }
  // The precision the matrices are kept in (f32 or f16, never automatic).
  Precision precision() const { return w_.f16 ? Precision::f16 : Precision::f32; }
  // Native memory the model holds: its weights and the KV caches it has made that still exist.
  // (Scratch is left out: it is committed only as passes use it.) Thread-safe.
  size_t memory_bytes() const {
    return w_.storage.size() * sizeof(float) + w_.half_storage.size() * sizeof(uint16_t) + cache_pool_->live_bytes();
  }

  // A cache for positions 0..block_size-1, reused from an earlier session where one was freed.
  // Its contents are stale: a pass reads positions below its request's start only, which that
  // request's cache owner wrote. Thread-safe.
  PooledKVCache kv_cache();

  // Most requests in one batched pass.
  static constexpr int kMaxBatch = 64;

  // Runs `requests` (which must fit their caches and blockSize) and returns when every one is
  // done, each with its error set or its logits written. Continuous batching: the requests join
  // a per-model queue, and whichever calling thread finds the model idle takes everything waiting
  // (up to kMaxBatch requests and block_size + kMaxBatch rows; a request for every position's
  // logits runs alone) into ONE forward pass over the weights, serving other callers' requests
  // too; a caller whose requests another thread served just returns. So the decode steps of
  // sessions in flight together share one stream of the weights instead of one each. Every row
  // is computed exactly as it would be alone (see forward()), so results do not depend on grouping.
  // The addon calls it from one thread per model (its Engine, addon_engine.h) with everything
  // queued at the time; any number of threads may call it (the tests and harnesses do).
  void run(ForwardRequest* const* requests, int n);

  BatchStats stats();

 private:
  Config config_;
  const Kernels* kernels_;
  Weights w_;
  ThreadPool pool_;
  RunState s_;
  int max_rows_;  // R: rows the RunState holds

  std::mutex queue_mutex_;
  std::condition_variable queue_changed_;  // a pass ended: callers look for their results or lead
  std::deque<ForwardRequest*> queue_;      // waiting, oldest first
  bool computing_ = false;                 // a pass is running (it owns pool_ and s_)
  BatchStats stats_;
  std::atomic<uint64_t> caches_allocated_{0};
  std::shared_ptr<KVCachePool> cache_pool_;  // shared with the caches on loan, which may outlive us
};

}  // namespace microgpt
