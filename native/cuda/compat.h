// What the CUDA engine's sources (kernels.cuh, engine.cu, module.cu) use of CUDA, in one place,
// so that the same sources build twice: by nvcc against the CUDA runtime (microgpt_cuda.so), and
// by the host compiler against the emulator (emulator.h: every kernel run on the CPU, blocks one
// after another, a block's threads as fibers), for the tests of machines without a GPU.
//
// Kernels use: __global__/__device__/__forceinline__, threadIdx/blockIdx/blockDim/gridDim,
// MG_SHARED arrays, MG_DYNAMIC_SHARED, __syncthreads, __syncthreads_or, atomicAdd on shared
// memory, mg_shfl_xor, mg_shfl_up, mg_ballot and mg_match_any (full warps only), mg_popc,
// mg_half_to_float, mg_float_bits, and expf/erff/sqrtf/fmaxf/fmaf. Host code uses the CUDA
// runtime functions the emulator provides (emulator.h lists them) and MG_LAUNCH for every launch.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define MG_SHARED __shared__
// A kernel's dynamic shared memory (the launch's third argument), as an array of `type`.
#define MG_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) unsigned char mg_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(mg_dynamic_smem_)
#define MG_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)

__device__ __forceinline__ float mg_shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
__device__ __forceinline__ int mg_shfl_up(int v, int delta) { return __shfl_up_sync(0xffffffffu, v, delta); }
__device__ __forceinline__ unsigned mg_ballot(int predicate) { return __ballot_sync(0xffffffffu, predicate); }
__device__ __forceinline__ int mg_popc(unsigned x) { return __popc(x); }
__device__ __forceinline__ unsigned mg_match_any(unsigned v) { return __match_any_sync(0xffffffffu, v); }
__device__ __forceinline__ float mg_half_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
__device__ __forceinline__ unsigned mg_float_bits(float f) { return __float_as_uint(f); }

#else

#include "emulator.h"

#endif
