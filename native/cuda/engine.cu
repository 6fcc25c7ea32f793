// The CUDA engine behind api.h: a model's weights uploaded once, each session's KV cache on the
// device, and the forward pass of a batch of requests as the CPU engine's forward()
// (native/forward.cpp) runs it: the rows of every request stacked, each layer's matmuls reading
// the weights once for all of them, only the logits of the rows that want them copied back.
//
// Launch-bound no more: a decode step (every request one new token) is captured once per batch
// size as a CUDA graph and replayed; everything that changes from step to step (ids, positions,
// caches, how far attention reads) travels in the pass's table (PassTable), copied to the device
// at the start of the graph from a pinned buffer at a fixed address. Prefills launch their
// kernels directly: their arithmetic dwarfs the launches.
//
// Built twice from this source (api.h): by nvcc for the GPU, and by the host compiler against the
// emulator for the tests of machines without one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "api.h"
#include "compat.h"
#include "kernels.cuh"

#define MICROGPT_CUDA_EXPORT extern "C" __attribute__((visibility("default")))

using mgcuda::AttentionTile;
using mgcuda::Epilogue;
using mgcuda::kSelectCap;
using mgcuda::kSelectRowBytes;
using mgcuda::SelectRow;

namespace {

// ---- errors ---------------------------------------------------------------------------------

// A CUDA call that failed, with where: unwinds to the API function, which writes why.
struct CudaFailure {
  cudaError_t status;
  std::string what;
};

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error, so that later calls of this thread start clean
    throw CudaFailure{status, what};
  }
}

// After launches: a bad configuration shows here, a fault in a kernel at the next synchronisation.
void check_launch(const char* what) { check(cudaGetLastError(), what); }

void say(char* why, int size, const std::string& text) {
  if (why == nullptr || size <= 0) return;
  std::snprintf(why, static_cast<size_t>(size), "%s", text.c_str());
}

std::string failure_text(const CudaFailure& f) {
  std::string text = std::string("CUDA error in ") + f.what + ": " + cudaGetErrorString(f.status);
  // A fault inside a kernel ends the process's CUDA context: every later call fails the same way.
  switch (f.status) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorHardwareStackError:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
      text += "; the process's CUDA context is lost: restart the process";
      break;
    default:
      break;
  }
  return text;
}

// bytes as people read them: "12.6 MB", "48.0 kB".
std::string megabytes(size_t bytes) {
  char text[32];
  if (bytes >= 1000000) {
    std::snprintf(text, sizeof text, "%.1f MB", static_cast<double>(bytes) / 1e6);
  } else {
    std::snprintf(text, sizeof text, "%.1f kB", static_cast<double>(bytes) / 1e3);
  }
  return text;
}

// ---- device memory --------------------------------------------------------------------------

// cudaMalloc, cudaFree and their pinned-memory kin synchronise with the whole device, and one
// such call from any thread while a stream is being captured spoils the capture (whatever the
// capture mode, in practice). Every model's passes and every session's cache run on their own
// threads, so allocations and frees hold this lock shared, and a capture (about a millisecond,
// once per decode batch size of a model) holds it alone.
std::shared_mutex& capture_lock() {
  static std::shared_mutex* lock = new std::shared_mutex();  // never destroyed: used until exit
  return *lock;
}

// One cudaMalloc, freed with its owner.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    std::shared_lock<std::shared_mutex> allocating(capture_lock());
    check(cudaMalloc(&data_, bytes), "cudaMalloc");
  }
  ~DeviceBuffer() {
    if (data_ == nullptr) return;
    std::shared_lock<std::shared_mutex> freeing(capture_lock());
    cudaFree(data_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) { o.data_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned host memory: the source and destination of the copies a graph replays.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes) {
    if (bytes == 0) return;
    std::shared_lock<std::shared_mutex> allocating(capture_lock());
    check(cudaMallocHost(&data_, bytes), "cudaMallocHost");
  }
  ~PinnedBuffer() {
    if (data_ == nullptr) return;
    std::shared_lock<std::shared_mutex> freeing(capture_lock());
    cudaFreeHost(data_);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : data_(o.data_) { o.data_ = nullptr; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
};

// IEEE float16 bits of f, rounded to nearest even (the CPU engine's pack_linear_f16 rounding).
uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xffu) return static_cast<uint16_t>(sign | 0x7c00u | (mant != 0 ? 0x200u : 0u));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t half = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u) != 0)) half++;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u) != 0)) half++;  // may carry into the exponent: right
  return static_cast<uint16_t>(sign | half);
}

// ---- matrix products ------------------------------------------------------------------------

// A matrix in the model's precision: exactly one of the two is set.
struct Matrix {
  const float* f32 = nullptr;
  const uint16_t* f16 = nullptr;
};

constexpr int kRowsThreads = 128;  // 4 warps, 4 output features a block: N = C spreads over more SMs
constexpr int kMaxFewRows = 16;    // more rows than this take the tiled kernel

// Blocks of the few-rows kernels for N output features: a warp each.
dim3 rows_grid(int N) {
  constexpr int warps = kRowsThreads / mgcuda::kWarp;
  return dim3((N + warps - 1) / warps);
}

template <typename W>
void launch_matmul_t(cudaStream_t stream, float* out, const float* x, const W* w, const float* b, int T, int K, int N,
                     Epilogue e, int variant) {
  const bool few = variant == 1 || (variant == 0 && T <= kMaxFewRows);
  if (few) {
    const dim3 grid = rows_grid(N);
    void (*kernel)(float*, const float*, const W*, const float*, int, int, int, Epilogue) =
        T <= 1   ? mgcuda::matmul_rows_kernel<1, W>
        : T <= 2 ? mgcuda::matmul_rows_kernel<2, W>
        : T <= 4 ? mgcuda::matmul_rows_kernel<4, W>
        : T <= 8 ? mgcuda::matmul_rows_kernel<8, W>
                 : mgcuda::matmul_rows_kernel<16, W>;
    MG_LAUNCH(kernel, grid, dim3(kRowsThreads), 0, stream, out, x, w, b, T, K, N, e);
  } else {
    const dim3 grid((N + mgcuda::kTileN - 1) / mgcuda::kTileN, (T + mgcuda::kTileM - 1) / mgcuda::kTileM);
    auto kernel = mgcuda::matmul_tiled_kernel<W>;
    MG_LAUNCH(kernel, grid, dim3(256), 0, stream, out, x, w, b, T, K, N, e);
  }
}

// out (T, N) = epilogue(x (T, K) · W^T + b). variant: 0 by T, 1 the few-rows kernel, 2 tiled.
void launch_matmul(cudaStream_t stream, float* out, const float* x, Matrix w, const float* b, int T, int K, int N,
                   Epilogue e, int variant = 0) {
  if (w.f16 != nullptr) {
    launch_matmul_t(stream, out, x, w.f16, b, T, K, N, e, variant);
  } else {
    launch_matmul_t(stream, out, x, w.f32, b, T, K, N, e, variant);
  }
}

