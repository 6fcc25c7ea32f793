// The addon's side of the CUDA module (native/cuda/api.h): finds microgpt_cuda.so beside the
// addon's own binary (or at MICROGPT_CUDA_MODULE), opens it at run time, resolves every function
// of the interface and asks it for the devices, once per process. Without the module, the
// driver or a device, the CPU engine runs exactly as without CUDA; the result says why CUDA is
// not usable.
#pragma once

#include <string>
#include <vector>

#include "cuda/api.h"

namespace microgpt {

struct CudaDevice {
  std::string name;
  double memory_bytes = 0;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  bool usable = false;  // compute capability 8.0 or later
};

// The module's functions (api.h), every one resolved.
struct CudaApi {
  microgpt_cuda_model_create_fn model_create = nullptr;
  microgpt_cuda_model_free_fn model_free = nullptr;
  microgpt_cuda_cache_create_fn cache_create = nullptr;
  microgpt_cuda_cache_free_fn cache_free = nullptr;
  microgpt_cuda_cache_bytes_fn cache_bytes = nullptr;
  microgpt_cuda_run_fn run = nullptr;
  microgpt_cuda_model_stats_fn model_stats = nullptr;
  microgpt_cuda_test_matmul_fn test_matmul = nullptr;
  microgpt_cuda_test_norm_matmul_fn test_norm_matmul = nullptr;
  microgpt_cuda_test_layernorm_fn test_layernorm = nullptr;
  microgpt_cuda_test_embedding_fn test_embedding = nullptr;
  microgpt_cuda_test_attention_fn test_attention = nullptr;
  microgpt_cuda_test_select_fn test_select = nullptr;
};

struct CudaStatus {
  std::string module;  // the module's path, empty when none was found
  std::string reason;  // why no device is usable; empty when one is
  std::vector<CudaDevice> devices;
  const CudaApi* api = nullptr;  // the module's functions; null unless a device is usable
};

// Probes once (opening the module initialises the NVIDIA driver: tens to hundreds of
// milliseconds where there is one) and returns the same answer after. Thread-safe.
const CudaStatus& cuda_status();

// Why CUDA device `device` cannot run a model (it does not exist, is too old, or no device is
// usable at all), in one sentence; empty when it can.
std::string cuda_device_problem(int device);

}  // namespace microgpt
