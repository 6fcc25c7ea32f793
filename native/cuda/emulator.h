// A CPU emulator of the CUDA runtime and of CUDA's execution model, for the builds without nvcc:
// compat.h includes it when __CUDACC__ is not defined, so the CUDA engine's sources (kernels.cuh,
// engine.cu, module.cu) compile with the host compiler and run their kernels on the CPU
// (microgpt_cuda_emulated.so, and native/tests/cuda_emulator_test.cpp). It is for tests on
// machines without a GPU: correctness, not speed.
//
// The model, and why it is faithful enough:
//  - A kernel is an ordinary C++ function. A launch runs its blocks one after another, in the order
//    of their linear index, on the calling thread; a block's threads are fibers (emulator.cpp),
//    each run from one barrier or warp operation to the next before the next thread runs. So a
//    missing barrier shows up as a wrong result, a wait no thread will end (a thread returned
//    before a __syncthreads the others reach, a lane missing from a shuffle) aborts with a message,
//    and code that assumes a warp's lanes run in step without __syncwarp fails as on Volta and later.
//  - Launches and graph replays are serialized process-wide by one mutex, and blocks do not
//    overlap, so MG_SHARED is a function-local static: exactly one block's shared memory.
//  - Every runtime call completes before it returns (streams are bookkeeping), except inside a
//    stream capture, where work on the capturing stream is recorded, with the kernel's arguments
//    converted to its parameter types and copied at the launch, as a CUDA graph's kernel node
//    holds them, and replayed by cudaGraphLaunch. The rules of capture that make a real program
//    fail (a synchronizing call, cudaMalloc in a non-relaxed capture, the legacy stream) fail here
//    in the same way.
//  - cudaMalloc's memory is filled with 0xFF bytes (NaN as float) and so is each block's dynamic
//    shared memory, so a read of something never written shows up in the results; device memory
//    is counted against a size (8 GiB, or MICROGPT_CUDA_EMULATED_MEMORY bytes) so that running out
//    can be tested, and MICROGPT_CUDA_EMULATED_DEVICES=0 makes the device disappear.
//
// Only what compat.h's sources use, or may plausibly reach for, is here; the names, signatures,
// enum values and error semantics are those of the CUDA 12/13 runtime, so that what compiles and
// passes here compiles with nvcc. The raw `__shared__` is deliberately undefined: kernels use
// MG_SHARED and MG_DYNAMIC_SHARED.
#pragma once

#if defined(__CUDACC__)
#error "emulator.h is for host-compiler builds; nvcc builds use CUDA's own headers (compat.h)"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers ------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// No __noinline__: libstdc++ spells __attribute__((__noinline__)) itself, which such a macro breaks.
#define __align__(n) __attribute__((aligned(n)))

#define CUDART_VERSION 13000

// ---- vector types, with CUDA's alignment (a float4 load is one 16-byte access there) ----------

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __align__(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct int3 { int x, y, z; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };

inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }

// ---- the runtime's types -----------------------------------------------------------------------

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorHardwareStackError = 714,
  cudaErrorIllegalInstruction = 715,
  cudaErrorMisalignedAddress = 716,
  cudaErrorInvalidAddressSpace = 717,
  cudaErrorInvalidPc = 718,
  cudaErrorLaunchFailure = 719,
  cudaErrorAssert = 710,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureMerge = 902,
  cudaErrorStreamCaptureUnmatched = 903,
  cudaErrorStreamCaptureUnjoined = 904,
  cudaErrorStreamCaptureIsolation = 905,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorCapturedEvent = 907,
  cudaErrorStreamCaptureWrongThread = 908,
  cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct CUgraph_st* cudaGraph_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;
typedef struct CUgraphNode_st* cudaGraphNode_t;

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};

enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};

enum cudaGraphInstantiateFlags {
  cudaGraphInstantiateFlagAutoFreeOnLaunch = 1,
  cudaGraphInstantiateFlagUpload = 2,
  cudaGraphInstantiateFlagDeviceLaunch = 4,
  cudaGraphInstantiateFlagUseNodePriority = 8,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrTotalConstantMemory = 9,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrIntegrated = 18,
  cudaDevAttrConcurrentKernels = 31,
  cudaDevAttrGlobalMemoryBusWidth = 37,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrUnifiedAddressing = 41,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMaxBlocksPerMultiprocessor = 106,
};