// Rows up to which a LayerNorm feeding a matmul is computed inside it (norm_matmul_rows_kernel):
// decode steps of up to 8 sequences, where the launch costs more than the normalising.
constexpr int kMaxNormRows = 8;

template <typename W>
void launch_norm_matmul_t(cudaStream_t stream, float* out, const float* x, const float* ln_w, const float* ln_b,
                          const W* w, const float* b, int T, int K, int N, Epilogue e) {
  const dim3 grid = rows_grid(N);
  void (*kernel)(float*, const float*, const float*, const float*, const W*, const float*, int, int, int, Epilogue) =
      T <= 1   ? mgcuda::norm_matmul_rows_kernel<1, W>
      : T <= 2 ? mgcuda::norm_matmul_rows_kernel<2, W>
      : T <= 4 ? mgcuda::norm_matmul_rows_kernel<4, W>
               : mgcuda::norm_matmul_rows_kernel<8, W>;
  MG_LAUNCH(kernel, grid, dim3(kRowsThreads), 0, stream, out, x, ln_w, ln_b, w, b, T, K, N, e);
}

// out (T, N) = epilogue(LayerNorm(x) · W^T + b), T <= kMaxNormRows, in one kernel.
void launch_norm_matmul(cudaStream_t stream, float* out, const float* x, const float* ln_w, const float* ln_b, Matrix w,
                        const float* b, int T, int K, int N, Epilogue e) {
  if (w.f16 != nullptr) {
    launch_norm_matmul_t(stream, out, x, ln_w, ln_b, w.f16, b, T, K, N, e);
  } else {
    launch_norm_matmul_t(stream, out, x, ln_w, ln_b, w.f32, b, T, K, N, e);
  }
}

constexpr int kNormThreads = 256;
// Attention blocks: a prefill's tile of query rows keeps 256 threads busy; a decode step's one
// row has few (row, dimension) pairs, so more threads split its positions (latency-bound loads).
constexpr int kAttentionThreads = 256;
constexpr int kDecodeAttentionThreads = 512;
int attention_threads(int Q) { return Q == 1 ? kDecodeAttentionThreads : kAttentionThreads; }

void launch_layernorm(cudaStream_t stream, float* out, const float* x, const int* rows_from, const float* w,
                      const float* b, int rows, int C) {
  MG_LAUNCH(mgcuda::layernorm_kernel, dim3(rows), dim3(kNormThreads), 0, stream, out, x, rows_from, w, b, C);
}

void launch_embedding(cudaStream_t stream, float* x, const int* ids, const int* pos, Matrix wte, const float* wpe,
                      int rows, int C) {
  const int threads = std::min(256, (C + 31) / 32 * 32);
  if (wte.f16 != nullptr) {
    auto kernel = mgcuda::embedding_kernel<uint16_t>;
    MG_LAUNCH(kernel, dim3(rows), dim3(threads), 0, stream, x, ids, pos, wte.f16, wpe, C);
  } else {
    auto kernel = mgcuda::embedding_kernel<float>;
    MG_LAUNCH(kernel, dim3(rows), dim3(threads), 0, stream, x, ids, pos, wte.f32, wpe, C);
  }
}

// Query rows an attention block takes in a prefill: the most of 16, 8, 4, 2, 1 whose scores fit
// the device's shared memory for a block (a decode step's tiles are one row each).
int prefill_tile_rows(int head_size, int block_size, int smem_limit) {
  for (int q = 16; q > 1; q /= 2) {
    if (mgcuda::attention_smem_bytes(q, head_size, block_size, attention_threads(q)) <= static_cast<size_t>(smem_limit)) return q;
  }
  return 1;
}

template <int Q>
void prepare_attention(int smem_limit) {
  auto kernel = mgcuda::attention_kernel<Q>;
  check(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit),
        "cudaFuncSetAttribute");
}

void prepare_kernels(int smem_limit) {
  prepare_attention<1>(smem_limit);
  prepare_attention<2>(smem_limit);
  prepare_attention<4>(smem_limit);
  prepare_attention<8>(smem_limit);
  prepare_attention<16>(smem_limit);
}

// store_new: see attention_kernel (decode steps only: every tile its sequence's one new row).
void launch_attention(cudaStream_t stream, int Q, float* att, const float* qkv, const AttentionTile* tiles, int n_tiles,
                      int layer, int C, int n_head, int block_size, int n_layer, bool store_new) {
  const size_t smem = mgcuda::attention_smem_bytes(Q, C / n_head, block_size, attention_threads(Q));
  const dim3 grid(n_tiles, n_head), block(attention_threads(Q));
  void (*kernel)(float*, const float*, const AttentionTile*, int, int, int, int, int, int) =
      Q == 1 ? mgcuda::attention_kernel<1>
      : Q == 2 ? mgcuda::attention_kernel<2>
      : Q == 4 ? mgcuda::attention_kernel<4>
      : Q == 8 ? mgcuda::attention_kernel<8>
               : mgcuda::attention_kernel<16>;
  MG_LAUNCH(kernel, grid, block, smem, stream, att, qkv, tiles, layer, C, n_head, block_size, n_layer, store_new ? 1 : 0);
}

// Whether a decode step's attention block (one query row against block_size positions) fits the
// device's shared memory: the least any model of this shape needs.
bool attention_fits(int head_size, int block_size, int smem_limit) {
  return mgcuda::attention_smem_bytes(1, head_size, block_size, attention_threads(1)) <= static_cast<size_t>(smem_limit);
}

int shared_memory_limit(int device) {
  int limit = 0;
  check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  return limit;
}

}  // namespace

// ---- the model ------------------------------------------------------------------------------

struct MicrogptCudaCache {
  int device = 0;
  DeviceBuffer memory;  // keys (n_layer, block_size, C), then values
};

namespace {

struct LayerWeights {
  const float* ln1_w = nullptr;
  const float* ln1_b = nullptr;
  Matrix attn_w;
  const float* attn_b = nullptr;
  Matrix proj_w;
  const float* proj_b = nullptr;
  const float* ln2_w = nullptr;
  const float* ln2_b = nullptr;
  Matrix fc_w;
  const float* fc_b = nullptr;
  Matrix mproj_w;
  const float* mproj_b = nullptr;
};

// Where each array of a pass's table lies, in bytes from its start (PassTable).
struct TableLayout {
  size_t ids, pos, row_cache, tiles, out_rows, select, bytes;
};

// The steps of a pass, in the order of the addon's Phase (native/forward.h).
enum Phase { kEmbedding, kLayernorm, kQkv, kAttention, kAttentionProj, kMlpFc, kMlpProj, kLmHead, kPhases };

}  // namespace

struct MicrogptCudaModel {
  int device = 0;
  MicrogptCudaConfig config{};
  bool f16 = false;
  int flags = 0;
  int prefill_tile = 1;  // query rows of a prefill's attention blocks

