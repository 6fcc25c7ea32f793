// The addon's side of the CUDA module (native/cuda/api.h): finds microgpt_cuda.so beside the
// addon's own binary (or at MICROGPT_CUDA_MODULE), opens it at run time and asks it for the
// devices, once per process. Without the module, the driver or a device, the CPU engine runs
// exactly as without CUDA; the result says why CUDA is not usable.
#pragma once

#include <string>
#include <vector>

namespace microgpt {

struct CudaDevice {
  std::string name;
  double memory_bytes = 0;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  bool usable = false;  // compute capability 8.0 or later
};

struct CudaStatus {
  std::string module;  // the module's path, empty when none was found
  std::string reason;  // why no device is usable; empty when one is
  std::vector<CudaDevice> devices;
};

// Probes once (opening the module initialises the NVIDIA driver: tens to hundreds of
// milliseconds where there is one) and returns the same answer after. Thread-safe.
const CudaStatus& cuda_status();

}  // namespace microgpt
