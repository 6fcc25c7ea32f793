// binding.testing: every kernel of every instruction set callable on small arrays, so the tests
// can hold each SIMD kernel against the scalar reference. Synchronous: the inputs are tiny.
#include <chrono>
#include <string>
#include <vector>

#include "addon.h"
#include "cuda_loader.h"
#include "kernels.h"
#include "layers.h"
#include "probes.h"
#include "thread_pool.h"

namespace microgpt {

namespace {

Napi::Float32Array f32(const Napi::CallbackInfo& info, size_t i, size_t min_length, const char* name) {
  if (i >= info.Length() || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Float32Array");
  }
  Napi::Float32Array a = info[i].As<Napi::Float32Array>();
  if (a.ElementLength() < min_length) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " has " + std::to_string(a.ElementLength()) +
                                                " elements, needs " + std::to_string(min_length));
  }
  return a;
}

// An Int32Array argument of at least min_length elements.
Napi::Int32Array i32(const Napi::CallbackInfo& info, size_t i, size_t min_length, const char* name) {
  if (i >= info.Length() || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      info[i].As<Napi::Int32Array>().ElementLength() < min_length) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an Int32Array of at least " +
                                               std::to_string(min_length) + " elements");
  }
  return info[i].As<Napi::Int32Array>();
}

const float* f32_or_null(const Napi::CallbackInfo& info, size_t i, size_t min_length, const char* name) {
  if (info[i].IsNull() || info[i].IsUndefined()) return nullptr;
  return f32(info, i, min_length, name).Data();
}

int positive(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  const int v = info[i].As<Napi::Number>().Int32Value();
  if (v < 1 || v > (1 << 24)) throw Napi::RangeError::New(info.Env(), std::string(name) + " must be from 1 to 2^24");
  return v;
}

const Kernels& kernels_arg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "isa must be a string");
  return kernels_for(isa_argument(info.Env(), info[0].As<Napi::String>().Utf8Value()));
}

// matmul(isa, out (T, N), x (T, K), W (N, K) unpacked, b (N) | null, T, K, N, epilogue 0|1|2, f16?):
// with f16 true, W is packed in float16 (rounded) and the float16 kernel runs.
void test_matmul(const Napi::CallbackInfo& info) {
  const Kernels& k = kernels_arg(info);
  const int T = positive(info, 5, "T"), K = positive(info, 6, "K"), N = positive(info, 7, "N");
  float* out = f32(info, 1, static_cast<size_t>(T) * N, "out").Data();
  const float* x = f32(info, 2, static_cast<size_t>(T) * K, "x").Data();
  const float* W = f32(info, 3, static_cast<size_t>(N) * K, "W").Data();
  const float* b = f32_or_null(info, 4, N, "b");
  const int epilogue = info[8].As<Napi::Number>().Int32Value();
  if (epilogue < 0 || epilogue > 2) throw Napi::RangeError::New(info.Env(), "epilogue must be 0, 1 or 2");
  if (info.Length() > 9 && info[9].ToBoolean().Value()) {
    std::vector<uint16_t> packed(packed_size(N, K));
    pack_linear_f16(packed.data(), W, N, K);
    k.matmul_f16(out, x, packed.data(), b, T, K, N, 0, panel_count(N), static_cast<Epilogue>(epilogue));
    return;
  }
  std::vector<float> packed(packed_size(N, K));
  pack_linear(packed.data(), W, N, K);
  k.matmul(out, x, packed.data(), b, T, K, N, 0, panel_count(N), static_cast<Epilogue>(epilogue));
}

// f16Round(x): each element rounded to the nearest float16 and widened back, in place; the
// engine's own conversion, so the tests can build float16-exact weights.
void test_f16_round(const Napi::CallbackInfo& info) {
  Napi::Float32Array x = f32(info, 0, 0, "x");
  for (size_t i = 0; i < x.ElementLength(); i++) x[i] = f16_to_f32(f32_to_f16(x[i]));
}

// layernorm(isa, out (T, C), x (T, C), w (C), b (C) | null, T, C)
void test_layernorm(const Napi::CallbackInfo& info) {
  const Kernels& k = kernels_arg(info);
  const int T = positive(info, 5, "T"), C = positive(info, 6, "C");
  k.layernorm(f32(info, 1, static_cast<size_t>(T) * C, "out").Data(), f32(info, 2, static_cast<size_t>(T) * C, "x").Data(),
              f32(info, 3, C, "w").Data(), f32_or_null(info, 4, C, "b"), T, C);
}