  DeviceBuffer weights32, weights16;
  Matrix wte;
  const float* wpe = nullptr;
  std::vector<LayerWeights> layers;
  const float* lnf_w = nullptr;
  const float* lnf_b = nullptr;

  // Scratch of one pass (max_rows rows).
  DeviceBuffer x, xn, qkv, att, hidden, logits;  // logits (max_batch, V): the last rows'
  DeviceBuffer all_logits;                        // (T, V) of a request for every position, grown on demand
  DeviceBuffer table;                             // the pass's table on the device
  PinnedBuffer table_host, logits_host;           // its source; the last rows' logits on the way back
  size_t table_bytes = 0;
  // Top-k candidates instead of logits (select_top_kernel): a piece a row (max_batch,
  // kSelectRowBytes), its copy on the way back, and the overflow arrays (max_batch, V) each.
  DeviceBuffer selected, selected_values, selected_ids;
  PinnedBuffer selected_host;

  cudaStream_t stream = nullptr;
  std::map<int, cudaGraphExec_t> graphs;  // decode steps, by graph_key
  int failed_captures = 0;                // after kMaxCaptureFailures, decode launches directly

  // Profiling: an event opening the pass and one after each step, with the step each closes.
  std::vector<cudaEvent_t> marks;
  std::vector<int> mark_phase;
  size_t marked = 0;
  MicrogptCudaStats stats{};

