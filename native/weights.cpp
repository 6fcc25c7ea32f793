// Weight packing and the precision policy.
#include "weights.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

namespace microgpt {

bool matrices_in_f16(const Config& config, const std::vector<const float*>& tensors, Precision precision) {
  const std::vector<TensorSpec> layout = tensor_layout(config);
  if (tensors.size() != layout.size()) throw std::invalid_argument("wrong number of tensors");
  for (const float* t : tensors) {
    if (t == nullptr) throw std::invalid_argument("missing tensor");
  }
  if (precision == Precision::automatic) {
    for (size_t i = 0; i < layout.size(); i++) {
      if (layout[i].is_matrix() && !f16_exact(tensors[i], layout[i].size())) return false;
    }
    return true;
  }
  if (precision == Precision::f16) {
    for (size_t i = 0; i < layout.size(); i++) {
      if (!layout[i].is_matrix()) continue;
      for (size_t j = 0; j < layout[i].size(); j++) {
        if (!(std::fabs(tensors[i][j]) < 65520.0f)) {
          throw std::invalid_argument("a weight is beyond float16's range (|w| >= 65520, or not finite): keep this model in float32");
        }
      }
    }
    return true;
  }
  return false;
}

Weights pack_weights(const Config& config, const std::vector<const float*>& tensors, Precision precision) {
  Weights w;
  const std::vector<TensorSpec> layout = tensor_layout(config);
  const int C = config.n_embd;
  const int V = config.vocab_size;

  const bool f16 = matrices_in_f16(config, tensors, precision);
  w.f16 = f16;

  // Float32 tensors in one allocation (plain ones at their size, Linear weights packed unless in
  // float16), float16 panels in another; every tensor 64-byte aligned.
  auto rounded = [](size_t n) { return (n + 31) / 32 * 32; };
  std::vector<size_t> offsets(layout.size());
  size_t total = 0, half_total = 0;
  for (size_t i = 0; i < layout.size(); i++) {
    const TensorSpec& t = layout[i];
    if (!t.is_linear()) {
      offsets[i] = total;
      total += rounded(t.size());
    } else if (f16) {
      offsets[i] = half_total;
      half_total += rounded(packed_size(t.shape[0], t.shape[1]));
    } else {
      offsets[i] = total;
      total += rounded(packed_size(t.shape[0], t.shape[1]));
    }
  }
  const size_t lm_head_offset = f16 ? half_total : total;
  (f16 ? half_total : total) += rounded(packed_size(V, C));
  w.storage = FloatBuffer(total, /*huge=*/true);
  float* base = w.storage.data();
  uint16_t* half = nullptr;
  if (f16) {
    w.half_storage = HalfBuffer(half_total, /*huge=*/true);
    half = w.half_storage.data();
  }
  auto packed = [&](size_t offset) {
    PackedLinear l;
    if (f16) {
      l.f16 = half + offset;
    } else {
      l.f32 = base + offset;
    }
    return l;
  };
  w.layers.assign(static_cast<size_t>(config.n_layer), LayerWeights{});
  for (size_t i = 0; i < layout.size(); i++) {
    const TensorSpec& t = layout[i];
    if (t.is_linear()) {
      if (f16) {
        pack_linear_f16(half + offsets[i], tensors[i], t.shape[0], t.shape[1]);
      } else {
        pack_linear(base + offsets[i], tensors[i], t.shape[0], t.shape[1]);
      }
    } else if (f16 && t.role == TensorRole::wte) {
      // The embedding rows hold the same float16 values as the lm_head panels.
      for (size_t j = 0; j < t.size(); j++) base[offsets[i] + j] = f16_to_f32(f32_to_f16(tensors[i][j]));
    } else {
      std::memcpy(base + offsets[i], tensors[i], t.size() * sizeof(float));
    }
    const float* at = base + offsets[i];
    LayerWeights* lw = t.layer >= 0 ? &w.layers[static_cast<size_t>(t.layer)] : nullptr;
    switch (t.role) {
      case TensorRole::wte: w.wte = at; break;
      case TensorRole::wpe: w.wpe = at; break;
      case TensorRole::lnf_weight: w.lnf_weight = at; break;
      case TensorRole::lnf_bias: w.lnf_bias = at; break;
      case TensorRole::ln1_weight: lw->ln1_weight = at; break;
      case TensorRole::ln1_bias: lw->ln1_bias = at; break;
      case TensorRole::attn_weight: lw->attn_weight = packed(offsets[i]); break;
      case TensorRole::attn_bias: lw->attn_bias = at; break;
      case TensorRole::attn_proj_weight: lw->attn_proj_weight = packed(offsets[i]); break;
      case TensorRole::attn_proj_bias: lw->attn_proj_bias = at; break;
      case TensorRole::ln2_weight: lw->ln2_weight = at; break;
      case TensorRole::ln2_bias: lw->ln2_bias = at; break;
      case TensorRole::mlp_fc_weight: lw->mlp_fc_weight = packed(offsets[i]); break;
      case TensorRole::mlp_fc_bias: lw->mlp_fc_bias = at; break;
      case TensorRole::mlp_proj_weight: lw->mlp_proj_weight = packed(offsets[i]); break;
      case TensorRole::mlp_proj_bias: lw->mlp_proj_bias = at; break;
    }
  }
  // The tied lm_head: wte again, packed as a Linear weight (vocab_size, C).
  w.lm_head = packed(lm_head_offset);
  if (f16) {
    pack_linear_f16(half + lm_head_offset, tensors[0], V, C);
  } else {
    pack_linear(base + lm_head_offset, tensors[0], V, C);
  }
  return w;
}

}  // namespace microgpt
