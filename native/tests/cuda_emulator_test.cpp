// The CUDA emulator (native/cuda/emulator.h) tested on its own, without the engine: that kernels
// written for a GPU run here with a GPU's semantics (barriers, warp shuffles, shared memory,
// indices), that the runtime refuses what CUDA refuses with CUDA's errors (launch limits, shared
// memory limits, the rules of stream capture, out of memory), that graph replays use the values
// captured at the launch, and that a kernel that would hang a GPU aborts with a message instead.
// It also opens microgpt_cuda_emulated.so, built with it, through api.h's entry points. Built by
// CMake when the emulated module is (MICROGPT_CUDA_EMULATOR) and MICROGPT_TESTS=ON; run by CTest.
//
// Every kernel here is written as for nvcc, through compat.h: the emulator must not need them
// written otherwise. It prints the fibers' switch cost (the emulator's one performance figure).
//
// Usage: cuda_emulator_test            (everything)
//        cuda_emulator_test --no-device (what it runs in a child with MICROGPT_CUDA_EMULATED_DEVICES=0)
#include "compat.h"

#include <dlfcn.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "api.h"

namespace {

#define CHECK(cond, ...)                                                                         \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "cuda_emulator_test: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                         \
      std::fprintf(stderr, "\n");                                                                \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

#define CUDA_OK(call)                                                                  \
  do {                                                                                 \
    const cudaError_t status_ = (call);                                                \
    CHECK(status_ == cudaSuccess, "%s returned %s", #call, cudaGetErrorName(status_)); \
  } while (0)

// A call that fails returns the error and leaves it for cudaGetLastError, which takes it.
#define CUDA_FAILS(call, expected)                                                                         \
  do {                                                                                                     \
    const cudaError_t status_ = (call);                                                                    \
    CHECK(status_ == (expected), "%s returned %s, not %s", #call, cudaGetErrorName(status_), #expected); \
    const cudaError_t last_ = cudaGetLastError();                                                          \
    CHECK(last_ == status_, "%s left %s for cudaGetLastError", #call, cudaGetErrorName(last_));          \
  } while (0)

// The error a launch left, taken (cudaGetLastError clears it).
#define LAUNCH_LEFT(expected)                                                                             \
  do {                                                                                                    \
    const cudaError_t status_ = cudaGetLastError();                                                       \
    CHECK(status_ == (expected), "the launch left %s, not %s", cudaGetErrorName(status_), #expected);   \
  } while (0)

constexpr size_t kEmulatedMemory = size_t(64) << 20;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <class T>
T* device_alloc(size_t n) {
  T* p = nullptr;
  CUDA_OK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

template <class T>
void upload(T* device, const std::vector<T>& host) {
  CUDA_OK(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
}

template <class T>
std::vector<T> download(const T* device, size_t n) {
  std::vector<T> host(n);
  CUDA_OK(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// ---- kernels -------------------------------------------------------------------------------------

unsigned linear_thread() { return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y; }

// Each block sums its threads' values with a shared-memory tree, for any block size: the part
// above the largest power of two folded in first. Every step needs the barrier before it.
__global__ void block_sum(const float* in, float* out) {
  MG_SHARED float partial[1024];
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = linear_thread();
  const unsigned block = blockIdx.x + blockIdx.y * gridDim.x;
  partial[t] = in[block * n + t];
  __syncthreads();
  unsigned p = 1;
  while (p * 2 <= n) p *= 2;
  if (t < n - p) partial[t] += partial[t + p];
  __syncthreads();
  for (unsigned s = p / 2; s > 0; s /= 2) {
    if (t < s) partial[t] += partial[t + s];
    __syncthreads();
  }
  if (t == 0) out[block] = partial[0];
}

// Every lane ends with its warp's sum (a butterfly), as float through mg_shfl_xor and as int
// through __shfl_xor_sync.
__global__ void warp_sums(const float* in, float* out, int* ints) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  float v = in[g];
  for (int m = 16; m > 0; m /= 2) v += mg_shfl_xor(v, m);
  out[g] = v;
  int i = static_cast<int>(g);
  for (int m = 1; m < 32; m *= 2) i += __shfl_xor_sync(0xffffffffu, i, m);
  ints[g] = i;
}

// The other warp operations, each lane's results side by side (12 per lane); the last four are
// compat.h's own (the engine's kernels use them).
__global__ void warp_ops(int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  int* o = out + (blockIdx.x * blockDim.x + threadIdx.x) * 12;
  o[0] = __shfl_sync(0xffffffffu, lane * 10, 7);
  o[1] = __shfl_down_sync(0xffffffffu, lane, 3);
  o[2] = __shfl_up_sync(0xffffffffu, lane, 5, 16);
  o[3] = __shfl_xor_sync(0xffffffffu, lane, 8, 8);
  o[4] = __shfl_sync(0xffffffffu, lane, lane + 1, 4);
  o[5] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[6] = __all_sync(0xffffffffu, lane < 32) + 2 * __any_sync(0xffffffffu, lane == 31);
  o[7] = __syncthreads_count(lane % 2 == 0);
  o[8] = static_cast<int>(mg_match_any(static_cast<unsigned>(lane % 5)));
  o[9] = mg_shfl_up(lane * 2, 1);
  o[10] = static_cast<int>(mg_ballot(lane < 7));
  o[11] = mg_popc(static_cast<unsigned>(lane));
}

// A LayerNorm-like block reduction: warps by shuffles, then their partial sums through shared
// memory, as the engine's kernels do.
__global__ void block_sum_by_warps(const float* in, float* out) {
  MG_SHARED float warp_partial[32];
  const unsigned t = threadIdx.x;
  float v = in[blockIdx.x * blockDim.x + t];
  for (int m = 16; m > 0; m /= 2) v += mg_shfl_xor(v, m);
  if (t % 32 == 0) warp_partial[t / 32] = v;
  __syncthreads();
  if (t < 32) {
    float w = t < blockDim.x / 32 ? warp_partial[t] : 0.0f;
    for (int m = 16; m > 0; m /= 2) w += mg_shfl_xor(w, m);
    if (t == 0) out[blockIdx.x] = w;
  }
}

// What a thread sees of the launch, 12 values per thread at its global linear index.
__global__ void indices(unsigned* out) {
  const unsigned block = blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y;
  const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  unsigned* o = out + (block * per_block + linear_thread()) * 12;
  const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                          blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
  for (int i = 0; i < 12; i++) o[i] = v[i];
}

// Dynamic shared memory: its alignment, that a block starts with it all 0xFF bytes (block 1 would
// otherwise see block 0's words), and that writes read back. out[0]: alignment remainder; per
// block b: out[1 + 2b] fill seen, out[2 + 2b] read back.
__global__ void smem_probe(unsigned* out, int words) {
  MG_DYNAMIC_SHARED(unsigned, shared);
  if (threadIdx.x == 0) {
    out[0] = static_cast<unsigned>(reinterpret_cast<uintptr_t>(shared) % 16);
    unsigned filled = 1;
    for (int i = 0; i < words; i++) filled &= shared[i] == 0xffffffffu;
    out[1 + 2 * blockIdx.x] = filled;
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < words; i += static_cast<int>(blockDim.x)) shared[i] = i * 3 + blockIdx.x;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned same = 1;
    for (int i = 0; i < words; i++) same &= shared[i] == static_cast<unsigned>(i * 3) + blockIdx.x;
    out[2 + 2 * blockIdx.x] = same;
  }
}

__global__ void mark(int* flag, int value) { *flag = value; }

// out[i] = in[i] * factor + offset; the factor is a double converted to float at the launch.
template <int kOffset>
__global__ void scale(const float* in, float* out, size_t n, float factor) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = in[i] * factor + kOffset;
}

__global__ void barrier_loop(int rounds) {
  for (int r = 0; r < rounds; r++) __syncthreads();
}

__global__ void shuffle_loop(int rounds, float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int r = 0; r < rounds; r++) v = mg_shfl_xor(v, 1);
  if (threadIdx.x == 0) *out = v;
}

// A bug: thread 0 returns before the barrier the others wait at.
__global__ void returns_early(float* out) {
  if (threadIdx.x == 0) return;
  MG_SHARED float s[64];
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x - 1];
}

__global__ void shuffles_in_partial_warp(float* out) { out[threadIdx.x] = mg_shfl_xor(1.0f, 1); }

// ---- tests ---------------------------------------------------------------------------------------

void test_device() {
  int count = -1;
  CUDA_OK(cudaGetDeviceCount(&count));
  CHECK(count == 1, "%d devices", count);
  cudaDeviceProp p;
  CUDA_OK(cudaGetDeviceProperties(&p, 0));
  CHECK(std::strcmp(p.name, "microgpt CUDA emulator (CPU)") == 0, "name %s", p.name);
  CHECK(p.major == 9 && p.minor == 0 && p.multiProcessorCount == 4, "%d.%d, %d SMs", p.major, p.minor, p.multiProcessorCount);
  CHECK(p.totalGlobalMem == kEmulatedMemory, "%zu bytes", p.totalGlobalMem);
  CHECK(p.sharedMemPerBlockOptin == 232448, "%zu", p.sharedMemPerBlockOptin);
  int v = 0;
  CUDA_OK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  CHECK(v == 232448, "%d", v);
  CUDA_OK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlock, 0));
  CHECK(v == 49152, "%d", v);
  CUDA_OK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0));
  CHECK(v == 9, "%d", v);
  CUDA_FAILS(cudaSetDevice(1), cudaErrorInvalidDevice);
  CHECK(cudaGetLastError() == cudaSuccess, "cudaGetLastError takes the error");
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaDriverGetVersion(&v));
  CHECK(v == 13000, "driver %d", v);
  CHECK(std::strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0, "%s",
        cudaGetErrorString(cudaErrorMemoryAllocation));
  CHECK(std::strcmp(cudaGetErrorName(cudaErrorStreamCaptureInvalidated), "cudaErrorStreamCaptureInvalidated") == 0, "name");
}

