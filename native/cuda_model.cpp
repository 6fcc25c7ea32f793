#include "cuda_model.h"

#include <cstdint>

namespace microgpt {

static_assert(sizeof(int) == sizeof(int32_t), "token ids are handed to the CUDA module as int32_t");

namespace {
std::string device_label_of(const CudaOptions& o) {
  std::string label = "CUDA device " + std::to_string(o.device);
  if (!o.device_name.empty()) label += " (" + o.device_name + ")";
  return label;
}
}  // namespace

CudaModel::CudaModel(const CudaApi& api, const Config& config, const std::vector<const float*>& tensors, bool f16,
                     const CudaOptions& options, int max_rows, int max_batch)
    : api_(api), device_(options.device), f16_(f16), label_(device_label_of(options)) {
  MicrogptCudaConfig c{};
  c.vocab_size = config.vocab_size;
  c.block_size = config.block_size;
  c.n_layer = config.n_layer;
  c.n_head = config.n_head;
  c.n_embd = config.n_embd;
  c.bias = config.bias ? 1 : 0;
  c.max_rows = max_rows;
  c.max_batch = max_batch;
  const int flags = (options.profile ? MICROGPT_CUDA_PROFILE : 0) | (options.graphs ? 0 : MICROGPT_CUDA_NO_GRAPHS);
  int out_of_memory = 0;
  char why[1024] = {0};
  model_ = api_.model_create(device_, &c, tensors.data(), static_cast<int>(tensors.size()),
                             f16 ? MICROGPT_CUDA_F16 : MICROGPT_CUDA_F32, flags, &out_of_memory, why,
                             static_cast<int>(sizeof why));
  if (model_ == nullptr) {
    const std::string reason = why[0] != '\0' ? why : "the CUDA module gave no reason";
    if (out_of_memory != 0) {
      throw CudaLoadError(label_ + " is out of memory for this model (" + reason + "); free device memory, or use backend 'native'", true);
    }
    throw CudaLoadError("loading the model onto " + label_ + " failed: " + reason, false);
  }
  cache_bytes_ = api_.cache_bytes(model_);
  requests_.reserve(static_cast<size_t>(max_batch));
}

CudaModel::~CudaModel() {
  if (model_ != nullptr) api_.model_free(model_);
}

DeviceCache CudaModel::new_cache() {
  char why[1024] = {0};
  MicrogptCudaCache* cache = api_.cache_create(model_, why, static_cast<int>(sizeof why));
  if (cache == nullptr) {
    throw std::runtime_error("no KV cache on " + label_ + ": " + (why[0] != '\0' ? std::string(why) : "the CUDA module gave no reason"));
  }
  return DeviceCache(cache, DeviceCacheFree{api_.cache_free});
}

std::string CudaModel::run(ForwardRequest* const* batch, int n) {
  requests_.clear();
  for (int i = 0; i < n; i++) {
    const ForwardRequest& r = *batch[i];
    if (r.cache == nullptr || !r.cache->device) return "a request without a device cache (internal)";
    MicrogptCudaRequest q{};
    q.cache = r.cache->device.get();
    q.start = r.start;
    q.ids = reinterpret_cast<const int32_t*>(r.ids);
    q.T = r.T;
    q.logits = r.logits;
    q.all_positions = r.all_positions ? 1 : 0;
    q.top_k = r.top_k;
    q.top_limit = r.top_limit;
    q.top_ids = reinterpret_cast<int32_t*>(r.top_ids);
    q.top_count = &batch[i]->top_count;
    requests_.push_back(q);
  }
  char why[1024] = {0};
  if (api_.run(model_, requests_.data(), n, why, static_cast<int>(sizeof why)) != 0) {
    return "the CUDA forward pass on " + label_ + " failed: " + (why[0] != '\0' ? std::string(why) : "the CUDA module gave no reason");
  }
  return std::string();
}

MicrogptCudaStats CudaModel::stats() const {
  MicrogptCudaStats s{};
  api_.model_stats(model_, &s);
  return s;
}

}  // namespace microgpt