// attention(isa, out (R, hs), q (R, qStride), keys (key tiles, see kernels.h), values (first + R,
//           vStride), R, first, hs, qStride, tileStride, vStride): R queries at positions
//           first..first+R-1
void test_attention(const Napi::CallbackInfo& info) {
  const Kernels& k = kernels_arg(info);
  const int R = positive(info, 5, "R");
  if (info.Length() < 7 || !info[6].IsNumber()) throw Napi::TypeError::New(info.Env(), "first must be a number");
  const int first = info[6].As<Napi::Number>().Int32Value();
  const int hs = positive(info, 7, "hs"), q_stride = positive(info, 8, "qStride");
  const int tile_stride = positive(info, 9, "tileStride"), v_stride = positive(info, 10, "vStride");
  if (R > kAttentionRows) throw Napi::RangeError::New(info.Env(), "R must be at most " + std::to_string(kAttentionRows));
  if (first < 0 || first > (1 << 16)) throw Napi::RangeError::New(info.Env(), "first must be from 0 to 65536");
  if (hs > 4096) throw Napi::RangeError::New(info.Env(), "hs must be at most 4096");
  const int n = first + R;
  if (q_stride < hs || v_stride < hs || tile_stride < hs * kKeyTile) {
    throw Napi::RangeError::New(info.Env(), "qStride and vStride must be at least hs, tileStride at least hs * 16");
  }
  const size_t keys_end = static_cast<size_t>((n - 1) / kKeyTile) * tile_stride + (hs - 1) * kKeyTile + (n - 1) % kKeyTile + 1;
  std::vector<float> scores(static_cast<size_t>(R) * n);
  k.attention(f32(info, 1, static_cast<size_t>(R) * hs, "out").Data(), hs,
              f32(info, 2, static_cast<size_t>(R - 1) * q_stride + hs, "q").Data(), q_stride, R, first,
              f32(info, 3, keys_end, "keys").Data(), tile_stride,
              f32(info, 4, static_cast<size_t>(n - 1) * v_stride + hs, "values").Data(), v_stride, hs, scores.data());
}

// gelu(isa, x), in place
void test_gelu(const Napi::CallbackInfo& info) {
  const Kernels& k = kernels_arg(info);
  Napi::Float32Array x = f32(info, 1, 0, "x");
  k.gelu(x.Data(), static_cast<int>(x.ElementLength()));
}

// benchMatmul(isa, T, K, N, threads, reps): seconds per call of the threaded matmul on random
// data, for the kernel lab (not a test). Synchronous: keep it short.
Napi::Value bench_matmul(const Napi::CallbackInfo& info) {
  const Kernels& k = kernels_arg(info);
  const int T = positive(info, 1, "T"), K = positive(info, 2, "K"), N = positive(info, 3, "N");
  const int threads = positive(info, 4, "threads"), reps = positive(info, 5, "reps");
  std::vector<float> x(static_cast<size_t>(T) * K), W(static_cast<size_t>(N) * K), out(static_cast<size_t>(T) * N);
  for (size_t i = 0; i < x.size(); i++) x[i] = static_cast<float>(i % 17) * 0.01f;
  for (size_t i = 0; i < W.size(); i++) W[i] = static_cast<float>(i % 13) * 0.01f;
  std::vector<float> packed(packed_size(N, K));
  pack_linear(packed.data(), W.data(), N, K);
  ThreadPool pool(threads);
  const PackedLinear w{packed.data(), nullptr};
  matmul(pool, k, out.data(), x.data(), w, nullptr, T, K, N, Epilogue::store);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; r++) matmul(pool, k, out.data(), x.data(), w, nullptr, T, K, N, Epilogue::store);
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  return Napi::Number::New(info.Env(), dt.count() / reps);
}

// benchPool(threads, reps): seconds per empty ThreadPool::run over all threads (the barrier cost).
Napi::Value bench_pool(const Napi::CallbackInfo& info) {
  const int threads = positive(info, 0, "threads"), reps = positive(info, 1, "reps");
  ThreadPool pool(threads);
  std::vector<int> hits(threads);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; r++) pool.run(threads, [&](int i) { hits[i]++; });
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  return Napi::Number::New(info.Env(), dt.count() / reps);
}

