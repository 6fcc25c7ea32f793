// The scalar reference kernels: the simplest correct loops, in double where it costs nothing.
// They are the fallback on CPUs without a SIMD path and the oracle the SIMD kernels are tested
// against (test/native-kernels.test.ts).
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace microgpt {

template <typename Wt, typename Convert>
void pack_panels(Wt* packed, const float* W, int out_features, int in_features, Convert convert) {
  const int panels = panel_count(out_features);
  for (int p = 0; p < panels; p++) {
    Wt* panel = packed + static_cast<size_t>(p) * in_features * kPanel;
    for (int k = 0; k < in_features; k++) {
      for (int j = 0; j < kPanel; j++) {
        const int o = p * kPanel + j;
        panel[static_cast<size_t>(k) * kPanel + j] = convert(o < out_features ? W[static_cast<size_t>(o) * in_features + k] : 0.0f);
      }
    }
  }
}

void pack_linear(float* packed, const float* W, int out_features, int in_features) {
  pack_panels(packed, W, out_features, in_features, [](float v) { return v; });
}

void pack_linear_f16(uint16_t* packed, const float* W, int out_features, int in_features) {
  pack_panels(packed, W, out_features, in_features, f32_to_f16);
}

namespace {
uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
}  // namespace

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) return float_of(sign | bits_of(static_cast<float>(mantissa) * 5.9604644775390625e-08f));  // m * 2^-24
  if (exponent == 31) return float_of(sign | 0x7f800000u | (mantissa << 13));                                // inf, NaN
  return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));                                        // rebias 15 -> 127
}

uint16_t f32_to_f16(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));  // NaN, inf
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // |f| >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below 2^-14: a float16 subnormal, a multiple of 2^-24 (scaling by 2^24 is exact; nearbyint
    // rounds half to even).
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(float_of(a) * 16777216.0f)));
  }
  // Normal: round the 23-bit mantissa to 10 bits, half to even (a carry moves into the exponent),
  // then rebias the exponent from 127 to 15.
  a += 0x0fffu + ((a >> 13) & 1u);
  a -= (127u - 15u) << 23;
  return static_cast<uint16_t>(sign | (a >> 13));
}

bool f16_exact(const float* x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const uint32_t a = bits_of(x[i]) & 0x7fffffffu;
    if (a == 0) continue;
    const int e = static_cast<int>(a >> 23) - 127;
    const uint32_t mantissa = a & 0x7fffffu;
    if (e > 15 || e < -24) return false;  // beyond float16's range (inf, NaN, float32 subnormals too)
    // float16 keeps 10 mantissa bits, fewer below 2^-14 (its subnormals are multiples of 2^-24).
    const int dropped = e >= -14 ? 13 : 13 + (-14 - e);
    if ((mantissa & ((1u << dropped) - 1)) != 0) return false;
  }
  return true;
}

namespace {

inline float widen(float w) { return w; }
inline float widen(uint16_t w) { return f16_to_f32(w); }

float gelu_ref_one(float x) {
  const double v = x;
  return static_cast<float>(0.5 * v * (1.0 + std::erf(v * 0.70710678118654752440)));
}

template <typename Wt>
void matmul_ref_t(float* out, const float* x, const Wt* wp, const float* b, int T, int K, int N, int p0, int p1,
                  Epilogue epilogue) {
  for (int t = 0; t < T; t++) {
    const float* xt = x + static_cast<size_t>(t) * K;
    for (int p = p0; p < p1; p++) {
      const Wt* panel = wp + static_cast<size_t>(p) * K * kPanel;
      float acc[kPanel] = {};
      for (int k = 0; k < K; k++) {
        for (int j = 0; j < kPanel; j++) acc[j] += xt[k] * widen(panel[static_cast<size_t>(k) * kPanel + j]);
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

void matmul_ref(float* out, const float* x, const float* wp, const float* b, int T, int K, int N, int p0, int p1,
                Epilogue epilogue) {
  matmul_ref_t(out, x, wp, b, T, K, N, p0, p1, epilogue);
}

void matmul_f16_ref(float* out, const float* x, const uint16_t* wp, const float* b, int T, int K, int N, int p0,
                    int p1, Epilogue epilogue) {
  matmul_ref_t(out, x, wp, b, T, K, N, p0, p1, epilogue);
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

}  // namespace

const Kernels& kernels_ref() {
  static const Kernels k = {Isa::scalar, matmul_ref, matmul_f16_ref, layernorm_ref, attention_ref, 1, gelu_ref};
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
