// What is learned: the weights of a model, packed once at load for the kernels and shared by all
// its sessions, and the precision they are kept in.
#pragma once

#include <vector>

#include "buffer.h"
#include "config.h"
#include "kernels.h"

namespace microgpt {

// How the weights keep their matrices (wte, which is also the tied lm_head, and every Linear weight);
// wpe, LayerNorms and biases stay float32, and all arithmetic is float32 either way.
enum class Precision {
  f32,    // as given
  f16,    // rounded to float16: half the bytes a decode step streams; logits move slightly
  automatic,  // f16 when that changes no weight (float16 checkpoints), else f32
};

struct LayerWeights {
  const float* ln1_weight = nullptr;       // (C)
  const float* ln1_bias = nullptr;         // (C) or null
  PackedLinear attn_weight;                // (3C, C); output rows are q, then k, then v
  const float* attn_bias = nullptr;        // (3C) or null
  PackedLinear attn_proj_weight;           // (C, C)
  const float* attn_proj_bias = nullptr;   // (C) or null
  const float* ln2_weight = nullptr;       // (C)
  const float* ln2_bias = nullptr;         // (C) or null
  PackedLinear mlp_fc_weight;              // (4C, C)
  const float* mlp_fc_bias = nullptr;      // (4C) or null
  PackedLinear mlp_proj_weight;            // (C, 4C)
  const float* mlp_proj_bias = nullptr;    // (C) or null
};

struct Weights {
  FloatBuffer storage;            // every float32 tensor below, in one allocation
  HalfBuffer half_storage;        // the packed matrices instead, when kept in float16
  bool f16 = false;
  const float* wte = nullptr;     // (vocab_size, C) row-major: the token embedding
  PackedLinear lm_head;           // (vocab_size, C): the same matrix, tied, for the logits
  const float* wpe = nullptr;     // (block_size, C)
  std::vector<LayerWeights> layers;  // (n_layer)
  const float* lnf_weight = nullptr;  // (C)
  const float* lnf_bias = nullptr;    // (C) or null
};

// Whether `precision` keeps the matrices of `tensors` (as pack_weights takes them) in float16:
// automatic resolved (f16 when that changes no matrix). Throws std::invalid_argument when
// Precision::f16 is asked of weights beyond float16's range.
bool matrices_in_f16(const Config& config, const std::vector<const float*>& tensors, Precision precision);

// Copies and packs `tensors` (one pointer per tensor_layout(config) entry, in its order, each to
// that tensor's size() floats) in `precision`. Throws std::invalid_argument when Precision::f16 is
// asked of weights beyond float16's range, or the tensors do not match the layout.
Weights pack_weights(const Config& config, const std::vector<const float*>& tensors, Precision precision);

}  // namespace microgpt
