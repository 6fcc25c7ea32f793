// The forward pass: the rows of a batch of requests through every layer, on one model's weights.
#pragma once

#include <string>

#include "buffer.h"
#include "config.h"
#include "kv_cache.h"
#include "thread_pool.h"
#include "weights.h"

namespace microgpt {

// One forward pass asked of the model: ids (T) at positions start..start+T-1 of `cache`
// (start + T <= block_size), extending it. The logits of every position (T, vocab_size) when
// all_positions, else of the last one (vocab_size), go to `logits`.
struct ForwardRequest {
  KVCache* cache;
  int start;
  const int* ids;
  int T;
  float* logits;
  bool all_positions;
  std::string error;  // why the pass failed; empty when it ran
  // Top-k candidates instead of the last position's logits, where an engine gives them (the
  // CUDA engine's, for a large vocabulary: native/cuda/api.h, MicrogptCudaRequest): top_k > 0
  // asks for the ids below top_limit whose logit is at or above the top_k-th largest; top_count
  // > 0 says they came, their logits in logits[0..top_count) and ids in top_ids (room for
  // top_limit). The CPU engine always writes the logits (top_count stays 0).
  int top_k = 0;
  int top_limit = 0;
  int* top_ids = nullptr;
  int top_count = 0;
};

// The steps of a pass, timed one by one when a model is profiled (MICROGPT_PROFILE=1 at load):
// where a decode step's time goes. Off, each costs one branch.
enum class Phase { embedding, layernorm, qkv, attention, attention_proj, mlp_fc, mlp_proj, lm_head, count };
constexpr int kPhases = static_cast<int>(Phase::count);
const char* phase_name(Phase phase);

struct PassProfile {
  bool on = false;
  double seconds[kPhases] = {};  // this pass's, by Phase
};

// Activations of one batched forward pass of up to R = max_rows rows (one full
// prefill and a batch of decode steps), rows of several sequences stacked.
struct RunState {
  FloatBuffer x;       // (R, C) the residual stream
  FloatBuffer xn;      // (R, C) LayerNorm output
  FloatBuffer qkv;     // (R, 3C) queries, keys, values of the new tokens
  FloatBuffer att;     // (R, C) attention output, heads side by side
  FloatBuffer hidden;  // (R, 4C) the MLP's hidden layer, after GELU
  FloatBuffer scores;  // (threads, kAttentionRows * block_size) attention scores, a block per thread
  FloatBuffer logits;  // (max_batch, vocab_size) last-position logits of a batch of sequences
  PassProfile profile;
};

// Scratch for passes of up to max_rows rows and max_batch requests; no page is touched before a
// pass uses it.
RunState make_run_state(const Config& c, int threads, int max_rows, int max_batch);

// The threads a pass of `rows` rows, `out_rows` of them wanting logits, would use: its widest
// split, the largest matmul's, as far as the pool's width allows. The pass's lease asks for this
// many (transformer.cpp), and the pass's workers spin through it for all of the lease.
int pass_width(const Config& config, const ThreadPool& pool, int rows, int out_rows, bool f16);

// One forward pass over the rows of `batch` (n requests, `rows` tokens in all, at most the
// RunState's), writing each request's logits.
void forward(const Config& config, const Kernels& k, const Weights& w, ThreadPool& pool, RunState& s,
             ForwardRequest* const* batch, int n, int rows);

}  // namespace microgpt
