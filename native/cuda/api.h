// The C interface between the addon and its CUDA module (microgpt_cuda.so, built from
// native/cuda/ when nvcc is found: CMake's MICROGPT_CUDA). The addon never links CUDA: it opens
// the module at run time (native/cuda_loader.cpp), and the module links CUDA's static runtime, so
// a machine needs only the NVIDIA driver. Plain C types only: the module is built by nvcc, the
// addon by the host compiler, and either may be newer than the other; MICROGPT_CUDA_ABI says
// which version of this interface a module speaks.
#pragma once

#include <stddef.h>

#define MICROGPT_CUDA_ABI 1

extern "C" {

struct MicrogptCudaDevice {
  char name[256];
  size_t memory_bytes;  // total device memory
  int major, minor;     // compute capability
  int multiprocessors;
  int usable;           // 1 when this module's kernels run on it (compute capability 8.0 or later)
};

// The interface version the module was built with (MICROGPT_CUDA_ABI).
typedef int (*microgpt_cuda_abi_fn)(void);

// Fills up to `max` devices and returns how many there are, or -1 when CUDA cannot be used at
// all, with why in `why` (NUL-terminated, at most why_size bytes): no driver, a driver too old
// for this module's runtime, no device. Safe to call more than once; initialises the driver.
typedef int (*microgpt_cuda_devices_fn)(MicrogptCudaDevice* out, int max, char* why, int why_size);

}  // extern "C"