void test_barriers() {
  const dim3 blocks[] = {dim3(1), dim3(32), dim3(96), dim3(100), dim3(992), dim3(1024), dim3(16, 8, 2), dim3(7, 3, 5)};
  const dim3 grid(5, 3);
  for (const dim3& block : blocks) {
    const size_t n = block.x * block.y * block.z, blocks_n = grid.x * grid.y;
    std::vector<float> in(n * blocks_n);
    for (size_t i = 0; i < in.size(); i++) in[i] = static_cast<float>(static_cast<int>(i * 7 % 13) - 6);
    float* d_in = device_alloc<float>(in.size());
    float* d_out = device_alloc<float>(blocks_n);
    upload(d_in, in);
    MG_LAUNCH(block_sum, grid, block, 0, 0, d_in, d_out);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> out = download(d_out, blocks_n);
    for (size_t b = 0; b < blocks_n; b++) {
      double want = 0;
      for (size_t t = 0; t < n; t++) want += in[b * n + t];
      CHECK(out[b] == static_cast<float>(want), "block (%u,%u,%u), block %zu: sum %g, want %g", block.x, block.y, block.z, b,
            out[b], want);
    }
    CUDA_OK(cudaFree(d_in));
    CUDA_OK(cudaFree(d_out));
  }
}

