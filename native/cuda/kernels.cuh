// The CUDA engine's kernels: one per step of the forward pass, each with the meaning of the CPU
// engine's scalar reference (native/kernels_ref.cpp), float32 arithmetic throughout. Weights are
// float32 or float16 (W = float or uint16_t bits, widened on load); activations are float32.
//
// The kernels are written against compat.h only, so that they also build for the emulator and
// are tested on machines without a GPU (test/cuda-emulated.test.ts), and again on a GPU
// (test/cuda-engine.test.ts).
//
// Where a pass's rows, positions and caches come from: a pass uploads one small table (the
// engine's PassTable: ids, positions, each row's cache, attention tiles, the rows whose logits
// are wanted) and the kernels read it, so that a decode step's launches do not change from one
// step to the next and can be replayed from a CUDA graph.
#pragma once

#include "compat.h"

namespace mgcuda {

constexpr int kWarp = 32;

enum class Epilogue : int { store = 0, gelu = 1, residual = 2 };

// Exact GELU, the erf form (nanoGPT's nn.GELU()).
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }

__device__ __forceinline__ float widen(float w) { return w; }
__device__ __forceinline__ float widen(uint16_t w) { return mg_half_to_float(w); }

// The epilogue is an argument, not a template parameter: the branch is the same for every thread
// (free), and a third as many kernels compile (nvcc builds each for five targets).
__device__ __forceinline__ void store(float* dst, float v, Epilogue e) {
  if (e == Epilogue::store) *dst = v;
  if (e == Epilogue::gelu) *dst = gelu(v);
  if (e == Epilogue::residual) *dst += v;
}

// Four consecutive weights, widened (16-byte reads of float32, 8-byte of float16: k % 4 == 0).
__device__ __forceinline__ void load4(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ __forceinline__ void load4(const uint16_t* p, float* out) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  out[0] = mg_half_to_float(static_cast<uint16_t>(v.x & 0xffffu));
  out[1] = mg_half_to_float(static_cast<uint16_t>(v.x >> 16));
  out[2] = mg_half_to_float(static_cast<uint16_t>(v.y & 0xffffu));
  out[3] = mg_half_to_float(static_cast<uint16_t>(v.y >> 16));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int m = kWarp / 2; m > 0; m /= 2) v += mg_shfl_xor(v, m);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int m = kWarp / 2; m > 0; m /= 2) v = fmaxf(v, mg_shfl_xor(v, m));
  return v;
}

// Every thread's v reduced by `op` (sum or max), returned to all (blockDim.x a multiple of 32, at
// most 1024). `scratch`: 32 floats of shared memory, free again when this returns.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, float identity, Op op) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  for (int m = kWarp / 2; m > 0; m /= 2) v = op(v, mg_shfl_xor(v, m));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < warps ? scratch[lane] : identity;
    for (int m = kWarp / 2; m > 0; m /= 2) t = op(t, mg_shfl_xor(t, m));
    if (lane == 0) scratch[0] = t;
  }
  __syncthreads();
  const float total = scratch[0];
  __syncthreads();
  return total;
}

struct Add {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce(v, scratch, 0.0f, Add()); }
__device__ __forceinline__ float block_max(float v, float* scratch) { return block_reduce(v, scratch, -INFINITY, Max()); }

// ---- embedding ------------------------------------------------------------------------------

// x (rows, C): x[r] = wte[ids[r]] + wpe[pos[r]]. Grid: rows; any block size.
template <typename W>
__global__ void embedding_kernel(float* __restrict__ x, const int* __restrict__ ids, const int* __restrict__ pos,
                                 const W* __restrict__ wte, const float* __restrict__ wpe, int C) {
  const int r = blockIdx.x;
  const W* te = wte + static_cast<size_t>(ids[r]) * C;
  const float* pe = wpe + static_cast<size_t>(pos[r]) * C;
  float* out = x + static_cast<size_t>(r) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) out[c] = widen(te[c]) + pe[c];
}

