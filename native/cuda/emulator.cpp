// The CUDA emulator's runtime (emulator.h describes the model): the fiber scheduler that runs a
// block's threads, and the host API (memory, streams, events, graph capture and replay).
//
// Fibers: one per thread of a block, each with its own 64 KiB stack (a guard page below it), made
// once with makecontext and kept for every later launch, whichever OS thread makes it. After a
// fiber's first entry every switch is _setjmp/_longjmp: swapcontext would also save and restore
// the signal mask, a system call per switch, ~10x the cost of the switch itself. A fiber runs
// until it waits (__syncthreads, a warp operation) or returns; the last thread to reach a barrier
// releases the others into a FIFO of ready fibers and runs on, so a barrier costs one switch per
// thread. When a thread must wait and no fiber is ready, the block can never finish: the emulator
// says which threads wait where and which have returned, and aborts.
//
// Host side: one mutex (g_mutex) serializes every call that touches the emulator's state, and a
// kernel runs entirely under it, so that MG_SHARED statics are one block's own and so are the
// fibers. Errors go to a per-thread last error as in CUDA's runtime; nothing throws.

// glibc's fortified longjmp (_FORTIFY_SOURCE, on by default in Ubuntu's compilers) aborts when
// the jump goes to a frame below the current one on another stack: every switch between fibers.
#undef _FORTIFY_SOURCE

#include "emulator.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

namespace mgemu {
namespace detail {

uint3 thread_idx{0, 0, 0};
uint3 block_idx{0, 0, 0};
dim3 block_dim;
dim3 grid_dim;
unsigned char* dynamic_smem = nullptr;

}  // namespace detail
}  // namespace mgemu