void test_shuffles() {
  for (unsigned threads : {32u, 64u, 256u, 1024u}) {
    const unsigned grid = 3, n = threads * grid;
    std::vector<float> in(n);
    for (unsigned i = 0; i < n; i++) in[i] = static_cast<float>(static_cast<int>(i * 37 % 101) - 50);
    float* d_in = device_alloc<float>(n);
    float* d_out = device_alloc<float>(n);
    int* d_ints = device_alloc<int>(n);
    upload(d_in, in);
    MG_LAUNCH(warp_sums, grid, threads, 0, 0, d_in, d_out, d_ints);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> out = download(d_out, n);
    const std::vector<int> ints = download(d_ints, n);
    for (unsigned w = 0; w < n / 32; w++) {
      float want = 0;
      int want_ints = 0;
      for (unsigned l = 0; l < 32; l++) {
        want += in[w * 32 + l];
        want_ints += static_cast<int>(w * 32 + l);
      }
      for (unsigned l = 0; l < 32; l++) {
        CHECK(out[w * 32 + l] == want, "block of %u, warp %u lane %u: %g, want %g", threads, w, l, out[w * 32 + l], want);
        CHECK(ints[w * 32 + l] == want_ints, "warp %u lane %u: %d, want %d", w, l, ints[w * 32 + l], want_ints);
      }
    }
    MG_LAUNCH(block_sum_by_warps, grid, threads, 0, 0, d_in, d_out);
    CUDA_OK(cudaGetLastError());
    const std::vector<float> sums = download(d_out, grid);
    for (unsigned b = 0; b < grid; b++) {
      float want = 0;
      for (unsigned t = 0; t < threads; t++) want += in[b * threads + t];
      CHECK(sums[b] == want, "block sum by warps of %u threads, block %u: %g, want %g", threads, b, sums[b], want);
    }
    CUDA_OK(cudaFree(d_in));
    CUDA_OK(cudaFree(d_out));
    CUDA_OK(cudaFree(d_ints));
  }

  // PTX's rules: out-of-segment sources read the caller's own value; widths split the warp.
  const unsigned threads = 64;
  int* d = device_alloc<int>(threads * 12);
  MG_LAUNCH(warp_ops, 1, threads, 0, 0, d);
  CUDA_OK(cudaGetLastError());
  const std::vector<int> o = download(d, threads * 12);
  unsigned ballot = 0;
  for (int l = 0; l < 32; l++)
    if (l % 3 == 0) ballot |= 1u << l;
  for (unsigned t = 0; t < threads; t++) {
    const int lane = static_cast<int>(t % 32);
    const int* r = &o[t * 12];
    unsigned same_residue = 0;
    for (int l = 0; l < 32; l++)
      if (l % 5 == lane % 5) same_residue |= 1u << l;
    const int want[12] = {70,
                         lane + 3 <= 31 ? lane + 3 : lane,
                         lane % 16 >= 5 ? lane - 5 : lane,
                         (lane & 8) != 0 ? lane - 8 : lane,  // width 8: a later segment reads its own, an earlier one's is read
                         (lane & ~3) | ((lane + 1) & 3),
                         static_cast<int>(ballot),
                         1 + 2,
                         static_cast<int>(threads / 2),
                         static_cast<int>(same_residue),
                         lane >= 1 ? (lane - 1) * 2 : 0,
                         0x7f,
                         __builtin_popcount(static_cast<unsigned>(lane))};
    for (int k = 0; k < 12; k++) CHECK(r[k] == want[k], "thread %u, operation %d: %d, want %d", t, k, r[k], want[k]);
  }
  CUDA_OK(cudaFree(d));
}

void test_indices() {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const size_t threads = 3 * 2 * 2 * 4 * 3 * 2;
  unsigned* d = device_alloc<unsigned>(threads * 12);
  MG_LAUNCH(indices, grid, block, 0, 0, d);
  CUDA_OK(cudaGetLastError());
  const std::vector<unsigned> o = download(d, threads * 12);
  size_t i = 0;
  for (unsigned bz = 0; bz < 2; bz++)
    for (unsigned by = 0; by < 2; by++)
      for (unsigned bx = 0; bx < 3; bx++)
        for (unsigned tz = 0; tz < 2; tz++)
          for (unsigned ty = 0; ty < 3; ty++)
            for (unsigned tx = 0; tx < 4; tx++, i++) {
              const unsigned want[12] = {tx, ty, tz, bx, by, bz, 4, 3, 2, 3, 2, 2};
              for (int k = 0; k < 12; k++)
                CHECK(o[i * 12 + k] == want[k], "thread %zu, value %d: %u, want %u", i, k, o[i * 12 + k], want[k]);
            }
  CUDA_OK(cudaFree(d));
}

