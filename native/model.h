// The model: what is configured (Config), what is learned (Weights), and what is scratch
// (RunState, KVCache), kept apart as in llama2.c. Weights belong to a Model and are shared by
// all its sessions; each session owns a KVCache; the scratch RunState belongs to the Model and
// is used by one batched forward pass at a time (Model::run).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "kernels.h"
#include "thread_pool.h"

namespace microgpt {

struct Config {
  int vocab_size = 0;
  int block_size = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;  // C
  bool bias = false;
};

// Bounds on a config, so that a small hostile or mistyped file cannot ask for absurd memory or
// compute: what nanoGPT-class models need, with room (gpt2-xl is 48 layers, 25 heads, 1600 wide,
// block 1024). The same table as lib/config.ts's CONFIG_LIMITS: the addon exports it as
// `configLimits`, and a test holds the two equal; check_config() applies it. At these limits
// every count the engine computes fits its type: sizes and offsets of tensors, caches and scratch
// are size_t, and what stays int (C, 4C, vocab_size, positions, panels) is below 2^31.
struct ConfigLimits {
  static constexpr int64_t vocab_size = 1114112;  // every Unicode code point
  static constexpr int64_t block_size = 4096;
  static constexpr int64_t n_layer = 64;
  static constexpr int64_t n_head = 64;
  static constexpr int64_t n_embd = 8192;
  static constexpr int64_t head_size = 512;  // n_embd / n_head
  // Float32 parameters (the tied lm_head counted once): keeps every tensor index inside a JS
  // number and a Float32Array.
  static constexpr int64_t parameters = int64_t{1} << 31;
  // n_layer * block_size * n_embd: a full KV cache holds twice this many floats (2 GiB at the
  // limit), whatever the size of the file.
  static constexpr int64_t layer_position_width = int64_t{1} << 28;
  // n_layer * n_head * block_size^2: the attention scores of a full-window pass, the one cost
  // that does not grow with the weights.
  static constexpr int64_t attention_scores = int64_t{1} << 32;
};

// Memory for an AlignedBuffer: `bytes` aligned to `align` (64, or 2 MB for huge pages). Buffers
// of 64 KB or more come straight from the OS (mmap, where there is one) and go straight back to it
// when freed. Through malloc, freed weights and caches stayed in its heaps: a test that loads and
// disposes 50 small models with sessions kept ~50 MB more resident than before, where a user
// disposing a model expects the memory gone.
void* allocate_buffer(size_t bytes, size_t align);
void free_buffer(void* p, size_t bytes, size_t align);

// Asks the OS to back [p, p + bytes) with huge pages where it can (Linux: madvise; elsewhere a
// no-op). p is 2 MB aligned.
void advise_huge_pages(void* p, size_t bytes);

// 64-byte aligned storage, uninitialised: every user writes before it reads (the KV cache up to
// its length, scratch per pass), so no page is touched before it is needed.
// With `huge` (the weights), a buffer of 4 MB or more is 2 MB aligned and asked for huge pages: a
// decode step streams every weight once, and with 4 KB pages it also walks a page table entry
// per 4 KB (measured on the 2-vCPU VM: batch-8 decode of char-10M 1.62 -> 1.48 ms per pass).
// Not for KV caches: a short sequence touches the start of each layer's cache only, and a huge
// page would commit 2 MB for each such touch.
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n, bool huge = false)
      : data_(nullptr, Free{n * sizeof(T), alignment(n * sizeof(T), huge)}), size_(n) {
    if (n == 0) return;
    const size_t bytes = n * sizeof(T);
    data_.reset(static_cast<T*>(allocate_buffer(bytes, alignment(bytes, huge))));
    if (alignment(bytes, huge) == kHugePage) advise_huge_pages(data_.get(), bytes);
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static size_t alignment(size_t bytes, bool huge) { return huge && bytes >= 2 * kHugePage ? kHugePage : 64; }
  struct Free {
    size_t bytes = 0;
    size_t align = 64;
    void operator()(T* p) const { free_buffer(p, bytes, align); }
  };
  std::unique_ptr<T[], Free> data_{nullptr, Free{}};
  size_t size_ = 0;
};
using FloatBuffer = AlignedBuffer<float>;
using HalfBuffer = AlignedBuffer<uint16_t>;  // IEEE float16 bits

// What each learned tensor is. The layout table (tensor_layout) gives every tensor of a config
// its nanoGPT state_dict name, its shape and its role, in state_dict order: the one definition the
// binding checks the hand-over against (by name and shape) and the packing reads. lib/weights.ts's
// tensorLayout is the same table; the addon exports this one (`tensorLayout`) and a test holds the
// two equal.
enum class TensorRole {
  wte, wpe,
  ln1_weight, ln1_bias, attn_weight, attn_bias, attn_proj_weight, attn_proj_bias,
  ln2_weight, ln2_bias, mlp_fc_weight, mlp_fc_bias, mlp_proj_weight, mlp_proj_bias,
  lnf_weight, lnf_bias,
};

