// What is configured: a model's shape (Config), the limits the engine accepts (ConfigLimits), and
// the tensors a config has (tensor_layout), with their names, shapes and order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace microgpt {

struct Config {
  int vocab_size = 0;
  int block_size = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;  // C
  bool bias = false;
};

// Bounds on a config, so that a small hostile or mistyped file cannot ask for absurd memory or
// compute: what nanoGPT-class models need, with room (gpt2-xl is 48 layers, 25 heads, 1600 wide,
// block 1024). The same table as lib/config.ts's CONFIG_LIMITS: the addon exports it as
// `configLimits`, and a test holds the two equal; check_config() applies it. Sizes and offsets of
// tensors, caches, scratch and logits are size_t (a full-window pass's logits, block_size x
// vocab_size, pass 2^31 at these limits); an int holds one dimension (C, 4C, vocab_size, a
// position, a panel count) or a small product (C x kKeyTile, blocks x heads), all below 2^31.
struct ConfigLimits {
  static constexpr int64_t vocab_size = 1114112;  // every Unicode code point
  static constexpr int64_t block_size = 4096;
  static constexpr int64_t n_layer = 64;
  static constexpr int64_t n_head = 64;
  static constexpr int64_t n_embd = 8192;
  static constexpr int64_t head_size = 512;  // n_embd / n_head
  // Float32 parameters (the tied lm_head counted once): keeps every tensor index inside a JS
  // number and a Float32Array.
  static constexpr int64_t parameters = int64_t{1} << 31;
  // n_layer * block_size * n_embd: a full KV cache holds twice this many floats (2 GiB at the
  // limit), whatever the size of the file.
  static constexpr int64_t layer_position_width = int64_t{1} << 28;
  // n_layer * n_head * block_size^2: the attention scores of a full-window pass, the one cost
  // that does not grow with the weights.
  static constexpr int64_t attention_scores = int64_t{1} << 32;
};

// What each learned tensor is. The layout table (tensor_layout) gives every tensor of a config
// its nanoGPT state_dict name, its shape and its role, in state_dict order: the one definition the
// binding checks the hand-over against (by name and shape) and the packing reads. lib/weights.ts's
// tensorLayout is the same table; the addon exports this one (`tensorLayout`) and a test holds the
// two equal.
enum class TensorRole {
  wte, wpe,
  ln1_weight, ln1_bias, attn_weight, attn_bias, attn_proj_weight, attn_proj_bias,
  ln2_weight, ln2_bias, mlp_fc_weight, mlp_fc_bias, mlp_proj_weight, mlp_proj_bias,
  lnf_weight, lnf_bias,
};

struct TensorSpec {
  std::string name;          // nanoGPT's state_dict key, e.g. "transformer.h.0.mlp.c_fc.weight"
  std::vector<int> shape;    // PyTorch's layout: a Linear weight is (out_features, in_features)
  TensorRole role;
  int layer;                 // its transformer block, or -1
  size_t size() const {
    size_t n = 1;
    for (int d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  // A Linear weight, packed into panels at load.
  bool is_linear() const {
    return role == TensorRole::attn_weight || role == TensorRole::attn_proj_weight ||
           role == TensorRole::mlp_fc_weight || role == TensorRole::mlp_proj_weight;
  }
  // What Precision::f16 keeps in float16: the Linear weights and wte (also the tied lm_head).
  bool is_matrix() const { return is_linear() || role == TensorRole::wte; }
};

// Every tensor of `c` in state_dict order (biases only when c.bias). `c` must pass check_config.
std::vector<TensorSpec> tensor_layout(const Config& c);
// Why the engine cannot run `c` (a size not positive or beyond ConfigLimits, C not a multiple of
// n_head, ...), in one sentence naming the field; empty when it can.
std::string check_config(const Config& c);
// Float32 parameters of `c`, the tied lm_head counted once (lib/config.ts: parameterCount).
uint64_t parameter_count(const Config& c);

}  // namespace microgpt