void test_dynamic_shared_memory() {
  unsigned* d = device_alloc<unsigned>(16);
  auto probe = [&](size_t bytes, unsigned blocks) {
    CUDA_OK(cudaMemset(d, 0, 16 * sizeof(unsigned)));
    MG_LAUNCH(smem_probe, blocks, 128, bytes, 0, d, static_cast<int>(bytes / 4));
    return download(d, 16);
  };
  std::vector<unsigned> o = probe(48 * 1024, 3);
  CUDA_OK(cudaGetLastError());
  CHECK(o[0] == 0, "dynamic shared memory %u bytes past 16-byte alignment", o[0]);
  for (unsigned b = 0; b < 3; b++) CHECK(o[1 + 2 * b] == 1 && o[2 + 2 * b] == 1, "block %u: filled %u, read back %u", b, o[1 + 2 * b], o[2 + 2 * b]);

  // Past 48 KiB only after cudaFuncSetAttribute, and never past the opt-in limit.
  o = probe(48 * 1024 + 4, 1);
  LAUNCH_LEFT(cudaErrorInvalidValue);
  CHECK(o[1] == 0, "a refused launch ran");
  auto k = smem_probe;  // the attribute belongs to the function, whatever names it
  CUDA_OK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
  o = probe(100 * 1024, 2);
  CUDA_OK(cudaGetLastError());
  CHECK(o[1] == 1 && o[2] == 1 && o[3] == 1 && o[4] == 1, "100 KiB: %u %u %u %u", o[1], o[2], o[3], o[4]);
  o = probe(100 * 1024 + 4, 1);
  LAUNCH_LEFT(cudaErrorInvalidValue);
  CUDA_FAILS(cudaFuncSetAttribute(smem_probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448 + 1), cudaErrorInvalidValue);
  CUDA_OK(cudaFuncSetAttribute(smem_probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448));
  o = probe(232448, 1);
  CUDA_OK(cudaGetLastError());
  CHECK(o[1] == 1 && o[2] == 1, "227 KiB: %u %u", o[1], o[2]);
  CUDA_OK(cudaFree(d));
}

