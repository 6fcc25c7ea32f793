// The model: what is configured (Config), what is learned (Weights), and what is scratch
// (RunState, KVCache), kept apart as in llama2.c. Weights belong to a Model and are shared by
// all its sessions; each session owns a KVCache; the scratch RunState belongs to the Model and
// is used by one forward pass at a time (Model::compute_mutex).
#pragma once

#include <cstddef>
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

// 64-byte aligned float storage, uninitialised: every user writes before it reads (the KV cache
// up to its length, scratch per pass), so no page is touched before it is needed.
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(size_t n);
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<float[], Free> data_;
  size_t size_ = 0;
};

// The tensors in the order the binding receives them (nanoGPT's state_dict order; biases absent
// when config.bias is false). Shapes are in TensorShapes().
enum TensorIndex {
  kWte, kWpe, kLnfWeight, kLnfBias, kGlobalTensors,
};
enum LayerTensorIndex {
  kLn1Weight, kLn1Bias, kAttnWeight, kAttnBias, kAttnProjWeight, kAttnProjBias,
  kLn2Weight, kLn2Bias, kMlpFcWeight, kMlpFcBias, kMlpProjWeight, kMlpProjBias, kLayerTensors,
};

struct LayerWeights {
  const float* ln1_weight;      // (C)
  const float* ln1_bias;        // (C) or null
  const float* attn_weight;     // (3C, C) packed; output rows are q, then k, then v
  const float* attn_bias;       // (3C) or null
  const float* attn_proj_weight;  // (C, C) packed
  const float* attn_proj_bias;  // (C) or null
  const float* ln2_weight;      // (C)
  const float* ln2_bias;        // (C) or null
  const float* mlp_fc_weight;   // (4C, C) packed
  const float* mlp_fc_bias;     // (4C) or null
  const float* mlp_proj_weight; // (C, 4C) packed
  const float* mlp_proj_bias;   // (C) or null
};

struct Weights {
  FloatBuffer storage;            // every tensor below, in one allocation
  const float* wte;               // (vocab_size, C) row-major: the token embedding
  const float* lm_head;           // (vocab_size, C) packed: the same matrix, tied, for the logits
  const float* wpe;               // (block_size, C)
  std::vector<LayerWeights> layers;  // (n_layer)
  const float* lnf_weight;        // (C)
  const float* lnf_bias;          // (C) or null
};

// Activations of one forward pass of up to block_size tokens.
struct RunState {
  FloatBuffer x;       // (block_size, C) the residual stream
  FloatBuffer xn;      // (block_size, C) LayerNorm output
  FloatBuffer qkv;     // (block_size, 3C) queries, keys, values of the new tokens
  FloatBuffer att;     // (block_size, C) attention output, heads side by side
  FloatBuffer hidden;  // (block_size, 4C) the MLP's hidden layer, after GELU
  FloatBuffer scores;  // (threads, block_size) attention scores, one row per thread
};

// Keys and values of every layer at absolute positions 0..length-1, for up to `rows` positions
// (block_size for a session; T for a one-off forward pass).
struct KVCache {
  FloatBuffer keys;    // (n_layer, rows, C)
  FloatBuffer values;  // (n_layer, rows, C)
  int rows = 0;
};

// Expected element count of each input tensor, in binding order; 0 where a bias is absent.
std::vector<size_t> tensor_sizes(const Config& c);
// Rejects configs the engine cannot run (non-positive sizes, C not a multiple of n_head, ...).
std::string check_config(const Config& c);

class Model {
 public:
  // `tensors`: pointers in tensor_sizes() order (null where absent), copied and packed here.
  Model(const Config& config, const std::vector<const float*>& tensors, Isa isa, int threads);

  const Config& config() const { return config_; }
  const Kernels& kernels() const { return *kernels_; }
  int threads() const { return pool_.size(); }

  // A cache for positions 0..rows-1 (rows <= block_size).
  KVCache new_kv_cache(int rows) const;

  // Runs ids (T) at positions start..start+T-1 (start + T <= cache.rows), extending `cache`. Writes the logits of every
  // position (T, vocab_size) when all_positions, else of the last one (vocab_size), to `logits`.
  // Serialised: one forward pass at a time per model (they share the pool and the RunState).
  void forward(KVCache& cache, int start, const int* ids, int T, float* logits, bool all_positions);

 private:
  Config config_;
  const Kernels* kernels_;
  Weights w_;
  std::mutex compute_mutex_;
  ThreadPool pool_;
  RunState s_;
};

}  // namespace microgpt
