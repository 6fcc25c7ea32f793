#include "kv_cache.h"

namespace microgpt {

namespace {
// A model's KV cache: block_size positions of every layer, keys in tiles (kernels.h).
struct KVCacheShape {
  size_t key_floats, value_floats;
};
KVCacheShape kv_cache_shape(const Config& c) {
  const size_t C = static_cast<size_t>(c.n_embd), L = static_cast<size_t>(c.n_layer);
  return {L * kv_cache_tiles(c) * C * kKeyTile, L * c.block_size * C};
}
}  // namespace

KVCache new_kv_cache(const Config& c) {
  const KVCacheShape s = kv_cache_shape(c);
  return KVCache{FloatBuffer(s.key_floats), FloatBuffer(s.value_floats), DeviceCache()};
}

size_t kv_cache_bytes(const Config& c) {
  const KVCacheShape s = kv_cache_shape(c);
  return (s.key_floats + s.value_floats) * sizeof(float);
}

std::unique_ptr<KVCache> KVCachePool::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_.empty()) return nullptr;
  std::unique_ptr<KVCache> cache = std::move(free_.back());
  free_.pop_back();
  return cache;
}

void KVCachePool::give(std::unique_ptr<KVCache> cache) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (open_ && free_.size() < keep_) {
      free_.push_back(std::move(cache));
      return;
    }
  }
  cache.reset();
  live_.fetch_sub(1, std::memory_order_relaxed);
}

void KVCachePool::close() {
  std::vector<std::unique_ptr<KVCache>> held;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = false;
    held.swap(free_);
  }
  live_.fetch_sub(held.size(), std::memory_order_relaxed);
}

}  // namespace microgpt
