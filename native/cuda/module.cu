// The CUDA module (microgpt_cuda.so): what the addon asks of CUDA, behind the C interface of
// api.h. Built only when nvcc is found (CMake's MICROGPT_CUDA), for sm_80, sm_86, sm_89 and sm_90
// plus PTX, against CUDA's static runtime.
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "api.h"

#define MICROGPT_CUDA_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

__attribute__((format(printf, 3, 4))) void say(char* why, int size, const char* format, ...) {
  if (why == nullptr || size <= 0) return;
  va_list args;
  va_start(args, format);
  std::vsnprintf(why, static_cast<size_t>(size), format, args);
  va_end(args);
}

// The oldest compute capability the module's kernels are built for (sm_80, Ampere).
constexpr int kMinMajor = 8;

}  // namespace

MICROGPT_CUDA_EXPORT int microgpt_cuda_abi(void) { return MICROGPT_CUDA_ABI; }

MICROGPT_CUDA_EXPORT int microgpt_cuda_devices(MicrogptCudaDevice* out, int max, char* why, int why_size) {
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  if (driver == 0) {
    say(why, why_size, "no NVIDIA driver (libcuda.so.1 was not found)");
    return -1;
  }
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorInsufficientDriver || driver / 1000 < runtime / 1000) {
    say(why, why_size, "the NVIDIA driver supports CUDA %d.%d; this module needs CUDA %d.%d or later (update the driver)",
        driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    return -1;
  }
  if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0)) {
    say(why, why_size, "no CUDA device");
    return -1;
  }
  if (status != cudaSuccess) {
    say(why, why_size, "CUDA could not start: %s", cudaGetErrorString(status));
    return -1;
  }
  for (int i = 0; i < count && i < max && out != nullptr; i++) {
    cudaDeviceProp p;
    MicrogptCudaDevice& d = out[i];
    std::memset(&d, 0, sizeof d);
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
      std::snprintf(d.name, sizeof d.name, "device %d (its properties could not be read)", i);
      continue;
    }
    std::snprintf(d.name, sizeof d.name, "%s", p.name);
    d.memory_bytes = p.totalGlobalMem;
    d.major = p.major;
    d.minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    d.usable = p.major >= kMinMajor ? 1 : 0;
  }
  return count;
}
