// The layers of the forward pass, each split across a thread pool by output rows, features or
// heads only (never within a sum), so results do not depend on the thread count.
#pragma once

#include "kernels.h"
#include "thread_pool.h"

namespace microgpt {

// x (T, C) = wte[ids[t]] + wpe[start + t]: token plus position embedding, the residual stream.
void embedding(float* x, const int* ids, const float* wte, const float* wpe, int start, int T, int C);

// out (T, C) = LayerNorm(x (T, C)) * w + b, rows split across threads.
void layernorm(ThreadPool& pool, const Kernels& k, float* out, const float* x, const float* w, const float* b, int T,
               int C);

// out (T, N) = epilogue(x (T, K) · W^T + b), W (N, K) packed in either precision; threads take
// whole panels of output features.
void matmul(ThreadPool& pool, const Kernels& k, float* out, const float* x, const PackedLinear& w, const float* b,
            int T, int K, int N, Epilogue epilogue);

// Causal self-attention of `rows` new tokens, possibly of several sequences. Row r is the token
// at position pos[r] of the sequence whose layer cache is keys[r] (tiles, C, kKeyTile: see
// kernels.h) and values[r] (positions, C): its k and v (from qkv) are written there first, then it
// attends over positions 0..pos[r]. qkv (rows, 3C), att (rows, C): the heads' outputs side by
// side. scores (pool.size(), kAttentionRows * block_size): scratch. Work is split by (block of
// consecutive rows of one sequence, head).
void attention(ThreadPool& pool, const Kernels& k, float* att, const float* qkv, float* const* keys,
               float* const* values, const int* pos, float* scores, int rows, int C, int n_head, int block_size);

}  // namespace microgpt