// benchFmaPeak(isa, threads, iters): GFLOP/s of register-only FMAs on `threads` threads at once,
// the ceiling a GEMM is measured against. Synchronous: keep `iters` to a fraction of a second.
Napi::Value bench_fma_peak(const Napi::CallbackInfo& info) {
  const Probes& k = probes_for(kernels_arg(info).isa);
  const int threads = positive(info, 1, "threads"), iters = positive(info, 2, "iters");
  ThreadPool pool(threads);
  std::vector<float> sink(threads);
  pool.run(threads, [&](int i) { sink[i] = k.fma_loop(iters / 16); });  // warm up clocks and threads
  const auto t0 = std::chrono::steady_clock::now();
  pool.run(threads, [&](int i) { sink[i] += k.fma_loop(iters); });
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  volatile float keep = sink[0];
  (void)keep;
  return Napi::Number::New(info.Env(), static_cast<double>(iters) * k.fma_flops_per_iter * threads / dt.count() / 1e9);
}

// benchReadBandwidth(isa, megabytes, threads, reps): GB/s of vector loads streaming a buffer of
// that size, split in equal slices across the threads: the ceiling of memory-bound decoding.
Napi::Value bench_read_bandwidth(const Napi::CallbackInfo& info) {
  const Probes& k = probes_for(kernels_arg(info).isa);
  const int megabytes = positive(info, 1, "megabytes"), threads = positive(info, 2, "threads"), reps = positive(info, 3, "reps");
  if (megabytes > 8192) throw Napi::RangeError::New(info.Env(), "megabytes must be at most 8192");
  const size_t n = static_cast<size_t>(megabytes) * (1 << 20) / sizeof(float);
  std::vector<float> buffer(n, 1.0f);  // written once: every page is really there
  ThreadPool pool(threads);
  std::vector<float> sink(threads);
  const size_t slice = n / threads;
  auto pass = [&](int i) { sink[i] += k.read_sum(buffer.data() + slice * i, i == threads - 1 ? n - slice * i : slice); };
  pool.run(threads, pass);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; r++) pool.run(threads, pass);
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  volatile float keep = sink[0];
  (void)keep;
  return Napi::Number::New(info.Env(), static_cast<double>(n) * sizeof(float) * reps / dt.count() / 1e9);
}

// ---- the CUDA module's kernels, one at a time (cuda/api.h's test functions) --------------------

// The CUDA module's functions for `device` (argument 0), or a JS error saying why there are none.
const CudaApi& cuda_arg(const Napi::CallbackInfo& info, int* device) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "device must be a number");
  *device = info[0].As<Napi::Number>().Int32Value();
  const std::string problem = cuda_device_problem(*device);
  if (!problem.empty()) {
    Napi::Error e = Napi::Error::New(info.Env(), "no CUDA kernels to test: " + problem);
    e.Set("code", Napi::String::New(info.Env(), "ERR_BACKEND_UNAVAILABLE"));
    throw e;
  }
  return *cuda_status().api;
}

// A module's test function returned -1: its why, as a JS error.
void cuda_check(const Napi::CallbackInfo& info, int status, const char* kernel, const char* why) {
  if (status != 0) throw Napi::Error::New(info.Env(), std::string("the CUDA ") + kernel + " kernel failed: " + why);
}

std::vector<uint16_t> f16_bits(const float* x, size_t n) {
  std::vector<uint16_t> bits(n);
  for (size_t i = 0; i < n; i++) bits[i] = f32_to_f16(x[i]);
  return bits;
}

// A position argument (`start` of the embedding and attention tests): 0 to 65536.
int start_arg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "start must be a number");
  const int start = info[i].As<Napi::Number>().Int32Value();
  if (start < 0 || start > (1 << 16)) throw Napi::RangeError::New(info.Env(), "start must be from 0 to 65536");
  return start;
}

// cudaMatmul(device, out (T, N), x (T, K), W (N, K), b (N) | null, T, K, N, epilogue 0|1|2,
//            variant 0|1|2, f16?): with f16 true, W goes to the kernel as float16 (rounded).
void test_cuda_matmul(const Napi::CallbackInfo& info) {
  int device;
  const CudaApi& api = cuda_arg(info, &device);
  const int T = positive(info, 5, "T"), K = positive(info, 6, "K"), N = positive(info, 7, "N");
  float* out = f32(info, 1, static_cast<size_t>(T) * N, "out").Data();
  const float* x = f32(info, 2, static_cast<size_t>(T) * K, "x").Data();
  const float* W = f32(info, 3, static_cast<size_t>(N) * K, "W").Data();
  const float* b = f32_or_null(info, 4, N, "b");
  const int epilogue = info[8].As<Napi::Number>().Int32Value();
  if (epilogue < 0 || epilogue > 2) throw Napi::RangeError::New(info.Env(), "epilogue must be 0, 1 or 2");
  const int variant = info[9].As<Napi::Number>().Int32Value();
  if (variant < 0 || variant > 2) throw Napi::RangeError::New(info.Env(), "variant must be 0, 1 or 2");
  const bool f16 = info.Length() > 10 && info[10].ToBoolean().Value();
  std::vector<uint16_t> half;
  if (f16) half = f16_bits(W, static_cast<size_t>(N) * K);
  char why[1024] = {0};
  const int status = api.test_matmul(device, out, x, f16 ? nullptr : W, f16 ? half.data() : nullptr, b, T, K, N, epilogue,
                                     variant, why, static_cast<int>(sizeof why));
  cuda_check(info, status, "matmul", why);
}