  ~MicrogptCudaModel() {
    cudaSetDevice(device);
    // The buffers (members) free themselves after this, each under the capture lock.
    std::shared_lock<std::shared_mutex> destroying(capture_lock());
    for (auto& g : graphs) cudaGraphExecDestroy(g.second);
    for (cudaEvent_t e : marks) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

namespace {

// The table's arrays for a pass of `rows` rows, `tiles` attention tiles and `out_rows` rows of
// logits, each 16-byte aligned. The same numbers always give the same layout (a graph relies
// on it).
TableLayout table_layout(int rows, int tiles, int out_rows) {
  auto up = [](size_t n) { return (n + 15) / 16 * 16; };
  TableLayout t{};
  size_t at = 0;
  t.ids = at, at += up(sizeof(int) * rows);
  t.pos = at, at += up(sizeof(int) * rows);
  t.row_cache = at, at += up(sizeof(float*) * rows);
  t.tiles = at, at += up(sizeof(AttentionTile) * tiles);
  t.out_rows = at, at += up(sizeof(int) * out_rows);
  t.select = at, at += up(sizeof(SelectRow) * out_rows);
  t.bytes = at;
  return t;
}

// A top-k selection the kernel can make: 0 < k < limit <= V.
bool valid_select(int k, int limit, int V) { return k >= 1 && k < limit && limit <= V; }

// A decode step's graph: one per batch size, and per what comes back (logits or candidates).
int graph_key(int n, bool selecting) { return 2 * n + (selecting ? 1 : 0); }

// What the kernels of one pass read, on the device (pointers into model.table).
struct PassArgs {
  int rows, n_tiles, out_rows, tile_rows;  // tile_rows: the attention kernel's Q
  const int* ids;
  const int* pos;
  float* const* row_cache;
  const AttentionTile* tiles;
  const int* out_from;  // the rows whose logits are wanted, or null: all of them (in order)
  float* logits;        // (out_rows, V) on the device
  bool selecting;       // top-k candidates of every out row instead of its logits
  const SelectRow* select;
};

// With profiling, records the end of a step: the time since the last mark is the step's.
void mark(MicrogptCudaModel& m, int phase) {
  if ((m.flags & MICROGPT_CUDA_PROFILE) == 0) return;
  check(cudaEventRecord(m.marks[m.marked], m.stream), "cudaEventRecord");
  m.mark_phase[m.marked++] = phase;
}

// Every kernel of a pass, in stream order; with profiling, an event after each step.
void enqueue_pass(MicrogptCudaModel& m, const PassArgs& a) {
  const MicrogptCudaConfig& c = m.config;
  const int C = c.n_embd, R = a.rows, V = c.vocab_size;
  cudaStream_t s = m.stream;
  float* x = m.x.as<float>();
  float* xn = m.xn.as<float>();
  float* qkv = m.qkv.as<float>();
  float* att = m.att.as<float>();
  float* hidden = m.hidden.as<float>();
  m.marked = 0;
  mark(m, kEmbedding);  // opens the pass
  launch_embedding(s, x, a.ids, a.pos, m.wte, m.wpe, R, C);
  mark(m, kEmbedding);
  for (int l = 0; l < c.n_layer; l++) {
    const LayerWeights& w = m.layers[l];
    // Few rows (decode steps): each LayerNorm inside the matmul it feeds, one launch less.
    const bool fused = R <= kMaxNormRows;
    if (fused) {
      launch_norm_matmul(s, qkv, x, w.ln1_w, w.ln1_b, w.attn_w, w.attn_b, R, C, 3 * C, Epilogue::store);
    } else {
      launch_layernorm(s, xn, x, nullptr, w.ln1_w, w.ln1_b, R, C);
      mark(m, kLayernorm);
      launch_matmul(s, qkv, xn, w.attn_w, w.attn_b, R, C, 3 * C, Epilogue::store);
    }
    mark(m, kQkv);
    // A decode step's tiles are each its sequence's one new row: attention stores them itself.
    const bool decode = a.tile_rows == 1;
    if (!decode) {
      MG_LAUNCH(mgcuda::kv_store_kernel, dim3(R), dim3(std::min(256, (C + 31) / 32 * 32)), 0, s, qkv, a.row_cache, a.pos, l,
                C, c.block_size, c.n_layer);
    }
    launch_attention(s, a.tile_rows, att, qkv, a.tiles, a.n_tiles, l, C, c.n_head, c.block_size, c.n_layer, decode);
    mark(m, kAttention);
    launch_matmul(s, x, att, w.proj_w, w.proj_b, R, C, C, Epilogue::residual);
    mark(m, kAttentionProj);
    if (fused) {
      launch_norm_matmul(s, hidden, x, w.ln2_w, w.ln2_b, w.fc_w, w.fc_b, R, C, 4 * C, Epilogue::gelu);
    } else {
      launch_layernorm(s, xn, x, nullptr, w.ln2_w, w.ln2_b, R, C);
      mark(m, kLayernorm);
      launch_matmul(s, hidden, xn, w.fc_w, w.fc_b, R, C, 4 * C, Epilogue::gelu);
    }
    mark(m, kMlpFc);
    launch_matmul(s, x, hidden, w.mproj_w, w.mproj_b, R, 4 * C, C, Epilogue::residual);
    mark(m, kMlpProj);
  }
  // The final LayerNorm and the tied lm_head, only for the rows whose logits are wanted.
  launch_layernorm(s, xn, x, a.out_from, m.lnf_w, m.lnf_b, a.out_rows, C);
  launch_matmul(s, a.logits, xn, m.wte, nullptr, a.out_rows, C, V, Epilogue::store);
  if (a.selecting) {
    MG_LAUNCH(mgcuda::select_top_kernel, dim3(a.out_rows), dim3(mgcuda::kSelectThreads), 0, s,
              m.selected.as<unsigned char>(), m.selected_values.as<float>(), m.selected_ids.as<int>(), a.logits, a.select, V);
  }
  mark(m, kLmHead);
  check_launch("a kernel launch");
}

// The table of a pass over `requests`, written to the pinned buffer; returns the arguments the
// kernels read.
PassArgs fill_table(MicrogptCudaModel& m, const MicrogptCudaRequest* requests, int n, int rows, bool all_positions,
                    bool selecting, TableLayout& layout) {
  int tiles = 0;
  const int q = rows == n ? 1 : m.prefill_tile;  // a decode step: one row a tile
  for (int i = 0; i < n; i++) tiles += (requests[i].T + q - 1) / q;
  const int out_rows = all_positions ? requests[0].T : n;
  layout = table_layout(rows, tiles, out_rows);
  unsigned char* host = m.table_host.as<unsigned char>();
  int* ids = reinterpret_cast<int*>(host + layout.ids);
  int* pos = reinterpret_cast<int*>(host + layout.pos);
  float** row_cache = reinterpret_cast<float**>(host + layout.row_cache);
  AttentionTile* tile = reinterpret_cast<AttentionTile*>(host + layout.tiles);
  int* out_from = reinterpret_cast<int*>(host + layout.out_rows);
  SelectRow* select = reinterpret_cast<SelectRow*>(host + layout.select);
  int row = 0, t = 0;
  for (int i = 0; i < n; i++) {
    const MicrogptCudaRequest& r = requests[i];
    float* cache = r.cache->memory.as<float>();
    for (int j = 0; j < r.T; j++) {
      ids[row + j] = r.ids[j];
      pos[row + j] = r.start + j;
      row_cache[row + j] = cache;
    }
    for (int j = 0; j < r.T; j += q) tile[t++] = AttentionTile{cache, row + j, std::min(q, r.T - j), r.start + j, 0};
    if (all_positions) {
      for (int j = 0; j < r.T; j++) out_from[j] = row + j;
    } else {
      out_from[i] = row + r.T - 1;
      select[i] = selecting ? SelectRow{r.top_k, r.top_limit} : SelectRow{0, 0};
    }
    row += r.T;
  }
  unsigned char* dev = m.table.as<unsigned char>();
  PassArgs a{};
  a.rows = rows;
  a.n_tiles = tiles;
  a.out_rows = out_rows;
  a.tile_rows = q;
  a.ids = reinterpret_cast<const int*>(dev + layout.ids);
  a.pos = reinterpret_cast<const int*>(dev + layout.pos);
  a.row_cache = reinterpret_cast<float* const*>(dev + layout.row_cache);
  a.tiles = reinterpret_cast<const AttentionTile*>(dev + layout.tiles);
  a.out_from = reinterpret_cast<const int*>(dev + layout.out_rows);
  a.logits = all_positions ? m.all_logits.as<float>() : m.logits.as<float>();
  a.selecting = selecting;
  a.select = reinterpret_cast<const SelectRow*>(dev + layout.select);
  return a;
}

// What a pass copies back: the wanted rows' logits, or their candidates' pieces.
void copy_back(MicrogptCudaModel& m, const PassArgs& a) {
  if (a.selecting) {
    check(cudaMemcpyAsync(m.selected_host.as<void>(), m.selected.as<void>(), static_cast<size_t>(kSelectRowBytes) * a.out_rows,
                          cudaMemcpyDeviceToHost, m.stream),
          "cudaMemcpyAsync");
  } else {
    check(cudaMemcpyAsync(m.logits_host.as<void>(), a.logits, sizeof(float) * a.out_rows * m.config.vocab_size,
                          cudaMemcpyDeviceToHost, m.stream),
          "cudaMemcpyAsync");
  }
}

// One row's candidates, from its piece copied back (`piece`, kSelectRowBytes) into values and ids
// (host memory with room for the row's limit); returns how many, or -1 for a row holding a NaN.
// A row with more than kSelectCap (ties) has them in the overflow arrays, read from the device
// here (after the pass: its stream is synchronised).
int collect_selected(const unsigned char* piece, const float* overflow_values, const int* overflow_ids, float* values,
                     int32_t* ids) {
  int count = 0;
  std::memcpy(&count, piece, sizeof count);
  if (count <= 0) return -1;
  if (count <= kSelectCap) {
    std::memcpy(values, piece + 16, sizeof(float) * count);
    std::memcpy(ids, piece + 16 + 4 * kSelectCap, sizeof(int32_t) * count);
  } else {
    check(cudaMemcpy(values, overflow_values, sizeof(float) * count, cudaMemcpyDeviceToHost), "cudaMemcpy");
    check(cudaMemcpy(ids, overflow_ids, sizeof(int32_t) * count, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
  return count;
}

// A decode step of n sequences as a graph: the table's copy up, every kernel, the logits' (or
// candidates') copy down. Null when capture fails (the caller launches directly from then on).
cudaGraphExec_t capture_decode(MicrogptCudaModel& m, const PassArgs& a, const TableLayout& layout) {
  std::unique_lock<std::shared_mutex> alone(capture_lock());
  cudaGraph_t graph = nullptr;
  if (cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  bool ok = true;
  try {
    check(cudaMemcpyAsync(m.table.as<void>(), m.table_host.as<void>(), layout.bytes, cudaMemcpyHostToDevice, m.stream),
          "cudaMemcpyAsync");
    enqueue_pass(m, a);
    copy_back(m, a);
  } catch (const CudaFailure&) {
    ok = false;
  }
  const cudaError_t ended = cudaStreamEndCapture(m.stream, &graph);
  cudaGetLastError();
  if (!ok || ended != cudaSuccess || graph == nullptr) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (made != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return exec;
}

// Captures that may fail (another thread's synchronising call can still spoil one: a driver's
// own, or a library's) before a model gives graphs up and launches its decode steps.
constexpr int kMaxCaptureFailures = 3;

void run_pass(MicrogptCudaModel& m, const MicrogptCudaRequest* requests, int n) {
  const MicrogptCudaConfig& c = m.config;
  const size_t V = static_cast<size_t>(c.vocab_size);
  int rows = 0;
  for (int i = 0; i < n; i++) rows += requests[i].T;
  const bool all_positions = n == 1 && requests[0].all_positions != 0;
  // Candidates come back only when every request asks for them (a mixed batch is rare: a
  // server's request for logprobs beside others); the rest get their logits.
  bool selecting = !all_positions;
  for (int i = 0; i < n; i++) selecting = selecting && requests[i].top_k > 0;
  if (all_positions && m.all_logits.bytes() < sizeof(float) * requests[0].T * V) {
    m.all_logits = DeviceBuffer();  // the old one first: the device may hold only one
    m.all_logits = DeviceBuffer(sizeof(float) * requests[0].T * V);
  }
  const auto started = std::chrono::steady_clock::now();
  TableLayout layout{};
  const PassArgs a = fill_table(m, requests, n, rows, all_positions, selecting, layout);
  const bool decode = rows == n && !all_positions;
  const bool profile = (m.flags & MICROGPT_CUDA_PROFILE) != 0;
  const bool graphs = decode && !profile && (m.flags & MICROGPT_CUDA_NO_GRAPHS) == 0 &&
                      m.failed_captures < kMaxCaptureFailures;
  cudaGraphExec_t exec = nullptr;
  if (graphs) {
    auto found = m.graphs.find(graph_key(n, selecting));
    if (found != m.graphs.end()) {
      exec = found->second;
    } else {
      exec = capture_decode(m, a, layout);
      if (exec == nullptr) {
        m.failed_captures++;  // this step launches its kernels; a later one tries again
      } else {
        m.graphs[graph_key(n, selecting)] = exec;
        m.stats.graphs++;
      }
    }
  }
  if (exec != nullptr) {
    check(cudaGraphLaunch(exec, m.stream), "cudaGraphLaunch");
    m.stats.graph_launches++;
  } else {
    check(cudaMemcpyAsync(m.table.as<void>(), m.table_host.as<void>(), layout.bytes, cudaMemcpyHostToDevice, m.stream),
          "cudaMemcpyAsync");
    enqueue_pass(m, a);
    if (!all_positions) copy_back(m, a);
  }
  check(cudaStreamSynchronize(m.stream), "the forward pass");
  if (all_positions) {
    check(cudaMemcpy(requests[0].logits, a.logits, sizeof(float) * requests[0].T * V, cudaMemcpyDeviceToHost), "cudaMemcpy");
    if (requests[0].top_count != nullptr) *requests[0].top_count = 0;
  } else if (selecting) {
    for (int i = 0; i < n; i++) {
      const MicrogptCudaRequest& r = requests[i];
      const int count = collect_selected(m.selected_host.as<unsigned char>() + static_cast<size_t>(kSelectRowBytes) * i,
                                         m.selected_values.as<float>() + i * V, m.selected_ids.as<int>() + i * V, r.logits,
                                         r.top_ids);
      if (count < 0) {  // a NaN: the logits, for the sampler's own rules
        check(cudaMemcpy(r.logits, a.logits + i * V, sizeof(float) * V, cudaMemcpyDeviceToHost), "cudaMemcpy");
      }
      *r.top_count = std::max(count, 0);
      if (count > 0) m.stats.selected_rows++;
    }
  } else {
    const float* out = m.logits_host.as<float>();
    for (int i = 0; i < n; i++) {
      std::memcpy(requests[i].logits, out + i * V, sizeof(float) * V);
      if (requests[i].top_count != nullptr) *requests[i].top_count = 0;
    }
  }
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
  if (profile) {
    double device = 0;
    for (size_t i = 1; i < m.marked; i++) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, m.marks[i - 1], m.marks[i]), "cudaEventElapsedTime");
      m.stats.phase_seconds[m.mark_phase[i]] += ms / 1e3;
      device += ms / 1e3;
    }
    m.stats.host_seconds += std::max(0.0, took.count() - device);
  }
}

}  // namespace

// ---- the interface --------------------------------------------------------------------------

MICROGPT_CUDA_EXPORT MicrogptCudaModel* microgpt_cuda_model_create(int device, const MicrogptCudaConfig* config,
                                                                   const float* const* tensors, int n_tensors,
                                                                   int precision, int flags, int* out_of_memory,
                                                                   char* why, int why_size) {
  if (out_of_memory != nullptr) *out_of_memory = 0;
  if (config == nullptr || tensors == nullptr) {
    say(why, why_size, "no config or tensors");
    return nullptr;
  }
  const MicrogptCudaConfig c = *config;
  if (c.vocab_size < 1 || c.block_size < 1 || c.n_layer < 1 || c.n_head < 1 || c.n_embd < 1 || c.n_embd % c.n_head != 0 ||
      c.max_rows < 1 || c.max_batch < 1) {
    say(why, why_size, "invalid config");
    return nullptr;
  }
  const int per_layer = c.bias ? 12 : 6;
  const int expected = 2 + c.n_layer * per_layer + (c.bias ? 2 : 1);
  if (n_tensors != expected) {
    say(why, why_size, "expected " + std::to_string(expected) + " tensors, got " + std::to_string(n_tensors));
    return nullptr;
  }
  size_t needed = 0;
  try {
    check(cudaSetDevice(device), "cudaSetDevice");
    auto m = std::make_unique<MicrogptCudaModel>();
    m->device = device;
    m->config = c;
    m->f16 = precision == MICROGPT_CUDA_F16;
    m->flags = flags;
    const size_t C = c.n_embd, V = c.vocab_size, B = c.block_size, L = c.n_layer, R = c.max_rows;

    // The tensors in the addon's tensor_layout order (native/config.cpp): wte, wpe, then per layer
    // ln_1 (w, b), c_attn (w, b), attn.c_proj (w, b), ln_2 (w, b), c_fc (w, b), mlp.c_proj (w, b)
    // (biases only with bias), then ln_f (w, b). Matrices go to weights16 in float16.
    struct Item {
      const float* data;
      size_t count;
      bool matrix;
    };
    std::vector<Item> items;
    items.push_back({tensors[0], V * C, true});
    items.push_back({tensors[1], B * C, false});
    int at = 2;
    for (size_t l = 0; l < L; l++) {
      const size_t sizes[12] = {C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C};
      const bool matrix[12] = {false, false, true, false, true, false, false, false, true, false, true, false};
      for (int e = 0; e < 12; e++) {
        if (e % 2 == 1 && !c.bias) continue;
        items.push_back({tensors[at++], sizes[e], matrix[e]});
      }
    }
    items.push_back({tensors[at++], C, false});
    if (c.bias) items.push_back({tensors[at++], C, false});

    // Offsets: every tensor 256-byte aligned, float32 ones in weights32, matrices (with f16) in weights16.
    std::vector<size_t> offset(items.size());
    size_t bytes32 = 0, bytes16 = 0;
    for (size_t i = 0; i < items.size(); i++) {
      const bool half = m->f16 && items[i].matrix;
      size_t& total = half ? bytes16 : bytes32;
      offset[i] = total;
      total += (items[i].count * (half ? 2 : 4) + 255) / 256 * 256;
    }
    const size_t row_bytes = sizeof(float) * R * C;
    const size_t attention_tiles = R;  // at most one a row
    m->table_bytes = table_layout(c.max_rows, static_cast<int>(attention_tiles), std::max(c.max_rows, c.max_batch)).bytes;
    const size_t select_bytes = static_cast<size_t>(kSelectRowBytes) * c.max_batch;
    needed = bytes32 + bytes16 + row_bytes * (2 + 3 + 1 + 4) + sizeof(float) * c.max_batch * V * 3 + m->table_bytes +
             select_bytes;

    m->weights32 = DeviceBuffer(bytes32);
    m->weights16 = DeviceBuffer(bytes16);
    check(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    // Uploaded in the model's stream, which its passes use: each copy has left its (pageable)
    // source when the call returns, and the stream orders the rest. No device-wide
    // synchronisation: another model may be capturing a graph meanwhile.
    {
      std::vector<uint16_t> half;
      for (size_t i = 0; i < items.size(); i++) {
        const bool to_half = m->f16 && items[i].matrix;
        if (to_half) {
          half.resize(items[i].count);
          for (size_t k = 0; k < items[i].count; k++) half[k] = float_to_half(items[i].data[k]);
          check(cudaMemcpyAsync(m->weights16.as<unsigned char>() + offset[i], half.data(), items[i].count * 2,
                                cudaMemcpyHostToDevice, m->stream),
                "uploading the weights");
          check(cudaStreamSynchronize(m->stream), "uploading the weights");  // `half` is refilled next
        } else {
          check(cudaMemcpyAsync(m->weights32.as<unsigned char>() + offset[i], items[i].data, items[i].count * 4,
                                cudaMemcpyHostToDevice, m->stream),
                "uploading the weights");
        }
      }
    }
    size_t next = 0;
    auto f32 = [&]() { return reinterpret_cast<const float*>(m->weights32.as<unsigned char>() + offset[next++]); };
    auto mat = [&]() {
      Matrix w;
      if (m->f16) {
        w.f16 = reinterpret_cast<const uint16_t*>(m->weights16.as<unsigned char>() + offset[next++]);
      } else {
        w.f32 = reinterpret_cast<const float*>(m->weights32.as<unsigned char>() + offset[next++]);
      }
      return w;
    };
    auto bias = [&]() { return c.bias ? f32() : nullptr; };
    m->wte = mat();
    m->wpe = f32();
    m->layers.resize(L);
    for (LayerWeights& w : m->layers) {
      w.ln1_w = f32();
      w.ln1_b = bias();
      w.attn_w = mat();
      w.attn_b = bias();
      w.proj_w = mat();
      w.proj_b = bias();
      w.ln2_w = f32();
      w.ln2_b = bias();
      w.fc_w = mat();
      w.fc_b = bias();
      w.mproj_w = mat();
      w.mproj_b = bias();
    }
    m->lnf_w = f32();
    m->lnf_b = bias();
    check(cudaStreamSynchronize(m->stream), "uploading the weights");

    m->x = DeviceBuffer(row_bytes);
    m->xn = DeviceBuffer(row_bytes);
    m->qkv = DeviceBuffer(3 * row_bytes);
    m->att = DeviceBuffer(row_bytes);
    m->hidden = DeviceBuffer(4 * row_bytes);
    m->logits = DeviceBuffer(sizeof(float) * c.max_batch * V);
    m->table = DeviceBuffer(m->table_bytes);
    m->table_host = PinnedBuffer(m->table_bytes);
    m->logits_host = PinnedBuffer(sizeof(float) * c.max_batch * V);
    m->selected = DeviceBuffer(select_bytes);
    m->selected_values = DeviceBuffer(sizeof(float) * c.max_batch * V);
    m->selected_ids = DeviceBuffer(sizeof(int) * c.max_batch * V);
    m->selected_host = PinnedBuffer(select_bytes);
    if ((flags & MICROGPT_CUDA_PROFILE) != 0) {
      const size_t marks = 1 + 1 + 7 * L + 1;
      m->marks.assign(marks, nullptr);
      m->mark_phase.assign(marks, 0);
      for (cudaEvent_t& e : m->marks) check(cudaEventCreate(&e), "cudaEventCreate");
    }
    const int smem = shared_memory_limit(device);
    const int hs = c.n_embd / c.n_head;
    if (!attention_fits(hs, c.block_size, smem)) {
      say(why, why_size, "blockSize " + std::to_string(c.block_size) + " needs more shared memory than this device has");
      return nullptr;
    }
    prepare_kernels(smem);
    m->prefill_tile = prefill_tile_rows(hs, c.block_size, smem);
    m->stats.device_bytes = m->weights32.bytes() + m->weights16.bytes() + m->x.bytes() + m->xn.bytes() + m->qkv.bytes() +
                            m->att.bytes() + m->hidden.bytes() + m->logits.bytes() + m->table.bytes() +
                            m->selected.bytes() + m->selected_values.bytes() + m->selected_ids.bytes();
    return m.release();
  } catch (const CudaFailure& f) {
    if (f.status == cudaErrorMemoryAllocation) {
      if (out_of_memory != nullptr) *out_of_memory = 1;
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      cudaGetLastError();
      say(why, why_size, "out of memory on CUDA device " + std::to_string(device) + ": the model needs about " +
                             megabytes(needed) + ", " + megabytes(free) + " of " + megabytes(total) + " is free");
    } else {
      say(why, why_size, failure_text(f));
    }
  } catch (const std::bad_alloc&) {
    say(why, why_size, "out of host memory while uploading the model");
  }
  return nullptr;
}

namespace {

// Caches given back, on whatever thread let them go (a session disposed on JavaScript's main
// thread): freed by the next call that works with their device on a thread of the engine's
// (a pass, a new cache, a model's end), since cudaFree waits for the whole device and must not
// stall the event loop behind another model's pass.
struct GivenBack {
  std::mutex mutex;
  std::vector<MicrogptCudaCache*> caches;
};
GivenBack& given_back() {
  static GivenBack* g = new GivenBack();  // never destroyed: used until exit
  return *g;
}

// Frees the caches given back on `device` (the calling thread's current device).
void free_given_back(int device) {
  std::vector<MicrogptCudaCache*> mine;
  {
    GivenBack& g = given_back();
    std::lock_guard<std::mutex> lock(g.mutex);
    auto kept = std::partition(g.caches.begin(), g.caches.end(), [&](MicrogptCudaCache* c) { return c->device != device; });
    mine.assign(kept, g.caches.end());
    g.caches.erase(kept, g.caches.end());
  }
  for (MicrogptCudaCache* c : mine) delete c;
}

}  // namespace

MICROGPT_CUDA_EXPORT void microgpt_cuda_model_free(MicrogptCudaModel* model) {
  if (model == nullptr) return;
  cudaSetDevice(model->device);
  cudaStreamSynchronize(model->stream);
  free_given_back(model->device);
  delete model;
  cudaGetLastError();
}

MICROGPT_CUDA_EXPORT size_t microgpt_cuda_cache_bytes(const MicrogptCudaModel* model) {
  const MicrogptCudaConfig& c = model->config;
  return 2 * sizeof(float) * static_cast<size_t>(c.n_layer) * c.block_size * c.n_embd;
}


MICROGPT_CUDA_EXPORT MicrogptCudaCache* microgpt_cuda_cache_create(MicrogptCudaModel* model, char* why, int why_size) {
  try {
    check(cudaSetDevice(model->device), "cudaSetDevice");
    free_given_back(model->device);  // their memory first
    auto cache = std::make_unique<MicrogptCudaCache>();
    cache->device = model->device;
    cache->memory = DeviceBuffer(microgpt_cuda_cache_bytes(model));
    return cache.release();
  } catch (const CudaFailure& f) {
    say(why, why_size, f.status == cudaErrorMemoryAllocation
                           ? "out of memory on CUDA device " + std::to_string(model->device) + " for a KV cache of " +
                                 megabytes(microgpt_cuda_cache_bytes(model))
                           : failure_text(f));
  } catch (const std::bad_alloc&) {
    say(why, why_size, "out of host memory");
  }
  return nullptr;
}

MICROGPT_CUDA_EXPORT void microgpt_cuda_cache_free(MicrogptCudaCache* cache) {
  if (cache == nullptr) return;
  GivenBack& g = given_back();
  std::lock_guard<std::mutex> lock(g.mutex);
  g.caches.push_back(cache);  // freed by the device's next pass, cache or model end (free_given_back)
}

MICROGPT_CUDA_EXPORT int microgpt_cuda_run(MicrogptCudaModel* model, const MicrogptCudaRequest* requests, int n, char* why,
                                           int why_size) {
  const MicrogptCudaConfig& c = model->config;
  int rows = 0;
  for (int i = 0; i < n; i++) {
    const MicrogptCudaRequest& r = requests[i];
    const bool bad_select = r.top_k < 0 || (r.top_k > 0 && (!valid_select(r.top_k, r.top_limit, c.vocab_size) ||
                                                             r.top_ids == nullptr || r.top_count == nullptr));
    if (r.cache == nullptr || r.T < 1 || r.start < 0 || r.start + r.T > c.block_size || (r.all_positions && n > 1) ||
        bad_select) {
      say(why, why_size, "invalid request " + std::to_string(i));
      return -1;
    }
    rows += r.T;
  }
  if (n < 1 || n > c.max_batch || rows > c.max_rows) {
    say(why, why_size, "a pass of " + std::to_string(n) + " requests and " + std::to_string(rows) + " rows is beyond the model's limits");
    return -1;
  }
  try {
    check(cudaSetDevice(model->device), "cudaSetDevice");
    free_given_back(model->device);
    run_pass(*model, requests, n);
    return 0;
  } catch (const CudaFailure& f) {
    say(why, why_size, f.status == cudaErrorMemoryAllocation ? "out of memory on CUDA device " + std::to_string(model->device)
                                                             : failure_text(f));
  } catch (const std::bad_alloc&) {
    say(why, why_size, "out of host memory");
  }
  return -1;
}

MICROGPT_CUDA_EXPORT void microgpt_cuda_model_stats(const MicrogptCudaModel* model, MicrogptCudaStats* out) {
  if (model == nullptr || out == nullptr) return;
  *out = model->stats;
  out->device_bytes += model->all_logits.bytes();
}

// ---- single kernels, for the tests ------------------------------------------------------------

namespace {

// Host arrays copied to the device for one test call, and the results back.
struct TestScope {
  std::vector<DeviceBuffer> buffers;
  cudaStream_t stream = nullptr;
  explicit TestScope(int device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  ~TestScope() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
  // Copies in the test's stream, so its kernels see them (a plain cudaMemcpy runs on the legacy
  // stream, which a non-blocking stream does not wait for).
  template <typename T>
  T* up(const T* host, size_t count) {
    if (host == nullptr) return nullptr;
    buffers.emplace_back(sizeof(T) * std::max<size_t>(count, 1));
    T* d = buffers.back().as<T>();
    check(cudaMemcpyAsync(d, host, sizeof(T) * count, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaMemcpyAsync");  // the source may be a temporary
    return d;
  }
  template <typename T>
  T* scratch(size_t count) {
    buffers.emplace_back(sizeof(T) * std::max<size_t>(count, 1));
    return buffers.back().as<T>();
  }
  template <typename T>
  void down(T* host, const T* device, size_t count) {
    check_launch("the kernel's launch");
    check(cudaStreamSynchronize(stream), "the kernel");
    check(cudaMemcpy(host, device, sizeof(T) * count, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
};

template <typename F>
int guarded(char* why, int why_size, F body) {
  try {
    body();
    return 0;
  } catch (const CudaFailure& f) {
    say(why, why_size, failure_text(f));
  } catch (const std::bad_alloc&) {
    say(why, why_size, "out of host memory");
  }
  return -1;
}

}  // namespace

namespace {

// A matmul test's common part: W (N, K) in either precision, out (T, N) (read first: the residual
// epilogue) and back; `launch` runs the kernel on the device copies.
template <typename Launch>
int matmul_test(int device, float* out, const float* w_f32, const uint16_t* w_f16, int T, int K, int N, char* why,
                int why_size, Launch launch) {
  return guarded(why, why_size, [&] {
    TestScope s(device);
    Matrix w;
    w.f32 = s.up(w_f32, static_cast<size_t>(N) * K);
    w.f16 = s.up(w_f16, static_cast<size_t>(N) * K);
    const size_t out_count = static_cast<size_t>(T) * N;
    float* d_out = s.up(out, out_count);
    launch(s, d_out, w);
    s.down(out, d_out, out_count);
  });
}

}  // namespace

MICROGPT_CUDA_EXPORT int microgpt_cuda_test_matmul(int device, float* out, const float* x, const float* w_f32,
                                                   const uint16_t* w_f16, const float* b, int T, int K, int N, int epilogue,
                                                   int variant, char* why, int why_size) {
  if ((w_f32 == nullptr) == (w_f16 == nullptr) || T < 1 || K < 1 || N < 1 || epilogue < 0 || epilogue > 2 || variant < 0 ||
      variant > 2 || (variant == 1 && T > kMaxFewRows)) {
    say(why, why_size, "invalid arguments");
    return -1;
  }
  return matmul_test(device, out, w_f32, w_f16, T, K, N, why, why_size, [&](TestScope& s, float* d_out, Matrix w) {
    launch_matmul(s.stream, d_out, s.up(x, static_cast<size_t>(T) * K), w, s.up(b, static_cast<size_t>(N)), T, K, N,
                  static_cast<Epilogue>(epilogue), variant);
  });
}

MICROGPT_CUDA_EXPORT int microgpt_cuda_test_norm_matmul(int device, float* out, const float* x, const float* ln_w,
                                                        const float* ln_b, const float* w_f32, const uint16_t* w_f16,
                                                        const float* b, int T, int K, int N, int epilogue, char* why,
                                                        int why_size) {
  if ((w_f32 == nullptr) == (w_f16 == nullptr) || ln_w == nullptr || T < 1 || T > kMaxNormRows || K < 1 || N < 1 ||
      epilogue < 0 || epilogue > 2) {
    say(why, why_size, "invalid arguments");
    return -1;
  }
  return matmul_test(device, out, w_f32, w_f16, T, K, N, why, why_size, [&](TestScope& s, float* d_out, Matrix w) {
    launch_norm_matmul(s.stream, d_out, s.up(x, static_cast<size_t>(T) * K), s.up(ln_w, static_cast<size_t>(K)),
                       s.up(ln_b, static_cast<size_t>(K)), w, s.up(b, static_cast<size_t>(N)), T, K, N,
                       static_cast<Epilogue>(epilogue));
  });
}

MICROGPT_CUDA_EXPORT int microgpt_cuda_test_layernorm(int device, float* out, const float* x, const float* w, const float* b,
                                                      int T, int C, char* why, int why_size) {
  if (T < 1 || C < 1 || w == nullptr) {
    say(why, why_size, "invalid arguments");
    return -1;
  }
  return guarded(why, why_size, [&] {
    TestScope s(device);
    const size_t n = static_cast<size_t>(T) * C;
    float* d_out = s.scratch<float>(n);
    launch_layernorm(s.stream, d_out, s.up(x, n), nullptr, s.up(w, static_cast<size_t>(C)), s.up(b, static_cast<size_t>(C)), T, C);
    s.down(out, d_out, n);
  });
}

MICROGPT_CUDA_EXPORT int microgpt_cuda_test_embedding(int device, float* x, const int32_t* ids, const float* wte_f32,
                                                      const uint16_t* wte_f16, const float* wpe, int start, int T, int V,
                                                      int C, char* why, int why_size) {
  if ((wte_f32 == nullptr) == (wte_f16 == nullptr) || T < 1 || C < 1 || V < 1 || start < 0) {
    say(why, why_size, "invalid arguments");
    return -1;
  }
  for (int t = 0; t < T; t++) {
    if (ids[t] < 0 || ids[t] >= V) {
      say(why, why_size, "ids out of range");
      return -1;
    }
  }
  return guarded(why, why_size, [&] {
    TestScope s(device);
    std::vector<int> pos(T);
    for (int t = 0; t < T; t++) pos[t] = start + t;
    Matrix wte;
    wte.f32 = s.up(wte_f32, static_cast<size_t>(V) * C);
    wte.f16 = s.up(wte_f16, static_cast<size_t>(V) * C);
    const size_t n = static_cast<size_t>(T) * C;
    float* d_x = s.scratch<float>(n);
    launch_embedding(s.stream, d_x, s.up(ids, static_cast<size_t>(T)), s.up(pos.data(), pos.size()), wte,
                     s.up(wpe, static_cast<size_t>(start + T) * C), T, C);
    s.down(x, d_x, n);
  });
}

MICROGPT_CUDA_EXPORT int microgpt_cuda_test_attention(int device, float* out, const float* qkv, const float* keys,
                                                      const float* values, int start, int T, int C, int n_head,
                                                      int block_size, char* why, int why_size) {
  if (T < 1 || start < 0 || C < 1 || n_head < 1 || C % n_head != 0 || start + T > block_size) {
    say(why, why_size, "invalid arguments");
    return -1;
  }
  return guarded(why, why_size, [&] {
    TestScope s(device);
    const int smem = shared_memory_limit(device);
    const int hs = C / n_head;
    if (!attention_fits(hs, block_size, smem)) {
      throw CudaFailure{cudaErrorInvalidValue, "shared memory for this block_size"};
    }
    prepare_kernels(smem);
    // A cache of one layer holding the earlier positions, the new rows stored by kv_store as a pass does.
    const size_t plane = static_cast<size_t>(block_size) * C;
    float* cache = s.scratch<float>(2 * plane);
    if (start > 0) {
      check(cudaMemcpyAsync(cache, keys, sizeof(float) * start * C, cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync");
      check(cudaMemcpyAsync(cache + plane, values, sizeof(float) * start * C, cudaMemcpyHostToDevice, s.stream),
            "cudaMemcpyAsync");
      check(cudaStreamSynchronize(s.stream), "cudaMemcpyAsync");
    }
    std::vector<int> pos(T);
    std::vector<float*> row_cache(T, cache);
    for (int t = 0; t < T; t++) pos[t] = start + t;
    const int q = T == 1 ? 1 : prefill_tile_rows(hs, block_size, smem);
    std::vector<AttentionTile> tiles;
    for (int j = 0; j < T; j += q) tiles.push_back(AttentionTile{cache, j, std::min(q, T - j), start + j, 0});
    const float* d_qkv = s.up(qkv, static_cast<size_t>(T) * 3 * C);
    // As a pass does: a decode step's attention stores its new key and value itself, a prefill's
    // are stored first.
    const bool decode = q == 1;
    if (!decode) {
      MG_LAUNCH(mgcuda::kv_store_kernel, dim3(T), dim3(64), 0, s.stream, d_qkv, s.up(row_cache.data(), row_cache.size()),
                s.up(pos.data(), pos.size()), 0, C, block_size, 1);
    }
    float* d_out = s.scratch<float>(static_cast<size_t>(T) * C);
    launch_attention(s.stream, q, d_out, d_qkv, s.up(tiles.data(), tiles.size()), static_cast<int>(tiles.size()), 0, C, n_head,
                     block_size, 1, decode);
    s.down(out, d_out, static_cast<size_t>(T) * C);
  });
}

MICROGPT_CUDA_EXPORT int microgpt_cuda_test_select(int device, const float* logits, int rows, int V, const int* k,
                                                   const int* limit, float* values, int32_t* ids, int* counts, char* why,
                                                   int why_size) {
  if (rows < 1 || V < 2 || logits == nullptr || k == nullptr || limit == nullptr) {
    say(why, why_size, "invalid arguments");
    return -1;
  }
  for (int r = 0; r < rows; r++) {
    if (!valid_select(k[r], limit[r], V)) {
      say(why, why_size, "row " + std::to_string(r) + ": k and limit must satisfy 0 < k < limit <= V");
      return -1;
    }
  }
  return guarded(why, why_size, [&] {
    TestScope s(device);
    const size_t n = static_cast<size_t>(rows) * V;
    std::vector<SelectRow> select(rows);
    for (int r = 0; r < rows; r++) select[r] = SelectRow{k[r], limit[r]};
    unsigned char* d_out = s.scratch<unsigned char>(static_cast<size_t>(kSelectRowBytes) * rows);
    float* d_values = s.scratch<float>(n);
    int* d_ids = s.scratch<int>(n);
    MG_LAUNCH(mgcuda::select_top_kernel, dim3(rows), dim3(mgcuda::kSelectThreads), 0, s.stream, d_out, d_values, d_ids,
              s.up(logits, n), s.up(select.data(), select.size()), V);
    std::vector<unsigned char> pieces(static_cast<size_t>(kSelectRowBytes) * rows);
    s.down(pieces.data(), d_out, pieces.size());
    for (int r = 0; r < rows; r++) {
      const size_t at = static_cast<size_t>(r) * V;
      counts[r] = collect_selected(pieces.data() + static_cast<size_t>(kSelectRowBytes) * r, d_values + at, d_ids + at,
                                   values + at, ids + at);
    }
  });
}