struct TensorSpec {
  std::string name;          // nanoGPT's state_dict key, e.g. "transformer.h.0.mlp.c_fc.weight"
  std::vector<int> shape;    // PyTorch's layout: a Linear weight is (out_features, in_features)
  TensorRole role;
  int layer;                 // its transformer block, or -1
  size_t size() const {
    size_t n = 1;
    for (int d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  // A Linear weight, packed into panels at load.
  bool is_linear() const {
    return role == TensorRole::attn_weight || role == TensorRole::attn_proj_weight ||
           role == TensorRole::mlp_fc_weight || role == TensorRole::mlp_proj_weight;
  }
  // What Precision::f16 keeps in float16: the Linear weights and wte (also the tied lm_head).
  bool is_matrix() const { return is_linear() || role == TensorRole::wte; }
};

// How a Model keeps its matrices (wte, which is also the tied lm_head, and every Linear weight);
// wpe, LayerNorms and biases stay float32, and all arithmetic is float32 either way.
enum class Precision {
  f32,    // as given
  f16,    // rounded to float16: half the bytes a decode step streams; logits move slightly
  automatic,  // f16 when that changes no weight (float16 checkpoints), else f32
};

struct LayerWeights {
  const float* ln1_weight = nullptr;       // (C)
  const float* ln1_bias = nullptr;         // (C) or null
  PackedLinear attn_weight;                // (3C, C); output rows are q, then k, then v
  const float* attn_bias = nullptr;        // (3C) or null
  PackedLinear attn_proj_weight;           // (C, C)
  const float* attn_proj_bias = nullptr;   // (C) or null
  const float* ln2_weight = nullptr;       // (C)
  const float* ln2_bias = nullptr;         // (C) or null
  PackedLinear mlp_fc_weight;              // (4C, C)
  const float* mlp_fc_bias = nullptr;      // (4C) or null
  PackedLinear mlp_proj_weight;            // (C, 4C)
  const float* mlp_proj_bias = nullptr;    // (C) or null
};

struct Weights {
  FloatBuffer storage;            // every float32 tensor below, in one allocation
  HalfBuffer half_storage;        // the packed matrices instead, when kept in float16
  bool f16 = false;
  const float* wte = nullptr;     // (vocab_size, C) row-major: the token embedding
  PackedLinear lm_head;           // (vocab_size, C): the same matrix, tied, for the logits
  const float* wpe = nullptr;     // (block_size, C)
  std::vector<LayerWeights> layers;  // (n_layer)
  const float* lnf_weight = nullptr;  // (C)
  const float* lnf_bias = nullptr;    // (C) or null
};

// Activations of one batched forward pass of up to R = block_size + kMaxBatch rows (one full
// prefill and a batch of decode steps), rows of several sequences stacked.
struct RunState {
  FloatBuffer x;       // (R, C) the residual stream
  FloatBuffer xn;      // (R, C) LayerNorm output
  FloatBuffer qkv;     // (R, 3C) queries, keys, values of the new tokens
  FloatBuffer att;     // (R, C) attention output, heads side by side
  FloatBuffer hidden;  // (R, 4C) the MLP's hidden layer, after GELU
  FloatBuffer scores;  // (threads, kAttentionRows * block_size) attention scores, a block per thread
  FloatBuffer logits;  // (kMaxBatch, vocab_size) last-position logits of a batch of sequences
};

// Keys and values of every layer at absolute positions 0..length-1, for up to `rows` positions
// (block_size for a session; T for a one-off forward pass).
struct KVCache {
  FloatBuffer keys;    // (n_layer, tiles, C, kKeyTile): transposed in tiles of positions (kernels.h)
  FloatBuffer values;  // (n_layer, rows, C)
  int rows = 0;
  int tiles = 0;       // rows / kKeyTile, rounded up
};

// Freed KV caches of one model, kept for its next sessions. A fresh cache costs a page fault per
// 4 KB on first touch, and the kernel zeroes each page: 1.5 us per page on the 2-vCPU VM, so a
// full-block char-10M prefill spent 5-8 % of its time (1,164 faults) inside its fresh cache.
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

// One forward pass asked of the model: ids (T) at positions start..start+T-1 of `cache`
// (start + T <= cache->rows), extending it. The logits of every position (T, vocab_size) when
// all_positions, else of the last one (vocab_size), go to `logits`.
struct ForwardRequest {
  KVCache* cache;
  int start;
  const int* ids;
  int T;
  float* logits;
  bool all_positions;
  std::string error;  // why the pass failed; empty when it ran
  bool done = false;  // guarded by the model's queue mutex
};

// What Model::run has done, for tests and diagnostics: proof that requests were batched.
struct BatchStats {
  uint64_t passes = 0;         // batched forward passes run
  uint64_t requests = 0;       // requests they served
  uint64_t decode_rows = 0;    // of which single-token steps (T = 1)
  uint64_t largest_batch = 0;  // most requests in one pass
  double busy_seconds = 0;     // time spent in passes (wall clock)
  uint64_t caches_allocated = 0;  // KV caches made (the others were reused from the pool)
};

// Every tensor of `c` in state_dict order (biases only when c.bias). `c` must pass check_config.
std::vector<TensorSpec> tensor_layout(const Config& c);
// Why the engine cannot run `c` (a size not positive or beyond ConfigLimits, C not a multiple of
// n_head, ...), in one sentence naming the field; empty when it can.
std::string check_config(const Config& c);
// Float32 parameters of `c`, the tied lm_head counted once (lib/config.ts: parameterCount).
uint64_t parameter_count(const Config& c);

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
  // is computed exactly as it would be alone (see pass()), so results do not depend on grouping.
  // The addon calls it from one thread per model (its Engine, addon_engine.h) with everything
  // queued at the time; any number of threads may call it (the tests and harnesses do).
  void run(ForwardRequest* const* requests, int n);

  BatchStats stats();

 private:
  // One forward pass over the rows of `batch` (n requests, `rows` tokens in all).
  void pass(ForwardRequest* const* batch, int n, int rows);
  KVCache new_kv_cache() const;

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
