// The AVX-512 kernels (F, BW, DQ, VL). Compiled with -mavx512*; called only after cpu.cpp has
// found the instructions and the OS's support for the zmm state.
#include <immintrin.h>

#include "probes.h"

#define MICROGPT_SIMD_AVX512 1
#define MICROGPT_KERNELS_NAME kernels_avx512
#define MICROGPT_PROBES_NAME probes_avx512
#define MICROGPT_KERNELS_ISA Isa::avx512
#define MICROGPT_MR 6          // 6 rows x 2 zmm = 12 accumulators of 32
#define MICROGPT_GEMV_PANELS 4 // 4 panels x 2 zmm = 8 independent FMA chains
#define MICROGPT_SMALL_ROWS 12 // 12 rows x 2 zmm = 24 accumulators: a batch of decode steps
#define MICROGPT_ATT_ROWS 6   // attention: 6 queries x 4 zmm = 24 accumulators
#define MICROGPT_ATT_VECS 4
#include "kernels_simd.inc"
#include "probes_simd.inc"