// The fields of CUDA's cudaDeviceProp that exist in both CUDA 12 and 13 and that the emulator
// fills; a program reading another field does not compile here, rather than read a zero.
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  size_t totalConstMem;
  int major;
  int minor;
  int multiProcessorCount;
  int integrated;
  int concurrentKernels;
  int pciBusID;
  int pciDeviceID;
  int pciDomainID;
  int unifiedAddressing;
  int memoryBusWidth;
  int l2CacheSize;
  int maxThreadsPerMultiProcessor;
  size_t sharedMemPerMultiprocessor;
  int regsPerMultiprocessor;
  size_t sharedMemPerBlockOptin;
  int maxBlocksPerMultiProcessor;
  size_t reservedSharedMemPerBlock;
};

// ---- the host runtime API (emulator.cpp) -------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDeviceSynchronize();

cudaError_t cudaMalloc(void** ptr, size_t size);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocHost(void** ptr, size_t size);
cudaError_t cudaMallocHost(void** ptr, size_t size, unsigned int flags);
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int flags);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void* dst, int value, size_t count);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream = 0);

// CUDA's C++ overloads (cuda_runtime.h), so that `float* p; cudaMalloc(&p, n)` compiles as there.
template <class T>
inline cudaError_t cudaMalloc(T** ptr, size_t size) {
  return ::cudaMalloc(reinterpret_cast<void**>(ptr), size);
}
template <class T>
inline cudaError_t cudaMallocHost(T** ptr, size_t size, unsigned int flags = 0) {
  return ::cudaMallocHost(reinterpret_cast<void**>(ptr), size, flags);
}
template <class T>
inline cudaError_t cudaHostAlloc(T** ptr, size_t size, unsigned int flags) {
  return ::cudaHostAlloc(reinterpret_cast<void**>(ptr), size, flags);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreate(cudaEvent_t* event, unsigned int flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, cudaGraphNode_t*, char*, size_t) {
  return ::cudaGraphInstantiate(exec, graph, 0ull);
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* func, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);

// ---- the emulator's side of device code ----------------------------------------------------------

namespace mgemu {
namespace detail {

// The running fiber's indices: set by the scheduler at every switch, so reading them is a plain
// load. Plain globals rather than thread-locals: only the thread holding the launch mutex runs
// kernels, and a fiber's frames must not cache a thread-local's address across launches made by
// different threads.
extern uint3 thread_idx;
extern uint3 block_idx;
extern dim3 block_dim;
extern dim3 grid_dim;
extern unsigned char* dynamic_smem;

// All 32 lanes of the caller's warp exchange `value`; returns the warp's 32 values, lane order,
// valid until the caller's next warp operation. Aborts unless every lane of a full warp calls.
const uint64_t* warp_gather(uint64_t value, unsigned member_mask, const char* what);
// __syncthreads and its counting variants: returns how many threads passed a non-zero predicate.
int block_barrier(int predicate, const char* what);
[[noreturn]] void device_trap(const char* what);

// The lane whose value a shuffle reads, by the PTX rules of shfl.sync (idx, up, down, bfly),
// with c = ((32 - width) << 8) | (up ? 0 : 31): out-of-segment sources read the caller's own.
enum ShuffleMode { kIdx, kUp, kDown, kXor };
inline int shuffle_source(int lane, int mode, int arg, int width) {
  const int b = arg & 31;
  const int segment = lane & ~(width - 1);
  int j = lane;
  switch (mode) {
    case kIdx: j = segment | (b & (width - 1)); break;
    case kUp: j = lane - b; if (j < segment) j = lane; break;
    case kDown: j = lane + b; if (j > (segment | (width - 1))) j = lane; break;
    default: j = lane ^ b; if (j > (segment | (width - 1))) j = lane; break;
  }
  return j;
}

template <class T>
inline T shuffle(unsigned mask, T value, int mode, int arg, int width, const char* what) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "a warp shuffle moves 4 or 8 bytes");
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) device_trap("a warp shuffle's width is not a power of two up to 32");
  uint64_t bits = 0;
  memcpy(&bits, &value, sizeof(T));
  const uint64_t* lanes = warp_gather(bits, mask, what);
  const int lane = static_cast<int>((thread_idx.x + thread_idx.y * block_dim.x + thread_idx.z * block_dim.x * block_dim.y) & 31u);
  T out;
  memcpy(&out, &lanes[shuffle_source(lane, mode, arg, width)], sizeof(T));
  return out;
}

}  // namespace detail