void test_invalid_launches() {
  int* flag = device_alloc<int>(1);
  CUDA_OK(cudaMemset(flag, 0, sizeof(int)));
  struct Case {
    dim3 grid, block;
  };
  const Case cases[] = {{dim3(1), dim3(0)},          {dim3(1), dim3(1025)},        {dim3(1), dim3(32, 32, 2)},
                        {dim3(1), dim3(1, 1, 65)},   {dim3(0), dim3(32)},          {dim3(1, 65536), dim3(32)},
                        {dim3(1, 1, 65536), dim3(32)}, {dim3(1, 0), dim3(32)}};
  for (const Case& c : cases) {
    MG_LAUNCH(mark, c.grid, c.block, 0, 0, flag, 1);
    CHECK(cudaPeekAtLastError() == cudaErrorInvalidConfiguration, "grid (%u,%u,%u) block (%u,%u,%u): %s", c.grid.x, c.grid.y,
          c.grid.z, c.block.x, c.block.y, c.block.z, cudaGetErrorName(cudaPeekAtLastError()));
    LAUNCH_LEFT(cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
  }
  CHECK(download(flag, 1)[0] == 0, "a refused launch ran");
  // The limits themselves are fine.
  MG_LAUNCH(mark, dim3(1, 65535, 1), dim3(1), 0, 0, flag, 2);
  MG_LAUNCH(mark, dim3(1, 1, 65535), dim3(1), 0, 0, flag, 3);
  MG_LAUNCH(mark, dim3(1), dim3(1024), 0, 0, flag, 4);
  MG_LAUNCH(mark, dim3(1), dim3(16, 1, 64), 0, 0, flag, 5);
  CUDA_OK(cudaGetLastError());
  CHECK(download(flag, 1)[0] == 5, "the launches at the limits ran");

  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  CUDA_OK(cudaStreamDestroy(s));
  MG_LAUNCH(mark, 1, 1, 0, s, flag, 4);
  LAUNCH_LEFT(cudaErrorInvalidResourceHandle);
  CUDA_OK(cudaFree(flag));
}

void test_memory() {
  size_t free_bytes = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total));
  CHECK(total == kEmulatedMemory && free_bytes == total, "free %zu of %zu", free_bytes, total);
  unsigned char* a = nullptr;
  CUDA_OK(cudaMalloc(&a, 40 << 20));
  CHECK(reinterpret_cast<uintptr_t>(a) % 256 == 0, "cudaMalloc's memory is 256-byte aligned");
  bool filled = true;
  for (size_t i = 0; i < (size_t(40) << 20); i += 4093) filled = filled && a[i] == 0xff;
  CHECK(filled, "cudaMalloc's memory starts as 0xFF bytes");
  float* f = reinterpret_cast<float*>(a);
  CHECK(std::isnan(f[12345]), "as floats: NaN");
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total));
  CHECK(free_bytes == total - (size_t(40) << 20), "free %zu", free_bytes);

  void* b = reinterpret_cast<void*>(1);
  CUDA_FAILS(cudaMalloc(&b, 30 << 20), cudaErrorMemoryAllocation);
  CHECK(b == nullptr, "a failed cudaMalloc leaves a null pointer");
  CUDA_OK(cudaFree(a));
  CUDA_OK(cudaMalloc(&b, 30 << 20));
  CUDA_OK(cudaFree(b));
  CUDA_FAILS(cudaFree(b), cudaErrorInvalidValue);
  CUDA_OK(cudaGetLastError());

  // The device side of a copy must lie inside one allocation.
  float* d = device_alloc<float>(100);
  std::vector<float> h(101, 1.0f);
  CUDA_FAILS(cudaMemcpy(d, h.data(), 101 * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  CUDA_FAILS(cudaMemcpy(h.data(), d + 1, 100 * sizeof(float), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  CUDA_FAILS(cudaMemcpy(h.data(), h.data() + 1, 4, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  CUDA_FAILS(cudaMemset(d + 50, 0, 51 * sizeof(float)), cudaErrorInvalidValue);
  CUDA_OK(cudaMemcpy(d + 1, h.data(), 99 * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d, d + 1, 99 * sizeof(float), cudaMemcpyDeviceToDevice));
  CHECK(download(d, 100)[0] == 1.0f, "device to device");
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaFree(d));
}

void test_graph_replay() {
  const size_t n = 1000;
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  float* h_in = nullptr;
  float* h_out = nullptr;
  CUDA_OK(cudaMallocHost(&h_in, n * sizeof(float)));
  CUDA_OK(cudaMallocHost(&h_out, n * sizeof(float)));
  float* d_in = device_alloc<float>(n);
  float* d_out = device_alloc<float>(n);
  for (size_t i = 0; i < n; i++) h_out[i] = -1.0f;

  double factor = 2.0;  // converted to the kernel's float and kept by the graph at the launch
  auto kernel = scale<3>;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaStreamCaptureStatus status;
  CUDA_OK(cudaStreamIsCapturing(s, &status));
  CHECK(status == cudaStreamCaptureStatusActive, "capturing");
  CUDA_OK(cudaMemcpyAsync(d_in, h_in, n * sizeof(float), cudaMemcpyHostToDevice, s));
  MG_LAUNCH(kernel, (n + 255) / 256, 256, 0, s, d_in, d_out, n, factor);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaMemcpyAsync(h_out, d_out, n * sizeof(float), cudaMemcpyDeviceToHost, s));
  factor = 100.0;
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CHECK(graph != nullptr, "a graph");
  CHECK(h_out[0] == -1.0f, "a captured operation ran at its capture");
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphDestroy(graph));  // the executable graph is its own

  for (int replay = 0; replay < 3; replay++) {
    for (size_t i = 0; i < n; i++) h_in[i] = static_cast<float>(i) + 1000.0f * replay;
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    for (size_t i = 0; i < n; i++)
      CHECK(h_out[i] == h_in[i] * 2.0f + 3.0f, "replay %d, element %zu: %g, want %g", replay, i, h_out[i], h_in[i] * 2.0f + 3.0f);
  }
  CUDA_OK(cudaGraphExecDestroy(exec));

  // A replay of a copy whose memory was freed since is an illegal address, not a silent copy.
  float* d_tmp = device_alloc<float>(n);
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUDA_OK(cudaMemcpyAsync(d_tmp, h_in, n * sizeof(float), cudaMemcpyHostToDevice, s));
  CUDA_OK(cudaFree(d_tmp));  // Relaxed: allowed during the capture
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_FAILS(cudaGraphLaunch(exec, s), cudaErrorIllegalAddress);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));

  // Events, outside capture: time passes forwards.
  cudaEvent_t start, end, untimed;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&end));
  CUDA_OK(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));
  float ms = -1;
  CUDA_FAILS(cudaEventElapsedTime(&ms, start, end), cudaErrorInvalidResourceHandle);
  CUDA_OK(cudaEventRecord(start, s));
  MG_LAUNCH(kernel, (n + 255) / 256, 256, 0, s, d_in, d_out, n, 1.0f);
  CUDA_OK(cudaEventRecord(end, s));
  CUDA_OK(cudaEventRecord(untimed, s));
  CUDA_OK(cudaEventSynchronize(end));
  CUDA_OK(cudaEventElapsedTime(&ms, start, end));
  CHECK(ms >= 0.0f, "%g ms", ms);
  CUDA_FAILS(cudaEventElapsedTime(&ms, start, untimed), cudaErrorInvalidResourceHandle);
  CUDA_OK(cudaGetLastError());
  for (cudaEvent_t e : {start, end, untimed}) CUDA_OK(cudaEventDestroy(e));

  CUDA_OK(cudaFree(d_in));
  CUDA_OK(cudaFree(d_out));
  CUDA_OK(cudaFreeHost(h_in));
  CUDA_OK(cudaFreeHost(h_out));
  CUDA_OK(cudaStreamDestroy(s));
}