namespace {

using mgemu::detail::block_dim;
using mgemu::detail::block_idx;
using mgemu::detail::grid_dim;

// ---- limits of the emulated device (an sm_90 part's, where the emulator must refuse the same) ----

constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridX = 0x7fffffffu;
constexpr unsigned kMaxGridYZ = 65535;
constexpr size_t kSharedPerBlock = 48 * 1024;         // without cudaFuncSetAttribute
constexpr size_t kSharedPerBlockOptin = 232448;       // 227 KiB, sm_90's opt-in limit
constexpr size_t kSharedPerMultiprocessor = 233472;   // 228 KiB
constexpr size_t kDefaultMemory = size_t(8) << 30;
constexpr int kMultiprocessors = 4;
constexpr int kL2Bytes = 50 * 1024 * 1024;
constexpr int kVersion = 13000;
constexpr size_t kDeviceAlignment = 256;  // cudaMalloc's guarantee
constexpr size_t kStackBytes = 64 * 1024;

// ---- the scheduler ---------------------------------------------------------------------------

struct Fiber {
  jmp_buf context;
};

enum Wait : unsigned char { kRunning, kAtBarrier, kAtWarp, kReturned };

struct Warp {
  int arrived;
  unsigned generation;
  int waiters[31];
  // Two slots, by generation parity: a lane can write slot g % 2 again only at generation g + 2,
  // after every lane has arrived at g + 1, so after every lane has read generation g's values.
  uint64_t values[2][32];
};

// The launch being run. Only the thread holding g_mutex touches it.
struct Scheduler {
  std::vector<Fiber*> fibers;  // the pool: grown to the largest block met, kept
  int threads = 0;             // per block of this launch
  int current = -1;            // the running fiber, or -1: the host
  int returned = 0;            // threads of this block that have returned
  Wait wait[kMaxThreadsPerBlock];
  uint3 index[kMaxThreadsPerBlock];
  int ready[kMaxThreadsPerBlock];  // FIFO of fibers to run (a ring: at most threads - 1 are in it)
  unsigned ready_head = 0, ready_tail = 0;
  // __syncthreads: arrivals, generation, the waiting fibers, and per-generation predicate sums
  // (for __syncthreads_count/and/or) on the same two-slot scheme as the warps' values.
  int arrived = 0;
  unsigned generation = 0;
  int waiters[kMaxThreadsPerBlock];
  int predicate_sum[2] = {0, 0};
  Warp warps[kMaxThreadsPerBlock / 32];
  jmp_buf host;  // the launching thread, resumed when every thread of the block has returned
  const std::function<void()>* body = nullptr;
  const char* kernel = nullptr;
  ucontext_t boot;  // a new fiber's first switch back to its creator
  Fiber* booting = nullptr;
};
Scheduler g_run;

alignas(128) unsigned char g_dynamic_smem[kSharedPerBlockOptin];

// A kernel running on this OS thread: a runtime call from it would wait for g_mutex forever.
thread_local bool t_running_kernel = false;

__attribute__((format(printf, 1, 2))) [[noreturn]] void fatal_in_kernel(const char* format, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "microgpt CUDA emulator: kernel %s<<<(%u,%u,%u), (%u,%u,%u)>>>, block (%u,%u,%u)",
               g_run.kernel != nullptr ? g_run.kernel : "?", grid_dim.x, grid_dim.y, grid_dim.z, block_dim.x,
               block_dim.y, block_dim.z, block_idx.x, block_idx.y, block_idx.z);
  if (g_run.current >= 0) {
    const uint3 t = g_run.index[g_run.current];
    std::fprintf(stderr, ", thread (%u,%u,%u)", t.x, t.y, t.z);
  }
  std::fprintf(stderr, ": ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}

__attribute__((format(printf, 1, 2))) [[noreturn]] void fatal(const char* format, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "microgpt CUDA emulator: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  std::abort();
}

void activate(int fiber) {
  g_run.current = fiber;
  mgemu::detail::thread_idx = g_run.index[fiber];
}

void make_ready(int fiber) {
  g_run.wait[fiber] = kRunning;
  g_run.ready[g_run.ready_tail++ % kMaxThreadsPerBlock] = fiber;
}

int next_ready() {
  if (g_run.ready_head == g_run.ready_tail) return -1;
  return g_run.ready[g_run.ready_head++ % kMaxThreadsPerBlock];
}

// Saves the running fiber and resumes `next` (a fiber, or the host when -1); returns when the
// running fiber is resumed in turn. Never inlined: _setjmp's frame must be this one.
__attribute__((noinline)) void switch_to(int next) {
  Fiber* self = g_run.fibers[g_run.current];
  if (_setjmp(self->context) == 0) {
    if (next < 0) _longjmp(g_run.host, 1);
    activate(next);
    _longjmp(g_run.fibers[next]->context, 1);
  }
}

// No fiber can run and some have not returned: they wait for threads that will never come.
[[noreturn]] void deadlock(bool caller_returned) {
  int at_barrier = 0, at_warp = 0, returned = 0, first_returned = -1;
  for (int i = 0; i < g_run.threads; i++) {
    if (g_run.wait[i] == kAtBarrier) at_barrier++;
    if (g_run.wait[i] == kAtWarp) at_warp++;
    if (g_run.wait[i] == kReturned && returned++ == 0) first_returned = i;
  }
  char first[64] = "";
  if (first_returned >= 0) {
    const uint3 t = g_run.index[first_returned];
    std::snprintf(first, sizeof first, " (the first: thread (%u,%u,%u))", t.x, t.y, t.z);
  }
  fatal_in_kernel(
      "the block cannot finish: %s; of its %d threads %d wait at __syncthreads, %d at a warp operation and %d have "
      "returned%s. Every thread of a block must reach each __syncthreads the others reach, and every lane of a warp "
      "each warp operation (on a GPU this hangs or corrupts shared memory)",
      caller_returned ? "this thread returned while others wait for it" : "this thread waits for threads that will not come",
      g_run.threads, at_barrier, at_warp, returned, first);
}

void wait_here(Wait why) {
  g_run.wait[g_run.current] = why;
  const int next = next_ready();
  if (next < 0) deadlock(false);
  switch_to(next);
}

void thread_returned() {
  g_run.wait[g_run.current] = kReturned;
  int next = -1;
  if (++g_run.returned < g_run.threads) {
    next = next_ready();
    if (next < 0) deadlock(true);
  }
  switch_to(next);
}

// Every fiber's life: parked right after its creation, then one kernel thread after another.
void fiber_main() {
  Fiber* self = g_run.booting;
  if (_setjmp(self->context) == 0) {
    setcontext(&g_run.boot);
    fatal("setcontext failed");
  }
  for (;;) {
    (*g_run.body)();
    thread_returned();
  }
}

Fiber* create_fiber(int number) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  // Stack tops staggered by cache lines: at one offset modulo 4 KiB, the 1024 fibers' top frames
  // would compete for the same cache sets, which doubled the switch cost in blocks of 1024.
  const size_t stagger = static_cast<size_t>(number % 61) * 64;
  const size_t bytes = kStackBytes + 4096;
  void* base = mmap(nullptr, page + bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) fatal("cannot map a %zu-byte fiber stack", bytes);
  // The guard page below the stack: an overflow faults here instead of writing over another fiber's stack.
  if (mprotect(base, page, PROT_NONE) != 0) fatal("cannot protect a fiber stack's guard page");
  Fiber* fiber = new Fiber;
  ucontext_t context;
  if (getcontext(&context) != 0) fatal("getcontext failed");
  context.uc_stack.ss_sp = static_cast<unsigned char*>(base) + page;
  context.uc_stack.ss_size = bytes - stagger;
  context.uc_link = nullptr;
  makecontext(&context, fiber_main, 0);
  g_run.booting = fiber;
  // In and straight back: swapcontext keeps this thread's signal mask (both contexts hold it).
  if (swapcontext(&g_run.boot, &context) != 0) fatal("swapcontext failed");
  g_run.booting = nullptr;
  return fiber;
}

// Runs the current block's threads to completion. Never inlined: the host's _setjmp frame.
__attribute__((noinline)) void run_block() {
  g_run.ready_head = g_run.ready_tail = 0;
  for (int i = 1; i < g_run.threads; i++) make_ready(i);
  g_run.wait[0] = kRunning;
  g_run.returned = 0;
  g_run.arrived = 0;
  g_run.predicate_sum[0] = g_run.predicate_sum[1] = 0;
  for (int w = 0; w < (g_run.threads + 31) / 32; w++) g_run.warps[w].arrived = 0;
  activate(0);
  if (_setjmp(g_run.host) == 0) _longjmp(g_run.fibers[0]->context, 1);
  g_run.current = -1;
}

struct Kernel {
  const char* name;
  const void* function;
  dim3 grid, block;
  size_t smem;
  std::function<void()> body;
};

void execute(const Kernel& k) {
  const int threads = static_cast<int>(k.block.x * k.block.y * k.block.z);
  while (static_cast<int>(g_run.fibers.size()) < threads)
    g_run.fibers.push_back(create_fiber(static_cast<int>(g_run.fibers.size())));
  for (int i = 0; i < threads; i++) {
    const unsigned u = static_cast<unsigned>(i);
    g_run.index[i] = uint3{u % k.block.x, u / k.block.x % k.block.y, u / (k.block.x * k.block.y)};
  }
  g_run.threads = threads;
  g_run.body = &k.body;
  g_run.kernel = k.name;
  block_dim = k.block;
  grid_dim = k.grid;
  mgemu::detail::dynamic_smem = g_dynamic_smem;
  t_running_kernel = true;
  for (unsigned z = 0; z < k.grid.z; z++)
    for (unsigned y = 0; y < k.grid.y; y++)
      for (unsigned x = 0; x < k.grid.x; x++) {
        block_idx = uint3{x, y, z};
        std::memset(g_dynamic_smem, 0xff, k.smem);
        run_block();
      }
  t_running_kernel = false;
  g_run.body = nullptr;
  mgemu::detail::thread_idx = uint3{0, 0, 0};
}

void check_in_kernel(const char* what) {
  if (g_run.current < 0) fatal("%s called outside a kernel", what);
}

}  // namespace