// ---- LayerNorm ------------------------------------------------------------------------------

// out (rows, C) = LayerNorm(x[source row]) * w + b, eps 1e-5, the variance of the deviations
// (two passes, as PyTorch). Row r of out is row `rows_from ? rows_from[r] : r` of x. Grid: rows;
// block a multiple of 32.
__global__ void layernorm_kernel(float* __restrict__ out, const float* __restrict__ x, const int* __restrict__ rows_from,
                                 const float* __restrict__ w, const float* __restrict__ b, int C) {
  MG_SHARED float scratch[kWarp];
  const int r = blockIdx.x;
  const float* xr = x + static_cast<size_t>(rows_from != nullptr ? rows_from[r] : r) * C;
  float* o = out + static_cast<size_t>(r) * C;
  float s = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
  const float mean = block_sum(s, scratch) / C;
  float v = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = xr[c] - mean;
    v += d * d;
  }
  const float var = block_sum(v, scratch) / C;
  const float rstd = 1.0f / sqrtf(var + 1e-5f);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    o[c] = (xr[c] - mean) * rstd * w[c] + (b != nullptr ? b[c] : 0.0f);
  }
}

// ---- matrix products: out (T, N) = epilogue(x (T, K) · W^T + b), W (N, K) as PyTorch keeps it --

// Few rows (decode steps, small batches): a warp per output feature, reading its weight row once
// for all T <= R rows, lanes striding over k (4 at a time where K allows), then summing across the
// warp. Memory-bound on W: every weight is read once, coalesced. Grid: ceil(N / warps per block).
template <int R, typename W>
__global__ void matmul_rows_kernel(float* __restrict__ out, const float* __restrict__ x, const W* __restrict__ w,
                                   const float* __restrict__ b, int T, int K, int N, Epilogue e) {
  const int lane = threadIdx.x % kWarp;
  const int n = blockIdx.x * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (n >= N) return;  // a whole warp leaves: no shuffle is left waiting
  const W* wn = w + static_cast<size_t>(n) * K;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.0f;
  int k = 0;
  if (K % 4 == 0) {
    // Unrolled: several weight loads of a lane in flight at once.
#pragma unroll 4
    for (k = lane * 4; k < K; k += kWarp * 4) {
      float wv[4];
      load4(wn + k, wv);
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (r < T) {
          const float4 xv = *reinterpret_cast<const float4*>(x + static_cast<size_t>(r) * K + k);
          acc[r] += xv.x * wv[0] + xv.y * wv[1] + xv.z * wv[2] + xv.w * wv[3];
        }
      }
    }
  } else {
    for (k = lane; k < K; k += kWarp) {
      const float wv = widen(wn[k]);
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (r < T) acc[r] += x[static_cast<size_t>(r) * K + k] * wv;
      }
    }
  }
  const float bias = b != nullptr ? b[n] : 0.0f;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float total = warp_sum(acc[r]);
    if (lane == 0 && r < T) store(out + static_cast<size_t>(r) * N + n, total + bias, e);
  }
}

