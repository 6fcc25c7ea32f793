// The layers of the forward pass, each split across a thread pool by output rows, features or
// heads only (never within a sum), so results do not depend on the thread count.
#pragma once

#include "kernels.h"
#include "thread_pool.h"

#include <vector>

namespace microgpt {

// How many of the pool's threads a step of `work` multiply-adds should use, at most max_split: a
// split pays only when each thread's share is large against the pool's barrier.
int threads_for(const ThreadPool& pool, double work, int max_split);

// x (T, C) = wte[ids[t]] + wpe[start + t]: token plus position embedding, the residual stream.
void embedding(float* x, const int* ids, const float* wte, const float* wpe, int start, int T, int C);

// out (T, C) = LayerNorm(x (T, C)) * w + b, rows split across threads.
void layernorm(ThreadPool& pool, const Kernels& k, float* out, const float* x, const float* w, const float* b, int T,
               int C);

// out (T, N) = epilogue(x (T, K) · W^T + b), W (N, K) packed in either precision; threads take
// whole panels of output features.
void matmul(ThreadPool& pool, const Kernels& k, float* out, const float* x, const PackedLinear& w, const float* b,
            int T, int K, int N, Epilogue epilogue);

// The new rows of one sequence in a pass: rows [row, row + T) of qkv/att, at positions
// start..start+T-1, whose cache for the current layer is keys (tiles, C, kKeyTile: see kernels.h)
// and values (positions, C).
struct AttentionRun {
  int row, T, start;
  float* keys;
  float* values;
};

// A run's rows in blocks of at most R (the kernel's query block): block b is rows
// [row[b], row[b + 1]) of run run[b]; the same for every layer of a pass.
struct AttentionBlocks {
  std::vector<int> run, row;  // row has one more entry: the end
  double work = 0;            // all blocks' work, for the thread split (layers.cpp: multiply-adds or bytes)
};
AttentionBlocks attention_blocks(const AttentionRun* runs, int n_runs, int R, int C);

// Causal self-attention of the runs' new tokens: each row's k and v (from qkv) are written to its
// run's cache first, then it attends over positions 0..its own. qkv (rows, 3C), att (rows, C):
// the heads' outputs side by side. scores (pool.size(), kAttentionRows * block_size): scratch.
// Work is split by (block, head).
void attention(ThreadPool& pool, const Kernels& k, float* att, const float* qkv, const AttentionRun* runs, int n_runs,
               const AttentionBlocks& blocks, float* scores, int C, int n_head, int block_size);

}  // namespace microgpt
