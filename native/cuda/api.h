// The C interface between the addon and its CUDA module (microgpt_cuda.so, built from
// native/cuda/ when nvcc is found: CMake's MICROGPT_CUDA). The addon never links CUDA: it opens
// the module at run time (native/cuda_loader.cpp), and the module links CUDA's static runtime, so
// a machine needs only the NVIDIA driver. Plain C types only: the module is built by nvcc, the
// addon by the host compiler, and either may be newer than the other; MICROGPT_CUDA_ABI says
// which version of this interface a module speaks.
//
// The same interface is built a second time from the same sources by the host compiler against
// an emulator of the CUDA runtime (native/cuda/emulator.h): microgpt_cuda_emulated.so, which
// runs every kernel on the CPU, so that the engine is tested on machines without a GPU.
//
// Every function that can fail returns null or -1 and writes why in `why` (NUL-terminated, at
// most why_size bytes; `why` may be null). Functions never throw and never abort.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define MICROGPT_CUDA_ABI 3

extern "C" {

struct MicrogptCudaDevice {
  char name[256];
  size_t memory_bytes;  // total device memory
  int major, minor;     // compute capability
  int multiprocessors;
  int usable;           // 1 when this module's kernels run on it (compute capability 8.0 or later)
};

// The interface version the module was built with (MICROGPT_CUDA_ABI).
typedef int (*microgpt_cuda_abi_fn)(void);

// Fills up to `max` devices and returns how many there are, or -1 when CUDA cannot be used at
// all, with why: no driver, a driver too old for this module's runtime, no device. Safe to call
// more than once; initialises the driver.
typedef int (*microgpt_cuda_devices_fn)(MicrogptCudaDevice* out, int max, char* why, int why_size);

// ---- the engine ----------------------------------------------------------------------------

// A model's shape, as the addon's Config (native/config.h), already checked by check_config.
struct MicrogptCudaConfig {
  int vocab_size, block_size, n_layer, n_head, n_embd;
  int bias;       // 1 when the Linear layers and LayerNorms have biases
  int max_rows;   // the most rows (tokens of all requests) one pass takes
  int max_batch;  // the most requests one pass takes
};

enum MicrogptCudaPrecision { MICROGPT_CUDA_F32 = 0, MICROGPT_CUDA_F16 = 1 };

// Flags of microgpt_cuda_model_create.
enum MicrogptCudaFlags {
  MICROGPT_CUDA_PROFILE = 1,    // time each step of every pass (no CUDA graphs then)
  MICROGPT_CUDA_NO_GRAPHS = 2,  // launch every kernel of a decode step (graphs are for tests to compare)
};

typedef struct MicrogptCudaModel MicrogptCudaModel;  // opaque: weights and scratch on one device
typedef struct MicrogptCudaCache MicrogptCudaCache;  // opaque: one session's keys and values on the device

// Uploads a model to `device`. `tensors`: n_tensors pointers, one per entry of the addon's
// tensor_layout(config) in its order (nanoGPT's state_dict order, biases only with bias), each
// to that tensor's floats in PyTorch's layout; read during the call only. With MICROGPT_CUDA_F16
// the matrices (wte, also the tied lm_head, and every Linear weight) are kept in IEEE float16
// (round to nearest even), the rest in float32; arithmetic is float32 either way. The caller has
// checked the weights fit float16. `flags`: MicrogptCudaFlags. Returns null with why on failure;
// *out_of_memory (may be null) is set to 1 when the device had too little free memory.
typedef MicrogptCudaModel* (*microgpt_cuda_model_create_fn)(int device, const MicrogptCudaConfig* config,
                                                            const float* const* tensors, int n_tensors, int precision,
                                                            int flags, int* out_of_memory, char* why, int why_size);
// Frees the model's device memory. No pass of the model may be running.
typedef void (*microgpt_cuda_model_free_fn)(MicrogptCudaModel* model);

// A KV cache for positions 0..block_size-1 of every layer of `model`, uninitialised. Its device
// memory is its own: it may be freed after the model. Null with why (out of device memory).
// cache_free may be called on any thread and makes no CUDA call: the memory is freed by the next
// cache_create, run or model_free of a model on the same device (cudaFree waits for the device).
typedef MicrogptCudaCache* (*microgpt_cuda_cache_create_fn)(MicrogptCudaModel* model, char* why, int why_size);
typedef void (*microgpt_cuda_cache_free_fn)(MicrogptCudaCache* cache);
// Device bytes of one cache of the model.
typedef size_t (*microgpt_cuda_cache_bytes_fn)(const MicrogptCudaModel* model);

// One request of a pass, as the addon's ForwardRequest: ids (T) at positions start..start+T-1 of
// `cache` (start + T <= block_size), extending it; the logits of every position (T, vocab_size)
// when all_positions, else of the last one (vocab_size), written to `logits` (host memory).
//
// Top-k candidates instead of the last position's logits (a decode step of a large vocabulary
// then copies back and hands the sampler a few hundred numbers, not all of them): top_k > 0 asks
// for the ids i < top_limit whose logit is at or above the top_k-th largest of logits[0..top_limit)
// (ties with it included: lib/sampling/sample.ts's top-k), 1 <= top_k < top_limit <= vocab_size.
// They are given when every request of the pass asks for them: their logits in logits[0..n) and
// their ids in top_ids[0..n) (room for top_limit), ascending ids, *top_count = n. Otherwise (and
// for a row holding a NaN, whose order the sampler defines) the logits are written as without
// top_k, and *top_count = 0. top_count may be null when top_k is 0.
struct MicrogptCudaRequest {
  MicrogptCudaCache* cache;
  int start;
  const int32_t* ids;  // host memory, T ids in [0, vocab_size)
  int T;
  float* logits;
  int all_positions;
  int top_k;
  int top_limit;
  int32_t* top_ids;
  int* top_count;
};

// One batched pass: n requests (n <= max_batch, rows <= max_rows; a request with all_positions
// only alone), as the CPU engine's forward(). Returns 0 when every request has its logits, -1
// with why when the pass failed (then no logits are valid). One pass of a model at a time.
typedef int (*microgpt_cuda_run_fn)(MicrogptCudaModel* model, const MicrogptCudaRequest* requests, int n, char* why,
                                    int why_size);

// What a model's passes have done, for stats and the benchmark.
struct MicrogptCudaStats {
  size_t device_bytes;     // weights, scratch, and this model's cached CUDA graphs (caches apart)
  uint64_t graph_launches; // decode passes replayed from a CUDA graph
  uint64_t graphs;         // graphs captured (one per decode batch size met, and per what came back)
  uint64_t selected_rows;  // rows whose top-k candidates came back instead of their logits
  // With MICROGPT_CUDA_PROFILE: seconds of device time in each step of the passes, in the order
  // of the addon's Phase (forward.h): embedding, layernorm, qkv, attention, attention_proj,
  // mlp_fc, mlp_proj, lm_head; and host seconds of each pass outside the kernels (uploading the
  // pass's ids and positions, waiting, copying the logits back).
  double phase_seconds[8];
  double host_seconds;
};
typedef void (*microgpt_cuda_model_stats_fn)(const MicrogptCudaModel* model, MicrogptCudaStats* out);

// ---- single kernels, for the tests ---------------------------------------------------------
// Each runs one kernel on `device` over host arrays (copied there and back) and returns 0, or -1
// with why. The meaning of each is that of the CPU engine's scalar reference (kernels_ref.cpp).

// out (T, N) = epilogue(x (T, K) · W^T + b) for W (N, K) in PyTorch's layout, given as float32
// (w_f32) or float16 bits (w_f16: exactly one of the two is non-null); b (N) or null.
// epilogue: 0 store, 1 GELU (exact, erf), 2 residual (out += ...; out is read first).
// variant: 0 the engine's choice for T rows, 1 the few-rows kernel (decode), 2 the tiled kernel.
typedef int (*microgpt_cuda_test_matmul_fn)(int device, float* out, const float* x, const float* w_f32,
                                            const uint16_t* w_f16, const float* b, int T, int K, int N, int epilogue,
                                            int variant, char* why, int why_size);
// out (T, N) = epilogue(LayerNorm(x (T, K)) · W^T + b) in one kernel (a decode step's LayerNorm
// and the matmul it feeds), T <= 8; the LayerNorm's weights ln_w (K) and ln_b (K, or null), the
// rest as microgpt_cuda_test_matmul.
typedef int (*microgpt_cuda_test_norm_matmul_fn)(int device, float* out, const float* x, const float* ln_w,
                                                 const float* ln_b, const float* w_f32, const uint16_t* w_f16,
                                                 const float* b, int T, int K, int N, int epilogue, char* why,
                                                 int why_size);
// out (T, C) = LayerNorm(x (T, C)) * w + b (eps 1e-5); b may be null.
typedef int (*microgpt_cuda_test_layernorm_fn)(int device, float* out, const float* x, const float* w,
                                               const float* b, int T, int C, char* why, int why_size);
// x (T, C) = wte[ids[t]] + wpe[start + t], wte (V, C) as float32 (wte_f32) or float16 bits
// (wte_f16), wpe (start + T, C).
typedef int (*microgpt_cuda_test_embedding_fn)(int device, float* x, const int32_t* ids, const float* wte_f32,
                                               const uint16_t* wte_f16, const float* wpe, int start, int T, int V,
                                               int C, char* why, int why_size);
// Causal self-attention of T new rows of one sequence at positions start..start+T-1:
// qkv (T, 3C) its queries, keys and values (heads side by side in each); keys and values
// (start, C) what its cache holds before. out (T, C): each head's softmax(q·k / sqrt(hs))·v over
// positions 0..its own, heads side by side. block_size >= start + T sizes the cache.
typedef int (*microgpt_cuda_test_attention_fn)(int device, float* out, const float* qkv, const float* keys,
                                               const float* values, int start, int T, int C, int n_head,
                                               int block_size, char* why, int why_size);

// The top-k candidates of `rows` rows of logits (rows, V), as a pass selects them (see
// MicrogptCudaRequest): row r's k[r] (0 < k[r] < limit[r] <= V) among its first limit[r]
// logits, into values and ids (rows, V): counts[r] of them, or -1 where the row holds a NaN.
typedef int (*microgpt_cuda_test_select_fn)(int device, const float* logits, int rows, int V, const int* k,
                                            const int* limit, float* values, int32_t* ids, int* counts, char* why,
                                            int why_size);

}  // extern "C"