namespace mgemu {
namespace detail {

int block_barrier(int predicate, const char* what) {
  check_in_kernel(what);
  const unsigned slot = g_run.generation & 1;
  g_run.predicate_sum[slot] += predicate;
  if (++g_run.arrived == g_run.threads) {
    g_run.arrived = 0;
    g_run.generation++;
    g_run.predicate_sum[slot ^ 1] = 0;
    for (int i = 0; i < g_run.threads - 1; i++) make_ready(g_run.waiters[i]);
  } else {
    g_run.waiters[g_run.arrived - 1] = g_run.current;
    wait_here(kAtBarrier);
  }
  return g_run.predicate_sum[slot];
}

const uint64_t* warp_gather(uint64_t value, unsigned member_mask, const char* what) {
  check_in_kernel(what);
  if (member_mask != 0xffffffffu)
    fatal_in_kernel("%s with member mask 0x%08x: the emulator runs full-warp operations only (mask 0xffffffff)", what,
                    member_mask);
  if (g_run.threads % 32 != 0)
    fatal_in_kernel("%s in a block of %d threads: warp operations need whole warps (a multiple of 32 threads)", what,
                    g_run.threads);
  const int me = g_run.current;
  Warp& w = g_run.warps[me / 32];
  const unsigned slot = w.generation & 1;
  w.values[slot][me % 32] = value;
  if (++w.arrived == 32) {
    w.arrived = 0;
    w.generation++;
    for (int i = 0; i < 31; i++) make_ready(w.waiters[i]);
  } else {
    w.waiters[w.arrived - 1] = me;
    wait_here(kAtWarp);
  }
  return w.values[slot];
}

void device_trap(const char* what) {
  if (g_run.current < 0) fatal("%s outside a kernel", what);
  fatal_in_kernel("%s", what);
}

}  // namespace detail
}  // namespace mgemu

// ---- the host runtime ---------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;
// A recorded operation of a capture, run by cudaGraphLaunch under g_mutex.
using Node = std::function<cudaError_t()>;

struct Settings {
  size_t memory = kDefaultMemory;
  bool device = true;
};

// Read once: a test sets them before its first runtime call (or in a child process).
const Settings& settings() {
  static const Settings s = [] {
    Settings out;
    if (const char* v = std::getenv("MICROGPT_CUDA_EMULATED_MEMORY"); v != nullptr && *v != '\0') {
      char* end = nullptr;
      const unsigned long long bytes = std::strtoull(v, &end, 10);
      if (end == v || *end != '\0' || bytes == 0)
        std::fprintf(stderr, "microgpt CUDA emulator: MICROGPT_CUDA_EMULATED_MEMORY=%s is not a byte count; using %zu\n", v,
                     out.memory);
      else
        out.memory = static_cast<size_t>(bytes);
    }
    if (const char* v = std::getenv("MICROGPT_CUDA_EMULATED_DEVICES"); v != nullptr && std::strcmp(v, "0") == 0)
      out.device = false;
    return out;
  }();
  return s;
}

struct Capture;

}  // namespace

struct CUstream_st {
  unsigned flags = 0;
  Capture* capture = nullptr;
};

struct CUevent_st {
  unsigned flags = 0;
  bool recorded = false;
  Clock::time_point time;
  Capture* captured = nullptr;  // recorded into this capture, still active
};

struct CUgraph_st {
  std::vector<Node> nodes;
};

