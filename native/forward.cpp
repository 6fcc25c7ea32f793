// The nanoGPT forward pass, one layer after another, for the stacked rows of a batch.
#include "forward.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "layers.h"

namespace microgpt {

RunState make_run_state(const Config& c, int threads, int max_rows, int max_batch) {
  const size_t R = static_cast<size_t>(max_rows), C = static_cast<size_t>(c.n_embd);
  RunState s;
  s.x = FloatBuffer(R * C);
  s.xn = FloatBuffer(R * C);
  s.qkv = FloatBuffer(R * 3 * C);
  s.att = FloatBuffer(R * C);
  s.hidden = FloatBuffer(R * 4 * C);
  s.scores = FloatBuffer(static_cast<size_t>(threads) * kAttentionRows * c.block_size);
  s.logits = FloatBuffer(static_cast<size_t>(max_batch) * c.vocab_size);
  return s;
}

const char* phase_name(Phase phase) {
  static const char* const names[kPhases] = {"embedding", "layernorm", "qkv",     "attention",
                                             "attentionProj", "mlpFc", "mlpProj", "lmHead"};
  return names[static_cast<int>(phase)];
}

namespace {

// Charges the time since the last mark to a phase, when profiling.
class PhaseClock {
 public:
  explicit PhaseClock(PassProfile& p) : p_(p) {
    if (p_.on) {
      for (double& s : p_.seconds) s = 0;
      last_ = std::chrono::steady_clock::now();
    }
  }
  void mark(Phase phase) {
    if (!p_.on) return;
    const auto now = std::chrono::steady_clock::now();
    p_.seconds[static_cast<int>(phase)] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  PassProfile& p_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace

int pass_width(const Config& config, const ThreadPool& pool, int rows, int out_rows, bool f16) {
  // The widest split is the largest matmul's, as layers.cpp's matmul() counts it: c_fc (or
  // c_proj: the same size) for every row, or lm_head for the rows whose logits are wanted.
  const double C = config.n_embd, V = config.vocab_size, bytes = f16 ? 2 : 4;
  const double mlp = std::max(rows * C * 4 * C, 4 * C * C * bytes / 2);
  const double head = std::max(out_rows * C * V, C * V * bytes / 2);
  const int panels = std::max(panel_count(4 * config.n_embd), panel_count(config.vocab_size));
  return threads_for(pool, std::max(mlp, head), panels);
}

// Rows of all requests stacked: each layer's matmuls stream the weights once for all of them.
// Bit-identical to running each request alone: LayerNorm and the matmuls compute every row on its
// own (each output one FMA chain over k in order, whatever the tile: the GEMM micro-kernel for
// several rows, the GEMV for one), attention computes each row over its own sequence's cache
// whatever block it is in, and threads split by rows, panels or (block, head) only.
void forward(const Config& config, const Kernels& k, const Weights& w, ThreadPool& pool, RunState& s,
             ForwardRequest* const* batch, int n, int rows) {
  const int C = config.n_embd, B = config.block_size, V = config.vocab_size;
  // The workers the pass's widest split (its largest matmul) uses spin between the pass's ~50
  // splits instead of sleeping; the rest of the pool sleeps through it.
  ThreadPool::Busy busy(pool, pool.width());
  float* x = s.x.data();
  float* xn = s.xn.data();
  float* qkv = s.qkv.data();
  float* att = s.att.data();
  float* hidden = s.hidden.data();

  PhaseClock clock(s.profile);
  // Each request is one run of rows of attention; its cache pointers are set per layer.
  std::vector<AttentionRun> runs(n);
  for (int i = 0, row = 0; i < n; i++) {
    const ForwardRequest& r = *batch[i];
    embedding(x + static_cast<size_t>(row) * C, r.ids, w.wte, w.wpe, r.start, r.T, C);
    runs[i] = AttentionRun{row, r.T, r.start, nullptr, nullptr};
    row += r.T;
  }
  const AttentionBlocks blocks = attention_blocks(runs.data(), n, k.attention_rows, C);
  clock.mark(Phase::embedding);
  const size_t tiles = static_cast<size_t>(kv_cache_tiles(config));
  for (int l = 0; l < config.n_layer; l++) {
    const LayerWeights& lw = w.layers[l];
    for (int i = 0; i < n; i++) {
      KVCache& cache = *batch[i]->cache;
      runs[i].keys = cache.keys.data() + static_cast<size_t>(l) * tiles * C * kKeyTile;
      runs[i].values = cache.values.data() + static_cast<size_t>(l) * B * C;
    }

    layernorm(pool, k, xn, x, lw.ln1_weight, lw.ln1_bias, rows, C);
    clock.mark(Phase::layernorm);
    matmul(pool, k, qkv, xn, lw.attn_weight, lw.attn_bias, rows, C, 3 * C, Epilogue::store);
    clock.mark(Phase::qkv);
    attention(pool, k, att, qkv, runs.data(), n, blocks, s.scores.data(), C, config.n_head, B);
    clock.mark(Phase::attention);
    matmul(pool, k, x, att, lw.attn_proj_weight, lw.attn_proj_bias, rows, C, C, Epilogue::residual);
    clock.mark(Phase::attention_proj);

    layernorm(pool, k, xn, x, lw.ln2_weight, lw.ln2_bias, rows, C);
    clock.mark(Phase::layernorm);
    matmul(pool, k, hidden, xn, lw.mlp_fc_weight, lw.mlp_fc_bias, rows, C, 4 * C, Epilogue::gelu);
    clock.mark(Phase::mlp_fc);
    matmul(pool, k, x, hidden, lw.mlp_proj_weight, lw.mlp_proj_bias, rows, 4 * C, C, Epilogue::residual);
    clock.mark(Phase::mlp_proj);
  }

  // Final LayerNorm and the tied lm_head, only for the positions whose logits are wanted.
  if (n == 1) {
    const ForwardRequest& r = *batch[0];
    const int first = r.all_positions ? 0 : r.T - 1;
    const int out_rows = r.T - first;
    layernorm(pool, k, xn, x + static_cast<size_t>(first) * C, w.lnf_weight, w.lnf_bias, out_rows, C);
    matmul(pool, k, r.logits, xn, w.lm_head, nullptr, out_rows, C, V, Epilogue::store);
    clock.mark(Phase::lm_head);
    return;
  }
  // Several sequences (none wants every position): the last row of each, stacked.
  for (int i = 0; i < n; i++) {
    const size_t last = static_cast<size_t>(runs[i].row + runs[i].T - 1);
    std::memcpy(att + static_cast<size_t>(i) * C, x + last * C, C * sizeof(float));
  }
  layernorm(pool, k, xn, att, w.lnf_weight, w.lnf_bias, n, C);
  float* logits = s.logits.data();
  matmul(pool, k, logits, xn, w.lm_head, nullptr, n, C, V, Epilogue::store);
  for (int i = 0; i < n; i++) {
    std::memcpy(batch[i]->logits, logits + static_cast<size_t>(i) * V, V * sizeof(float));
  }
  clock.mark(Phase::lm_head);
}

}  // namespace microgpt
