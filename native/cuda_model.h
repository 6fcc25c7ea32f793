// The CUDA engine's model as the addon holds it: a MicrogptCudaModel (native/cuda/api.h) on one
// device, owned here (freed on destruction), and the pass that Transformer::run calls for a CUDA
// model instead of forward(): a batch of ForwardRequests as MicrogptCudaRequests. Everything
// else of a CUDA model (sessions, the engine thread, batching into passes, the pool of caches)
// is the CPU engine's own mechanism (transformer.h).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "cuda_loader.h"
#include "forward.h"
#include "kv_cache.h"

namespace microgpt {

// How a CUDA model is made (Transformer's CUDA constructor).
struct CudaOptions {
  int device = 0;
  std::string device_name;  // as the module reported it (cuda_status), for messages
  bool profile = false;  // MICROGPT_CUDA_PROFILE: every pass times its steps
  bool graphs = true;    // false: MICROGPT_CUDA_NO_GRAPHS
};

// The module refused the model: `out_of_memory` when the device had too little free memory.
struct CudaLoadError : std::runtime_error {
  CudaLoadError(const std::string& what, bool oom) : std::runtime_error(what), out_of_memory(oom) {}
  bool out_of_memory;
};

class CudaModel {
 public:
  // Uploads the weights (tensors as Transformer takes them), the matrices in float16 when `f16`.
  // `max_rows`, `max_batch`: the largest pass Transformer::run makes. Throws CudaLoadError.
  CudaModel(const CudaApi& api, const Config& config, const std::vector<const float*>& tensors, bool f16,
            const CudaOptions& options, int max_rows, int max_batch);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  int device() const { return device_; }
  // Whether the matrices are kept in float16.
  bool f16() const { return f16_; }
  // "CUDA device 0 (NVIDIA H200)": how messages name the device.
  const std::string& device_label() const { return label_; }
  // A cache of the model's shape on its device. Throws std::runtime_error (out of device memory).
  DeviceCache new_cache();
  // Device bytes of one cache.
  size_t cache_bytes() const { return cache_bytes_; }
  // One pass over `batch` (n requests, each holding a device cache); returns why it failed, or
  // an empty string when every request has its logits. One pass at a time.
  std::string run(ForwardRequest* const* batch, int n);
  // What the passes have done so far. Not during a pass (Transformer::run calls it between them).
  MicrogptCudaStats stats() const;

 private:
  const CudaApi& api_;
  MicrogptCudaModel* model_ = nullptr;
  int device_;
  bool f16_;
  std::string label_;
  size_t cache_bytes_ = 0;
  std::vector<MicrogptCudaRequest> requests_;  // the pass's, reused
};

}  // namespace microgpt
