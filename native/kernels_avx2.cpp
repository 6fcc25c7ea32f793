// The AVX2 + FMA (+ F16C) kernels. Compiled with -mavx2 -mfma -mf16c; called only after cpu.cpp
// has found the instructions and the OS's support for the ymm state.
#include <immintrin.h>

#include "probes.h"

#define MICROGPT_SIMD_AVX2 1
#define MICROGPT_KERNELS_NAME kernels_avx2
#define MICROGPT_PROBES_NAME probes_avx2
#define MICROGPT_KERNELS_ISA Isa::avx2
#define MICROGPT_MR 3          // 3 rows x 4 ymm = 12 accumulators of 16
#define MICROGPT_GEMV_PANELS 2 // 2 panels x 4 ymm = 8 independent FMA chains
#define MICROGPT_ATT_ROWS 3   // attention: 3 queries x 3 ymm = 9 accumulators
#define MICROGPT_ATT_VECS 3
#include "kernels_simd.inc"
#include "probes_simd.inc"