// The current launch's dynamic shared memory: 16-byte aligned, the launch's size, refilled with
// 0xFF bytes before each block.
inline void* dynamic_shared() { return detail::dynamic_smem; }

// One launch, type-erased: validated like CUDA's (errors for cudaGetLastError, nothing run), then
// run block after block, or recorded when `stream` is capturing.
void launch_erased(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   std::function<void()>&& body);

// The arguments are converted to the kernel's parameter types and copied here, at the launch,
// as CUDA does (a graph's kernel node keeps these values): a lambda capturing the expressions
// would evaluate `this->member` at each replay instead.
template <class... P, class... A>
inline void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "MG_LAUNCH: the kernel takes another number of arguments");
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  launch_erased(name, reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
                [kernel, params]() { std::apply(kernel, params); });
}

}  // namespace mgemu

#define threadIdx (static_cast<const uint3&>(::mgemu::detail::thread_idx))
#define blockIdx (static_cast<const uint3&>(::mgemu::detail::block_idx))
#define blockDim (static_cast<const dim3&>(::mgemu::detail::block_dim))
#define gridDim (static_cast<const dim3&>(::mgemu::detail::grid_dim))
static constexpr int warpSize = 32;

#define MG_SHARED static
#define MG_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::mgemu::dynamic_shared())
#define MG_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::mgemu::launch(#kernel, (kernel), dim3(grid), dim3(block), static_cast<size_t>(smem), (stream), ##__VA_ARGS__)

// ---- device functions ------------------------------------------------------------------------

inline void __syncthreads() { ::mgemu::detail::block_barrier(0, "__syncthreads"); }
inline int __syncthreads_count(int predicate) { return ::mgemu::detail::block_barrier(predicate != 0, "__syncthreads_count"); }
inline int __syncthreads_and(int predicate) {
  return ::mgemu::detail::block_barrier(predicate != 0, "__syncthreads_and") ==
         static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int predicate) { return ::mgemu::detail::block_barrier(predicate != 0, "__syncthreads_or") != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::mgemu::detail::warp_gather(0, mask, "__syncwarp"); }
