// The config's checks and its tensor table.
#include "config.h"

namespace microgpt {

std::vector<TensorSpec> tensor_layout(const Config& c) {
  using R = TensorRole;
  const int C = c.n_embd;
  // A block's tensors: name, role, shape, and whether it is a bias (absent without c.bias).
  struct Entry {
    const char* name;
    TensorRole role;
    std::vector<int> shape;
    bool bias;
  };
  const Entry block[] = {
      {"ln_1.weight", R::ln1_weight, {C}, false},
      {"ln_1.bias", R::ln1_bias, {C}, true},
      {"attn.c_attn.weight", R::attn_weight, {3 * C, C}, false},
      {"attn.c_attn.bias", R::attn_bias, {3 * C}, true},
      {"attn.c_proj.weight", R::attn_proj_weight, {C, C}, false},
      {"attn.c_proj.bias", R::attn_proj_bias, {C}, true},
      {"ln_2.weight", R::ln2_weight, {C}, false},
      {"ln_2.bias", R::ln2_bias, {C}, true},
      {"mlp.c_fc.weight", R::mlp_fc_weight, {4 * C, C}, false},
      {"mlp.c_fc.bias", R::mlp_fc_bias, {4 * C}, true},
      {"mlp.c_proj.weight", R::mlp_proj_weight, {C, 4 * C}, false},
      {"mlp.c_proj.bias", R::mlp_proj_bias, {C}, true},
  };
  std::vector<TensorSpec> out;
  out.push_back({"transformer.wte.weight", {c.vocab_size, C}, R::wte, -1});
  out.push_back({"transformer.wpe.weight", {c.block_size, C}, R::wpe, -1});
  for (int l = 0; l < c.n_layer; l++) {
    for (const Entry& e : block) {
      if (e.bias && !c.bias) continue;
      out.push_back({"transformer.h." + std::to_string(l) + "." + e.name, e.shape, e.role, l});
    }
  }
  out.push_back({"transformer.ln_f.weight", {C}, R::lnf_weight, -1});
  if (c.bias) out.push_back({"transformer.ln_f.bias", {C}, R::lnf_bias, -1});
  return out;
}

uint64_t parameter_count(const Config& c) {
  uint64_t n = 0;
  for (const TensorSpec& t : tensor_layout(c)) n += t.size();
  return n;  // wte once: the lm_head is tied to it
}

std::string check_config(const Config& c) {
  struct Field {
    const char* name;
    int value;
    int64_t limit;
  };
  const Field fields[] = {{"vocabSize", c.vocab_size, ConfigLimits::vocab_size},
                          {"blockSize", c.block_size, ConfigLimits::block_size},
                          {"nLayer", c.n_layer, ConfigLimits::n_layer},
                          {"nHead", c.n_head, ConfigLimits::n_head},
                          {"nEmbd", c.n_embd, ConfigLimits::n_embd}};
  for (const Field& f : fields) {
    if (f.value < 1 || f.value > f.limit) {
      return std::string(f.name) + " must be an integer from 1 to " + std::to_string(f.limit) + ", got " +
             std::to_string(f.value);
    }
  }
  if (c.n_embd % c.n_head != 0) {
    return "nEmbd (" + std::to_string(c.n_embd) + ") must be a multiple of nHead (" + std::to_string(c.n_head) + ")";
  }
  if (c.n_embd / c.n_head > ConfigLimits::head_size) {
    return "head size nEmbd / nHead (" + std::to_string(c.n_embd / c.n_head) + ") must be at most " +
           std::to_string(ConfigLimits::head_size);
  }
  const int64_t width = static_cast<int64_t>(c.n_layer) * c.block_size * c.n_embd;
  if (width > ConfigLimits::layer_position_width) {
    return "nLayer x blockSize x nEmbd (" + std::to_string(width) + ") must be at most " +
           std::to_string(ConfigLimits::layer_position_width) + " (a session's KV cache holds twice that many floats)";
  }
  const int64_t scores = static_cast<int64_t>(c.n_layer) * c.n_head * c.block_size * c.block_size;
  if (scores > ConfigLimits::attention_scores) {
    return "nLayer x nHead x blockSize^2 (" + std::to_string(scores) + ") must be at most " +
           std::to_string(ConfigLimits::attention_scores) + " (the attention scores of a full-window pass)";
  }
  const uint64_t parameters = parameter_count(c);
  if (parameters > static_cast<uint64_t>(ConfigLimits::parameters)) {
    return std::to_string(parameters) + " parameters is more than microgpt supports (" +
           std::to_string(ConfigLimits::parameters) + ")";
  }
  return "";
}

}  // namespace microgpt