// cudaNormMatmul(device, out (T, N), x (T, K), lnW (K), lnB (K) | null, W (N, K), b (N) | null, T,
//                K, N, epilogue 0|1|2, f16?): LayerNorm then matmul in one kernel (T <= 8).
void test_cuda_norm_matmul(const Napi::CallbackInfo& info) {
  int device;
  const CudaApi& api = cuda_arg(info, &device);
  const int T = positive(info, 7, "T"), K = positive(info, 8, "K"), N = positive(info, 9, "N");
  float* out = f32(info, 1, static_cast<size_t>(T) * N, "out").Data();
  const float* x = f32(info, 2, static_cast<size_t>(T) * K, "x").Data();
  const float* ln_w = f32(info, 3, K, "lnW").Data();
  const float* ln_b = f32_or_null(info, 4, K, "lnB");
  const float* W = f32(info, 5, static_cast<size_t>(N) * K, "W").Data();
  const float* b = f32_or_null(info, 6, N, "b");
  const int epilogue = info[10].As<Napi::Number>().Int32Value();
  if (epilogue < 0 || epilogue > 2) throw Napi::RangeError::New(info.Env(), "epilogue must be 0, 1 or 2");
  const bool f16 = info.Length() > 11 && info[11].ToBoolean().Value();
  std::vector<uint16_t> half;
  if (f16) half = f16_bits(W, static_cast<size_t>(N) * K);
  char why[1024] = {0};
  const int status = api.test_norm_matmul(device, out, x, ln_w, ln_b, f16 ? nullptr : W, f16 ? half.data() : nullptr, b, T, K,
                                          N, epilogue, why, static_cast<int>(sizeof why));
  cuda_check(info, status, "norm-matmul", why);
}

// cudaLayernorm(device, out (T, C), x (T, C), w (C), b (C) | null, T, C)
void test_cuda_layernorm(const Napi::CallbackInfo& info) {
  int device;
  const CudaApi& api = cuda_arg(info, &device);
  const int T = positive(info, 5, "T"), C = positive(info, 6, "C");
  char why[1024] = {0};
  const int status = api.test_layernorm(device, f32(info, 1, static_cast<size_t>(T) * C, "out").Data(),
                                        f32(info, 2, static_cast<size_t>(T) * C, "x").Data(), f32(info, 3, C, "w").Data(),
                                        f32_or_null(info, 4, C, "b"), T, C, why, static_cast<int>(sizeof why));
  cuda_check(info, status, "layernorm", why);
}

// cudaEmbedding(device, x (T, C), ids (T) Int32Array, wte (V, C), wpe (start + T, C), start, T, V,
//               C, f16?): with f16 true, wte goes to the kernel as float16 (rounded).
void test_cuda_embedding(const Napi::CallbackInfo& info) {
  int device;
  const CudaApi& api = cuda_arg(info, &device);
  const int start = start_arg(info, 5);
  const int T = positive(info, 6, "T"), V = positive(info, 7, "V"), C = positive(info, 8, "C");
  const int32_t* ids = i32(info, 2, static_cast<size_t>(T), "ids").Data();
  for (int t = 0; t < T; t++) {
    if (ids[t] < 0 || ids[t] >= V) throw Napi::RangeError::New(info.Env(), "ids must be from 0 to V - 1");
  }
  float* x = f32(info, 1, static_cast<size_t>(T) * C, "x").Data();
  const float* wte = f32(info, 3, static_cast<size_t>(V) * C, "wte").Data();
  const float* wpe = f32(info, 4, static_cast<size_t>(start + T) * C, "wpe").Data();
  const bool f16 = info.Length() > 9 && info[9].ToBoolean().Value();
  std::vector<uint16_t> half;
  if (f16) half = f16_bits(wte, static_cast<size_t>(V) * C);
  char why[1024] = {0};
  const int status = api.test_embedding(device, x, ids, f16 ? nullptr : wte, f16 ? half.data() : nullptr, wpe, start, T, V,
                                        C, why, static_cast<int>(sizeof why));
  cuda_check(info, status, "embedding", why);
}

