// The nanoGPT forward pass, one function per layer, on the kernels of one instruction set.
#include "model.h"

#include "layers.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

// Under AddressSanitizer big buffers come from operator new too: an overrun past a mapping's end
// would otherwise go unseen.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MICROGPT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MICROGPT_ASAN 1
#endif

#if (defined(__unix__) || defined(__APPLE__)) && !defined(MICROGPT_ASAN)
#include <sys/mman.h>
#include <unistd.h>
#define MICROGPT_HAVE_MMAP 1
#endif

namespace microgpt {

namespace {
constexpr size_t kMapBytes = size_t{64} << 10;

#if defined(MICROGPT_HAVE_MMAP)
size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
#endif
}  // namespace

void* allocate_buffer(size_t bytes, size_t align) {
#if defined(MICROGPT_HAVE_MMAP)
  if (bytes >= kMapBytes) {
    // mmap gives page alignment; for more, map `align` extra and unmap what lies outside.
    const size_t page = page_size();
    const size_t extra = align > page ? align : 0;
    const size_t mapped = round_up(bytes, page) + extra;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t start = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = extra ? round_up(start, align) : start;
    const uintptr_t end = aligned + round_up(bytes, page);
    if (aligned > start) munmap(p, aligned - start);
    if (start + mapped > end) munmap(reinterpret_cast<void*>(end), start + mapped - end);
    return reinterpret_cast<void*>(aligned);
  }
#endif
  return ::operator new[](bytes, std::align_val_t(align));
}

void free_buffer(void* p, size_t bytes, size_t align) {
#if defined(MICROGPT_HAVE_MMAP)
  if (bytes >= kMapBytes) {
    munmap(p, round_up(bytes, page_size()));
    return;
  }
#endif
  ::operator delete[](p, std::align_val_t(align));
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without transparent huge pages nothing changes
#else
  (void)p;
  (void)bytes;
#endif
}

std::vector<TensorSpec> tensor_layout(const Config& c) {
  using R = TensorRole;
  const int C = c.n_embd;
  // A block's tensors: name, role, shape, and whether it is a bias (absent without c.bias).
  struct Entry {
    const char* name;
    TensorRole role;
    std::vector<int> shape;
    bool bias;
  };
  const Entry block[] = {
      {"ln_1.weight", R::ln1_weight, {C}, false},
      {"ln_1.bias", R::ln1_bias, {C}, true},
      {"attn.c_attn.weight", R::attn_weight, {3 * C, C}, false},
      {"attn.c_attn.bias", R::attn_bias, {3 * C}, true},
      {"attn.c_proj.weight", R::attn_proj_weight, {C, C}, false},
      {"attn.c_proj.bias", R::attn_proj_bias, {C}, true},
      {"ln_2.weight", R::ln2_weight, {C}, false},
      {"ln_2.bias", R::ln2_bias, {C}, true},
      {"mlp.c_fc.weight", R::mlp_fc_weight, {4 * C, C}, false},
      {"mlp.c_fc.bias", R::mlp_fc_bias, {4 * C}, true},
      {"mlp.c_proj.weight", R::mlp_proj_weight, {C, 4 * C}, false},
      {"mlp.c_proj.bias", R::mlp_proj_bias, {C}, true},
  };
  std::vector<TensorSpec> out;
  out.push_back({"transformer.wte.weight", {c.vocab_size, C}, R::wte, -1});
  out.push_back({"transformer.wpe.weight", {c.block_size, C}, R::wpe, -1});
  for (int l = 0; l < c.n_layer; l++) {
    for (const Entry& e : block) {
      if (e.bias && !c.bias) continue;
      out.push_back({"transformer.h." + std::to_string(l) + "." + e.name, e.shape, e.role, l});
    }
  }
  out.push_back({"transformer.ln_f.weight", {C}, R::lnf_weight, -1});
  if (c.bias) out.push_back({"transformer.ln_f.bias", {C}, R::lnf_bias, -1});
  return out;
}

uint64_t parameter_count(const Config& c) {
  uint64_t n = 0;
  for (const TensorSpec& t : tensor_layout(c)) n += t.size();
  return n;  // wte once: the lm_head is tied to it
}

std::string check_config(const Config& c) {
  struct Field {
    const char* name;
    int value;
    int64_t limit;
  };
  const Field fields[] = {{"vocabSize", c.vocab_size, ConfigLimits::vocab_size},
                          {"blockSize", c.block_size, ConfigLimits::block_size},
                          {"nLayer", c.n_layer, ConfigLimits::n_layer},
                          {"nHead", c.n_head, ConfigLimits::n_head},
                          {"nEmbd", c.n_embd, ConfigLimits::n_embd}};
  for (const Field& f : fields) {
    if (f.value < 1 || f.value > f.limit) {
      return std::string(f.name) + " must be an integer from 1 to " + std::to_string(f.limit) + ", got " +
             std::to_string(f.value);
    }
  }
  if (c.n_embd % c.n_head != 0) {
    return "nEmbd (" + std::to_string(c.n_embd) + ") must be a multiple of nHead (" + std::to_string(c.n_head) + ")";
  }
  if (c.n_embd / c.n_head > ConfigLimits::head_size) {
    return "head size nEmbd / nHead (" + std::to_string(c.n_embd / c.n_head) + ") must be at most " +
           std::to_string(ConfigLimits::head_size);
  }
  const int64_t width = static_cast<int64_t>(c.n_layer) * c.block_size * c.n_embd;
  if (width > ConfigLimits::layer_position_width) {
    return "nLayer x blockSize x nEmbd (" + std::to_string(width) + ") must be at most " +
           std::to_string(ConfigLimits::layer_position_width) + " (a session's KV cache holds twice that many floats)";
  }
  const int64_t scores = static_cast<int64_t>(c.n_layer) * c.n_head * c.block_size * c.block_size;
  if (scores > ConfigLimits::attention_scores) {
    return "nLayer x nHead x blockSize^2 (" + std::to_string(scores) + ") must be at most " +
           std::to_string(ConfigLimits::attention_scores) + " (the attention scores of a full-window pass)";
  }
  const uint64_t parameters = parameter_count(c);
  if (parameters > static_cast<uint64_t>(ConfigLimits::parameters)) {
    return std::to_string(parameters) + " parameters is more than microgpt supports (" +
           std::to_string(ConfigLimits::parameters) + ")";
  }
  return "";
}

namespace {

// A split is worth it when each thread's share takes well over the pool's barrier: at a decode
// GEMV's ~5 multiply-adds per ns, 100k multiply-adds per microsecond of barrier keeps the barrier
// under ~5% of the step. Inside a pass the workers spin (ThreadPool::Busy), so the barrier is well
// under a microsecond where each thread has a core and the 64k floor decides: a decode step's
// matmuls split, its LayerNorms do not. With more threads than free cores the barrier grows and
// small steps stay on fewer threads.
double min_work_per_thread(const ThreadPool& pool) {
  // The barrier of the whole pool grows with its size (0.7 us for 2 threads, 5 us for 16 on a
  // 16-core VM); a split into n costs about n of its per-thread shares.
  const double work = pool.barrier_seconds() / pool.size() * 1e6 * 100e3;
  return std::min(4e6, std::max(64e3, work));
}

int threads_for(const ThreadPool& pool, double work, int max_split) {
  const int by_work = static_cast<int>(work / min_work_per_thread(pool));
  return std::max(1, std::min({pool.size(), by_work, max_split}));
}

// fn(begin, end, thread) over [0, items) in chunks of `chunk`, each handed to whichever of the
// `threads` threads asks next, not in fixed shares: where vCPUs are time-shared, a thread that is
// descheduled mid-pass holds up only the chunk it is on while the others take the rest. Who
// computes a chunk never changes its result.
template <typename Fn>
void parallel_chunks(ThreadPool& pool, int threads, int items, int chunk, const Fn& fn) {
  if (threads <= 1) {
    fn(0, items, 0);
    return;
  }
  std::atomic<int> next{0};
  pool.run(threads, [&](int i) {
    for (;;) {
      const int begin = next.fetch_add(chunk, std::memory_order_relaxed);
      if (begin >= items) return;
      fn(begin, std::min(items, begin + chunk), i);
    }
  });
}

// A model's KV cache: block_size positions of every layer, keys in tiles (kernels.h).
struct KVCacheShape {
  int rows, tiles;
  size_t key_floats, value_floats;
};
KVCacheShape kv_cache_shape(const Config& c) {
  const int tiles = (c.block_size + kKeyTile - 1) / kKeyTile;
  const size_t C = static_cast<size_t>(c.n_embd), L = static_cast<size_t>(c.n_layer);
  return {c.block_size, tiles, L * tiles * C * kKeyTile, L * c.block_size * C};
}

}  // namespace

// ---- the layers -------------------------------------------------------------------------------

// x (T, C) = wte[ids[t]] + wpe[start + t]: token plus position embedding, the residual stream.
void embedding(float* x, const int* ids, const float* wte, const float* wpe, int start, int T, int C) {
  for (int t = 0; t < T; t++) {
    const float* tok = wte + static_cast<size_t>(ids[t]) * C;
    const float* pos = wpe + static_cast<size_t>(start + t) * C;
    float* xt = x + static_cast<size_t>(t) * C;
    for (int i = 0; i < C; i++) xt[i] = tok[i] + pos[i];
  }
}

// out (T, C) = LayerNorm(x (T, C)) * w + b, rows split across threads.
void layernorm(ThreadPool& pool, const Kernels& k, float* out, const float* x, const float* w, const float* b, int T,
               int C) {
  const int n = threads_for(pool, 4.0 * T * C, T);
  pool.run(n, [&](int i) {
    const int t0 = T * i / n, t1 = T * (i + 1) / n;
    k.layernorm(out + static_cast<size_t>(t0) * C, x + static_cast<size_t>(t0) * C, w, b, t1 - t0, C);
  });
}

// out (T, N) = epilogue(x (T, K) · W^T + b), W (N, K) packed in either precision; threads take
// whole panels of output features, so every output is computed the same way whatever the
// thread count.
void matmul(ThreadPool& pool, const Kernels& k, float* out, const float* x, const PackedLinear& w, const float* b,
            int T, int K, int N, Epilogue epilogue) {
  const int panels = panel_count(N);
  const int n = threads_for(pool, static_cast<double>(T) * K * N, panels);
  // About four chunks per thread: fine enough to rebalance, coarse enough for the kernels' tiles.
  parallel_chunks(pool, n, panels, std::max(1, panels / (4 * n)), [&](int p0, int p1, int) {
    if (w.f16) {
      k.matmul_f16(out, x, w.f16, b, T, K, N, p0, p1, epilogue);
    } else {
      k.matmul(out, x, w.f32, b, T, K, N, p0, p1, epilogue);
    }
  });
}

AttentionBlocks attention_blocks(const AttentionRun* runs, int n_runs, int R, int C) {
  AttentionBlocks b;
  for (int i = 0; i < n_runs; i++) {
    const AttentionRun& r = runs[i];
    for (int t = 0; t < r.T; t += R) {
      b.run.push_back(i);
      b.row.push_back(r.row + t);
    }
    for (int t = 0; t < r.T; t++) b.work += 2.0 * (r.start + t + 1) * C;
  }
  b.row.push_back(n_runs == 0 ? 0 : runs[n_runs - 1].row + runs[n_runs - 1].T);
  return b;
}

// Consecutive rows of one sequence go to the kernel in blocks of up to k.attention_rows queries;
// a row's result does not depend on its block.
void attention(ThreadPool& pool, const Kernels& k, float* att, const float* qkv, const AttentionRun* runs, int n_runs,
               const AttentionBlocks& blocks, float* scores, int C, int n_head, int block_size) {
  const size_t tile_stride = static_cast<size_t>(C) * kKeyTile;
  for (int i = 0; i < n_runs; i++) {
    const AttentionRun& r = runs[i];
    // Keys transposed, up to kKeyTile positions (one tile) at a time, a channel at a time: each
    // line is written whole, and the tile's rows of qkv stay in L1 across the channels.
    for (int a = 0; a < r.T;) {
      const int p = r.start + a;
      const int b = std::min(r.T, a + kKeyTile - p % kKeyTile);  // to the end of p's tile
      float* dst = r.keys + (p / kKeyTile) * tile_stride + p % kKeyTile;
      for (int c = 0; c < C; c++, dst += kKeyTile) {
        const float* src = qkv + static_cast<size_t>(r.row + a) * 3 * C + C + c;
        for (int t = 0; t < b - a; t++) dst[t] = src[static_cast<size_t>(t) * 3 * C];
      }
      a = b;
    }
    for (int t = 0; t < r.T; t++) {
      std::memcpy(r.values + static_cast<size_t>(r.start + t) * C, qkv + static_cast<size_t>(r.row + t) * 3 * C + 2 * C,
                  C * sizeof(float));
    }
  }
  const int hs = C / n_head;
  const int tasks = static_cast<int>(blocks.run.size()) * n_head;
  const int n = threads_for(pool, blocks.work, tasks);
  // One (block, head) at a time, in order: the causal triangle's long blocks come last, and the
  // threads share them as they come.
  parallel_chunks(pool, n, tasks, 1, [&](int begin, int end, int i) {
    float* s = scores + static_cast<size_t>(i) * kAttentionRows * block_size;
    for (int task = begin; task < end; task++) {
      const int b = task / n_head, h = task % n_head;
      const AttentionRun& r = runs[blocks.run[b]];
      const int t0 = blocks.row[b], R = blocks.row[b + 1] - t0;
      const size_t off = static_cast<size_t>(h) * hs;
      k.attention(att + static_cast<size_t>(t0) * C + off, C, qkv + static_cast<size_t>(t0) * 3 * C + off, 3 * C, R,
                  r.start + (t0 - r.row), r.keys + off * kKeyTile, static_cast<int>(tile_stride), r.values + off, C,
                  hs, s);
    }
  });
}


// ---- the model --------------------------------------------------------------------------------

Model::Model(const Config& config, const std::vector<const float*>& tensors, Isa isa, int threads, Precision precision)
    : config_(config), kernels_(&kernels_for(isa)), pool_(threads) {
  const std::vector<TensorSpec> layout = tensor_layout(config);
  if (tensors.size() != layout.size()) throw std::invalid_argument("wrong number of tensors");
  for (const float* t : tensors) {
    if (t == nullptr) throw std::invalid_argument("missing tensor");
  }
  const int C = config.n_embd;
  const int V = config.vocab_size;
  const int B = config.block_size;

  bool f16 = precision == Precision::f16;
  if (precision == Precision::automatic) {
    f16 = true;
    for (size_t i = 0; i < layout.size() && f16; i++) {
      if (layout[i].is_matrix()) f16 = f16_exact(tensors[i], layout[i].size());
    }
  } else if (f16) {
    for (size_t i = 0; i < layout.size(); i++) {
      if (!layout[i].is_matrix()) continue;
      for (size_t j = 0; j < layout[i].size(); j++) {
        if (!(std::fabs(tensors[i][j]) < 65520.0f)) {
          throw std::invalid_argument("a weight is beyond float16's range (|w| >= 65520, or not finite): keep this model in float32");
        }
      }
    }
  }
  w_.f16 = f16;

  // Float32 tensors in one allocation (plain ones at their size, Linear weights packed unless in
  // float16), float16 panels in another; every tensor 64-byte aligned.
  auto rounded = [](size_t n) { return (n + 31) / 32 * 32; };
  std::vector<size_t> offsets(layout.size());
  size_t total = 0, half_total = 0;
  for (size_t i = 0; i < layout.size(); i++) {
    const TensorSpec& t = layout[i];
    if (!t.is_linear()) {
      offsets[i] = total;
      total += rounded(t.size());
    } else if (f16) {
      offsets[i] = half_total;
      half_total += rounded(packed_size(t.shape[0], t.shape[1]));
    } else {
      offsets[i] = total;
      total += rounded(packed_size(t.shape[0], t.shape[1]));
    }
  }
  const size_t lm_head_offset = f16 ? half_total : total;
  (f16 ? half_total : total) += rounded(packed_size(V, C));
  w_.storage = FloatBuffer(total, /*huge=*/true);
  float* base = w_.storage.data();
  uint16_t* half = nullptr;
  if (f16) {
    w_.half_storage = HalfBuffer(half_total, /*huge=*/true);
    half = w_.half_storage.data();
  }
  auto packed = [&](size_t offset) {
    PackedLinear l;
    if (f16) {
      l.f16 = half + offset;
    } else {
      l.f32 = base + offset;
    }
    return l;
  };
  w_.layers.assign(static_cast<size_t>(config.n_layer), LayerWeights{});
  for (size_t i = 0; i < layout.size(); i++) {
    const TensorSpec& t = layout[i];
    if (t.is_linear()) {
      if (f16) {
        pack_linear_f16(half + offsets[i], tensors[i], t.shape[0], t.shape[1]);
      } else {
        pack_linear(base + offsets[i], tensors[i], t.shape[0], t.shape[1]);
      }
    } else if (f16 && t.role == TensorRole::wte) {
      // The embedding rows hold the same float16 values as the lm_head panels.
      for (size_t j = 0; j < t.size(); j++) base[offsets[i] + j] = f16_to_f32(f32_to_f16(tensors[i][j]));
    } else {
      std::memcpy(base + offsets[i], tensors[i], t.size() * sizeof(float));
    }
    const float* at = base + offsets[i];
    LayerWeights* lw = t.layer >= 0 ? &w_.layers[static_cast<size_t>(t.layer)] : nullptr;
    switch (t.role) {
      case TensorRole::wte: w_.wte = at; break;
      case TensorRole::wpe: w_.wpe = at; break;
      case TensorRole::lnf_weight: w_.lnf_weight = at; break;
      case TensorRole::lnf_bias: w_.lnf_bias = at; break;
      case TensorRole::ln1_weight: lw->ln1_weight = at; break;
      case TensorRole::ln1_bias: lw->ln1_bias = at; break;
      case TensorRole::attn_weight: lw->attn_weight = packed(offsets[i]); break;
      case TensorRole::attn_bias: lw->attn_bias = at; break;
      case TensorRole::attn_proj_weight: lw->attn_proj_weight = packed(offsets[i]); break;
      case TensorRole::attn_proj_bias: lw->attn_proj_bias = at; break;
      case TensorRole::ln2_weight: lw->ln2_weight = at; break;
      case TensorRole::ln2_bias: lw->ln2_bias = at; break;
      case TensorRole::mlp_fc_weight: lw->mlp_fc_weight = packed(offsets[i]); break;
      case TensorRole::mlp_fc_bias: lw->mlp_fc_bias = at; break;
      case TensorRole::mlp_proj_weight: lw->mlp_proj_weight = packed(offsets[i]); break;
      case TensorRole::mlp_proj_bias: lw->mlp_proj_bias = at; break;
    }
  }
  // The tied lm_head: wte again, packed as a Linear weight (vocab_size, C).
  w_.lm_head = packed(lm_head_offset);
  if (f16) {
    pack_linear_f16(half + lm_head_offset, tensors[0], V, C);
  } else {
    pack_linear(base + lm_head_offset, tensors[0], V, C);
  }

  // Scratch for R rows; FloatBuffer leaves it untouched, so rows never used cost no memory.
  max_rows_ = B + kMaxBatch;
  const size_t R = static_cast<size_t>(max_rows_);
  s_.x = FloatBuffer(R * C);
  s_.xn = FloatBuffer(R * C);
  s_.qkv = FloatBuffer(R * 3 * C);
  s_.att = FloatBuffer(R * C);
  s_.hidden = FloatBuffer(R * 4 * C);
  s_.scores = FloatBuffer(static_cast<size_t>(pool_.size()) * kAttentionRows * B);
  s_.logits = FloatBuffer(static_cast<size_t>(kMaxBatch) * V);

  const KVCacheShape cache = kv_cache_shape(config);
  cache_pool_ = std::make_shared<KVCachePool>((cache.key_floats + cache.value_floats) * sizeof(float));
}

Model::~Model() { cache_pool_->close(); }

KVCache Model::new_kv_cache() const {
  const KVCacheShape s = kv_cache_shape(config_);
  return KVCache{FloatBuffer(s.key_floats), FloatBuffer(s.value_floats), s.rows, s.tiles};
}

PooledKVCache Model::kv_cache() {
  std::unique_ptr<KVCache> cache = cache_pool_->take();
  if (!cache) {
    cache = std::make_unique<KVCache>(new_kv_cache());
    caches_allocated_.fetch_add(1, std::memory_order_relaxed);
    cache_pool_->made();
  }
  return PooledKVCache(cache.release(), KVCacheReturn{cache_pool_});
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

void Model::run(ForwardRequest* const* requests, int n) {
  for (int i = 0; i < n; i++) {
    const ForwardRequest& r = *requests[i];
    if (r.start < 0 || r.T < 1 || r.start + r.T > r.cache->rows || r.cache->rows > config_.block_size) {
      throw std::out_of_range("positions beyond the KV cache or blockSize");
    }
  }
  std::vector<ForwardRequest*> batch;
  std::unique_lock<std::mutex> lock(queue_mutex_);
  for (int i = 0; i < n; i++) queue_.push_back(requests[i]);
  auto all_done = [&] {
    for (int i = 0; i < n; i++) {
      if (!requests[i]->done) return false;
    }
    return true;
  };
  while (!all_done()) {
    if (computing_) {
      queue_changed_.wait(lock);
      continue;
    }
    // Lead: take the oldest requests that fit. Ours are queued or done (no pass runs), so the
    // queue is not empty. A request for every position's logits runs alone: its output may be
    // block_size rows of logits, written straight to its array.
    batch.clear();
    int rows = 0;
    while (!queue_.empty() && static_cast<int>(batch.size()) < kMaxBatch) {
      ForwardRequest* r = queue_.front();
      if (!batch.empty() && (r->all_positions || batch.front()->all_positions || rows + r->T > max_rows_)) break;
      batch.push_back(r);
      rows += r->T;
      queue_.pop_front();
    }
    computing_ = true;
    // The split rule rests on the pool's barrier, measured when the model was made. Measure it
    // again at passes 1, 2, 4, 8, ...: if a busy moment spoiled the first measurement, an early
    // pass corrects it; later ones cost nothing that shows (16 empty splits, rarer and rarer).
    const uint64_t number = stats_.passes;
    lock.unlock();
    if ((number & (number - 1)) == 0 && number > 0) pool_.calibrate(16);
    std::string error;
    const auto started = std::chrono::steady_clock::now();
    try {
      pass(batch.data(), static_cast<int>(batch.size()), rows);
    } catch (const std::bad_alloc&) {
      error = "out of memory in the native engine's forward pass";
    } catch (const std::exception& e) {
      error = std::string("the native forward pass failed: ") + e.what();
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
    lock.lock();
    stats_.busy_seconds += took.count();
    for (ForwardRequest* r : batch) {
      r->error = error;
      r->done = true;
      if (r->T == 1) stats_.decode_rows++;
    }
    stats_.passes++;
    stats_.requests += batch.size();
    stats_.largest_batch = std::max<uint64_t>(stats_.largest_batch, batch.size());
    computing_ = false;
    queue_changed_.notify_all();
  }
}

BatchStats Model::stats() {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  BatchStats s = stats_;
  s.caches_allocated = caches_allocated_.load(std::memory_order_relaxed);
  return s;
}

// Rows of all requests stacked: each layer's matmuls stream the weights once for all of them.
// Bit-identical to running each request alone: LayerNorm and the matmuls compute every row on its
// own (each output one FMA chain over k in order, whatever the tile: the GEMM micro-kernel for
// several rows, the GEMV for one), attention computes each row over its own sequence's cache
// whatever block it is in, and threads split by rows, panels or (block, head) only.
void Model::pass(ForwardRequest* const* batch, int n, int rows) {
  const Kernels& k = *kernels_;
  const int C = config_.n_embd, B = config_.block_size, V = config_.vocab_size;
  // The workers the pass's widest split (its largest matmul) uses spin between the pass's ~50
  // splits instead of sleeping; the rest of the pool sleeps through it.
  ThreadPool::Busy busy(pool_, threads_for(pool_, 4.0 * rows * C * C, panel_count(4 * C)));
  float* x = s_.x.data();
  float* xn = s_.xn.data();
  float* qkv = s_.qkv.data();
  float* att = s_.att.data();
  float* hidden = s_.hidden.data();

  // Each request is one run of rows of attention; its cache pointers are set per layer.
  std::vector<AttentionRun> runs(n);
  for (int i = 0, row = 0; i < n; i++) {
    const ForwardRequest& r = *batch[i];
    embedding(x + static_cast<size_t>(row) * C, r.ids, w_.wte, w_.wpe, r.start, r.T, C);
    runs[i] = AttentionRun{row, r.T, r.start, nullptr, nullptr};
    row += r.T;
  }
  const AttentionBlocks blocks = attention_blocks(runs.data(), n, k.attention_rows, C);
  for (int l = 0; l < config_.n_layer; l++) {
    const LayerWeights& lw = w_.layers[l];
    for (int i = 0; i < n; i++) {
      KVCache& cache = *batch[i]->cache;
      runs[i].keys = cache.keys.data() + static_cast<size_t>(l) * cache.tiles * C * kKeyTile;
      runs[i].values = cache.values.data() + static_cast<size_t>(l) * cache.rows * C;
    }

    layernorm(pool_, k, xn, x, lw.ln1_weight, lw.ln1_bias, rows, C);
    matmul(pool_, k, qkv, xn, lw.attn_weight, lw.attn_bias, rows, C, 3 * C, Epilogue::store);
    attention(pool_, k, att, qkv, runs.data(), n, blocks, s_.scores.data(), C, config_.n_head, B);
    matmul(pool_, k, x, att, lw.attn_proj_weight, lw.attn_proj_bias, rows, C, C, Epilogue::residual);

    layernorm(pool_, k, xn, x, lw.ln2_weight, lw.ln2_bias, rows, C);
    matmul(pool_, k, hidden, xn, lw.mlp_fc_weight, lw.mlp_fc_bias, rows, C, 4 * C, Epilogue::gelu);
    matmul(pool_, k, x, hidden, lw.mlp_proj_weight, lw.mlp_proj_bias, rows, 4 * C, C, Epilogue::residual);
  }

  // Final LayerNorm and the tied lm_head, only for the positions whose logits are wanted.
  if (n == 1) {
    const ForwardRequest& r = *batch[0];
    const int first = r.all_positions ? 0 : r.T - 1;
    const int out_rows = r.T - first;
    layernorm(pool_, k, xn, x + static_cast<size_t>(first) * C, w_.lnf_weight, w_.lnf_bias, out_rows, C);
    matmul(pool_, k, r.logits, xn, w_.lm_head, nullptr, out_rows, C, V, Epilogue::store);
    return;
  }
  // Several sequences (none wants every position): the last row of each, stacked.
  for (int i = 0; i < n; i++) {
    const size_t last = static_cast<size_t>(runs[i].row + runs[i].T - 1);
    std::memcpy(att + static_cast<size_t>(i) * C, x + last * C, C * sizeof(float));
  }
  layernorm(pool_, k, xn, att, w_.lnf_weight, w_.lnf_bias, n, C);
  float* logits = s_.logits.data();
  matmul(pool_, k, logits, xn, w_.lm_head, nullptr, n, C, V, Epilogue::store);
  for (int i = 0; i < n; i++) {
    std::memcpy(batch[i]->logits, logits + static_cast<size_t>(i) * V, V * sizeof(float));
  }
}

}  // namespace microgpt
