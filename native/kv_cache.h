// A session's keys and values (KVCache), and the pool that hands a model's freed caches to its
// next sessions.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "buffer.h"
#include "config.h"
#include "cuda/api.h"
#include "kernels.h"

namespace microgpt {

// A CUDA model's cache on its device (cuda/api.h), freed through the module that made it; it may
// outlive its model (the module allows it).
struct DeviceCacheFree {
  microgpt_cuda_cache_free_fn free = nullptr;
  void operator()(MicrogptCudaCache* cache) const {
    if (free != nullptr) free(cache);
  }
};
using DeviceCache = std::unique_ptr<MicrogptCudaCache, DeviceCacheFree>;

// Keys and values of every layer at absolute positions 0..block_size-1; a sequence of length n
// uses positions 0..n-1. B = block_size, tiles = B / kKeyTile rounded up (kv_cache_tiles).
// A CUDA model's cache holds its keys and values on the device instead (`device`), and the two
// host buffers stay empty.
struct KVCache {
  FloatBuffer keys;    // (n_layer, tiles, C, kKeyTile): transposed in tiles of positions (kernels.h)
  FloatBuffer values;  // (n_layer, B, C)
  DeviceCache device;  // a CUDA model's, else null
};

inline int kv_cache_tiles(const Config& c) { return (c.block_size + kKeyTile - 1) / kKeyTile; }

// Freed KV caches of one model, kept for its next sessions. A fresh cache costs a page fault per
// 4 KB on first touch, and the kernel zeroes each page: a few percent of a full-block prefill
// (docs/native-measurements.md); a CUDA model's costs a device allocation. `cache_bytes` is the
// size of one cache: host bytes, or a CUDA model's device bytes.
// Every cache a model hands out has block_size rows; a shorter use touches, and so commits, only
// the first rows of each layer, so one size serves sessions and one-off passes alike. Holds at
// most kKeepBytes of caches (at least one); the rest are freed. Thread-safe.
class KVCachePool {
 public:
  static constexpr size_t kKeepBytes = size_t{64} << 20;
  explicit KVCachePool(size_t cache_bytes)
      : keep_(std::max<size_t>(1, kKeepBytes / std::max<size_t>(1, cache_bytes))), cache_bytes_(cache_bytes) {}
  // A cache from the pool, or null when it holds none.
  std::unique_ptr<KVCache> take();
  // Counts a cache made for this pool's model: one more that exists (see live_bytes).
  void made() { live_.fetch_add(1, std::memory_order_relaxed); }
  void give(std::unique_ptr<KVCache> cache);
  // The model is gone: free what is held, and free whatever comes back from now on.
  void close();
  // Bytes of this model's caches that exist: on loan or held here.
  size_t live_bytes() const { return live_.load(std::memory_order_relaxed) * cache_bytes_; }

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<KVCache>> free_;
  const size_t keep_;
  const size_t cache_bytes_;
  std::atomic<size_t> live_{0};
  bool open_ = true;
};

// A KV cache on loan from its model: dropping it hands it back to the model's pool (or frees it
// once the model is gone), on whichever thread drops it.
struct KVCacheReturn {
  std::shared_ptr<KVCachePool> pool;
  void operator()(KVCache* cache) const { pool->give(std::unique_ptr<KVCache>(cache)); }
};
using PooledKVCache = std::unique_ptr<KVCache, KVCacheReturn>;

// A new cache for `c`: block_size positions of every layer, uninitialised.
KVCache new_kv_cache(const Config& c);
// The bytes of such a cache.
size_t kv_cache_bytes(const Config& c);

}  // namespace microgpt