// A capture that a forbidden call invalidated: later work on the stream fails, EndCapture gives
// no graph, and the stream is usable again afterwards.
void expect_invalidated(cudaStream_t s, int* flag, const char* what) {
  MG_LAUNCH(mark, 1, 1, 0, s, flag, 7);
  const cudaError_t e = cudaGetLastError();
  CHECK(e == cudaErrorStreamCaptureInvalidated, "%s: a launch after it left %s", what, cudaGetErrorName(e));
  cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(1);
  CUDA_FAILS(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  CHECK(graph == nullptr, "%s: an invalidated capture gave a graph", what);
  CUDA_OK(cudaGetLastError());
  MG_LAUNCH(mark, 1, 1, 0, s, flag, 8);
  CUDA_OK(cudaGetLastError());
}

void test_capture_rules() {
  cudaStream_t s, blocking;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreate(&blocking));
  int* flag = device_alloc<int>(1);
  int host = 0;
  CUDA_OK(cudaMemset(flag, 0, sizeof(int)));
  cudaGraph_t graph = nullptr;

  // Synchronizing calls, in every mode.
  for (cudaStreamCaptureMode mode : {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeRelaxed}) {
    CUDA_OK(cudaStreamBeginCapture(s, mode));
    MG_LAUNCH(mark, 1, 1, 0, s, flag, 5);
    CUDA_FAILS(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
    expect_invalidated(s, flag, "cudaStreamSynchronize");
    CUDA_OK(cudaStreamBeginCapture(s, mode));
    CUDA_FAILS(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
    expect_invalidated(s, flag, "cudaDeviceSynchronize");
  }
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  CUDA_FAILS(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost), cudaErrorStreamCaptureUnsupported);
  expect_invalidated(s, flag, "cudaMemcpy");
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  CUDA_FAILS(cudaMemset(flag, 0, sizeof(int)), cudaErrorStreamCaptureUnsupported);
  expect_invalidated(s, flag, "cudaMemset");
  // cudaMalloc is "potentially unsafe": refused unless the capture (or this thread) is relaxed.
  void* p = nullptr;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  CUDA_FAILS(cudaMalloc(&p, 256), cudaErrorStreamCaptureUnsupported);
  expect_invalidated(s, flag, "cudaMalloc in a Global capture");
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  CUDA_OK(cudaMalloc(&p, 256));
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFree(p));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  cudaStreamCaptureMode mine = cudaStreamCaptureModeRelaxed;
  CUDA_OK(cudaThreadExchangeStreamCaptureMode(&mine));
  CUDA_OK(cudaMalloc(&p, 256));
  CUDA_OK(cudaThreadExchangeStreamCaptureMode(&mine));
  CHECK(mine == cudaStreamCaptureModeRelaxed, "the mode swapped back");
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFree(p));

  // Another thread's unsafe call: refused, and the capture invalidated, only when the capture is Global.
  for (cudaStreamCaptureMode mode : {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal}) {
    CUDA_OK(cudaStreamBeginCapture(s, mode));
    cudaError_t other = cudaSuccess;
    std::thread([&] {
      void* q = nullptr;
      other = cudaMalloc(&q, 256);
      if (q != nullptr) cudaFree(q);
    }).join();
    if (mode == cudaStreamCaptureModeGlobal) {
      CHECK(other == cudaErrorStreamCaptureUnsupported, "another thread's cudaMalloc: %s", cudaGetErrorName(other));
      expect_invalidated(s, flag, "another thread's cudaMalloc");
    } else {
      CHECK(other == cudaSuccess, "another thread's cudaMalloc in a ThreadLocal capture: %s", cudaGetErrorName(other));
      CUDA_OK(cudaStreamEndCapture(s, &graph));
      CUDA_OK(cudaGraphDestroy(graph));
    }
  }

  // The legacy stream waits for blocking streams: work on it while one captures is a conflict.
  CUDA_OK(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeThreadLocal));
  MG_LAUNCH(mark, 1, 1, 0, 0, flag, 9);
  LAUNCH_LEFT(cudaErrorStreamCaptureImplicit);
  expect_invalidated(blocking, flag, "a launch on the legacy stream");
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));  // not with a non-blocking one
  MG_LAUNCH(mark, 1, 1, 0, 0, flag, 10);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));

  // Capture is refused on the legacy stream, twice on one stream, and ends where it began.
  CUDA_FAILS(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  CUDA_FAILS(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaErrorIllegalState);
  CUDA_FAILS(cudaStreamEndCapture(blocking, &graph), cudaErrorIllegalState);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaGetLastError());

  CUDA_OK(cudaFree(flag));
  CUDA_OK(cudaStreamDestroy(s));
  CUDA_OK(cudaStreamDestroy(blocking));
}