// LayerNorm fused into the few-rows matmul, for decode steps: out = epilogue(LayerNorm(x) · W^T
// + b) for T <= R rows of x (T, K), the LayerNorm's weights ln_w, ln_b (K; ln_b may be null). Each
// block normalises the rows itself (a warp a row, as layernorm_kernel computes them), which at this
// few rows costs less than the launch of a kernel of its own. Grid and block as matmul_rows_kernel.
template <int R, typename W>
__global__ void norm_matmul_rows_kernel(float* __restrict__ out, const float* __restrict__ x,
                                        const float* __restrict__ ln_w, const float* __restrict__ ln_b,
                                        const W* __restrict__ w, const float* __restrict__ b, int T, int K, int N,
                                        Epilogue e) {
  MG_SHARED float mean_of[R];
  MG_SHARED float rstd_of[R];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  for (int r = warp; r < T; r += warps) {
    const float* xr = x + static_cast<size_t>(r) * K;
    float s = 0.0f;
    for (int k = lane; k < K; k += kWarp) s += xr[k];
    const float mean = warp_sum(s) / K;
    float v = 0.0f;
    for (int k = lane; k < K; k += kWarp) {
      const float d = xr[k] - mean;
      v += d * d;
    }
    const float var = warp_sum(v) / K;
    if (lane == 0) {
      mean_of[r] = mean;
      rstd_of[r] = 1.0f / sqrtf(var + 1e-5f);
    }
  }
  __syncthreads();
  const int n = blockIdx.x * warps + warp;
  if (n >= N) return;  // a whole warp leaves, after the block's one barrier
  float mean[R], rstd[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    mean[r] = r < T ? mean_of[r] : 0.0f;
    rstd[r] = r < T ? rstd_of[r] : 0.0f;
  }
  const W* wn = w + static_cast<size_t>(n) * K;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.0f;
  // Unrolled: several weight loads of a lane in flight at once.
#pragma unroll 4
  for (int k = lane; k < K; k += kWarp) {
    const float wv = widen(wn[k]);
    const float g = ln_w[k], beta = ln_b != nullptr ? ln_b[k] : 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (r < T) acc[r] += ((x[static_cast<size_t>(r) * K + k] - mean[r]) * rstd[r] * g + beta) * wv;
    }
  }
  const float bias = b != nullptr ? b[n] : 0.0f;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float total = warp_sum(acc[r]);
    if (lane == 0 && r < T) store(out + static_cast<size_t>(r) * N + n, total + bias, e);
  }
}

// Many rows (prefill): 64 x 64 output tiles, k in steps of 16 through shared memory, each of
// 256 threads accumulating a 4 x 4 block. Grid: (ceil(N / 64), ceil(T / 64)); block 256.
constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
template <typename W>
__global__ void matmul_tiled_kernel(float* __restrict__ out, const float* __restrict__ x, const W* __restrict__ w,
                                    const float* __restrict__ b, int T, int K, int N, Epilogue e) {
  // Transposed tiles ([k][m], [k][n]): a thread's 4 consecutive m (or n) are one 16-byte read,
  // hence float4 storage (16-byte aligned), filled a float at a time.
  MG_SHARED float4 xs4[kTileK][(kTileM + 4) / 4];
  MG_SHARED float4 ws4[kTileK][(kTileN + 4) / 4];
  float(*xs)[kTileM + 4] = reinterpret_cast<float(*)[kTileM + 4]>(&xs4[0][0]);
  float(*ws)[kTileN + 4] = reinterpret_cast<float(*)[kTileN + 4]>(&ws4[0][0]);
  const int tid = threadIdx.x;
  const int m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
  const int tm = (tid / 16) * 4, tn = (tid % 16) * 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kTileK) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int e = tid + i * 256;  // 1,024 elements of each tile, 16 consecutive k of a row together
      const int row = e / kTileK, kk = e % kTileK, gk = k0 + kk;
      const int gm = m0 + row, gn = n0 + row;
      xs[kk][row] = gm < T && gk < K ? x[static_cast<size_t>(gm) * K + gk] : 0.0f;
      ws[kk][row] = gn < N && gk < K ? widen(w[static_cast<size_t>(gn) * K + gk]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk++) {
      const float4 a4 = xs4[kk][tm / 4], c4 = ws4[kk][tn / 4];
      const float a[4] = {a4.x, a4.y, a4.z, a4.w}, c[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += a[i] * c[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int gm = m0 + tm + i;
    if (gm >= T) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int gn = n0 + tn + j;
      if (gn < N) store(out + static_cast<size_t>(gm) * N + gn, acc[i][j] + (b != nullptr ? b[gn] : 0.0f), e);
    }
  }
}

// ---- attention ------------------------------------------------------------------------------

// A KV cache on the device: keys (n_layer, block_size, C), then values (n_layer, block_size, C).
// A run of consecutive rows of one sequence that one attention block computes: rows [row, row +
// rows) of the pass, at positions pos..pos+rows-1 of `cache`.
struct AttentionTile {
  float* cache;
  int row;
  int rows;
  int pos;
  int pad_;
};

