// The model: its weights, pool and scratch, and the queue that turns requests into batched passes.
#include "transformer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace microgpt {

Transformer::Transformer(const Config& config, const std::vector<const float*>& tensors, Isa isa, int threads,
                         Precision precision, bool profile, ComputeBudget& budget)
    : config_(config),
      kernels_(&kernels_for(isa)),
      w_(pack_weights(config, tensors, precision)),
      pool_(threads),
      budget_(std::make_unique<ComputeBudget::Member>(budget, pool_.size())),
      max_rows_(config.block_size + kMaxBatch),
      cache_pool_(std::make_shared<KVCachePool>(kv_cache_bytes(config))) {
  s_ = make_run_state(config, pool_.size(), max_rows_, kMaxBatch);
  // Profiling, for the kernel lab: every pass times its steps (a clock read each).
  s_.profile.on = profile;
  stats_.profiled = profile;
}

Transformer::Transformer(const Config& config, const std::vector<const float*>& tensors, const CudaApi& api,
                         const CudaOptions& options, Precision precision)
    : config_(config),
      kernels_(&kernels_ref()),
      pool_(1),
      cuda_(std::make_unique<CudaModel>(api, config, tensors, matrices_in_f16(config, tensors, precision), options,
                                        config.block_size + kMaxBatch, kMaxBatch)),
      max_rows_(config.block_size + kMaxBatch),
      cache_pool_(std::make_shared<KVCachePool>(cuda_->cache_bytes())) {
  w_.f16 = cuda_->f16();
  stats_.profiled = options.profile;
  stats_.device = cuda_->device();
  record_cuda_stats();
}

Transformer::~Transformer() { cache_pool_->close(); }

PooledKVCache Transformer::kv_cache() {
  std::unique_ptr<KVCache> cache = cache_pool_->take();
  if (!cache) {
    if (cuda_) {
      cache = std::make_unique<KVCache>();
      cache->device = cuda_->new_cache();
    } else {
      cache = std::make_unique<KVCache>(new_kv_cache(config_));
    }
    caches_allocated_.fetch_add(1, std::memory_order_relaxed);
    cache_pool_->made();
  }
  return PooledKVCache(cache.release(), KVCacheReturn{cache_pool_});
}

void Transformer::run(ForwardRequest* const* requests, int n) {
  for (int i = 0; i < n; i++) {
    const ForwardRequest& r = *requests[i];
    if (r.start < 0 || r.T < 1 || r.start + r.T > config_.block_size) {
      throw std::out_of_range("positions beyond blockSize");
    }
  }
  std::lock_guard<std::mutex> running(run_mutex_);
  for (int first = 0; first < n;) {
    // The next requests that fit one pass, in order. A request for every position's logits runs
    // alone: its output may be block_size rows of logits, written straight to its array.
    int count = 0, rows = 0, out_rows = 0;  // out_rows: the rows whose logits are wanted
    while (first + count < n && count < kMaxBatch) {
      const ForwardRequest& r = *requests[first + count];
      if (count > 0 && (r.all_positions || requests[first]->all_positions || rows + r.T > max_rows_)) break;
      rows += r.T;
      out_rows += r.all_positions ? r.T : 1;
      count++;
    }
    ForwardRequest* const* batch = requests + first;
    first += count;
    const auto started = std::chrono::steady_clock::now();
    PassOutcome pass;
    if (cuda_) {
      pass.error = cuda_->run(batch, count);
    } else {
      pass = cpu_pass(batch, count, rows, out_rows);
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
    passes_++;
    if (cuda_) record_cuda_stats();
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.busy_seconds += took.count();
    for (int i = 0; i < count; i++) {
      batch[i]->error = pass.error;
      if (batch[i]->T == 1) stats_.decode_rows++;
    }
    stats_.passes++;
    if (s_.profile.on) {
      for (int p = 0; p < kPhases; p++) stats_.phase_seconds[p] += s_.profile.seconds[p];
    }
    if (pass.shared) stats_.shared_passes++;
    stats_.widest_lease = std::max<uint64_t>(stats_.widest_lease, pass.width);
    stats_.requests += count;
    stats_.largest_batch = std::max<uint64_t>(stats_.largest_batch, count);
  }
}

// The CPU engine's pass: its threads leased from the budget, then forward().
Transformer::PassOutcome Transformer::cpu_pass(ForwardRequest* const* batch, int count, int rows, int out_rows) {
  // The pass's threads: its widest split, as far as the process's budget grants them; its
  // splits use no more (threads_for reads the pool's width).
  // The split rule rests on the pool's barrier, measured when the model was made. Measure it
  // again at passes 1, 2, 4, 8, ...: if a busy moment spoiled the first measurement, an early
  // pass corrects it; later ones cost nothing that shows (16 empty splits, rarer and rarer).
  // The measurement runs every thread of the pool, so it waits for a moment when the budget
  // grants all of them (it asks for them whatever the pass wants: a barrier measured far too
  // high keeps every pass narrow, and would never be corrected by a narrow pass's lease).
  const uint64_t number = passes_;
  if ((number & (number - 1)) == 0 && number > 0) calibration_due_ = true;
  pool_.set_width(pool_.size());
  if (calibration_due_ && pool_.size() > 1) {
    const ComputeBudget::Lease whole(*budget_, pool_.size());
    if (whole.width() == pool_.size() && !whole.shared()) {
      pool_.calibrate(16);
      calibration_due_ = false;
    }
  }
  const ComputeBudget::Lease lease(*budget_, pass_width(config_, pool_, rows, out_rows, w_.f16));
  pool_.set_width(lease.width());
  pool_.set_linger(!lease.shared());
  PassOutcome outcome;
  outcome.shared = lease.shared();
  outcome.width = lease.width();
  try {
    forward(config_, *kernels_, w_, pool_, s_, batch, count, rows);
  } catch (const std::bad_alloc&) {
    outcome.error = "out of memory in the native engine's forward pass";
  } catch (const std::exception& e) {
    outcome.error = std::string("the native forward pass failed: ") + e.what();
  }
  return outcome;
}

// A CUDA model's counters, read from the module between passes (never during one) and kept for
// stats(), which may be called at any time.
void Transformer::record_cuda_stats() {
  const MicrogptCudaStats c = cuda_->stats();
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_.device_bytes = c.device_bytes;
  stats_.graph_launches = c.graph_launches;
  stats_.graphs = c.graphs;
  stats_.selected_rows = c.selected_rows;
  if (stats_.profiled) {
    for (int p = 0; p < kPhases; p++) stats_.phase_seconds[p] = c.phase_seconds[p];
    stats_.host_seconds = c.host_seconds;
  }
}

BatchStats Transformer::stats() {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  BatchStats s = stats_;
  s.caches_allocated = caches_allocated_.load(std::memory_order_relaxed);
  if (cuda_) s.device_bytes += cache_pool_->live_bytes();
  return s;
}

}  // namespace microgpt