// Blocks run one at a time and a block's threads one at a time: no fence has anything to order.
inline void __threadfence() {}
inline void __threadfence_block() {}
[[noreturn]] inline void __trap() { ::mgemu::detail::device_trap("__trap()"); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  return ::mgemu::detail::shuffle(mask, v, ::mgemu::detail::kIdx, src_lane, width, "__shfl_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::mgemu::detail::shuffle(mask, v, ::mgemu::detail::kUp, static_cast<int>(delta), width, "__shfl_up_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::mgemu::detail::shuffle(mask, v, ::mgemu::detail::kDown, static_cast<int>(delta), width, "__shfl_down_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  return ::mgemu::detail::shuffle(mask, v, ::mgemu::detail::kXor, lane_mask, width, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* lanes = ::mgemu::detail::warp_gather(predicate != 0, mask, "__ballot_sync");
  unsigned bits = 0;
  for (int i = 0; i < 32; i++) bits |= static_cast<unsigned>(lanes[i] != 0) << i;
  return bits;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == 0xffffffffu; }
inline unsigned __activemask() { return 0xffffffffu; }

inline float mg_shfl_xor(float v, int mask) {
  return ::mgemu::detail::shuffle(0xffffffffu, v, ::mgemu::detail::kXor, mask, 32, "mg_shfl_xor");
}
inline int mg_shfl_up(int v, int delta) {
  return ::mgemu::detail::shuffle(0xffffffffu, v, ::mgemu::detail::kUp, delta, 32, "mg_shfl_up");
}
inline unsigned mg_ballot(int predicate) { return __ballot_sync(0xffffffffu, predicate); }
inline int mg_popc(unsigned x) { return __builtin_popcount(x); }
// __match_any_sync over the full warp: the lanes holding the caller's value.
inline unsigned mg_match_any(unsigned v) {
  const uint64_t* lanes = ::mgemu::detail::warp_gather(v, 0xffffffffu, "mg_match_any");
  unsigned bits = 0;
  for (int i = 0; i < 32; i++) bits |= static_cast<unsigned>(lanes[i] == v) << i;
  return bits;
}

// IEEE binary16 to binary32, exactly: subnormals, infinities, NaN payloads (quieted, as the
// hardware conversions of x86 and Arm do).
inline float mg_half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13) | (mantissa != 0 ? 0x400000u : 0u);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else {
    // Zero or a subnormal: mantissa * 2^-24, exact in float (10 bits, a power-of-two scale).
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: only one thread of one block runs at any moment, so a read-modify-write is atomic.
// Overloads rather than templates, as CUDA's: `atomicAdd(&f, 1)` converts the 1.
#define MGEMU_ATOMIC(name, T, body)         \
  inline T name(T* address, T value) {      \
    const T old = *address;                 \
    body;                                   \
    return old;                             \
  }
#define MGEMU_ATOMICS_ARITH(T)                               \
  MGEMU_ATOMIC(atomicAdd, T, *address = old + value)         \
  MGEMU_ATOMIC(atomicSub, T, *address = old - value)         \
  MGEMU_ATOMIC(atomicExch, T, *address = value)
#define MGEMU_ATOMICS_ORDER(T)                                \
  MGEMU_ATOMIC(atomicMax, T, if (value > old) *address = value) \
  MGEMU_ATOMIC(atomicMin, T, if (value < old) *address = value) \
  inline T atomicCAS(T* address, T compare, T value) {        \
    const T old = *address;                                   \
    if (old == compare) *address = value;                     \
    return old;                                               \
  }
MGEMU_ATOMICS_ARITH(int)
MGEMU_ATOMICS_ARITH(unsigned int)
MGEMU_ATOMICS_ARITH(unsigned long long)
MGEMU_ATOMICS_ARITH(float)
MGEMU_ATOMICS_ARITH(double)
MGEMU_ATOMICS_ORDER(int)
MGEMU_ATOMICS_ORDER(unsigned int)
MGEMU_ATOMICS_ORDER(long long)
MGEMU_ATOMICS_ORDER(unsigned long long)
#undef MGEMU_ATOMICS_ORDER
#undef MGEMU_ATOMICS_ARITH
#undef MGEMU_ATOMIC

// ---- math: the fast intrinsics as their exact counterparts --------------------------------------
// noexcept: glibc's <math.h> declares __expf and its kin (and, from 2.41, rsqrtf) itself, so these
// may be redefinitions of those declarations, which must agree with them.
inline float rsqrtf(float x) noexcept { return 1.0f / sqrtf(x); }
inline float __expf(float x) noexcept { return expf(x); }
inline float __logf(float x) noexcept { return logf(x); }
inline float __powf(float x, float y) noexcept { return powf(x, y); }
inline float __sinf(float x) noexcept { return sinf(x); }
inline float __cosf(float x) noexcept { return cosf(x); }
inline float __tanhf(float x) noexcept { return tanhf(x); }
inline float __fdividef(float a, float b) noexcept { return a / b; }
inline float __frcp_rn(float x) noexcept { return 1.0f / x; }
inline float __fsqrt_rn(float x) noexcept { return sqrtf(x); }
inline float __fadd_rn(float a, float b) noexcept { return a + b; }
inline float __fmul_rn(float a, float b) noexcept { return a * b; }
inline float __fmaf_rn(float a, float b, float c) noexcept { return fmaf(a, b, c); }
inline float __saturatef(float x) noexcept { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline int __float_as_int(float x) noexcept { int i; memcpy(&i, &x, sizeof i); return i; }
inline unsigned int __float_as_uint(float x) noexcept { unsigned int i; memcpy(&i, &x, sizeof i); return i; }
inline unsigned mg_float_bits(float x) noexcept { return __float_as_uint(x); }
inline float __int_as_float(int i) noexcept { float x; memcpy(&x, &i, sizeof x); return x; }
inline float __uint_as_float(unsigned int i) noexcept { float x; memcpy(&x, &i, sizeof x); return x; }

// CUDA's global min/max overloads (device and host code have them there).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int min(int a, unsigned int b) { return ::min(static_cast<unsigned int>(a), b); }
inline unsigned int max(int a, unsigned int b) { return ::max(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) { return ::min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(unsigned int a, int b) { return ::max(a, static_cast<unsigned int>(b)); }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