// cudaAttention(device, out (T, C), qkv (T, 3C), keys (start, C), values (start, C), start, T, C,
//               nHead, blockSize): T new rows of one sequence at positions start..start+T-1.
void test_cuda_attention(const Napi::CallbackInfo& info) {
  int device;
  const CudaApi& api = cuda_arg(info, &device);
  const int start = start_arg(info, 5);
  const int T = positive(info, 6, "T"), C = positive(info, 7, "C"), n_head = positive(info, 8, "nHead");
  const int block_size = positive(info, 9, "blockSize");
  if (C % n_head != 0) throw Napi::RangeError::New(info.Env(), "C must be a multiple of nHead");
  if (start + T > block_size) throw Napi::RangeError::New(info.Env(), "start + T must be at most blockSize");
  const size_t cached = static_cast<size_t>(start) * C;
  char why[1024] = {0};
  const int status = api.test_attention(device, f32(info, 1, static_cast<size_t>(T) * C, "out").Data(),
                                        f32(info, 2, static_cast<size_t>(T) * 3 * C, "qkv").Data(),
                                        f32(info, 3, cached, "keys").Data(), f32(info, 4, cached, "values").Data(), start, T,
                                        C, n_head, block_size, why, static_cast<int>(sizeof why));
  cuda_check(info, status, "attention", why);
}

// cudaSelect(device, logits (rows, V), rows, V, k (rows), limit (rows), values (rows, V),
//            ids (rows, V)): Int32Array of each row's count (-1: the row holds a NaN).
Napi::Value test_cuda_select(const Napi::CallbackInfo& info) {
  int device;
  const CudaApi& api = cuda_arg(info, &device);
  const int rows = positive(info, 2, "rows"), V = positive(info, 3, "V");
  const size_t n = static_cast<size_t>(rows) * V;
  const float* logits = f32(info, 1, n, "logits").Data();
  const int32_t* k = i32(info, 4, rows, "k").Data();
  const int32_t* limit = i32(info, 5, rows, "limit").Data();
  for (int r = 0; r < rows; r++) {
    if (k[r] < 1 || k[r] >= limit[r] || limit[r] > V) throw Napi::RangeError::New(info.Env(), "k and limit must satisfy 0 < k < limit <= V");
  }
  float* values = f32(info, 6, n, "values").Data();
  int32_t* ids = i32(info, 7, n, "ids").Data();
  Napi::Int32Array counts = Napi::Int32Array::New(info.Env(), static_cast<size_t>(rows));
  char why[1024] = {0};
  const int status = api.test_select(device, logits, rows, V, k, limit, values, ids, counts.Data(), why, static_cast<int>(sizeof why));
  cuda_check(info, status, "top-k selection", why);
  return counts;
}

}  // namespace

Napi::Object make_testing(Napi::Env env) {
  Napi::Object t = Napi::Object::New(env);
  t.Set("matmul", Napi::Function::New(env, test_matmul, "matmul"));
  t.Set("layernorm", Napi::Function::New(env, test_layernorm, "layernorm"));
  t.Set("attention", Napi::Function::New(env, test_attention, "attention"));
  t.Set("gelu", Napi::Function::New(env, test_gelu, "gelu"));
  t.Set("f16Round", Napi::Function::New(env, test_f16_round, "f16Round"));
  t.Set("benchPool", Napi::Function::New(env, bench_pool, "benchPool"));
  t.Set("benchMatmul", Napi::Function::New(env, bench_matmul, "benchMatmul"));
  t.Set("benchFmaPeak", Napi::Function::New(env, bench_fma_peak, "benchFmaPeak"));
  t.Set("benchReadBandwidth", Napi::Function::New(env, bench_read_bandwidth, "benchReadBandwidth"));
  t.Set("cudaMatmul", Napi::Function::New(env, test_cuda_matmul, "cudaMatmul"));
  t.Set("cudaLayernorm", Napi::Function::New(env, test_cuda_layernorm, "cudaLayernorm"));
  t.Set("cudaNormMatmul", Napi::Function::New(env, test_cuda_norm_matmul, "cudaNormMatmul"));
  t.Set("cudaEmbedding", Napi::Function::New(env, test_cuda_embedding, "cudaEmbedding"));
  t.Set("cudaAttention", Napi::Function::New(env, test_cuda_attention, "cudaAttention"));
  t.Set("cudaSelect", Napi::Function::New(env, test_cuda_select, "cudaSelect"));
  return t;
}

}  // namespace microgpt
