// The kernels the forward pass is made of, as a table of function pointers: one table per
// instruction set, all with the same meaning. kernels_ref.cpp is the plain scalar reference (the
// fallback and the tests' oracle); kernels_simd.inc is compiled once per instruction set.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu.h"

namespace microgpt {

// Linear weights are packed once at load into panels of kPanel output features:
// packed[p][k][j] = W[p * kPanel + j][k] for W (OUT, IN) in PyTorch's layout, the last panel
// zero-padded. A panel is one contiguous (IN, kPanel) block, so the GEMM micro-kernel and the
// decode GEMV both stream it front to back.
constexpr int kPanel = 32;

inline int panel_count(int out_features) { return (out_features + kPanel - 1) / kPanel; }
inline size_t packed_size(int out_features, int in_features) {
  return static_cast<size_t>(panel_count(out_features)) * kPanel * static_cast<size_t>(in_features);
}
// W (OUT, IN) row-major -> packed (panels, IN, kPanel).
void pack_linear(float* packed, const float* W, int out_features, int in_features);
// The same layout in IEEE float16 (round to nearest even), for models kept in half precision.
// The caller has checked that every weight is finite in float16 (|w| < 65520).
void pack_linear_f16(uint16_t* packed, const float* W, int out_features, int in_features);

// A Linear weight packed by one of the two: one pointer is set.
struct PackedLinear {
  const float* f32 = nullptr;
  const uint16_t* f16 = nullptr;
};

// IEEE binary16 <-> binary32, portable (the kernels convert with F16C or NEON instead; both are
// exact in this direction, and f32_to_f16 rounds to nearest even as the hardware does).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// Whether every x[i] is a float16 value (f16_to_f32(f32_to_f16(x)) == x): a model whose weights
// all are loses nothing when kept in float16.
bool f16_exact(const float* x, size_t n);

// The most queries one attention call takes (scratch is sized for it).
constexpr int kAttentionRows = 8;

// The KV cache keeps keys transposed in tiles of kKeyTile positions: tile i holds positions
// i*16..i*16+15 as C rows of 16 floats (one 64-byte line per channel). q·K^T then loads whole
// vectors along positions, a head's keys for 16 positions are one contiguous 4 KB block (hs=64),
// and a decode step's new key fills one float in each of C consecutive lines.
constexpr int kKeyTile = 16;

// What a matmul does with out = x W^T + b before storing it.
enum class Epilogue { store = 0, gelu = 1, residual = 2 };

struct Kernels {
  Isa isa;
  // out (T, N) = epilogue(x (T, K) · W^T + b), for the output features of panels [p0, p1) only,
  // so threads may split a matmul by panels. wp: W (N, K) packed; b: (N) or null.
  // Epilogue::gelu stores gelu(x W^T + b); Epilogue::residual adds x W^T + b to out.
  void (*matmul)(float* out, const float* x, const float* wp, const float* b, int T, int K, int N, int p0, int p1,
                 Epilogue epilogue);
  // The same with W packed in float16 (pack_linear_f16): each weight is widened exactly and the
  // arithmetic is the float32 kernel's, so float16-exact weights give the same bits either way.
  void (*matmul_f16)(float* out, const float* x, const uint16_t* wp, const float* b, int T, int K, int N, int p0,
                     int p1, Epilogue epilogue);
  // out (T, C) = LayerNorm(x (T, C)) * w + b, biased variance, eps 1e-5; b may be null.
  void (*layernorm)(float* out, const float* x, const float* w, const float* b, int T, int C);
  // One head of causal attention for R consecutive queries of one sequence (1 <= R <=
  // kAttentionRows): query r, row r of q (row stride q_stride), is at position first + r and
  // attends over the keys and values at positions 0..first + r; its output goes to row r of out
  // (row stride out_stride). keys: the head's keys in the key-tile layout (see kKeyTile), element
  // d of key j at keys[(j / kKeyTile) * tile_stride + d * kKeyTile + j % kKeyTile]. values:
  // (positions, v_stride) from the head's first element. scores: scratch of R * (first + R)
  // floats. Every row's result is the same whatever R, so a prefill and the decode steps it
  // replaces agree bit for bit.
  void (*attention)(float* out, int out_stride, const float* q, int q_stride, int R, int first, const float* keys,
                    int tile_stride, const float* values, int v_stride, int hs, float* scores);
  // The R a caller should pass (the kernel's register block); any R up to kAttentionRows works.
  int attention_rows;
  // x (n) = gelu(x), the exact erf form.
  void (*gelu)(float* x, int n);
};

const Kernels& kernels_ref();
#if defined(MICROGPT_HAVE_X86)
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
#endif
#if defined(MICROGPT_HAVE_NEON)
const Kernels& kernels_neon();
#endif

// The table for `isa`, which must be supported (isa_supported).
const Kernels& kernels_for(Isa isa);

}  // namespace microgpt