struct CUgraphExec_st {
  std::shared_ptr<const std::vector<Node>> nodes;
};

namespace {

struct Capture {
  CUstream_st* stream;
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  bool invalidated = false;
  std::vector<Node> nodes;
};

std::mutex g_mutex;
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

// Device allocations (base -> size) and their total; pinned host allocations (base -> size).
std::map<uintptr_t, size_t> g_device;
size_t g_device_used = 0;
std::map<uintptr_t, size_t> g_pinned;

CUstream_st g_legacy;  // stream 0: blocking, never captured
std::set<CUstream_st*> g_streams;
std::set<CUevent_st*> g_events;
std::set<CUgraph_st*> g_graphs;
std::set<CUgraphExec_st*> g_execs;
std::vector<Capture*> g_captures;
std::unordered_map<const void*, int> g_max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize

// Every API entry holds g_mutex; a kernel calling the runtime would wait for it forever.
struct Lock {
  std::unique_lock<std::mutex> lock;
  explicit Lock(const char* what) {
    if (t_running_kernel) fatal_in_kernel("%s called from inside a kernel (the emulator has no dynamic parallelism)", what);
    lock = std::unique_lock<std::mutex>(g_mutex);
  }
};

cudaError_t result(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

bool in_device_memory(const void* p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_device.upper_bound(a);
  if (it == g_device.begin()) return false;
  --it;
  return a - it->first <= it->second && n <= it->second - (a - it->first);
}

cudaError_t resolve(cudaStream_t stream, CUstream_st** out) {
  if (stream == nullptr || stream == cudaStreamLegacy) {
    *out = &g_legacy;
    return cudaSuccess;
  }
  if (g_streams.count(stream) == 0) return cudaErrorInvalidResourceHandle;
  *out = stream;
  return cudaSuccess;
}

void invalidate(Capture* c) { c->invalidated = true; }

// cudaThreadExchangeStreamCaptureMode's rules for "potentially unsafe" calls (cudaMalloc, the
// synchronous copies, ...): a thread in Global mode may not make one while it has a non-relaxed
// capture under way or any thread has a Global one; in ThreadLocal mode, only its own counts; in
// Relaxed mode it may. A refused call invalidates the captures that forbade it.
cudaError_t unsafe_call() {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
  const std::thread::id me = std::this_thread::get_id();
  bool refused = false;
  for (Capture* c : g_captures) {
    const bool own = c->thread == me && c->mode != cudaStreamCaptureModeRelaxed;
    const bool other_global = t_capture_mode == cudaStreamCaptureModeGlobal && c->thread != me &&
                              c->mode == cudaStreamCaptureModeGlobal;
    if (own || other_global) {
      invalidate(c);
      refused = true;
    }
  }
  return refused ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

// Work on the legacy stream waits for every blocking stream: a capturing one would gain a
// dependency on work outside its graph.
cudaError_t legacy_stream_use() {
  bool conflict = false;
  for (Capture* c : g_captures)
    if ((c->stream->flags & cudaStreamNonBlocking) == 0) {
      invalidate(c);
      conflict = true;
    }
  return conflict ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}

// What every operation submitted to a stream goes through: recorded when the stream captures,
// else run now (after the legacy stream's check).
cudaError_t submit(CUstream_st* s, cudaError_t invalid_arguments, Node&& node) {
  if (s->capture != nullptr) {
    if (s->capture->invalidated) return cudaErrorStreamCaptureInvalidated;
    if (invalid_arguments != cudaSuccess) {
      invalidate(s->capture);
      return invalid_arguments;
    }
    s->capture->nodes.push_back(std::move(node));
    return cudaSuccess;
  }
  if (invalid_arguments != cudaSuccess) return invalid_arguments;
  if (s == &g_legacy) {
    const cudaError_t e = legacy_stream_use();
    if (e != cudaSuccess) return e;
  }
  return node();
}

cudaError_t check_copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return cudaErrorInvalidMemcpyDirection;
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return cudaErrorInvalidValue;
  // The device side of a copy must lie inside one cudaMalloc allocation: a copy past its end is
  // a bug a GPU may not report.
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_device && !in_device_memory(dst, count)) || (src_device && !in_device_memory(src, count)))
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

Node copy_node(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return [=]() {
    // Checked again at a replay: the memory may have been freed since the capture.
    const cudaError_t e = check_copy(dst, src, count, kind);
    if (e != cudaSuccess) return cudaErrorIllegalAddress;
    if (count != 0) std::memmove(dst, src, count);
    return cudaSuccess;
  };
}

cudaError_t check_set(void* dst, size_t count) {
  if (count == 0) return cudaSuccess;
  return in_device_memory(dst, count) ? cudaSuccess : cudaErrorInvalidValue;
}

Node set_node(void* dst, int value, size_t count) {
  return [=]() {
    if (check_set(dst, count) != cudaSuccess) return cudaErrorIllegalAddress;
    if (count != 0) std::memset(dst, value, count);
    return cudaSuccess;
  };
}

cudaError_t check_launch(const void* function, dim3 grid, dim3 block, size_t smem) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > static_cast<unsigned long long>(kMaxThreadsPerBlock) || block.z > kMaxBlockZ)
    return cudaErrorInvalidConfiguration;
  if (grid.x == 0 || grid.x > kMaxGridX || grid.y == 0 || grid.y > kMaxGridYZ || grid.z == 0 || grid.z > kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  size_t limit = kSharedPerBlock;
  if (auto it = g_max_dynamic_smem.find(function); it != g_max_dynamic_smem.end()) limit = static_cast<size_t>(it->second);
  if (smem > limit) return cudaErrorInvalidValue;
  return cudaSuccess;
}

