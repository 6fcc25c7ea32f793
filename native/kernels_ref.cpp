// The scalar reference kernels: the simplest correct loops, in double where it costs nothing.
// They are the fallback on CPUs without a SIMD path and the oracle the SIMD kernels are tested
// against (test/native-kernels.test.ts).
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace microgpt {

void pack_linear(float* packed, const float* W, int out_features, int in_features) {
  const int panels = panel_count(out_features);
  for (int p = 0; p < panels; p++) {
    float* panel = packed + static_cast<size_t>(p) * in_features * kPanel;
    for (int k = 0; k < in_features; k++) {
      for (int j = 0; j < kPanel; j++) {
        const int o = p * kPanel + j;
        panel[static_cast<size_t>(k) * kPanel + j] = o < out_features ? W[static_cast<size_t>(o) * in_features + k] : 0.0f;
      }
    }
  }
}

namespace {

float gelu_ref_one(float x) {
  const double v = x;
  return static_cast<float>(0.5 * v * (1.0 + std::erf(v * 0.70710678118654752440)));
}

void matmul_ref(float* out, const float* x, const float* wp, const float* b, int T, int K, int N, int p0, int p1,
                Epilogue epilogue) {
  for (int t = 0; t < T; t++) {
    const float* xt = x + static_cast<size_t>(t) * K;
    for (int p = p0; p < p1; p++) {
      const float* panel = wp + static_cast<size_t>(p) * K * kPanel;
      float acc[kPanel] = {};
      for (int k = 0; k < K; k++) {
        for (int j = 0; j < kPanel; j++) acc[j] += xt[k] * panel[static_cast<size_t>(k) * kPanel + j];
      }
      for (int j = 0; j < kPanel && p * kPanel + j < N; j++) {
        const int o = p * kPanel + j;
        const float v = acc[j] + (b ? b[o] : 0.0f);
        float* dst = out + static_cast<size_t>(t) * N + o;
        switch (epilogue) {
          case Epilogue::store: *dst = v; break;
          case Epilogue::gelu: *dst = gelu_ref_one(v); break;
          case Epilogue::residual: *dst += v; break;
        }
      }
    }
  }
}

void layernorm_ref(float* out, const float* x, const float* w, const float* b, int T, int C) {
  for (int t = 0; t < T; t++) {
    const float* xt = x + static_cast<size_t>(t) * C;
    float* ot = out + static_cast<size_t>(t) * C;
    double mean = 0;
    for (int i = 0; i < C; i++) mean += xt[i];
    mean /= C;
    double var = 0;
    for (int i = 0; i < C; i++) var += (xt[i] - mean) * (xt[i] - mean);
    var /= C;
    const double rstd = 1.0 / std::sqrt(var + 1e-5);
    for (int i = 0; i < C; i++) ot[i] = static_cast<float>((xt[i] - mean) * rstd * w[i] + (b ? b[i] : 0.0f));
  }
}

void attention_ref(float* out, int out_stride, const float* q, int q_stride, int R, int first, const float* keys,
                   int tile_stride, const float* values, int v_stride, int hs, float* scores) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  for (int r = 0; r < R; r++) {
    const float* qr = q + static_cast<size_t>(r) * q_stride;
    const int n = first + r + 1;
    double max = -INFINITY;
    for (int j = 0; j < n; j++) {
      double dot = 0;
      const float* key = keys + static_cast<size_t>(j / kKeyTile) * tile_stride + j % kKeyTile;
      for (int d = 0; d < hs; d++) dot += static_cast<double>(qr[d]) * key[d * kKeyTile];
      scores[j] = static_cast<float>(dot * scale);
      if (scores[j] > max) max = scores[j];
    }
    double sum = 0;
    for (int j = 0; j < n; j++) {
      scores[j] = static_cast<float>(std::exp(scores[j] - max));
      sum += scores[j];
    }
    for (int d = 0; d < hs; d++) {
      double acc = 0;
      for (int j = 0; j < n; j++) acc += static_cast<double>(scores[j]) * values[static_cast<size_t>(j) * v_stride + d];
      out[static_cast<size_t>(r) * out_stride + d] = static_cast<float>(acc / sum);
    }
  }
}

void gelu_ref(float* x, int n) {
  for (int i = 0; i < n; i++) x[i] = gelu_ref_one(x[i]);
}

constexpr int kRefFmaChains = 8;

float fma_loop_ref(long iters) {
  float acc[kRefFmaChains];
  for (int c = 0; c < kRefFmaChains; c++) acc[c] = 0.001f * static_cast<float>(c);
  for (long i = 0; i < iters; i++) {
    for (int c = 0; c < kRefFmaChains; c++) acc[c] = std::fma(acc[c], 0.999999f, 1e-7f);
  }
  float sum = 0.0f;
  for (int c = 0; c < kRefFmaChains; c++) sum += acc[c];
  return sum;
}

float read_sum_ref(const float* x, size_t n) {
  float sum = 0.0f;
  for (size_t i = 0; i < n; i++) sum += x[i];
  return sum;
}

}  // namespace

const Kernels& kernels_ref() {
  static const Kernels k = {Isa::scalar, matmul_ref,   layernorm_ref,      attention_ref, 1,
                            gelu_ref,     fma_loop_ref, kRefFmaChains * 2, read_sum_ref};
  return k;
}

const Kernels& kernels_for(Isa isa) {
  switch (isa) {
#if defined(MICROGPT_HAVE_X86)
    case Isa::avx2: return kernels_avx2();
    case Isa::avx512: return kernels_avx512();
#endif
#if defined(MICROGPT_HAVE_NEON)
    case Isa::neon: return kernels_neon();
#endif
    default: return kernels_ref();
  }
}

}  // namespace microgpt
