// The NEON kernels for arm64, where NEON (Advanced SIMD) is part of the baseline. Built only on
// arm64; no CI machine runs them (how they were checked: docs/native-measurements.md).
#include <arm_neon.h>

#include "probes.h"

#define MICROGPT_SIMD_NEON 1
#define MICROGPT_KERNELS_NAME kernels_neon
#define MICROGPT_PROBES_NAME probes_neon
#define MICROGPT_KERNELS_ISA Isa::neon
#define MICROGPT_MR 3          // 3 rows x 8 q registers = 24 accumulators of 32
#define MICROGPT_GEMV_PANELS 1 // 1 panel x 8 q registers = 8 independent FMA chains
#define MICROGPT_ATT_ROWS 3   // attention: 3 queries x 4 q registers = 12 accumulators
#define MICROGPT_ATT_VECS 4
#include "kernels_simd.inc"
#include "probes_simd.inc"
