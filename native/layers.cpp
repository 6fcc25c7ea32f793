// The layers of the forward pass on a thread pool, and the rule for how many threads a step takes.
#include "layers.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace microgpt {

namespace {

// A split is worth it when each thread's share takes well over the pool's barrier: at a decode
// GEMV's ~5 multiply-adds per ns, 100k multiply-adds per microsecond of barrier keeps the barrier
// under ~5% of the step. Inside a pass the workers spin (ThreadPool::Busy), so the barrier is well
// under a microsecond where each thread has a core and the 64k floor decides: a decode step's
// matmuls split, its LayerNorms do not. With more threads than free cores the barrier grows and
// small steps stay on fewer threads.
double min_work_per_thread(const ThreadPool& pool) {
  // The barrier of the whole pool grows with its size; a split into n costs about n of its
  // per-thread shares.
  const double work = pool.barrier_seconds() / pool.size() * 1e6 * 100e3;
  return std::min(4e6, std::max(64e3, work));
}

}  // namespace

int threads_for(const ThreadPool& pool, double work, int max_split) {
  const int by_work = static_cast<int>(work / min_work_per_thread(pool));
  return std::max(1, std::min({pool.width(), by_work, max_split}));
}

namespace {

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

}  // namespace

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
  // Work in multiply-adds or, where the weights' bytes weigh more (a decode step streams each
  // weight for one multiply-add), half the bytes read: a float32 GEMV is two units a weight.
  const double weight_bytes = static_cast<double>(K) * N * (w.f16 ? 2 : 4);
  const int n = threads_for(pool, std::max(static_cast<double>(T) * K * N, weight_bytes / 2), panels);
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
      // A block's queries share each key and value it reads: multiply-adds, 2 per key and channel
      // per query, or, where the cache's bytes weigh more (a decode step's single query), half
      // the bytes of its keys and values (as for the matmuls' weights).
      const int rows = std::min(R, r.T - t);
      const double last = r.start + t + rows;  // positions the block's last query sees
      double macs = 0;
      for (int q = 0; q < rows; q++) macs += 2.0 * (r.start + t + q + 1) * C;
      b.work += std::max(macs, 2.0 * last * C * sizeof(float) / 2);
    }
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

}  // namespace microgpt