// Writes the new rows' keys and values (from qkv (rows, 3C)) into their caches at layer `layer`.
// Grid: rows; any block size.
__global__ void kv_store_kernel(const float* __restrict__ qkv, float* const* __restrict__ row_cache,
                                const int* __restrict__ pos, int layer, int C, int block_size, int n_layer) {
  const int r = blockIdx.x;
  const size_t plane = static_cast<size_t>(n_layer) * block_size * C;  // keys, then values
  float* keys = row_cache[r] + (static_cast<size_t>(layer) * block_size + pos[r]) * C;
  float* values = keys + plane;
  const float* src = qkv + static_cast<size_t>(r) * 3 * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    keys[c] = src[C + c];
    values[c] = src[2 * C + c];
  }
}

// Shared memory of attention_kernel<Q> for a model: Q query rows and their scores against every
// position (both rows padded by one float, so that threads reading the same column of different
// rows hit different banks), and one partial sum a thread.
inline size_t attention_smem_bytes(int Q, int head_size, int block_size, int threads) {
  return sizeof(float) * (static_cast<size_t>(Q) * (head_size + 1) + static_cast<size_t>(Q) * (block_size + 1) + Q + threads);
}

// Causal attention of one tile (at most Q rows of one sequence) for one head: scores of each row
// against positions 0..its own, an exact softmax (max subtracted, as the reference), then the
// weighted sum of values. Grid: (tiles, n_head); block `threads` (a multiple of 32); dynamic
// shared memory attention_smem_bytes(Q, hs, block_size, threads).
// store_new: the block first writes its head's part of its rows' keys and values to the cache
// (kv_store_kernel's job, one launch less a layer). Only where no other block reads them: a
// decode step, each tile its sequence's one new row.
template <int Q>
__global__ void attention_kernel(float* __restrict__ att, const float* __restrict__ qkv,
                                 const AttentionTile* __restrict__ tiles, int layer, int C, int n_head, int block_size,
                                 int n_layer, int store_new) {
  MG_DYNAMIC_SHARED(float, smem);
  const AttentionTile tile = tiles[blockIdx.x];
  const int h = blockIdx.y, hs = C / n_head;
  const int tid = threadIdx.x, threads = blockDim.x;
  const int lane = tid % kWarp, warp = tid / kWarp, warps = threads / kWarp;
  const int q_stride = hs + 1, s_stride = block_size + 1;
  float* q = smem;                                            // (Q, hs + 1)
  float* scores = q + Q * q_stride;                           // (Q, block_size + 1)
  float* inv_sum = scores + static_cast<size_t>(Q) * s_stride;  // (Q)
  float* partial = inv_sum + Q;                               // (threads)
  const int rows = tile.rows;
  const int n_keys = tile.pos + rows;  // the last row sees positions 0..pos+rows-1
  const size_t plane = static_cast<size_t>(n_layer) * block_size * C;
  float* const head = tile.cache + static_cast<size_t>(layer) * block_size * C + h * hs;  // this head's keys
  const float* keys = head;
  const float* values = head + plane;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));

  for (int i = tid; i < rows * hs; i += threads) {
    const int r = i / hs, d = i % hs;
    const float* src = qkv + static_cast<size_t>(tile.row + r) * 3 * C + h * hs + d;
    q[r * q_stride + d] = src[0];
    if (store_new) {
      head[static_cast<size_t>(tile.pos + r) * C + d] = src[C];
      head[plane + static_cast<size_t>(tile.pos + r) * C + d] = src[2 * C];
    }
  }
  __syncthreads();  // also makes the stored key and value visible to the block's other threads

  // Scores: a thread a (row, position), rows fastest, so the threads of a warp that share a
  // position read its key once.
  for (int i = tid; i < rows * n_keys; i += threads) {
    const int r = i % rows, j = i / rows;
    if (j > tile.pos + r) {  // beyond the row's own position: weighs nothing in the output
      scores[static_cast<size_t>(r) * s_stride + j] = 0.0f;
      continue;
    }
    const float* qr = q + r * q_stride;
    const float* kj = keys + static_cast<size_t>(j) * C;
    float dot = 0.0f;
    if (hs % 4 == 0 && C % 4 == 0) {
      for (int d = 0; d < hs; d += 4) {
        const float4 kv = *reinterpret_cast<const float4*>(kj + d);
        dot += qr[d] * kv.x + qr[d + 1] * kv.y + qr[d + 2] * kv.z + qr[d + 3] * kv.w;
      }
    } else {
      for (int d = 0; d < hs; d++) dot += qr[d] * kj[d];
    }
    scores[static_cast<size_t>(r) * s_stride + j] = dot * scale;
  }
  __syncthreads();

  if (rows == 1) {
    // A decode step: one row, its softmax across the whole block.
    float* s = scores;
    const int n = tile.pos + 1;
    float max = -INFINITY;
    for (int j = tid; j < n; j += threads) max = fmaxf(max, s[j]);
    max = block_max(max, partial);
    float sum = 0.0f;
    for (int j = tid; j < n; j += threads) {
      const float e = expf(s[j] - max);
      s[j] = e;
      sum += e;
    }
    sum = block_sum(sum, partial);
    // Output: the head's dimensions across threads (coalesced value reads), the positions split
    // among `groups` threads of each dimension, their partial sums added in shared memory.
    const int groups = threads >= hs ? threads / hs : 1;
    const int g = threads >= hs ? tid / hs : 0;
    for (int d0 = 0; d0 < hs; d0 += threads) {
      const int d = d0 + (threads >= hs ? tid % hs : tid);
      const bool active = g < groups && d < hs;
      float acc = 0.0f;
      if (active) {
        // Unrolled: each load is independent of the sum, so several are in flight at once.
#pragma unroll 8
        for (int j = g; j < n; j += groups) acc += s[j] * values[static_cast<size_t>(j) * C + d];
      }
      __syncthreads();  // partial is free (block_sum's last use, or the previous round's)
      partial[tid] = acc;
      __syncthreads();
      if (active && g == 0) {
        for (int o = 1; o < groups; o++) acc += partial[o * hs + (d - d0)];
        att[static_cast<size_t>(tile.row) * C + h * hs + d] = acc / sum;
      }
    }
    return;
  }

  // A prefill's tile: a warp a row's softmax.
  for (int r = warp; r < rows; r += warps) {
    float* s = scores + static_cast<size_t>(r) * s_stride;
    const int n = tile.pos + r + 1;
    float max = -INFINITY;
    for (int j = lane; j < n; j += kWarp) max = fmaxf(max, s[j]);
    max = warp_max(max);
    float sum = 0.0f;
    for (int j = lane; j < n; j += kWarp) {
      const float e = expf(s[j] - max);
      s[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) inv_sum[r] = 1.0f / sum;
  }
  __syncthreads();

  // Output: a thread a dimension d for a group of rows (r = g, g + groups, ...), so each value
  // it loads serves all of them; every row runs over the tile's positions, its own masked ones
  // weighing 0.
  const int groups = threads >= hs ? threads / hs : 1;
  const int g = threads >= hs ? tid / hs : 0;
  if (g >= groups) return;
  for (int d = threads >= hs ? tid % hs : tid; d < hs; d += threads >= hs ? hs : threads) {
    float acc[Q];
#pragma unroll
    for (int i = 0; i < Q; i++) acc[i] = 0.0f;
    for (int j = 0; j < n_keys; j++) {
      const float v = values[static_cast<size_t>(j) * C + d];
#pragma unroll
      for (int i = 0; i < Q; i++) {
        const int r = g + i * groups;
        if (r < rows) acc[i] += scores[static_cast<size_t>(r) * s_stride + j] * v;
      }
    }
#pragma unroll
    for (int i = 0; i < Q; i++) {
      const int r = g + i * groups;
      if (r < rows) att[static_cast<size_t>(tile.row + r) * C + h * hs + d] = acc[i] * inv_sum[r];
    }
  }
}