// Against the definition, and against the compiler's _Float16 where it has one.
void test_half() {
  int mismatches = 0;
  for (uint32_t bits = 0; bits < 65536; bits++) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float got = mg_half_to_float(h);
    const int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
    double want;
    if (exponent == 31) want = mantissa != 0 ? NAN : INFINITY;
    else if (exponent == 0) want = std::ldexp(mantissa, -24);
    else want = std::ldexp(1024 + mantissa, exponent - 25);
    if (sign) want = -want;
    bool ok;
    if (std::isnan(want)) {
      uint32_t g;
      std::memcpy(&g, &got, 4);
      ok = std::isnan(got) && (g >> 31) == static_cast<uint32_t>(sign) && ((g >> 13) & 0x1ff) == (mantissa & 0x1ffu);
    } else {
      ok = got == static_cast<float>(want) && std::signbit(got) == (sign != 0);
    }
#if defined(__FLT16_MAX__)
    _Float16 reference;
    std::memcpy(&reference, &h, 2);
    const float r = static_cast<float>(reference);
    ok = ok && (std::isnan(r) ? std::isnan(got) : std::memcmp(&r, &got, 4) == 0);
#endif
    if (!ok && mismatches++ < 5) std::fprintf(stderr, "half 0x%04x: %.9g, want %.9g\n", h, got, want);
  }
  CHECK(mismatches == 0, "%d of 65536 half conversions differ", mismatches);
}

// Several OS threads launching at once: the launches serialize, each one's statics its own.
void test_threads() {
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; t++)
    threads.emplace_back([t, &failures] {
      const unsigned n = 96 + 32 * t, blocks = 4;
      std::vector<float> in(n * blocks);
      for (size_t i = 0; i < in.size(); i++) in[i] = static_cast<float>((i + t) % 9);
      cudaStream_t s;
      float *d_in, *d_out;
      if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess || cudaMalloc(&d_in, in.size() * 4) != cudaSuccess ||
          cudaMalloc(&d_out, blocks * 4) != cudaSuccess) {
        failures[t]++;
        return;
      }
      cudaMemcpyAsync(d_in, in.data(), in.size() * 4, cudaMemcpyHostToDevice, s);
      for (int round = 0; round < 50; round++) {
        MG_LAUNCH(block_sum, blocks, n, 0, s, d_in, d_out);
        float out[4];
        cudaMemcpyAsync(out, d_out, sizeof out, cudaMemcpyDeviceToHost, s);
        cudaStreamSynchronize(s);
        for (unsigned b = 0; b < blocks; b++) {
          float want = 0;
          for (unsigned i = 0; i < n; i++) want += in[b * n + i];
          if (out[b] != want) failures[t]++;
        }
      }
      if (cudaGetLastError() != cudaSuccess) failures[t]++;
      cudaFree(d_in);
      cudaFree(d_out);
      cudaStreamDestroy(s);
    });
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < 4; t++) CHECK(failures[t] == 0, "thread %d: %d failures", t, failures[t]);
}

// The fibers' cost, printed: the emulator's speed is the tests' speed.
void report_speed() {
  float* d = device_alloc<float>(1 << 16);
  MG_LAUNCH(barrier_loop, 1, 1024, 0, 0, 10);  // the fibers exist before the timing
  const int rounds = 2000;
  double barrier_ns[2], shuffle_ns[2];
  const int sizes[2] = {256, 1024};
  for (int i = 0; i < 2; i++) {
    auto start = std::chrono::steady_clock::now();
    MG_LAUNCH(barrier_loop, 1, sizes[i], 0, 0, rounds);
    CUDA_OK(cudaGetLastError());
    barrier_ns[i] = seconds_since(start) * 1e9 / (1.0 * sizes[i] * rounds);
    start = std::chrono::steady_clock::now();
    MG_LAUNCH(shuffle_loop, 1, sizes[i], 0, 0, rounds, d);
    CUDA_OK(cudaGetLastError());
    shuffle_ns[i] = seconds_since(start) * 1e9 / (1.0 * sizes[i] * rounds);
  }

  // A shape like the engine's: 256 threads, a few barriers each, a few hundred blocks.
  std::vector<float> in(256 * 300, 1.0f);
  float* d_in = device_alloc<float>(in.size());
  upload(d_in, in);
  auto start = std::chrono::steady_clock::now();
  MG_LAUNCH(block_sum, 300, 256, 0, 0, d_in, d);
  CUDA_OK(cudaGetLastError());
  const double kernel_ms = seconds_since(start) * 1e3;
  start = std::chrono::steady_clock::now();
  MG_LAUNCH(block_sum_by_warps, 300, 256, 0, 0, d_in, d);
  CUDA_OK(cudaGetLastError());
  const double warps_ms = seconds_since(start) * 1e3;
  std::printf(
      "cuda_emulator_test: a thread's pass through __syncthreads (one fiber switch) %.1f ns in blocks of 256 threads, %.1f ns "
      "of 1024; through mg_shfl_xor %.1f and %.1f ns; block_sum of 300 blocks of 256 threads (10 barriers each) %.2f ms, "
      "block_sum_by_warps (10 shuffles, 1 barrier) %.2f ms\n",
      barrier_ns[0], barrier_ns[1], shuffle_ns[0], shuffle_ns[1], kernel_ms, warps_ms);
  // Loose enough for a loaded CI machine, tight enough to catch a switch that became a system call.
  CHECK(kernel_ms < 1000.0, "a 300-block kernel took %.0f ms", kernel_ms);
  CUDA_OK(cudaFree(d_in));
  CUDA_OK(cudaFree(d));
}