cudaError_t run_nodes(const std::vector<Node>& nodes) {
  for (const Node& node : nodes) {
    const cudaError_t e = node();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

void finish_capture(Capture* c) {
  for (CUevent_st* e : g_events)
    if (e->captured == c) e->captured = nullptr;
  for (size_t i = 0; i < g_captures.size(); i++)
    if (g_captures[i] == c) {
      g_captures.erase(g_captures.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  c->stream->capture = nullptr;
  delete c;
}

}  // namespace

void mgemu::launch_erased(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, std::function<void()>&& body) {
  Lock lock("a kernel launch");
  if (!settings().device) {
    result(cudaErrorNoDevice);
    return;
  }
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) {
    result(e);
    return;
  }
  auto k = std::make_shared<Kernel>(Kernel{name, kernel, grid, block, smem, std::move(body)});
  result(submit(s, check_launch(kernel, grid, block, smem), [k]() {
    execute(*k);
    return cudaSuccess;
  }));
}

// ---- devices --------------------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return result(cudaErrorInvalidValue);
  *count = settings().device ? 1 : 0;
  return result(settings().device ? cudaSuccess : cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
  if (!settings().device) return result(cudaErrorNoDevice);
  return result(device == 0 ? cudaSuccess : cudaErrorInvalidDevice);
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return result(cudaErrorInvalidValue);
  if (!settings().device) return result(cudaErrorNoDevice);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (p == nullptr) return result(cudaErrorInvalidValue);
  if (!settings().device) return result(cudaErrorNoDevice);
  if (device != 0) return result(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "microgpt CUDA emulator (CPU)");
  p->totalGlobalMem = settings().memory;
  p->sharedMemPerBlock = kSharedPerBlock;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreadsPerBlock;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = kMaxThreadsPerBlock;
  p->maxThreadsDim[2] = static_cast<int>(kMaxBlockZ);
  p->maxGridSize[0] = static_cast<int>(kMaxGridX);
  p->maxGridSize[1] = p->maxGridSize[2] = static_cast<int>(kMaxGridYZ);
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = kMultiprocessors;
  p->concurrentKernels = 1;
  p->unifiedAddressing = 1;
  p->memoryBusWidth = 5120;
  p->l2CacheSize = kL2Bytes;
  p->maxThreadsPerMultiProcessor = 2048;
  p->sharedMemPerMultiprocessor = kSharedPerMultiprocessor;
  p->regsPerMultiprocessor = 65536;
  p->sharedMemPerBlockOptin = kSharedPerBlockOptin;
  p->maxBlocksPerMultiProcessor = 32;
  p->reservedSharedMemPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return result(cudaErrorInvalidValue);
  if (!settings().device) return result(cudaErrorNoDevice);
  if (device != 0) return result(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: case cudaDevAttrMaxBlockDimY: *value = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimZ: *value = static_cast<int>(kMaxBlockZ); break;
    case cudaDevAttrMaxGridDimX: *value = static_cast<int>(kMaxGridX); break;
    case cudaDevAttrMaxGridDimY: case cudaDevAttrMaxGridDimZ: *value = static_cast<int>(kMaxGridYZ); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(kSharedPerBlock); break;
    case cudaDevAttrTotalConstantMemory: *value = 65536; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrMultiProcessorCount: *value = kMultiprocessors; break;
    case cudaDevAttrIntegrated: *value = 0; break;
    case cudaDevAttrConcurrentKernels: *value = 1; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = 5120; break;
    case cudaDevAttrL2CacheSize: *value = kL2Bytes; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrUnifiedAddressing: *value = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(kSharedPerMultiprocessor); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(kSharedPerBlockOptin); break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = 32; break;
    default: return result(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return result(cudaErrorInvalidValue);
  *version = kVersion;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return result(cudaErrorInvalidValue);
  *version = kVersion;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  Lock lock("cudaDeviceSynchronize");
  if (!settings().device) return result(cudaErrorNoDevice);
  // It would wait for the capturing streams too: a conflict with capture in every mode.
  if (!g_captures.empty()) {
    for (Capture* c : g_captures) invalidate(c);
    return result(cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  Lock lock("cudaFuncSetAttribute");
  if (!settings().device) return result(cudaErrorNoDevice);
  if (func == nullptr) return result(cudaErrorInvalidDeviceFunction);
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      // The limit counts the kernel's static shared memory too, which the emulator cannot see.
      if (value < 0 || static_cast<size_t>(value) > kSharedPerBlockOptin) return result(cudaErrorInvalidValue);
      g_max_dynamic_smem[func] = value;
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      return result(value >= -1 && value <= 100 ? cudaSuccess : cudaErrorInvalidValue);
  }
  return result(cudaErrorInvalidValue);
}

// ---- memory -------------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** ptr, size_t size) {
  Lock lock("cudaMalloc");
  if (ptr == nullptr) return result(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (!settings().device) return result(cudaErrorNoDevice);
  if (const cudaError_t e = unsafe_call(); e != cudaSuccess) return result(e);
  if (size == 0) return cudaSuccess;
  const size_t bytes = round_up(size, kDeviceAlignment);
  if (bytes < size || bytes > settings().memory - g_device_used) return result(cudaErrorMemoryAllocation);
  void* p = std::aligned_alloc(kDeviceAlignment, bytes);
  if (p == nullptr) return result(cudaErrorMemoryAllocation);
  // NaN as float: a kernel reading memory nobody wrote shows it in its results.
  std::memset(p, 0xff, bytes);
  g_device[reinterpret_cast<uintptr_t>(p)] = size;
  g_device_used += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  Lock lock("cudaFree");
  if (ptr == nullptr) return cudaSuccess;
  if (const cudaError_t e = unsafe_call(); e != cudaSuccess) return result(e);
  auto it = g_device.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_device.end()) return result(cudaErrorInvalidValue);
  g_device_used -= round_up(it->second, kDeviceAlignment);
  g_device.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int flags) {
  Lock lock("cudaHostAlloc");
  if (ptr == nullptr) return result(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (!settings().device) return result(cudaErrorNoDevice);
  if (flags > 0xf) return result(cudaErrorInvalidValue);
  if (const cudaError_t e = unsafe_call(); e != cudaSuccess) return result(e);
  if (size == 0) return cudaSuccess;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = std::aligned_alloc(page, round_up(size, page));
  if (p == nullptr) return result(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, size);
  g_pinned[reinterpret_cast<uintptr_t>(p)] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) { return cudaHostAlloc(ptr, size, cudaHostAllocDefault); }
cudaError_t cudaMallocHost(void** ptr, size_t size, unsigned int flags) { return cudaHostAlloc(ptr, size, flags); }

cudaError_t cudaFreeHost(void* ptr) {
  Lock lock("cudaFreeHost");
  if (ptr == nullptr) return cudaSuccess;
  if (const cudaError_t e = unsafe_call(); e != cudaSuccess) return result(e);
  auto it = g_pinned.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_pinned.end()) return result(cudaErrorInvalidValue);
  g_pinned.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  Lock lock("cudaMemGetInfo");
  if (free_bytes == nullptr || total_bytes == nullptr) return result(cudaErrorInvalidValue);
  if (!settings().device) return result(cudaErrorNoDevice);
  *total_bytes = settings().memory;
  *free_bytes = settings().memory - g_device_used;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  Lock lock("cudaMemcpy");
  if (!settings().device) return result(cudaErrorNoDevice);
  // Synchronous, and on the legacy stream.
  if (const cudaError_t e = unsafe_call(); e != cudaSuccess) return result(e);
  if (const cudaError_t e = check_copy(dst, src, count, kind); e != cudaSuccess) return result(e);
  return result(submit(&g_legacy, cudaSuccess, copy_node(dst, src, count, kind)));
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  Lock lock("cudaMemcpyAsync");
  if (!settings().device) return result(cudaErrorNoDevice);
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  return result(submit(s, check_copy(dst, src, count, kind), copy_node(dst, src, count, kind)));
}

cudaError_t cudaMemset(void* dst, int value, size_t count) {
  Lock lock("cudaMemset");
  if (!settings().device) return result(cudaErrorNoDevice);
  if (const cudaError_t e = unsafe_call(); e != cudaSuccess) return result(e);
  if (const cudaError_t e = check_set(dst, count); e != cudaSuccess) return result(e);
  return result(submit(&g_legacy, cudaSuccess, set_node(dst, value, count)));
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  Lock lock("cudaMemsetAsync");
  if (!settings().device) return result(cudaErrorNoDevice);
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  return result(submit(s, check_set(dst, count), set_node(dst, value, count)));
}

// ---- streams and events -------------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  Lock lock("cudaStreamCreateWithFlags");
  if (stream == nullptr || (flags & ~unsigned(cudaStreamNonBlocking)) != 0) return result(cudaErrorInvalidValue);
  if (!settings().device) return result(cudaErrorNoDevice);
  CUstream_st* s = new CUstream_st;
  s->flags = flags;
  g_streams.insert(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Lock lock("cudaStreamDestroy");
  if (stream == nullptr || stream == cudaStreamLegacy || g_streams.count(stream) == 0)
    return result(cudaErrorInvalidResourceHandle);
  if (stream->capture != nullptr) {
    invalidate(stream->capture);
    return result(cudaErrorStreamCaptureUnsupported);
  }
  g_streams.erase(stream);
  delete stream;
  return cudaSuccess;
}

namespace {

// cudaStreamSynchronize and cudaStreamQuery: nothing is ever pending, but asking a capturing
// stream is a conflict with its capture.
cudaError_t stream_wait(cudaStream_t stream) {
  if (!settings().device) return cudaErrorNoDevice;
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return e;
  if (s->capture != nullptr) {
    invalidate(s->capture);
    return cudaErrorStreamCaptureUnsupported;
  }
  if (s == &g_legacy) return legacy_stream_use();
  return cudaSuccess;
}

cudaError_t event_wait(cudaEvent_t event) {
  if (g_events.count(event) == 0) return cudaErrorInvalidResourceHandle;
  if (event->captured != nullptr) {
    invalidate(event->captured);
    return cudaErrorCapturedEvent;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Lock lock("cudaStreamSynchronize");
  return result(stream_wait(stream));
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  Lock lock("cudaStreamQuery");
  return result(stream_wait(stream));
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  Lock lock("cudaStreamWaitEvent");
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  if (g_events.count(event) == 0) return result(cudaErrorInvalidResourceHandle);
  if (flags > 1) return result(cudaErrorInvalidValue);  // cudaEventWaitDefault or cudaEventWaitExternal
  if (event->captured != nullptr && event->captured != s->capture) {
    // A fork or join between streams of a capture: CUDA merges them into one graph; the
    // emulator records one stream per capture.
    std::fprintf(stderr, "microgpt CUDA emulator: cudaStreamWaitEvent joins two streams in a capture, which the emulator does not record\n");
    invalidate(event->captured);
    return result(cudaErrorNotSupported);
  }
  if (s->capture != nullptr && event->captured == nullptr) {
    // A captured stream waiting for work outside its graph.
    invalidate(s->capture);
    return result(cudaErrorStreamCaptureIsolation);
  }
  if (s->capture != nullptr && s->capture->invalidated) return result(cudaErrorStreamCaptureInvalidated);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  Lock lock("cudaEventCreateWithFlags");
  if (event == nullptr || (flags & ~unsigned(cudaEventBlockingSync | cudaEventDisableTiming)) != 0)
    return result(cudaErrorInvalidValue);
  if (!settings().device) return result(cudaErrorNoDevice);
  CUevent_st* e = new CUevent_st;
  e->flags = flags;
  g_events.insert(e);
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventCreate(cudaEvent_t* event, unsigned int flags) { return cudaEventCreateWithFlags(event, flags); }

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  Lock lock("cudaEventRecord");
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  if (g_events.count(event) == 0) return result(cudaErrorInvalidResourceHandle);
  const cudaError_t e = submit(s, cudaSuccess, [event]() {
    // At a replay the event may be gone: CUDA's graph would hold its own reference.
    if (g_events.count(event) != 0) {
      event->recorded = true;
      event->time = Clock::now();
    }
    return cudaSuccess;
  });
  if (e == cudaSuccess && s->capture != nullptr) event->captured = s->capture;
  return result(e);
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  Lock lock("cudaEventQuery");
  return result(event_wait(event));
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  Lock lock("cudaEventSynchronize");
  return result(event_wait(event));
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Lock lock("cudaEventElapsedTime");
  if (ms == nullptr) return result(cudaErrorInvalidValue);
  if (g_events.count(start) == 0 || g_events.count(end) == 0) return result(cudaErrorInvalidResourceHandle);
  if (start->captured != nullptr || end->captured != nullptr) return result(cudaErrorCapturedEvent);
  if (!start->recorded || !end->recorded || ((start->flags | end->flags) & cudaEventDisableTiming) != 0)
    return result(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  Lock lock("cudaEventDestroy");
  if (g_events.count(event) == 0) return result(cudaErrorInvalidResourceHandle);
  g_events.erase(event);
  delete event;
  return cudaSuccess;
}

// ---- capture and graphs -------------------------------------------------------------------------

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  Lock lock("cudaStreamBeginCapture");
  if (!settings().device) return result(cudaErrorNoDevice);
  if (mode < cudaStreamCaptureModeGlobal || mode > cudaStreamCaptureModeRelaxed) return result(cudaErrorInvalidValue);
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  if (s == &g_legacy) return result(cudaErrorStreamCaptureUnsupported);
  if (s->capture != nullptr) return result(cudaErrorIllegalState);
  Capture* c = new Capture{s, mode, std::this_thread::get_id(), false, {}};
  s->capture = c;
  g_captures.push_back(c);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Lock lock("cudaStreamEndCapture");
  if (graph == nullptr) return result(cudaErrorInvalidValue);
  *graph = nullptr;
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  Capture* c = s->capture;
  if (c == nullptr) return result(cudaErrorIllegalState);
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return result(cudaErrorStreamCaptureWrongThread);
  const bool invalidated = c->invalidated;
  std::vector<Node> nodes = std::move(c->nodes);
  finish_capture(c);
  if (invalidated) return result(cudaErrorStreamCaptureInvalidated);
  CUgraph_st* g = new CUgraph_st{std::move(nodes)};
  g_graphs.insert(g);
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  Lock lock("cudaStreamIsCapturing");
  if (status == nullptr) return result(cudaErrorInvalidValue);
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  if (s == &g_legacy) {
    // Asking about the legacy stream while a blocking stream captures is itself a conflict.
    *status = cudaStreamCaptureStatusNone;
    return result(legacy_stream_use());
  }
  *status = s->capture == nullptr ? cudaStreamCaptureStatusNone
            : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                      : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  if (mode == nullptr || *mode < cudaStreamCaptureModeGlobal || *mode > cudaStreamCaptureModeRelaxed)
    return result(cudaErrorInvalidValue);
  std::swap(*mode, t_capture_mode);
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  Lock lock("cudaGraphInstantiate");
  if (exec == nullptr || g_graphs.count(graph) == 0 || flags > 15) return result(cudaErrorInvalidValue);
  // A copy: the executable graph outlives its graph, and kernel nodes keep their own arguments.
  CUgraphExec_st* x = new CUgraphExec_st{std::make_shared<const std::vector<Node>>(graph->nodes)};
  g_execs.insert(x);
  *exec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  return cudaGraphInstantiate(exec, graph, flags);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  Lock lock("cudaGraphLaunch");
  if (g_execs.count(exec) == 0) return result(cudaErrorInvalidValue);
  CUstream_st* s = nullptr;
  if (const cudaError_t e = resolve(stream, &s); e != cudaSuccess) return result(e);
  std::shared_ptr<const std::vector<Node>> nodes = exec->nodes;
  return result(submit(s, cudaSuccess, [nodes]() { return run_nodes(*nodes); }));
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  Lock lock("cudaGraphExecDestroy");
  if (g_execs.count(exec) == 0) return result(cudaErrorInvalidValue);
  g_execs.erase(exec);
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  Lock lock("cudaGraphDestroy");
  if (g_graphs.count(graph) == 0) return result(cudaErrorInvalidValue);
  g_graphs.erase(graph);
  delete graph;
  return cudaSuccess;
}

// ---- errors -------------------------------------------------------------------------------------

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return t_last_error; }

namespace {

struct ErrorText {
  cudaError_t code;
  const char* name;
  const char* text;
};

// CUDA's own names and messages.
#define MGEMU_ERROR(code, text) {code, #code, text}
constexpr ErrorText kErrors[] = {
    MGEMU_ERROR(cudaSuccess, "no error"),
    MGEMU_ERROR(cudaErrorInvalidValue, "invalid argument"),
    MGEMU_ERROR(cudaErrorMemoryAllocation, "out of memory"),
    MGEMU_ERROR(cudaErrorInitializationError, "initialization error"),
    MGEMU_ERROR(cudaErrorInvalidConfiguration, "invalid configuration argument"),
    MGEMU_ERROR(cudaErrorInvalidDevicePointer, "invalid device pointer"),
    MGEMU_ERROR(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy"),
    MGEMU_ERROR(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version"),
    MGEMU_ERROR(cudaErrorInvalidDeviceFunction, "invalid device function"),
    MGEMU_ERROR(cudaErrorNoDevice, "no CUDA-capable device is detected"),
    MGEMU_ERROR(cudaErrorInvalidDevice, "invalid device ordinal"),
    MGEMU_ERROR(cudaErrorInvalidResourceHandle, "invalid resource handle"),
    MGEMU_ERROR(cudaErrorIllegalState, "the operation cannot be performed in the present state"),
    MGEMU_ERROR(cudaErrorNotReady, "device not ready"),
    MGEMU_ERROR(cudaErrorIllegalAddress, "an illegal memory access was encountered"),
    MGEMU_ERROR(cudaErrorLaunchOutOfResources, "too many resources requested for launch"),
    MGEMU_ERROR(cudaErrorLaunchFailure, "unspecified launch failure"),
    MGEMU_ERROR(cudaErrorNotSupported, "operation not supported"),
    MGEMU_ERROR(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing"),
    MGEMU_ERROR(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture"),
    MGEMU_ERROR(cudaErrorStreamCaptureMerge, "operation would result in a merge of separate capture sequences"),
    MGEMU_ERROR(cudaErrorStreamCaptureUnmatched, "capture was not ended in the same stream as it began"),
    MGEMU_ERROR(cudaErrorStreamCaptureUnjoined, "capturing stream has unjoined work"),
    MGEMU_ERROR(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream"),
    MGEMU_ERROR(cudaErrorStreamCaptureImplicit, "operation would make the legacy stream depend on a capturing blocking stream"),
    MGEMU_ERROR(cudaErrorCapturedEvent, "operation not permitted on an event last recorded in a capturing stream"),
    MGEMU_ERROR(cudaErrorStreamCaptureWrongThread, "attempt to terminate a thread-local capture sequence from another thread"),
    MGEMU_ERROR(cudaErrorUnknown, "unknown error"),
};
#undef MGEMU_ERROR

const ErrorText* find_error(cudaError_t e) {
  for (const ErrorText& t : kErrors)
    if (t.code == e) return &t;
  return nullptr;
}

}  // namespace

const char* cudaGetErrorString(cudaError_t error) {
  const ErrorText* t = find_error(error);
  return t != nullptr ? t->text : "unrecognized error code";
}

const char* cudaGetErrorName(cudaError_t error) {
  const ErrorText* t = find_error(error);
  return t != nullptr ? t->name : "unrecognized error code";
}