// ---- top-k candidates -----------------------------------------------------------------------

// The sampler's top-k (lib/sampling/sample.ts) done on the device, so that a decode step of a
// large vocabulary copies back the few logits a draw can pick, and the host's sampler walks those
// instead of all of them: for a row of logits, the ids i < limit whose logit is at or above the
// k-th largest of logits[0..limit) (ties with the k-th kept, as the sampler keeps them), in
// ascending id order, with their logits. Comparisons are numeric, as the sampler's: -0 equals +0.
struct SelectRow {
  int k;      // 1 <= k < limit; 0: the row is not selected
  int limit;  // <= V
};

// A row's result, copied back as one piece (kSelectRowBytes): int count, padding to 16 bytes,
// float values[kSelectCap], int ids[kSelectCap]. count: candidates found, in values and ids when
// at most kSelectCap; more: all of them are in the overflow arrays instead (the row's V-sized part
// of full_values and full_ids); -1: the row holds a NaN, whose order the sampler defines on the
// logits themselves (the host reads them).
constexpr int kSelectCap = 256;
constexpr int kSelectThreads = 1024;
constexpr int kSelectRowBytes = 16 + 8 * kSelectCap;

// A float's place in numeric order as an unsigned integer (larger float, larger key); -0 as +0.
__device__ __forceinline__ unsigned order_key(float f) {
  unsigned u = mg_float_bits(f);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Inclusive prefix sum over the lanes of a warp (lane 0 first).
__device__ __forceinline__ int warp_inclusive_sum(int v) {
  const int lane = threadIdx.x % kWarp;
  for (int d = 1; d < kWarp; d *= 2) {
    const int t = mg_shfl_up(v, d);
    if (lane >= d) v += t;
  }
  return v;
}

// Grid: one block per row of logits (rows, V); block kSelectThreads. The k-th largest key by
// radix selection, a byte at a time from the top (four passes over the row, each counting the
// keys that share the digits found so far, a histogram per warp), then the candidates written in
// id order: each warp a contiguous run of ids, read 32 at a time (coalesced), a ballot placing
// each lane's candidate after the lanes before it, the warps' offsets a prefix sum of counts.
__global__ void __launch_bounds__(kSelectThreads)
    select_top_kernel(unsigned char* __restrict__ out, float* __restrict__ full_values, int* __restrict__ full_ids,
                      const float* __restrict__ logits, const SelectRow* __restrict__ select, int V) {
  constexpr int kWarps = kSelectThreads / kWarp;
  MG_SHARED unsigned hist[kWarps][256];
  MG_SHARED unsigned total[256];
  MG_SHARED unsigned chosen[2];  // the digit found, and how many keys lie above it
  MG_SHARED int warp_count[kWarps], warp_offset[kWarps], found;
  const SelectRow sel = select[blockIdx.x];
  if (sel.k <= 0) return;  // the whole block: nothing was asked of this row
  const int tid = threadIdx.x, threads = blockDim.x;
  const int lane = tid % kWarp, warp = tid / kWarp, warps = threads / kWarp;
  const int n = sel.limit;
  const float* x = logits + static_cast<size_t>(blockIdx.x) * V;
  unsigned char* row_out = out + static_cast<size_t>(blockIdx.x) * kSelectRowBytes;

  unsigned prefix = 0, mask = 0, remaining = static_cast<unsigned>(sel.k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < warps * 256; i += threads) hist[i / 256][i % 256] = 0;
    __syncthreads();
    int nan = 0;
    // A warp's lanes read 32 consecutive logits (the bounds are the warp's, so every lane runs
    // every iteration). Logits share few top bytes (sign and exponent), so lanes with the same
    // digit add once, the lowest of them for all: no queue of same-address atomics.
    for (int base = tid - lane; base < n; base += threads) {
      const int i = base + lane;
      const float v = i < n ? x[i] : 0.0f;
      nan |= (mg_float_bits(v) & 0x7fffffffu) > 0x7f800000u;
      const unsigned key = order_key(v);
      const bool counted = i < n && (key & mask) == prefix;
      const unsigned digit = (key >> shift) & 255u;
      const unsigned peers = mg_match_any(counted ? digit : 256u + lane);  // the uncounted: alone
      if (counted && (peers & ((1u << lane) - 1u)) == 0) atomicAdd(&hist[warp][digit], static_cast<unsigned>(mg_popc(peers)));
    }
    if (__syncthreads_or(nan)) {  // every thread sees the same answer
      if (tid == 0) *reinterpret_cast<int*>(row_out) = -1;
      return;
    }
    if (tid < 256) {
      unsigned sum = 0;
      for (int w = 0; w < warps; w++) sum += hist[w][tid];
      total[tid] = sum;
    }
    __syncthreads();
    // The digit of the remaining-th largest key among those sharing the prefix: lane 0 counts
    // digits 255..248, lane 1 247..240, ...; the lane whose range crosses `remaining` finds it.
    if (warp == 0) {
      unsigned mine = 0;
      for (int j = 0; j < 8; j++) mine += total[255 - 8 * lane - j];
      const unsigned incl = static_cast<unsigned>(warp_inclusive_sum(static_cast<int>(mine)));
      const unsigned excl = incl - mine;
      if (excl < remaining && remaining <= incl) {
        unsigned above = excl;
        for (int j = 0; j < 8; j++) {
          const int digit = 255 - 8 * lane - j;
          if (above + total[digit] >= remaining) {
            chosen[0] = static_cast<unsigned>(digit);
            chosen[1] = above;
            break;
          }
          above += total[digit];
        }
      }
    }
    __syncthreads();
    prefix |= chosen[0] << shift;
    mask |= 255u << shift;
    remaining -= chosen[1];
  }
  const unsigned kth = prefix;  // the k-th largest key

  // Candidates in id order: warp w takes ids [w * span, (w + 1) * span), 32 at a time. Every
  // lane runs the same iterations (the bounds are the warp's), so each ballot has the full warp.
  const int span = (n + warps - 1) / warps;
  const int begin = min(n, warp * span), end = min(n, begin + span);
  int mine = 0;  // the warp's count, the same in every lane
  for (int base = begin; base < end; base += kWarp) {
    const int i = base + lane;
    mine += mg_popc(mg_ballot(i < end && order_key(x[i]) >= kth));
  }
  if (lane == 0) warp_count[warp] = mine;
  __syncthreads();
  if (warp == 0) {
    const int c = lane < warps ? warp_count[lane] : 0;
    const int w_incl = warp_inclusive_sum(c);
    if (lane < warps) warp_offset[lane] = w_incl - c;
    if (lane == kWarp - 1) found = w_incl;
  }
  __syncthreads();
  const int count = found;
  int at = warp_offset[warp];
  const bool head = count <= kSelectCap;
  float* values = head ? reinterpret_cast<float*>(row_out + 16) : full_values + static_cast<size_t>(blockIdx.x) * V;
  int* ids = head ? reinterpret_cast<int*>(row_out + 16 + 4 * kSelectCap) : full_ids + static_cast<size_t>(blockIdx.x) * V;
  const unsigned before = (1u << lane) - 1u;  // the lanes below this one
  for (int base = begin; base < end; base += kWarp) {
    const int i = base + lane;
    const float v = i < end ? x[i] : 0.0f;
    const bool hit = i < end && order_key(v) >= kth;
    const unsigned hits = mg_ballot(hit);
    if (hit) {
      const int slot = at + mg_popc(hits & before);
      values[slot] = v;
      ids[slot] = i;
    }
    at += mg_popc(hits);
  }
  if (tid == 0) *reinterpret_cast<int*>(row_out) = count;
}

}  // namespace mgcuda