// Runs `body` in a child process and expects it to abort with `needle` in its stderr.
void expect_abort(const char* what, void (*body)(), const char* needle) {
  std::fflush(stdout);
  std::fflush(stderr);
  int fds[2];
  CHECK(pipe(fds) == 0, "pipe");
  const pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    body();
    _exit(0);
  }
  close(fds[1]);
  std::string err;
  char buf[4096];
  for (ssize_t r; (r = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(r));
  close(fds[0]);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "%s: the child did not abort (status 0x%x); its stderr: %s", what,
        status, err.c_str());
  CHECK(err.find(needle) != std::string::npos, "%s: the message lacks \"%s\": %s", what, needle, err.c_str());
}

void launch_returns_early() {
  float* d = nullptr;
  cudaMalloc(&d, 64 * sizeof(float));
  MG_LAUNCH(returns_early, 1, 64, 0, 0, d);
}

void launch_partial_warp_shuffle() {
  float* d = nullptr;
  cudaMalloc(&d, 48 * sizeof(float));
  MG_LAUNCH(shuffles_in_partial_warp, 1, 48, 0, 0, d);
}

void test_aborts() {
  expect_abort("a thread returning before __syncthreads", launch_returns_early, "(the first: thread (0,0,0))");
  expect_abort("a thread returning before __syncthreads", launch_returns_early, "cannot finish");
  expect_abort("a shuffle in a block of 48 threads", launch_partial_warp_shuffle, "a multiple of 32");
}

// In a child started with MICROGPT_CUDA_EMULATED_DEVICES=0: CUDA's refusals, and the module's.
int no_device() {
  int count = -1;
  CUDA_FAILS(cudaGetDeviceCount(&count), cudaErrorNoDevice);
  CHECK(count == 0, "%d devices", count);
  void* p = nullptr;
  CUDA_FAILS(cudaMalloc(&p, 16), cudaErrorNoDevice);
  void* module = dlopen(MICROGPT_CUDA_EMULATED_MODULE, RTLD_NOW | RTLD_LOCAL);
  CHECK(module != nullptr, "dlopen: %s", dlerror());
  auto devices = reinterpret_cast<microgpt_cuda_devices_fn>(dlsym(module, "microgpt_cuda_devices"));
  CHECK(devices != nullptr, "no microgpt_cuda_devices");
  char why[256] = "";
  CHECK(devices(nullptr, 0, why, sizeof why) == -1, "devices without a device");
  CHECK(std::strstr(why, "no CUDA device") != nullptr, "why: %s", why);
  return 0;
}

void test_no_device_child() {
  std::fflush(stdout);
  const pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    setenv("MICROGPT_CUDA_EMULATED_DEVICES", "0", 1);
    execl("/proc/self/exe", "cuda_emulator_test", "--no-device", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the no-device child failed (status 0x%x)", status);
}

// The module built with this emulator, through api.h, as the addon opens it.
void test_module() {
  void* module = dlopen(MICROGPT_CUDA_EMULATED_MODULE, RTLD_NOW | RTLD_LOCAL);
  CHECK(module != nullptr, "dlopen: %s", dlerror());
  auto abi = reinterpret_cast<microgpt_cuda_abi_fn>(dlsym(module, "microgpt_cuda_abi"));
  auto devices = reinterpret_cast<microgpt_cuda_devices_fn>(dlsym(module, "microgpt_cuda_devices"));
  CHECK(abi != nullptr && devices != nullptr, "the module lacks microgpt_cuda_abi or microgpt_cuda_devices");
  CHECK(abi() == MICROGPT_CUDA_ABI, "ABI %d, want %d", abi(), MICROGPT_CUDA_ABI);
  CHECK(dlsym(module, "cudaMalloc") == nullptr && dlsym(module, "_Z10cudaMallocPPvm") == nullptr,
        "the module exports the emulator's runtime");
  MicrogptCudaDevice d[2];
  char why[256] = "";
  CHECK(devices(d, 2, why, sizeof why) == 1, "devices: %s", why);
  CHECK(std::strcmp(d[0].name, "microgpt CUDA emulator (CPU)") == 0 && d[0].major == 9 && d[0].usable == 1 &&
            d[0].memory_bytes == kEmulatedMemory,
        "device %s %d.%d usable %d, %zu bytes", d[0].name, d[0].major, d[0].minor, d[0].usable, d[0].memory_bytes);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--no-device") == 0) return no_device();
  // Read once, at the first runtime call: small, so that running out is quick to reach.
  setenv("MICROGPT_CUDA_EMULATED_MEMORY", std::to_string(kEmulatedMemory).c_str(), 1);
  unsetenv("MICROGPT_CUDA_EMULATED_DEVICES");
  const auto start = std::chrono::steady_clock::now();
  test_device();
  test_barriers();
  test_shuffles();
  test_indices();
  test_dynamic_shared_memory();
  test_invalid_launches();
  test_memory();
  test_graph_replay();
  test_capture_rules();
  test_half();
  test_threads();
  test_module();
  test_no_device_child();
  test_aborts();
  report_speed();
  std::printf("cuda_emulator_test: all passed in %.2f s\n", seconds_since(start));
  return 0;
}
